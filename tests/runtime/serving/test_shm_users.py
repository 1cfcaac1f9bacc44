"""Shared memory across users (docs/protocol.md 12.1), against a real `scanedge serve` over real sockets.

The runtime runs as root, so it can open any object in /dev/shm. A console running as another user
(uid 65534, started with ``setpriv``) must not get it to read or write an object that user may not: not
over tcp from loopback (where the kernel names no user, so no object is opened at all) and not over
ipc:// (where the kernel names the user and the object must be theirs). Its own objects over ipc:// still
work, by name and as a memfd.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scanedge.manifest import embed_manifest
from scanedge.runtime.console.client import Client, ClientConfig
from tests.conftest import conv_model, simple_manifest
from tests.runtime.processes import dealer, free_port, runtime_log, spawn_runtime, stop_runtime
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs POSIX shared memory in /dev/shm"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a console as another user"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop to uid 65534"),
]

ROWS, COLS = 64, 80
NOBODY = 65534
MASK_AT = 1 << 16


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`scanedge serve` as root, on tcp loopback and on an ipc socket any user may connect to."""
    model = tmp_path_factory.mktemp("model") / "conv.onnx"
    embed_manifest(conv_model(), simple_manifest(), model)
    where = tempfile.mkdtemp(dir="/tmp")  # pytest's tmp_path is closed to other users
    os.chmod(where, 0o755)
    tcp, ipc = f"tcp://127.0.0.1:{free_port()}", f"ipc://{where}/rt.ipc"
    proc = spawn_runtime(tcp, "--model", str(model), "--also-bind", ipc, "--no-keep-warm")
    try:
        for endpoint in (tcp, ipc):
            wait_until(lambda e=endpoint: proc.poll() is None and _pong(e), timeout=60, what=f"a PONG on {endpoint}")
        assert proc.poll() is None, runtime_log(proc)
        os.chmod(f"{where}/rt.ipc", 0o777)
        yield {"tcp": tcp, "ipc": ipc}
    finally:
        stop_runtime(proc)
        shutil.rmtree(where, ignore_errors=True)


def _pong(endpoint: str) -> dict[str, Any] | None:
    sock = dealer(endpoint)
    try:
        sock.send(json.dumps({"version": 1, "type": "PING", "id": "hello"}).encode())
        return json.loads(sock.recv()) if sock.poll(1000) else None
    finally:
        sock.close(0)


@contextlib.contextmanager
def roots_object(size: int = 1 << 20) -> Iterator[tuple[str, np.ndarray]]:
    """A root-owned 0600 object in /dev/shm holding a slice's pixels and random bytes after them."""
    name = f"/scanedge-test-root-{secrets.token_hex(6)}"
    fd = os.open("/dev/shm" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    memory = np.frombuffer(mm, np.uint8)
    pixels = (np.arange(ROWS * COLS, dtype=np.int32).reshape(ROWS, COLS) % 700 - 200).astype(np.int16)
    memory[: pixels.nbytes] = pixels.view(np.uint8).ravel()
    memory[pixels.nbytes :] = np.frombuffer(secrets.token_bytes(size - pixels.nbytes), np.uint8)
    try:
        yield name, memory
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink("/dev/shm" + name)


# What the console running as uid 65534 does, with only zmq and the standard library.
NOBODY_CONSOLE = textwrap.dedent(
    """
    import fcntl, json, os, sys, zmq
    endpoint, foreign, transport = sys.argv[1:4]
    ROWS, COLS, MASK_AT = 64, 80, 1 << 16
    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    ids = iter(range(1, 1000))

    def ask(header, *frames):
        sock.send_multipart([json.dumps({"version": 1, "id": next(ids), **header}).encode(), *frames])
        assert sock.poll(30_000), "no reply"
        reply = sock.recv_multipart()
        return {"header": json.loads(reply[0]), "frames": [f.hex() for f in reply[1:]]}

    def segment(name, pixels_in_memory=True):
        header = {"type": "SEGMENT", "dtype": "int16", "shape": [ROWS, COLS], "outputs": ["mask", "image"],
                  "outputs_at": {"mask": {"region": name, "offset": MASK_AT, "nbytes": ROWS * COLS}}}
        if not pixels_in_memory:
            return ask(header, bytes(ROWS * COLS * 2))
        return ask({**header, "pixels_at": {"region": name, "offset": 0, "nbytes": ROWS * COLS * 2}})

    out = {"foreign": [ask({"type": "SHM_REGISTER", "name": foreign, "size": 1 << 20}),
                       segment(foreign), segment(foreign, pixels_in_memory=False)]}
    own = f"/scanedge-test-nobody-{os.getpid()}"
    fd = os.open("/dev/shm" + own, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, 1 << 20)
        os.pwrite(fd, bytes(range(256)) * (ROWS * COLS * 2 // 256), 0)
        out["own"] = [ask({"type": "SHM_REGISTER", "name": own, "size": 1 << 20}), segment(own)]
        out["own_mask_written"] = any(os.pread(fd, ROWS * COLS, MASK_AT))
        os.pwrite(fd, bytes(ROWS * COLS), MASK_AT)
        os.fchmod(fd, 0o400)  # its owner may only read it: so may the runtime on the owner's behalf
        out["own_read_only"] = [ask({"type": "SHM_REGISTER", "name": own, "size": 1 << 20}), segment(own)]
        out["own_read_only_mask_written"] = any(os.pread(fd, ROWS * COLS, MASK_AT))
        os.fchmod(fd, 0o200)
        out["own_write_only"] = [ask({"type": "SHM_REGISTER", "name": own, "size": 1 << 20})]
    finally:
        os.close(fd)
        os.unlink("/dev/shm" + own)
    memfd = os.memfd_create("scanedge-test-nobody", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(memfd, 1 << 20)
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    os.pwrite(memfd, bytes(range(256)) * (ROWS * COLS * 2 // 256), 0)
    out["memfd"] = [ask({"type": "SHM_REGISTER", "name": "/scanedge-test-memfd", "size": 1 << 20, "fd": memfd}),
                    segment("/scanedge-test-memfd")]
    out["memfd_mask_written"] = any(os.pread(memfd, ROWS * COLS, MASK_AT))
    print(json.dumps(out))
    """
)


def as_nobody(endpoint: str, foreign: str, transport: str) -> dict[str, Any]:
    """Run :data:`NOBODY_CONSOLE` as uid/gid 65534 with no supplementary groups; its replies, decoded."""
    out = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
         sys.executable, "-c", NOBODY_CONSOLE, endpoint, foreign, transport],
        capture_output=True, text=True, timeout=120, cwd="/", env={"PATH": os.environ.get("PATH", ""), "HOME": "/"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _digest(memory: np.ndarray) -> str:
    return hashlib.sha256(memory.tobytes()).hexdigest()


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_another_user_cannot_have_the_runtime_read_or_write_a_root_object(serve, transport):
    with roots_object() as (name, memory):
        before = _digest(memory)
        answers = as_nobody(serve[transport], name, transport)
        assert _digest(memory) == before  # not one byte written
        registered, read_it, write_it = answers["foreign"]
        if transport == "tcp":
            assert registered["header"]["code"] == "SHM_REFUSED" and "ipc://" in registered["header"]["message"]
            assert read_it["header"]["code"] == write_it["header"]["code"] == "SHM_REFUSED"
        else:
            assert registered["header"]["code"] == "SHM_UNAVAILABLE"
            assert "belongs to another user" in registered["header"]["message"]
            assert read_it["header"]["code"] == write_it["header"]["code"] == "UNKNOWN_REGION"
        for reply in (registered, read_it, write_it):  # no RESULT, so no image (nor mask) of the object's pixels
            assert reply["header"]["type"] == "ERROR" and reply["frames"] == []


def test_over_tcp_even_a_consoles_own_object_is_refused_and_over_ipc_it_works(serve):
    with roots_object() as (name, _):
        over_tcp = as_nobody(serve["tcp"], name, "tcp")
        over_ipc = as_nobody(serve["ipc"], name, "ipc")
    for kind in ("own", "memfd"):
        registered, used = over_tcp[kind]
        assert registered["header"]["code"] == used["header"]["code"] == "SHM_REFUSED"
        registered, used = over_ipc[kind]
        assert registered["header"]["type"] == "SHM_REGIONS" and used["header"]["type"] == "RESULT"
        assert [f["name"] for f in used["header"]["frames"]] == ["mask", "image"]
        assert used["header"]["frames"][0]["offset"] == MASK_AT and len(used["frames"]) == 1  # the image
    assert not over_tcp["own_mask_written"] and not over_tcp["memfd_mask_written"]
    assert over_ipc["own_mask_written"] and over_ipc["memfd_mask_written"]


def test_over_ipc_the_owners_permission_bits_bound_what_the_runtime_does(serve):
    """An object its owner made read-only (0400) is registered read-only: outputs into it are BAD_REGION and
    nothing is written; one its owner may not read (0200) is refused."""
    with roots_object() as (name, _):
        answers = as_nobody(serve["ipc"], name, "ipc")
    registered, used = answers["own_read_only"]
    assert registered["header"]["type"] == "SHM_REGIONS"
    assert used["header"]["code"] == "BAD_REGION" and "may only be read" in used["header"]["message"]
    assert not answers["own_read_only_mask_written"]
    (refused,) = answers["own_write_only"]
    assert (
        refused["header"]["code"] == "SHM_UNAVAILABLE"
        and "may not be read by its owner" in refused["header"]["message"]
    )


def test_the_owner_over_ipc_still_uses_its_object(serve):
    """root's own console on ipc:// registers the object uid 65534 was refused, and gets its image."""
    with roots_object() as (name, memory), contextlib.closing(dealer(serve["ipc"])) as sock:
        pixels = memory[: ROWS * COLS * 2].tobytes()
        replies = []
        for header in (
            {"type": "SHM_REGISTER", "name": name, "size": 1 << 20},
            {"type": "SEGMENT", "dtype": "int16", "shape": [ROWS, COLS], "outputs": ["mask", "image"],
             "pixels_at": {"region": name, "nbytes": len(pixels)},
             "outputs_at": {"mask": {"region": name, "offset": MASK_AT, "nbytes": ROWS * COLS}}},
        ):  # fmt: skip
            sock.send(json.dumps({"version": 1, "id": len(replies), **header}).encode())
            assert sock.poll(30_000)
            replies.append(sock.recv_multipart())
        assert json.loads(replies[0][0])["type"] == "SHM_REGIONS"
        result = json.loads(replies[1][0])
        assert result["type"] == "RESULT" and [f["name"] for f in result["frames"]] == ["mask", "image"]
        with Client(serve["ipc"]) as plain:
            ref = plain.segment(np.frombuffer(pixels, np.int16).reshape(ROWS, COLS), outputs=("mask", "image"))
        assert memory[MASK_AT : MASK_AT + ROWS * COLS].tobytes() == ref.mask.tobytes()
        assert replies[1][1] == ref.image.tobytes()


def test_the_client_falls_back_to_frames_over_tcp_and_uses_shared_memory_over_ipc(serve):
    pixels = np.arange(ROWS * COLS, dtype=np.int16).reshape(ROWS, COLS)
    with Client(serve["tcp"], ClientConfig(shared_memory=True)) as over_tcp:
        r = over_tcp.segment(pixels)
        assert all(f.region is None for f in r.header.frames) and not over_tcp.shared_memory_active
        assert over_tcp._io.shm_refusal is not None and "ipc://" in over_tcp._io.shm_refusal
    with Client(serve["ipc"], ClientConfig(shared_memory=True)) as over_ipc:
        wait_until(lambda: over_ipc.shared_memory_active, what="the region acknowledged over ipc")
        shared = over_ipc.segment(pixels)
        assert shared.header.frames[0].region is not None
        np.testing.assert_array_equal(shared.mask, r.mask)
