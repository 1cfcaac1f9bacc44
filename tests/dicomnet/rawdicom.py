"""DICOM upper-layer PDUs written by hand, for peers that misbehave on purpose (idle, slow, lying about
sizes), and a flood of such peers against a node. PS3.8 section 9.3 gives the layouts."""

from __future__ import annotations

import socket
from pathlib import Path

VERIFICATION = "1.2.840.10008.1.1"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT_LE = "1.2.840.10008.1.2"


def _item(kind: int, body: bytes) -> bytes:
    return bytes([kind, 0]) + len(body).to_bytes(2, "big") + body


def associate_rq(called: str = "SCANEDGE", calling: str = "SCANNER", abstract: str = VERIFICATION) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``abstract`` with implicit VR little endian as presentation context 1."""
    context = _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, abstract.encode()) + _item(0x40, IMPLICIT_LE.encode()))
    user = _item(0x50, _item(0x51, (16384).to_bytes(4, "big")) + _item(0x52, b"1.2.826.0.1.3680043.9.7433"))
    body = (
        (1).to_bytes(2, "big")
        + b"\0\0"
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    return bytes([0x01, 0]) + len(body).to_bytes(4, "big") + body


def pdv(control: int, fragment: bytes, context: int = 1) -> bytes:
    """One presentation data value item; ``control`` bit 0: command, bit 1: last fragment."""
    return (len(fragment) + 2).to_bytes(4, "big") + bytes([context, control]) + fragment


def p_data(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return b"\x04\x00" + len(body).to_bytes(4, "big") + body


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return b"\0\0" + element.to_bytes(2, "little") + len(value).to_bytes(4, "little") + value


def command_set(command_field: int, data_set_type: int, sop_class: str = MR_STORAGE) -> bytes:
    """A command set (implicit VR little endian) of a request with ``command_field`` (0x0001 C-STORE-RQ,
    0x0030 C-ECHO-RQ) and Command Data Set Type ``data_set_type`` (0x0101: none follows)."""
    body = (
        _element(0x0002, sop_class.encode())
        + _element(0x0100, command_field.to_bytes(2, "little"))
        + _element(0x0110, (1).to_bytes(2, "little"))
        + _element(0x0700, (0).to_bytes(2, "little"))
        + _element(0x0800, data_set_type.to_bytes(2, "little"))
        + _element(0x1000, b"1.2.826.0.1.3680043.9.7433.1.1")
    )
    return _element(0x0000, len(body).to_bytes(4, "little")) + body


def connect(port: int, source: str = "127.0.0.1", timeout: float = 30.0) -> socket.socket:
    """A TCP connection to the node on loopback from ``source`` (any 127.x.y.z: each is its own peer)."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU, or b"" if the connection closed first."""
    head = _read(sock, 6)
    if len(head) < 6:
        return b""
    return head + _read(sock, int.from_bytes(head[2:6], "big"))


def _read(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def closed_by_node(sock: socket.socket) -> bool:
    """Block (up to the socket's timeout) until the node closes the connection; True if it did. What the
    node sent before closing is read and dropped."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def process_status(pid: int) -> dict[str, int]:
    """Threads and VmRSS (kB) of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields
