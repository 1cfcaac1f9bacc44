"""edge-bench on models that take several series at once (manifest ``inputs``): every role fed, per stage."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import scanedge.bench.stream as bench_stream_module
from scanedge.bench.inprocess import RunLength, bench_engine, bench_pipeline
from scanedge.bench.inputs import bench_slices, role_sets
from scanedge.cli.bench import main as bench_main
from scanedge.engines import EngineConfig
from scanedge.manifest import embed_manifest
from scanedge.runtime.core.pipeline import Pipeline
from tests.conftest import conv_model, simple_manifest
from tests.converters.test_verify_inputs import named_manifest
from tests.runtime.core.test_multi_input import WEIGHTS, named_inputs_model, two_role_inputs

ONE_THREAD = EngineConfig(threads=1)
STAGES = {"preprocess", "infer", "postprocess", "overlay", "outside_model", "total"}


@pytest.fixture(params=["channels", "named"])
def two_input_model(request, tmp_path):
    path = tmp_path / f"{request.param}.onnx"
    if request.param == "channels":
        embed_manifest(conv_model(2, WEIGHTS), simple_manifest(inputs=two_role_inputs()), path)
    else:
        embed_manifest(named_inputs_model(), named_manifest(), path)
    return path


def test_role_sets_give_every_role_its_own_image_on_the_reference_grid():
    slices = bench_slices((64, 64), limit=2)
    sets = role_sets(slices, ("flair", "t1", "t2"))
    for s, item in zip(slices, sets):
        assert list(item) == ["flair", "t1", "t2"] and item["flair"] is s
        for role in ("t1", "t2"):
            assert item[role].shape == s.shape and item[role].geometry == s.geometry
            assert not np.array_equal(item[role].pixels, s.pixels)
        assert not np.array_equal(item["t1"].pixels, item["t2"].pixels)


def test_pipeline_bench_times_every_stage_of_a_two_input_model(two_input_model, capsys):
    slices = bench_slices((64, 64), limit=3)
    r = bench_pipeline(slices, two_input_model, options=ONE_THREAD, run=RunLength(count=12, warmup=2), baseline=True)
    figures = r.figures()
    assert set(figures) == STAGES and figures["total"].count == 12
    assert figures["total"].median >= figures["infer"].median > 0
    assert r.model["roles"] == ["flair", "t1"] and r.settings["roles"] == ["flair", "t1"]
    assert r.baseline["figures"]["session.run"]["count"] == 12
    # what was timed is run_inputs on those sets: the same masks as the pipeline gives them
    with Pipeline.open(two_input_model, options=ONE_THREAD) as pipe:
        assert pipe.run_inputs(role_sets(slices, pipe.manifest.roles)[0]).mask.shape == (64, 64)
    dicom = bench_pipeline(slices, two_input_model, options=ONE_THREAD, dicom=True, run=RunLength(count=4, warmup=1))
    assert {"decode", "decode_pydicom"} <= set(dicom.figures())  # every role's bytes decoded


def test_engine_bench_feeds_every_graph_input(tmp_path):
    path = tmp_path / "named.onnx"
    embed_manifest(named_inputs_model(), named_manifest(), path)
    r = bench_engine(path, options=ONE_THREAD, run=RunLength(count=10, warmup=1), baseline=True)
    assert r.figures()["infer"].count == 10
    assert r.settings["inputs"] == {"flair": [1, 1, 256, 256], "t1": [1, 1, 256, 256]}
    assert r.settings["roles"] == ["flair", "t1"] and r.baseline["figures"]["session.run"]["count"] == 10


def test_the_cli_reports_per_stage_figures_and_the_roles(two_input_model, tmp_path, capsys):
    argv = ["pipeline", "--model", str(two_input_model), "--size", "64x64", "--count", "8", "--warmup", "1"]
    assert bench_main([*argv, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")}
    assert rows == STAGES  # a row of figures per stage
    assert "model takes 2 input roles (flair, t1): every role fed (each slice with partners made on its grid)" in out
    report_path = tmp_path / "engine.json"
    argv = ["engine", str(two_input_model), "--count", "5", "--warmup", "1", "--json", str(report_path)]
    assert bench_main([*argv, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "model takes 2 input roles (flair, t1): every role fed (random tensors)" in out
    assert json.loads(report_path.read_text())["model"]["roles"] == ["flair", "t1"]


def stream_report(argv, tmp_path, capsys):
    js = tmp_path / "stream.json"
    assert bench_main([*argv, "--threads", "1", "--json", str(js)]) == 0
    return json.loads(js.read_text()), capsys.readouterr().out


def test_stream_sends_each_reference_slice_after_its_partners_to_scanedge_serve(two_input_model, tmp_path, capsys):
    argv = ["stream", "--spawn", "--model", str(two_input_model), "--size", "64x64", "--count", "20", "--warmup", "2"]
    report, out = stream_report(argv, tmp_path, capsys)
    counts = report["counts"]
    assert counts["ok"] == 20 and counts["error"] == 0 and counts["partners_held"] == 20
    assert report["settings"]["roles"] == ["flair", "t1"] and report["model"]["roles"] == ["flair", "t1"]
    assert report["settings"]["partner_replies"] == {"sent": 20, "held": 20, "error": 0, "errors": {}}
    for figure in ("total", "server", "transport", "infer"):
        assert report["figures"][figure]["count"] == 20
    assert report["settings"]["spawned_exit_code"] == 0
    assert "model takes 2 input roles (flair, t1): every role fed (each reference slice sent after a partner" in out
    assert "latency from the set's first SEGMENT to the reference's RESULT" in out


def test_paced_consoles_each_stream_their_own_study(tmp_path, capsys):
    path = tmp_path / "channels.onnx"
    embed_manifest(conv_model(2, WEIGHTS), simple_manifest(inputs=two_role_inputs()), path)
    argv = ["stream", "--spawn", "--model", str(path), "--size", "64x64", "--rate", "20", "--consoles", "2"]
    report, _ = stream_report([*argv, "--duration", "1", "--warmup", "1", "--outputs", "mask"], tmp_path, capsys)
    sent = report["settings"]["sent"]
    assert sent > 0 and report["counts"]["ok"] == sent and report["counts"]["error"] == 0
    assert report["settings"]["partner_replies"]["held"] == sent  # one partner per reference slice, each held


@pytest.mark.parametrize(
    "extra",
    [
        ["--dicom", "--baseline", "--transport", "tcp,ipc", "--payload", "frames,shm", "--count", "10"],
        ["--rate", "20", "--vs-flat-out", "--count", "10"],
    ],
    ids=["dicom-baseline-variants", "vs-flat-out"],
)
def test_every_stream_loop_sends_sets(tmp_path, capsys, extra):
    path = tmp_path / "channels.onnx"
    embed_manifest(conv_model(2, WEIGHTS), simple_manifest(inputs=two_role_inputs()), path)
    argv = ["stream", "--spawn", "--model", str(path), "--size", "64x64", "--warmup", "1", *extra]
    report, _ = stream_report(argv, tmp_path, capsys)
    counts, replies = report["counts"], report["settings"]["partner_replies"]
    assert counts["error"] == 0 and replies["error"] == 0 and replies["held"] == replies["sent"] > 0
    if "--baseline" in extra:  # three variants of 10, each a set, and the in-process pipeline through run_inputs
        assert counts["ok"] == 30 and replies["sent"] == 30 and report["settings"]["input"] == "dicom"
        assert report["baseline"]["figures"]["in-process"]["count"] == 10
    else:  # the paced sets and as many flat-out sets, each with its partner
        assert counts["ok"] == 10 and replies["sent"] >= 20 and report["baseline"]["figures"]["flat out"]["count"] > 0


def test_a_runtime_answering_missing_input_is_counted_as_errors_by_code(tmp_path, capsys, monkeypatch):
    """Fault: the console numbers its partner slices apart from its reference slices; raw slices without a position
    pair by number, so the runtime holds each partner and answers each reference slice MISSING_INPUT once its
    pairing wait ends."""
    path = tmp_path / "channels.onnx"
    inputs = two_role_inputs(pairing={"tolerance_mm": 1.0, "wait_s": 0.2})
    embed_manifest(conv_model(2, WEIGHTS), simple_manifest(inputs=inputs), path)
    made = bench_stream_module.role_sets

    def partners_elsewhere(slices, roles):
        sets = made(slices, roles)
        for item in sets:
            assert item[roles[0]].geometry.image_position is None  # the demo slices pair by number
            for role in roles[1:]:
                number = (item[role].identity.instance_number or 0) + 1000
                item[role] = replace(item[role], identity=replace(item[role].identity, instance_number=number))
        return sets

    monkeypatch.setattr(bench_stream_module, "role_sets", partners_elsewhere)
    argv = ["stream", "--spawn", "--model", str(path), "--size", "64x64", "--count", "4", "--warmup", "1"]
    report, out = stream_report(argv, tmp_path, capsys)
    counts = report["counts"]
    assert counts["ok"] == 0 and counts["error"] == 4 and counts["error.MISSING_INPUT"] == 4
    assert counts["partners_held"] == 4  # the partners were held; the references could not be paired
    assert "4 request(s) failed: {'MISSING_INPUT': 4}" in " ".join(report["warnings"])
    assert "error.MISSING_INPUT 4" in out
