"""The live page marks a series score from a 3-D series model: provisional (the slices' aggregate, the model
pending) while the series grows, final once the RESULT of its last slice carries the model's answer; a failed
model is said so beside the provisional score. Real PUB socket, real headless Chromium."""

from __future__ import annotations

import numpy as np
import pytest

from scanedge.dicomnet.publisher import ResultPublisher
from scanedge.imaging.heads import ClassScore, HeadScore, SeriesClassScore, SeriesModelRun, SeriesScore
from scanedge.runtime.wire.protocol import Echo, Timings, encode, publish_topic, result_reply
from scanedge.viewer import Viewer, ViewerConfig
from tests.heads.conftest import head_models, series_model_dir  # noqa: F401 - the test models
from tests.viewer.test_score_view import _scores_of, pytestmark  # noqa: F401 - skipped without chromium
from tests.waiting import wait_until


def _publish(publisher: ResultPublisher, z: int, p: float, total: SeriesScore) -> None:
    head = HeadScore("abnormal", (ClassScore("abnormal", p, 0.6, p >= 0.6),), "abnormal")
    header = result_reply(
        Echo(z + 1, "7.7.7", f"7.7.7.{z + 1}", z + 1, None),
        model="vol@1",
        engine="ort",
        timings=Timings(total=2.0, infer=1.0),
        findings=[],
        frames=[],
        received_at=1.0,
        runtime="series-model-test",
        position_mm=float(z),
        scores=[head],
        series_scores=[total],
    )
    publisher.publish([publish_topic("7.7.7"), encode(header)])


def _label(page) -> tuple[str, str]:
    return page.evaluate(
        """() => { const p = [...document.querySelectorAll('#score-models .score-model p')]
            .find((e) => e.dataset.seriesModel !== undefined);
            return p ? [p.dataset.seriesModel, p.textContent] : ["", ""]; }"""
    )


@pytest.mark.parametrize("outcome", ["done", "failed"])
def test_the_page_marks_provisional_and_final_series_scores(browser_page, outcome):
    page, errors = browser_page
    publisher = ResultPublisher("tcp://127.0.0.1:*").start()
    probabilities = [0.2, 0.7, 0.4]

    def provisional(z: int) -> SeriesScore:
        score = max(probabilities[: z + 1])
        run = SeriesModelRun("pending", slices=z + 1, input=(6, 16, 16))
        cls = SeriesClassScore("abnormal", score, 0.6, score >= 0.6, sum(p >= 0.6 for p in probabilities[: z + 1]))
        return SeriesScore("abnormal", "max", z + 1, (cls,), provisional=True, series_model=run)

    try:
        with Viewer(ViewerConfig(subscribe=publisher.endpoint or "", port=0)) as viewer:
            page.goto(viewer.page_url)
            page.wait_for_selector("#connection[data-state=live]", timeout=60_000)

            def subscribed() -> bool:
                if viewer.feed.received == 0:
                    _publish(publisher, 0, probabilities[0], provisional(0))
                return viewer.feed.received > 0

            wait_until(subscribed, timeout=30, what="the viewer's subscription")
            for z in range(len(probabilities) - 1):
                _publish(publisher, z, probabilities[z], provisional(z))
            page.wait_for_function(
                "() => document.querySelector('#score-models canvas')?.dataset.points === '2'", timeout=30_000
            )
            status, text = _label(page)
            assert status == "pending" and text == "series (provisional max over 2 slice(s); series model pending)"
            last = len(probabilities) - 1
            if outcome == "done":
                run = SeriesModelRun("done", slices=3, input=(6, 16, 16), ms=4.2)
                final = SeriesScore(
                    "abnormal", "series_model", 3, (SeriesClassScore("abnormal", 0.83, 0.6, True, 0),), series_model=run
                )
            else:
                run = SeriesModelRun("failed", "NON_FINITE_OUTPUT", "answered NaN", 3, (6, 16, 16))
                final = SeriesScore("abnormal", "max", 3, provisional(last).classes, provisional=True, series_model=run)
            _publish(publisher, last, probabilities[last], final)
            page.wait_for_function(
                "() => document.querySelector('#score-models canvas')?.dataset.points === '3'", timeout=30_000
            )
            status, text = _label(page)
            shown = _scores_of(page, "vol@1")
            if outcome == "done":
                assert status == "done" and text == "series (final: 3-D series model on 3 slice(s))"
                assert shown["series"][0]["value"] == pytest.approx(0.83)
                assert "slice(s))" not in shown["series"][0]["text"]  # one answer for the volume: no slice count
                assert shown["trend"] == pytest.approx([0.2, 0.7, 0.83])
            else:
                assert status == "failed"
                assert text == "series (provisional max over 3 slice(s); series model failed NON_FINITE_OUTPUT)"
                assert shown["series"][0]["value"] == pytest.approx(0.7)
    finally:
        publisher.close()
    assert not errors, errors


def test_a_runtimes_series_model_score_reaches_the_page_final(browser_page, series_model_dir):  # noqa: F811
    """A real runtime serving a model whose score head has a series model: slices sent one by one, the last with
    ``last``; the page shows the provisional score, then the final one the runtime answered."""
    from scanedge.runtime.console.client import Client
    from tests.heads.conftest import sample_slices
    from tests.heads.test_series_model_tools import _positioned
    from tests.runtime.conftest import running_server

    page, errors = browser_page
    slices = _positioned(sample_slices(6, seed=4))
    with (
        running_server([series_model_dir / "model.onnx"], publish="tcp://127.0.0.1:*") as server,
        Viewer(ViewerConfig(subscribe=server.publish_endpoint or "", port=0)) as viewer,
        Client(server.endpoint) as client,
    ):
        page.goto(viewer.page_url)
        page.wait_for_selector("#connection[data-state=live]", timeout=60_000)

        def subscribed() -> bool:
            if viewer.feed.received == 0:
                client.segment(np.zeros((8, 8), np.float32), series="probe", outputs=())
            return viewer.feed.received > 0

        wait_until(subscribed, timeout=30, what="the viewer's subscription")
        replies = [client.segment(s, series="vol-page", outputs=("mask", "image")).header for s in slices[:-1]]
        page.click("#series-list li[data-uid='vol-page']")
        page.wait_for_function(
            "() => document.querySelector('#score-models canvas')?.dataset.points === '5'", timeout=30_000
        )
        assert _label(page)[0] == "pending"
        final = client.segment(slices[-1], series="vol-page", outputs=("mask", "image"), last=True).header
        page.wait_for_function(
            "() => document.querySelector('#score-models canvas')?.dataset.points === '6'", timeout=30_000
        )
        status, text = _label(page)
        (score,) = final.series_scores
        assert score.series_model is not None and score.series_model.status == "done"
        assert status == "done" and text == "series (final: 3-D series model on 6 slice(s))"
        shown = _scores_of(page, "test-mask-score@1.0.0")
        assert shown["series"][0]["value"] == pytest.approx(score.classes[0].score, abs=1e-6)
        assert shown["trend"][-1] == pytest.approx(score.classes[0].score, abs=1e-6)
        assert shown["trend"][:-1] == pytest.approx([r.series_scores[0].classes[0].score for r in replies], abs=1e-6)
    assert not errors, errors
