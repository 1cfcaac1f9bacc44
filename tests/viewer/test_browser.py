"""The live page in a real headless Chromium (Debian's package) during a replay at a scanner's pace.

Set SCANEDGE_UPDATE_SCREENSHOTS=1 to copy the screenshot into docs/images/ for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from scanedge.runtime.console.replay import Replay, ReplayConfig, read_series
from tests.viewer.conftest import needs_chromium
from tests.waiting import wait_until

OVERLAY_RGB = (255, 40, 40)  # the demo model's lesion colour, the page's first label colour
ROOT = Path(__file__).resolve().parents[2]

pytestmark = needs_chromium


def overlay_pixels(png: bytes) -> int:
    """Pixels of the overlay's colour (the outline is drawn in it, unblended) in a screenshot."""
    rgb = decode(png)
    near = np.abs(rgb.astype(np.int16) - np.array(OVERLAY_RGB, np.int16)).max(axis=2) <= 30
    return int(near.sum())


def painted(page) -> int:
    return int(page.evaluate("Number(document.body.dataset.painted || 0)"))


def decode(png: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def differing_pixels(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > 8).sum())


def viewer_state(viewer) -> dict:
    with urllib.request.urlopen(viewer.url + "api/state?token=" + viewer.token, timeout=10) as r:
        return json.load(r)


def replay_in_background(runtime, demo_dir, stop_after: int | None = None):
    """The demo series at 10 slices/s from another thread; with ``stop_after``, the scan stops once that
    many slices are answered."""
    replay = Replay(read_series([demo_dir]), ReplayConfig(endpoint=runtime.endpoint, rate=10.0))
    stop = threading.Event()
    reports: list = []

    def answered(event) -> None:
        if stop_after is not None and event.position + 1 >= stop_after:
            stop.set()

    sender = threading.Thread(target=lambda: reports.extend(replay.run(answered, stop)), daemon=True)
    sender.start()
    return stop, sender, reports


def test_the_live_page_follows_a_replay(runtime, viewer, demo_dir, browser_page, tmp_path):
    page, errors = browser_page
    page.goto(viewer.page_url)
    page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
    stop, sender, reports = replay_in_background(runtime, demo_dir, stop_after=18)  # slices 14-21 show lesions
    try:
        # slices apart, the picture has moved on
        page.wait_for_function("Number(document.body.dataset.painted || 0) >= 3", timeout=60_000)
        first = painted(page)
        early = decode(page.locator("#view").screenshot())
        page.wait_for_function(f"Number(document.body.dataset.painted || 0) >= {first + 5}", timeout=60_000)
        later = decode(page.locator("#view").screenshot())
        assert differing_pixels(early, later) > 1000, (
            f"two slices apart look the same (slices {first} and {painted(page)} painted; mean grey "
            f"{early.mean():.1f} and {later.mean():.1f})"
        )
    finally:
        sender.join(60)
        stop.set()
    (report,) = reports
    # (a loaded machine may supersede a slice now and then: the load then holds one slice fewer)
    assert report.failed == 0 and report.load is not None and 16 <= report.load.slices <= 20
    wait_until(
        lambda: painted(page) == viewer_state(viewer)["series"][0]["latest"]["seq"], timeout=30, what="the last slice"
    )
    shown = int(page.evaluate("Number(document.body.dataset.paintedIndex)"))
    assert 18 <= shown <= 21  # the newest slice, which shows lesions
    png = page.screenshot()
    (tmp_path / "live-viewer.png").write_bytes(png)
    box = page.locator("#view").bounding_box()
    x, y, w, h = (round(v) for v in (box["x"], box["y"], box["width"], box["height"]))
    view = decode(png)[y : y + h, x : x + w]
    near = np.abs(view.astype(np.int16) - np.array(OVERLAY_RGB, np.int16)).max(axis=2) <= 30
    assert int(near.sum()) >= 20, "no pixels in the overlay colour on a slice with lesions"
    # what the page says is what the replay's summary says
    assert page.text_content("#lesion-volume") == f"{report.load.volume_mm3:.1f}"
    assert page.text_content("#lesion-count") == str(report.load.lesions)
    assert page.text_content("#slice-count") == str(report.load.slices)
    assert page.locator("#strip .cell").count() == report.ok
    assert page.locator("#strip .cell .mark").count() == report.load.load("lesion").slices_with_finding
    if os.environ.get("SCANEDGE_UPDATE_SCREENSHOTS"):
        shutil.copy(tmp_path / "live-viewer.png", ROOT / "docs" / "images" / "live-viewer.png")
    # publish-to-paint over one whole pass with nothing else going on (recorded in BENCHMARKS.md, not judged)
    before = painted(page)
    stop, sender, reports = replay_in_background(runtime, demo_dir)
    sender.join(60)
    (again,) = reports
    assert again.failed == 0 and again.load is not None and 28 <= again.load.slices <= 32  # (superseded: as above)
    shown_count = str(again.load.slices)
    wait_until(lambda: page.text_content("#slice-count") == shown_count, timeout=30, what="the whole series shown")
    assert viewer_state(viewer)["publish_to_paint_ms"]["count"] >= 10  # the page reports what it measures
    timings = [t for t in page.evaluate("window.scanedgeTimings") if t["seq"] > before]
    latency = np.array([t["painted"] - t["replied"] for t in timings])
    steps = {
        "runtime -> viewer": [t["viewer"] - t["replied"] for t in timings],
        "viewer -> page": [t["arrived"] - t["viewer"] for t in timings],
        "decode + draw": [t["drawn"] - t["arrived"] for t in timings],
        "draw -> painted": [t["painted"] - t["drawn"] for t in timings],
    }
    p50, p90 = np.percentile(latency, (50, 90))
    parts = ", ".join(f"{k} {np.median(v):.1f}" for k, v in steps.items())
    print(f"publish-to-paint in headless Chromium: p50 {p50:.1f} ms, p90 {p90:.1f} ms (n={latency.size}); {parts}")
    assert not errors, errors


def test_overlay_toggles_change_what_is_drawn(runtime, viewer, demo_dir, browser_page):
    page, errors = browser_page
    page.goto(viewer.page_url)
    page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
    series = read_series([demo_dir])
    lesion_slice = next(i for i in series[0].slices if i.slice.identity.instance_number == 20)
    from scanedge.runtime.console.client import Client

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
