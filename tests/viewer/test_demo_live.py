"""``scanedge demo --live``: runtime, replay and viewer in one command; Ctrl-C stops all three cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_demo_live_serves_the_page_while_replaying_and_stops_on_ctrl_c(tmp_path):
    env = {**os.environ, "COLUMNS": "200", "PYTHONFAULTHANDLER": "1"}  # SIGABRT dumps every thread's stack
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanedge", "demo", "--live", "--port", "0", "--rate", "50"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = None
        for line in proc.stderr:
            found = re.search(r"open (http://127\.0\.0\.1:\d+/)\?token=([\w-]+)", line)
            if found:
                url, token = found.groups()
                break
        assert url, "no viewer URL printed"

        def state() -> dict:
            with urllib.request.urlopen(f"{url}api/state?token={token}", timeout=10) as r:
                return json.load(r)

        wait_until(lambda: state()["received"] >= 10, timeout=60, what="the replay reaching the viewer")
        # both shipped models: the segmentation draws the series, the classifier's scores arrive beside it
        wait_until(
            lambda: any(
                m.startswith("ms-lesion-classifier-demo@") for s in state()["series"] for m in s["score_models"]
            ),
            timeout=60,
            what="the demo classifier's scores reaching the viewer",
        )
        assert any((s["latest"] or {}).get("model", "").startswith("ms-lesion-demo@") for s in state()["series"])
        with urllib.request.urlopen(f"{url}?token={token}", timeout=10) as r:
            assert "scanedge" in r.read().decode()
        with pytest.raises(urllib.error.HTTPError) as refused:  # the token is what opens it
            urllib.request.urlopen(url + "api/state", timeout=10)
        assert refused.value.code == 401
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # say where it hangs: every thread's stack
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=30)
            raise AssertionError(f"demo --live did not stop on Ctrl-C:\n{err[-6000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err[-2000:]
    assert "failed 0" in out and "lesion load over" in out
    assert "stopped: replay, viewer and runtime" in err
