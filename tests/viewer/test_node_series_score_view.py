"""The live page following a DICOM node shows a series score while the series arrives and turns it final when the
node's series-score update (its 3-D series model's answer at completion) comes. Real node (pynetdicom C-STOREs),
real PUB/SUB, real headless Chromium."""

from __future__ import annotations

import json

import pytest

from scanedge.viewer import Viewer, ViewerConfig
from tests.dicomnet.conftest import listener  # noqa: F401 - the node fixture
from tests.dicomnet.test_durability import Scu, demo, new_series, send
from tests.heads.conftest import expected_series_probability, head_models, series_model_dir  # noqa: F401
from tests.heads.test_series_model_tools import _by_position
from tests.viewer.test_score_view import _scores_of, pytestmark  # noqa: F401 - skipped without chromium
from tests.viewer.test_series_model_view import _label
from tests.waiting import wait_until

pytest.importorskip("pynetdicom", reason="the DICOM node needs the 'dicomnet' extra")

MODEL = "test-mask-score@1.0.0"


def test_a_page_following_a_node_shows_the_series_score_then_the_series_models_final_one(
    browser_page,
    listener,  # noqa: F811
    series_model_dir,  # noqa: F811
):
    page, errors = browser_page
    node = listener(
        [series_model_dir / "model.onnx"],
        publish="tcp://127.0.0.1:*",
        series_timeout_s=600,  # complete when the scanner releases its association, not before
        complete_on_release=True,
        outputs=("seg", "scores"),
    )
    series = new_series(demo(32)[10:16])
    uid = str(series[0].SeriesInstanceUID)
    with Viewer(ViewerConfig(subscribe=node.publish_endpoint or "", port=0)) as viewer:
        page.goto(viewer.page_url)
        page.wait_for_selector("#connection[data-state=live]", timeout=60_000)

        def subscribed() -> bool:
            if viewer.feed.received == 0:
                send(node.port, new_series(demo(1)))
            return viewer.feed.received > 0

        wait_until(subscribed, timeout=60, what="the viewer's subscription")
        scu = Scu(node.port, [str(ds.SOPClassUID) for ds in series])
        try:
            assert [scu.store(ds)[0] for ds in series] == [0] * len(series)
            page.wait_for_selector(f"#series-list li[data-uid='{uid}']", timeout=30_000)
            page.click(f"#series-list li[data-uid='{uid}']")
            page.wait_for_function(
                "(n) => document.querySelector('#score-models canvas')?.dataset.points === String(n)",
                arg=len(series),
                timeout=30_000,
            )
            status, text = _label(page)
            assert (
                status == "pending"
                and text == f"series (provisional max over {len(series)} slice(s); series model pending)"
            )
            shown = _scores_of(page, MODEL)
            dots = shown["dots"]
            assert len([d for d in dots if d is not None]) == len(series)
            running = [max(dots[: i + 1]) for i in range(len(series))]
            assert shown["trend"] == pytest.approx(running, abs=1e-6)  # the live series score, slice by slice
            assert shown["series"][0]["value"] == pytest.approx(running[-1], abs=1e-6)
        finally:
            scu.release()  # the series completes: its series model runs, its final score is published
        page.wait_for_function(
            """() => [...document.querySelectorAll('#score-models .score-model p')]
                .some((p) => p.dataset.seriesModel === 'done')""",
            timeout=60_000,
        )
        status, text = _label(page)
        assert status == "done" and text == f"series (final: 3-D series model on {len(series)} slice(s))"
        out = node.config.out
        wait_until(lambda: len(list((out / "scores").glob(f"{uid}.*.json"))) == 1, timeout=60, what="scores JSON")
        (doc,) = [json.loads(p.read_text()) for p in (out / "scores").glob(f"{uid}.*.json")]
        final = doc["series_scores"][0]["classes"][0]["score"]
        assert final == pytest.approx(expected_series_probability(series_model_dir, _by_position(series)), abs=1e-5)
        shown = _scores_of(page, MODEL)
        assert shown["series"][0]["value"] == pytest.approx(final, abs=1e-6)
        assert shown["points"] == len(series)  # the last slice's point is now the model's answer
        assert shown["trend"][:-1] == pytest.approx(running[:-1], abs=1e-6)
        assert shown["trend"][-1] == pytest.approx(final, abs=1e-6)
        assert shown["dots"] == pytest.approx(dots, abs=1e-9)  # each slice keeps its own probability
    assert not errors, errors
