"""The viewer's feed keeps a model's further mask heads (``mask:<label>`` frames) with their slice, bounded."""

from __future__ import annotations

import numpy as np

from scanedge.runtime.console.client import Client
from scanedge.runtime.console.replay import _models_with_heads
from scanedge.runtime.wire.payloads import result_frames
from scanedge.runtime.wire.protocol import (
    FRAME_HEAD_CLASS_CHARS,
    Echo,
    Finding,
    FrameInfo,
    HeadClass,
    Timings,
    encode,
    result_reply,
)
from scanedge.safe_text import printable
from scanedge.viewer import FeedLimits, LiveFeed
from scanedge.viewer.feed import MAX_HEADS, pack_slice
from tests.heads.conftest import head_models, sample_slices  # noqa: F401 - the networks three_masks builds on
from tests.heads.test_head_masks import HOSTILE_CLASS, three_masks  # noqa: F401 - the three-mask models
from tests.runtime.conftest import running_server

ROWS, COLS = 16, 24
ORGANS = (HeadClass("background", (0, 0, 0)), HeadClass("liver", (0, 200, 0)), HeadClass("kidney", (255, 0, 0)))


def _organs(value: int = 1) -> np.ndarray:
    plane = np.zeros((ROWS, COLS), np.uint8)
    plane[2:6, 3:9] = value
    return plane


def _message(z: int, heads=(), *, frames: tuple[FrameInfo, ...] | None = None, payload: list | None = None) -> list:
    """A published RESULT of slice ``z`` with a mask, its image and ``heads`` as ``mask:<label>`` frames."""
    arrays = {"mask": np.zeros((ROWS, COLS), np.uint8), "image": np.full((ROWS, COLS), 50, np.uint8)}
    infos, data, _ = result_frames(("mask", "image", "head_masks"), arrays, "raw", head_masks=heads)
    header = result_reply(
        Echo(z, "s", f"s.{z}", z, None),
        model="seg@1",
        engine="ort",
        timings=Timings(total=1.0, infer=1.0),
        findings=[Finding(1, "lesion", 0, None, 0, 0.0, 0.0)],
        frames=frames if frames is not None else infos,
        received_at=1.0,
        runtime="r",
        position_mm=float(z),
    )
    return [b"s", encode(header), *(payload if payload is not None else [np.asarray(a).tobytes() for a in data])]


def test_head_masks_are_kept_described_counted_and_sent_after_the_other_frames():
    feed = LiveFeed("tcp://127.0.0.1:1")
    empty = np.zeros((ROWS, COLS), np.uint8)
    vessels = (HeadClass("background", (0, 0, 0)), HeadClass("vessel", (0, 0, 255)))
    heads = [("mask:organs", _organs(2), ORGANS), ("mask:nothing", empty, vessels), ("mask:vessels", _organs(1), ())]
    item = feed.handle(_message(1, heads))
    assert item is not None
    assert item.meta["heads"] == [
        {
            "label": "organs",
            "classes": [
                {"name": "background", "colour": [0, 0, 0]},
                {"name": "liver", "colour": [0, 200, 0]},
                {"name": "kidney", "colour": [255, 0, 0]},
            ],
            "pixels": 24,
        },
        {
            "label": "nothing",
            "classes": [{"name": "background", "colour": [0, 0, 0]}, {"name": "vessel", "colour": [0, 0, 255]}],
            "pixels": 0,
        },
        {"label": "vessels", "classes": [], "pixels": 24},  # an entry that lists no classes: the page's colours
    ]
    assert item.meta["heads_refused"] is None and feed.heads_refused == 0
    # an all-background head keeps its description and no bytes: two planes, in order
    assert item.heads == _organs(2).tobytes() + _organs(1).tobytes()
    assert item.nbytes == 4 * ROWS * COLS  # image, mask and the two planes with pixels
    assert pack_slice(item).endswith(item.heads)
    plain = feed.handle(_message(2))
    assert plain is not None and plain.heads is None and plain.meta["heads"] == []
    assert pack_slice(plain).endswith(plain.mask or b"")


def test_a_head_mask_of_another_shape_or_dtype_is_refused_and_counted_the_slice_kept():
    feed = LiveFeed("tcp://127.0.0.1:1")
    wrong = np.zeros((ROWS // 2, COLS), np.uint8)
    wrong[0, 0] = 1
    item = feed.handle(_message(3, [("mask:organs", _organs(), ORGANS), ("mask:small", wrong, ORGANS)]))
    assert item is not None and item.mask is not None and item.image is not None
    assert [h["label"] for h in item.meta["heads"]] == ["organs"] and item.heads == _organs().tobytes()
    (why,) = item.meta["heads_refused"]
    assert why == "head mask small 8x24 is not the image's 16x24: not drawn"  # the saliency map's own check
    assert feed.heads_refused == 1
    good = _message(4, [("mask:organs", _organs(), ORGANS)])
    frames = (
        FrameInfo(name="mask", encoding="raw", dtype="uint8", shape=[ROWS, COLS]),
        FrameInfo(name="image", encoding="raw", dtype="uint8", shape=[ROWS, COLS]),
        FrameInfo(name="mask:organs", encoding="raw", dtype="int8", shape=[ROWS, COLS]),  # the image's shape, not uint8
    )
    item = feed.handle(_message(4, frames=frames, payload=good[2:]))
    assert item is not None and item.heads is None and item.meta["heads"] == []
    assert "not raw uint8 labels" in item.meta["heads_refused"][0]
    assert feed.heads_refused == 2 and feed.malformed == 0


def test_at_most_max_heads_are_kept_and_the_rest_refused():
    feed = LiveFeed("tcp://127.0.0.1:1")
    heads = [(f"mask:h{k}", _organs(1), ORGANS[:2]) for k in range(MAX_HEADS + 3)]
    item = feed.handle(_message(5, heads))
    assert item is not None and len(item.meta["heads"]) == MAX_HEADS
    assert item.meta["heads_refused"] == [f"3 head mask(s) past the {MAX_HEADS} a slice keeps: not drawn"]
    assert item.heads is not None and len(item.heads) == MAX_HEADS * ROWS * COLS
    assert feed.heads_refused == 1


def test_hostile_labels_and_class_names_become_bounded_single_lines():
    feed = LiveFeed("tcp://127.0.0.1:1")
    hostile = HeadClass("<b>liver</b>\x1b[31m\n" + "y" * 200, (1, 2, 3))
    item = feed.handle(_message(6, [("mask:<img src=x>\x1b]0;t\x07" + "x" * 100, _organs(), (ORGANS[0], hostile))]))
    assert item is not None
    (head,) = item.meta["heads"]
    assert head["label"].startswith("<img src=x>") and len(head["label"]) <= 64 and head["label"].isprintable()
    name = head["classes"][1]["name"]
    assert name.startswith("<b>liver</b>") and len(name) <= 32 and name.isprintable()


def test_head_masks_count_against_retain_bytes():
    per_slice = 3 * ROWS * COLS  # image, mask, one head plane
    feed = LiveFeed("tcp://127.0.0.1:1", FeedLimits(retain_bytes=4 * per_slice))
    for z in range(10):
        feed.handle(_message(z, [("mask:organs", _organs(), ORGANS)]))
    kept = [z for z in range(10) if feed.retained("s", f"{z:.3f}") is not None]
    assert kept == [6, 7, 8, 9]  # the newest, each with its head
    assert all(feed.retained("s", f"{z:.3f}").heads == _organs().tobytes() for z in kept)  # type: ignore[union-attr]
    assert feed._retained_bytes == 4 * per_slice


def test_the_runtimes_head_frames_list_classes_and_replay_asks_only_models_with_heads(
    three_masks,  # noqa: F811
    head_models,  # noqa: F811
):
    """Over real ZeroMQ: each ``mask:<label>`` entry names the head's classes and colours (hostile names as one
    bounded line), and the replay adds ``head_masks`` only for a model whose PONG lists mask heads."""
    slice_ = sample_slices(1)[0]
    with running_server([three_masks["hostile"], head_models["mask_score+manifest"]]) as server:
        with Client(server.endpoint) as client:
            r = client.segment(slice_, outputs=("mask", "head_masks"))
            entries = {f.name: f for f in r.header.frames}
            organs = entries["mask:head1"].classes
            assert organs is not None and [c.color for c in organs] == [(0, 0, 0), (0, 200, 0), (255, 0, 0)]
            assert organs[1].name == printable(HOSTILE_CLASS, FRAME_HEAD_CLASS_CHARS) and len(organs[1].name) <= 32
            assert [c.name for c in entries["mask:vessels"].classes or ()] == ["background", "vessel"]
            assert entries["mask"].classes is None  # the main mask's entry is as it was
            assert _models_with_heads(client, 10.0) == frozenset({"", "test-three-masks"})
    with running_server([head_models["mask_score+manifest"]]) as server, Client(server.endpoint) as client:
        assert _models_with_heads(client, 10.0) == frozenset()  # never asked of a model without heads
