"""The follow-up evaluation over synthetic pairs: registration and change rules recover the ground truth."""

from __future__ import annotations

import pytest

pytest.importorskip("SimpleITK")

from scanedge.demo.followup_eval import evaluate_pair, main


def test_pair_ground_truth_is_recovered() -> None:
    figures = evaluate_pair(5)
    assert figures["good"] == 1.0 and figures["tre_mm"] < 1.0
    assert figures["new_found"] == figures["new_true"] == 2 and figures["false_new"] == 0
    assert figures["enlarging_ok"] == figures["enlarging_true"] == 1


def test_main_reports(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["2"]) == 0
    out = capsys.readouterr().out
    assert "new-lesion sensitivity" in out and "TRE mean" in out
