"""Keeping patient images on the console: loopback by default, CurveZMQ + allow-list when networked.

Keys are ZeroMQ certificate files (``NAME.key`` public, ``NAME.key_secret`` secret) as written by
``zmq.auth.create_certificates``; the runtime's ZAP handler admits only clients whose public key file is
in the allow-list directory.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from scanedge.errors import ConfigError

__all__ = ["CurveClientKeys", "CurveServerKeys", "allow_client", "generate_keys", "is_loopback_endpoint"]


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for endpoints other machines cannot reach: tcp on 127.0.0.0/8, ::1 or localhost; ipc; inproc."""
    scheme = endpoint.split("://", 1)[0]
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = urlsplit(endpoint.replace("tcp://", "//", 1)).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", interface names, DNS names: reachable from outside


def generate_keys(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write a CurveZMQ key pair ``NAME.key`` / ``NAME.key_secret`` into ``directory``; returns (public, secret).

    ConfigError for a name that is not a plain file name.
    """
    import zmq.auth

    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"invalid key name {name!r}: use a plain file name such as server or console-1")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = (Path(p) for p in zmq.auth.create_certificates(str(d), name))
    os.chmod(secret, 0o600)
    return public, secret


@dataclass(frozen=True)
class CurveServerKeys:
    """The runtime's secret key file and the directory of admitted client public keys."""

    secret_file: Path
    clients_dir: Path

    def load(self) -> tuple[bytes, bytes]:
        """(public, secret) key of the runtime; ConfigError when a key file or the allow-list is unusable."""
        public, secret = _load_key_file(self.secret_file)
        if secret is None:
            raise ConfigError(f"{self.secret_file} holds no secret key (use the .key_secret file)")
        if not self.clients_dir.is_dir() or not any(self.clients_dir.glob("*.key")):
            raise ConfigError(f"{self.clients_dir} holds no client public keys (*.key); no client could connect")
        return public, secret

    def apply(self, socket: Any) -> None:
        public, secret = self.load()
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True

    def start_authenticator(self, context: Any) -> Any:
        """A ZAP handler admitting only the allow-listed public keys (stop() it on shutdown)."""
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(context, log=_quiet_logger())
        auth.start()
        auth.configure_curve(domain="*", location=str(self.clients_dir))
        return auth


@dataclass(frozen=True)
class CurveClientKeys:
    """A console's own key pair and the runtime's public key."""

    secret_file: Path
    server_public_file: Path

    def apply(self, socket: Any) -> None:
        public, secret = _load_key_file(self.secret_file)
        if secret is None:
            raise ConfigError(f"{self.secret_file} holds no secret key (use the .key_secret file)")
        server_public, _ = _load_key_file(self.server_public_file)
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_serverkey = server_public


def _load_key_file(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        return zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:  # missing file, or no public key in it
        raise ConfigError(f"{path} is not a readable CurveZMQ key file ({type(exc).__name__})") from exc


def allow_client(clients_dir: str | os.PathLike[str], public_key_file: str | os.PathLike[str]) -> Path:
    """Copy a client's public key into the allow-list directory."""
    d = Path(clients_dir)
    d.mkdir(parents=True, exist_ok=True)
    target = d / Path(public_key_file).name
    shutil.copyfile(public_key_file, target)
    return target


def _quiet_logger() -> Any:
    import logging

    return logging.getLogger("scanedge.runtime.auth")
