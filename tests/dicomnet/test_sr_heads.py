"""The sr output of a model with further mask heads: real C-STOREs to a real node, its SR read back with highdicom
and dcmtk's dsrdump. Each head class's group is checked against :class:`MaskHeadLoad` computed here over the
same slices (the model run locally, the slices decoded as the node decodes them), and its segment reference
against the SEG the node wrote (the ``seg`` output's, or the sr output's own when the node has no ``seg`` output).

The models are the three-mask test models of tests/heads/test_head_masks.py: ``organs`` (liver coded SCT Liver,
kidney uncoded) and ``vessels``; the hostile one names ``organs`` and liver with escapes, newlines and 300
characters, and adds ``empty`` (a head that never finds anything) and a score head.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest

from scanedge.imaging.heads import MaskHeadLoad, head_labels
from scanedge.imaging.lesion_load import accumulate
from scanedge.manifest import load_manifest
from scanedge.runtime.core.pipeline import Pipeline
from tests.dicomnet.conftest import listener  # noqa: F401 - the node fixture
from tests.dicomnet.test_durability import demo, new_series, send
from tests.heads.conftest import head_models  # noqa: F401 - the test models
from tests.heads.test_head_masks import LIVER, ORGAN, three_masks  # noqa: F401 - the three-mask models
from tests.waiting import wait_until

pytest.importorskip("pynetdicom", reason="the DICOM node needs the 'dicomnet' extra")
pytest.importorskip("scipy", reason="the sr output needs the 'followup' extra")
hd = pytest.importorskip("highdicom")

VOLUME = ("118565006", "SCT")


def _encoded(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def expected_loads(model: Path, series: list[pydicom.Dataset]) -> dict[str, MaskHeadLoad]:
    """Each mask head's load over ``series``, computed here: the model run on each decoded slice, the head
    masks accumulated with the slices' own geometry and instance numbers."""
    from scanedge.imaging.dicom import slices_from_dicom

    manifest, _ = load_manifest(model)
    heads = manifest.mask_heads
    per_head: list[list[Any]] = [[] for _ in heads]
    with Pipeline.open(model) as pipe:
        for ds in series:
            (piece,) = slices_from_dicom(_encoded(ds))
            result = pipe.run(piece, overlay=False)
            for masks, head in zip(per_head, result.mask_heads):
                masks.append((head.mask, piece.geometry, piece.identity.instance_number))
    labels = head_labels([h.name for h in heads])
    return {
        h.name: MaskHeadLoad(h.name, label, accumulate([c.name for c in h.classes], masks))
        for h, label, masks in zip(heads, labels, per_head)
    }


def run(start, model: Path, outputs: tuple[str, ...], count: int = 4):
    """A new demo series of ``count`` images through a node with ``outputs``: the series, its SR (highdicom),
    the SR's path and the node's output folder, once every output is durable."""
    node = start([model], series_timeout_s=0.3, outputs=outputs)
    series = new_series(demo(count))
    assert [s for s, _ in send(node.port, series)] == [0] * count
    out = node.config.out

    def done() -> bool:
        written = all(list((out / name).glob("*.dcm")) for name in outputs if name in ("seg", "sr"))
        return written and any(_modality(p) == "SR" for p in (out / "sr").glob("*.dcm")) and not node.spool.files

    wait_until(done, timeout=90, what="the node's SEG and SR")
    node.stop()
    (sr_path,) = [p for p in sorted((out / "sr").glob("*.dcm")) if _modality(p) == "SR"]
    return series, hd.sr.srread(sr_path), sr_path, out


def _modality(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).Modality)


def head_seg(folder: Path) -> Any:
    """The node's SEG in ``folder`` (not a lesion SEG)."""
    (path,) = [
        p
        for p in folder.glob("*.dcm")
        if _modality(p) == "SEG"
        and not str(pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription).startswith("scanedge lesions")
    ]
    return hd.seg.segread(path)


def head_groups(sr: Any, seg: Any) -> dict[str, Any]:
    """The SR's groups named as one of ``seg``'s segments, by tracking identifier."""
    labels = {str(d.segment_label) for d in seg.SegmentSequence}
    return {g.tracking_identifier: g for g in all_groups(sr) if g.tracking_identifier in labels}


def all_groups(sr: Any) -> list[Any]:
    """The SR's TID 1411 and TID 1501 groups."""
    content = sr.content
    return [*content.get_volumetric_roi_measurement_groups(), *content.get_image_measurement_groups()]


def reference(group: Any) -> tuple[str, int]:
    """(SOP Instance UID, segment number) the group's IMAGE item references."""
    (item,) = [i for i in group[0].ContentSequence if i.ValueType == "IMAGE"]
    ref = item.ReferencedSOPSequence[0]
    return str(ref.ReferencedSOPInstanceUID), int(ref.ReferencedSegmentNumber)


def figures(group: Any) -> dict[tuple[str, str], float]:
    """The group's NUM items: (code value, scheme) -> value."""
    return {(m.name.value, m.name.scheme_designator): float(m.value) for m in group.get_measurements()}


def codes_in(group: Any) -> set[tuple[str, str]]:
    """The coded values of the group's CODE items."""
    return {
        (i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodingSchemeDesignator)
        for i in group[0].ContentSequence
        if i.ValueType == "CODE"
    }


def check_groups(sr: Any, seg: Any, want: dict[str, MaskHeadLoad]) -> dict[str, Any]:
    """Every head class has a group (the head segments come last in ``seg``, in manifest order): its volume and
    region count equal ``want``'s, its reference the segment of ``seg`` whose label is its tracking identifier."""
    groups = head_groups(sr, seg)
    classes = [c for load in want.values() for c in load.lesion_load.classes]
    numbers = {str(d.segment_label): int(d.segment_number) for d in seg.SegmentSequence}
    first = len(numbers) - len(classes) + 1  # the first head segment
    assert sorted(groups, key=numbers.__getitem__) == [
        label for label, n in sorted(numbers.items(), key=lambda x: x[1]) if n >= first
    ]
    for name, group in groups.items():
        uid, number = reference(group)
        assert (uid, number) == (str(seg.SOPInstanceUID), numbers[name])
        cls = classes[number - first]
        values = figures(group)
        assert values[VOLUME] == pytest.approx(round(cls.volume_mm3, 3), abs=1e-6)
        assert values[("regions", "99SCANEDGE")] == cls.lesions
        (unit,) = [m.unit for m in group.get_measurements() if m.name.value == VOLUME[0]]
        assert (unit.value, unit.scheme_designator) == ("mm3", "UCUM")
    return groups


def dsrdump(path: Path) -> str:
    assert shutil.which("dsrdump") is not None, "dsrdump (Debian's dcmtk) is needed: apt-get install dcmtk"
    proc = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # strict: no warning, no error
    return proc.stdout


def test_each_head_class_gets_a_group_with_its_load_referencing_the_nodes_seg(listener, three_masks):  # noqa: F811
    model = three_masks["plain"]
    series, sr, sr_path, out = run(listener, model, ("seg", "sr"))
    seg = head_seg(out / "seg")
    assert not any(  # the seg output wrote the SEG; the sr output only its lesion SEG beside the SR
        _modality(p) == "SEG" and "lesions" not in pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription
        for p in (out / "sr").glob("*.dcm")
    )
    want = expected_loads(model, series)
    groups = check_groups(sr, seg, want)
    assert list(groups) == ["organs: liver", "organs: kidney", "vessels: vessel"]
    assert [reference(g)[1] for g in groups.values()] == [2, 3, 4]
    assert sum(figures(g)[VOLUME] for g in groups.values()) > 0  # the heads found something
    liver, kidney = groups["organs: liver"], groups["organs: kidney"]
    assert (liver.finding_type.value, liver.finding_type.scheme_designator) == (LIVER.value, LIVER.scheme)
    assert (ORGAN.value, ORGAN.scheme) in codes_in(liver)  # the class's property_category
    assert (kidney.finding_type.value, kidney.finding_type.scheme_designator) == ("segment-3", "99SCANEDGE")
    assert kidney.finding_type.meaning == "organs: kidney"
    uids = {g.tracking_uid for g in groups.values()}
    assert len(uids) == 3 and all(u.startswith("2.25.") for u in uids)
    evidence = {
        ref.ReferencedSOPInstanceUID
        for item in sr.CurrentRequestedProcedureEvidenceSequence
        for s in item.ReferencedSeriesSequence
        for ref in s.ReferencedSOPSequence
    }
    assert str(seg.SOPInstanceUID) in evidence
    dumped = dsrdump(sr_path)
    assert '"organs: liver"' in dumped and "(mm3,UCUM," in dumped and f"({LIVER.value},SCT," in dumped


def test_hostile_names_stay_bounded_and_an_empty_head_reports_volume_zero(listener, three_masks):  # noqa: F811
    model = three_masks["hostile"]
    series, sr, sr_path, out = run(listener, model, ("sr",), count=2)
    seg = head_seg(out / "sr")  # no seg output: the sr output wrote the SEG its groups reference
    groups = check_groups(sr, seg, expected_loads(model, series))
    assert len(groups) == 5 and list(groups)[1:] == [
        "head1: kidney",
        "vessels: vessel",
        "empty: nothing",
        "empty: never",
    ]
    for name in ("empty: nothing", "empty: never"):
        assert figures(groups[name])[VOLUME] == 0.0 and figures(groups[name])[("regions", "99SCANEDGE")] == 0
    for group in groups.values():
        name = group.tracking_identifier
        assert len(name) <= 64 and name.isprintable() and "\\" not in name
        for item in group[0].ContentSequence:
            if item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters":
                continue  # the graph's sha256, not a name
            texts = [str(getattr(item, "TextValue", ""))]
            texts += [
                c.CodeMeaning for key in ("ConceptNameCodeSequence", "ConceptCodeSequence") for c in item.get(key, [])
            ]
            assert all(len(t) <= 64 and t.isprintable() for t in texts), texts
    assert "score report" not in sr.SeriesDescription  # the lesion report, with the score and head groups
    dumped = dsrdump(sr_path)
    assert "\x1b" not in dumped and "y" * 65 not in dumped and '"empty: never"' in dumped


def test_a_model_of_mask_heads_alone_gets_an_sr_of_its_head_groups(listener, three_masks):  # noqa: F811
    model = three_masks["heads-only"]
    series, sr, sr_path, out = run(listener, model, ("seg", "sr"), count=2)
    seg = head_seg(out / "seg")
    assert [int(d.segment_number) for d in seg.SegmentSequence] == [1, 2, 3]  # no class of its own
    groups = all_groups(sr)
    assert [g.tracking_identifier for g in groups] == ["organs: liver", "organs: kidney", "vessels: vessel"]
    check_groups(sr, seg, expected_loads(model, series))
    assert sr.SeriesDescription.startswith("scanedge finding report")
    assert [p for p in (out / "sr").glob("*.dcm")] == [sr_path]  # no lesion SEG; the seg output wrote the SEG
    dsrdump(sr_path)


def test_head_groups_without_a_seg_keep_their_figures_and_say_why(listener, three_masks, monkeypatch):  # noqa: F811
    import scanedge.dicomnet.outputs.sr as sr_module

    def refused(series, model, manifest, config):  # the fault: highdicom refuses every image of the series
        return [], [f"instance {uid}: refused by highdicom (ValueError)" for uid in series.instances]

    monkeypatch.setattr(sr_module, "build_segmentations", refused)
    model = three_masks["plain"]
    series, sr, sr_path, out = run(listener, model, ("sr",), count=2)
    assert all(
        "lesions" in pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription
        for p in out.glob("sr/*.dcm")
        if _modality(p) == "SEG"
    )  # no head SEG written
    volumetric = sr.content.get_volumetric_roi_measurement_groups()  # the lesions' groups only
    assert all(g.tracking_identifier.startswith("lesion ") for g in volumetric)
    groups = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    want = expected_loads(model, series)
    classes = [c for load in want.values() for c in load.lesion_load.classes]
    for name, cls in zip(["organs: liver", "organs: kidney", "vessels: vessel"], classes):
        group = groups[name]  # TID 1501: no segment to reference
        assert not [i for i in group[0].ContentSequence if i.ValueType == "IMAGE"]
        assert figures(group)[VOLUME] == pytest.approx(round(cls.volume_mm3, 3), abs=1e-6)
        reasons = [
            i.TextValue
            for i in group[0].ContentSequence
            if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "reason"
        ]
        assert reasons == ["no SEG could be built for the series' largest group of images"]
    dsrdump(sr_path)
