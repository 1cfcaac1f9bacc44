"""The node's output seam: outputs are named in the config and handled alike (folder, counters, status, retries).

A second output here is the real SEG builder under another name and kind, registered the way a new output
module would be; a failing one only injects a fault into ``build``. Real peers (pynetdicom's SCU), real files.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import pydicom
import pytest

from scanedge.dicomnet import ListenerConfig
from scanedge.dicomnet.outputs import OUTPUTS, OutputStats, make_outputs
from scanedge.dicomnet.outputs.seg import SegmentationConfig, SegOutput
from scanedge.dicomnet.series import OpenSeries, OpenSeriesBuffer, SeriesLimits
from scanedge.dicomnet.stats import ListenerStats
from scanedge.errors import ConfigError
from scanedge.manifest import Manifest
from tests.dicomnet.test_durability import demo, new_series, send
from tests.waiting import wait_until

#: status.json's keys for a SEG-only node, as they were before outputs had a seam of their own
SEG_STATUS_KEYS = {
    "state",
    "updated",
    "pid",
    "ae_title",
    "port",
    "series_open",
    "series_pending",
    "pending",
    "spool",
    "forward_pending",
    "last_error",
    "received",
    "stored",
    "refused",
    "spool_failures",
    "recovered",
    "unrecoverable",
    "series_completed",
    "segs_written",
    "seg_failures",
    "seg_retries",
}


class FractionalSeg(SegOutput):
    """The SEG builder as a second output of its own kind: what registering a new output module does."""

    name = "fseg"
    label = "FSEG"

    @classmethod
    def from_config(cls, config: ListenerConfig) -> FractionalSeg:
        return cls(SegmentationConfig(kind="fractional", device_serial_number=config.ae_title))


class FailsOnce(SegOutput):
    """A SEG output whose first build raises (an injected fault)."""

    name = "once"
    label = "ONCE"
    failures_left = 1

    def build(self, series: OpenSeries, model: str, manifest: Manifest) -> tuple[list[Any], list[str]]:
        if FailsOnce.failures_left:
            FailsOnce.failures_left -= 1
            raise RuntimeError("injected build failure")
        return super().build(series, model, manifest)


@pytest.mark.parametrize("names", [(), ("nope",), ("seg", "seg")])
def test_outputs_must_be_known_and_named_once(names):
    with pytest.raises(ConfigError):
        ListenerConfig(outputs=names)


def test_the_default_output_is_the_seg_as_the_config_asks_for_it():
    (seg,) = make_outputs(ListenerConfig(segmentation="fractional", ae_title="NODE"))
    assert isinstance(seg, SegOutput) and seg.settings.kind == "fractional" and seg.needs_probabilities
    assert seg.settings.device_serial_number == "NODE" and seg.describe() == "fractional SEGs"
    assert seg.counters(OutputStats(1, 2, 3)) == {"segs_written": 1, "seg_failures": 2, "seg_retries": 3}


def test_a_seg_only_node_writes_the_status_keys_it_always_wrote(listener):
    node = listener(series_timeout_s=60)
    assert [s for s, _ in send(node.port, new_series(demo(2)))] == [0, 0]
    node.stop()
    status = json.loads((node.config.out / "status.json").read_text())
    assert (
        set(status) == SEG_STATUS_KEYS
        and status["segs_written"] == 1
        and node.folders == {"seg": node.config.out / "seg"}
    )


def test_a_registered_output_gets_its_folder_counters_and_status_and_each_output_its_own_objects(listener, monkeypatch):
    monkeypatch.setitem(OUTPUTS, FractionalSeg.name, FractionalSeg)
    node = listener(series_timeout_s=0.3, outputs=("seg", "fseg"))
    series = new_series(demo(3))
    assert [s for s, _ in send(node.port, series)] == [0, 0, 0]
    wait_until(lambda: len(node.written) >= 2, timeout=60, what="both outputs' files")
    out = node.config.out
    assert node.folders == {"seg": out / "seg", "fseg": out / "fseg"}
    (binary,) = [pydicom.dcmread(p, stop_before_pixels=True) for p in (out / "seg").glob("*.dcm")]
    (fractional,) = [pydicom.dcmread(p, stop_before_pixels=True) for p in (out / "fseg").glob("*.dcm")]
    assert binary.SegmentationType == "BINARY" and fractional.SegmentationType == "FRACTIONAL"
    assert binary.SOPInstanceUID != fractional.SOPInstanceUID
    node.stop()
    status = json.loads((out / "status.json").read_text())
    assert status["segs_written"] == 1 and status["fsegs_written"] == 1 and status["fseg_failures"] == 0
    assert status["series_completed"] == 1 and status["spool"]["files"] == 0


def test_only_the_output_that_failed_is_retried_and_the_spool_empties_once_both_are_durable(listener, monkeypatch):
    monkeypatch.setitem(OUTPUTS, FailsOnce.name, FailsOnce)
    monkeypatch.setattr(FailsOnce, "failures_left", 1)
    node = listener(series_timeout_s=0.3, retry_initial_s=0.05, outputs=("seg", "once"))
    assert [s for s, _ in send(node.port, new_series(demo(2)))] == [0, 0]
    wait_until(lambda: len(node.written) >= 2 and node.spool.files == 0, timeout=60, what="the retried output")
    seg, once = node.stats.outputs["seg"], node.stats.outputs["once"]
    assert (seg.written, seg.failures, seg.retries) == (1, 0, 0)  # written once, not again on the retry
    assert (once.written, once.failures, once.retries) == (1, 1, 1)
    assert "could not be built" in node.stats.last_error and node.stats.series_completed == 1


def test_old_names_still_work_and_say_where_they_moved(listener, monkeypatch):
    monkeypatch.delitem(sys.modules, "scanedge.dicomnet.segmentation", raising=False)
    with pytest.warns(DeprecationWarning, match="scanedge.dicomnet.outputs.seg"):
        old = importlib.import_module("scanedge.dicomnet.segmentation")
    assert old.build_segmentations is importlib.import_module("scanedge.dicomnet.outputs.seg").build_segmentations
    with pytest.warns(DeprecationWarning, match="OpenSeriesBuffer"):
        from scanedge.dicomnet.series import SeriesStore
    assert SeriesStore is OpenSeriesBuffer and isinstance(SeriesStore(SeriesLimits()), OpenSeriesBuffer)
    with pytest.warns(DeprecationWarning, match="scanedge.dicomnet.config.ListenerConfig"):
        from scanedge.dicomnet.listener import ListenerConfig as OldConfig
    assert OldConfig is ListenerConfig
    with pytest.warns(DeprecationWarning, match="scanedge.dicomnet.stats.read_status"):
        from scanedge.dicomnet.listener import read_status
    assert read_status is importlib.import_module("scanedge.dicomnet.stats").read_status
    stats = ListenerStats(outputs={"seg": OutputStats(written=2, failures=1, retries=3)})
    with pytest.warns(DeprecationWarning, match=r"moved to ListenerStats\.outputs\['seg'\]"):
        assert (stats.segs_written, stats.seg_failures, stats.seg_retries) == (2, 1, 3)
    with pytest.raises(AttributeError):
        _ = stats.sr_failures
    node = listener()
    with pytest.warns(DeprecationWarning, match="folders"):
        assert node.seg_dir == node.folders["seg"]
