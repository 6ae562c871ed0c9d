"""Drive the broker with the official Google Gen AI Python SDK (Gemini API).

Usage: genai_client.py SCENARIO   (env: SEKS_BASE_URL, SEKS_TOKEN)
Scenarios: generate, stream, unauthorized. Exits non-zero with a message on any mismatch.
"""
import os
import sys

from google import genai
from google.genai import errors

base_url = os.environ["SEKS_BASE_URL"]
token = os.environ["SEKS_TOKEN"]
client = genai.Client(api_key=token, http_options={"base_url": base_url, "timeout": 20_000})
scenario = sys.argv[1]

if scenario == "generate":
    reply = client.models.generate_content(model="gemini-2.0-flash", contents="Say hello")
    assert reply.text == "Hello from the mock", reply
elif scenario == "stream":
    parts = [c.text for c in client.models.generate_content_stream(model="gemini-2.0-flash", contents="Say hello")]
    assert "".join(parts) == "Hello from the mock", parts
elif scenario == "unauthorized":
    try:
        client.models.generate_content(model="gemini-2.0-flash", contents="Say hello")
    except errors.ClientError as e:
        assert e.code == 401, e
        assert e.status == "UNAUTHENTICATED", e.status
        print(e.message)
    else:
        sys.exit("expected a 401 ClientError")
else:
    sys.exit(f"unknown scenario {scenario}")
print("ok")
