"""Running the live viewer: uvicorn serving :func:`~scanedge.viewer.app.create_app` on a socket bound here.

The socket is bound before uvicorn starts, so the real port is known at once (``port=0`` picks a free
one) and a port in use fails with a clear :class:`ConfigError` instead of a log line. Loopback by default:
the page shows patient images, unencrypted. Every request must name the viewer's own address, come from its
own origin and carry the session token (:mod:`scanedge.viewer.guard`); the token is in :attr:`Viewer.page_url`
and is never logged.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from scanedge.errors import ConfigError, RuntimeStateError
from scanedge.runtime.wire.endpoints import is_loopback_host, parse_endpoint
from scanedge.viewer.feed import FeedLimits, LiveFeed

__all__ = ["Viewer", "ViewerConfig"]

log = logging.getLogger("scanedge.viewer")


@dataclass(frozen=True)
class ViewerConfig:
    """Where the viewer listens and what it follows.

    Attributes:
        subscribe: the runtime's PUB endpoint, e.g. ``tcp://127.0.0.1:5556``.
        host: address the page is served on: loopback by default; any other needs ``insecure``.
        port: TCP port (0: any free one).
        limits: what the viewer keeps in memory (:class:`FeedLimits`).
        insecure: serve beyond this machine although the page (plain HTTP and WebSocket) shows the images to
            anyone who can reach it and has the token; for a network that is protected otherwise.
        token: the session's secret (at least 16 characters, no spaces, ``;`` or ``&``); random by default.
        allow_hosts: ``Host`` values answered besides the viewer's own addresses, as a reverse proxy sends
            them (``viewer.example`` or ``viewer.example:8443``).
        allow_origins: page origins (``https://viewer.example``) allowed besides the viewer's own.
        header_timeout: seconds a connection has to send a whole request head before it is closed.
        max_connections: open connections (pages' WebSockets included) beyond which new ones get 503.
    """

    subscribe: str
    host: str = "127.0.0.1"
    port: int = 8080
    limits: FeedLimits = field(default_factory=FeedLimits)
    insecure: bool = False
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    allow_hosts: tuple[str, ...] = ()
    allow_origins: tuple[str, ...] = ()
    header_timeout: float = 10.0
    max_connections: int = 64

    def __post_init__(self) -> None:
        parse_endpoint(self.subscribe)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be within 0-65535, got {self.port}")
        if len(self.token) < 16 or not self.token.isprintable() or any(c in self.token for c in " ;&,=%+#"):
            raise ConfigError("the token must have at least 16 characters and no spaces or ; & , = % + #")
        for origin in self.allow_origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
                raise ConfigError(f"an allowed origin is scheme://host[:port], got {origin!r}")
        for host in self.allow_hosts:
            if not host or "/" in host or " " in host:
                raise ConfigError(f"an allowed host is host[:port] as the Host header carries it, got {host!r}")
        if not 0 < self.header_timeout <= 3600:
            raise ConfigError(f"header_timeout must be within (0, 3600] s, got {self.header_timeout}")
        if not 1 <= self.max_connections <= 100_000:
            raise ConfigError(f"max_connections must be within 1-100000, got {self.max_connections}")
        if not self.is_loopback and not self.insecure:
            raise ConfigError(
                f"refusing to serve the viewer on {self.host}: the page is plain HTTP without a login, so anyone "
                "who can reach it would see the images; keep it on 127.0.0.1 and reach it through an SSH tunnel "
                "or a TLS proxy with authentication, or pass --insecure if the network is otherwise protected"
            )

    @property
    def is_loopback(self) -> bool:
        """True when ``host`` is a loopback address or ``localhost``; other host names are not resolved
        and count as reachable from elsewhere (the viewer then warns)."""
        return is_loopback_host(self.host)


class Viewer:
    """The viewer's web server. ``start()`` serves in a background thread; ``serve()`` in the caller's
    (with Ctrl-C handling when that is the main thread)."""

    def __init__(self, config: ViewerConfig) -> None:
        import uvicorn

        from scanedge.viewer.app import create_app
        from scanedge.viewer.guard import AccessGuard, guarded_http_protocol, own_hosts

        self.config = config
        self.feed = LiveFeed(config.subscribe, config.limits)
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((config.host, config.port))
        except OSError as exc:
            self._socket.close()
            raise ConfigError(
                f"cannot serve the viewer on {config.host}:{config.port}: {exc.strerror} (try another --port)"
            ) from exc
        self._socket.listen(64)
        self.port = int(self._socket.getsockname()[1])
        if not config.is_loopback:  # allowed by config.insecure
            log.warning("the viewer is served on %s (--insecure): anyone who can reach it sees the images", config.host)
        self.guard = AccessGuard(
            create_app(self.feed),
            hosts=own_hosts(config.host, self.port, config.allow_hosts),
            extra_origins=config.allow_origins,
            token=config.token,
            cookie=f"scanedge_viewer_{self.port}",  # cookies ignore ports: one name per viewer
        )
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.guard,
                http=guarded_http_protocol(config.header_timeout, config.max_connections),
                log_config=None,  # a library leaves logging to its application; records go to the root logger
                log_level="warning",
                access_log=False,  # request lines carry the token
                lifespan="on",
                ws_max_size=64 * 1024,
                ws_per_message_deflate=False,  # pixels barely compress, and deflating them costs milliseconds
                timeout_graceful_shutdown=2,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address with the port actually bound, e.g. ``http://127.0.0.1:8080/``."""
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}/"

    @property
    def token(self) -> str:
        """The session's secret token."""
        return self.config.token

    @property
    def page_url(self) -> str:
        """The address to open: :attr:`url` with the token, e.g. ``http://127.0.0.1:8080/?token=...``."""
        return f"{self.url}?token={self.config.token}"

    def serve(self) -> None:
        """Serve until stopped (Ctrl-C or :meth:`request_stop`)."""
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._socket.close()

    def start(self, timeout: float = 30.0) -> Viewer:
        """Serve in a daemon thread; return once the server has started (the feed's SUB socket is open
        and the page can be loaded). Raises :class:`~scanedge.errors.RuntimeStateError` when it does not
        start within ``timeout`` seconds or its thread ends first."""
        self._thread = threading.Thread(target=self.serve, name="scanedge-viewer", daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise RuntimeStateError("the viewer did not start")
            time.sleep(0.01)
        return self

    def request_stop(self) -> None:
        """Ask the server to stop, without waiting; safe from any thread (e.g. a signal handler)."""
        self._server.should_exit = True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server started by :meth:`start` and wait up to ``timeout`` seconds for its thread
        (open pages get about 2 s to close); :class:`~scanedge.errors.RuntimeStateError` if it is still up."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeStateError("the viewer did not stop in time")

    def __enter__(self) -> Viewer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
