"""Drive the broker with the official Anthropic Python SDK.

Usage: anthropic_client.py SCENARIO   (env: SEKS_BASE_URL, SEKS_TOKEN)
Scenarios: message, stream, unauthorized. Exits non-zero with a message on any mismatch.
"""
import os
import sys

import anthropic

base_url = os.environ["SEKS_BASE_URL"]
token = os.environ["SEKS_TOKEN"]
client = anthropic.Anthropic(base_url=base_url, api_key=token, max_retries=0, timeout=20)
messages = [{"role": "user", "content": "Say hello"}]
scenario = sys.argv[1]

if scenario == "message":
    reply = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=messages)
    assert reply.content[0].text == "Hello from the mock", reply
    assert reply.usage.output_tokens == 4, reply.usage
elif scenario == "stream":
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=messages) as stream:
        parts = list(stream.text_stream)
        final = stream.get_final_message()
    assert parts == ["Hello", " from the mock"], parts
    assert final.stop_reason == "end_turn", final
elif scenario == "unauthorized":
    try:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=messages)
    except anthropic.AuthenticationError as e:
        assert e.status_code == 401, e
        assert e.response.headers.get("x-seks-error"), e.response.headers
        assert e.body["type"] == "error" and e.body["error"]["type"] == "authentication_error", e.body
        print(e.response.headers["x-seks-error"])
    else:
        sys.exit("expected a 401 AuthenticationError")
else:
    sys.exit(f"unknown scenario {scenario}")
print("ok")
