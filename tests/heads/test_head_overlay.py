"""Further mask heads on the overlay: dashed outlines in each head's class colours, the main mask left as it was,
an all-background head drawing nothing; ``scanedge segment``'s overlays and montage draw and name them too.

The models are tests/heads/test_head_masks.py's three-mask networks (``organs``: liver and kidney, ``vessels``,
and in the hostile one a head that never finds anything, with hostile head and class names)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx

from scanedge.imaging.head_overlay import DASH, HeadOverlay, head_class_name, head_legend
from scanedge.imaging.heads import MaskHead
from scanedge.imaging.overlay import OverlayConfig
from scanedge.manifest import ClassSpec, HeadSpec, embed_manifest
from scanedge.runtime.core.pipeline import Pipeline
from tests.heads.conftest import sample_slices, two_mask_manifest
from tests.heads.test_head_masks import HOSTILE_CLASS, _three_mask_graph, three_mask_manifest, three_masks  # noqa: F401

#: organs: liver, kidney (the manifest's default red); vessels: vessel
HEAD_COLOURS = {(0, 200, 0), (255, 0, 0), (0, 0, 255)}


def _big(slices: list[np.ndarray], side: int = 160) -> list[np.ndarray]:
    """The sample slices at ``side`` x ``side`` (the models resize them to their 32x32): room for the names."""
    return [cv2.resize(s, (side, side), interpolation=cv2.INTER_LINEAR) for s in slices]


def _edges(mask: np.ndarray) -> np.ndarray:
    """Labelled pixels with a differently labelled 8-neighbour (or on the image's border): where outlines lie."""
    padded = np.pad(mask, 1, constant_values=0)
    differs = (mask == 0) & False
    for dy in range(3):
        for dx in range(3):
            differs |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] != mask
    return (mask > 0) & differs


def test_heads_are_dashed_outlines_in_their_class_colours_and_the_main_mask_is_unchanged(three_masks):  # noqa: F811
    with Pipeline.open(three_masks["plain"]) as pipe:
        for pixels in _big(sample_slices(3)):
            shown = pipe.run(pixels)
            without = pipe.run(pixels, overlay=OverlayConfig(heads=False))
            assert shown.overlay is not None and without.overlay is not None
            np.testing.assert_array_equal(shown.mask, without.mask)
            changed = (shown.overlay != without.overlay).any(axis=-1)
            names = np.zeros(changed.shape, bool)
            names[:60, 60:] = True  # the top-right corner, where the heads' classes are named (three lines)
            outline = np.zeros(changed.shape, bool)
            for head in shown.mask_heads:
                outline |= _edges(head.mask)
            # every pixel the heads changed lies on a head's outline or among the names; nowhere else
            assert not (changed & ~outline & ~names).any()
            on_outline = shown.overlay[changed & ~names]
            assert {tuple(int(v) for v in c) for c in on_outline} <= HEAD_COLOURS
            # dashed: part of each outline is drawn, part left as the overlay without heads has it
            drawn = (changed & outline & ~names).sum()
            assert 0.3 * (outline & ~names).sum() < drawn < 0.75 * (outline & ~names).sum()
            # the head classes on the slice are named in the corner
            assert changed[names].any()


def test_an_all_background_head_leaves_the_overlay_of_a_model_without_it(head_models, tmp_path: Path):
    """The same graph twice: with its ``empty`` head declared (logits of -100: nothing ever found), and with no
    further head at all. Their overlays are the same bytes."""
    graph = _three_mask_graph(head_models["two_masks"], "organs", empty=True)
    nothing = (ClassSpec("background", (0, 0, 0)), ClassSpec("nothing", (0, 255, 0)), ClassSpec("never"))
    with_empty = two_mask_manifest().replace(heads=(HeadSpec("empty", "mask", activation="sigmoid", classes=nothing),))
    embed_manifest(graph, with_empty, tmp_path / "empty-head.onnx")
    embed_manifest(
        onnx.load(str(head_models["two_masks"])), two_mask_manifest().replace(heads=()), tmp_path / "no.onnx"
    )
    with Pipeline.open(tmp_path / "empty-head.onnx") as a, Pipeline.open(tmp_path / "no.onnx") as b:
        for pixels in _big(sample_slices(3)):
            ra, rb = a.run(pixels), b.run(pixels)
            (head,) = ra.mask_heads
            assert not head.mask.any() and ra.mask.any()  # the main mask finds something, the head nothing
            assert ra.overlay is not None and rb.overlay is not None
            np.testing.assert_array_equal(ra.overlay, rb.overlay)


def test_a_head_is_dashed_in_its_colour_and_named_and_a_misplaced_one_is_not_drawn():
    organs = HeadSpec(
        "organs", "mask", classes=(ClassSpec("background", (0, 0, 0)), ClassSpec("liver", (0, 200, 0)), ClassSpec("k"))
    )
    manifest = two_mask_manifest().replace(heads=(organs,))
    square = np.zeros((200, 200), np.uint8)
    square[50:150, 60:100] = 1
    head = MaskHead("organs", square, np.zeros((3, 1, 1), np.float32), ())
    image = np.full((200, 200, 3), 90, np.uint8)
    drawn = HeadOverlay(manifest)
    assert drawn.draw(image, [head]) == 1
    green = np.all(image == (0, 200, 0), axis=-1)
    edge = _edges(square)
    assert green[edge].sum() > 0 and not (green & ~edge & (np.arange(200)[None, :] < 150)).any()
    # along the top edge (one contour run), dashes of DASH pixels on and DASH off
    top = green[50, 60:100].astype(int)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, top, 0])))[::2]
    assert set(runs[1:-1].tolist()) <= {DASH} and len(runs) >= 3
    corner = image[:20, 100:].astype(int)
    assert (corner[..., 1] - corner[..., 0] > 80).any()  # "organs: liver" in the top-right corner, in its colour
    # a head on another grid than the image: not drawn rather than drawn in the wrong place
    other = np.full((200, 200, 3), 90, np.uint8)
    misplaced = MaskHead("organs", square[:100], np.zeros((3, 1, 1), np.float32), ())
    assert drawn.draw(other, [misplaced]) == 0 and (other == 90).all()


def test_hostile_class_names_are_drawn_as_bounded_ascii(three_masks):  # noqa: F811
    # the escape sequence goes whole, the line break becomes spaces, the name is cut at 40 characters
    assert head_class_name("head1", HOSTILE_CLASS) == "head1: liver  " + "y" * 30 + "..."
    with Pipeline.open(three_masks["hostile"]) as pipe:
        legend = head_legend(pipe.manifest)
        result = pipe.run(_big(sample_slices(1))[0])
    assert result.overlay is not None
    assert all(name.isascii() and name.isprintable() and len(name) <= 82 for name, _ in legend)
    assert [name for name, _ in legend][:3] == [
        head_class_name("head1", HOSTILE_CLASS),
        "head1: kidney",
        "vessels: vessel",
    ]


def test_segment_overlays_and_montage_draw_the_heads_and_the_legend_names_them(
    three_masks,  # noqa: F811
    head_models,
    demo_series,
    tmp_path: Path,
):
    """``scanedge segment --montage`` with the three-mask model, and with the same graph declaring no further
    heads: the overlays differ only by the heads' dashed outlines (and their names in the corner), and the
    montage's legend lists the heads' classes after the main ones."""
    from scanedge.cli import main

    bare = tmp_path / "bare.onnx"
    graph = _three_mask_graph(head_models["two_masks"])
    embed_manifest(graph, three_mask_manifest().replace(heads=()), bare)
    data = tmp_path / "in"
    data.mkdir()
    for path in sorted(demo_series.glob("*.dcm"))[10:13]:
        shutil.copy(path, data / path.name)
    for name, model in (("heads", three_masks["plain"]), ("bare", bare)):
        args = ["segment", str(data), "--model", str(model), "--out", str(tmp_path / name), "--montage"]
        assert main(args) == 0
    results = json.loads((tmp_path / "heads" / "results.json").read_text())
    outlines = 0
    for entry in results["slices"]:
        shown = cv2.imread(entry["overlay"])[..., ::-1]
        other = cv2.imread(str(tmp_path / "bare" / Path(entry["overlay"]).name))[..., ::-1]
        changed = (shown != other).any(axis=-1)
        rows, cols = changed.shape
        corner = np.zeros(changed.shape, bool)
        corner[: rows // 4, cols // 2 :] = True  # the heads' names
        outside = changed & ~corner
        assert {tuple(int(v) for v in c) for c in shown[outside]} <= HEAD_COLOURS  # only the heads' colours
        outlines += int(outside.sum())
    assert outlines > 0
    sheet = cv2.imread(str(tmp_path / "heads" / "montage.png"))[..., ::-1]
    plain = cv2.imread(str(tmp_path / "bare" / "montage.png"))[..., ::-1]
    assert sheet.shape == plain.shape
    strip = 40  # the legend strip at the bottom: the same first entry, then the heads' classes
    assert (sheet[-strip:] != plain[-strip:]).any()
    for colour in HEAD_COLOURS:  # each head class's swatch is in the legend
        assert np.all(sheet[-strip:] == colour, axis=-1).sum() >= 9
    assert [name for name, _ in head_legend(three_mask_manifest())] == [
        "organs: liver",
        "organs: kidney",
        "vessels: vessel",
    ]
