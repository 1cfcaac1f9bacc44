"""Seldon MLServer in a child process, serving an ``export-triton`` repository over the Open Inference
Protocol, for the remote-engine tests and for ``edge-bench`` runs against a real server.

MLServer lives in its own virtualenv (it pins many packages): ``.venv-mlserver`` at the repository root,
made by ``.ci/run`` from ``tests/remote/mlserver-requirements.txt``, or the ``mlserver`` executable named
by ``$SCANEDGE_MLSERVER``. The models run through the small ONNX Runtime runtime beside this file
(``mlserver_runtime/``), which is not part of the package.

Run it by hand (prints the gRPC URL, serves until Ctrl-C)::

    python -m tests.remote.mlserver --repo /tmp/triton_models [--grpc-port 8001]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_DIR = Path(__file__).resolve().parent / "mlserver_runtime"
MLSERVER_ENV = "SCANEDGE_MLSERVER"
IMPLEMENTATION = "scanedge_onnx_runtime.OnnxRuntimeModel"


def find_mlserver() -> Path | None:
    """The ``mlserver`` executable: ``$SCANEDGE_MLSERVER``, else ``.venv-mlserver/bin/mlserver``; None if absent."""
    named = os.environ.get(MLSERVER_ENV)
    if named:
        return Path(named) if Path(named).is_file() else None
    candidate = ROOT / ".venv-mlserver" / "bin" / "mlserver"
    return candidate if candidate.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def add_model_settings(repo: Path, *, threads: int | None = None) -> list[str]:
    """Write MLServer's ``model-settings.json`` beside each ``config.pbtxt`` that export-triton wrote (model
    name and version ``1`` as Triton would load them); returns the model names."""
    names = []
    for config in sorted(repo.glob("*/config.pbtxt")):
        entry = config.parent
        settings = {
            "name": entry.name,
            "implementation": IMPLEMENTATION,
            "parameters": {"uri": "./1/model.onnx", "version": "1"},
        }
        (entry / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        names.append(entry.name)
    return names


class MLServer:
    """``mlserver start REPO`` on loopback ports, restartable on the same ports (a server coming back)."""

    def __init__(
        self,
        executable: Path,
        repo: Path,
        *,
        grpc_port: int | None = None,
        threads: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.executable = executable
        self.repo = repo
        self.models = add_model_settings(repo)
        self.grpc_port = grpc_port or free_port()
        self.http_port = free_port()
        self.threads = threads
        settings = {
            "debug": False,
            "host": "127.0.0.1",
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_endpoint": None,
            "parallel_workers": 0,  # inference in the server's own process: the lowest latency
            "load_models_at_startup": True,
        }
        (repo / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        self._log_path = log_path or Path(tempfile.mkstemp(prefix="mlserver-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 120.0) -> MLServer:
        """Start it and wait until every model answers ready over gRPC (polling, not sleeping blindly)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(RUNTIME_DIR)
        env["ORT_DISABLE_TELEMETRY"] = "1"
        if self.threads:
            env["SCANEDGE_TEST_ORT_THREADS"] = str(self.threads)
        log = open(self._log_path, "ab")  # a pipe nobody reads would stall the server
        self.proc = subprocess.Popen(
            [str(self.executable), "start", str(self.repo)],
            cwd=self.repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout
        with grpcclient.InferenceServerClient(self.address) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"MLServer exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.is_server_ready(client_timeout=1.0) and all(
                        client.is_model_ready(m, "1", client_timeout=1.0) for m in self.models
                    ):
                        return self
                except Exception:  # not listening yet
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"MLServer was not ready within {timeout:g} s:\n{self.log_tail()}")
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crashed or unplugged server: nothing is answered on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def __enter__(self) -> MLServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m tests.remote.mlserver")
    ap.add_argument("--repo", type=Path, required=True, help="a repository written by `scanedge export-triton`")
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads in the server")
    args = ap.parse_args()
    executable = find_mlserver()
    if executable is None:
        print(
            f"no MLServer: create .venv-mlserver from {Path(__file__).parent}/mlserver-requirements.txt "
            f"or set ${MLSERVER_ENV}",
            file=sys.stderr,
        )
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = MLServer(executable, args.repo, grpc_port=args.grpc_port, threads=args.threads)
    server.start()
    print(f"MLServer ready: {server.url} serving {', '.join(server.models)} (log: {server._log_path})", flush=True)
    try:
        while not stop.wait(1.0):
            if server.proc is not None and server.proc.poll() is not None:
                print(f"MLServer exited:\n{server.log_tail()}", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
