"""edge-bench stream against a live MLServer: the remote engine side by side with the local one in one run,
and several consoles, each with its own runtime, sharing the one server."""

from __future__ import annotations

import json

from scanedge.cli.bench import main as bench_main
from tests.remote.mlserver import MLServer

COMMON = ["stream", "--spawn", "--size", "256x256", "--warmup", "2", "--threads", "1", "--outputs", "mask"]


def test_remote_side_by_side_with_the_local_engine_in_one_run(mlserver: MLServer, tmp_path):
    js = tmp_path / "versus.json"
    assert bench_main([*COMMON, "--count", "12", "--remote", mlserver.url, "--versus-local", "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert report["engine"]["backend"] == "remote" and report["engine"]["targets"] == [f"{mlserver.url}/ms-lesion-demo"]
    assert report["counts"]["ok"] == 12 and report["counts"]["error"] == 0
    assert report["settings"]["versus"] == "ort" and report["settings"]["spawned_exit_code"] == 0
    local = report["baseline"]["figures"]
    assert local["ort runtime"]["count"] == 12 and local["ort runtime: server infer"]["count"] == 12
    assert "overhead_ms" in report["baseline"]


def test_several_consoles_each_with_its_own_runtime_share_one_server(mlserver: MLServer, tmp_path):
    js = tmp_path / "shared.json"
    argv = [*COMMON, "--count", "12", "--remote", mlserver.url, "--consoles", "3", "--runtimes", "3"]
    assert bench_main([*argv, "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert report["settings"]["runtimes"] == 3 and report["settings"]["consoles"] == 3
    assert report["counts"]["ok"] == 12 and report["counts"]["error"] == 0
