"""The viewer against pages a person might open by chance, in a real Chromium: another site's page that tries
to read the patient images (even knowing the token), and a runtime restarted under an open page."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from scanedge.viewer import Viewer, ViewerConfig
from tests.dicomnet.conftest import free_port
from tests.runtime.conftest import running_server
from tests.viewer.test_browser import painted, replay_in_background
from tests.waiting import wait_until

_THIEF = """<!doctype html><html><body><script>
const target = "127.0.0.1:%(port)d", token = "%(token)s";
document.body.dataset.fetch = "pending";
document.body.dataset.wsMessages = "0";
document.body.dataset.wsBytes = "0";
fetch(`http://${target}/api/state?token=${token}`, {credentials: "include"})
  .then(r => r.text()).then(t => { document.body.dataset.fetch = "read " + t.length; })
  .catch(() => { document.body.dataset.fetch = "refused"; });
const ws = new WebSocket(`ws://${target}/ws?token=${token}`);
ws.binaryType = "arraybuffer";
ws.onmessage = (m) => {
  document.body.dataset.wsMessages = String(Number(document.body.dataset.wsMessages) + 1);
  const n = m.data.byteLength === undefined ? m.data.length : m.data.byteLength;
  document.body.dataset.wsBytes = String(Number(document.body.dataset.wsBytes) + n);
};
ws.onclose = () => { document.body.dataset.ws = "closed"; };
</script></body></html>"""


@pytest.fixture
def other_site(viewer: Viewer) -> Iterator[str]:
    """A web server on another port (another origin) serving a page that goes for the viewer's data."""
    page = (_THIEF % {"port": viewer.port, "token": viewer.token}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_of_another_origin_gets_nothing_even_with_the_token(runtime, viewer, demo_dir, browser_page, other_site):
    """Found in testing: another origin's page received 147 slices (19.3 MB) over the viewer's WebSocket.
    Here it even knows the token (as if leaked) and the person has the viewer open in the same browser."""
    page, _ = browser_page
    page.goto(viewer.page_url)  # the viewer, opened as it should be: its cookie is now in this browser
    page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
    stop, sender, _ = replay_in_background(runtime, demo_dir, stop_after=8)
    thief = page.context.new_page()
    try:
        thief.goto(other_site)
        wait_until(lambda: painted(page) >= 3, timeout=60, what="the viewer's own page painting slices")
        thief.wait_for_function("document.body.dataset.ws === 'closed'", timeout=30_000)
        thief.wait_for_function("document.body.dataset.fetch !== 'pending'", timeout=30_000)
        sender.join(60)
        data = thief.evaluate("({...document.body.dataset})")
    finally:
        stop.set()
        thief.close()
    assert data["fetch"] == "refused" and data["wsMessages"] == "0" and data["wsBytes"] == "0", data
    assert viewer.guard.refused >= 2


def test_the_page_shows_a_gone_runtime_as_stale_and_follows_the_one_started_in_its_place(demo_dir, browser_page):
    """Found in testing: after a runtime restart the page froze on an old slice under a green "live" badge
    until the viewer was restarted."""
    page, errors = browser_page
    port, bind = free_port(), free_port()
    publish, endpoint = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{bind}"
    first = running_server(publish=publish, bind=endpoint)
    runtime = first.__enter__()
    try:
        with Viewer(ViewerConfig(subscribe=publish, port=0)) as viewer:
            page.goto(viewer.page_url)
            page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
            stop, sender, _ = replay_in_background(runtime, demo_dir, stop_after=3)
            wait_until(lambda: painted(page) >= 1, timeout=60, what="a slice of the first runtime")
            sender.join(60)
            stop.set()
            old_id = runtime.runtime_id
            assert page.evaluate("document.body.dataset.runtime") == old_id
            first.__exit__(None, None, None)
            first = None
            page.wait_for_selector("#connection[data-state=stale]", timeout=60_000)
            with running_server(publish=publish, bind=endpoint) as again:
                page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
                before = painted(page)
                stop, sender, _ = replay_in_background(again, demo_dir, stop_after=3)
                wait_until(lambda: painted(page) > before, timeout=60, what="a slice of the new runtime painted")
                sender.join(60)
                stop.set()
                assert page.evaluate("document.body.dataset.runtime") == again.runtime_id != old_id
    finally:
        if first is not None:
            first.__exit__(None, None, None)
    assert not errors, errors
