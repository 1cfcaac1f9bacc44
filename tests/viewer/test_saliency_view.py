"""The live page draws a model's own saliency map as a heat map, in a real headless Chromium.

The first test is ``scanedge demo --live`` as a user gets it: a real runtime serving the shipped demo model and
the shipped demo classifier (whose manifest declares its saliency head), a replay sending every slice to both,
the viewer following the runtime's PUB feed. The classifier's map comes in its own RESULT, without a mask, and
must join the segmentation's slice: the canvas is tinted where the runtime's own map is high and left as it is
where it is low, and the switch turns it off. The second publishes hand-built RESULTs on a real PUB socket (the
DICOM node's publisher): no layer without a frame, a hostile head and model name shown as text, a map of
another shape than the image refused (not drawn, said why) while the page goes on painting.

Set SCANEDGE_UPDATE_SCREENSHOTS=1 to copy the screenshot into docs/images/ for docs/viewer.md.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from scanedge.dicomnet.publisher import ResultPublisher
from scanedge.imaging.heads import ClassScore, HeadScore
from scanedge.manifest import load_manifest
from scanedge.models import DEMO_CLASSIFIER_PATH
from scanedge.runtime.console.client import Client
from scanedge.runtime.console.replay import Replay, ReplayConfig, SliceEvent, read_series
from scanedge.runtime.wire.payloads import result_frames
from scanedge.runtime.wire.protocol import Echo, Finding, Timings, encode, publish_topic, result_reply
from scanedge.viewer import Viewer, ViewerConfig
from tests.viewer.conftest import needs_chromium
from tests.viewer.test_change_view import canvas_rgb, close
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
HOSTILE_HEAD = '<img src=x onerror="document.body.dataset.pwned=1">lesion_head'
HOSTILE_MODEL = "<b>cls</b>@1"

pytestmark = needs_chromium


def _layers(page, fill: bool, outline: bool, saliency: bool | None = None) -> None:
    """Set the overlay's switches as a click would (the page redraws on each change)."""
    for box, on in (("#show-fill", fill), ("#show-outline", outline), ("#show-saliency", saliency)):
        if on is not None:
            page.evaluate(
                """([sel, on]) => { const b = document.querySelector(sel);
                    if (b.checked !== on) { b.checked = on; b.dispatchEvent(new Event("input")); } }""",
                [box, on],
            )


def _high_and_low(values: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """(col, row) where the map is highest, and one where it is lowest (the deepest such place)."""
    row, col = np.unravel_index(int(np.argmax(values)), values.shape)
    low = np.argwhere(values <= values.min() + 0.02)
    centre = low[len(low) // 2]
    return (int(col), int(row)), (int(centre[1]), int(centre[0]))


def test_demo_live_draws_the_classifiers_own_saliency_map_under_a_switch(two_models, demo_dir, browser_page, tmp_path):
    page, errors = browser_page
    manifest, _ = load_manifest(DEMO_CLASSIFIER_PATH)
    classifier = f"{manifest.name}@{manifest.version}"
    series = read_series([demo_dir])
    (only,) = series
    with Viewer(ViewerConfig(subscribe=two_models.publish_endpoint or "", port=0)) as viewer:
        page.goto(viewer.page_url)
        page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
        with Client(two_models.endpoint) as probe:  # the PUB drops until the SUB's subscription reaches it

            def subscribed() -> bool:
                if viewer.feed.received == 0:
                    probe.segment(np.zeros((8, 8), np.uint8), series="probe", outputs=())  # no mask, no scores
                return viewer.feed.received > 0

            wait_until(subscribed, timeout=30, what="the viewer's subscription")
        replies: list[SliceEvent] = []
        settings = ReplayConfig(endpoint=two_models.endpoint, rate=10, also_models=(manifest.name,))
        Replay(series, settings).run(replies.append)
        last = only.slices[-1].slice
        key = next(e for e in reversed(replies) if e.position == len(only.slices) - 1)
        assert key.result is not None  # the last slice is never superseded: nothing comes after it
        place = f"{key.result.header.position_mm:.3f}"
        # the last slice, painted with the classifier's map joined to it (its RESULT may come before or after)
        wait_until(
            lambda: (item := viewer.feed.retained(only.uid, place)) is not None and item.saliency is not None,
            timeout=60,
            what="the classifier's map joined to the last slice",
        )
        item = viewer.feed.retained(only.uid, place)
        assert item is not None
        page.wait_for_function(f"Number(document.body.dataset.painted) >= {item.seq}", timeout=60_000)
        assert page.evaluate("document.body.dataset.saliency") == "on"
        legend = page.text_content("#saliency-legend") or ""
        assert "model's own saliency map for lesion_present, class lesion" in legend and classifier in legend
        # the runtime's own map of that slice (the model is deterministic): the page follows it
        with Client(two_models.endpoint) as client:
            own = client.segment(last, outputs=("saliency",), model=manifest.name, publish=False)
        assert own.saliency is not None and own.saliency.shape == last.pixels.shape
        high, low = _high_and_low(own.saliency)
        _layers(page, fill=False, outline=False, saliency=True)
        heat_high, heat_low = canvas_rgb(page, *high), canvas_rgb(page, *low)
        _layers(page, fill=False, outline=False, saliency=False)
        assert page.evaluate("document.body.dataset.saliency") == "off"
        plain_high, plain_low = canvas_rgb(page, *high), canvas_rgb(page, *low)
        assert close(heat_low, plain_low)  # low: the slice as it is
        assert not close(heat_high, plain_high, 40)  # high: tinted
        assert heat_high[0] > heat_high[2]  # the hot end of the scale (red/yellow), not the cold one
        assert plain_high[0] == plain_high[1] == plain_high[2]  # switched off: the grey slice again
        # the picture: the slice with the most lesion pixels, looked at again from the strip, map and outline on
        _layers(page, fill=False, outline=True, saliency=True)
        metas = viewer.feed.series[only.uid].slices
        busiest = max(metas.values(), key=lambda m: m["lesion_pixels"])
        page.click(f"#strip .cell[data-key='{busiest['key']}']")
        page.wait_for_function(
            f"document.body.dataset.paintedIndex === '{busiest['index']}' && document.body.dataset.saliency === 'on'",
            timeout=30_000,
        )
        page.wait_for_timeout(300)  # only for the picture: let the panels paint
        png = tmp_path / "viewer-saliency.png"
        png.write_bytes(page.screenshot())
        if os.environ.get("SCANEDGE_UPDATE_SCREENSHOTS"):
            shutil.copy(png, ROOT / "docs" / "images" / "viewer-saliency.png")
    assert not errors, errors


ROWS = COLS = 64


def _publish(
    publisher: ResultPublisher, series: str, z: int, saliency: np.ndarray | None, of: str = "", model: str = "m@1"
) -> None:
    """A slice with a mask, its image and (when given) a saliency frame whose entry names the head ``of``."""
    image = np.full((ROWS, COLS), 90, np.uint8)
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[40:48, 40:48] = 1
    arrays = {"mask": mask, "image": image, "saliency": saliency}
    infos, payload, _ = result_frames(("mask", "image", "saliency"), arrays, "raw", saliency_of=of)
    scores = [HeadScore(of, (ClassScore("lesion", 0.9, 0.5, True),), "lesion", "")] if of else []
    header = result_reply(
        Echo(z + 1, series, f"{series}.{z + 1}", z + 1, None),
        model=model,
        engine="ort",
        timings=Timings(total=2.0, infer=1.0),
        findings=[Finding(1, "lesion", 64, None, 1, 0.9, 0.8)],
        frames=infos,
        received_at=1.0,
        runtime="saliency-test",
        position_mm=float(z),
        scores=scores,
    )
    publisher.publish([publish_topic(series), encode(header), *payload])


def _painted(page, z: int) -> None:
    page.wait_for_function(f"document.body.dataset.paintedIndex === '{z + 1}'", timeout=30_000)


def test_the_layer_is_absent_without_a_map_names_stay_text_and_a_wrong_shape_is_refused(browser_page):
    page, errors = browser_page
    publisher = ResultPublisher("tcp://127.0.0.1:*").start()
    left = np.zeros((ROWS, COLS), np.float32)
    left[:, : COLS // 2] = 1.0  # hot on the left half, cold on the right
    try:
        with Viewer(ViewerConfig(subscribe=publisher.endpoint or "", port=0)) as viewer:
            page.goto(viewer.page_url)
            page.wait_for_selector("#connection[data-state=live]", timeout=60_000)

            def subscribed() -> bool:
                if viewer.feed.received == 0:
                    _publish(publisher, "7.7.7", 0, None)
                return viewer.feed.received > 0

            wait_until(subscribed, timeout=30, what="the viewer's subscription")
            _painted(page, 0)
            # no frame: no layer, no legend, nothing drawn
            assert page.evaluate("document.body.dataset.saliency") == "none"
            assert page.is_hidden("#saliency")
            _layers(page, fill=False, outline=False)
            plain_left, plain_right = canvas_rgb(page, 10, 32), canvas_rgb(page, 54, 20)
            assert plain_left == plain_right == (90, 90, 90)
            # a map, its head and model names hostile: drawn where it is high, the names shown as text
            _publish(publisher, "7.7.7", 1, left, of=HOSTILE_HEAD, model=HOSTILE_MODEL)
            _painted(page, 1)
            assert page.evaluate("document.body.dataset.saliency") == "on" and page.is_visible("#saliency")
            legend = page.text_content("#saliency-legend") or ""
            assert f"for {HOSTILE_HEAD}, class lesion" in legend and HOSTILE_MODEL in legend
            assert page.get_attribute("#saliency-legend", "data-of") == HOSTILE_HEAD
            assert page.evaluate("document.body.dataset.pwned") is None
            assert page.locator("#saliency img, #saliency b").count() == 0
            hot, cold = canvas_rgb(page, 10, 32), canvas_rgb(page, 54, 20)
            assert not close(hot, plain_left, 40) and hot[0] > hot[2]
            assert cold == plain_right
            # the switch: off draws the slice alone, and stays off for the next slice with a map
            _layers(page, fill=False, outline=False, saliency=False)
            assert canvas_rgb(page, 10, 32) == plain_left
            _publish(publisher, "7.7.7", 2, left, of="head")
            _painted(page, 2)
            assert page.evaluate("document.body.dataset.saliency") == "off"
            assert canvas_rgb(page, 10, 32) == plain_left
            _layers(page, fill=False, outline=False, saliency=True)
            assert not close(canvas_rgb(page, 10, 32), plain_left, 40)
            # a map of another shape than the image: refused, said why, not drawn; the page goes on
            _publish(publisher, "7.7.7", 3, np.ones((ROWS // 2, COLS // 2), np.float32), of="head")
            _painted(page, 3)
            assert page.evaluate("document.body.dataset.saliency") == "none"
            assert page.is_visible("#saliency-refused") and page.is_hidden("#saliency-legend")
            assert "32x32 is not the image's 64x64" in (page.text_content("#saliency-refused") or "")
            assert canvas_rgb(page, 10, 32) == plain_left
            assert viewer.feed.saliency_refused == 1
            _publish(publisher, "7.7.7", 4, left, of="head")
            _painted(page, 4)
            assert page.evaluate("document.body.dataset.saliency") == "on" and page.is_hidden("#saliency-refused")
    finally:
        publisher.close()
    assert not errors, errors
