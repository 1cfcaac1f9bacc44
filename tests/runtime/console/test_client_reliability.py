"""The console client against runtimes that die, restart, go silent, refuse its key, or answer twice; and
the runtime against consoles that vanish mid-message or stop reading. Real processes where it matters."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest
import zmq

from scanedge.errors import RuntimeUnavailableError, ScanedgeError, UnauthorizedError
from scanedge.runtime.console.client import Client, ClientConfig
from scanedge.runtime.wire.protocol import Pong, decode_reply
from scanedge.runtime.wire.security import CurveClientKeys, CurveServerKeys, generate_keys, key_fingerprint
from tests.runtime.conftest import Gate, gated_factory, running_server
from tests.runtime.processes import free_port, spawn_runtime, stop_runtime
from tests.waiting import wait_until


def wait_pong(endpoint: str) -> Pong:
    with Client(endpoint, ClientConfig(timeout_s=2.0, retries=0)) as probe:
        return wait_until(lambda: _try_ping(probe), timeout=90, what="the runtime answering PING")


def _try_ping(client: Client) -> Pong | None:
    try:
        return client.ping()
    except ScanedgeError:
        return None


@pytest.mark.slow
@pytest.mark.parametrize("outage_s", [0.5, 6.0])
def test_kill_9_and_restart_under_load_every_request_resolves_once(outage_s, demo_series):
    data = sorted(demo_series.glob("*.dcm"))[12].read_bytes()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    first = spawn_runtime(endpoint)
    second = None
    try:
        old_runtime = wait_pong(endpoint).runtime
        config = ClientConfig(timeout_s=90.0, heartbeat_s=1.0, liveness=3, retries=6)
        with Client(endpoint, config) as client:
            deliveries: dict[str, int] = {}
            lock = threading.Lock()

            def delivered(future: Future) -> None:
                if future.exception() is None:
                    with lock:
                        rid = str(future.result().id)
                        deliveries[rid] = deliveries.get(rid, 0) + 1

            futures = []
            for _ in range(40):
                f = client.submit(data, outputs=("mask",))  # no series: none superseded, all queue
                f.add_done_callback(delivered)
                futures.append(f)
            wait_until(lambda: sum(f.done() for f in futures) >= 3, timeout=60, what="the first results")
            first.send_signal(signal.SIGKILL)  # no goodbye: the rest are lost with the process
            first.wait(10)
            time.sleep(outage_s)  # the outage itself is what this test is about
            second = spawn_runtime(endpoint)
            results = []
            for f in futures:
                try:
                    results.append(f.result(120))
                except ScanedgeError as exc:
                    results.append(exc)
            new_runtime = client.ping().runtime
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_runtime(proc)
    ok = [r for r in results if not isinstance(r, Exception)]
    assert len(results) == 40  # every future resolved
    assert len(ok) >= 36, [r for r in results if isinstance(r, Exception)][:3]  # >= 90% ok after resend
    assert all(n == 1 for n in deliveries.values()) and len(deliveries) == len(ok)  # none delivered twice
    assert len({r.id for r in ok}) == len(ok)
    assert new_runtime != old_runtime and client.resent > 0
    assert {r.header.runtime for r in ok} == {old_runtime, new_runtime}


def test_silence_makes_the_client_reconnect_then_give_up():
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    config = ClientConfig(timeout_s=30.0, heartbeat_s=0.1, liveness=2, retries=2)
    with Client(endpoint, config) as client:
        started = time.monotonic()
        with pytest.raises(RuntimeUnavailableError, match="after 2 reconnect"):
            client.ping(timeout=30)
        assert time.monotonic() - started < 5  # gave up after its retries, long before the timeout
        assert client.reconnects == 3


def test_heartbeats_keep_a_long_inference_alive_without_resending(demo_series):
    data = sorted(demo_series.glob("*.dcm"))[12].read_bytes()
    gate = Gate()
    with running_server(pipeline_factory=gated_factory(gate)) as srv:
        # silence would be declared after 1 s; inference is held for 2.5 s, so only the PONGs keep it trusted
        with Client(srv.endpoint, ClientConfig(heartbeat_s=0.25, liveness=4)) as client:
            future = client.submit(data)
            gate.wait_entered()
            held = time.monotonic()
            wait_until(lambda: time.monotonic() > held + 2.5, what="10 heartbeat periods")  # the point of it
            gate.open()
            assert future.result(10).mask is not None
            assert client.reconnects == 0 and client.resent == 0
            stats = client.stats()
    assert stats.counters["received"] >= 6  # the heartbeat PINGs that kept the connection trusted


def test_a_reply_received_twice_is_delivered_once():
    """A peer answering the same id twice (as a restarted runtime may) must not confuse the client."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def peer():
        for _ in range(3):  # the greeting PING, then STATS, then PING
            ident, header = router.recv_multipart()
            request = json.loads(header)
            if str(request["id"]).split("-")[1] == "hello":
                router.send_multipart([ident, json.dumps({"version": 1, "type": "PONG", "id": request["id"]}).encode()])
                continue
            kind = "STATS_REPLY" if request["type"] == "STATS" else "PONG"
            reply = json.dumps({"version": 1, "type": kind, "id": request["id"], "counters": {"ok": 1}}).encode()
            for _ in range(2 if kind == "STATS_REPLY" else 1):
                router.send_multipart([ident, reply])

    t = threading.Thread(target=peer)
    t.start()
    try:
        with Client(f"tcp://127.0.0.1:{port}") as client:
            first = client.request("STATS").result(5)
            second = client.ping(timeout=5)
    finally:
        t.join(5)
        router.close(0)
    assert first.counters == {"ok": 1} and isinstance(second, Pong)  # the duplicate was dropped, not misdelivered


@pytest.fixture
def curve_keys(tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    _, server_secret = generate_keys(keys, "server")
    friend_public, friend_secret = generate_keys(keys, "console-1")
    stranger_public, stranger_secret = generate_keys(keys, "stranger")
    allowed.mkdir()
    (allowed / friend_public.name).write_bytes(friend_public.read_bytes())
    return {
        "server": CurveServerKeys(server_secret, allowed),
        "friend": CurveClientKeys(friend_secret, keys / "server.key"),
        "stranger": CurveClientKeys(stranger_secret, keys / "server.key"),
        "stranger_public": stranger_public,
        "allowed": allowed,
    }


def test_curve_admits_listed_consoles_and_tells_others_they_were_refused(curve_keys, caplog):
    caplog.set_level(logging.WARNING, logger="scanedge.runtime")
    img = np.zeros((16, 16), np.uint8)
    with running_server(curve=curve_keys["server"]) as srv:
        with Client(srv.endpoint, ClientConfig(timeout_s=10, curve=curve_keys["stranger"])) as stranger:
            started = time.monotonic()
            with pytest.raises(UnauthorizedError, match="refused this console's CurveZMQ key"):
                stranger.segment(img)
            assert time.monotonic() - started < 5  # told, not left to time out
            with pytest.raises(UnauthorizedError):
                stranger.submit(img)  # and every later request is refused at once
        with Client(srv.endpoint, ClientConfig(curve=curve_keys["friend"])) as friend:
            assert friend.segment(img).mask is not None
        with Client(srv.endpoint, ClientConfig(timeout_s=10)) as plain:
            with pytest.raises(UnauthorizedError, match="security mechanism"):
                plain.ping()  # an unencrypted console cannot talk to a CurveZMQ runtime at all
    import zmq.auth

    stranger_key = zmq.auth.load_certificate(str(curve_keys["stranger_public"]))[0]
    refusals = [r.getMessage() for r in caplog.records if "not allow-listed" in r.getMessage()]
    assert refusals and all(key_fingerprint(stranger_key) in m for m in refusals)
    assert not any(stranger_key.decode() in r.getMessage() for r in caplog.records)  # fingerprint, never the key


def test_a_console_added_to_the_allow_list_gets_in_without_a_restart(curve_keys):
    img = np.zeros((16, 16), np.uint8)
    with running_server(curve=curve_keys["server"]) as srv:
        from scanedge.runtime.wire.security import allow_client

        allow_client(curve_keys["allowed"], curve_keys["stranger_public"])
        with Client(srv.endpoint, ClientConfig(curve=curve_keys["stranger"])) as newcomer:
            assert newcomer.segment(img).mask is not None


def test_a_console_killed_mid_message_disturbs_nobody():
    script = (
        "import sys, zmq; s = zmq.Context().socket(zmq.DEALER); s.connect(sys.argv[1]);"
        's.send(b\'{"version":1,"type":"SEGMENT","id":"x","dtype":"uint8","shape":[8000,8000]}\', zmq.SNDMORE);'
        "print('sending', flush=True); s.send(bytes(64_000_000))"
    )
    with running_server() as srv, Client(srv.endpoint) as client:
        victim = subprocess.Popen([sys.executable, "-c", script, srv.endpoint], stdout=subprocess.PIPE)
        assert victim.stdout.readline() == b"sending\n"
        victim.send_signal(signal.SIGKILL)  # somewhere in the middle of 64 MB: the message is never complete
        victim.wait(10)
        assert client.segment(np.zeros((16, 16), np.uint8)).mask is not None
        wait_until(lambda: client.ping().in_flight_bytes == 0)


def test_a_console_that_never_reads_its_replies_loses_only_its_own(demo_series):
    with running_server(hwm=4) as srv:
        greedy = zmq.Context.instance().socket(zmq.DEALER)
        greedy.setsockopt(zmq.RCVHWM, 4)
        greedy.setsockopt(zmq.LINGER, 0)
        greedy.connect(srv.endpoint)
        try:
            header = {"version": 1, "type": "SEGMENT", "dtype": "uint8", "shape": [1024, 1024]}  # 3 MB overlays back
            for i in range(30):
                greedy.send_multipart([json.dumps({**header, "id": i}).encode(), bytes(1024 * 1024)])
            with Client(srv.endpoint) as polite:
                wait_until(lambda: polite.stats().counters.get("reply_dropped", 0) > 0, timeout=60)
                assert polite.segment(np.zeros((16, 16), np.uint8)).mask is not None
                wait_until(lambda: polite.ping().in_flight_bytes == 0, timeout=60)
        finally:
            greedy.close(0)


def test_replies_parse_with_the_same_module_the_runtime_builds_them_with(server):
    with Client(server.endpoint) as client:
        result = client.segment(np.zeros((16, 16), np.uint8), series="s", index=3)
    again = decode_reply(json.dumps(json.loads(json.dumps({**_builtins(result.header)}))).encode())
    assert again == result.header


def _builtins(struct) -> dict:
    import msgspec

    return msgspec.to_builtins(struct)
