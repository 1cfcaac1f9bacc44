"""The soak that runs in CI: two minutes at twice the runtime's capacity with 5% malformed messages."""

import json

import pytest

from scanedge.bench.soak import SoakConfig, bench_soak, process_sample
from scanedge.cli.bench import main as bench_main


@pytest.mark.slow
def test_two_minutes_of_overload_and_bad_input_every_message_answered_nothing_leaks():
    report = bench_soak(SoakConfig(duration_s=120.0, consoles=3, overload=2.0, malformed=0.05, window_s=20.0))
    assert report.passed, report.failures
    assert report.replies == report.messages and report.duplicates == report.missing == 0
    assert report.anonymous > 0 and report.null_id_replies <= report.anonymous
    assert report.messages >= 0.9 * report.offered_per_s * 120  # the load was really offered
    for window in report.windows:  # good slices kept being computed all along, and overload superseded many
        assert window.outcomes.get("ok", 0) > 0 and window.outcomes.get("SUPERSEDED", 0) > 0
        assert window.rss_mb is not None and window.fds is not None and window.threads is not None
    assert report.runtime_alive and report.runtime_exit_code == 0


def test_the_command_reports_and_exits_by_its_verdict(tmp_path, capsys):
    out = tmp_path / "soak.json"
    code = bench_main(["soak", "--spawn", "--duration", "6", "--window", "3", "--json", str(out)])
    data = json.loads(out.read_text())
    assert code == (0 if data["passed"] else 1) and data["schema"] == "scanedge.soak/1"
    assert data["messages"] == data["replies"] and len(data["windows"]) == 2
    printed = capsys.readouterr().out
    assert "PASS" in printed and "…" not in printed  # whole numbers when piped


def test_process_sample_reads_this_process():
    import os

    rss, fds, threads = process_sample(os.getpid())
    assert rss > 10 and fds > 2 and threads >= 1
    assert process_sample(2**22 + 12345) is None
