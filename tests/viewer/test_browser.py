"""The live page in a real headless Chromium (Debian's package) during a replay at a scanner's pace.

Set SCANEDGE_UPDATE_SCREENSHOTS=1 to copy the screenshot into docs/images/ for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from scanedge.runtime.replay import Replay, ReplaySettings, read_series
from tests.waiting import wait_until

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
OVERLAY_RGB = (255, 40, 40)  # the demo model's lesion colour, the page's first label colour
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
)


@pytest.fixture
def browser_page():
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


def overlay_pixels(png: bytes) -> int:
    """Pixels of the overlay's colour (the outline is drawn in it, unblended) in a screenshot."""
    rgb = decode(png)
    near = np.abs(rgb.astype(np.int16) - np.array(OVERLAY_RGB, np.int16)).max(axis=2) <= 30
    return int(near.sum())


def painted(page) -> int:
    return int(page.evaluate("Number(document.body.dataset.painted || 0)"))


def decode(png: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def screenshot_of_a_lesion_slice(page) -> tuple[bytes, np.ndarray]:
    """The whole page and its image area while a slice with lesions is on screen (checked before and after:
    slices keep arriving at 10/s, so a shot that straddles a new slice is taken again)."""
    box = page.locator("#view").bounding_box()
    for _ in range(50):
        page.wait_for_function("Number(document.body.dataset.paintedLesionPixels || 0) >= 20", timeout=60_000)
        before = painted(page)
        png = page.screenshot()
        if painted(page) == before:
            x, y, w, h = (round(v) for v in (box["x"], box["y"], box["width"], box["height"]))
            return png, decode(png)[y : y + h, x : x + w]
    raise AssertionError("no screenshot held still on one slice with lesions")


def differing_pixels(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > 8).sum())


def test_the_live_page_follows_a_replay(runtime, viewer, demo_dir, browser_page, tmp_path):
    page, errors = browser_page
    page.goto(viewer.url)
    page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
    settings = ReplaySettings(endpoint=runtime.endpoint, rate=10.0, loop=True, max_loops=4)
    replay = Replay(read_series([demo_dir]), settings)
    stop = threading.Event()
    reports: list = []
    sender = threading.Thread(target=lambda: reports.extend(replay.run(stop=stop)), daemon=True)
    sender.start()
    try:
        png, view = screenshot_of_a_lesion_slice(page)
        (tmp_path / "live-viewer.png").write_bytes(png)
        near = np.abs(view.astype(np.int16) - np.array(OVERLAY_RGB, np.int16)).max(axis=2) <= 30
        assert int(near.sum()) >= 20, "no pixels in the overlay colour on a slice with lesions"
        # slices apart, the picture has moved on
        first = painted(page)
        page.wait_for_function(f"Number(document.body.dataset.painted || 0) >= {first + 5}", timeout=60_000)
        later = page.locator("#view").screenshot()
        assert differing_pixels(view, decode(later)) > 1000, "two slices apart look the same"
    finally:
        stop.set()
        sender.join(60)
    (report,) = reports
    assert report.failed == 0 and report.load is not None and report.load.slices == 32
    expected = f"{report.load.volume_mm3:.1f}"
    wait_until(lambda: page.text_content("#lesion-volume") == expected, timeout=30, what="the final volume shown")
    assert page.text_content("#lesion-count") == str(report.load.lesions)
    assert page.locator("#strip .cell").count() == 32
    assert page.locator("#strip .cell .mark").count() == report.load.load("lesion").slices_with_finding
    assert not errors, errors
    with urllib.request.urlopen(viewer.url + "api/state", timeout=10) as r:
        latency = json.load(r)["publish_to_paint_ms"]
    assert latency["count"] >= 10
    print(f"publish-to-paint in headless Chromium: {latency}")  # recorded in BENCHMARKS.md, not judged here
    if os.environ.get("SCANEDGE_UPDATE_SCREENSHOTS"):
        shutil.copy(tmp_path / "live-viewer.png", ROOT / "docs" / "images" / "live-viewer.png")


def test_overlay_toggles_change_what_is_drawn(runtime, viewer, demo_dir, browser_page):
    page, errors = browser_page
    page.goto(viewer.url)
    page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
    series = read_series([demo_dir])
    lesion_slice = next(i for i in series[0].slices if i.slice.identity.instance_number == 20)
    from scanedge.runtime.client import Client

    with Client(runtime.endpoint) as client:
        client.segment(lesion_slice.slice, series="toggles", outputs=("mask", "image"))
    page.wait_for_function("Number(document.body.dataset.paintedLesionPixels || 0) > 0", timeout=60_000)
    both = overlay_pixels(page.locator("#view").screenshot())
    page.uncheck("#show-outline")
    page.uncheck("#show-fill")
    nothing = overlay_pixels(page.locator("#view").screenshot())
    page.check("#show-fill")
    page.fill("#opacity", "1")
    page.dispatch_event("#opacity", "input")
    solid_fill = overlay_pixels(page.locator("#view").screenshot())
    assert nothing == 0 < both and solid_fill > 0
    page.fill("#zoom", "4")
    page.dispatch_event("#zoom", "input")
    zoomed = overlay_pixels(page.locator("#view").screenshot())
    assert zoomed != solid_fill  # the view is magnified around the centre
    assert not errors, errors
