"""edge-bench and a score head's 3-D series model: ``pipeline`` times the model's run at each series'
completion as its own figure (and each slice's plane), ``engine`` times the 5-D model file by itself."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from scanedge.bench.inprocess import RunLength, bench_engine, bench_pipeline
from scanedge.engines import EngineConfig
from scanedge.imaging.slices import Slice
from tests.heads.conftest import VOLUME_SIZE, sample_slices


def test_pipeline_times_the_series_model_once_per_series(series_model_dir: Path):
    from rich.console import Console

    slices = [Slice.from_array(p) for p in sample_slices(4)]
    report = bench_pipeline(
        slices, series_model_dir / "model.onnx", options=EngineConfig(threads=1), run=RunLength(count=12, warmup=2)
    )
    figures = report.figures()
    assert figures["total"].count == figures["series_plane"].count == 12
    assert figures["series_model"].count == 3  # 12 slices served: three series of the bench's 4 slices
    assert figures["series_model"].min > 0
    series = report.settings["series_model"]
    assert series["head"] == "abnormal_logit" and series["input"] == [1, 1, *VOLUME_SIZE]
    assert series["slices_per_series"] == 4
    console = Console(record=True, width=200)
    report.render(console)
    text = console.export_text()
    assert "series_model" in text and "one run per series of 4 slice(s) at its completion (a 6x16x16 volume" in text
    again = type(report).from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.settings["series_model"] == series and len(again.samples["series_model"]) == 3


def test_a_model_without_a_series_model_has_no_such_figure(head_models):
    slices = [Slice.from_array(p) for p in sample_slices(2)]
    report = bench_pipeline(slices, head_models["mask_score+manifest"], run=RunLength(count=2, warmup=0))
    assert "series_model" not in report.samples and "series_model" not in report.settings


def test_engine_times_a_5d_series_model(series_model_dir: Path, tmp_path: Path, capsys):
    from scanedge.cli.bench import main

    report = bench_engine(series_model_dir / "volume_classifier.onnx", run=RunLength(count=5, warmup=1))
    assert report.settings["shape"] == [1, 1, *VOLUME_SIZE] and report.figures()["infer"].count == 5
    # a dynamic volume: --shape takes the five dimensions
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["volume"], ["p"]), helper.make_node("Flatten", ["p"], ["out"])],
        "pooled",
        [helper.make_tensor_value_info("volume", TensorProto.FLOAT, [1, 1, "d", "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "dynamic.onnx"))
    assert main(["engine", str(tmp_path / "dynamic.onnx"), "--count", "3", "--warmup", "0"]) == 2  # no --shape
    capsys.readouterr()
    args = ["engine", str(tmp_path / "dynamic.onnx"), "--shape", "1x1x4x8x8", "--count", "3", "--warmup", "0"]
    assert main([*args, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["shape"] == [1, 1, 4, 8, 8]
