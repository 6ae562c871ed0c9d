"""Drive the broker's MCP server with the official MCP client (streamable HTTP).

Usage: mcp_client.py URL TOKEN list
       mcp_client.py URL TOKEN call TOOL ARGS_JSON

Prints one JSON object: the tools ({"tools": [{name, description, input_schema}]}), or the
call's result ({"is_error", "structured", "text"}), or {"protocol_error": message} when the
server answers with an MCP error instead of a result.
"""

import asyncio
import json
import sys

from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str, token: str, action: str, *rest: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                if action == "list":
                    listed = await session.list_tools()
                    tools = [
                        {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                        for t in listed.tools
                    ]
                    print(json.dumps({"tools": tools}))
                    return
                name, args = rest[0], json.loads(rest[1])
                try:
                    result = await session.call_tool(name, args)
                except MCPError as e:
                    print(json.dumps({"protocol_error": str(e)}))
                    return
                print(
                    json.dumps(
                        {
                            "is_error": bool(result.is_error),
                            "structured": result.structured_content,
                            "text": [c.text for c in result.content if c.type == "text"],
                        }
                    )
                )


asyncio.run(main(*sys.argv[1:]))
