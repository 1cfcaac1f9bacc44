import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from scanedge.errors import InvalidSliceError, ManifestMismatchError, ManifestMissingError
from scanedge.imaging.overlay import OverlayConfig
from scanedge.imaging.slices import Slice, SliceGeometry
from scanedge.manifest import embed_manifest
from scanedge.runtime.core.pipeline import Pipeline
from tests.conftest import conv_model, dicom_file, simple_manifest


def expected_mask(px: np.ndarray) -> np.ndarray:
    """What the conv test model must answer: z-scored (area-resized) input >= 0, back at slice size."""
    small = cv2.resize(px.astype(np.float32), (256, 256), interpolation=cv2.INTER_AREA)
    small = ((small - small.mean()) / small.std() >= 0).astype(np.uint8)
    return cv2.resize(small, (px.shape[1], px.shape[0]), interpolation=cv2.INTER_NEAREST)


def test_slice_to_mask_findings_and_overlay_on_a_real_ct(conv_model_path):
    ct = Path(dicom_file("693_UNCR.dcm")).read_bytes()
    with Pipeline.open(conv_model_path) as pipe:
        result = pipe.run(ct)
    from scanedge.imaging.dicom import slices_from_dicom

    (s,) = slices_from_dicom(ct)
    np.testing.assert_array_equal(result.mask, expected_mask(s.pixels))
    (f,) = result.findings
    assert f.name == "finding" and f.pixels == int(result.mask.sum())
    assert f.area_mm2 == pytest.approx(f.pixels * s.geometry.pixel_area_mm2)
    assert result.overlay.shape == (512, 512, 3) and result.overlay.dtype == np.uint8
    assert result.probabilities.shape == (2, 256, 256)
    t = result.timings
    assert min(t.decode_ms, t.preprocess_ms, t.infer_ms, t.postprocess_ms, t.overlay_ms) > 0
    assert t.total_ms >= t.infer_ms + t.preprocess_ms


def test_numpy_and_dicom_inputs_give_the_same_mask(conv_model_path):
    data = Path(dicom_file("MR_small.dcm")).read_bytes()
    with Pipeline.open(conv_model_path) as pipe:
        from_bytes = pipe.run(data, overlay=False)
        from_array = pipe.run(pipe.to_slice(data).pixels, overlay=False)
    np.testing.assert_array_equal(from_bytes.mask, from_array.mask)
    assert from_bytes.overlay is None
    assert from_bytes.identity.sop_instance_uid and not from_array.identity.sop_instance_uid


def test_results_are_owned_not_overwritten_by_the_next_slice(conv_model_path):
    rng = np.random.default_rng(3)
    with Pipeline.open(conv_model_path) as pipe:
        a = pipe.run(rng.random((256, 256)).astype(np.float32))
        keep = (a.mask.copy(), a.probabilities.copy(), a.overlay.copy())
        pipe.run(rng.random((256, 256)).astype(np.float32))
    for kept, now in zip(keep, (a.mask, a.probabilities, a.overlay)):
        np.testing.assert_array_equal(kept, now)


def test_result_summary_is_json(conv_model_path):
    with Pipeline.open(conv_model_path) as pipe:
        r = pipe.run(Slice.from_array(np.eye(64, dtype=np.uint8) * 200, geometry=SliceGeometry(pixel_spacing=(1, 1))))
    d = json.loads(json.dumps(r.to_dict()))
    assert d["model"] == "test-model@0.0.1" and d["shape"] == [64, 64]
    assert set(d["timings_ms"]) == {
        "decode_ms",
        "preprocess_ms",
        "infer_ms",
        "postprocess_ms",
        "overlay_ms",
        "total_ms",
    }
    assert d["findings"][0]["area_mm2"] == d["findings"][0]["pixels"]
    assert r.encode_overlay("png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlay_options_per_call(conv_model_path):
    px = np.zeros((64, 64), np.uint8)
    px[20:40, 20:40] = 200
    with Pipeline.open(conv_model_path) as pipe:
        filled = pipe.run(px).overlay
        outlined = pipe.run(px, overlay=OverlayConfig(fill=False, contours=True)).overlay
    assert tuple(filled[30, 30]) != tuple(outlined[30, 30])


def test_probabilities_can_be_had_at_slice_resolution(conv_model_path):
    with Pipeline.open(conv_model_path) as pipe:
        r = pipe.run(np.random.default_rng(0).random((300, 200)).astype(np.float32), overlay=False)
    assert r.probabilities_on_slice().shape == (2, 300, 200)


def test_multiframe_bytes_must_go_through_run_series(conv_model_path):
    data = Path(dicom_file("emri_small.dcm")).read_bytes()
    with Pipeline.open(conv_model_path) as pipe:
        with pytest.raises(InvalidSliceError, match="10 frames"):
            pipe.run(data)
        from scanedge.imaging.dicom import slices_from_dicom

        results = list(pipe.run_series(slices_from_dicom(data), overlay=False))
    assert [r.identity.frame_index for r in results] == list(range(10))


def test_bad_inputs_are_typed_errors_and_the_pipeline_keeps_working(conv_model_path):
    from scanedge.errors import InputError

    with Pipeline.open(conv_model_path) as pipe:
        for bad in (b"not dicom at all", np.zeros(5, np.int16), np.full((8, 8), np.nan, np.float32), "text"):
            with pytest.raises(InputError):
                pipe.run(bad)
        assert pipe.run(np.ones((8, 8), np.uint8)).mask.shape == (8, 8)


def test_model_that_contradicts_its_manifest_is_refused_on_open(tmp_path):
    path = tmp_path / "rgb.onnx"
    embed_manifest(conv_model(in_channels=3), simple_manifest(), path)  # manifest says 1 grey channel
    with pytest.raises(ManifestMismatchError, match="3 channels"):
        Pipeline.open(path)


def test_model_without_manifest_is_refused_with_instructions(tmp_path):
    path = tmp_path / "bare.onnx"
    onnx.save(conv_model(), str(path))
    with pytest.raises(ManifestMissingError, match="manifest init"):
        Pipeline.open(path)


def test_opening_a_pipeline_loads_dicom_decoding_so_the_first_slice_does_not_pay_for_it():
    """In a fresh interpreter: after Pipeline.open, pydicom's pixel machinery and the installed codec
    plugins are loaded (the first slice used to pay 240-900 ms of imports here)."""
    import subprocess
    import sys
    from pathlib import Path

    probe = (
        "import sys\n"
        "from scanedge.runtime.core.pipeline import Pipeline\n"
        "assert 'pydicom.pixels' not in sys.modules\n"
        "Pipeline.open().close()\n"
        "loaded = [m for m in ('pydicom.pixels', 'pydicom.pixels.decoders.pylibjpeg', 'openjpeg', 'libjpeg')\n"
        "          if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, env={"PYTHONPATH": str(root)}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pydicom.pixels,pydicom.pixels.decoders.pylibjpeg,openjpeg,libjpeg"
