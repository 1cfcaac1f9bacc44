import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scanedge.cli.bench import main as bench_main


def test_stream_spawn_produces_a_sane_report_and_plot(tmp_path, capsys):
    js, png = tmp_path / "s.json", tmp_path / "s.png"
    code = bench_main(
        [
            "stream",
            "--spawn",
            "--size",
            "256x256",
            "--count",
            "60",
            "--warmup",
            "5",
            "--threads",
            "1",
            "--baseline",
            "--json",
            str(js),
            "--plot",
            str(png),
        ]
    )
    assert code == 0
    report = json.loads(js.read_text())
    assert report["mode"] == "stream" and report["counts"]["ok"] == 60 and report["counts"]["error"] == 0
    figures = report["figures"]
    for name in ("total", "server", "transport", "queue", "infer", "overlay"):
        assert figures[name]["count"] == 60
    assert figures["total"]["median"] >= figures["server"]["median"] >= figures["infer"]["median"]
    assert report["baseline"]["figures"]["in-process"]["count"] >= 60
    assert report["settings"]["spawned_exit_code"] == 0  # the runtime shut down cleanly
    rss = report["settings"]["server_rss_mb"]
    assert 20 < rss["start"] <= rss["max"] < 2000
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "runtime memory" in capsys.readouterr().out  # part of the report


def test_fixed_rate_with_several_consoles(tmp_path):
    js = tmp_path / "r.json"
    code = bench_main(
        [
            "stream",
            "--spawn",
            "--size",
            "128x128",
            "--rate",
            "20",
            "--consoles",
            "2",
            "--duration",
            "1.5",
            "--warmup",
            "2",
            "--threads",
            "1",
            "--outputs",
            "mask",
            "--json",
            str(js),
        ]
    )
    assert code == 0
    report = json.loads(js.read_text())
    sent = report["settings"]["sent"]
    # 2 consoles x 20/s x 1.5 s = 60 scheduled; a loaded machine sends the late ones late, or not before the end
    assert 36 <= sent <= 70
    assert report["counts"]["ok"] + report["counts"]["superseded"] == sent
    assert report["settings"]["consoles"] == 2 and report["settings"]["rate_per_console"] == 20


def test_stream_needs_a_target(capsys):
    assert bench_main(["stream"]) == 2
    assert "--spawn or --endpoint" in capsys.readouterr().err


def test_echo_floor_runs_without_scanedge_on_the_peer(tmp_path):
    js = tmp_path / "e.json"
    assert (
        bench_main(["echo", "--size", "64x64", "--count", "50", "--warmup", "5", "--pause-ms", "1", "--json", str(js)])
        == 0
    )
    report = json.loads(js.read_text())
    assert report["mode"] == "echo" and report["figures"]["round_trip"]["count"] == 50
    assert report["settings"]["reply_bytes"] == 64 * 64 * 4
    assert 0 < report["figures"]["round_trip"]["median"] < 50  # the 1 ms pause is subtracted


def _spawned_child(bench: "subprocess.Popen[str]") -> int:
    children = Path(f"/proc/{bench.pid}/task/{bench.pid}/children").read_text().split()
    return int(children[0]) if children else 0


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited; only its parent (or init) has yet to reap it


def _start_bench_and_wait_for_results() -> "tuple[subprocess.Popen[str], int]":
    """``edge-bench stream --spawn`` in its own process, once its runtime has answered some requests."""
    from scanedge.errors import ScanedgeError
    from scanedge.runtime.console.client import Client, ClientConfig
    from tests.waiting import wait_until

    root = Path(__file__).resolve().parents[2]
    argv = ["stream", "--spawn", "--size", "64x64", "--count", "1000000", "--warmup", "2", "--threads", "1"]
    bench = subprocess.Popen(
        [sys.executable, "-m", "scanedge.cli.bench", *argv],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    child = wait_until(lambda: _spawned_child(bench), timeout=60, what="the spawned runtime")

    def bind_argument() -> str | None:  # once the child has exec'd `scanedge serve`
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        return cmdline[cmdline.index(b"--bind") + 1].decode() if b"--bind" in cmdline else None

    endpoint = wait_until(bind_argument, timeout=30, what="the runtime's command line")

    def answered_some() -> bool:
        try:
            with Client(endpoint, ClientConfig(timeout_s=2.0, retries=0)) as client:
                return client.stats().counters.get("ok", 0) >= 5
        except ScanedgeError:  # still loading its model
            return False

    wait_until(answered_some, timeout=240, interval=0.2, what="results from the spawned runtime")
    return bench, child


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_stream_prints_its_partial_report_and_stops_its_runtime(stop):
    bench, child = _start_bench_and_wait_for_results()
    bench.send_signal(stop)  # to the benchmark only, as `kill` does; its runtime must not be left behind
    out, err = bench.communicate(timeout=120)
    assert bench.returncode == 130, err
    assert "edge-bench stream" in out and "│ total" in out and "interrupted after" in out, out
    assert "Traceback" not in err and "Exception in thread" not in err, err
    assert _gone(child)


def test_a_killed_benchmark_takes_its_runtime_with_it():
    from tests.waiting import wait_until

    bench, child = _start_bench_and_wait_for_results()
    bench.kill()  # SIGKILL: no handler runs in the benchmark
    bench.communicate(timeout=60)
    wait_until(lambda: _gone(child), timeout=120, interval=0.05, what="the orphaned runtime to exit")


def test_ok_replies_that_arrive_after_the_deadline_are_counted_apart(tmp_path, capsys):
    """A 1 ms deadline: the runtime only expires requests that waited that long, so most are computed (the
    model alone takes several ms here) and every one of those arrives after the deadline."""
    js = tmp_path / "d.json"
    argv = ["stream", "--spawn", "--size", "64x64", "--count", "30", "--warmup", "2", "--threads", "1"]
    assert bench_main([*argv, "--deadline-ms", "1", "--json", str(js)]) == 0
    counts = json.loads(js.read_text())["counts"]
    assert counts["ok"] + counts["expired"] == 30 and counts["ok"] > 0
    assert counts["late_ok"] == counts["ok"]
    assert f"({counts['late_ok']} of the ok replies arrived after the deadline)" in capsys.readouterr().out


def test_paced_against_flat_out_in_one_run(tmp_path):
    js = tmp_path / "v.json"
    code = bench_main(
        [
            "stream",
            "--spawn",
            "--size",
            "128x128",
            "--rate",
            "50",
            "--vs-flat-out",
            "--count",
            "60",
            "--warmup",
            "2",
            "--threads",
            "1",
            "--json",
            str(js),
        ]
    )
    assert code == 0
    report = json.loads(js.read_text())
    counts = report["counts"]  # a loaded machine may be slower than 50/s: a waiting slice is then superseded
    assert counts["ok"] + counts["superseded"] == 60 and counts["error"] == 0
    assert report["settings"]["vs_flat_out"] is True
    flat = report["baseline"]["figures"]["flat out"]
    assert flat["count"] == 100  # two flat-out blocks of 50, one after each paced block
    assert {"flat out", "flat out server", "flat out transport", "flat out infer"} <= set(report["baseline"]["samples"])
    cpu = report["settings"]["server_cpu"]
    assert cpu["seconds"] > 0 and 0 < cpu["percent_of_one_core"] < 400
    assert report["settings"]["keep_warm"] is True


def test_transports_and_payloads_side_by_side_in_one_run(tmp_path, capsys):
    js = tmp_path / "v.json"
    args = ["stream", "--spawn", "--size", "128x128", "--count", "30", "--warmup", "3", "--threads", "1"]
    code = bench_main([*args, "--transport", "tcp,ipc", "--shm", "--baseline", "--json", str(js)])
    assert code == 0
    report = json.loads(js.read_text())
    assert report["settings"]["variants"] == ["tcp", "ipc", "ipc+shm"]  # shared memory over ipc:// only
    assert report["counts"]["ok"] == 90 and report["counts"]["error"] == 0
    figures = report["figures"]
    assert figures["total"]["count"] == 30
    for name in ("ipc", "ipc+shm"):
        for figure in ("total", "server", "transport", "outside_model"):
            assert figures[f"{figure}[{name}]"]["count"] == 30
    baseline = report["baseline"]
    assert set(baseline["variants"]) == set(baseline["outside_model_added_p50"]) == set(report["settings"]["variants"])
    assert baseline["figures"]["in-process"]["count"] == 30
    shown = "".join(capsys.readouterr())
    assert "total[ipc+shm]" in shown and "added by the runtime over ipc+shm" in shown


def test_threads_auto_is_stated_in_the_stream_report(tmp_path):
    js = tmp_path / "a.json"
    args = ["stream", "--spawn", "--size", "64x64", "--count", "10", "--warmup", "2", "--threads", "auto"]
    assert bench_main([*args, "--json", str(js)]) == 0
    engine = json.loads(js.read_text())["engine"]
    assert isinstance(engine["threads"], int)
