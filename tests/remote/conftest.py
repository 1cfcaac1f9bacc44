"""A real Open Inference Protocol server for the remote-engine tests: Seldon MLServer serving the demo model
from the repository ``scanedge export-triton`` writes.

Absent MLServer (no ``.venv-mlserver``, no ``$SCANEDGE_MLSERVER``) or tritonclient's gRPC support, these
tests skip with the reason on a developer's machine, and fail in CI (``CI`` set), where ``.ci/run``
installs both so that they always run there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanedge.converters.triton import export_triton
from scanedge.demo.assets import DEMO_MODEL_PATH
from tests.remote.mlserver import MLSERVER_ENV, MLServer, find_mlserver

DEMO_NAME = "ms-lesion-demo"


def _missing_grpc() -> str | None:
    try:
        import tritonclient.grpc  # noqa: F401
    except (ImportError, RuntimeError) as exc:
        return f"tritonclient without gRPC support ({type(exc).__name__}): pip install 'tritonclient[grpc]'"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the remote-engine tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def grpc_support() -> None:
    """tritonclient with gRPC (the ``remote`` extra), for tests that need no server."""
    reason = _missing_grpc()
    if reason is not None:
        _skip_or_fail(reason)


def _missing() -> str | None:
    if (reason := _missing_grpc()) is not None:
        return reason
    if find_mlserver() is None:
        return (
            "no MLServer: create .venv-mlserver with `python3 -m venv .venv-mlserver && .venv-mlserver/bin/pip "
            f"install -r tests/remote/mlserver-requirements.txt` (as .ci/run does), or set ${MLSERVER_ENV}"
        )
    return None


@pytest.fixture(scope="session")
def mlserver_executable() -> Path:
    reason = _missing()
    if reason is not None:
        _skip_or_fail(reason)
    executable = find_mlserver()
    assert executable is not None
    return executable


def exported_repo(root: Path) -> Path:
    """``scanedge export-triton`` of the shipped demo model into ``root``, as a user would run it."""
    export_triton(DEMO_MODEL_PATH, root)
    return root


@pytest.fixture(scope="module")
def mlserver(mlserver_executable: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    """One MLServer for a test module; tests that break it use ``own_mlserver`` instead."""
    repo = exported_repo(tmp_path_factory.mktemp("triton-repo"))
    server = MLServer(mlserver_executable, repo, log_path=repo.parent / "mlserver.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_mlserver(mlserver_executable: Path, tmp_path: Path) -> Iterator[MLServer]:
    """An MLServer this test may kill and restart."""
    repo = exported_repo(tmp_path / "triton-repo")
    server = MLServer(mlserver_executable, repo, log_path=tmp_path / "mlserver.log").start()
    try:
        yield server
    finally:
        server.stop()
