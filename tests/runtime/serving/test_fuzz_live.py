"""A live runtime (`scanedge serve` in its own process) under a few thousand hostile messages.

Random multipart messages (random frame counts, JSON with wrong types, deep nesting, huge numbers, lone
surrogates, random bytes, mutated real DICOM) are interleaved with good requests, many in flight at once.
Asserted: the process lives; every message with a readable id gets exactly one reply and every other
message one reply with ``"id": null``; every error code is one docs/protocol.md lists; every good request
succeeds; resident memory stays bounded; SIGTERM still ends it cleanly.
"""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from scanedge.fuzz.traffic import HostileTraffic
from tests.runtime.processes import ROOT, dealer, free_port, runtime_log, spawn_runtime

MESSAGES = 3000
IN_FLIGHT = 64


def documented_codes() -> set[str]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text[text.index("## 7. Error codes") : text.index("## 8.")]
    return set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.M))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_live_runtime_survives_thousands_of_hostile_messages(demo_series):
    codes = documented_codes()
    assert {"BAD_MESSAGE", "INTERNAL", "NOT_DICOM"} <= codes
    dicom = [p.read_bytes() for p in sorted(demo_series.glob("*.dcm"))[:6]]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = spawn_runtime(endpoint, log_level="error")
    sock = dealer(endpoint)
    try:
        sock.send(json.dumps({"version": 1, "type": "PING", "id": "hello"}).encode())
        assert sock.poll(60_000), runtime_log(proc) if proc.poll() is not None else "no PONG"
        sock.recv_multipart()
        rss_start = rss_mb(proc.pid)
        traffic = HostileTraffic(seed=20261129, dicom=dicom)
        expected: dict[str, bool] = {}  # id -> must succeed
        anonymous = 0
        replies: Counter[str] = Counter()
        null_replies = 0
        bad_codes: list[str] = []
        failed_good: list[dict] = []
        outstanding = 0

        def receive(timeout_ms: int) -> bool:
            nonlocal outstanding, null_replies
            if not sock.poll(timeout_ms):
                return False
            reply = json.loads(sock.recv_multipart()[0])
            outstanding -= 1
            if reply["id"] is None:
                null_replies += 1
            else:
                replies[reply["id"]] += 1
                if expected.get(reply["id"]) and reply["type"] != "RESULT":
                    failed_good.append(reply)
            if reply["type"] == "ERROR" and (reply["code"] not in codes or reply["code"] == "INTERNAL"):
                bad_codes.append(reply["code"])  # INTERNAL is documented, but it means a bug was reached
            return True

        for i in range(MESSAGES):
            message = traffic.good((32, 32)) if i % 3 == 0 else traffic.hostile()
            frames, rid = message.frames, message.request_id
            if rid is None:
                anonymous += 1
            else:
                expected[rid] = message.good
            sock.send_multipart(frames)
            outstanding += 1
            while outstanding >= IN_FLIGHT:
                assert receive(30_000), f"the runtime stopped answering after {i} messages"
            assert proc.poll() is None, f"the runtime died at message {i}: {runtime_log(proc)[-2000:]}"
        while outstanding:
            assert receive(30_000), f"{outstanding} replies never came"
        rss_end = rss_mb(proc.pid)
    finally:
        sock.close(0)
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert alive and code == 0
    assert not bad_codes, f"codes outside docs/protocol.md: {set(bad_codes)}"
    assert not failed_good, failed_good[:3]
    twice = [rid for rid, n in replies.items() if n > 1]
    missing = [rid for rid in expected if replies[rid] == 0]
    assert not twice and not missing, (twice[:5], missing[:5])
    assert null_replies + sum(replies.values()) == MESSAGES  # one reply per message, no more, no fewer
    assert null_replies <= anonymous  # id null only where the id could not be read
    assert sum(expected.values()) >= MESSAGES // 3
    assert rss_end - rss_start < 150, f"resident memory grew from {rss_start:.0f} to {rss_end:.0f} MB"
