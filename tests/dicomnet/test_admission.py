"""Connections that never negotiate cannot lock the scanner out, nor multiply threads, nor make one DIMSE
message unbounded: the gate and the message meter (scanedge/dicomnet/admission.py) against real peers
(raw sockets, dcmtk's echoscu/storescu, pynetdicom)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from scanedge.dicomnet.admission import MAX_COMMAND_BYTES, MAX_PDU_BYTES, AdmissionPolicy, MessageMeter
from scanedge.errors import ConfigError
from tests.dicomnet.conftest import needs_dcmtk, responses, storescu
from tests.dicomnet.rawdicom import (
    MR_STORAGE,
    associate_rq,
    closed_by_node,
    command_set,
    connect,
    p_data,
    pdv,
    process_status,
    read_pdu,
)
from tests.waiting import wait_until

MiB = 1024 * 1024
MR = get_testdata_file("MR_small.dcm")
VERIFICATION_UID = "1.2.840.10008.1.1"


def echoscu(port: int, calling: str = "SCANNER") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", "SCANEDGE", "-to", "20", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def pynetdicom_echo(port: int, source: str, calling: str = "SCANNER") -> object:
    """A C-ECHO from ``source`` by pynetdicom (dcmtk cannot choose its source address); returns the
    association (released), or it as it was rejected."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION_UID)
    ae.acse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANEDGE", bind_address=(source, 0))
    if assoc.is_established:
        status = assoc.send_c_echo()
        assert status.Status == 0x0000
        assoc.release()
    return assoc


def rss_kb() -> int:
    return process_status(os.getpid())["VmRSS"]


# --- the message meter, PDU by PDU ----------------------------------------------------------------------------


def store_command() -> bytes:
    return p_data(pdv(0x03, command_set(0x0001, 0x0000)))


def test_messages_end_only_when_their_data_set_ends_or_their_command_says_none_follows():
    meter = MessageMeter(limit=1000)
    echo = p_data(pdv(0x03, command_set(0x0030, 0x0101)))
    for _ in range(3):  # commands without data sets, and whole messages, one after another
        assert meter.feed(echo) is None
        assert meter.feed(store_command()) is None
        assert meter.feed(p_data(pdv(0x00, b"x" * 600), pdv(0x02, b"x" * 400))) is None  # exactly the limit
    assert meter.feed(b"\x01\x00\x00\x00\x00\x00") is None  # not P-DATA: not counted


@pytest.mark.parametrize(
    "after_command, why",
    [
        ([p_data(pdv(0x00, b"x" * 600)), p_data(pdv(0x00, b"x" * 600))], "more than 1000 bytes"),
        # the bypass found in testing: an empty "last command" fragment between data fragments
        ([p_data(pdv(0x00, b"x" * 600)), p_data(pdv(0x03, b""))], "command fragment"),
        ([p_data(pdv(0x00, b"x" * 600), pdv(0x03, command_set(0x0030, 0x0101)))], "command fragment"),
        ([p_data(pdv(0x02, b"x" * 10)), p_data(pdv(0x02, b"x" * 10))], "without a command"),
    ],
)
def test_no_run_of_pdvs_resets_the_count_of_a_message(after_command, why):
    meter = MessageMeter(limit=1000)
    results = [meter.feed(pdu) for pdu in [store_command(), *after_command]]
    assert results[:-1] == [None] * (len(results) - 1)
    assert why in (results[-1] or "")
    assert meter.feed(p_data(pdv(0x03, command_set(0x0030, 0x0101)))) is None  # once broken, only reported once


@pytest.mark.parametrize(
    "pdus, why",
    [
        ([p_data(*[pdv(0x01, b"c" * 4096)] * (MAX_COMMAND_BYTES // 4096 + 1))], "command set of more than"),
        ([p_data(pdv(0x03, b""))], "Command Data Set Type"),
        ([p_data(pdv(0x03, b"\0\0\0\0\xff\xff\xff\x7f"))], "Command Data Set Type"),
        ([p_data(pdv(0x00, b"x"))], "without a command"),
        ([b"\x04\x00\x00\x00\x00\x07" + b"\x00\x00\x00\x01\x01\x03\x00"], "malformed"),  # PDV length 1
        ([b"\x04\x00\x00\x00\x00\x0a" + b"\x00\x00\x00\x10\x01\x03abcd"], "malformed"),  # PDV past its PDU
    ],
)
def test_oversized_command_sets_and_malformed_pdvs_are_refused(pdus, why):
    meter = MessageMeter(limit=10 * MiB)
    assert why in (next(filter(None, (meter.feed(p) for p in pdus)), None) or "")


def test_admission_limits_that_cannot_work_are_config_errors():
    from scanedge.dicomnet import ListenerConfig

    for changes in ({"max_pending": 0}, {"max_per_address": 0}, {"associate_timeout_s": 0}):
        with pytest.raises(ConfigError, match=next(iter(changes))):
            ListenerConfig(**changes)
    assert ListenerConfig(max_pending=3).admission_policy == AdmissionPolicy(max_pending=3)


# --- the gate, against the real node ------------------------------------------------------------------------


def test_connections_without_an_association_request_are_closed_after_the_associate_timeout(listener):
    node = listener(associate_timeout_s=0.5)
    idle = [connect(node.port, f"127.0.0.{i}") for i in (2, 3, 4)]
    slow = connect(node.port, "127.0.0.5")
    slow.sendall(associate_rq()[:20])  # a request that starts and never ends
    for sock in [*idle, slow]:
        assert closed_by_node(sock)
    stats = node.admission.stats
    wait_until(lambda: stats.timed_out == 4, what="four timeouts counted")
    assert node.admission.pending == 0 and stats.associations == 0


def test_a_first_pdu_that_is_not_an_association_request_is_closed_at_once(listener):
    node = listener(associate_timeout_s=60)
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x01\x00\x7f\xff\xff\xff" + bytes(64)):
        sock = connect(node.port)
        sock.sendall(junk)
        assert closed_by_node(sock)
    assert node.admission.stats.malformed == 2


def test_a_bug_met_on_one_connection_closes_that_connection_and_the_gate_serves_the_next(listener, monkeypatch):
    node = listener(associate_timeout_s=60)
    gate = node.admission
    real_decide, calls = type(gate)._decide, []

    def decide_failing_once(self, pending, request):  # the injected fault: a bug on the first request only
        calls.append(pending.address)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return real_decide(self, pending, request)

    monkeypatch.setattr(type(gate), "_decide", decide_failing_once)
    first = connect(node.port, "127.0.0.2")
    first.sendall(associate_rq())
    assert closed_by_node(first)
    assert pynetdicom_echo(node.port, "127.0.0.3").is_released and len(calls) == 2
    assert gate.pending == 0


@needs_dcmtk
def test_an_idle_flood_cannot_lock_out_the_allow_listed_scanner(listener):
    """40 idle connections from 20 addresses (on main: 8 of them locked the scanner out for a minute with
    "local limit exceeded"): the pending pool keeps 8, the rest are evicted, and the scanner's C-ECHO and
    C-STORE go through at once; an intruder's request is rejected by the gate."""
    node = listener(allowed_calling_aes=("SCANNER",), max_pending=8, associate_timeout_s=120, series_timeout_s=0.3)
    flood = [connect(node.port, f"127.0.1.{i // 2 + 1}") for i in range(40)]
    gate = node.admission
    # (accepted counts a connection before the gate has evicted for it and put it among the pending ones)
    wait_until(lambda: gate.stats.accepted == 40 and gate.stats.evicted == 32, what="the flood accepted")
    wait_until(lambda: gate.pending == 8, what="eight connections kept pending")
    echo = echoscu(node.port)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert responses(storescu(node.port, MR, args=("-aet", "SCANNER"))) == ["Success"]
    intruder = storescu(node.port, MR, args=("-aet", "INTRUDER"))
    assert "Association Rejected" in intruder.stdout + intruder.stderr and node.stats.received == 1
    assert gate.stats.rejected == {"calling-ae": 1}
    for sock in flood:
        sock.close()


def test_connections_from_one_address_are_capped_and_other_addresses_are_served(listener):
    node = listener(max_per_address=3, associate_timeout_s=120)
    gate = node.admission
    held = [connect(node.port, "127.0.0.7") for _ in range(3)]
    wait_until(lambda: gate.connections_from("127.0.0.7") == 3, what="three held")
    extra = [connect(node.port, "127.0.0.7") for _ in range(2)]
    for sock in extra:
        assert closed_by_node(sock)
    assert gate.stats.over_address_cap == 2 and gate.connections_from("127.0.0.7") == 3
    assert pynetdicom_echo(node.port, "127.0.0.8").is_released  # type: ignore[attr-defined]
    for sock in held:
        sock.close()
    wait_until(lambda: gate.connections_from("127.0.0.7") == 0, what="the address's connections gone")
    assert pynetdicom_echo(node.port, "127.0.0.7").is_released  # type: ignore[attr-defined]


def test_a_full_house_of_associations_is_rejected_local_limit_exceeded_until_one_ends(listener):
    from pynetdicom import AE

    node = listener(max_associations=1)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(VERIFICATION_UID)
    ae.acse_timeout = ae.network_timeout = 20
    first = ae.associate("127.0.0.1", node.port, ae_title="SCANEDGE")
    assert first.is_established
    second = ae.associate("127.0.0.1", node.port, ae_title="SCANEDGE")
    assert second.is_rejected
    rj = second.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)  # transient, local limit exceeded
    assert node.admission.stats.rejected == {"busy": 1}
    first.release()
    wait_until(lambda: node.admission.associated == 0, what="the slot freed once the association ended")
    third = ae.associate("127.0.0.1", node.port, ae_title="SCANEDGE")
    assert third.is_established
    third.release()


@needs_dcmtk
def test_hundreds_of_hostile_connections_keep_the_thread_count_bounded_and_the_node_serves(listener):
    """400 connections from 100 addresses: idle, half a request, not DICOM, a request from an unknown AE
    title. Threads never pass the bound (three per association slot, plus the gate); the scanner is served
    during the flood."""
    node = listener(allowed_calling_aes=("SCANNER",), associate_timeout_s=120)
    gate = node.admission
    baseline = threading.active_count()
    bound = baseline + 3 * node.config.max_associations
    peak = baseline
    conns: list[socket.socket] = []
    for i in range(400):
        sock = connect(node.port, f"127.0.2.{i % 100 + 1}")
        kind = i % 4
        if kind == 1:
            sock.sendall(associate_rq(calling="SCANNER")[:30])
        elif kind == 2:
            sock.sendall(b"\x16\x03\x01\x02\x00" + bytes(64))  # a TLS hello
        elif kind == 3:
            sock.sendall(associate_rq(calling="INTRUDER"))
        conns.append(sock)
        peak = max(peak, threading.active_count())
    wait_until(lambda: gate.stats.accepted == 400, what="all 400 accepted")
    assert gate.stats.rejected["calling-ae"] + gate.stats.evicted + gate.stats.malformed > 0
    assert echoscu(node.port).returncode == 0
    peak = max(peak, threading.active_count())
    assert peak <= bound, (baseline, peak)
    assert gate.pending <= node.config.max_pending
    for sock in conns:
        sock.close()
    hosts = {f"127.0.2.{i}" for i in range(1, 101)}
    wait_until(
        lambda: gate.pending == 0 and gate.associated == 0 and not any(gate.connections_from(h) for h in hosts),
        what="every connection forgotten once closed (no slot or address share leaks)",
    )


# --- what one association may send ----------------------------------------------------------------------------


def _associated(port: int) -> socket.socket:
    sock = connect(port)
    sock.sendall(associate_rq(abstract=MR_STORAGE))
    assert read_pdu(sock)[:1] == b"\x02"  # A-ASSOCIATE-AC
    return sock


def _send_until_closed(sock: socket.socket, pdus, budget: int) -> int:
    """Send PDUs from ``pdus`` until ``budget`` bytes are sent or the node closes; returns bytes sent."""
    sent = 0
    try:
        for pdu in pdus:
            if sent >= budget:
                break
            sock.sendall(pdu)
            sent += len(pdu)
    except OSError:  # reset or broken pipe: the node aborted
        pass
    return sent


def _bypass(step_bytes: int, total: int):
    """Data fragments of 64 KiB, with an empty last-command PDV after every ``step_bytes``."""
    chunk = p_data(pdv(0x00, b"\0" * (64 * 1024 - 12)))
    empty_command = p_data(pdv(0x03, b""))
    sent = 0
    while sent < total:
        yield chunk
        sent += len(chunk)
        if sent % step_bytes < len(chunk):
            yield empty_command


@pytest.mark.parametrize("interleave", [True, False], ids=["empty-last-command-every-4MiB", "one-long-data-set"])
def test_a_message_over_the_byte_cap_is_aborted_near_the_cap_whatever_pdvs_it_is_cut_into(listener, interleave):
    """On main an empty last-command PDV reset the count, so 3 GiB were taken into memory; here the cap
    (16 MiB) holds: 256 MiB are offered, the node aborts within the cap plus what the socket buffers hold,
    and its memory does not grow by what was offered."""
    node = listener(max_object_bytes=16 * MiB)
    before = rss_kb()
    sock = _associated(node.port)
    sock.sendall(store_command())
    pdus = _bypass(4 * MiB, 256 * MiB) if interleave else _bypass(1 << 40, 256 * MiB)
    sent = _send_until_closed(sock, pdus, 256 * MiB)
    assert closed_by_node(sock)
    wait_until(lambda: node.stats.oversized == 1, what="the abort counted")
    assert sent < 64 * MiB, sent
    assert (rss_kb() - before) * 1024 < 64 * MiB
    assert node.stats.received == 0
    sock.close()


def test_a_pdu_claiming_a_gigabyte_is_refused_at_its_header(listener):
    node = listener()
    sock = _associated(node.port)
    header = b"\x04\x00" + (1 << 30).to_bytes(4, "big")
    body = (b"\0" * MiB for _ in range(128))
    sent = _send_until_closed(sock, [header, *body], 128 * MiB)
    assert closed_by_node(sock)
    assert sent < MAX_PDU_BYTES + 32 * MiB
    wait_until(lambda: node.admission.stats.oversized_pdus == 1, what="the refusal counted")
    assert echoscu_ok(node.port)


def echoscu_ok(port: int) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(VERIFICATION_UID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANEDGE")
    ok = assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    return bool(ok)


@pytest.mark.slow
@needs_dcmtk
def test_the_command_line_node_under_a_flood_of_400_connections(tmp_path: Path):
    """``scanedge dicom-listen`` as a process: its thread count (from /proc) stays within the bound under
    400 connections from 100 addresses, and the scanner's C-ECHO and C-STORE succeed meanwhile."""
    from tests.dicomnet.flood import flood_node

    report = flood_node(tmp_path, connections=400, addresses=100)
    assert report["echo_rc"] == 0 and report["store"] == ["Success"], report
    assert report["threads_peak"] <= report["threads_idle"] + 3 * 8, report


def test_a_pdu_that_never_finishes_arriving_closes_its_association_after_the_network_timeout(listener):
    node = listener(network_timeout_s=0.5)
    sock = _associated(node.port)
    sock.sendall(b"\x04\x00\x00\x00\x03\xe8" + b"\0" * 10)  # 1000 bytes announced, 10 sent
    assert closed_by_node(sock)
    wait_until(lambda: node.admission.associated == 0, what="the slot freed")
    assert echoscu_ok(node.port)


def test_what_the_gate_closes_is_summed_up_in_one_line_not_one_per_connection(caplog):
    """Six connections from one address with room for one: five closed at once, one timed out; the log
    has one summary line (on the gate's clock, every 10 s) and no line per connection."""
    from scanedge.dicomnet.admission import Gate

    now = [0.0]
    listening = socket.create_server(("127.0.0.1", 0))
    gate = Gate(AdmissionPolicy(max_per_address=1), listening, lambda s, a: None, clock=lambda: now[0])
    runner = threading.Thread(target=gate.run, daemon=True)
    runner.start()
    port = listening.getsockname()[1]
    conns = [connect(port) for _ in range(6)]
    wait_until(lambda: gate.stats.accepted == 6, what="six accepted")
    assert gate.stats.over_address_cap == 5 and not caplog.records
    now[0] = 11.0  # past the associate timeout (5 s) and the summary interval
    wait_until(lambda: caplog.records, what="the summary line")
    gate.stop()
    (record,) = caplog.records
    assert "5 over the per-address cap" in record.getMessage() and "1 timed out" in record.getMessage()
    for sock in conns:
        sock.close()
    listening.close()
