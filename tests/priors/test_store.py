"""The local prior store: hashed keys, permissions, durability of the format, retention."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from scanedge.dicomnet.prior_store import PriorRecord, PriorStore, PriorStoreConfig
from scanedge.errors import ConfigError, SpoolError

PID = "STORE-PAT-93812"


def _record(series: str, date: str, value: int = 1) -> PriorRecord:
    labels = np.zeros((4, 8, 8), dtype=np.uint8)
    labels[1:3, 2:5, 2:5] = value
    return PriorRecord(
        study_uid=f"1.2.3.{date}",
        series_uid=series,
        study_date=date,
        labels=labels,
        spacing=(3.0, 0.9, 0.9),
        origin=(-10.0, 5.0, 2.5),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        lesion_ids=(value,),
    )


def test_roundtrip_latest_and_no_identifier_in_clear(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    root = tmp_path / "priors"
    store = PriorStore.open(PriorStoreConfig(root))
    store.put(PID, _record("1.2.9.1", "20240101", 1))
    store.put(PID, _record("1.2.9.2", "20250101", 2))
    store.put("OTHER-PATIENT", _record("1.2.9.3", "20251001", 3))
    prior = store.latest(PID, "20260101")
    assert prior is not None and prior.series_uid == "1.2.9.2" and prior.lesion_ids == (2,)
    assert prior.spacing == (3.0, 0.9, 0.9) and prior.origin == (-10.0, 5.0, 2.5)
    np.testing.assert_array_equal(prior.labels, _record("x", "0", 2).labels)
    earlier = store.latest(PID, "20250101")
    assert earlier is not None and earlier.series_uid == "1.2.9.1"
    assert store.latest(PID, "20240101") is None
    assert store.latest("NOBODY", "20990101") is None
    # the same store reopened (same secret) finds the same entries
    again = PriorStore.open(PriorStoreConfig(root))
    assert [r.series_uid for r in again.records(PID)] == ["1.2.9.2", "1.2.9.1"]
    for f in root.rglob("*"):
        assert PID.encode() not in f.name.encode()
        if f.is_file():
            assert PID.encode() not in f.read_bytes()
    assert PID not in caplog.text


def test_permissions_and_secret(tmp_path: Path) -> None:
    root = tmp_path / "priors"
    store = PriorStore.open(PriorStoreConfig(root))
    path = store.put(PID, _record("1.2.9.1", "20240101"))
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = root / "site.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    # another site (another secret) derives another key for the same patient
    other = PriorStore.open(PriorStoreConfig(tmp_path / "site2"))
    assert other.patient_key(PID) != store.patient_key(PID) and len(store.patient_key(PID)) == 64
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        PriorStore.open(PriorStoreConfig(root))


def test_retention_by_count_on_write(tmp_path: Path) -> None:
    store = PriorStore.open(PriorStoreConfig(tmp_path / "p", max_entries=2))
    for i in range(3):
        path = store.put(PID, _record(f"1.2.9.{i}", f"2024010{i + 1}"))
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    assert [r.series_uid for r in store.records(PID)] == ["1.2.9.2", "1.2.9.1"]


def test_retention_by_age_on_open(tmp_path: Path) -> None:
    cfg = PriorStoreConfig(tmp_path / "p", max_age_days=30)
    store = PriorStore.open(cfg)
    old = store.put(PID, _record("1.2.9.1", "20240101"))
    store.put(PID, _record("1.2.9.2", "20240201"))
    forty_days = time.time() - 40 * 86400
    os.utime(old, (forty_days, forty_days))
    reopened = PriorStore.open(cfg)
    assert not old.exists()
    assert [r.series_uid for r in reopened.records(PID)] == ["1.2.9.2"]


def test_corrupt_entry_is_skipped(tmp_path: Path) -> None:
    store = PriorStore.open(PriorStoreConfig(tmp_path / "p"))
    good = store.put(PID, _record("1.2.9.1", "20240101"))
    bad = store.put(PID, _record("1.2.9.2", "20250101"))
    bad.write_bytes(b"not an npz")
    assert [r.series_uid for r in store.records(PID)] == ["1.2.9.1"]
    assert good.exists()


def test_bad_config() -> None:
    with pytest.raises(ConfigError):
        PriorStoreConfig(Path("/tmp/x"), max_entries=0)
    with pytest.raises(ConfigError):
        PriorStoreConfig(Path("/tmp/x"), max_age_days=0)


def test_failed_write_is_a_typed_error(tmp_path: Path) -> None:
    """The patient's folder cannot be made (a file holds its name): SpoolError, nothing half-written."""
    store = PriorStore.open(PriorStoreConfig(tmp_path / "p"))
    (tmp_path / "p" / store.patient_key(PID)).write_bytes(b"")
    with pytest.raises(SpoolError, match=r"1\.2\.9\.1"):
        store.put(PID, _record("1.2.9.1", "20240101"))
    assert store.records(PID) == []
