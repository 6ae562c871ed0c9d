"""Talk to a WebSocket echo server with the `websockets` library, through the broker.

Usage: ws_client.py URL   (env: SEKS_TOKEN; for proxy mode HTTPS_PROXY and SSL_CERT_FILE,
which the library reads itself). Sends "hello" and expects it back, then "say-key" and
prints the answer. Exits non-zero on any mismatch.
"""
import asyncio
import os
import sys

from websockets.asyncio.client import connect


async def main() -> None:
    headers = {"Authorization": f"Bearer {os.environ['SEKS_TOKEN']}"}
    async with connect(sys.argv[1], additional_headers=headers, open_timeout=20) as ws:
        await ws.send("hello")
        echoed = await asyncio.wait_for(ws.recv(), 20)
        assert echoed == "hello", echoed
        await ws.send("say-key")
        print(await asyncio.wait_for(ws.recv(), 20))


asyncio.run(main())
