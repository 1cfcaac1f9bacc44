import json

from scanedge.bench.cli import main as bench_main


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
    assert "runtime memory" in capsys.readouterr().err


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
    assert report["settings"]["variants"] == ["tcp", "tcp+shm", "ipc", "ipc+shm"]
    assert report["counts"]["ok"] == 120 and report["counts"]["error"] == 0
    figures = report["figures"]
    assert figures["total"]["count"] == 30
    for name in ("tcp+shm", "ipc", "ipc+shm"):
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
