"""The README's promises: its embedding example runs, and its set-up commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_embedding_example_runs(capsys):
    code = re.search(r"```python\n(import scanedge\n.*?)```", README, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 32 and all(line.startswith("IM") and line.endswith(" ms") for line in lines)


def test_ci_runs_the_readme_test_command():
    test_command = next(line for line in README.splitlines() if "pytest" in line and line.startswith("python3 -m venv"))
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert "scanedge demo" in README


def test_streaming_example_runs_against_a_runtime(capsys):
    from tests.runtime.conftest import running_server

    code = re.search(r"```python\n(from scanedge.demo.series import demo_series_dir\n.*?)```", README, re.S).group(1)
    assert 'Client("tcp://127.0.0.1:5555")' in code
    with running_server() as srv:
        exec(compile(code.replace("tcp://127.0.0.1:5555", srv.endpoint), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(len(line.split()) == 4 and line.endswith(" ms") for line in lines)  # computed slices


def test_shared_memory_example_runs_against_a_runtime(capsys):
    from tests.runtime.conftest import running_server

    code = re.search(
        r"```python\n(import numpy as np\nfrom scanedge.runtime import Client, ClientConfig\n.*?)```", README, re.S
    )
    code = code.group(1)
    assert "ClientConfig(shared_memory=True)" in code
    with running_server() as srv:
        exec(compile(code.replace("tcp://127.0.0.1:5555", srv.endpoint), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and all(line.startswith("(512, 512) (512, 512, 3) ") for line in lines)
