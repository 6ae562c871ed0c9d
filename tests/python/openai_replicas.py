"""Spread official OpenAI SDK calls over several broker replicas, as a client-side load
balancer would: one client whose HTTP transport sends each request to the next replica
in turn.

Usage: openai_replicas.py CALLS BROKER_URL...   (env: SEKS_TOKEN)
Every third call streams. Prints the request id each answer carried (x-seks-request-id),
one per line, in order; exits non-zero with a message on any mismatch.
"""
import itertools
import os
import sys

import httpx2
import openai


class RoundRobin(httpx2.BaseTransport):
    """Sends each request to the next broker, as a load balancer in front of them would."""

    def __init__(self, brokers):
        self.brokers = itertools.cycle([httpx2.URL(b) for b in brokers])
        self.inner = httpx2.HTTPTransport()

    def handle_request(self, request):
        broker = next(self.brokers)
        request.url = request.url.copy_with(host=broker.host, port=broker.port)
        request.headers["host"] = f"{broker.host}:{broker.port}"
        return self.inner.handle_request(request)

    def close(self):
        self.inner.close()


calls = int(sys.argv[1])
brokers = sys.argv[2:]
client = openai.OpenAI(
    base_url=brokers[0] + "/api/openai/v1",
    api_key=os.environ["SEKS_TOKEN"],
    http_client=httpx2.Client(transport=RoundRobin(brokers)),
    max_retries=0,
    timeout=20,
)
messages = [{"role": "user", "content": "Say hello"}]
for n in range(calls):
    streaming = n % 3 == 2
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, stream=streaming
    )
    if streaming:
        parts = [c.choices[0].delta.content or "" for c in raw.parse() if c.choices]
        text = "".join(parts)
    else:
        text = raw.parse().choices[0].message.content
    assert text == "Hello from the mock", (n, text)
    print(raw.headers["x-seks-request-id"])
