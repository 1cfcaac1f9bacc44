"""The durable spool: every image the DICOM node answers Success for is on disk first, until its SEG is.

A C-STORE is answered 0x0000 only once the received object (exactly the bytes the peer sent, with a file
meta header) is in ``OUT/spool/``: written to a temporary name, fsync'd, renamed, and the folder fsync'd,
as dcmtk's storescp and Orthanc make a received file durable before answering. A crash or power loss
after the answer therefore cannot lose the image: when the node starts again it finds the spooled files,
segments them again and completes their series (:meth:`DicomListener._recover`). A spooled file is
removed only once every SEG that references it is itself durably written (and linked into the forwarding
outbox), so the spool holds patient images no longer than it must.

One image may have several fates: beside one-input models, a multi-input model's partner image is held in
its series for their SEGs *and* kept for pairing (:mod:`scanedge.dicomnet.pairing_intake`). Each fate holds
a reference to the file (:meth:`Spool.share`); :meth:`Spool.remove` drops one and deletes the file with
the last, so the file lives until every fate is done. References are counted in memory only: after a
crash every spooled file is replayed through every fate again.

Names are ``<nanoseconds>-<SOP Instance UID>.dcm``: sorting them gives the order of arrival, so on
recovery a re-sent instance replaces its earlier copy exactly as it did live. Temporary files
(``.*.partial``) are what a crash left mid-write; they were never answered Success and are removed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from scanedge.errors import SpoolError

__all__ = ["Spool", "fsync_dir", "private_folder", "write_durably"]

log = logging.getLogger("scanedge.dicomnet")


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (a rename, a new or removed file) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_folder(folder: Path) -> Path:
    """``folder`` (and any missing parent) created readable by this user alone (0700), or made so when it is
    already this node's: the images and SEGs under ``--out`` carry patient data, and another local user must
    not list or read them. A folder that already exists and belongs to someone else keeps its mode."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode passes through the umask; this does not
    if folder not in missing and folder.stat().st_uid == os.geteuid():
        os.chmod(folder, 0o700)
    return folder


def write_durably(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, fsync it, rename it to ``path``, fsync the folder.

    Either ``path`` holds the whole content durably, or it is untouched; raises the OSError otherwise
    (the temporary file removed)."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        os.chmod(tmp, 0o600)  # patient data: this user's alone, also should the folder be opened up later
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Spool:
    """The folder of received images not yet in a durable SEG (thread-safe counters)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._sizes: dict[Path, int] = {}
        self._refs: dict[Path, int] = {}  # files with more than one fate still to finish: how many
        self.write_failures = 0

    def open(self) -> list[Path]:
        """Create the folder (durably), drop what a crash left half-written, and return the spooled files
        in the order they arrived."""
        private_folder(self.folder)
        fsync_dir(self.folder.parent)
        for partial in self.folder.glob(".*.partial"):
            partial.unlink(missing_ok=True)
        files = sorted(p for p in self.folder.glob("*.dcm") if p.is_file())
        with self._lock:
            self._sizes = {p: p.stat().st_size for p in files}
            self._refs.clear()
        return files

    def write(self, sop_instance_uid: str, data: bytes, *, fates: int = 1) -> Path:
        """Spool one received object durably, for ``fates`` owners (each calls :meth:`remove` once it is done);
        SpoolError (0xA700) when the disk refuses."""
        path = self.folder / f"{time.time_ns():020d}-{sop_instance_uid}.dcm"
        try:
            write_durably(path, lambda tmp: tmp.write_bytes(data))
        except OSError as exc:
            with self._lock:
                self.write_failures += 1
            raise SpoolError(
                f"the image could not be written durably to the spool ({exc.strerror or type(exc).__name__}); "
                "it is not taken, send it again later"
            ) from None
        with self._lock:
            self._sizes[path] = len(data)
            if fates > 1:
                self._refs[path] = fates
        return path

    def share(self, path: Path, more: int = 1) -> None:
        """``path`` gets ``more`` owners besides those it has (a spooled file taking one more fate)."""
        with self._lock:
            self._refs[path] = self._refs.get(path, 1) + more

    def owners(self, path: Path) -> int:
        """How many fates still hold ``path`` (1 for a file no fate shares)."""
        with self._lock:
            return self._refs.get(path, 1)

    def remove(self, paths: Iterable[Path]) -> None:
        """One owner of each spooled file is done (its SEGs are durable): the file is deleted once its last
        owner is (a file already gone is fine)."""
        removed = False
        for path in paths:
            with self._lock:
                left = self._refs.pop(path, 1) - 1
                if left > 0:
                    self._refs[path] = left
                    continue
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                pass
            except OSError as exc:  # left in place: the next start segments it again (a second, equal SEG)
                log.error("spooled file %s could not be removed: %s", path.name, exc.strerror)
                continue
            with self._lock:
                self._sizes.pop(path, None)
        if removed:
            try:
                fsync_dir(self.folder)
            except OSError as exc:
                log.warning("the spool folder could not be synced after removing files: %s", exc.strerror)

    def discard(self, path: Path) -> None:
        """Delete a file just spooled for an image that was not taken after all (never answered Success),
        whatever fates it was written for."""
        with self._lock:
            self._refs.pop(path, None)
        self.remove([path])

    @property
    def files(self) -> int:
        """Spooled files counted now."""
        with self._lock:
            return len(self._sizes)

    @property
    def bytes(self) -> int:
        """Bytes of the spooled files counted now."""
        with self._lock:
            return sum(self._sizes.values())
