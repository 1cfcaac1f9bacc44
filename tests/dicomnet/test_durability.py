"""The DICOM node never loses an image it answered Success: the fsync'd spool, recovery after kill -9, retried
SEGs on a full disk, series that disagree, and objects no SEG can reference (issue 18, part 1).

Real peers (pynetdicom's SCU, dcmtk's storescu), a real ``scanedge dicom-listen`` process killed with SIGKILL,
and a real full file system (a small tmpfs). Every wait is on a condition.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE

from scanedge.cli import main
from scanedge.demo.series import demo_series_dir
from scanedge.dicomnet import DicomListener, ListenerConfig
from tests.dicomnet.conftest import free_port, needs_dcmtk, responses, storescu
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def demo(count: int = 32) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(demo_series_dir().glob("*.dcm"))[:count]]


def new_series(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The same images as a series of their own (new Series and SOP Instance UIDs), as a scanner's next scan."""
    series = generate_uid()
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(ds)
    return out


class Scu:
    """One association of pynetdicom's SCU to the node; ``store`` returns (status, Error Comment)."""

    def __init__(self, port: int, sop_classes: Sequence[str]) -> None:
        ae = AE(ae_title="SCANNER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        for sop in dict.fromkeys(sop_classes):
            ae.add_requested_context(sop, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.assoc = ae.associate("127.0.0.1", port, ae_title="SCANEDGE")
        assert self.assoc.is_established

    def store(self, ds: pydicom.Dataset) -> tuple[int, str]:
        status = self.assoc.send_c_store(ds)
        assert status is not None and "Status" in status, "no C-STORE response"
        return int(status.Status), str(status.get("ErrorComment", ""))

    def release(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


def send(port: int, datasets: Sequence[pydicom.Dataset]) -> list[tuple[int, str]]:
    scu = Scu(port, [str(ds.SOPClassUID) for ds in datasets])
    try:
        return [scu.store(ds) for ds in datasets]
    finally:
        scu.release()


def referenced(seg_dir: Path) -> dict[str, set[str]]:
    """SEG file name -> the SOP Instance UIDs it references (SEGs written so far)."""
    out = {}
    for path in seg_dir.glob("*.dcm"):
        seg = pydicom.dcmread(path, stop_before_pixels=True)
        out[path.name] = {
            item.ReferencedSOPInstanceUID
            for series in seg.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence
        }
    return out


def spooled(out: Path) -> list[Path]:
    return sorted((out / "spool").glob("*.dcm"))


# --- series that disagree ------------------------------------------------------------------------------


def test_an_instance_of_another_patient_or_study_is_refused_and_the_rest_of_the_series_gets_its_seg(listener, caplog):
    node = listener(series_timeout_s=60, complete_on_release=True)  # one association, one completion
    series = new_series(demo(6))
    series[2].PatientID = "OTHER-PATIENT-4711"
    series[4].StudyInstanceUID = generate_uid()
    answers = send(node.port, series)
    assert [status for status, _ in answers] == [0, 0, 0xC000, 0, 0xC000, 0]
    assert answers[2][1].startswith("SERIES_CONFLICT") and "Patient ID" in answers[2][1]
    assert answers[4][1].startswith("SERIES_CONFLICT") and "Study Instance UID" in answers[4][1]
    wait_until(lambda: not spooled(node.config.out), timeout=60, what="the SEG, then the spool to empty")
    (refs,) = referenced(node.folders["seg"]).values()
    assert refs == {str(series[i].SOPInstanceUID) for i in (0, 1, 3, 5)}  # one patient, one study
    (seg,) = (pydicom.dcmread(p, stop_before_pixels=True) for p in node.written)
    assert seg.PatientID == series[0].PatientID and seg.StudyInstanceUID == series[0].StudyInstanceUID
    assert "OTHER-PATIENT-4711" not in caplog.text and "SCANEDGE-DEMO" not in caplog.text
    assert node.stats.stored == 4  # refused ones were never spooled; the others left once the SEG was durable


def test_instances_that_differ_in_geometry_get_seg_groups_of_their_own_and_none_is_lost(listener):
    """Another frame of reference, another orientation, and a copy of one slice under another UID (a second
    image at a position already taken): on main each made the whole series' SEG fail with ValueError."""
    node = listener(series_timeout_s=60, complete_on_release=True)
    series = new_series(demo(8))
    series[1].FrameOfReferenceUID = generate_uid()
    series[3].ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    copy = new_series([series[5]])[0]
    copy.SeriesInstanceUID = series[0].SeriesInstanceUID
    series.append(copy)
    assert [status for status, _ in send(node.port, series)] == [0] * 9
    wait_until(lambda: len(node.written) >= 4, timeout=60, what="the SEGs")
    wait_until(lambda: not spooled(node.config.out), timeout=30, what="the spool to empty")
    refs = referenced(node.folders["seg"])
    assert set().union(*refs.values()) == {str(ds.SOPInstanceUID) for ds in series}  # every instance, once
    assert sum(map(len, refs.values())) == len(series) and node.stats.outputs["seg"].failures == 0
    for path in node.written:  # each SEG: one frame of reference, distinct positions
        seg = hd.seg.segread(path)
        sources = [ds for ds in series if str(ds.SOPInstanceUID) in refs[path.name]]
        assert {str(ds.FrameOfReferenceUID) for ds in sources} == {seg.FrameOfReferenceUID}
        assert len({tuple(ds.ImagePositionPatient) for ds in sources}) == len(sources)


def test_an_enhanced_mr_without_plane_geometry_is_refused_at_c_store_not_answered_success(listener):
    """pydicom's emri_small.dcm has 10 frames but no Plane Position / Plane Orientation functional groups:
    highdicom builds a SEG of such an image for one frame only ("Only a single frame is supported when the
    source image has no Frame of Reference UID"), so no SEG could ever reference it."""
    node = listener(series_timeout_s=0.3, ignore_scope=True)
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    ((status, comment),) = send(node.port, [ds])
    assert status == 0xC000 and comment.startswith("NO_FRAME_GEOMETRY")
    assert node.stats.refused == {0xC000: 1} and node.stats.stored == 0 and not spooled(node.config.out)


# --- the spool and recovery --------------------------------------------------------------------------------


def test_what_an_earlier_run_spooled_is_segmented_again_at_start_and_gets_its_seg(listener, tmp_path):
    """As a node killed after answering Success leaves it: images in OUT/spool/ (and a half-written temporary
    file, never answered). The next start completes the series, then empties the spool."""
    out = tmp_path / "out"
    (out / "spool").mkdir(parents=True)
    series = new_series(demo(5))
    for i, ds in enumerate(series):
        ds.save_as(out / "spool" / f"{i:020d}-{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    (out / "spool" / ".00000000000000000099-1.2.3.dcm.partial").write_bytes(b"half")
    node = listener(series_timeout_s=0.3)
    wait_until(lambda: node.written, timeout=60, what="the SEG of the recovered series")
    (refs,) = referenced(node.folders["seg"]).values()
    assert refs == {str(ds.SOPInstanceUID) for ds in series}
    assert node.stats.recovered == 5 and node.stats.unrecoverable == 0
    wait_until(lambda: not list((out / "spool").iterdir()), timeout=30, what="the spool to empty")


def test_a_spooled_file_shared_by_two_fates_leaves_the_spool_with_the_last_one(tmp_path):
    """A multi-input model's partner image beside one-input models: its series' outputs and its pairing each
    own the file; whichever finishes first, the file stays until the other is done too."""
    from scanedge.dicomnet.spool import Spool

    spool = Spool(tmp_path / "spool")
    spool.open()
    shared = spool.write("1.2.3", b"DICM" * 8, fates=2)
    recovered = spool.write("1.2.4", b"DICM" * 8)
    spool.share(recovered)  # a file found at start, taken by a second fate as it is replayed
    for path in (shared, recovered):
        assert spool.owners(path) == 2
        spool.remove([path])
        assert path.exists() and spool.owners(path) == 1 and spool.files == 2 - (path == recovered)
        spool.remove([path])
        assert not path.exists()
    assert spool.files == 0
    refused = spool.write("1.2.5", b"DICM" * 8, fates=2)
    spool.discard(refused)  # not taken after all: gone whatever fates it was written for
    assert not refused.exists() and spool.files == 0


def test_a_resent_instance_replaces_its_spooled_copy(listener):
    node = listener(series_timeout_s=60)
    (ds,) = new_series(demo(1))
    assert send(node.port, [ds, ds]) == [(0, ""), (0, "")]
    assert len(spooled(node.config.out)) == 1 and node.spool.files == 1


def test_status_is_written_for_the_operator_and_printed_by_dicom_listen_status(listener, capsys):
    node = listener(series_timeout_s=60)
    assert [s for s, _ in send(node.port, new_series(demo(3)))] == [0, 0, 0]
    node.stop()
    status = json.loads((node.config.out / "status.json").read_text())
    assert status["state"] == "stopped" and status["stored"] == 3 and status["segs_written"] == 1
    assert status["series_pending"] == 0 and status["spool"]["files"] == 0 and status["last_error"] == ""
    assert main(["dicom-listen", "--status", "--out", str(node.config.out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("stopped (updated ") and "0 waiting for a SEG retry" in printed
    assert json.loads(printed.split("\n", 1)[1])["stored"] == 3


def test_status_of_a_folder_no_node_wrote_is_a_one_line_error(tmp_path, capsys):
    assert main(["dicom-listen", "--status", "--out", str(tmp_path)]) == 2
    assert "no status.json" in capsys.readouterr().err


# --- a full disk ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: a file system that really fills up."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the file system says ENOSPC; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


@pytest.mark.slow
def test_on_a_full_disk_images_are_refused_a700_and_the_seg_is_retried_once_space_is_freed(small_disk):
    config = ListenerConfig(
        port=0, out=small_disk / "out", series_timeout_s=60, complete_on_release=True, retry_initial_s=0.2
    )
    node = DicomListener([], replace(config, retry_max_s=1.0)).start()
    try:
        series = new_series(demo(8))
        scu = Scu(node.port, [str(ds.SOPClassUID) for ds in series])
        assert [scu.store(ds)[0] for ds in series] == [0] * 8  # spooled durably: the disk had room
        filler = fill(small_disk)
        scu.release()  # the series is complete: its SEG cannot be written now
        wait_until(
            lambda: "No space left on device" in node.status()["last_error"], timeout=60, what="the failed SEG write"
        )
        status = node.status()
        assert status["series_pending"] == 1 and node.stats.outputs["seg"].failures >= 1
        assert status["spool"]["files"] == 8 and len(spooled(config.out)) == 8 and not node.written

        (late,) = new_series(demo(1))
        ((code, comment),) = send(node.port, [late])  # cannot be made durable: never Success
        assert code == 0xA700 and comment.startswith("SPOOL_FAILED")
        assert node.stats.spool_failures == 1 and len(spooled(config.out)) == 8

        filler.unlink()
        wait_until(lambda: node.written, timeout=60, what="the SEG written by a retry")
        assert node.stats.outputs["seg"].retries >= 1
        (refs,) = referenced(node.folders["seg"]).values()
        assert refs == {str(ds.SOPInstanceUID) for ds in series}
        wait_until(lambda: not spooled(config.out), timeout=30, what="the spool to empty")
        wait_until(
            lambda: json.loads((config.out / "status.json").read_text())["series_pending"] == 0,
            timeout=30,
            what="status.json to show nothing pending",
        )
    finally:
        node.stop()


# --- kill -9 ---------------------------------------------------------------------------------------------------


class Node:
    """``scanedge dicom-listen`` as a process of its own, on a fixed port and --out."""

    def __init__(self, port: int, out: Path, log: Path, args: Sequence[str] = ()) -> None:
        self.port, self.out, self.log, self.args = port, out, log, tuple(args)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        args = ["--port", str(self.port), "--out", str(self.out), "--series-timeout", "1", "--log-level", "info"]
        args += self.args
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scanedge", "dicom-listen", *args], stdout=log, stderr=log, env=env
            )
        wait_until(self._echo, timeout=120, interval=0.1, what="the node to listen")

    def _echo(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", self.port, ae_title="SCANEDGE")
        if not assoc.is_established:
            return False
        assoc.release()
        return True

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def stream(port: int, series: Sequence[pydicom.Dataset], kill_after: int | None, node: Node) -> list[str]:
    """Send ``series`` in one association; kill the node right after the ``kill_after``-th Success. Returns
    the SOP Instance UIDs answered Success (a connection lost mid-send ends the stream)."""
    answered = []
    scu = Scu(port, [str(series[0].SOPClassUID)])
    for ds in series:
        try:
            status = scu.assoc.send_c_store(ds)
        except Exception:
            break
        if status is None or "Status" not in status:
            break
        if int(status.Status) == 0:
            answered.append(str(ds.SOPInstanceUID))
        if kill_after is not None and len(answered) == kill_after:
            node.kill()
            break
    scu.release()
    return answered


@pytest.mark.slow
def test_kill_9_at_random_points_never_loses_an_image_answered_success(tmp_path):
    """Five rounds: a series streams in, the node is killed with SIGKILL right after a random Success (or at
    a random moment within the series window, while it builds and writes SEGs), then started again on the
    same --out. At the end every instance ever answered Success is referenced by a SEG, and the spool is empty."""
    rng = random.Random(int(os.environ.get("SCANEDGE_CRASH_SEED", "18")))
    node = Node(free_port(), tmp_path / "out", tmp_path / "node.log")
    images = demo(12)
    answered: set[str] = set()
    node.start()
    for round_ in range(5):
        series = new_series(images)
        if round_ % 2 == 0:  # right after a random Success, mid-series
            answered.update(stream(node.port, series, rng.randint(1, len(series)), node))
        else:  # the whole series answered, then killed while the series window runs out and SEGs are written
            answered.update(stream(node.port, series, None, node))
            killer = threading.Timer(rng.uniform(0.0, 2.5), node.kill)
            killer.start()
            killer.join()
        assert node.proc is not None and node.proc.poll() is not None  # it was killed, not stopped
        node.start()
    try:

        def all_referenced() -> bool:
            refs = set().union(*referenced(node.out / "seg").values())
            return answered <= refs and not spooled(node.out)

        wait_until(all_referenced, timeout=180, interval=0.2, what="every instance answered Success in a SEG")
    finally:
        assert node.terminate() == 0
    log = node.log.read_text()
    assert "segmenting them again" in log  # at least one restart found spooled images
    assert "SCANEDGE-DEMO" not in log


@needs_dcmtk
def test_dcmtk_storescu_gets_success_only_for_spooled_images(listener):
    """The Success dcmtk sees for each image means the image is in the spool, fsync'd, until its SEG is."""
    node = listener(series_timeout_s=60)
    files = sorted(demo_series_dir().glob("*.dcm"))[:4]
    assert responses(storescu(node.port, *files)) == ["Success"] * 4
    names = {p.name.split("-", 1)[1] for p in spooled(node.config.out)}
    assert names == {f"{pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID}.dcm" for f in files}


@needs_dcmtk
def test_a_recovered_series_seg_is_forwarded_to_a_dcmtk_storescp(listener, tmp_path):
    """A node killed after answering Success but before its SEG was written or forwarded: the next start
    writes the SEG and delivers it to the PACS."""
    from scanedge.dicomnet import parse_forward_target

    out, received = tmp_path / "out", tmp_path / "pacs"
    (out / "spool").mkdir(parents=True)
    received.mkdir()
    series = new_series(demo(3))
    for i, ds in enumerate(series):
        ds.save_as(out / "spool" / f"{i:020d}-{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    port = free_port()
    pacs = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(received), str(port)])
    try:
        node = listener(series_timeout_s=0.3, forward=parse_forward_target(f"PACS@127.0.0.1:{port}"))
        (arrived,) = wait_until(lambda: list(received.iterdir()), timeout=60, what="the SEG at the storescp")
        wait_until(lambda: not list((out / "outbox").iterdir()), timeout=60, what="the outbox to empty")
        got = pydicom.dcmread(arrived, stop_before_pixels=True)
        refs = {i.ReferencedSOPInstanceUID for i in got.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        assert refs == {str(ds.SOPInstanceUID) for ds in series} and not spooled(out)
        assert node.forwarder is not None and node.forwarder.delivered == 1
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)


def test_an_older_spooled_copy_never_replaces_a_newer_one_held():
    """Recovery at start can meet an instance its sender already sent again: the later arrival wins."""
    from scanedge.dicomnet.series import HeldInstance, OpenSeriesBuffer, SeriesLimits

    store = OpenSeriesBuffer(SeriesLimits())
    newer = HeldInstance("1.2.3", None, 10, (), spooled=Path("00000000000000000002-1.2.3.dcm"))
    older = HeldInstance("1.2.3", None, 10, (), spooled=Path("00000000000000000001-1.2.3.dcm"))
    store.begin("1.2", 1)
    assert store.finish("1.2", newer) is None
    store.begin("1.2", 0)
    assert store.finish("1.2", older) is older  # not held: its spooled file is the one to remove
    (series,) = store.drain()
    assert series.instances["1.2.3"] is newer and store.held_bytes == 0


# --- other users ---------------------------------------------------------------------------------------------


def test_another_local_user_can_neither_list_nor_read_the_spool_the_segs_or_the_status(listener):
    """The spool holds the scanner's images and the SEGs copy the patient module: under --out, only the
    node's own user may look (folders 0700, files 0600), tried as uid 65534 with setpriv."""
    import shutil

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    node = listener(series_timeout_s=60)
    out = node.config.out
    assert [s for s, _ in send(node.port, new_series(demo(2)))] == [0, 0]
    os.chmod(out.parent, 0o755)  # pytest's tmp_path is private already: open it, so the node's own modes decide
    os.chmod(out.parent.parent, 0o755)
    node.stop()  # the SEG is written, the spool emptied; send two more and keep the node running
    node = listener(series_timeout_s=60)
    assert [s for s, _ in send(node.port, new_series(demo(2)))] == [0, 0]
    spooled_file = spooled(out)[0]
    (seg,) = list(node.folders["seg"].glob("*.dcm"))[:1]

    def as_nobody(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *argv],
            capture_output=True,
            timeout=30,
        )

    for folder in (out / "spool", node.folders["seg"]):
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        assert as_nobody("ls", str(folder)).returncode != 0
    for path in (spooled_file, seg, out / "status.json"):
        assert oct(path.stat().st_mode & 0o777) == "0o600", path
        assert as_nobody("cat", str(path)).returncode != 0
