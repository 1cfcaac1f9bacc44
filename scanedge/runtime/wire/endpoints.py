"""ZeroMQ endpoints, read strictly: what we check is exactly what libzmq will bind.

libzmq accepts more than ``tcp://HOST:PORT``: ``tcp://SOURCE;HOST:PORT`` binds/connects from a source
address, and interface names stand for every address of an interface. A guard that inspects the text
loosely can be walked around (``tcp://127.0.0.1:1;0.0.0.0:5555`` looks like loopback and listens on every
interface). So the runtime accepts three plain forms only and refuses anything else with a
:class:`ConfigError` that shows the accepted forms.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from scanedge.errors import ConfigError

__all__ = ["Endpoint", "is_loopback_endpoint", "is_loopback_host", "parse_endpoint"]

_FORMS = "tcp://HOST:PORT (HOST an IP address, [IPv6], a host name or *; PORT a number or *), ipc://PATH, inproc://NAME"
_HOST = re.compile(r"^(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?)$")
_PORT = re.compile(r"^(\*|[0-9]{1,5})$")
_NAME = re.compile(r"^[^\s;]{1,255}$")


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint; ``host``/``port`` only for tcp (``port`` None for ``*``, a random port).

    Attributes:
        scheme: ``tcp``, ``ipc`` or ``inproc``.
        address: everything after ``://``: ``host:port`` for tcp, the name for ipc and inproc.
    """

    scheme: str
    address: str
    host: str = ""
    port: int | None = None

    @property
    def is_loopback(self) -> bool:
        """True when no other machine can reach it: ipc, inproc, tcp on 127.0.0.0/8, ::1 or localhost."""
        if self.scheme in ("ipc", "inproc"):
            return True
        return is_loopback_host(self.host.strip("[]"))

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse one endpoint in a plain form, or raise :class:`ConfigError` saying what is wrong."""
    if not isinstance(text, str) or "://" not in text:
        hint = f"; did you mean tcp://{text}?" if isinstance(text, str) and _looks_like_host_port(text) else ""
        raise ConfigError(f"endpoint {text!r} has no scheme{hint} (accepted: {_FORMS})")
    scheme, address = text.split("://", 1)
    if scheme in ("ipc", "inproc"):
        if not _NAME.match(address):
            raise ConfigError(f"endpoint {text!r}: the {scheme} name must be 1-255 characters without ';' or spaces")
        return Endpoint(scheme, address)
    if scheme != "tcp":
        raise ConfigError(f"endpoint {text!r}: scheme {scheme!r} is not supported (accepted: {_FORMS})")
    if ";" in address:
        raise ConfigError(
            f"endpoint {text!r}: the SOURCE;ADDRESS form is not accepted (it would listen on an address other "
            f"than the one checked); give one plain {_FORMS.split(' (', 1)[0]}"
        )
    host, sep, port = address.rpartition(":")
    if not sep or not _HOST.match(host) or not _PORT.match(port):
        raise ConfigError(f"endpoint {text!r} is not of the form {_FORMS}")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"endpoint {text!r}: {host} is not an IPv6 address") from None
    number = None if port == "*" else int(port)
    if number is not None and not 1 <= number <= 65535:
        raise ConfigError(f"endpoint {text!r}: port {number} is outside 1-65535")
    return Endpoint("tcp", address, host, number)


def _looks_like_host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep) and bool(_HOST.match(host)) and bool(_PORT.match(port))


def is_loopback_host(host: str) -> bool:
    """True for a loopback address or ``localhost``; "*", other host names and addresses are reachable from
    outside (names are not resolved)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for endpoints other machines cannot reach; raises ConfigError for a malformed endpoint."""
    return parse_endpoint(endpoint).is_loopback
