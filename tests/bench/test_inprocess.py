import json

import numpy as np
import pytest

from scanedge.bench.inprocess import RunLength, bench_engine, bench_pipeline
from scanedge.cli.bench import main as bench_main
from scanedge.engines import EngineConfig
from scanedge.errors import ConfigError
from scanedge.imaging.slices import Slice, SliceGeometry


def test_engine_bench_with_baseline(conv_model_path):
    one_thread = EngineConfig(threads=1)
    r = bench_engine(conv_model_path, options=one_thread, run=RunLength(count=40, warmup=3), baseline=True)
    fig = r.figures()["infer"]
    assert fig.count == 40 and 0 < fig.min <= fig.median <= fig.max
    assert r.baseline["figures"]["session.run"]["count"] == 40
    assert set(r.baseline["overhead_ms"]) == {"p50", "p99"} and r.baseline["ratio"] > 0
    assert r.engine["backend"] == "ort" and r.settings["shape"] == [1, 1, 256, 256]


def test_engine_bench_needs_a_shape_for_dynamic_models(tmp_path):
    import onnx

    from tests.conftest import conv_model

    path = tmp_path / "dyn.onnx"
    onnx.save(conv_model(height="h", width="w"), str(path))
    with pytest.raises(ConfigError, match="--shape"):
        bench_engine(path, run=RunLength(count=1, warmup=0))
    r = bench_engine(path, shape=(1, 1, 64, 96), run=RunLength(count=5, warmup=0))
    assert r.settings["shape"] == [1, 1, 64, 96]


def test_pipeline_bench_reports_every_stage_and_the_overhead_over_raw_ort(conv_model_path, tmp_path):
    rng = np.random.default_rng(0)
    slices = [
        Slice.from_array(
            (rng.random((512, 512)) * 1000).astype(np.int16), geometry=SliceGeometry(pixel_spacing=(0.5, 0.5))
        )
        for _ in range(3)
    ]
    one_thread = EngineConfig(threads=1)
    run = RunLength(count=30, warmup=2)
    r = bench_pipeline(slices, conv_model_path, options=one_thread, dicom=True, run=run, baseline=True)
    figures = r.figures()
    assert set(figures) == {
        "decode",
        "decode_pydicom",  # the same bytes through pydicom's Dataset, for the fast reader's comparison
        "preprocess",
        "infer",
        "postprocess",
        "overlay",
        "outside_model",
        "total",
    }
    assert figures["total"].median >= figures["infer"].median
    assert figures["decode"].median < figures["decode_pydicom"].median  # these slices take the fast path
    assert r.settings["input"] == "dicom" and r.settings["slice_shapes"] == [[512, 512]]
    baseline_p50 = r.baseline["figures"]["session.run"]["median"]  # rounded to 0.01 us in the report
    assert r.baseline["overhead_ms"]["p50"] == pytest.approx(figures["total"].median - baseline_p50, abs=1e-4)
    out = tmp_path / "r.json"
    r.write_json(out)
    assert json.loads(out.read_text())["mode"] == "pipeline"


def test_duration_bounded_runs_stop_in_time(conv_model_path):
    r = bench_engine(conv_model_path, run=RunLength(duration_s=0.3, warmup=0))
    assert r.wall_s < 1.0 and r.figures()["infer"].count >= 3


def test_engine_cli_writes_json_and_plot(conv_model_path, tmp_path):
    js, png = tmp_path / "e.json", tmp_path / "e.png"
    assert (
        bench_main(
            ["engine", str(conv_model_path), "--count", "30", "--warmup", "2", "--json", str(js), "--plot", str(png)]
        )
        == 0
    )
    assert json.loads(js.read_text())["figures"]["infer"]["count"] == 30
    assert png.read_bytes()[:4] == b"\x89PNG"
