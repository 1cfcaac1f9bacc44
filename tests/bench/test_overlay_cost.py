from scanedge.bench.overlay_cost import STYLES, main, measure


def test_both_styles_are_timed_on_every_slice_of_every_round():
    times = measure((64, 64), rounds=2)
    assert set(times) == set(STYLES)
    assert all(len(v) == 64 and min(v) > 0 for v in times.values())  # 32 demo slices x 2 rounds


def test_the_command_prints_a_line_per_style(capsys):
    assert main(["--size", "64x64", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == list(STYLES)
    assert all("p50" in line and "(n=32)" in line for line in lines)


def test_a_bad_size_is_a_usage_error_not_a_traceback(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["--size", "5x"])
    assert exit_.value.code == 2 and "is not ROWSxCOLS" in capsys.readouterr().err
