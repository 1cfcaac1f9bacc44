"""Who may talk to the viewer: Host, Origin and token checks, half-sent requests, and what a page may send.

Real uvicorn on loopback, raw sockets and a real WebSocket client; refusals must be answers, never tracebacks.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from scanedge.errors import ConfigError
from scanedge.viewer import Viewer, ViewerConfig
from tests.waiting import wait_until


def get(viewer: Viewer, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", viewer.port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def ws(viewer: Viewer, query: str = "", **kwargs):
    return connect(f"ws://127.0.0.1:{viewer.port}/ws{query}", max_size=None, open_timeout=10, **kwargs)


@pytest.fixture
def quiet_viewer() -> Iterator[Viewer]:
    """A viewer whose runtime is not up: enough for what reaches the web server."""
    config = ViewerConfig(subscribe="tcp://127.0.0.1:1", port=0, header_timeout=1.0, max_connections=32)
    with Viewer(config) as v:
        yield v


def test_other_hosts_and_origins_are_refused_and_the_token_is_required(quiet_viewer):
    v, token = quiet_viewer, quiet_viewer.token
    assert get(v, f"/api/state?token={token}").status == 200
    assert get(v, f"/api/state?token={token}", {"Host": "evil.example"}).status == 403  # DNS rebinding
    assert get(v, f"/api/state?token={token}", {"Host": f"evil.example:{v.port}"}).status == 403
    for host in (f"localhost:{v.port}", f"127.0.0.1:{v.port}", f"[::1]:{v.port}"):
        assert get(v, f"/api/state?token={token}", {"Host": host}).status == 200
    assert get(v, f"/api/state?token={token}", {"Origin": f"http://127.0.0.1:{v.port + 1}"}).status == 403
    assert get(v, f"/api/state?token={token}", {"Origin": "null"}).status == 403
    assert get(v, f"/api/state?token={token}", {"Origin": f"http://localhost:{v.port}"}).status == 200
    for path in ("/", "/api/state", "/static/app.js", f"/api/state?token={token[:-1]}x", "/?token="):
        assert get(v, path).status == 401, path
    # the token once in the query, then the cookie: HttpOnly, SameSite=Strict, named for this port
    first = get(v, f"/?token={token}")
    cookie = first.getheader("set-cookie")
    assert first.status == 200 and cookie.startswith(f"scanedge_viewer_{v.port}={token};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert get(v, "/api/state", {"Cookie": cookie.split(";")[0]}).status == 200
    assert get(v, "/api/state", {"Cookie": f"scanedge_viewer_{v.port}=wrong-token-wrong-token"}).status == 401
    # WebSockets: the same three checks, refused before the handshake
    for query, headers in (
        ("", {}),
        ("?token=nope", {}),
        (f"?token={token}", {"Origin": "http://evil.example"}),
    ):
        with pytest.raises(InvalidStatus) as refused, ws(v, query, additional_headers=headers):
            pass
        assert refused.value.response.status_code == 403, (query, headers)
    with socket.create_connection(("127.0.0.1", v.port), timeout=10) as s:  # a rebound name, with the token
        s.sendall(
            f"GET /ws?token={token} HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: c2NhbmVkZ2Utdmlld2VyLQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 403")
    with ws(v, f"?token={token}", origin=f"http://127.0.0.1:{v.port}") as page:
        assert json.loads(page.recv(timeout=10))["type"] == "hello"
    assert v.guard.refused >= 10


def test_a_proxy_is_allowed_by_name():
    config = ViewerConfig(
        subscribe="tcp://127.0.0.1:1",
        port=0,
        token="proxy-token-0123456789",
        allow_hosts=("viewer.example",),
        allow_origins=("https://viewer.example",),
    )
    with Viewer(config) as v:
        proxied = {"Host": "viewer.example", "Origin": "https://viewer.example"}
        assert get(v, "/api/state?token=proxy-token-0123456789", proxied).status == 200
        assert get(v, "/api/state?token=proxy-token-0123456789", {"Host": "viewer.example:444"}).status == 403
    for bad in ({"token": "short"}, {"token": "has space in it, sixteen"}, {"allow_origins": ("viewer.example",)}):
        with pytest.raises(ConfigError):
            ViewerConfig(subscribe="tcp://127.0.0.1:1", **bad)
    assert "proxy-token" not in repr(config)


def test_half_sent_requests_are_closed_and_the_viewer_still_serves(quiet_viewer):
    v = quiet_viewer
    sockets = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", v.port), timeout=10)
            s.sendall(f"GET /api/state?token={v.token} HTTP/1.1\r\nHost: 127.0.0.1:{v.port}\r\nX-Slow: ".encode())
            s.setblocking(False)
            sockets.append(s)
        started = time.monotonic()

        def closed(s: socket.socket) -> bool:
            try:
                while s.recv(65536):  # a 503 for those over the cap, then EOF
                    pass
                return True
            except BlockingIOError:
                return False
            except OSError:  # reset
                return True

        wait_until(lambda: all(closed(s) for s in sockets), timeout=60, what="every half-sent request closed")
        print(f"300 half-sent requests closed after {time.monotonic() - started:.1f} s (header_timeout 1 s)")
    finally:
        for s in sockets:
            s.close()
    assert get(v, f"/api/state?token={v.token}").status == 200
    # a request that trickles in after a whole one on the same connection has the same deadline (uvicorn's
    # keep-alive timeout stops counting once any byte arrives)
    with socket.create_connection(("127.0.0.1", v.port), timeout=30) as s:
        s.sendall(f"GET /api/state?token={v.token} HTTP/1.1\r\nHost: 127.0.0.1:{v.port}\r\n\r\n".encode())
        received = b""
        while b"}" not in received:  # the whole JSON answer
            received += s.recv(65536)
        assert received.startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /api/st")
        assert s.recv(65536) == b""  # closed by the viewer


@pytest.mark.parametrize(
    "message, code",
    [(b"\x00\x01binary", 1003), ("not json", 1003), ("[1, 2]", 1003), ("x" * 5000, 1009), (b"\0" * 100_000, 1009)],
)
def test_what_a_page_may_not_send_closes_its_socket_cleanly(quiet_viewer, caplog, message, code):
    caplog.set_level(logging.DEBUG)
    v = quiet_viewer
    with ws(v, f"?token={v.token}") as page:
        assert json.loads(page.recv(timeout=10))["type"] == "hello"
        page.send(json.dumps({"type": "select", "series": None}))  # a good one first: ignored quietly
        page.send(message)
        with pytest.raises(ConnectionClosed):
            while True:
                page.recv(timeout=10)
    assert page.close_code == code
    wait_until(lambda: not v.feed.watchers, what="the page forgotten")
    assert get(v, f"/api/state?token={v.token}").status == 200
    server_side = [r for r in caplog.records if not r.name.startswith("websockets.client")]  # not our test client's
    assert not [r for r in server_side if r.exc_info or r.levelno >= logging.ERROR], [
        r.getMessage() for r in server_side
    ]
    assert not [r for r in server_side if "Traceback" in r.getMessage()]
