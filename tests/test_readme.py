"""The README's promises: its embedding example runs, and its set-up commands are the ones CI runs."""

import re
import tempfile
from pathlib import Path

import pytest

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


def test_the_dicom_node_commands_run_as_written(tmp_path):
    """The README's DICOM block, verbatim but for the port (a free one) and ``scanedge``/``python`` (this
    checkout's), run by bash in an empty folder: the SEG is written, re-opened and dumped."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.dicomnet.conftest import free_port, needs_dcmtk

    if needs_dcmtk.args[0]:
        pytest.skip(needs_dcmtk.kwargs["reason"])
    block = re.search(r"```bash\npip install -e '\.\[dicom,dicomnet\]'\n(.*?)```", README, re.S).group(1)
    assert block.startswith("scanedge dicom-listen") and "storescu" in block and block.rstrip().endswith("kill %1")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, run in (("scanedge", f"{sys.executable} -m scanedge"), ("python", sys.executable)):
        (bin_dir / name).write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec {run} "$@"\n')
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    port = free_port()
    script = block.replace("11112", str(port)).replace("scanedge dicom-listen", f"scanedge dicom-listen --port {port}")
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:  # files: the node started with & may outlive bash
        done = subprocess.run(
            [shutil.which("bash"), "-c", script], cwd=work, env=env, stdout=stdout, stderr=stderr, timeout=240
        )
    assert done.returncode == 0, err.read_text()
    text = out.read_text()
    assert "lesion Lesion 32 source images" in text
    assert "[lesion]" in text and "[ms-lesion-demo]" in text
    assert [p.relative_to(work).parts[:2] for p in work.rglob("*.dcm")] == [("scanedge-dicom-out", "seg")]


def test_shared_memory_example_runs_against_a_runtime(capsys):
    from tests.runtime.conftest import running_server

    code = re.search(
        r"```python\n(import numpy as np\nfrom scanedge.runtime import Client, ClientConfig\n.*?)```", README, re.S
    )
    code = code.group(1)
    assert "ClientConfig(shared_memory=True)" in code and 'Client("ipc:///run/scanedge/rt.ipc"' in code
    with tempfile.TemporaryDirectory() as where, running_server(bind=f"ipc://{where}/rt.ipc") as srv:
        names: dict = {}
        exec(compile(code.replace("ipc:///run/scanedge/rt.ipc", srv.endpoint), "README.md", "exec"), names)
    assert names["result"].header.frames[0].region is not None  # the outputs did come through shared memory
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and all(line.startswith("(512, 512) (512, 512, 3) ") for line in lines)
