import pytest

from scanedge.console import run_command, user_values
from scanedge.errors import CodecUnavailableError, ConfigError


def failing(exc: BaseException):
    def command(args) -> int:
        raise exc

    return command


def test_typed_errors_print_one_literal_line_with_their_code(capsys):
    hint = "JPEG 2000 pixels need a codec: pip install 'scanedge[dicom]' " + "(and more words) " * 20
    assert run_command(failing(CodecUnavailableError(hint)), None) == 2
    err = capsys.readouterr().err
    assert err == f"error [CODEC_UNAVAILABLE] {hint}\n"  # no markup eaten, no wrapping at 80 columns


def test_a_missing_file_the_user_named_is_one_line_too(capsys):
    assert run_command(failing(FileNotFoundError("no such file or folder: /data/[series]")), None) == 2
    assert capsys.readouterr().err == "error no such file or folder: /data/[series]\n"


def test_programmer_errors_keep_their_traceback():
    with pytest.raises(ValueError, match="a bug"):
        run_command(failing(ValueError("a bug")), None)
    with pytest.raises(TypeError):
        run_command(failing(TypeError("wrong type")), None)


def test_exit_statuses():
    assert run_command(lambda args: None, None) == 0
    assert run_command(lambda args: 1, None) == 1
    assert run_command(failing(KeyboardInterrupt()), None) == 130


def test_user_values_turns_validation_errors_into_config_errors():
    with pytest.raises(ConfigError, match="alpha must be") as info, user_values():
        raise ValueError("alpha must be within [0, 1]")
    assert isinstance(info.value.__cause__, ValueError) and info.value.code == "BAD_CONFIG"
    with pytest.raises(KeyError), user_values():
        raise KeyError("not a value problem")


def test_tables_fit_or_become_one_line_per_row_never_cut_numbers():
    from rich.console import Console

    from scanedge.console import print_table

    rows = [["total", "12.345", "13.456"], ["p[99]", "1.234", "2.345"]]  # text from outside: printed literally
    wide, narrow = Console(width=120, record=True), Console(width=12, record=True, soft_wrap=True)
    print_table(wide, "t [b]", ("figure", "p50", "p99"), rows)
    print_table(narrow, "t [b]", ("figure", "p50", "p99"), rows)
    print_table(narrow, "windows", ("t s", "sent"), [["0", "123456"]], left=0)
    wide_text, narrow_text = wide.export_text(), narrow.export_text()
    assert "│ total  │ 12.345 │ 13.456 │" in wide_text and "t [b]" in wide_text and "p[99]" in wide_text
    assert "  total: p50 12.345, p99 13.456" in narrow_text and "  p[99]: p50 1.234" in narrow_text
    assert "  t s 0, sent 123456" in narrow_text and "…" not in narrow_text
