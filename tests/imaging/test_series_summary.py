import numpy as np
import pytest

from scanedge.engines import EngineConfig
from scanedge.imaging.files import load_slices
from scanedge.imaging.postprocess import ClassFindings
from scanedge.imaging.series import slice_spacing
from scanedge.imaging.series_summary import LatencyPercentiles, summarize_series
from scanedge.imaging.slices import Slice, SliceGeometry, SliceIdentity
from scanedge.runtime.core.pipeline import Pipeline

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def axial(series: str, z: float | None, spacing=(0.5, 0.5)) -> Slice:
    position = None if z is None else (-10.0, -10.0, z)
    geometry = SliceGeometry(pixel_spacing=spacing, image_position=position, image_orientation=AXIAL)
    return Slice.from_array(np.zeros((8, 8), np.int16), geometry=geometry, identity=SliceIdentity(series))


def found(pixels: int, components: int, area: float | None, name: str = "lesion", label: int = 1) -> ClassFindings:
    return ClassFindings(label, name, pixels, area, components, 0.9 if pixels else 0.1, 0.8 if pixels else 0.0)


def test_spacing_is_the_median_gap_between_positions_whatever_the_order():
    slices = [axial("a", z) for z in (12.0, 0.0, 3.0, 9.0, 6.0, 21.0)]  # one slice (15) missing
    slices += [axial("b", 5.0), axial("c", None), axial("c", None)]
    assert slice_spacing(slices) == {"a": 3.0}  # b: one slice; c: no positions


def test_spacing_follows_the_slice_normal_for_oblique_series():
    tilted = (1.0, 0.0, 0.0, 0.0, np.cos(0.3), np.sin(0.3))
    normal = np.cross(tilted[:3], tilted[3:])
    slices = [
        Slice.from_array(
            np.zeros((4, 4), np.int16),
            geometry=SliceGeometry(image_position=tuple(normal * 2.5 * k), image_orientation=tilted),
            identity=SliceIdentity("oblique"),
        )
        for k in range(4)
    ]
    assert slice_spacing(slices)["oblique"] == pytest.approx(2.5)


def test_lesion_load_per_series_with_volume_from_area_and_spacing():
    slices = [axial("a", z) for z in (0.0, 4.0, 8.0)] + [axial("b", z) for z in (0.0, 2.0)]
    findings = [
        [found(10, 1, 2.5)],
        [found(0, 0, 0.0)],
        [found(30, 2, 7.5)],
        [found(4, 1, 1.0)],
        [found(8, 3, 2.0)],
    ]
    a, b = summarize_series(slices, findings)
    assert (a.series_uid, a.slices, a.slice_spacing_mm) == ("a", 3, 4.0)
    lesion = a.load("lesion")
    assert (lesion.slices_with_finding, lesion.pixels, lesion.components) == (2, 40, 3)
    assert lesion.area_mm2 == pytest.approx(10.0) and lesion.volume_mm3 == pytest.approx(40.0)
    assert b.load("lesion").volume_mm3 == pytest.approx(6.0) and b.slice_spacing_mm == 2.0
    assert a.latency_ms is None and "latency_ms" not in a.to_dict()
    with pytest.raises(KeyError, match="lesion"):
        a.load("tumour")


def test_unknown_spacing_or_area_leaves_volume_unknown():
    no_position = [axial("x", None), axial("x", None)]
    (s,) = summarize_series(no_position, [[found(5, 1, 1.25)], [found(3, 1, 0.75)]])
    assert s.slice_spacing_mm is None and s.load("lesion").area_mm2 == 2.0 and s.load("lesion").volume_mm3 is None
    positioned = [axial("y", 0.0), axial("y", 1.0)]
    (s,) = summarize_series(positioned, [[found(5, 1, 1.25)], [found(3, 1, None)]])
    assert s.load("lesion").area_mm2 is None and s.load("lesion").volume_mm3 is None


def test_several_classes_and_latency_as_results_json_files_them():
    slices = [axial("s", z) for z in (0.0, 1.0, 2.0, 3.0)]
    findings = [[found(p, int(p > 0), p * 0.25), found(0, 0, 0.0, "oedema", 2)] for p in (0, 4, 4, 0)]
    (s,) = summarize_series(slices, findings, [3.0, 1.0, 2.0, 10.0])
    assert s.to_dict() == {
        "series_uid": "s",
        "series_number": None,
        "series_description": "",
        "modality": "",
        "slices": 4,
        "classes": {
            "lesion": {"slices_with_finding": 2, "pixels": 8, "area_mm2": 2.0, "components": 2, "volume_mm3": 2.0},
            "oedema": {"slices_with_finding": 0, "pixels": 0, "area_mm2": 0.0, "components": 0, "volume_mm3": 0.0},
        },
        "latency_ms": {"p50": 2.5, "p90": pytest.approx(7.9), "p99": pytest.approx(9.79), "max": 10.0},
    }


def test_parallel_sequences_must_match():
    with pytest.raises(ValueError, match="same length"):
        summarize_series([axial("a", 0.0)], [])
    with pytest.raises(ValueError, match="same length"):
        summarize_series([axial("a", 0.0)], [[found(1, 1, 1.0)]], [1.0, 2.0])


def test_latency_percentiles():
    lat = LatencyPercentiles.of(list(range(1, 101)))
    assert (lat.p50, lat.max, lat.count) == (50.5, 100.0, 100)
    assert lat.describe().startswith("p50 50.50 ms, p90 90.10 ms") and lat.describe().endswith("(n=100)")
    with pytest.raises(ValueError):
        LatencyPercentiles.of([])


def test_the_demo_series_summary_adds_up_the_pipelines_findings(demo_series):
    slices = [item.slice for item in load_slices([demo_series])]
    with Pipeline.open(options=EngineConfig(threads=1)) as pipe:
        results = list(pipe.run_series(slices, overlay=False))
    (s,) = summarize_series(slices, [r.findings for r in results], [r.timings.total_ms for r in results])
    lesion = s.load("lesion")
    pixels = [r.finding("lesion").pixels for r in results]
    assert s.slices == 32 and lesion.pixels == sum(pixels) > 0
    assert lesion.slices_with_finding == sum(p > 0 for p in pixels)
    assert s.slice_spacing_mm == pytest.approx(4.0, abs=0.5)  # the demo patient's axial spacing
    assert lesion.volume_mm3 == pytest.approx(lesion.area_mm2 * s.slice_spacing_mm, abs=0.05)
    assert s.latency_ms.count == 32 and 0 < s.latency_ms.p50 <= s.latency_ms.max


def test_a_series_is_named_as_people_name_it():
    from scanedge.imaging.slices import Slice, SliceAcquisition, SliceIdentity

    named = Slice.from_array(
        np.zeros((4, 4), np.uint8),
        identity=SliceIdentity("1.2.3", modality="MR"),
        acquisition=SliceAcquisition(series_number=3, series_description="AX FLAIR"),
    )
    (s,) = summarize_series([named], [[found(0, 0, 0.0)]])
    assert s.label == 'series 3 "AX FLAIR" (MR)'
    assert (s.to_dict()["series_number"], s.to_dict()["series_description"]) == (3, "AX FLAIR")
    (bare,) = summarize_series([axial("1.2.840.99", 0.0)], [[found(0, 0, 0.0)]])
    assert bare.label == "series 1.2.840.99"  # nothing else to go by
