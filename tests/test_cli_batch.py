"""``scanedge segment`` on real folders: one bad file never stops the batch, and --out is checked first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scanedge.cli import main
from tests.conftest import dicom_file


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """What a PACS export looks like: brain MR, a CT, a colour ultrasound, a SEG, a DICOMDIR, a truncated
    transfer and a text file."""
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("emri_small.dcm", "MR_small.dcm", "CT_small.dcm", "US1_J2KR.dcm", "liver.dcm", "DICOMDIR"):
        shutil.copy(dicom_file(name), folder / name)
    (folder / "truncated.dcm").write_bytes(Path(dicom_file("MR_small.dcm")).read_bytes()[:600])
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def test_a_mixed_folder_is_processed_with_each_bad_file_named(mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(mixed_folder), "--out", str(out), "--threads", "1"]) == 3
    captured = capsys.readouterr()
    expected = {
        "liver.dcm": "NOT_AN_IMAGE",
        "DICOMDIR": "NOT_AN_IMAGE",
        "truncated.dcm": "BAD_DICOM",
        "CT_small.dcm": "OUT_OF_SCOPE",
        "US1_J2KR.dcm": "OUT_OF_SCOPE",
    }
    for name, code in expected.items():
        assert f"skipped {name} [{code}]" in captured.err, captured.err
    assert "1 other file(s) ignored" in captured.err
    report = json.loads((out / "results.json").read_text())
    assert {s["name"]: s["code"] for s in report["skipped"]} == expected
    assert all(s["reason"] for s in report["skipped"])
    assert len(report["slices"]) == 10 + 1  # emri_small's ten frames and MR_small
    assert len(list(out.glob("*.overlay.png"))) == 11
    assert "series 301 (MR): 10 slice(s)" in captured.out and "2-D component(s) summed over slices" in captured.out


def test_ignore_scope_segments_the_ct_too_and_marks_it(mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(mixed_folder), "--out", str(out), "--ignore-scope", "--json"]) == 3
    report = json.loads(capsys.readouterr().out)  # --json: results.json on stdout
    scopes = {s["name"]: s["scope"]["status"] for s in report["slices"]}
    assert scopes["CT_small.dcm"] == "outside" and scopes["MR_small.dcm"] == "in"
    assert "OUT_OF_SCOPE" not in {s["code"] for s in report["skipped"]}


def test_nothing_segmentable_is_exit_2_after_naming_every_file(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(dicom_file("CT_small.dcm"), folder)
    assert main(["segment", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "skipped CT_small.dcm [OUT_OF_SCOPE]" in err and "nothing was segmented" in err
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["slices"] == [] and report["skipped"][0]["code"] == "OUT_OF_SCOPE"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error [BAD_CONFIG] ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_out_pointing_at_a_file_is_refused_in_one_line(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("")
    assert main(["segment", dicom_file("MR_small.dcm"), "--out", str(target)]) == 2
    assert "is a file; results go into a folder" in _one_line_error(capsys)
    assert main(["segment", dicom_file("MR_small.dcm"), "--out", str(target / "below")]) == 2
    assert "cannot create the folder" in _one_line_error(capsys)


def test_out_that_cannot_be_created_is_refused_in_one_line(tmp_path, capsys):
    target = Path("/sys/scanedge-test-out")  # sysfs refuses new folders, even to root
    if target.exists():
        pytest.skip("/sys accepts folders here")
    assert main(["segment", dicom_file("MR_small.dcm"), "--out", str(target)]) == 2
    assert "cannot create the folder /sys/scanedge-test-out" in _one_line_error(capsys)


def test_an_earlier_result_folder_is_kept_unless_forced(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", dicom_file("MR_small.dcm"), "--out", str(out)]) == 0
    first = sorted(p.name for p in out.iterdir())
    (out / "mine.txt").write_text("a file the user put there")
    capsys.readouterr()
    assert main(["segment", dicom_file("emri_small.dcm"), "--out", str(out)]) == 2
    assert "already holds results (results.json)" in _one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == sorted([*first, "mine.txt"])
    assert main(["segment", dicom_file("emri_small.dcm"), "--out", str(out), "--force"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "MR_small.dcm.overlay.png" not in names and "mine.txt" in names  # the old run's files only
    assert len(json.loads((out / "results.json").read_text())["slices"]) == 10


def test_a_missing_input_is_named(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("mm3, shown", [(5328.4, "5328"), (12.46, "12.5"), (0.46875, "0.47"), (0.0, "0")])
def test_series_volumes_print_as_people_read_them(mm3, shown):
    from scanedge.cli.segment import _volume

    assert _volume(mm3) == shown


def test_the_series_line_gives_the_3d_volume_rounded(tmp_path, capsys):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(dicom_file("MR_small.dcm"), folder / "MR_small.dcm")  # 0.3125 mm pixels: a fraction of a mm³
    assert main(["segment", str(folder), "--out", str(tmp_path / "out"), "--threads", "1"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("series"))
    import re

    volume = re.search(r"lesion\(s\) in 3-D, ([0-9.]+) mm³", line)
    assert volume is not None, line
    assert len(volume.group(1).replace("0.", "", 1).lstrip("0")) <= 4, line  # no 0.46875
