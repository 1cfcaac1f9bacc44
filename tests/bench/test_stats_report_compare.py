import json

import numpy as np
import pytest

from scanedge.bench.compare import compare_reports
from scanedge.bench.report import SCHEMA, BenchReport
from scanedge.bench.stats import stability_warnings, summarize
from scanedge.cli.bench import main as bench_main


def test_percentiles_agree_with_numpy_on_known_samples():
    samples = np.arange(1, 1001, dtype=np.float64)  # 1..1000 ms
    s = summarize(samples)
    assert (s.min, s.max, s.count) == (1, 1000, 1000)
    assert s.median == pytest.approx(500.5)
    assert s.p90 == pytest.approx(np.percentile(samples, 90)) == pytest.approx(900.1)
    assert s.p99 == pytest.approx(990.01)
    assert s.p999 == pytest.approx(np.percentile(samples, 99.9))
    assert s.stdev == pytest.approx(np.std(samples, ddof=1))
    assert s.jitter == pytest.approx(s.p99 - s.median)
    assert s.tail == pytest.approx(1000 - s.p95)


def test_skewed_samples():
    rng = np.random.default_rng(0)
    samples = rng.lognormal(1.0, 0.6, 5000)
    s = summarize(samples)
    for q, v in zip((50, 90, 95, 99, 99.9), (s.median, s.p90, s.p95, s.p99, s.p999)):
        assert v == pytest.approx(np.percentile(samples, q))
    assert s.cv == pytest.approx(np.std(samples, ddof=1) / np.mean(samples))


def test_warnings_for_few_samples_and_high_variance():
    assert any("only 10 samples" in w for w in stability_warnings("total", summarize(np.ones(10))))
    noisy = summarize(np.r_[np.ones(500), np.full(50, 10.0)])
    assert any("high variance" in w for w in stability_warnings("total", noisy))
    assert not stability_warnings("total", summarize(np.ones(2000) + np.linspace(0, 0.01, 2000)))


def report(total, infer, throughput=100.0):
    return BenchReport(
        mode="pipeline",
        settings={"count": len(total)},
        samples={"total": list(total), "infer": list(infer)},
        throughput_per_s=throughput,
    )


def test_json_round_trip_keeps_samples_and_recomputes_figures(tmp_path):
    r = report(np.linspace(2, 4, 200), np.linspace(1, 2, 200))
    r.baseline = {
        "what": "x",
        "samples": {"session.run": [1.0, 1.1]},
        "overhead_ms": {"p50": 1.0, "p99": 1.2},
        "ratio": 2.0,
    }
    path = tmp_path / "r.json"
    r.write_json(path)
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA and data["figures"]["total"]["median"] == pytest.approx(3.0)
    assert {"cpu_model", "cores"} <= set(data["machine"]) and {"scanedge", "onnxruntime", "numpy"} <= set(
        data["versions"]
    )
    again = BenchReport.read_json(path)
    assert again.figures()["total"].median == pytest.approx(r.figures()["total"].median, abs=1e-3)
    assert again.figures()["infer"].p99 == pytest.approx(r.figures()["infer"].p99, abs=1e-3)
    assert again.baseline["ratio"] == 2.0


def test_reading_something_else_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"schema": "other"}')
    with pytest.raises(ValueError, match="not a scanedge benchmark report"):
        BenchReport.read_json(path)


def test_compare_ratios_and_threshold():
    a = report(np.full(200, 2.0), np.full(200, 1.0), 100)
    b = report(np.full(200, 2.4), np.full(200, 1.0), 80)
    result = compare_reports(a, b, max_ratio=1.1)
    rows = {(r.figure, r.stat): r for r in result.rows}
    assert rows[("total", "median")].ratio == pytest.approx(1.2) and rows[("total", "median")].exceeded
    assert not rows[("infer", "p99")].exceeded
    assert result.failed and result.throughput_ratio == pytest.approx(0.8)
    assert not compare_reports(a, b, max_ratio=1.25).failed
    assert not compare_reports(a, b).failed  # no threshold, no verdict


def test_compare_cli_exit_codes(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    report(np.full(200, 2.0), np.full(200, 1.0)).write_json(a)
    report(np.full(200, 3.0), np.full(200, 1.0)).write_json(b)
    assert bench_main(["compare", str(a), str(b)]) == 0
    assert bench_main(["compare", str(a), str(b), "--max-ratio", "1.2"]) == 1
    assert bench_main(["compare", str(a), str(b), "--max-ratio", "1.2", "--figures", "infer"]) == 0
    assert bench_main(["compare", str(a), str(b), "--figures", "nope"]) == 2


def test_drift_and_throttling_warnings():
    from scanedge.bench.stats import drift_warning, throttling_warning

    steady = np.ones(1000)
    assert drift_warning("total", steady) is None
    drifting = np.linspace(1.0, 2.0, 1000)
    assert "drifted up" in drift_warning("total", drifting)
    assert drift_warning("total", drifting[:50]) is None  # too few to tell
    assert "throttling" in throttling_warning(3000.0, 2000.0)
    assert throttling_warning(3000.0, 2950.0) is None and throttling_warning(None, 2000.0) is None


def test_the_default_sample_count_does_not_warn_about_itself():
    from scanedge.bench.inprocess import RunLength

    default = summarize(np.ones(RunLength().count) + np.linspace(0, 0.01, RunLength().count))
    assert stability_warnings("total", default) == []


def test_a_speed_up_reads_as_a_speed_up(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    report(np.full(200, 4.0), np.full(200, 2.0)).write_json(a)
    report(np.full(200, 2.0), np.full(200, 2.0)).write_json(b)
    assert bench_main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "2.00x faster" in out and "same" in out and "overhead" not in out


def test_runs_under_different_conditions_are_refused_or_flagged(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    ra, rb = report(np.full(200, 2.0), np.full(200, 1.0)), report(np.full(200, 2.0), np.full(200, 1.0))
    ra.settings.update(threads=1, slice_shapes=[[512, 512]])
    rb.settings.update(threads=2, slice_shapes=[[256, 256]])
    ra.engine, rb.engine = {"backend": "ort"}, {"backend": "tensorrt"}
    ra.write_json(a)
    rb.write_json(b)
    assert bench_main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    for difference in ("threads: 1 vs 2", "engine: ort vs tensorrt", "input shape: [[512, 512]] vs [[256, 256]]"):
        assert difference in err, err
    assert bench_main(["compare", str(a), str(b), "--allow-mismatch", "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning: not alike: threads: 1 vs 2" in captured.err
    assert "threads: 1 vs 2" in json.loads(captured.out)["mismatches"]


def test_a_baseline_that_is_slower_reads_as_savings(capsys):
    from rich.console import Console

    r = report(np.full(200, 2.0), np.full(200, 1.0))
    r.baseline = {"what": "fp32 original", "samples": {"session.run": [4.0] * 200},
                  "overhead_ms": {"p50": -2.0, "p99": -2.1}, "ratio": 0.5}  # fmt: skip
    console = Console(width=200, highlight=False, soft_wrap=True)
    r.render(console)
    out = capsys.readouterr().out
    assert "p50 2.000 ms less, p99 2.100 ms less; median 2.00x faster" in out and "+-" not in out


def test_narrow_terminals_and_pipes_get_every_number_whole(capsys):
    from rich.console import Console

    r = report(np.linspace(12.3456, 13.0, 200), np.linspace(1.0, 2.0, 200))
    r.warnings.append("install scanedge[gpu] for TensorRT")  # rich markup must not swallow [gpu]
    for width in (200, 60):
        r.render(Console(width=width, highlight=False, soft_wrap=True))
        out = capsys.readouterr().out
        assert "…" not in out and "12.346" in out and "13.000" in out, out
        assert "scanedge[gpu]" in out
    assert "total: min 12.346, mean" in out  # too narrow for the table: one line per figure
