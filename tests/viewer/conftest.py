"""A real runtime publishing on loopback, and the viewer following it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the live viewer needs the 'viewer' extra")

from scanedge.runtime.serving.server import Server
from scanedge.viewer import Viewer, ViewerConfig
from tests.runtime.conftest import running_server


@pytest.fixture
def runtime() -> Iterator[Server]:
    with running_server(publish="tcp://127.0.0.1:*") as srv:
        yield srv


@pytest.fixture
def viewer(runtime: Server) -> Iterator[Viewer]:
    with Viewer(ViewerConfig(subscribe=runtime.publish_endpoint, port=0)) as v:
        yield v


@pytest.fixture(scope="session")
def demo_dir():
    from scanedge.demo.series import demo_series_dir

    return demo_series_dir()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page():
    """A page in a real headless Chromium (Debian's package, driven by Playwright) and the script errors it had."""
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the 'test' extra)")
    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory(prefix="scanedge-chromium-") as profile:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors
        finally:
            context.close()


#: for a test module that drives the page in Chromium: skipped, saying why, where Debian's chromium is missing
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
)


@pytest.fixture
def two_models() -> Iterator[Server]:
    """The runtime as ``demo --live`` starts it: the demo model (the default) and the demo classifier."""
    from scanedge.models import DEMO_CLASSIFIER_PATH, DEMO_MODEL_PATH

    with running_server([DEMO_MODEL_PATH, DEMO_CLASSIFIER_PATH], publish="tcp://127.0.0.1:*") as srv:
        yield srv
