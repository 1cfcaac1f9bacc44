"""A live runtime (`scanedge serve` in its own process) under a few thousand hostile messages.

Random multipart messages (random frame counts, JSON with wrong types, deep nesting, huge numbers, lone
surrogates, random bytes, mutated real DICOM) are interleaved with good requests, many in flight at once.
Asserted: the process lives; every message with a readable id gets exactly one reply and every other
message one reply with ``"id": null``; every error code is one docs/protocol.md lists; every good request
succeeds; resident memory stays bounded; SIGTERM still ends it cleanly.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import zmq

from tests.runtime.test_protocol_raw import ROOT, free_port

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


class Generator:
    """Deterministic hostile traffic; each message says whether a reply must carry its id."""

    def __init__(self, seed: int, dicom: list[bytes]) -> None:
        self.rng = random.Random(seed)
        self.dicom = dicom
        self.n = 0

    def header(self, **fields) -> dict:
        self.n += 1
        return {"version": 1, "type": "SEGMENT", "id": f"f-{self.n}", **fields}

    def good(self) -> tuple[list[bytes], str, bool]:
        rows, cols = self.rng.choice([(16, 16), (32, 48), (64, 64)])
        h = self.header(dtype="uint8", shape=[rows, cols], outputs=["mask"])
        pixels = bytes(self.rng.getrandbits(8) for _ in range(rows * cols))
        return [json.dumps(h).encode(), pixels], h["id"], True

    def hostile(self) -> tuple[list[bytes], str | None]:
        r = self.rng
        kind = r.randrange(11)
        h = self.header(dtype="uint8", shape=[8, 8])
        rid = h["id"]
        frames_after = [bytes(64)]
        if kind == 0:  # a field of the wrong type
            field = r.choice(
                ["dtype", "shape", "series", "index", "geometry", "rescale", "outputs", "publish", "deadline_ms"]
            )
            h[field] = r.choice([None, True, "x", 3.5, [1, "a"], {"k": []}, -1])
        elif kind == 1:  # deep nesting
            depth = r.choice([500, 2000, 20000])
            body = json.dumps(h)[:-1] + ',"deep":' + "[" * depth + "]" * depth + "}"
            return [body.encode(), *frames_after], None if depth > 900 else rid
        elif kind == 2:  # huge numbers
            field = r.choice(["deadline_ms", "index", "bits_stored", "sent_at", "version"])
            body = json.dumps({**h, field: 0})[:-1].replace(
                f'"{field}": 0', f'"{field}": ' + "9" * r.choice([20, 400, 5000])
            )
            return [(body + "}").encode(), *frames_after], rid
        elif kind == 3:  # lone surrogates
            body = json.dumps(h)[:-1] + ', "series": "a\\ud800"}'
            return [body.encode(), *frames_after], None
        elif kind == 4:  # random frame count
            return [json.dumps(h).encode(), *([bytes(64)] * r.choice([0, 2, 3, 5]))], rid
        elif kind == 5:  # random bytes as the header
            return [bytes(r.getrandbits(8) for _ in range(r.randrange(1, 200))), *frames_after], None
        elif kind == 6:  # mutated real DICOM
            data = bytearray(r.choice(self.dicom))
            for _ in range(r.randrange(1, 30)):
                data[r.randrange(len(data))] = r.getrandbits(8)
            if r.random() < 0.3:
                data = data[: r.randrange(len(data))]
            h = {k: v for k, v in h.items() if k not in ("dtype", "shape")}
            h["encoding"] = "dicom"
            return [json.dumps(h).encode(), bytes(data)], rid
        elif kind == 7:  # absurd geometry and windows
            h["geometry"] = {"pixel_spacing": [r.choice([1e200, -1, 0, 5e3]), 1]}
            h["window"] = {"center": r.choice([1e300, 0]), "width": r.choice([0, -5, 1e11])}
        elif kind == 8:  # truncated JSON
            body = json.dumps(h)
            return [body[: r.randrange(1, len(body))].encode(), *frames_after], None
        elif kind == 9:  # payload contradicting dtype x shape
            h["shape"] = [r.randrange(0, 100), r.randrange(0, 100)]
        else:  # PING / STATS, possibly with a stray frame
            h = {"version": 1, "type": r.choice(["PING", "STATS", "RESULT", "NOPE"]), "id": rid}
            return [json.dumps(h).encode(), *([b"x"] if r.random() < 0.5 else [])], rid
        return [json.dumps(h).encode(), *frames_after], rid


@pytest.mark.slow
def test_a_live_runtime_survives_thousands_of_hostile_messages(demo_series):
    codes = documented_codes()
    assert {"BAD_MESSAGE", "INTERNAL", "NOT_DICOM"} <= codes
    dicom = [p.read_bytes() for p in sorted(demo_series.glob("*.dcm"))[:6]]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanedge", "serve", "--bind", endpoint, "--threads", "1", "--log-level", "error"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(json.dumps({"version": 1, "type": "PING", "id": "hello"}).encode())
        assert sock.poll(60_000), proc.stderr.read().decode() if proc.poll() is not None else "no PONG"
        sock.recv_multipart()
        rss_start = rss_mb(proc.pid)
        gen = Generator(seed=20261129, dicom=dicom)
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
            if reply["type"] == "ERROR" and reply["code"] not in codes:
                bad_codes.append(reply["code"])
            return True

        for i in range(MESSAGES):
            if i % 3 == 0:
                frames, rid, good = gen.good()
            else:
                (frames, rid), good = gen.hostile(), False
            if rid is None:
                anonymous += 1
            else:
                expected[rid] = good
            sock.send_multipart(frames)
            outstanding += 1
            while outstanding >= IN_FLIGHT:
                assert receive(30_000), f"the runtime stopped answering after {i} messages"
            assert proc.poll() is None, f"the runtime died at message {i}: {proc.stderr.read().decode()[-2000:]}"
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
