"""Drive the broker's policy enforcement with the official OpenAI Python SDK.

Usage: policy_client.py SCENARIO [ARGS]   (env: SEKS_BASE_URL, SEKS_TOKEN)
SEKS_BASE_URL may name several brokers (replicas), separated by spaces: `burst` spreads its
calls across them in turn, as does `paced`; everything else uses the first.
Prints one JSON object per call on stdout: {"status": 200|4xx, "code": ..., "message": ...,
"retry_after": ...}, so the test can check what the SDK saw.
Scenarios:
  chat MODEL [MAX_TOKENS]   one chat completion
  stream MODEL              one streamed chat completion (reads it to the end)
  files                     list files (GET /v1/files)
  burst N PATH              N concurrent GET requests to PATH (e.g. /sleep) on threads
  paced N PATH MS           N GET requests to PATH, one every MS milliseconds
  chats MODEL TOKEN...      one chat completion per TOKEN, in order, in this one process
                            (so a rate limit's window isn't spent starting Pythons)
"""
import concurrent.futures
import json
import os
import sys
import time

import openai

BASES = os.environ["SEKS_BASE_URL"].split()


def client_for(token, base=BASES[0]):
    return openai.OpenAI(base_url=base, api_key=token, max_retries=0, timeout=60)


spread = [client_for(os.environ["SEKS_TOKEN"], base) for base in BASES]
client = spread[0]
messages = [{"role": "user", "content": "Say hello"}]


def outcome(call):
    try:
        result = call()
        return {"status": 200, "result": result}
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {
            "status": e.status_code,
            "code": body.get("code"),
            "message": body.get("message"),
            "retry_after": e.response.headers.get("retry-after"),
            "seks_error": e.response.headers.get("x-seks-error"),
        }


def chat(model, max_tokens=None, using=client):
    extra = {"max_tokens": int(max_tokens)} if max_tokens else {}
    reply = using.chat.completions.create(model=model, messages=messages, **extra)
    return {"content": reply.choices[0].message.content, "tokens": reply.usage.total_tokens}


def stream(model):
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(model=model, messages=messages, stream=True) if c.choices]
    return {"content": "".join(parts)}


def get(path, using=client):
    return using.get(path, cast_to=object)


scenario, args = sys.argv[1], sys.argv[2:]
if scenario == "chat":
    print(json.dumps(outcome(lambda: chat(*args))))
elif scenario == "stream":
    print(json.dumps(outcome(lambda: stream(*args))))
elif scenario == "files":
    print(json.dumps(outcome(lambda: [f.id for f in client.files.list()])))
elif scenario == "burst":
    n, path = int(args[0]), args[1]
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        calls = pool.map(lambda i: outcome(lambda: get(path, spread[i % len(spread)])), range(n))
        for result in calls:
            print(json.dumps(result))
elif scenario == "paced":
    n, path, pause = int(args[0]), args[1], int(args[2]) / 1000
    for i in range(n):
        print(json.dumps(outcome(lambda: get(path, spread[i % len(spread)]))), flush=True)
        time.sleep(pause)
elif scenario == "chats":
    model, tokens = args[0], args[1:]
    for token in tokens:
        as_token = client_for(token)
        print(json.dumps(outcome(lambda: chat(model, using=as_token))))
else:
    sys.exit(f"unknown scenario {scenario}")
