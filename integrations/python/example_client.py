"""Drives example_server.py with the official MCP Python SDK client: failed
authentications, then one session that calls an allowed tool and, like an
agent under prompt injection, a forbidden one again and again.

    python3 example_client.py --url http://127.0.0.1:8000/mcp
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError


async def session(url: str, token: str):
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return http, streamable_http_client(url, http_client=http)


async def bad_login(url: str, token: str) -> bool:
    """One connection with a wrong token; True when it was refused."""
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    try:
        async with http, streamable_http_client(url, http_client=http) as (read, write, _):
            async with ClientSession(read, write) as s:
                await asyncio.wait_for(s.initialize(), 10)
    except BaseException as e:  # the SDK raises from its task group
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return True
    return False


async def main(url: str, token: str, failures: int, denials: int) -> int:
    for _ in range(failures):
        if not await bad_login(url, "stolen-or-guessed"):
            print("a wrong token was accepted", file=sys.stderr)
            return 1
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    async with http, streamable_http_client(url, http_client=http) as (read, write, _):
        async with ClientSession(read, write) as s:
            await s.initialize()
            tools = {t.name for t in (await s.list_tools()).tools}
            assert "search_docs" in tools, tools
            result = await s.call_tool("search_docs", {"query": "rotation policy"})
            assert not result.isError, result
            refused = 0
            for _ in range(denials):
                try:
                    result = await s.call_tool("delete_repository", {"name": "prod"})
                except McpError:
                    refused += 1
                    continue
                if result.isError:
                    refused += 1
            if refused != denials:
                print(f"only {refused} of {denials} forbidden calls were refused", file=sys.stderr)
                return 1
    print(f"ok: {failures} refused logins, 1 allowed call, {denials} refused calls")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", default="token-build-bot")
    p.add_argument("--failures", type=int, default=4)
    p.add_argument("--denials", type=int, default=5)
    a = p.parse_args()
    sys.exit(asyncio.run(main(a.url, a.token, a.failures, a.denials)))
