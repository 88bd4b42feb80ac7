"""Native mcp-alertd audit events from an MCP server written in Python.

Two pieces, standard library only:

* ``AuditLog`` writes native events (the schema of mcp-alertd's README) as
  RFC 5424 syslog messages whose MSG is ``@cee:`` and the event JSON, over
  UDP or TCP (octet-counted frames, RFC 6587), to mcp-alertd's syslog
  source. One method per event an MCP server should log.
* ``AuditMiddleware`` wraps the ASGI app of a server built on the official
  MCP Python SDK (``FastMCP(...).streamable_http_app()``, or any
  Streamable HTTP app): it authenticates bearer tokens, enforces each
  agent's tool allowlist on ``tools/call``, and logs authentication,
  session, tool and denial events through an ``AuditLog``.

Secrets never reach the log: tokens are looked up, not logged; a
credential is named by its id.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
import threading
from typing import Any, Awaitable, Callable, Iterable, Mapping

__all__ = ["AuditLog", "Agent", "AuditMiddleware"]

_FACILITY_AUTHPRIV = 10
_SEVERITY = {"info": 6, "notice": 5, "warning": 4}


def _now_rfc3339() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class AuditLog:
    """Sends native events to mcp-alertd over syslog.

    ``address`` is ``(host, port)``; ``transport`` is ``"udp"`` or
    ``"tcp"``. ``tenant`` and ``server`` are added to every event that does
    not set them.
    """

    def __init__(
        self,
        address: tuple[str, int],
        transport: str = "udp",
        *,
        tenant: str | None = None,
        server: str | None = None,
        app_name: str = "mcp-server",
    ) -> None:
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be udp or tcp, not {transport!r}")
        self.address = address
        self.transport = transport
        self.tenant = tenant
        self.server = server
        self.app_name = app_name
        self.hostname = socket.gethostname() or "-"
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    # The events an MCP server logs.

    def auth_success(self, agent_id: str, *, credential_id: str | None = None, **extra: Any) -> None:
        self.emit("auth.success", agent_id=agent_id, credential_id=credential_id, **extra)

    def auth_failure(
        self,
        reason: str,
        *,
        agent_id: str | None = None,
        source_ip: str | None = None,
        credential_id: str | None = None,
        **extra: Any,
    ) -> None:
        """A failed authentication; ``agent_id`` is the identity claimed, if any."""
        self.emit(
            "auth.failure",
            severity="warning",
            reason=reason,
            agent_id=agent_id,
            source_ip=source_ip,
            credential_id=credential_id,
            **extra,
        )

    def session_start(
        self,
        agent_id: str,
        session_id: str,
        *,
        allowed_tools: Iterable[str] | None = None,
        declared_task: str | None = None,
        role: str | None = None,
        expected_runtime_s: float | None = None,
        **extra: Any,
    ) -> None:
        self.emit(
            "session.start",
            agent_id=agent_id,
            session_id=session_id,
            allowed_tools=list(allowed_tools) if allowed_tools is not None else None,
            declared_task=declared_task,
            role=role,
            expected_runtime_s=expected_runtime_s,
            **extra,
        )

    def session_end(self, agent_id: str, session_id: str, **extra: Any) -> None:
        self.emit("session.end", agent_id=agent_id, session_id=session_id, **extra)

    def tool_invoke(self, agent_id: str, session_id: str, tool: str, **extra: Any) -> None:
        self.emit("tool.invoke", agent_id=agent_id, session_id=session_id, tool=tool, **extra)

    def tool_denied(
        self, agent_id: str, session_id: str, tool: str, reason: str = "not_in_allowlist", **extra: Any
    ) -> None:
        """A tool call outside the session's allowlist (or refused otherwise)."""
        self.emit(
            "tool.denied",
            severity="warning",
            agent_id=agent_id,
            session_id=session_id,
            tool=tool,
            reason=reason,
            **extra,
        )

    def credential_issued(self, agent_id: str, credential_id: str, **extra: Any) -> None:
        self.emit("credential.issued", agent_id=agent_id, credential_id=credential_id, **extra)

    def credential_used(self, agent_id: str, credential_id: str, **extra: Any) -> None:
        self.emit("credential.used", agent_id=agent_id, credential_id=credential_id, **extra)

    def credential_revoked(self, agent_id: str, credential_id: str, **extra: Any) -> None:
        self.emit("credential.revoked", agent_id=agent_id, credential_id=credential_id, **extra)

    # The wire.

    def event(self, event: str, **fields: Any) -> dict[str, Any]:
        """The native event object (``None`` fields left out)."""
        body: dict[str, Any] = {"ts": _now_rfc3339(), "event": event}
        if self.tenant is not None:
            body["tenant"] = self.tenant
        if self.server is not None:
            body["server"] = self.server
        body.update({k: v for k, v in fields.items() if v is not None})
        return body

    def emit(self, event: str, *, severity: str = "info", **fields: Any) -> None:
        body = self.event(event, **fields)
        pri = _FACILITY_AUTHPRIV * 8 + _SEVERITY.get(severity, 6)
        msg = (
            f"<{pri}>1 {body['ts']} {self.hostname} {self.app_name} {os.getpid()} audit - "
            f"@cee:{json.dumps(body, separators=(',', ':'))}"
        ).encode()
        with self._lock:
            self._send(msg)

    def _send(self, msg: bytes) -> None:
        if self.transport == "udp":
            if self._sock is None:
                self._sock = socket.socket(_family(self.address[0]), socket.SOCK_DGRAM)
            self._sock.sendto(msg, self.address)
            return
        frame = str(len(msg)).encode() + b" " + msg
        for attempt in (1, 2):
            try:
                if self._sock is None:
                    self._sock = socket.create_connection(self.address, timeout=5)
                self._sock.sendall(frame)
                return
            except OSError:
                if self._sock is not None:
                    self._sock.close()
                self._sock = None
                if attempt == 2:
                    raise


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@dataclasses.dataclass(frozen=True)
class Agent:
    """Who a bearer token belongs to, and what its sessions may do."""

    agent_id: str
    credential_id: str
    allowed_tools: frozenset[str]
    role: str | None = None
    declared_task: str | None = None
    expected_runtime_s: float | None = None


Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class AuditMiddleware:
    """ASGI middleware for an MCP Streamable HTTP app: bearer authentication,
    a per-agent tool allowlist, and the audit events of both.

    ``tokens`` maps a bearer token to its ``Agent``. A request without a
    valid token gets 401 (``auth.failure``, reason ``missing_token`` or
    ``invalid_token``, keyed by the client address). An ``initialize`` that
    opens a session logs ``auth.success`` and ``session.start`` with the
    agent's allowlist; a ``DELETE`` of the session logs ``session.end``. A
    ``tools/call`` of a tool outside the allowlist is refused with a
    JSON-RPC error and logged as ``tool.denied``; an allowed one as
    ``tool.invoke`` before the server runs it.
    """

    DENIED_CODE = -32001

    def __init__(self, app: Callable, audit: AuditLog, tokens: Mapping[str, Agent]) -> None:
        self.app = app
        self.audit = audit
        self.tokens = dict(tokens)
        self._sessions: dict[str, Agent] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = scope.get("client")
        source_ip = client[0] if client else None
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        agent = self.tokens.get(token) if token else None
        if agent is None:
            self.audit.auth_failure("missing_token" if not token else "invalid_token", source_ip=source_ip)
            await _respond(
                send,
                401,
                {"error": "invalid_token"},
                [(b"www-authenticate", b'Bearer error="invalid_token"')],
            )
            return
        session_id = headers.get("mcp-session-id")
        body = await _read_body(receive)
        messages = _jsonrpc_messages(body)

        if scope.get("method") == "DELETE" and session_id in self._sessions:
            self._sessions.pop(session_id, None)
            self.audit.session_end(agent.agent_id, session_id, source_ip=source_ip)

        for m in messages:
            if m.get("method") != "tools/call":
                continue
            tool = str((m.get("params") or {}).get("name", ""))
            if tool not in agent.allowed_tools:
                self.audit.tool_denied(agent.agent_id, session_id or "-", tool, source_ip=source_ip)
                await _respond(
                    send,
                    200,
                    {
                        "jsonrpc": "2.0",
                        "id": m.get("id"),
                        "error": {"code": self.DENIED_CODE, "message": f"tool {tool!r} is not allowed in this session"},
                    },
                )
                return
            self.audit.tool_invoke(agent.agent_id, session_id or "-", tool, source_ip=source_ip)

        opens = session_id is None and any(m.get("method") == "initialize" for m in messages)

        async def send_wrapper(message: dict) -> None:
            if opens and message["type"] == "http.response.start":
                new = dict(message.get("headers", [])).get(b"mcp-session-id")
                if new and message.get("status", 500) < 300:
                    sid = new.decode("latin-1")
                    self._sessions[sid] = agent
                    self.audit.auth_success(agent.agent_id, credential_id=agent.credential_id, source_ip=source_ip)
                    self.audit.session_start(
                        agent.agent_id,
                        sid,
                        allowed_tools=sorted(agent.allowed_tools),
                        declared_task=agent.declared_task,
                        role=agent.role,
                        expected_runtime_s=agent.expected_runtime_s,
                        credential_id=agent.credential_id,
                        source_ip=source_ip,
                    )
            await send(message)

        await self.app(scope, _replay(body, receive), send_wrapper)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then the client's own messages (disconnect)."""
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _jsonrpc_messages(body: bytes) -> list[dict]:
    if not body:
        return []
    try:
        parsed = json.loads(body)
    except ValueError:
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    return [m for m in items if isinstance(m, dict)]


async def _respond(send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": data})
