"""The live page shows a classifier's scores beside the segmentation, in a real headless Chromium.

The first test is ``scanedge demo --live`` as a user gets it: a real runtime serving the shipped demo model and
the shipped demo classifier, a replay of the demo series sending every slice to both (``also_models``), the
viewer following the runtime's PUB feed. The page must paint the segmentation and, for the classifier, each
slice's probability against its threshold and the series' score with its trend, all equal to what the
runtime answered. The second publishes RESULTs with hostile class names on a real PUB socket (the DICOM node's
publisher) and checks that they stay text.

Set SCANEDGE_UPDATE_SCREENSHOTS=1 to copy the screenshot into docs/images/ for docs/viewer.md.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from scanedge.dicomnet.publisher import ResultPublisher
from scanedge.imaging.heads import ClassScore, HeadScore, SeriesClassScore, SeriesScore
from scanedge.manifest import load_manifest
from scanedge.models import DEMO_CLASSIFIER_PATH
from scanedge.runtime.console.client import Client
from scanedge.runtime.console.replay import Replay, ReplayConfig, SliceEvent, read_series
from scanedge.runtime.wire.protocol import Echo, Timings, encode, publish_topic, result_reply
from scanedge.viewer import Viewer, ViewerConfig
from tests.viewer.conftest import needs_chromium
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
HOSTILE_CLASS = '<img src=x onerror="document.body.dataset.pwned=1">bleed'

pytestmark = needs_chromium


def _classifier_label() -> str:
    manifest, _ = load_manifest(DEMO_CLASSIFIER_PATH)
    return f"{manifest.name}@{manifest.version}"


def _scores_of(page, model: str) -> dict:
    """What the page shows for ``model``: slice and series rows (class, value, decision) and the trend's data."""
    return page.evaluate(
        """(model) => {
            const boxes = [...document.querySelectorAll('#score-models .score-model')];
            const box = boxes.find((b) => b.dataset.model === model);
            if (!box) return null;
            const rows = (sel) => [...box.querySelectorAll(sel)].map((p) => ({
                cls: p.dataset.class, value: Number(p.dataset.value), decision: p.dataset.decision,
                text: p.textContent }));
            const trend = box.querySelector('canvas.score-trend');
            return { slice: rows('p.slice-score'), series: rows('p.series-score'),
                     points: Number(trend.dataset.points), trend: JSON.parse(trend.dataset.series),
                     dots: JSON.parse(trend.dataset.slices), text: box.textContent };
        }""",
        model,
    )


def test_demo_live_shows_the_classifiers_slice_and_series_scores_beside_the_segmentation(
    two_models, demo_dir, browser_page, tmp_path
):
    page, errors = browser_page
    classifier = _classifier_label()
    name = classifier.split("@")[0]
    series = read_series([demo_dir])
    (only,) = series
    with Viewer(ViewerConfig(subscribe=two_models.publish_endpoint or "", port=0)) as viewer:
        page.goto(viewer.page_url)
        page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
        with Client(two_models.endpoint) as probe:  # the PUB drops until the SUB's subscription reaches it

            def subscribed() -> bool:
                if viewer.feed.received == 0:
                    probe.segment(np.zeros((8, 8), np.uint8), series="probe", outputs=(), model=name)
                return viewer.feed.received > 0

            wait_until(subscribed, timeout=30, what="the viewer's subscription")
        page.click("#series-list li[data-uid='probe']")
        page.wait_for_selector("#scores:not([hidden])", timeout=30_000)
        replies: list[SliceEvent] = []
        settings = ReplayConfig(endpoint=two_models.endpoint, rate=10, also_models=(name,))
        Replay(series, settings).run(replies.append)
        assert len(replies) == len(only.slices)
        # a busy machine may supersede a slice by the next one of the same model (drop to newest), nothing else
        assert all(e.error.code == "SUPERSEDED" for e in replies if e.error is not None)
        assert any(e.result is not None for e in replies)
        page.click(f"#series-list li[data-uid='{only.uid}']")
        page.wait_for_function(
            """(model) => [...document.querySelectorAll('#score-models .score-model')].some(
                (b) => b.dataset.model === model && Number(b.querySelector('canvas').dataset.points) > 0)""",
            arg=classifier,
            timeout=60_000,
        )
        page.wait_for_timeout(300)  # only for the picture: let the trend's canvas paint
        png = page.screenshot()  # the replay as it went: the series score rising over the slices
        (tmp_path / "viewer-scores.png").write_bytes(png)
        if os.environ.get("SCANEDGE_UPDATE_SCREENSHOTS"):
            shutil.copy(tmp_path / "viewer-scores.png", ROOT / "docs" / "images" / "viewer-scores.png")
        # the runtime's own answers for the same slices, asked one by one (none superseded); each is published
        # too and replaces the slice's earlier score on the page (the runtime's series state replaces it too)
        with Client(two_models.endpoint) as client:
            answers = [
                client.segment(
                    s.slice,
                    series=only.uid,
                    instance=s.slice.identity.sop_instance_uid,
                    index=s.slice.identity.instance_number,
                    outputs=(),
                    model=name,
                ).header
                for s in only.slices
            ]
        # every slice's classifier RESULT has reached the page: the trend has one point per slice
        page.wait_for_function(
            """([model, n]) => [...document.querySelectorAll('#score-models .score-model')].some(
                (b) => b.dataset.model === model && Number(b.querySelector('canvas').dataset.points) === n)""",
            arg=[classifier, len(only.slices)],
            timeout=60_000,
        )
        # the segmentation is painted too: both models' results display from one feed
        page.wait_for_function("document.body.dataset.paintedSeries !== undefined", timeout=30_000)
        assert page.text_content("#model-name").startswith("model ms-lesion-demo@")
        shown = _scores_of(page, classifier)
        assert shown is not None
        final = answers[-1].series_scores[0].classes[0]
        (series_row,) = shown["series"]
        assert series_row["cls"] == "lesion" and series_row["value"] == pytest.approx(final.score, abs=1e-6)
        assert series_row["decision"] == str(final.decision).lower()
        assert f"on {final.slices_positive} slice(s)" in series_row["text"]
        # the trend: the series score as the slices came (max over the slices so far: never falls), ending at it
        trend = shown["trend"]
        assert len(trend) == len(only.slices) and trend[-1] == pytest.approx(final.score, abs=1e-6)
        assert all(b >= a - 1e-9 for a, b in itertools.pairwise(trend))
        per_slice = sorted(a.scores[0].classes[0].probability for a in answers)
        assert sorted(shown["dots"]) == pytest.approx(per_slice, abs=1e-6)
        # this slice: the painted slice's probability, its threshold and the decision
        (slice_row,) = shown["slice"]
        assert any(slice_row["value"] == pytest.approx(p, abs=1e-6) for p in per_slice)
        threshold = answers[0].scores[0].classes[0].threshold
        assert slice_row["decision"] == str(slice_row["value"] >= threshold).lower()
        assert ("present" if slice_row["value"] >= threshold else "absent") in slice_row["text"]
    assert not errors, errors


def _publish(publisher: ResultPublisher, series: str, z: int, p: float, series_score: float) -> None:
    head = HeadScore("cls", (ClassScore(HOSTILE_CLASS, p, 0.5, p >= 0.5),), HOSTILE_CLASS, "<b>triage</b>")
    total = SeriesScore(
        "cls", "max", z + 1, (SeriesClassScore(HOSTILE_CLASS, series_score, 0.5, series_score >= 0.5, z),)
    )
    header = result_reply(
        Echo(z + 1, series, f"{series}.{z + 1}", z + 1, None),
        model="<i>cls</i>@1",
        engine="ort",
        timings=Timings(total=2.0, infer=1.0),
        findings=[],
        frames=[],
        received_at=1.0,
        runtime="score-test",
        position_mm=float(z),
        scores=[head],
        series_scores=[total],
    )
    publisher.publish([publish_topic(series), encode(header)])


def test_scores_from_the_wire_stay_text_and_update_live(browser_page):
    page, errors = browser_page
    publisher = ResultPublisher("tcp://127.0.0.1:*").start()
    try:
        with Viewer(ViewerConfig(subscribe=publisher.endpoint or "", port=0)) as viewer:
            page.goto(viewer.page_url)
            page.wait_for_selector("#connection[data-state=live]", timeout=60_000)

            def subscribed() -> bool:
                if viewer.feed.received == 0:
                    _publish(publisher, "9.9.9", 0, 0.1, 0.1)
                return viewer.feed.received > 0

            wait_until(subscribed, timeout=30, what="the viewer's subscription")
            page.wait_for_selector("#scores:not([hidden])", timeout=30_000)
            probabilities = [0.1, 0.3, 0.9, 0.2]
            for z, p in enumerate(probabilities):
                _publish(publisher, "9.9.9", z, p, max(probabilities[: z + 1]))
                page.wait_for_function(
                    """(n) => { const c = document.querySelector('#score-models canvas');
                        return c && JSON.parse(c.dataset.slices).filter((v) => v !== null).length === n; }""",
                    arg=z + 1,
                    timeout=30_000,
                )
                shown = _scores_of(page, "<i>cls</i>@1")
                assert shown["series"][0]["value"] == pytest.approx(max(probabilities[: z + 1]))
                assert shown["slice"][0]["value"] == pytest.approx(p)  # nothing painted: the newest slice
                assert shown["slice"][0]["decision"] == str(p >= 0.5).lower()
            assert shown["trend"] == pytest.approx([0.1, 0.3, 0.9, 0.9])
            assert shown["slice"][0]["cls"] == HOSTILE_CLASS  # the name arrives whole, as text
            assert HOSTILE_CLASS in shown["text"] and "<b>triage</b>" in shown["text"]
            assert page.evaluate("document.body.dataset.pwned") is None
            assert page.locator("#score-models img, #score-models b, #score-models i").count() == 0
            assert json.loads(page.evaluate("JSON.stringify(document.querySelector('#strip').children.length)")) == 0
    finally:
        publisher.close()
    assert not errors, errors
