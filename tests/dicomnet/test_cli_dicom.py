"""``scanedge dicom-listen`` parses, refuses what cannot work with one line, and documents every option."""

from __future__ import annotations

import pytest

from scanedge.cli import build_parser, main


def test_every_option_has_help_with_its_default():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    parser = sub.choices["dicom-listen"]
    for action in parser._actions:
        if action.dest in ("help",) or action.default is None or action.default is False:
            continue
        assert action.help and ("default" in action.help or "default:" in action.help), action.dest


@pytest.mark.parametrize(
    "args, message",
    [
        (["--forward", "PACS@somewhere"], "AE@HOST:PORT"),
        (["--ae-title", "A" * 17], "AE title"),
        (["--publish", "tcp://0.0.0.0:5556"], "without encryption"),
        (["--max-series", "0"], "--max-series"),
        (["--max-pending", "0"], "max_pending"),
        (["--associate-timeout", "0"], "associate_timeout_s"),
        (["--forward-dicomweb", "pacs:8042/dicom-web"], "http(s) URL"),
        (["--output", "nope"], "unknown output"),
    ],
)
def test_settings_that_cannot_work_are_one_line_errors(args, message, tmp_path, capsys):
    assert main(["dicom-listen", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything is written
