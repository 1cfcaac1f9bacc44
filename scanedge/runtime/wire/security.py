"""Keeping patient images on the console: loopback by default, CurveZMQ + allow-list when networked.

Keys are ZeroMQ certificate files (``NAME.key`` public, ``NAME.key_secret`` secret) as written by
``zmq.auth.create_certificates``. The runtime's ZAP handler admits only clients whose public key is in
the allow-list directory (re-read when the directory changes, so a console can be added without a
restart) and logs every refused key at warning level by fingerprint, never the key itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanedge.errors import ConfigError

__all__ = [
    "CurveClientKeys",
    "CurveServerKeys",
    "KeyAllowList",
    "allow_client",
    "generate_keys",
    "key_fingerprint",
]

log = logging.getLogger("scanedge.runtime")


def key_fingerprint(public_key_z85: bytes | str) -> str:
    """A short, stable name for a public key that is safe to log (sha256 of the Z85 text, 16 hex digits)."""
    raw = public_key_z85.encode() if isinstance(public_key_z85, str) else bytes(public_key_z85)
    return hashlib.sha256(raw).hexdigest()[:16]


def _load_pair(path: Path, *, need_secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable ZeroMQ key file: {exc}") from exc
    if need_secret and secret is None:
        raise ConfigError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def generate_keys(directory: str | os.PathLike[str], name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write a CurveZMQ key pair ``NAME.key`` (0644) / ``NAME.key_secret`` (0600) into ``directory``.

    An existing pair is never overwritten unless ``force``: replacing a key silently locks out every
    runtime or console that trusted the old one.
    """
    import zmq.auth

    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"invalid key name {name!r}: use letters, digits, '-' or '_'")
    d = Path(directory)
    existing = [p for p in (d / f"{name}.key", d / f"{name}.key_secret") if p.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} already exists; pass --force to replace the key pair")
    d.mkdir(parents=True, exist_ok=True)
    public, secret = (Path(p) for p in zmq.auth.create_certificates(str(d), name))
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def allow_client(clients_dir: str | os.PathLike[str], public_key_file: str | os.PathLike[str]) -> Path:
    """Copy a client's public key into the allow-list directory (refusing a secret key file)."""
    source = Path(public_key_file)
    _, secret = _load_pair(source, need_secret=False)
    if secret is not None:
        raise ConfigError(
            f"{source} contains a secret key; allow-list the public key file ({source.stem}.key) instead, "
            "and keep the secret on the console"
        )
    d = Path(clients_dir)
    d.mkdir(parents=True, exist_ok=True)
    target = d / (source.stem + ".key")
    shutil.copyfile(source, target)
    os.chmod(target, 0o644)
    return target


class KeyAllowList:
    """ZAP credentials provider: the public keys (``*.key``) in a directory, re-read when it changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stamp: tuple[float, int] | None = None
        self._keys: set[bytes] = set()
        self.refused = 0

    def keys(self) -> set[bytes]:
        """The admitted public keys (Z85); re-read when the directory changed, empty when it is missing.

        An unreadable directory keeps the previous keys (and logs an error) rather than locking every
        console out.
        """
        import zmq.auth

        try:
            st = self.directory.stat()
            stamp = (st.st_mtime, st.st_ino)
        except OSError:
            return set()
        if stamp != self._stamp:
            try:
                self._keys = set(zmq.auth.load_certificates(str(self.directory)))
            except (OSError, ValueError) as exc:
                log.error("cannot read the allow-list %s: %s; keeping the previous keys", self.directory, exc)
            self._stamp = stamp
        return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by pyzmq's authenticator for each CurveZMQ handshake (``key`` is Z85)."""
        if key in self.keys():
            return True
        self.refused += 1
        log.warning(
            "refused a console: its CurveZMQ key is not allow-listed (key fingerprint %s)", key_fingerprint(key)
        )
        return False


@dataclass(frozen=True)
class CurveServerKeys:
    """The runtime's secret key file and the directory of admitted client public keys.

    Attributes:
        secret_file: the runtime's ``NAME.key_secret`` file (its public key is read from it too).
        clients_dir: the allow-list: one ``*.key`` public key file per admitted console.
    """

    secret_file: Path
    clients_dir: Path

    def load(self) -> tuple[bytes, bytes]:
        """(public, secret) Z85 keys of the runtime; ConfigError when the key file holds no secret or the
        allow-list is missing or empty (no console could ever connect)."""
        public, secret = _load_pair(self.secret_file, need_secret=True)
        if not self.clients_dir.is_dir() or not any(self.clients_dir.glob("*.key")):
            raise ConfigError(f"{self.clients_dir} holds no client public keys (*.key); no client could connect")
        return public, secret  # type: ignore[return-value]

    def apply(self, socket: Any) -> None:
        """Make ``socket`` (before it binds) a CurveZMQ server with the runtime's key pair."""
        public, secret = self.load()
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True

    def start_authenticator(self, context: Any) -> Any:
        """A ZAP handler admitting only the allow-listed public keys (stop() it on shutdown)."""
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(context, log=logging.getLogger("scanedge.runtime.auth"))
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=KeyAllowList(self.clients_dir))
        return auth


@dataclass(frozen=True)
class CurveClientKeys:
    """A console's own key pair and the runtime's public key.

    Attributes:
        secret_file: the console's ``NAME.key_secret`` file.
        server_public_file: the runtime's public ``NAME.key`` file.
    """

    secret_file: Path
    server_public_file: Path

    def apply(self, socket: Any) -> None:
        """Make ``socket`` (before it connects) a CurveZMQ client of that runtime; ConfigError for an
        unreadable key file or one without the secret it needs."""
        public, secret = _load_pair(self.secret_file, need_secret=True)
        server_public, _ = _load_pair(self.server_public_file, need_secret=False)
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_serverkey = server_public
