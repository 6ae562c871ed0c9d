"""Drive the broker with the official OpenAI Python SDK.

Usage: openai_client.py SCENARIO   (env: SEKS_TOKEN, and SEKS_BASE_URL unless the SDK's
default base URL is meant: through a forward proxy, with HTTPS_PROXY and SSL_CERT_FILE)
Scenarios: chat, stream, unauthorized. Exits non-zero with a message on any mismatch.
"""
import os
import sys

import openai

base_url = os.environ.get("SEKS_BASE_URL")
token = os.environ["SEKS_TOKEN"]
client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=20)
messages = [{"role": "user", "content": "Say hello"}]
scenario = sys.argv[1]

if scenario == "chat":
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert reply.choices[0].message.content == "Hello from the mock", reply
    assert reply.usage.total_tokens == 9, reply.usage
elif scenario == "stream":
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(parts) == "Hello from the mock", parts
    assert len([p for p in parts if p]) == 3, f"expected 3 content chunks, got {parts}"
elif scenario == "unauthorized":
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e
        assert e.response.headers.get("x-seks-error"), e.response.headers
        # The SDK parsed the broker's error body as an OpenAI error.
        assert isinstance(e.body, dict) and e.body.get("message"), e.body
        print(e.body["code"])
    else:
        sys.exit("expected a 401 AuthenticationError")
else:
    sys.exit(f"unknown scenario {scenario}")
print("ok")
