"""A local store of what this node already segmented, to serve as the prior of a patient's next study.

Opt-in: nothing is stored unless a caller opens a :class:`PriorStore` on a folder it configured. Each entry holds a
series' label volume, its geometry and its lesion tracking ids and, for the DICOM node's follow-up, its voxel
intensities (to register the next study onto; no DICOM header, so no patient attribute), under a key that is the
HMAC-SHA256 of the Patient ID with a per-site secret, so the store holds no patient identifier in clear. The secret
lives in a file created 0600 on first use; entries are 0600 files in 0700 folders, written durably (temp file,
fsync, rename, fsync of the folder); the retention limits (age, count) are enforced on open and on every write.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scanedge.errors import ConfigError, SpoolError

__all__ = ["PriorRecord", "PriorStore", "PriorStoreConfig"]

log = logging.getLogger(__name__)

_SECRET_BYTES = 32
_SUFFIX = ".prior.npz"
_MAX_ENTRY_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class PriorStoreConfig:
    """Where the store lives and how long entries are kept (``None`` = no limit of that kind)."""

    root: Path  # the store's folder (made 0700); no default: the store is opt-in
    secret_file: Path | None = None  # the site secret; default root/site.secret (made 0600 on first use)
    max_age_days: float | None = 365.0  # entries written longer ago are deleted
    max_entries: int | None = 10000  # past this many entries (all patients), the oldest are deleted

    def __post_init__(self) -> None:
        if self.max_age_days is not None and not self.max_age_days > 0:
            raise ConfigError("prior store max_age_days must be > 0")
        if self.max_entries is not None and self.max_entries < 1:
            raise ConfigError("prior store max_entries must be >= 1")

    @property
    def secret_path(self) -> Path:
        """The site secret's file: ``secret_file`` or ``root/site.secret``."""
        return self.secret_file if self.secret_file is not None else self.root / "site.secret"


@dataclass(frozen=True)
class PriorRecord:
    """A segmented series: labels (z, y, x), voxel geometry, and the lesion tracking id of each label value."""

    study_uid: str  # Study Instance UID of the segmented series
    series_uid: str  # Series Instance UID (one entry per series)
    study_date: str  # Study Date, YYYYMMDD
    labels: np.ndarray  # label volume (z, y, x), integer values
    spacing: tuple[float, float, float]  # voxel size in mm (z, y, x)
    origin: tuple[float, float, float]  # patient position of the first voxel, mm
    direction: tuple[float, ...]  # 3x3 direction cosines, row-major
    lesion_ids: tuple[int, ...] = ()  # tracking id of each lesion label value 1..n
    # the series' intensities (z, y, x; float16 or int16 keep it small), for registering a later study onto it;
    # None in entries that hold labels only (they cannot serve as a follow-up prior)
    intensities: np.ndarray | None = None
    tracking_uids: tuple[str, ...] = ()  # DICOM Tracking UID of each lesion label value 1..n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class PriorStore:
    """Open with :meth:`open`; :meth:`put` a segmented series, :meth:`latest` the prior of a new study."""

    def __init__(self, config: PriorStoreConfig, secret: bytes) -> None:
        self.config = config
        self._secret = secret

    @classmethod
    def open(cls, config: PriorStoreConfig) -> PriorStore:
        """Create the folder (0700) and the site secret (0600) if absent, then enforce retention."""
        try:
            config.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(config.root, 0o700)
            secret = cls._load_secret(config.secret_path)
        except OSError as exc:
            raise ConfigError(f"prior store {config.root} cannot be used: {exc.strerror}") from exc
        store = cls(config, secret)
        store.enforce_retention()
        return store

    @staticmethod
    def _load_secret(path: Path) -> bytes:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            secret = path.read_bytes()
            if len(secret) < _SECRET_BYTES:
                raise ConfigError(f"prior store secret {path} is shorter than {_SECRET_BYTES} bytes") from None
            if path.stat().st_mode & 0o077:
                raise ConfigError(f"prior store secret {path} is readable by others (chmod 600)") from None
            return secret
        secret = secrets.token_bytes(_SECRET_BYTES)
        try:
            os.write(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(path.parent)
        return secret

    def patient_key(self, patient_id: str) -> str:
        """HMAC-SHA256 of the Patient ID with the site secret (hex): the only form a patient appears in."""
        return hmac.new(self._secret, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def _entries(self) -> list[tuple[float, Path]]:
        out = []
        for folder in self.config.root.iterdir():
            if folder.is_dir() and len(folder.name) == 64:
                for f in folder.glob(f"*{_SUFFIX}"):
                    try:
                        out.append((f.stat().st_mtime, f))
                    except FileNotFoundError:
                        continue
        out.sort(key=lambda e: e[0], reverse=True)
        return out

    def enforce_retention(self) -> int:
        """Delete entries past the age limit and beyond the count limit (oldest first); return how many."""
        entries = self._entries()
        cutoff = time.time() - self.config.max_age_days * 86400 if self.config.max_age_days is not None else None
        removed = 0
        for i, (mtime, f) in enumerate(entries):
            too_many = self.config.max_entries is not None and i >= self.config.max_entries
            if too_many or (cutoff is not None and mtime < cutoff):
                f.unlink(missing_ok=True)
                removed += 1
        for folder in self.config.root.iterdir():
            if folder.is_dir() and len(folder.name) == 64 and not any(folder.iterdir()):
                folder.rmdir()
        if removed:
            log.info("prior store: retention removed %d entries", removed)
        return removed

    def put(self, patient_id: str, record: PriorRecord) -> Path:
        """Store one segmented series durably; a later put of the same series replaces it."""
        folder = self.config.root / self.patient_key(patient_id)
        meta = {
            "study_uid": record.study_uid,
            "series_uid": record.series_uid,
            "study_date": record.study_date,
            "spacing": list(record.spacing),
            "origin": list(record.origin),
            "direction": list(record.direction),
            "tracking_uids": list(record.tracking_uids),
        }
        arrays = {
            "labels": np.ascontiguousarray(record.labels),
            "lesion_ids": np.asarray(record.lesion_ids, dtype=np.int64),
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        }
        if record.intensities is not None:
            if record.intensities.shape != record.labels.shape:
                raise ConfigError("a prior record's intensities and labels must be the same grid")
            arrays["intensities"] = np.ascontiguousarray(record.intensities)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        name = hashlib.sha256(record.series_uid.encode()).hexdigest()[:32] + _SUFFIX
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            _durable_write(folder / name, buf.getvalue())
        except OSError as exc:
            raise SpoolError(f"prior store entry for series {record.series_uid} not written: {exc.strerror}") from exc
        self.enforce_retention()
        return folder / name

    def records(self, patient_id: str) -> list[PriorRecord]:
        """Every readable entry of the patient, newest Study Date first (unreadable entries are skipped)."""
        folder = self.config.root / self.patient_key(patient_id)
        out = []
        for f in folder.glob(f"*{_SUFFIX}") if folder.is_dir() else []:
            try:
                if f.stat().st_size > _MAX_ENTRY_BYTES:
                    raise ValueError("entry too large")
                with np.load(f, allow_pickle=False) as z:
                    meta = json.loads(z["meta"].tobytes())
                    out.append(
                        PriorRecord(
                            study_uid=str(meta["study_uid"]),
                            series_uid=str(meta["series_uid"]),
                            study_date=str(meta["study_date"]),
                            labels=z["labels"],
                            spacing=tuple(float(v) for v in meta["spacing"]),  # type: ignore[arg-type]
                            origin=tuple(float(v) for v in meta["origin"]),  # type: ignore[arg-type]
                            direction=tuple(float(v) for v in meta["direction"]),
                            lesion_ids=tuple(int(v) for v in z["lesion_ids"]),
                            intensities=z["intensities"] if "intensities" in z.files else None,
                            tracking_uids=tuple(str(v) for v in meta.get("tracking_uids", [])),
                        )
                    )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("prior store: skipping unreadable entry %s (%s)", f.name, type(exc).__name__)
        out.sort(key=lambda r: r.study_date, reverse=True)
        return out

    def latest(self, patient_id: str, before_date: str, exclude_study_uid: str = "") -> PriorRecord | None:
        """The newest stored series of the patient dated strictly before ``before_date`` (YYYYMMDD)."""
        for r in self.records(patient_id):
            if r.study_date < before_date and r.study_uid != exclude_study_uid:
                return r
        return None
