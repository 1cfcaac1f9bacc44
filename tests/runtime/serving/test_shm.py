"""Shared-memory payloads (docs/protocol.md section 12), against a real runtime over real sockets.

Consoles here are raw DEALER sockets speaking JSON, as a C++ console would, with POSIX shared-memory
objects created in /dev/shm exactly as ``shm_open`` + ``ftruncate`` + ``mmap`` make them; and the Python
client with ``shared_memory=True``. Faults are real too: an object shrunk or unlinked by its owner, a
console process killed with SIGKILL mid-request, a worker that finishes after its request was answered.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from scanedge.errors import BadRegionError, SharedMemoryError, SharedMemoryRefusedError, UnknownRegionError
from scanedge.runtime.console.client import Client, ClientConfig
from scanedge.runtime.serving.shm import RegionTable, peer_of
from tests.runtime.conftest import Gate, gated_factory, running_server
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs POSIX shared memory in /dev/shm")

ROWS, COLS = 64, 80
PIXELS = (np.arange(ROWS * COLS, dtype=np.int32).reshape(ROWS, COLS) % 700 - 200).astype(np.int16)
MASK_AT, OVERLAY_AT = 1 << 16, 1 << 17  # where the outputs go in the test objects


@contextlib.contextmanager
def shm_object(size: int = 1 << 20) -> Iterator[tuple[str, np.ndarray]]:
    """A POSIX shared-memory object as shm_open(O_CREAT|O_EXCL) + ftruncate + mmap make it; unlinked after."""
    name = f"/scanedge-test-{secrets.token_hex(6)}"
    path = "/dev/shm" + name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)
    try:
        yield name, np.frombuffer(mm, np.uint8)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class RawConsole:
    """A DEALER that sends JSON headers and reads replies as plain dicts."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.ids = iter(range(1, 1 << 30))

    def ask(self, header: dict[str, Any], *frames: bytes, timeout_ms: int = 20_000) -> tuple[dict[str, Any], list]:
        header = {"version": 1, "id": next(self.ids), **header}
        self.sock.send_multipart([json.dumps(header).encode(), *frames])
        assert self.sock.poll(timeout_ms), "no reply"
        reply = self.sock.recv_multipart()
        return json.loads(reply[0]), reply[1:]

    def send(self, header: dict[str, Any], *frames: bytes) -> int:
        request_id = next(self.ids)
        self.sock.send_multipart([json.dumps({"version": 1, "id": request_id, **header}).encode(), *frames])
        return request_id

    def register(self, name: str, size: int) -> dict[str, Any]:
        return self.ask({"type": "SHM_REGISTER", "name": name, "size": size})[0]

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@contextlib.contextmanager
def console(endpoint: str) -> Iterator[RawConsole]:
    c = RawConsole(endpoint)
    try:
        yield c
    finally:
        c.close()


def segment(name: str, *, mask: bool = True, overlay: bool = True, **changes: Any) -> dict[str, Any]:
    """A SEGMENT whose int16 pixels are at offset 0 of ``name``, outputs at MASK_AT and OVERLAY_AT."""
    outputs, at = [], {}
    if mask:
        outputs.append("mask")
        at["mask"] = {"region": name, "offset": MASK_AT, "nbytes": ROWS * COLS}
    if overlay:
        outputs.append("overlay")
        at["overlay"] = {"region": name, "offset": OVERLAY_AT, "nbytes": ROWS * COLS * 3}
    header = {
        "type": "SEGMENT",
        "dtype": "int16",
        "shape": [ROWS, COLS],
        "outputs": outputs,
        "pixels_at": {"region": name, "offset": 0, "nbytes": PIXELS.nbytes},
        "outputs_at": at,
    }
    return {**header, **changes}


def fds_to(name: str) -> int:
    """How many of this process's file descriptors point at shared-memory object ``name``: the runtime's
    (it runs in this process), plus one for the test's own mapping of an object from :func:`shm_object`."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/shm" + name):
                count += 1
    return count


@pytest.fixture
def runtime(tmp_path: Path, conv_model_path: Path):
    """A runtime on ipc://, the one transport on which consoles may use shared memory."""
    with running_server([conv_model_path], bind=f"ipc://{tmp_path}/runtime.ipc") as srv:
        yield srv


# --- the happy path -------------------------------------------------------------------------------------


def test_pixels_and_outputs_through_shared_memory_equal_the_frames_path(runtime):
    with shm_object() as (name, memory), console(runtime.endpoint) as c:
        listed = c.register(name, 1 << 20)
        assert listed["type"] == "SHM_REGIONS" and listed["regions"] == [{"name": name, "size": 1 << 20}]
        memory[: PIXELS.nbytes] = PIXELS.view(np.uint8).ravel()
        reply, frames = c.ask(segment(name))
        assert reply["type"] == "RESULT" and frames == []  # nothing on the socket but the header
        by_name = {f["name"]: f for f in reply["frames"]}
        assert by_name["mask"]["region"] == name and by_name["mask"]["offset"] == MASK_AT
        assert by_name["overlay"]["bytes"] == ROWS * COLS * 3 and by_name["overlay"]["shape"] == [ROWS, COLS, 3]
        same, (mask_frame, overlay_frame) = c.ask(
            {"type": "SEGMENT", "dtype": "int16", "shape": [ROWS, COLS]}, PIXELS.tobytes()
        )
        assert same["findings"] == reply["findings"]
        assert memory[MASK_AT : MASK_AT + ROWS * COLS].tobytes() == mask_frame
        assert memory[OVERLAY_AT : OVERLAY_AT + ROWS * COLS * 3].tobytes() == overlay_frame
        assert mask_frame.count(1) > 0  # the conv model finds something: the comparison is not of zeros


def test_outputs_not_placed_in_shared_memory_come_as_frames_and_pixels_may_come_as_a_frame(runtime):
    with shm_object() as (name, _), console(runtime.endpoint) as c:
        c.register(name, 1 << 20)
        header = segment(name, overlay=False)
        header["outputs"] = ["mask", "overlay"]
        del header["pixels_at"]
        reply, frames = c.ask(header, PIXELS.tobytes())
        assert [f["name"] for f in reply["frames"]] == ["mask", "overlay"]
        assert reply["frames"][0]["region"] == name and "region" not in reply["frames"][1]
        assert len(frames) == 1 and len(frames[0]) == ROWS * COLS * 3


def test_dicom_bytes_in_shared_memory(runtime):
    from scanedge.imaging.dicom import encode_dicom
    from scanedge.imaging.slices import Slice

    data = encode_dicom(Slice.from_array(PIXELS))
    with shm_object() as (name, memory), console(runtime.endpoint) as c:
        c.register(name, 1 << 20)
        memory[: len(data)] = np.frombuffer(data, np.uint8)
        reply, frames = c.ask(
            {"type": "SEGMENT", "encoding": "dicom", "outputs": ["mask"],
             "pixels_at": {"region": name, "nbytes": len(data)}}
        )  # fmt: skip
        assert reply["type"] == "RESULT" and len(frames) == 1 and len(frames[0]) == ROWS * COLS


def test_register_again_status_and_unregister(runtime):
    with shm_object() as (a, _), shm_object() as (b, _), console(runtime.endpoint) as c:
        c.register(a, 4096)
        assert [r["name"] for r in c.register(b, 8192)["regions"]] == [a, b]
        assert c.register(a, 1 << 20)["regions"] == [{"name": a, "size": 1 << 20}, {"name": b, "size": 8192}]
        assert [r["name"] for r in c.ask({"type": "SHM_UNREGISTER", "name": a})[0]["regions"]] == [b]
        assert c.ask({"type": "SHM_STATUS"})[0]["regions"] == [{"name": b, "size": 8192}]
        gone = c.ask({"type": "SHM_UNREGISTER", "name": a})[0]
        assert gone["code"] == "UNKNOWN_REGION"
        reply, _ = c.ask(segment(a))
        assert reply["code"] == "UNKNOWN_REGION"  # pixels_at names a region no longer registered
        assert c.ask({"type": "SHM_UNREGISTER"})[0]["regions"] == []
        assert fds_to(a) == fds_to(b) == 1  # only the test's own mappings: the runtime closed its descriptors


def test_regions_belong_to_the_connection_that_registered_them(runtime):
    with shm_object() as (name, memory), console(runtime.endpoint) as owner, console(runtime.endpoint) as other:
        owner.register(name, 1 << 20)
        memory[: PIXELS.nbytes] = PIXELS.view(np.uint8).ravel()
        assert other.ask(segment(name))[0]["code"] == "UNKNOWN_REGION"
        assert other.ask({"type": "SHM_STATUS"})[0]["regions"] == []
        assert owner.ask(segment(name))[0]["type"] == "RESULT"


def test_pong_says_whether_this_connection_may_use_shared_memory(runtime):
    with console(runtime.endpoint) as c:
        pong, _ = c.ask({"type": "PING"})
        assert pong["shared_memory"] is True and pong["limits"]["max_shm_regions"] == 16


# --- bad descriptors and ranges: typed errors, the runtime carries on ---------------------------------------


@pytest.mark.parametrize(
    ("name", "size", "code", "message"),
    [
        ("/other-software", 4096, "SHM_UNAVAILABLE", "/scanedge-NAME"),
        ("/scanedge-../etc/passwd", 4096, "SHM_UNAVAILABLE", "/scanedge-NAME"),
        ("scanedge-no-slash", 4096, "SHM_UNAVAILABLE", "/scanedge-NAME"),
        ("/scanedge-does-not-exist", 4096, "SHM_UNAVAILABLE", "no shared-memory object"),
        ("", 4096, "BAD_MESSAGE", "name"),
        ("/scanedge-x", 0, "BAD_MESSAGE", "size"),
        ("/scanedge-x", 2**49, "BAD_MESSAGE", "size"),
        ("/scanedge-x", 10**400, "BAD_MESSAGE", "size"),
    ],
)
def test_bad_registrations_are_typed_errors(runtime, name, size, code, message):
    with console(runtime.endpoint) as c:
        reply, _ = c.ask({"type": "SHM_REGISTER", "name": name, "size": size})
        assert reply["type"] == "ERROR" and reply["code"] == code and message in reply["message"]
        assert c.ask({"type": "PING"})[0]["type"] == "PONG"


def test_objects_that_are_not_plain_or_too_small_are_refused(runtime, tmp_path):
    with shm_object(4096) as (name, _), console(runtime.endpoint) as c:
        assert "fewer than the 8192 registered" in c.register(name, 8192)["message"]
        link = f"/scanedge-test-link-{secrets.token_hex(4)}"
        os.symlink("/dev/shm" + name, "/dev/shm" + link)
        folder = f"/scanedge-test-dir-{secrets.token_hex(4)}"
        os.mkdir("/dev/shm" + folder)
        try:
            assert c.register(link, 4096)["code"] == "SHM_UNAVAILABLE"  # symlinks are not followed
            assert c.register(folder, 1)["code"] == "SHM_UNAVAILABLE"
        finally:
            os.unlink("/dev/shm" + link)
            os.rmdir("/dev/shm" + folder)


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"pixels_at": {"region": "NAME", "offset": (1 << 20) - 100, "nbytes": ROWS * COLS * 2}}, "BAD_REGION",
         "lie outside region"),
        ({"pixels_at": {"region": "NAME", "offset": 2**48, "nbytes": 2**48}}, "BAD_REGION", "lie outside"),
        ({"pixels_at": {"region": "NAME", "offset": 2**60, "nbytes": 10}}, "BAD_MESSAGE", "offset"),
        ({"pixels_at": {"region": "NAME", "offset": -1, "nbytes": 10}}, "BAD_MESSAGE", "offset"),
        ({"pixels_at": {"region": "NAME", "nbytes": 10}}, "BAD_PAYLOAD", "needs 10240 bytes"),
        ({"pixels_at": {"region": "/scanedge-unregistered", "nbytes": 10240}}, "UNKNOWN_REGION", "not registered"),
        ({"pixels_at": {"region": "NAME"}}, "BAD_MESSAGE", "nbytes"),
        ({"outputs_at": {"mask": {"region": "NAME", "offset": 100, "nbytes": 5120}}}, "BAD_REGION",
         "overlaps pixels_at"),
        ({"outputs_at": {"mask": {"region": "NAME", "offset": MASK_AT, "nbytes": 5119}}}, "BAD_REGION",
         "takes 5120 bytes"),
        ({"outputs_at": {"mask": {"region": "NAME", "offset": MASK_AT, "nbytes": 5120},
                         "overlay": {"region": "NAME", "offset": MASK_AT + 5000, "nbytes": 15360}}}, "BAD_REGION",
         "overlaps"),
        ({"outputs": ["mask"], "outputs_at": {"overlay": {"region": "NAME", "offset": OVERLAY_AT, "nbytes": 15360}}},
         "BAD_REGION", "not among the outputs"),
        ({"outputs_at": {"mask": {"region": "NAME", "offset": (1 << 20) - 10, "nbytes": 5120}}}, "BAD_REGION",
         "lie outside"),
    ],
)  # fmt: skip
def test_bad_ranges_are_typed_errors_and_read_nothing(runtime, change, code, message):
    with shm_object() as (name, memory), console(runtime.endpoint) as c:
        c.register(name, 1 << 20)
        header = json.loads(json.dumps(segment(name, **change)).replace("NAME", name))
        reply, _ = c.ask(header)
        assert reply["type"] == "ERROR" and reply["code"] == code, reply
        assert message in reply["message"]
        assert not memory[MASK_AT:].any()  # nothing was written
        memory[: PIXELS.nbytes] = PIXELS.view(np.uint8).ravel()
        assert c.ask(segment(name))[0]["type"] == "RESULT"  # the runtime carries on


def test_a_shared_memory_segment_with_a_pixel_frame_is_bad_frames(runtime):
    with shm_object() as (name, _), console(runtime.endpoint) as c:
        c.register(name, 1 << 20)
        assert c.ask(segment(name), PIXELS.tobytes())[0]["code"] == "BAD_FRAMES"


def test_a_connection_may_register_a_limited_number_of_regions(conv_model_path, tmp_path):
    with (
        running_server([conv_model_path], shm_max_regions=2, bind=f"ipc://{tmp_path}/rt.ipc") as srv,
        console(srv.endpoint) as c,
    ):
        with shm_object() as (a, _), shm_object() as (b, _), shm_object() as (d, _):
            c.register(a, 4096)
            c.register(b, 4096)
            refused = c.register(d, 4096)
            assert refused["code"] == "SHM_UNAVAILABLE" and "most it may register" in refused["message"]
            assert c.register(a, 8192)["type"] == "SHM_REGIONS"  # registering again is not one more


# --- the owner changes the object under the runtime ----------------------------------------------------------


def test_an_object_shrunk_after_registration_is_bad_region_never_a_crash(runtime):
    with shm_object() as (name, memory), console(runtime.endpoint) as c:
        c.register(name, 1 << 20)
        memory[: PIXELS.nbytes] = PIXELS.view(np.uint8).ravel()
        os.truncate("/dev/shm" + name, OVERLAY_AT)  # the overlay's range no longer exists
        reply, _ = c.ask(segment(name))
        assert reply["code"] == "BAD_REGION" and "shrunk" in reply["message"]
        os.truncate("/dev/shm" + name, 1000)  # nor the pixels'
        reply, _ = c.ask(segment(name))
        assert reply["code"] == "BAD_REGION" and "shrunk" in reply["message"]
        assert c.ask({"type": "PING"})[0]["type"] == "PONG"
        assert os.stat("/dev/shm" + name).st_size == 1000  # the runtime never grows (or truncates) it


def test_an_object_unlinked_by_its_owner_keeps_working_until_unregistered(runtime):
    with shm_object() as (name, memory), console(runtime.endpoint) as c:
        c.register(name, 1 << 20)
        os.unlink("/dev/shm" + name)  # the leak-proof pattern: unlink once registered
        memory[: PIXELS.nbytes] = PIXELS.view(np.uint8).ravel()
        reply, _ = c.ask(segment(name))
        assert reply["type"] == "RESULT"
        assert memory[MASK_AT : MASK_AT + ROWS * COLS].any()  # written into the console's mapping
        assert c.register(name, 1 << 20)["code"] == "SHM_UNAVAILABLE"  # the name is gone for good
        assert c.ask({"type": "SHM_UNREGISTER", "name": name})[0]["regions"] == []
        assert fds_to(name) == 1  # the console's mapping is the last reference: unmapping it frees the memory


# --- who may use it ------------------------------------------------------------------------------------------


def test_shared_memory_off_or_ipc_only_refuses_tcp(conv_model_path, tmp_path):
    for mode in ("off", "ipc"):
        with running_server([conv_model_path], shared_memory=mode) as srv, console(srv.endpoint) as c:
            with shm_object() as (name, _):
                refused = c.register(name, 4096)
                assert refused["code"] == "SHM_REFUSED", refused
                assert c.ask(segment(name))[0]["code"] == "SHM_REFUSED"
                assert c.ask({"type": "PING"})[0]["shared_memory"] is False
    with running_server([conv_model_path], shared_memory="ipc", bind=f"ipc://{tmp_path}/rt.ipc") as srv:
        with console(srv.endpoint) as c, shm_object() as (name, _):
            assert c.register(name, 4096)["type"] == "SHM_REGIONS"


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_a_peer_that_is_not_on_loopback_is_refused(conv_model_path):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    with running_server([conv_model_path], bind=f"tcp://{address}:*", insecure=True) as srv:
        with console(srv.endpoint) as c, shm_object() as (name, _):
            refused = c.register(name, 4096)
            assert refused["code"] == "SHM_REFUSED" and "not local" in refused["message"]
            assert c.ask({"type": "PING"})[0]["shared_memory"] is False


class _Frame:
    def __init__(self, props: dict[Any, Any] | None = None) -> None:
        self.props = props or {}

    def get(self, key: Any) -> Any:
        if key not in self.props:
            raise zmq.ZMQError(zmq.EINVAL)
        return self.props[key]


@pytest.mark.parametrize(
    ("props", "transport", "local", "uid"),
    [
        ({zmq.SRCFD: 7, "Peer-Address": "127.0.0.1"}, "tcp", True, None),
        ({zmq.SRCFD: 7, "Peer-Address": "127.8.9.10"}, "tcp", True, None),
        ({zmq.SRCFD: 7, "Peer-Address": "::1"}, "tcp", True, None),
        ({zmq.SRCFD: 7, "Peer-Address": "::ffff:127.0.0.1"}, "tcp", True, None),
        ({zmq.SRCFD: 7, "Peer-Address": "::ffff:10.0.0.1"}, "tcp", False, None),
        ({zmq.SRCFD: 7, "Peer-Address": "10.1.2.3"}, "tcp", False, None),
        ({zmq.SRCFD: 7, "Peer-Address": "localhost:1000:1000:4242"}, "ipc", True, 1000),
        ({zmq.SRCFD: 7, "Peer-Address": "localhost:x:1:2"}, "unknown", False, None),
        ({zmq.SRCFD: 7}, "unknown", False, None),
        ({}, "inproc", True, None),
        (None, "unknown", False, None),
    ],
)
def test_what_the_runtime_knows_of_a_peer(props, transport, local, uid):
    peer = peer_of(None if props is None else _Frame(props))
    assert (peer.transport, peer.local, peer.uid) == (transport, local, uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a console as another user")
def test_over_ipc_a_console_may_name_only_its_own_users_objects(conv_model_path):
    with tempfile.TemporaryDirectory(dir="/tmp") as where:  # pytest's tmp_path is closed to other users
        os.chmod(where, 0o777)
        with running_server([conv_model_path], bind=f"ipc://{where}/rt.ipc", shared_memory="ipc") as srv:
            os.chmod(f"{where}/rt.ipc", 0o777)
            with shm_object() as (roots, _):
                os.chmod("/dev/shm" + roots, 0o666)  # even readable and writable by all: not the console's
                answers = _as_nobody(srv.endpoint, roots)
    assert answers == [f"{roots} belongs to another user than the console's", "SHM_REGIONS"]


def _as_nobody(endpoint: str, foreign: str) -> list[str]:
    """A console process running as user ``nobody`` registers ``foreign``, then an object of its own."""
    own = f"/scanedge-test-own-{secrets.token_hex(6)}"
    register = [{"type": "SHM_REGISTER", "name": name, "size": 4096} for name in (foreign, own)]
    first, second = _nobody_asks(endpoint, register, own_object=own)
    return [first["message"], second["type"]]


# --- lifetime: crashed consoles, late workers, stopping --------------------------------------------------


def test_a_console_killed_mid_request_leaves_nothing_behind(conv_model_path, tmp_path):
    """SIGKILL while the runtime holds the console's request: the runtime finishes it, writes into memory
    nobody reads, drops the reply, closes its descriptor (the region is a memfd that never had a name); the
    runtime serves the next console."""
    gate = Gate()
    bind = f"ipc://{tmp_path}/rt.ipc"
    with running_server([conv_model_path], pipeline_factory=gated_factory(gate), bind=bind) as srv:
        script = textwrap.dedent(
            f"""
            import sys, numpy as np
            from scanedge.runtime.console.client import Client, ClientConfig
            from tests.waiting import wait_until
            c = Client({srv.endpoint!r}, ClientConfig(shared_memory=True))
            wait_until(lambda: c.shared_memory_active)
            c.submit(np.ones((64, 80), np.int16), series="s")
            print(c._region.name, flush=True)
            sys.stdin.read()  # until killed
            """
        )
        child = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[3],
            text=True,
        )

        def held() -> int:  # descriptors (and the mapped memfd's mapping) the runtime holds
            return memfd_fds(name)

        try:
            name = child.stdout.readline().strip()
            assert name.startswith("/scanedge-c")
            gate.wait_entered()  # the worker holds the request: pixels read, outputs not yet written
            in_use = held()
            assert in_use >= 1
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            child.kill()
        wait_until(lambda: srv.stats.counters["shm_regions_dropped"] == 1, what="the connection's regions dropped")
        assert held() == in_use  # still in use by the running job
        gate.open()
        wait_until(lambda: srv.stats.counters["client_gone"] == 1, what="the orphaned reply dropped")
        wait_until(lambda: held() == 0, what="the runtime's descriptor closed")
        wait_until(lambda: not os.path.exists("/dev/shm" + name), what="no name left in /dev/shm")
        with Client(srv.endpoint, ClientConfig(shared_memory=True)) as again:
            wait_until(lambda: again.shared_memory_active)
            assert again.segment(PIXELS).mask.shape == (ROWS, COLS)


def test_nothing_is_written_after_the_request_was_answered(conv_model_path, tmp_path):
    """A worker stuck past the job timeout: its request is answered ENGINE_TIMEOUT and the console may reuse
    the memory at once; when the worker finally finishes, it must not write into it."""
    gate = Gate()
    bind = f"ipc://{tmp_path}/rt.ipc"
    with running_server([conv_model_path], pipeline_factory=gated_factory(gate), job_timeout_s=0.3, bind=bind) as srv:
        with shm_object() as (name, memory), console(srv.endpoint) as c:
            c.register(name, 1 << 20)
            memory[: PIXELS.nbytes] = PIXELS.view(np.uint8).ravel()
            reply, _ = c.ask(segment(name))
            assert reply["code"] == "ENGINE_TIMEOUT"
            memory[MASK_AT:] = 0xAB  # the console reuses the output ranges
            gate.open()
            wait_until(lambda: not srv._pool.wedged, what="the wedged worker to finish")
            assert (memory[MASK_AT:] == 0xAB).all()


def test_stopping_the_runtime_closes_every_region(conv_model_path, tmp_path):
    with shm_object() as (name, _):
        with running_server([conv_model_path], bind=f"ipc://{tmp_path}/rt.ipc") as srv, console(srv.endpoint) as c:
            c.register(name, 4096)
            assert fds_to(name) == 2
        assert fds_to(name) == 1


# --- the Python client ---------------------------------------------------------------------------------------


def test_the_client_uses_shared_memory_with_one_option(runtime):
    with Client(runtime.endpoint, ClientConfig(shared_memory=True)) as c, Client(runtime.endpoint) as plain:
        wait_until(lambda: c.shared_memory_active)
        futures = [c.submit(PIXELS + i, outputs=("mask", "overlay", "probabilities")) for i in range(12)]
        results = [f.result() for f in futures]  # twelve in flight at once, each in its own block
        for i, r in enumerate(results):
            placed = {f.name for f in r.header.frames if f.region is not None}
            assert placed == {"mask", "overlay"}  # probabilities (size unknown to the client) came as a frame
            ref = plain.segment(PIXELS + i, outputs=("mask", "overlay", "probabilities"))
            np.testing.assert_array_equal(r.mask, ref.mask)
            np.testing.assert_array_equal(r.overlay, ref.overlay)
            np.testing.assert_array_equal(r.probabilities, ref.probabilities)
            assert not r.mask.flags.writeable
        region = c._region
        assert region.free_bytes < region.size
        del results, futures, r, ref
        wait_until(lambda: region.free_bytes == region.size, what="blocks released with their arrays")


def test_the_client_sends_frames_where_shared_memory_is_refused(conv_model_path):
    with running_server([conv_model_path], shared_memory="off") as srv:
        with Client(srv.endpoint, ClientConfig(shared_memory=True)) as c:
            wait_until(lambda: c._io.shm_refusal is not None, what="the refusal")
            r = c.segment(PIXELS)
            assert not c.shared_memory_active and all(f.region is None for f in r.header.frames)


def test_the_client_registers_again_with_a_restarted_runtime(conv_model_path, tmp_path):
    endpoint = f"ipc://{tmp_path}/rt.ipc"
    with Client(endpoint, ClientConfig(shared_memory=True, heartbeat_s=0.2)) as c:
        with running_server([conv_model_path], bind=endpoint):
            wait_until(lambda: c.shared_memory_active)
            first = c.segment(PIXELS)
        with running_server([conv_model_path], bind=endpoint) as again:
            wait_until(lambda: c.runtime_id == again.runtime_id and c.shared_memory_active)
            second = c.segment(PIXELS)
        assert second.header.frames[0].region == c._region.name
        np.testing.assert_array_equal(first.mask, second.mask)


def test_a_request_the_runtime_cannot_place_is_sent_again_as_frames(runtime):
    with Client(runtime.endpoint, ClientConfig(shared_memory=True)) as c:
        wait_until(lambda: c.shared_memory_active)
        runtime._loop.regions.close()  # the runtime forgets the registration (as a restarted one would)
        r = c.segment(PIXELS)  # UNKNOWN_REGION from the runtime; the client resends it with frames
        assert all(f.region is None for f in r.header.frames) and r.mask.shape == (ROWS, COLS)
        wait_until(lambda: c.shared_memory_active, what="the region offered again")
        assert c.segment(PIXELS).header.frames[0].region == c._region.name


def test_the_client_refuses_shared_memory_with_a_remote_runtime():
    from scanedge.errors import ConfigError

    with pytest.raises(ConfigError, match="runtime on this host"):
        Client("tcp://192.0.2.1:5555", ClientConfig(shared_memory=True))


def test_the_client_leaves_nothing_behind_when_closed(runtime):
    c = Client(runtime.endpoint, ClientConfig(shared_memory=True))
    wait_until(lambda: c.shared_memory_active)
    r = c.segment(PIXELS)
    name = c._region.name
    if runtime.endpoint.startswith("ipc://"):  # a memfd: no name anywhere
        # the client's descriptor and its mapping's, the runtime's descriptor and its mapping's
        assert not os.path.exists("/dev/shm" + name) and memfd_fds(name) == 4
    else:
        assert os.path.exists("/dev/shm" + name)
    c.close()
    assert not os.path.exists("/dev/shm" + name)
    assert r.mask.shape == (ROWS, COLS) and r.overlay.sum() > 0  # result arrays outlive the client
    del r
    wait_until(lambda: memfd_fds(name) == 0, what="every descriptor and mapping of the memfd gone")


def memfd_fds(name: str) -> int:
    """Descriptors of this process on the memfd called ``name`` (the client's and the in-process runtime's)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{name[1:]} ")
    return count


# --- memfds sealed against shrinking: mapped by the runtime ---------------------------------------------------


@contextlib.contextmanager
def memfd(size: int = 1 << 20, seals: int = fcntl.F_SEAL_SHRINK) -> Iterator[tuple[int, np.ndarray]]:
    """A memfd of ``size`` bytes with ``seals``, mapped here; closed after."""
    fd = os.memfd_create("scanedge-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    mm = mmap.mmap(fd, size)
    try:
        yield fd, np.frombuffer(mm, np.uint8)
    finally:
        os.close(fd)


def _region(server: Any, name: str) -> Any:
    return next(r for regions in server._loop.regions._by_connection.values() for n, r in regions.items() if n == name)


@pytest.mark.parametrize("sealed", [True, False])
def test_a_memfd_over_ipc_is_mapped_when_it_cannot_shrink(conv_model_path, tmp_path, sealed):
    name = "/scanedge-test-memfd"
    with running_server([conv_model_path], bind=f"ipc://{tmp_path}/rt.ipc") as srv, console(srv.endpoint) as c:
        with memfd(seals=fcntl.F_SEAL_SHRINK if sealed else 0) as (fd, memory):
            listed = c.ask({"type": "SHM_REGISTER", "name": name, "size": 1 << 20, "fd": fd})[0]
            assert listed["regions"] == [{"name": name, "size": 1 << 20}]
            assert (_region(srv, name).mapped is not None) == sealed  # unsealed: read and written by descriptor
            memory[: PIXELS.nbytes] = PIXELS.view(np.uint8).ravel()
            reply, frames = c.ask(segment(name))
            assert reply["type"] == "RESULT" and frames == []
            _, (mask, overlay) = c.ask({"type": "SEGMENT", "dtype": "int16", "shape": [ROWS, COLS]}, PIXELS.tobytes())
            assert memory[MASK_AT : MASK_AT + ROWS * COLS].tobytes() == mask
            assert memory[OVERLAY_AT : OVERLAY_AT + ROWS * COLS * 3].tobytes() == overlay
            if sealed:
                with pytest.raises(PermissionError):
                    os.ftruncate(fd, 4096)  # the kernel refuses the shrink that would crash a mapping reader


def test_memfds_that_are_not_the_consoles_own_are_refused(conv_model_path, tmp_path):
    with running_server([conv_model_path], bind=f"ipc://{tmp_path}/rt.ipc") as srv, console(srv.endpoint) as c:
        with open(tmp_path / "plain-file", "wb+") as f:
            f.truncate(1 << 20)
            reply = c.ask({"type": "SHM_REGISTER", "name": "/scanedge-x", "size": 4096, "fd": f.fileno()})[0]
            assert reply["code"] == "SHM_UNAVAILABLE" and "not a memfd" in reply["message"]
        reply = c.ask({"type": "SHM_REGISTER", "name": "/scanedge-x", "size": 4096, "fd": 999_999})[0]
        assert reply["code"] == "SHM_UNAVAILABLE" and "cannot be opened" in reply["message"]
        with memfd(4096) as (fd, _):
            reply = c.ask({"type": "SHM_REGISTER", "name": "/scanedge-x", "size": 8192, "fd": fd})[0]
            assert reply["code"] == "SHM_UNAVAILABLE" and "fewer than the 8192" in reply["message"]


def test_a_memfd_is_refused_over_tcp(conv_model_path):
    with running_server([conv_model_path]) as srv, console(srv.endpoint) as c, memfd() as (fd, _):
        reply = c.ask({"type": "SHM_REGISTER", "name": "/scanedge-x", "size": 4096, "fd": fd})[0]
        assert reply["code"] == "SHM_REFUSED" and "ipc://" in reply["message"]


def test_the_python_client_over_ipc_uses_a_sealed_memfd_the_runtime_maps(conv_model_path, tmp_path):
    with running_server([conv_model_path], bind=f"ipc://{tmp_path}/rt.ipc") as srv:
        with Client(srv.endpoint, ClientConfig(shared_memory=True)) as c:
            wait_until(lambda: c.shared_memory_active)
            assert c._region.fd is not None and _region(srv, c._region.name).mapped is not None
            ref = c.segment(PIXELS)
            assert ref.header.frames[0].region == c._region.name


# --- the region table on its own ----------------------------------------------------------------------------


def test_region_table_errors_are_the_typed_families():
    assert issubclass(SharedMemoryRefusedError, SharedMemoryError)
    assert issubclass(UnknownRegionError, SharedMemoryError) and issubclass(BadRegionError, SharedMemoryError)
    table = RegionTable("off")
    with pytest.raises(SharedMemoryRefusedError):
        table.register(b"x", peer_of(_Frame()), "/scanedge-x", 1)
    with pytest.raises(ValueError):
        RegionTable("sometimes")  # type: ignore[arg-type]


# --- a console in C ------------------------------------------------------------------------------------------


def _libzmq() -> Path | None:
    """The libzmq pyzmq was built with (its wheel carries one), to link the C console against."""
    root = Path(zmq.__file__).resolve().parent
    found = sorted(root.parent.glob("pyzmq.libs/libzmq*.so*")) + sorted(root.glob("**/libzmq*.so*"))
    return found[0] if found else None


def test_a_c_console_does_what_the_spec_says(runtime, tmp_path):
    """tests/runtime/shm_console.c: shm_open + mmap, SHM_REGISTER, a SEGMENT with pixels_at and outputs_at,
    the mask read from the region; it must equal what the frames path gives."""
    import shutil

    libzmq = _libzmq()
    if shutil.which("cc") is None or libzmq is None:
        pytest.skip("needs a C compiler and libzmq")
    exe = tmp_path / "shm_console"
    source = Path(__file__).with_name("shm_console.c")
    build = subprocess.run(
        ["cc", "-O1", "-o", str(exe), str(source), str(libzmq), f"-Wl,-rpath,{libzmq.parent}", "-lrt"],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    name = f"/scanedge-test-c-{secrets.token_hex(4)}"
    out = subprocess.run([str(exe), runtime.endpoint, name], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    header_line, sums = out.stdout.strip().splitlines()
    header = json.loads(header_line)
    assert header["type"] == "RESULT" and [f["region"] for f in header["frames"]] == [name, name]
    ramp = (np.arange(ROWS * COLS) % 700 - 200).astype(np.int16).reshape(ROWS, COLS)
    with console(runtime.endpoint) as c:
        _, (mask, overlay) = c.ask({"type": "SEGMENT", "dtype": "int16", "shape": [ROWS, COLS]}, ramp.tobytes())
    assert sums == f"mask_sum {sum(mask)} overlay_sum {sum(overlay)}"
    assert sum(mask) > 0
    assert not os.path.exists("/dev/shm" + name)  # the console unlinked its object


def _nobody_asks(endpoint: str, headers: list[dict[str, Any]], own_object: str | None = None) -> list[dict[str, Any]]:
    """A console process running as user ``nobody`` (uid 65534) sends ``headers`` one by one; their replies.
    With ``own_object``, it first creates that shared-memory object of its own (4 KiB, 0600), removed after."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the console: only zmq and os calls, everything it needs loaded before it drops root
        replies: list[Any] = []
        try:
            ctx = zmq.Context()
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sock.connect(endpoint)  # the kernel records the peer's credentials now: nobody's
            if own_object is not None:
                fd = os.open("/dev/shm" + own_object, os.O_CREAT | os.O_RDWR, 0o600)
                os.ftruncate(fd, 4096)
            for i, header in enumerate(headers):
                sock.send(json.dumps({"version": 1, "id": i, **header}).encode())
                replies.append(json.loads(sock.recv_multipart()[0]) if sock.poll(20_000) else "no reply")
            sock.close(0)
            ctx.term()
        except BaseException as exc:
            replies.append(repr(exc))
        finally:
            os.write(write, json.dumps(replies).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    os.waitpid(pid, 0)
    if own_object is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink("/dev/shm" + own_object)
    return json.loads(out)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a console as another user")
@pytest.mark.parametrize("mode", ["local", "ipc"])
def test_another_user_on_loopback_tcp_can_neither_read_nor_write_a_root_object(conv_model_path, mode):
    """Found in testing: with the default mode, a process of uid 65534 registered a root-owned 0600 object
    over tcp loopback, read it through the ``image`` output and wrote 196 608 bytes into it. A tcp peer has no
    kernel-reported user, so no object is opened for it, whatever the mode is called."""
    with running_server([conv_model_path], shared_memory=mode) as srv, shm_object() as (secret, memory):
        os.chmod("/dev/shm" + secret, 0o600)
        memory[:] = np.arange(memory.nbytes, dtype=np.uint64).astype(np.uint8)  # the owner's "pixels"
        before = bytes(memory)
        attack = segment(secret, outputs=["mask", "overlay", "image"])
        replies = _nobody_asks(
            srv.endpoint, [{"type": "PING"}, {"type": "SHM_REGISTER", "name": secret, "size": 4096}, attack]
        )
        assert replies[0]["shared_memory"] is False
        assert [r["code"] for r in replies[1:]] == ["SHM_REFUSED", "SHM_REFUSED"], replies
        assert "ipc://" in replies[1]["message"]
        assert bytes(memory) == before and srv._loop.regions.open_regions == 0


def test_a_memfd_sealed_against_future_writes_is_a_region_the_runtime_only_reads(conv_model_path, tmp_path):
    """F_SEAL_FUTURE_WRITE forbids new writable mappings: the runtime reads pixels from it and refuses to
    place outputs there (a typed BAD_REGION), never an INTERNAL from a failed mapping."""
    future_write = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)
    with running_server([conv_model_path], bind=f"ipc://{tmp_path}/rt.ipc") as srv, console(srv.endpoint) as c:
        with memfd() as (fd, _):
            try:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | future_write)
            except OSError:
                pytest.skip("this kernel cannot seal a memfd against future writes")
            name = "/scanedge-sealed"
            listed = c.ask({"type": "SHM_REGISTER", "name": name, "size": 1 << 20, "fd": fd})[0]
            assert listed["type"] == "SHM_REGIONS", listed
            refused, _ = c.ask(segment(name))
            assert refused["code"] == "BAD_REGION", refused
            ok, frames = c.ask(segment(name, mask=False, overlay=False, outputs=["mask"], outputs_at={}))
            assert ok["type"] == "RESULT" and len(frames) == 1, ok


def test_a_hugetlb_memfd_is_a_typed_refusal_never_an_internal_error(conv_model_path, tmp_path):
    """A hugetlb memfd cannot be mapped (no huge pages reserved here, or a size no whole number of them) nor
    read with pread: registering the sealed one, or segmenting from the unsealed one, is SHM_UNAVAILABLE."""
    try:
        fds = [os.memfd_create("scanedge-huge", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | os.MFD_HUGETLB) for _ in "ab"]
    except OSError:
        pytest.skip("this kernel makes no hugetlb memfds")
    with running_server([conv_model_path], bind=f"ipc://{tmp_path}/rt.ipc") as srv, console(srv.endpoint) as c:
        try:
            for fd in fds:
                os.ftruncate(fd, 2 << 20)
            fcntl.fcntl(fds[0], fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
            sealed = c.ask({"type": "SHM_REGISTER", "name": "/scanedge-huge-a", "size": 1 << 20, "fd": fds[0]})[0]
            if sealed["type"] == "SHM_REGIONS":
                pytest.skip("huge pages are reserved here: the hugetlb memfd maps like any other")
            assert sealed["code"] == "SHM_UNAVAILABLE" and "cannot be mapped" in sealed["message"], sealed
            plain = c.ask({"type": "SHM_REGISTER", "name": "/scanedge-huge-b", "size": 1 << 20, "fd": fds[1]})[0]
            if plain["type"] == "SHM_REGIONS":
                answer, _ = c.ask(segment("/scanedge-huge-b"))
                assert answer.get("code") in ("SHM_UNAVAILABLE", "BAD_REGION"), answer
            else:
                assert plain["code"] == "SHM_UNAVAILABLE", plain
            assert c.ask({"type": "PING"})[0]["type"] == "PONG"  # and the runtime serves on
        finally:
            for fd in fds:
                os.close(fd)
