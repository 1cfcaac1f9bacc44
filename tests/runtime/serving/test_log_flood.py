"""A flood of bad messages cannot flood the log: every call site (pydicom's decoders included) writes at most
its budget per window, the rest is counted in one summary line; every message still gets its typed reply;
and text from outside reaches neither a log nor a reply with its escape sequences or control characters.

The budget itself is tested with a real logging handler; the floods with a real ``scanedge serve`` and a real
``scanedge dicom-listen`` in child processes, as the testers saw them (23 lines per corrupt JPEG before).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

from scanedge.dicomnet.statuses import status_dataset
from scanedge.log_budget import CallSiteBudget, OneLineFormatter, configure_logging
from scanedge.runtime.wire.protocol import Echo, error_reply
from scanedge.safe_text import printable
from tests.imaging.dicom.test_hostile import corrupt_jpeg
from tests.runtime.processes import ROOT, free_port, runtime_log, start_runtime, stop_runtime
from tests.waiting import wait_until

HOSTILE = "red\x1b[31m alert\x1b[0m\x1b]0;pwned\x07 next\nFAKE LOG LINE\r\x00\u202eevil\x9b2J"


def test_printable_removes_escape_sequences_and_control_characters():
    assert printable(HOSTILE) == "red alert next FAKE LOG LINE evil"
    assert printable("Tübingen 1.2.840.10008 ok") == "Tübingen 1.2.840.10008 ok"  # plain text is untouched
    assert printable("\x1b[38;5;196mx" * 100, limit=20) == "x" * 17 + "..."
    assert printable("\x1bPq#0;2;0;0;0\x1b\\after\x1b") == "after"  # a DCS string, and an ESC at the very end


def test_the_replies_carry_no_escape_sequences():
    reply = error_reply(Echo(id="e1"), "REMOTE_FAILED", f"the server said: {HOSTILE}")
    assert reply.message == "the server said: red alert next FAKE LOG LINE evil"
    comment = status_dataset(0x0110, f"BAD_DICOM: {HOSTILE}").ErrorComment
    assert comment == "BAD_DICOM: red alert next FAKE LOG LINE evil"


def _handler(lines: int = 3) -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(CallSiteBudget(lines, window_s=3600))
    return handler, out


def test_each_call_site_gets_its_budget_and_a_one_off_line_always_passes():
    handler, out = _handler(lines=3)
    noisy, scanedge = logging.getLogger("pydicom.pixels.decoders.base"), logging.getLogger("scanedge.test")
    for logger in (noisy, scanedge):
        logger.addHandler(handler)
        logger.propagate = False
    try:
        for i in range(50):
            try:
                raise RuntimeError(f"decoder failed {i}")
            except RuntimeError as exc:
                noisy.exception(exc)  # as pydicom logs every failed frame: with its traceback
        scanedge.error("cannot listen on port 11112: Address already in use")  # start-up error: one line
    finally:
        for logger in (noisy, scanedge):
            logger.removeHandler(handler)
            logger.propagate = True
    lines = out.getvalue().splitlines()
    assert lines[:3] == [
        f"ERROR pydicom.pixels.decoders.base: decoder failed {i} [RuntimeError; traceback not logged]" for i in range(3)
    ]
    assert lines[3:] == ["ERROR scanedge.test: cannot listen on port 11112: Address already in use"]


class _Clock:
    """Stands in for the ``time`` module in log_budget: the test moves time on by hand."""

    now = 0.0

    def monotonic(self) -> float:
        return self.now


def test_the_summary_counts_what_was_held_back(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("scanedge.log_budget.time", clock)
    handler, out = _handler(lines=2)
    next(f for f in handler.filters if isinstance(f, CallSiteBudget)).window_s = 10.0
    loggers = [logging.getLogger("pynetdicom.test"), logging.getLogger("scanedge.runtime")]  # the summary's
    for logger in loggers:
        logger.addHandler(handler)
        monkeypatch.setattr(logger, "propagate", False)
    try:
        for i in range(6):
            clock.now = 10.5 if i == 5 else 0.0  # the last one in the next window: it sums up the one before
            loggers[0].warning("refused PDU")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["WARNING pynetdicom.test: refused PDU"] * 2
    assert lines[2].startswith("WARNING scanedge.runtime: 3 more line(s) like the last from pynetdicom.test (")
    assert lines[2].endswith("in the last 10 s, not logged one by one (WARNING 3)")
    assert lines[3:] == ["WARNING pynetdicom.test: refused PDU"]


def test_the_cli_log_strips_escape_sequences_and_routes_warnings_through_the_budget(capsys):
    handler = configure_logging("warning", lines=2)
    try:
        logging.getLogger("scanedge.test").warning("peer said %s", HOSTILE)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            for _ in range(5):
                warnings.warn("pydicom: invalid value", UserWarning, stacklevel=1)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.captureWarnings(False)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "peer said red alert next FAKE LOG LINE evil" in err
    assert err.count("UserWarning: pydicom: invalid value") == 2  # 5 warnings from one place, a budget of 2
    assert all(line[:2] == "20" for line in err.splitlines())  # one line per record (the source line joined)


# --- floods against real processes ------------------------------------------------------------------------


def _lines(text: str) -> int:
    return len(text.splitlines())


@pytest.mark.slow
def test_500_corrupt_dicom_segments_cost_a_bounded_number_of_log_lines():
    proc, sock, _ = start_runtime(log_level="info")
    try:
        payload = corrupt_jpeg()  # pydicom logs each failed decoder plugin with its traceback
        before = _lines(runtime_log(proc))
        codes = []
        for i in range(500):
            header = {"version": 1, "type": "SEGMENT", "id": f"bad-{i}", "encoding": "dicom", "outputs": ["mask"]}
            sock.send_multipart([json.dumps(header).encode(), payload])
            assert sock.poll(30_000), f"no reply to message {i}"
            reply = json.loads(sock.recv_multipart()[0])
            codes.append((reply["id"], reply["type"], reply["code"]))
        assert codes == [(f"bad-{i}", "ERROR", "BAD_DICOM") for i in range(500)]
        log = runtime_log(proc)
        grown = _lines(log) - before
        # 3 call sites (pydicom's decoder, once per plugin; the runtime's failed-request line), 20 lines each
        # per 10 s window plus one summary per window: unbounded it was 23 lines per message
        windows = 1 + int(_elapsed_s(log)) // 10
        assert grown <= 3 * 21 * windows + 5, log[-3000:]
        assert "Traceback" not in log
    finally:
        stop_runtime(proc, sock)


def _elapsed_s(log: str) -> float:
    """Seconds between the first and last timestamps of the log (its lines start ``YYYY-MM-DD HH:MM:SS,mmm``)."""
    from datetime import datetime

    stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in log.splitlines() if line[:2] == "20"]
    return (stamps[-1] - stamps[0]).total_seconds() if stamps else 0.0


def _corrupt_jpeg_mr(tmp_path: Path) -> Path:
    """The corrupt JPEG as an MR image (an object the node segments, so its pixels are decoded)."""
    data = corrupt_jpeg().replace(b"1.2.840.10008.5.1.4.1.1.7\x00", b"1.2.840.10008.5.1.4.1.1.4\x00")
    path = tmp_path / "corrupt-jpeg-mr.dcm"
    path.write_bytes(data)
    return path


def _echo(port: int) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANEDGE")
    if not assoc.is_established:
        return False
    assoc.release()
    return True


@pytest.mark.slow
def test_300_bad_c_stores_cost_the_dicom_node_a_bounded_number_of_log_lines(tmp_path, monkeypatch):
    import pydicom
    from pynetdicom import AE

    port = free_port()
    log_file = tempfile.TemporaryFile()
    node = subprocess.Popen(
        [sys.executable, "-m", "scanedge", "dicom-listen", "--port", str(port), "--out", str(tmp_path / "out")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )

    def log() -> str:
        log_file.seek(0)
        return log_file.read().decode(errors="replace")

    try:
        wait_until(lambda: node.poll() is not None or _echo(port), timeout=120, interval=0.2, what="the node")
        assert node.poll() is None, log()
        path = _corrupt_jpeg_mr(tmp_path)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        before = _lines(log())
        # the file's bytes as they are (pynetdicom would otherwise decode and re-encode the dataset)
        monkeypatch.setattr("pynetdicom._config.STORE_SEND_CHUNKED_DATASET", True)
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="SCANEDGE")
        assert assoc.is_established
        try:
            statuses = [assoc.send_c_store(path).Status for _ in range(300)]
        finally:
            assoc.release()
        assert statuses == [0xC000] * 300  # every one answered: cannot understand (BAD_DICOM)
        text = log()
        grown = _lines(text) - before
        windows = 1 + int(_elapsed_s(text)) // 10
        # pydicom's decoder (two plugins) and the node's refusal line: 3 call sites, 20 lines + 1 summary per
        # window each; association start and end lines are one-offs
        assert grown <= 3 * 21 * windows + 10, text[-3000:]
        assert "Traceback" not in text
    finally:
        node.terminate()
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(10)
