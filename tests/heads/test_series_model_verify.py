"""``scanedge verify`` of a model whose score head has a 3-D series model: a copied series model is reported
unchanged (same sha256) and not run; another file is run on the verification series against the reference's
and judged by the same thresholds (exit 1 when its decisions differ)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx

from scanedge.manifest import embed_manifest, graph_sha256
from tests.heads.conftest import series_model_manifest, volume_classifier


def _verify(engine: Path, reference: Path, data: Path, capsys) -> tuple[int, dict, str]:
    from scanedge.cli import main

    capsys.readouterr()
    code = main(["verify", str(engine), "--reference", str(reference), "--data", str(data), "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def _candidate(series_model_dir: Path, folder: Path, volume: Path) -> Path:
    """The reference's slice model in ``folder`` with ``volume`` as its series model (hash in the manifest)."""
    folder.mkdir(exist_ok=True)
    if volume.parent != folder:
        shutil.copyfile(volume, folder / "volume_classifier.onnx")
    manifest = series_model_manifest(onnx_sha256=graph_sha256(onnx.load(str(folder / "volume_classifier.onnx"))))
    model = onnx.load(str(series_model_dir / "model.onnx"))
    del model.metadata_props[:]
    embed_manifest(model, manifest, folder / "model.onnx")
    return folder / "model.onnx"


def test_a_copied_series_model_is_unchanged_and_not_run(series_model_dir, demo_series, tmp_path: Path, capsys):
    from scanedge.converters.convert import ConvertConfig, convert

    result = convert(series_model_dir / "model.onnx", ConvertConfig(out_dir=tmp_path / "fp32"))
    code, report, text = _verify(result.output, series_model_dir / "model.onnx", demo_series, capsys)
    assert code == 0, text
    series = report["agreement"]["series_model"]
    assert series["head"] == "abnormal_logit" and series["unchanged"] is True and series["slices"] == 0
    assert series["candidate_sha256"] == series["reference_sha256"]
    assert "series model of abnormal_logit: unchanged (same sha256" in text


def test_another_file_of_the_same_graph_is_run_and_agrees(series_model_dir, demo_series, tmp_path: Path, capsys):
    volume = onnx.load(str(series_model_dir / "volume_classifier.onnx"))
    volume.doc_string = "re-saved"  # other bytes, the same graph and weights
    (tmp_path / "c").mkdir()
    onnx.save(volume, str(tmp_path / "c" / "volume_classifier.onnx"))
    engine = _candidate(series_model_dir, tmp_path / "c", tmp_path / "c" / "volume_classifier.onnx")
    code, report, text = _verify(engine, series_model_dir / "model.onnx", demo_series, capsys)
    assert code == 0, text
    series = report["agreement"]["series_model"]
    assert series["unchanged"] is False and series["candidate_sha256"] != series["reference_sha256"]
    assert series["slices"] > 1 and tuple(series["input"]) == (6, 16, 16)
    assert series["max_abs_diff"] == 0.0 and series["decision_agreement"] == 1.0
    assert "series model of abnormal_logit on the" in text and "6x16x16 volume" in text


def test_a_series_model_that_decides_otherwise_fails(series_model_dir, demo_series, tmp_path: Path, capsys):
    flipped = volume_classifier(tmp_path / "flipped.onnx", scale=-3.0)  # the same network, its logit negated
    engine = _candidate(series_model_dir, tmp_path / "c", flipped)
    code, report, text = _verify(engine, series_model_dir / "model.onnx", demo_series, capsys)
    assert code == 1 and "FAIL" in text and "decisions agree on 0.00% of classes" in text
    series = report["agreement"]["series_model"]
    assert series["decision_agreement"] == 0.0 and series["max_abs_diff"] > 0
    assert report["passed"] is False
    assert any(f.startswith("series model of abnormal_logit: decisions agree on 0.0000") for f in report["failures"])
    # the slice model's own heads are the same file: they agree
    assert report["agreement"]["heads"]["abnormal_logit"]["decision_agreement"] == 1.0


def test_fp16_converts_the_series_model_and_verify_compares_it(series_model_dir, demo_series, tmp_path, capsys):
    from scanedge.converters.convert import ConvertConfig, convert
    from scanedge.runtime.core.pipeline import Pipeline

    result = convert(series_model_dir / "model.onnx", ConvertConfig(precision="fp16", out_dir=tmp_path / "fp16"))
    spec = result.manifest.heads[0].series_model
    assert spec is not None and spec.path == "volume_classifier.fp16.onnx"
    half = onnx.load(str(tmp_path / "fp16" / spec.path))
    assert spec.onnx_sha256 == graph_sha256(half)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
    with Pipeline.open(result.output) as pipe:  # the runtime opens the converted model with its fp16 series model
        assert pipe.series_model is not None and pipe.series_model.path.name == spec.path
    code, report, text = _verify(result.output, series_model_dir / "model.onnx", demo_series, capsys)
    assert code == 0, text
    series = report["agreement"]["series_model"]
    assert series["unchanged"] is False and series["decision_agreement"] == 1.0
    assert 0 < series["max_abs_diff"] < 0.01  # fp16 weights: close to, and not the same as, fp32
