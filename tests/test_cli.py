import json
import shutil
from pathlib import Path

import onnx
import pytest

from scanedge.cli import main
from scanedge.manifest import load_manifest, sidecar_path
from tests.conftest import conv_model, dicom_file


def test_demo_writes_overlays_and_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--threads", "1"]) == 0
    report = capsys.readouterr().out  # the report goes to stdout, progress to stderr
    assert "latency per slice" in report and 'series 1 "AX FLAIR synthetic demo' in report and "Dice" in report
    assert "per-slice results" in report and "lesions (2-D)" in report
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


def test_missing_manifest_tells_the_user_what_to_run_after_the_graphs_inputs_and_outputs(tmp_path, capsys):
    path = tmp_path / "bare.onnx"
    onnx.save(conv_model(), str(path))
    assert main(["inspect", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "input  image: float32 [1, 1, 256, 256]" in out and "output logits: float32 [1, 2, 256, 256]" in out
    assert "MANIFEST_MISSING" in err and "scanedge manifest init" in err
    assert main(["inspect", str(path), "--json"]) == 2
    info = json.loads(capsys.readouterr().out)
    assert info["manifest"] is None and info["inputs"][0]["name"] == "image"


def test_manifest_init_writes_the_scope_from_flags(tmp_path, capsys):
    path = tmp_path / "bare.onnx"
    onnx.save(conv_model(), str(path))
    scope = ["--modalities", "ct", "--body-parts", "CHEST,LUNG", "--pixel-spacing", "0.3,1.5", "--not-for-clinical-use"]
    assert main(["manifest", "init", str(path), "--name", "lungs", "--classes", "bg,nodule", *scope]) == 0
    manifest, _ = load_manifest(path)
    assert manifest.applies_to.modalities == ("CT",) and manifest.applies_to.body_parts == ("CHEST", "LUNG")
    assert manifest.applies_to.pixel_spacing_mm == (0.3, 1.5) and manifest.not_for_clinical_use
    assert main(["inspect", str(path)]) == 0
    assert "scope: CT images (body part CHEST or LUNG, pixel spacing 0.3-1.5 mm)" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["segment", dicom_file("MR_small.dcm"), "--model", str(path), "--out", str(out)]) == 2
    assert "OUT_OF_SCOPE" in capsys.readouterr().err


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


def test_demo_without_the_check_skips_dice_and_still_tiles_every_slice(tmp_path, capsys):
    import cv2

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--threads", "1", "--no-check", "--contours"]) == 0
    assert "Dice" not in capsys.readouterr().out
    sheet = cv2.imread(str(out / "montage.png"))
    assert sheet.shape[1] == 8 * 256 and sheet.shape[0] > 4 * 256  # 32 slices of 256x256, 8 per row, and strips
    overlay = cv2.cvtColor(cv2.imread(str(out / "IM0017.dcm.overlay.png")), cv2.COLOR_BGR2RGB)
    assert overlay.shape == (256, 256, 3)
    r, g = overlay[..., 0].astype(int), overlay[..., 1].astype(int)
    pink = (r > 200) & (g > 90) & (g < 160)  # "NOT FOR CLINICAL USE", as the manifest says
    assert pink[-20:].sum() > 50  # below the head, where the slice is black


def bare_model(tmp_path):
    path = tmp_path / "bare.onnx"
    onnx.save(conv_model(), str(path))
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--colors", "000000,notred"], "'notred' is not RRGGBB hex"),
        (["--window", "40"], "--window takes 2 comma-separated numbers"),
        (["--thresholds", "0.5,high"], "--thresholds takes comma-separated numbers"),
        (["--size", "256"], "--size takes HEIGHTxWIDTH"),
        (["--colors", "000000"], "one value per class"),
    ],
)
def test_unusable_manifest_init_options_are_config_errors(tmp_path, capsys, extra, message):
    path = bare_model(tmp_path)
    assert main(["manifest", "init", str(path), "--name", "x", "--classes", "bg,fg", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error [BAD_CONFIG]") and message in err and err.count("\n") == 1


def test_usage_problems_are_config_errors_not_tracebacks(tmp_path, conv_model_path, capsys):
    from scanedge.demo.assets import DEMO_MODEL_PATH

    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["segment", str(empty), "--model", str(conv_model_path)], "no slices found under"),
        (["segment", dicom_file("MR_small.dcm"), "--model", str(conv_model_path), "--alpha", "1.5"], "alpha"),
        (["serve", "--curve-secret", str(tmp_path / "server.key_secret")], "go together"),
        (["keys", "generate", str(tmp_path), "--name", ".hidden"], "invalid key name"),
        (["verify", str(conv_model_path), "--reference", str(DEMO_MODEL_PATH), "--data", str(empty)], "no slices"),
        (["convert", str(conv_model_path), "--precision", "int8", "--out", str(tmp_path / "e")], "--calibration"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "[BAD_CONFIG]" in err and message in err, (argv, err)


def test_verify_refuses_models_with_different_classes(tmp_path, conv_model_path, capsys, demo_series):
    from scanedge.demo.assets import DEMO_MODEL_PATH

    argv = ["verify", str(conv_model_path), "--reference", str(DEMO_MODEL_PATH), "--data", str(demo_series)]
    assert main([*argv, "--limit", "2"]) == 2
    assert "[BAD_CONFIG] the engine and the reference model have different classes" in capsys.readouterr().err


def test_paths_are_printed_literally_not_as_markup(tmp_path, capsys):
    from scanedge.manifest import embed_manifest
    from tests.conftest import simple_manifest

    folder = tmp_path / "[red]models"
    folder.mkdir()
    path = folder / "m.onnx"
    embed_manifest(conv_model(), simple_manifest(), path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(str(path)) and "opset 17" in out


def _one_line(err: str) -> str:
    assert err.startswith("error [BAD_CONFIG] ") and err.count("\n") == 1, err
    return err


def test_keys_are_never_overwritten_or_allow_listed_as_secrets(tmp_path, capsys):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    assert main(["keys", "generate", str(keys), "--name", "console-1"]) == 0
    public, secret = keys / "console-1.key", keys / "console-1.key_secret"
    assert (public.stat().st_mode & 0o777, secret.stat().st_mode & 0o777) == (0o644, 0o600)
    before = secret.read_bytes()
    capsys.readouterr()
    assert main(["keys", "generate", str(keys), "--name", "console-1"]) == 2
    assert "already exists; pass --force to replace the key pair" in _one_line(capsys.readouterr().err)
    assert secret.read_bytes() == before
    assert main(["keys", "allow", str(allowed), str(secret)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "contains a secret key; allow-list the public key file (console-1.key) instead" in err
    assert not allowed.exists() or not any(allowed.iterdir())
    assert main(["keys", "allow", str(allowed), str(public)]) == 0
    assert ((allowed / "console-1.key").stat().st_mode & 0o777) == 0o644
    assert main(["keys", "generate", str(keys), "--name", "console-1", "--force"]) == 0
    assert secret.read_bytes() != before


def test_a_bind_address_without_scheme_is_one_line_with_the_fix(capsys):
    assert main(["serve", "--bind", "localhost:5568"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "'localhost:5568' has no scheme; did you mean tcp://localhost:5568?" in err
    assert "beyond this machine" not in err


def test_model_names_the_shipped_models_and_a_file_of_that_name_wins(tmp_path, monkeypatch):
    from scanedge.cli.arguments import model_file
    from scanedge.models import DEMO_CLASSIFIER_PATH, DEMO_MODEL_PATH

    monkeypatch.chdir(tmp_path)
    assert model_file("demo") == DEMO_MODEL_PATH
    assert model_file("demo-classifier") == DEMO_CLASSIFIER_PATH
    assert model_file("lesions.onnx") == Path("lesions.onnx")  # a path stays a path, checked where it is opened
    (tmp_path / "demo").write_bytes(b"")
    assert model_file("demo") == Path("demo")
