"""The viewer's feed applies the DICOM node's series-score update (docs/protocol.md section 9) to the series' score
panel: the update's series scores with the slice's own scores kept, described without pixels, never repainting and
never taking a slice's place; an update for a series it never received is ignored."""

from __future__ import annotations

import msgspec
import numpy as np

from scanedge.dicomnet.followup import ChangeUpdate
from scanedge.dicomnet.intake import series_scores_message, update_message
from scanedge.dicomnet.series import ShownSlice
from scanedge.imaging.followup import SeriesChange
from scanedge.imaging.heads import ClassScore, HeadScore, SeriesClassScore, SeriesModelRun, SeriesScore
from scanedge.runtime.wire.payloads import result_frames
from scanedge.runtime.wire.protocol import Echo, Finding, Timings, decode_reply, encode, publish_topic, result_reply
from scanedge.viewer import LiveFeed

MODEL = "vol@1"


def _slice(z: int, p: float, total: SeriesScore) -> list:
    """A published RESULT of slice ``z`` (mask and image) with its score and the series score so far."""
    arrays = {"mask": np.zeros((8, 8), np.uint8), "image": np.full((8, 8), 40, np.uint8)}
    infos, data, _ = result_frames(("mask", "image"), arrays, "raw")
    header = result_reply(
        Echo(z, "1.2.3", f"1.2.3.{z}", z, None),
        model=MODEL,
        engine="ort",
        timings=Timings(total=1.0, infer=1.0),
        findings=[Finding(1, "lesion", 0, None, 0, 0.0, 0.0)],
        frames=infos,
        received_at=1.0,
        runtime="node",
        position_mm=float(z),
        scores=[HeadScore("abnormal", (ClassScore("abnormal", p, 0.6, p >= 0.6),), "abnormal")],
        series_scores=[total],
    )
    return [publish_topic("1.2.3"), encode(header), *[np.asarray(a).tobytes() for a in data]]


def _pending(score: float, slices: int) -> SeriesScore:
    run = SeriesModelRun("pending", slices=slices, input=(6, 16, 16))
    cls = SeriesClassScore("abnormal", score, 0.6, score >= 0.6, 0)
    return SeriesScore("abnormal", "max", slices, (cls,), provisional=True, series_model=run)


def test_a_series_score_update_reaches_the_score_panel_with_the_slices_own_scores():
    feed = LiveFeed("tcp://127.0.0.1:1")
    feed.handle(_slice(1, 0.3, _pending(0.3, 1)))
    feed.handle(_slice(2, 0.5, _pending(0.5, 2)))
    run = SeriesModelRun("done", slices=2, input=(6, 16, 16), ms=3.0)
    final = SeriesScore(
        "abnormal", "series_model", 2, (SeriesClassScore("abnormal", 0.9, 0.6, True, 0),), series_model=run
    )
    message = series_scores_message(7, "1.2.3", ShownSlice("1.2.3.2", 2, 2.0, MODEL), [final], "node")
    header = decode_reply(message[1])
    assert header.update and header.frames == () and header.series_scores == (final,)  # as the node publishes it
    item = feed.handle(message)
    assert item is not None and item.image is None and item.mask is None  # nothing to repaint
    meta = item.meta
    assert meta["type"] == "scores" and meta["update"] is True and meta["scores_update"] is True
    assert meta["key"] == "2.000" and meta["model"] == MODEL
    assert meta["scores"][0]["classes"][0]["probability"] == 0.5  # the slice's own score, as held
    (total,) = meta["series_scores"]
    assert total["aggregation"] == "series_model" and total["provisional"] is False
    assert total["series_model"]["status"] == "done" and total["classes"][0]["score"] == 0.9
    s = feed.series["1.2.3"]
    assert list(s.slices) == ["1.000", "2.000"] and s.slices["2.000"]["series_scores"][0]["provisional"] is True
    assert feed.snapshot()["series"][0]["scores"] == [meta]  # a page connecting later gets it too
    # a change update of that slice afterwards is a change update, not a score update
    change = SeriesChange("compared")
    after = feed.handle(update_message(8, "1.2.3", ChangeUpdate("1.2.3.2", 2, 2.0, MODEL, change, None), "node"))
    assert after is not None and after.meta["scores_update"] is False


def test_a_series_score_update_of_an_unknown_series_or_one_without_scores_is_ignored():
    feed = LiveFeed("tcp://127.0.0.1:1")
    final = _pending(0.4, 1)
    assert feed.handle(series_scores_message(1, "9.9", ShownSlice("9.9.1", 1, None, MODEL), [final], "node")) is None
    feed.handle(_slice(1, 0.4, final))
    bare = series_scores_message(2, "1.2.3", ShownSlice("1.2.3.1", 1, 1.0, MODEL), [final], "node")
    header = msgspec.structs.replace(decode_reply(bare[1]), series_scores=())
    assert feed.handle([bare[0], encode(header)]) is None
    assert feed.malformed == 0
