"""An MCP server on the official Python SDK (FastMCP, Streamable HTTP) whose
sessions are limited to their agent's tool allowlist, logging native
mcp-alertd events over syslog.

    python3 example_server.py --syslog 127.0.0.1:5514 [--port 8000]

Tokens (static here; a real server validates JWTs): ``token-build-bot``
may call ``search_docs`` and ``create_issue``; ``delete_repository`` exists
but is outside every allowlist.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

import uvicorn
from mcp.server.fastmcp import FastMCP

from mcp_alertd_audit import Agent, AuditLog, AuditMiddleware

mcp = FastMCP("docs-and-issues", json_response=True)


@mcp.tool()
def search_docs(query: str) -> str:
    """Search the documentation."""
    return f"3 pages match {query!r}"


@mcp.tool()
def create_issue(title: str) -> str:
    """Open an issue."""
    return f"issue opened: {title}"


@mcp.tool()
def delete_repository(name: str) -> str:
    """Delete a repository (no agent is allowed this)."""
    return f"deleted {name}"


TOKENS = {
    "token-build-bot": Agent(
        agent_id="build-bot",
        credential_id="cred-build-bot-1",
        allowed_tools=frozenset({"search_docs", "create_issue"}),
        role="developer",
        declared_task="triage",
        expected_runtime_s=900,
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syslog", required=True, help="mcp-alertd's syslog source, HOST:PORT")
    parser.add_argument("--transport", default="udp", choices=["udp", "tcp"])
    parser.add_argument("--tenant", default="acme")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    args = parser.parse_args()
    host, _, port = args.syslog.rpartition(":")
    audit = AuditLog((host.strip("[]"), int(port)), args.transport, tenant=args.tenant, server="docs-mcp")
    app = AuditMiddleware(mcp.streamable_http_app(), audit, TOKENS)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    asyncio.run(server.serve(sockets=[sock]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
