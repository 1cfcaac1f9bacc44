"""The live page shows a series against its prior: change colours on the image, the legend, "compared with", the
statuses and the load trend, in a real headless Chromium. The RESULTs are real comparisons of synthetic follow-up
pairs (``compare_series`` on ``make_pair``), built by the protocol's builders and published on a real PUB socket by
the DICOM node's own publisher, exactly as the node publishes them (docs/protocol.md sections 4 and 9).

Set SCANEDGE_UPDATE_SCREENSHOTS=1 to copy the screenshot into docs/images/ for docs/viewer.md.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest

from scanedge.demo.followup import make_pair
from scanedge.dicomnet.followup import ChangeUpdate
from scanedge.dicomnet.intake import update_message
from scanedge.dicomnet.publisher import ResultPublisher
from scanedge.imaging.followup import (
    CHANGE_CODES,
    CHANGE_COLOURS,
    PriorVolume,
    SeriesChange,
    SeriesComparison,
    change_image,
    compare_series,
)
from scanedge.imaging.lesion_change import initial_tracking
from scanedge.runtime.wire.payloads import result_frames
from scanedge.runtime.wire.protocol import Echo, Finding, FrameInfo, Timings, encode, publish_topic, result_reply
from scanedge.viewer import LiveFeed, Viewer, ViewerConfig
from scanedge.viewer.feed import pack_slice
from tests.viewer.conftest import needs_chromium
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
HOSTILE_SOURCE = '<img src=x onerror="document.body.dataset.pwned=1">PACS'
HOSTILE_REASON = "<script>document.body.dataset.pwned=2</script><b>PACS</b> said no"
LABEL_RED = (255, 40, 40)  # the page's colour of mask label 1 (the plain overlay)

pytestmark = needs_chromium


def _prior(pair, volume: np.ndarray | None = None, source: str = "prior store") -> PriorVolume:
    tracking, uids = initial_tracking(pair.prior_mask, pair.geometry.spacing)
    prior = pair.prior if volume is None else volume
    return PriorVolume("1.2.826.0.9", "1.2.826.0.9.1", "20250101", prior, pair.geometry, tracking, uids, source, "r")


#: slices of the compared series after which it is compared again, as a live comparison does while the scan
#: grows; each slice's RESULT carries the first comparison that includes it
CHECKPOINTS = (12, 20, 32)


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple]:
    """Series of real comparisons: compared (again at each of CHECKPOINTS), withheld (a prior of noise: the
    registration is poor; its source is hostile markup) and no prior (a hostile reason)."""
    pair = make_pair(3)
    growing = [
        compare_series(pair.current[:k], pair.geometry, pair.current_mask[:k], _prior(pair)) for k in CHECKPOINTS
    ]
    assert all(c.status == "compared" for c in growing)
    compared = growing[-1]
    noise = np.random.default_rng(0).normal(size=pair.prior.shape).astype(np.float32)
    withheld = compare_series(pair.current, pair.geometry, pair.current_mask, _prior(pair, noise, HOSTILE_SOURCE))
    assert withheld.status == "withheld"
    none = compare_series(pair.current, pair.geometry, pair.current_mask, None, no_prior_reason=HOSTILE_REASON)
    return {
        "compared": (pair, compared),
        "growing": (pair, growing),
        "withheld": (pair, withheld),
        "none": (pair, none),
    }


def as_of(growing: list[SeriesComparison], z: int) -> SeriesComparison:
    """The comparison slice ``z``'s RESULT carries: the first one that includes it."""
    return next(c for k, c in zip(CHECKPOINTS, growing) if z < k)


@pytest.fixture
def publisher() -> Iterator[ResultPublisher]:
    pub = ResultPublisher("tcp://127.0.0.1:*").start()
    try:
        yield pub
    finally:
        pub.close()


@pytest.fixture
def change_viewer(publisher: ResultPublisher) -> Iterator[Viewer]:
    assert publisher.endpoint is not None
    with Viewer(ViewerConfig(subscribe=publisher.endpoint, port=0)) as v:
        yield v


def publish_slice(
    publisher: ResultPublisher,
    series: str,
    pair,
    z: int,
    change: SeriesChange | None,
    comparison: SeriesComparison | None,
) -> None:
    """One slice's RESULT as the DICOM node builds it: its outputs through ``result_frames`` (the change frame
    only once the series is compared), its header through the protocol's builder, published as section 9 says."""
    mask = pair.current_mask[z].astype(np.uint8)
    image = np.clip(pair.current[z] / 1000.0 * 255.0, 0, 255).astype(np.uint8)
    codes = None
    if comparison is not None and comparison.status == "compared":
        codes = change_image(comparison.report.tracking[z], comparison.report)
    infos, payload, _ = result_frames(
        ("mask", "image", "change"), {"mask": mask, "image": image, "change": codes}, "raw"
    )
    pixels = int(mask.sum())
    header = result_reply(
        Echo(z + 1, series, f"{series}.{z + 1}", z + 1, None),
        model="ms-lesion-demo@1",
        engine="ort",
        timings=Timings(total=5.0, infer=3.0),
        findings=[Finding(1, "lesion", pixels, pixels * 3.24, int(pixels > 0), 0.9, 0.8)],
        frames=infos,
        received_at=1.0,
        runtime="dicom-node-test",
        position_mm=z * pair.geometry.spacing[2],
        change=change,
    )
    publisher.publish([publish_topic(series), encode(header), *payload])


def publish_series(publisher: ResultPublisher, series: str, pair, comparisons: list[SeriesComparison]) -> None:
    """Every slice of the pair's current study, each with the comparison of :func:`as_of` (one comparison: all
    slices carry it). With several, the first slices say "searching" and then "registering" as the node's
    follow-up would while the prior is looked up and aligned."""
    live = len(comparisons) > 1
    for z in range(pair.current.shape[0]):
        if live and z < 2:
            publish_slice(publisher, series, pair, z, SeriesChange(status="searching"), None)
        elif live and z < 4:
            change = SeriesChange(status="registering", prior_date="20250101", source="prior store")
            publish_slice(publisher, series, pair, z, change, None)
        else:
            comparison = as_of(comparisons, z) if live else comparisons[0]
            publish_slice(publisher, series, pair, z, comparison.summary(z), comparison)


def open_page(page, viewer: Viewer, publisher: ResultPublisher, pairs) -> None:
    """The page open and live; the SUB's subscription is known to be through (a first slice arrived)."""
    page.goto(viewer.page_url)
    page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
    pair, _ = pairs["compared"]

    def first_arrived() -> bool:
        if viewer.feed.received == 0:  # the PUB drops until the SUB's subscription reaches it
            publish_slice(publisher, "1.2.3.100", pair, 0, SeriesChange(status="searching"), None)
        return viewer.feed.received > 0

    wait_until(first_arrived, timeout=30, what="the viewer's subscription")


def canvas_rgb(page, col: float, row: float) -> tuple[int, int, int]:
    """The colour the page painted at image pixel (col, row) of the painted slice, read from the canvas."""
    rgba = page.evaluate(
        """([c, r]) => {
            const v = window.scanedgeView;
            const x = Math.floor(v.x0 + (c + 0.5) * v.scale), y = Math.floor(v.y0 + (r + 0.5) * v.scale);
            return Array.from(document.getElementById("view").getContext("2d").getImageData(x, y, 1, 1).data);
        }""",
        [col, row],
    )
    return int(rgba[0]), int(rgba[1]), int(rgba[2])


def inside(codes: np.ndarray, code: int) -> tuple[int, int]:
    """(col, row) of the pixel deepest inside the region of ``code``: away from any outline."""
    region = (codes == code).astype(np.uint8)
    depth = cv2.distanceTransform(np.pad(region, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(col), int(row)


def close(a: tuple[int, int, int], b: tuple[int, int, int], tolerance: int = 3) -> bool:
    return max(abs(x - y) for x, y in zip(a, b)) <= tolerance


def show(page, series: str, z: int) -> None:
    """Select ``series`` and look at its slice ``z`` (pinned from the strip) until it is painted."""
    page.click(f"#series-list li[data-uid='{series}']")
    cell = page.locator("#strip .cell").nth(z)
    cell.click()
    page.wait_for_function(f"document.body.dataset.paintedSeries === '{series}'", timeout=30_000)
    page.wait_for_function(f"document.body.dataset.paintedIndex === '{z + 1}'", timeout=30_000)


def test_the_page_draws_change_classes_with_the_legend_the_prior_and_the_trend(
    pairs, publisher, change_viewer, browser_page, tmp_path
):
    page, errors = browser_page
    open_page(page, change_viewer, publisher, pairs)
    pair, comparison = pairs["compared"]
    _, growing = pairs["growing"]
    series = "1.2.3.1"
    # the first slices: the prior being looked up, then aligned; no change frame, the plain overlay
    publish_slice(publisher, series, pair, 0, SeriesChange(status="searching"), None)
    page.wait_for_selector("#series-list li[data-uid='1.2.3.1']", timeout=30_000)
    page.click("#series-list li[data-uid='1.2.3.1']")
    page.wait_for_function("document.getElementById('change-status').dataset.status === 'searching'", timeout=30_000)
    assert page.text_content("#change-status") == "searching for a prior study…"
    assert page.locator("#change-legend").is_hidden()
    publish_slice(publisher, series, pair, 2, SeriesChange(status="registering", prior_date="20250101"), None)
    page.wait_for_function("document.getElementById('change-status').dataset.status === 'registering'", timeout=30_000)
    assert page.text_content("#change-status") == "aligning the prior study of 1 January 2025…"
    # the whole series, compared again as it grows
    publish_series(publisher, series, pair, growing)
    slices = pair.current.shape[0]
    wait_until(
        lambda: page.locator("#strip .cell").count() == slices and page.text_content("#change-status") != "",
        timeout=30,
        what="every slice described",
    )
    page.wait_for_function("document.getElementById('change-status').dataset.status === 'compared'", timeout=30_000)
    assert page.text_content("#change-status") == "compared with 1 January 2025"
    assert page.text_content("#change-prior") == "from prior store"
    expected = comparison.summary()
    assert expected.counts is not None
    for name in ("new", "enlarging", "stable", "shrinking", "disappeared", "merged", "split"):
        shown = page.text_content(f"#change-legend tr[data-class='{name}'] td.series")
        assert shown == str(getattr(expected.counts, name)), name
    assert page.text_content("#change-legend tr[data-class='new'] td.series") == "2"
    # the load trend: one point per compared slice (the searching/registering ones carry no load), rising as
    # the series grows; the prior's load as the reference, the change in %
    trend = page.locator("#trend")
    assert trend.get_attribute("data-points") == str(slices - 4)
    assert page.evaluate("JSON.parse(document.getElementById('trend').dataset.series)") == [
        as_of(growing, z).summary().current_load_mm3 for z in range(4, slices)
    ]
    assert trend.get_attribute("data-prior") == str(expected.prior_load_mm3)
    assert f"{expected.load_change_percent:+.1f} %" in (page.text_content("#load-change") or "")
    # the strip marks each compared slice with its most notable change
    marked = page.evaluate("[...document.querySelectorAll('#strip .cell')].map((c) => c.dataset.change || '')")
    notable = ("new", "enlarging", "merged", "split", "shrinking", "stable")

    def most_notable(z: int) -> str:
        counts = as_of(growing, z).summary(z).slice_counts
        return next((n for n in notable if counts is not None and getattr(counts, n) > 0), "")

    assert marked == ["" if z < 4 else most_notable(z) for z in range(slices)]
    assert marked[13] == "new" and marked[10] == "enlarging"
    # a slice through a new lesion: its pixels in the class's colour, the slice's counts in the legend
    page.fill("#opacity", "1")
    page.dispatch_event("#opacity", "input")
    z_new = 13
    show(page, series, z_new)
    shown_with = as_of(growing, z_new)
    codes = change_image(shown_with.report.tracking[z_new], shown_with.report)
    col, row = inside(codes, CHANGE_CODES["new"])
    assert close(canvas_rgb(page, col, row), CHANGE_COLOURS["new"])
    assert page.evaluate("document.body.dataset.overlay") == "change"
    assert page.text_content("#change-legend tr[data-class='new'] td.slice") == "1"
    assert page.text_content("#change-legend tr[data-class='enlarging'] td.slice") == "0"
    # ... and through the enlarging one
    z_enlarging = 10
    show(page, series, z_enlarging)
    shown_with = as_of(growing, z_enlarging)
    codes = change_image(shown_with.report.tracking[z_enlarging], shown_with.report)
    col, row = inside(codes, CHANGE_CODES["enlarging"])
    assert close(canvas_rgb(page, col, row), CHANGE_COLOURS["enlarging"])
    assert page.text_content("#change-legend tr[data-class='enlarging'] td.slice") == "1"
    # looking back changes the slice's column only: the series' counts and load stay the newest
    assert page.text_content("#change-legend tr[data-class='new'] td.series") == "2"
    assert f"{expected.load_change_percent:+.1f} %" in (page.text_content("#load-change") or "")
    # the plain overlay is one click away
    page.uncheck("#show-change")
    assert close(canvas_rgb(page, col, row), LABEL_RED) and page.evaluate("document.body.dataset.overlay") == "labels"
    page.check("#show-change")
    page.fill("#opacity", "0.45")
    page.dispatch_event("#opacity", "input")
    png = page.screenshot()
    (tmp_path / "viewer-change.png").write_bytes(png)
    if os.environ.get("SCANEDGE_UPDATE_SCREENSHOTS"):
        shutil.copy(tmp_path / "viewer-change.png", ROOT / "docs" / "images" / "viewer-change.png")
    assert not errors, errors


def test_change_updates_turn_slices_published_while_registering_into_compared_and_keep_their_image(
    pairs, publisher, change_viewer, browser_page
):
    page, errors = browser_page
    open_page(page, change_viewer, publisher, pairs)
    pair, comparison = pairs["compared"]
    series, slices = "1.2.3.5", pair.current.shape[0]
    page.fill("#opacity", "1")
    page.dispatch_event("#opacity", "input")
    # the whole series published before its comparison ended: every slice "registering", no change frame
    registering = SeriesChange(status="registering", prior_date="20250101", source="prior store")
    for z in range(slices):
        publish_slice(publisher, series, pair, z, registering, None)
    page.wait_for_selector(f"#series-list li[data-uid='{series}']", timeout=30_000)
    page.click(f"#series-list li[data-uid='{series}']")
    wait_until(lambda: page.locator("#strip .cell").count() == slices, timeout=30, what="every slice described")
    page.wait_for_function(f"document.body.dataset.paintedIndex === '{slices}'", timeout=30_000)
    assert page.text_content("#change-status") == "aligning the prior study of 1 January 2025…"
    last = slices - 1
    mask = pair.current_mask[last]
    background = inside((mask == 0).astype(np.uint8) * 9, 9)  # a pixel of the image far from any lesion
    before = canvas_rgb(page, *background)
    painted = page.evaluate("document.body.dataset.painted")
    # the comparison ends: the node's change updates, the slices with change pixels and the newest last
    planes = {z: change_image(comparison.report.tracking[z], comparison.report) for z in range(slices)}
    updated = [z for z in range(last) if planes[z].any()] + [last]
    assert 13 in updated and 10 in updated
    for n, z in enumerate(updated):
        item = ChangeUpdate(
            f"{series}.{z + 1}",
            z + 1,
            z * pair.geometry.spacing[2],
            "ms-lesion-demo@1",
            comparison.summary(z),
            planes[z],
        )
        publisher.publish(update_message(1000 + n, series, item, "dicom-node-test"))
    # the page takes the updates one by one: wait until the last has been applied (one trend point per
    # updated slice), then read what it shows
    page.wait_for_function("document.getElementById('change-status').dataset.status === 'compared'", timeout=30_000)
    page.wait_for_function(f"document.getElementById('trend').dataset.points === '{len(updated)}'", timeout=30_000)
    assert page.text_content("#change-status") == "compared with 1 January 2025"
    expected = comparison.summary()
    assert expected.counts is not None
    for name in ("new", "enlarging", "stable", "shrinking", "disappeared", "merged", "split"):
        assert page.text_content(f"#change-legend tr[data-class='{name}'] td.series") == str(
            getattr(expected.counts, name)
        ), name
    assert f"{expected.load_change_percent:+.1f} %" in (page.text_content("#load-change") or "")
    # the slice shown was painted again from its update: the same image, now with the change layer
    page.wait_for_function(f"document.body.dataset.painted !== '{painted}'", timeout=30_000)
    assert page.evaluate("document.body.dataset.overlay") == "change"
    assert canvas_rgb(page, *background) == before
    assert page.evaluate("document.body.dataset.paintedIndex") == str(slices)
    # an earlier slice looked at again: its image, mask and its update's change colours
    show(page, series, 13)
    col, row = inside(planes[13], CHANGE_CODES["new"])
    assert close(canvas_rgb(page, col, row), CHANGE_COLOURS["new"])
    assert page.text_content("#change-legend tr[data-class='new'] td.slice") == "1"
    marked = page.evaluate("[...document.querySelectorAll('#strip .cell')].map((c) => c.dataset.change || '')")
    assert marked[13] == "new" and marked[10] == "enlarging"
    assert not errors, errors


def test_withheld_and_no_prior_say_why_and_hostile_text_stays_text(pairs, publisher, change_viewer, browser_page):
    page, errors = browser_page
    open_page(page, change_viewer, publisher, pairs)
    pair, withheld = pairs["withheld"]
    publish_series(publisher, "1.2.3.2", pair, [withheld])
    page.wait_for_selector("#series-list li[data-uid='1.2.3.2']", timeout=30_000)
    page.click("#series-list li[data-uid='1.2.3.2']")
    page.wait_for_function("document.getElementById('change-status').dataset.status === 'withheld'", timeout=30_000)
    assert page.text_content("#change-status") == f"change withheld: {withheld.reason}"
    assert withheld.reason.startswith("registration poor")
    assert page.text_content("#change-prior") == f"prior of 1 January 2025 from {HOSTILE_SOURCE}"
    assert page.locator("#change-legend").is_hidden()  # no classes when withheld
    pair, none = pairs["none"]
    publish_series(publisher, "1.2.3.3", pair, [none])
    page.wait_for_selector("#series-list li[data-uid='1.2.3.3']", timeout=30_000)
    page.click("#series-list li[data-uid='1.2.3.3']")
    page.wait_for_function("document.getElementById('change-status').dataset.status === 'no_prior'", timeout=30_000)
    assert page.text_content("#change-status") == f"no prior: {HOSTILE_REASON}"
    assert page.locator("#change-prior").is_hidden()
    # the markup stayed text: no element was made of it and no script of it ran
    assert page.locator("#change img, #change script, #change b").count() == 0
    page.wait_for_function("document.body.dataset.paintedSeries === '1.2.3.3'", timeout=30_000)
    assert page.evaluate("document.body.dataset.pwned") is None
    assert page.evaluate("document.body.dataset.overlay") == "labels"  # no change frame: the plain overlay
    assert not errors, errors


def test_a_series_without_change_shows_no_change_panel(pairs, publisher, change_viewer, browser_page):
    page, errors = browser_page
    open_page(page, change_viewer, publisher, pairs)
    pair, _ = pairs["compared"]
    for z in (12, 13):
        publish_slice(publisher, "1.2.3.4", pair, z, None, None)
    page.wait_for_selector("#series-list li[data-uid='1.2.3.4']", timeout=30_000)
    page.click("#series-list li[data-uid='1.2.3.4']")
    page.wait_for_function("document.body.dataset.paintedSeries === '1.2.3.4'", timeout=30_000)
    assert page.locator("#change").is_hidden() and page.evaluate("document.body.dataset.overlay") == "labels"
    assert not errors, errors


def test_the_feed_passes_the_change_on_and_drops_a_change_frame_it_cannot_draw(pairs):
    """What the page is sent: the change (wire strings as single bounded lines) and the codes after the mask;
    a change frame of another shape or dtype is left out, the slice itself still shown."""
    pair, comparison = pairs["compared"]
    mask = pair.current_mask[13].astype(np.uint8)
    codes = change_image(comparison.report.tracking[13], comparison.report)
    change = SeriesChange(status="no_prior", reason="line one\nline two\x1b[31m" + "x" * 1000)
    infos, payload, _ = result_frames(("mask", "change"), {"mask": mask, "change": codes}, "raw")
    feed = LiveFeed("tcp://127.0.0.1:1")
    header = result_reply(
        Echo(1, "s", "i", 14), model="m", engine="ort", timings=Timings(), findings=[], frames=infos,
        received_at=1.0, runtime="r", change=change,
    )  # fmt: skip
    item = feed.handle([b"s", encode(header), *(p.tobytes() for p in payload)])
    assert item is not None and item.change == codes.tobytes() and item.meta["change_frame"] is True
    reason = item.meta["change"]["reason"]
    assert reason.startswith("line one line two") and "\x1b" not in reason and len(reason) == 300
    assert pack_slice(item).endswith(item.mask + codes.tobytes())  # type: ignore[operator]
    wrong = (infos[0], FrameInfo(name="change", encoding="raw", dtype="uint16", shape=[128, 128]))
    bad = msgspec.structs.replace(header, frames=wrong)
    item = feed.handle([b"s", encode(bad), payload[0].tobytes(), np.zeros((128, 128), np.uint16).tobytes()])
    assert item is not None and item.change is None and item.meta["change_frame"] is False
    assert item.meta["change"]["status"] == "no_prior" and feed.malformed == 0
