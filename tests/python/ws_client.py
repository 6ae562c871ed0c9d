"""Talk to a WebSocket echo server with the `websockets` library, through the broker.

Usage: ws_client.py URL [--until-closed] [--first TEXT] [--no-token]   (env: SEKS_TOKEN, sent as
Authorization unless --no-token; for proxy mode HTTPS_PROXY and SSL_CERT_FILE, which the library
reads itself). Sends "hello" (or TEXT) and expects it back, then
"say-key" and prints the answer; with --until-closed, instead of "say-key" it waits for the
broker to close the session and prints the close code and reason. Exits non-zero on any
mismatch.
"""
import asyncio
import os
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def main() -> None:
    headers = {} if "--no-token" in sys.argv else {"Authorization": f"Bearer {os.environ['SEKS_TOKEN']}"}
    async with connect(sys.argv[1], additional_headers=headers, open_timeout=20) as ws:
        first = sys.argv[sys.argv.index("--first") + 1] if "--first" in sys.argv else "hello"
        await ws.send(first)
        echoed = await asyncio.wait_for(ws.recv(), 20)
        assert echoed == first, echoed
        if "--until-closed" in sys.argv:
            try:
                message = await asyncio.wait_for(ws.recv(), 20)
            except ConnectionClosed as closed:
                print(f"closed {closed.rcvd.code} {closed.rcvd.reason}")
                return
            sys.exit(f"got {message!r} instead of a close")
        await ws.send("say-key")
        print(await asyncio.wait_for(ws.recv(), 20))


asyncio.run(main())
