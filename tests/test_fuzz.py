"""The coverage-guided fuzz runner works as documented: one command, a time limit, exit 0 when nothing crashed."""

import subprocess
import sys
from pathlib import Path

import pytest

from scanedge.fuzz import TARGETS

ROOT = Path(__file__).resolve().parents[1]


def test_every_target_accepts_its_own_seeds():
    for target in TARGETS.values():
        seeds = list(target.seeds())
        assert seeds, target.name
        for seed in seeds:
            target.run(seed)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_the_runner_fuzzes_a_target_for_the_time_given(tmp_path, name):
    pytest.importorskip("atheris")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scanedge.fuzz",
            name,
            "3",
            "--corpus",
            str(tmp_path / "corpus"),
            "--artifacts",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Done" in done.stderr and "stat::number_of_executed_units" in done.stderr
    assert not list(tmp_path.glob("crash-*")), "the fuzzer found a crash: make it a regression test"
    assert any((tmp_path / "corpus").iterdir())


def test_list_names_every_target():
    out = subprocess.run([sys.executable, "-m", "scanedge.fuzz", "--list"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and all(name in out.stdout for name in TARGETS)
