"""edge-bench as a shell user meets it: the report on stdout through a real pipe, options that mean nothing
refused, names and versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scanedge.cli import main as scanedge_main
from scanedge.cli.bench import main as bench_main

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    if "COLUMNS" not in env:
        environment.pop("COLUMNS", None)  # a pipe: no terminal width to fit
    return subprocess.run(
        [sys.executable, "-m", "scanedge.cli.bench", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=300,
    )


def test_the_engine_report_goes_to_stdout_whole_when_piped(conv_model_path):
    done = run("engine", str(conv_model_path), "--count", "120", "--warmup", "2", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert "edge-bench engine - test-model 0.0.1" in done.stdout and "│ infer" in done.stdout
    assert "…" not in done.stdout and "throughput" in done.stdout
    narrow = run("engine", str(conv_model_path), "--count", "120", "--warmup", "2", "--threads", "1", COLUMNS="50")
    assert "  infer: min " in narrow.stdout and "…" not in narrow.stdout, narrow.stdout


def test_json_dash_puts_the_report_on_stdout(conv_model_path):
    done = run("engine", str(conv_model_path), "--count", "120", "--warmup", "2", "--json", "-")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["figures"]["infer"]["count"] == 120
    assert "figure (ms)" in done.stderr  # the table, for the person watching


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["echo", "--backend", "tensorrt"], "unrecognized arguments: --backend tensorrt"),
        (["echo", "--threads", "2"], "unrecognized arguments: --threads"),
        (["stream", "--endpoint", "tcp://127.0.0.1:9", "--threads", "2"], "--threads shape(s) a runtime spawned"),
        (["stream", "--endpoint", "tcp://127.0.0.1:9", "--workers", "3"], "--workers shape(s) a runtime spawned"),
        (["soak", "--endpoint", "tcp://127.0.0.1:9", "--model", "m.onnx"], "--model shape(s) a runtime spawned"),
        (["pipeline", "--series", ".", "--size", "256x256"], "the slices of --series keep their own size"),
        (["stream", "--spawn", "--endpoint", "tcp://127.0.0.1:9"], "exactly one of --spawn or --endpoint"),
    ],
)
def test_options_that_mean_nothing_for_the_mode_are_refused(argv, message, capsys):
    try:
        code = bench_main(argv)
    except SystemExit as exc:  # argparse refuses unknown options itself
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_version_and_the_name_it_is_called_by(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("edge-bench (scanedge ")
    with pytest.raises(SystemExit):
        scanedge_main(["bench", "--help"])
    assert capsys.readouterr().out.startswith("usage: scanedge bench ")
    with pytest.raises(SystemExit):
        scanedge_main(["bench", "pipeline", "--help"])
    assert capsys.readouterr().out.startswith("usage: scanedge bench pipeline ")
