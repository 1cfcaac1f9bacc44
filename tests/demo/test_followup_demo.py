"""``scanedge demo --prior``: the demo patient against a prior made with known motion and lesion changes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scanedge.cli import main
from scanedge.demo.followup_series import make_demo_followup
from scanedge.demo.series import load_demo_patient

pytest.importorskip("SimpleITK")


def test_the_demo_prior_plants_each_change_and_a_known_motion():
    followup = make_demo_followup()
    patient = load_demo_patient()
    kinds = [kind for kind, _ in followup.current_lesions]
    assert kinds.count("new") == 2 and kinds.count("enlarging") == 2 and kinds.count("shrinking") == 1
    assert followup.disappeared.any() and followup.prior.shape == patient.pixels.shape
    assert not np.allclose(followup.matrix, np.eye(4))  # the prior is moved
    for kind, voxels in followup.current_lesions:  # every lesion of the current study is planted once
        assert patient.labels[voxels].all(), kind
    assert sum(int(v.sum()) for _, v in followup.current_lesions) == int((patient.labels > 0).sum())


def test_demo_prior_finds_the_planted_changes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--prior", "--out", str(out), "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "follow-up: compared with 2025-01-01 (MR, 32 slice(s)" in captured.out, captured.out
    assert "new-lesion sensitivity 2/2, false new lesions 0" in captured.out
    assert "enlarging lesions found enlarging 2/2" in captured.out
    results = json.loads((out / "results.json").read_text())
    truth, followup = results["truth"], results["followup"]
    assert followup["status"] == "compared"
    assert truth["new_found"] == truth["new_true"] == 2 and truth["false_new"] == 0
    assert truth["enlarging_ok"] == truth["enlarging_true"] == 2 and truth["disappeared_ok"]
    assert truth["tre_mm"] < 1.0  # the known motion is found to within a millimetre over the head
    assert (out / "change-montage.png").is_file() and len(list(out.glob("*.change.png"))) == 32
    assert sorted(p.name for p in (out / "series").iterdir()) == ["current", "prior"]
