"""Who may talk to the viewer: the Host and Origin it answers, the session token, and half-sent requests.

The page shows patient images, so the viewer serves only requests that (1) name one of its own addresses
in ``Host`` (a page on another site that re-points its name at 127.0.0.1, DNS rebinding, is refused),
(2) carry no ``Origin`` or one of the viewer's own (a page from another origin cannot read the API or
open the WebSocket), and (3) carry the per-session token, in the ``token`` query parameter (the URL
printed at start) or in the HttpOnly, SameSite=Strict cookie set on the answer to a request that had it
in the query (the page's own requests then carry the cookie).
Refusals are plain 403/401 answers (a WebSocket is closed before its handshake, which the client sees as
403); nothing from the request reaches the app.

:func:`guarded_http_protocol` bounds connections below the app: a connection that has not sent a whole
request within ``header_timeout`` seconds is closed, and connections beyond ``max_connections`` are
answered 503 and closed at once.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessGuard", "guarded_http_protocol", "own_hosts"]

log = logging.getLogger("scanedge.viewer")

_MAX_LOGGED_REFUSALS = 20


def own_hosts(bound_host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """``Host`` values the viewer answers: its loopback names and the bound host with ``port``, and ``extra``
    exactly as a reverse proxy sends them (e.g. ``viewer.example`` or ``viewer.example:8443``)."""
    bound = f"[{bound_host}]" if ":" in bound_host else bound_host
    names = {"127.0.0.1", "localhost", "[::1]", bound.lower()}
    return frozenset({f"{n}:{port}" for n in names} | {h.strip().lower() for h in extra})


class AccessGuard:
    """ASGI middleware: Host, Origin and token checks before anything reaches ``app``.

    Origins allowed are ``http://`` + each allowed host, plus ``extra_origins`` (``scheme://host[:port]``,
    for a page served through a proxy). The token is compared in constant time.
    """

    def __init__(
        self, app: ASGIApp, *, hosts: frozenset[str], extra_origins: Iterable[str], token: str, cookie: str
    ) -> None:
        self.app = app
        self.hosts = hosts
        extra = {o.strip().lower().rstrip("/") for o in extra_origins}
        self.origins = frozenset({f"http://{h}" for h in hosts} | extra)
        self._token = token.encode()
        self.cookie = cookie
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "").lower()
        origin = headers.get("origin")
        if host not in self.hosts:
            await self._refuse(scope, send, 403, "this viewer does not answer to that Host (see --allow-host)", host)
            return
        if origin is not None and origin.lower().rstrip("/") not in self.origins:
            await self._refuse(scope, send, 403, "requests from that origin are refused (see --allow-origin)", origin)
            return
        from_query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[-1]
        from_cookie = cookie_parser(headers.get("cookie", "")).get(self.cookie, "")
        if not (self._matches(from_query) or self._matches(from_cookie)):
            what = "a wrong token" if from_query or from_cookie else "no token"
            await self._refuse(scope, send, 401, "open the viewer with the URL it printed at start (?token=...)", what)
            return
        if scope["type"] == "http" and self._matches(from_query) and not self._matches(from_cookie):
            await self.app(scope, receive, self._with_cookie(send, from_query))  # later requests use the cookie
            return
        await self.app(scope, receive, send)

    def _matches(self, candidate: str) -> bool:
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self._token)

    def _with_cookie(self, send: Send, token: str) -> Send:
        cookie = f"{self.cookie}={token}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        return sending

    async def _refuse(self, scope: Scope, send: Send, status: int, reason: str, what: str) -> None:
        self.refused += 1
        if self.refused <= _MAX_LOGGED_REFUSALS:
            log.warning("refused %s %s (%s): %s", scope["type"], scope["path"][:100], ascii(what[:100]), reason)
        if scope["type"] == "websocket":
            # before the handshake: the server answers 403 and the socket never opens
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
            return
        body = f"{status} {reason}\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def guarded_http_protocol(header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline for each request head and a cap on open connections.

    uvicorn times out only idle keep-alive connections, so a client that sends half a request head holds
    its socket forever; here every wait for a request (on connecting and after each response) has
    ``header_timeout`` seconds, after which the connection is closed. WebSockets (once upgraded) count
    towards ``max_connections`` but have no deadline (uvicorn pings them).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = b"too many connections to the viewer\n"
    busy = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(busy)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # closed already, or upgraded to a WebSocket
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a whole request came and is being answered
            self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol
