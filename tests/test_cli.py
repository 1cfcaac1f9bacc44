import json
import shutil

import onnx
import pytest

from scanedge.cli import main
from scanedge.manifest import load_manifest, sidecar_path
from tests.conftest import conv_model, dicom_file


def test_demo_writes_overlays_and_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "latency per slice" in err and "series summary" in err and "Dice" in err
    report = json.loads((out / "results.json").read_text())
    overlays = sorted(out.glob("*.overlay.png"))
    assert len(overlays) == len(report["slices"]) >= 24
    assert (out / "montage.png").stat().st_size > 0
    assert report["series"][0]["classes"]["lesion"]["slices_with_finding"] > 0


def test_segment_folder_of_real_dicom(tmp_path, conv_model_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("MR_small.dcm", "693_UNCR.dcm", "emri_small.dcm"):
        shutil.copy(dicom_file(name), folder / name)
    out = tmp_path / "out"
    code = main(
        ["segment", str(folder), "--model", str(conv_model_path), "--out", str(out), "--save-masks", "--format", "jpeg"]
    )
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert len(report["slices"]) == 1 + 1 + 10
    assert len(report["series"]) == 3
    assert len(list(out.glob("*.overlay.jpg"))) == 12 and len(list(out.glob("*.mask.npy"))) == 12


def test_segment_reports_bad_files_as_typed_errors(tmp_path, conv_model_path, capsys):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"this is not an image " * 50)
    assert main(["segment", str(bad), "--model", str(conv_model_path), "--out", str(tmp_path / "o")]) == 2
    assert "NOT_DICOM" in capsys.readouterr().err


def test_inspect_prints_io_and_manifest(conv_model_path, capsys):
    assert main(["inspect", str(conv_model_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["manifest_source"] == "embedded" and info["manifest_matches_graph"]
    assert info["inputs"] == [{"name": "image", "dtype": "float32", "shape": [1, 1, 256, 256]}]


def test_missing_manifest_tells_the_user_what_to_run(tmp_path, capsys):
    path = tmp_path / "bare.onnx"
    onnx.save(conv_model(), str(path))
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "MANIFEST_MISSING" in err and "scanedge manifest init" in err


def test_manifest_init_embeds_and_the_model_then_runs(tmp_path):
    path = tmp_path / "bare.onnx"
    onnx.save(conv_model(), str(path))
    args = ["manifest", "init", str(path), "--name", "ct-lungs", "--classes", "background,nodule"]
    assert main([*args, "--intensity", "window", "--window=-600,1500", "--colors", "000000,ffcc00"]) == 0
    manifest, source = load_manifest(path)
    assert source == "embedded" and manifest.size.height == 256 and manifest.classes[1].color == (255, 204, 0)
    assert manifest.intensity.window_center == -600
    out = tmp_path / "out"
    assert main(["segment", dicom_file("693_UNCR.dcm"), "--model", str(path), "--out", str(out)]) == 0


def test_manifest_init_sidecar_leaves_the_model_untouched(tmp_path):
    path = tmp_path / "bare.onnx"
    onnx.save(conv_model(), str(path))
    before = path.read_bytes()
    assert main(["manifest", "init", str(path), "--name", "x", "--classes", "bg,fg", "--sidecar"]) == 0
    assert path.read_bytes() == before and sidecar_path(path).is_file()
    assert load_manifest(path)[1] == "sidecar"


def test_manifest_init_refuses_a_contradicting_description(tmp_path, capsys):
    path = tmp_path / "bare.onnx"
    onnx.save(conv_model(), str(path))
    assert main(["manifest", "init", str(path), "--name", "x", "--classes", "bg,a,b"]) == 2
    assert "MANIFEST_MISMATCH" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--version"], ["segment", "--help"]])
def test_help_and_version(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
