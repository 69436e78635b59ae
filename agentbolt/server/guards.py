"""ASGI guards in front of every route: API-key check and request-size limit.

They are plain ASGI (not BaseHTTPMiddleware) so they add microseconds, not milliseconds, per call.
"""

from __future__ import annotations

import hmac
import ipaddress
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentbolt.errors import error_body


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address to bind) is this machine only: a server there may run without a key."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Reachable without a key: liveness probes and the API's own documentation.
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


async def _send_error(send: Send, status: int, message: str, code: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(error_body(status, message, code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiKeyGuard:
    """Refuse requests without the server's API key (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"x-api-key":
                given = value.strip()
        if not given or not hmac.compare_digest(given, self._key):
            await _send_error(
                send,
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>' (the key given to agentbolt serve)",
                "unauthorized",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)


class BodyLimitGuard:
    """Answer 413 to bodies over ``max_bytes``.

    A declared Content-Length is checked up front; a body without one (chunked) is read here,
    up to the limit, before the app sees it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "Content-Length is not a number", "bad_request", [])
                    return
        if declared is not None:
            if declared > self.max_bytes:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _refuse(self, send: Send) -> None:
        message = (
            f"request body is larger than the server's limit of {self.max_bytes} bytes "
            "(agentbolt serve --max-body-bytes); send smaller batches"
        )
        await _send_error(send, 413, message, "payload_too_large", [])


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
