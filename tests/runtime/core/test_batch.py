import json
import shutil

import cv2
import numpy as np
import pytest

from scanedge.demo.series import dice_against_truth, load_demo_patient
from scanedge.engines import EngineConfig
from scanedge.imaging.files import load_slices
from scanedge.imaging.metrics import dice
from scanedge.runtime.core.batch import BatchOutput, segment_to_folder
from scanedge.runtime.core.pipeline import Pipeline
from tests.conftest import dicom_file


def count_inferences(pipe: Pipeline) -> list[int]:
    """Count the real engine's inferences (the engine still runs)."""
    calls = [0]
    infer = pipe.engine.infer

    def counted(feeds):
        calls[0] += 1
        return infer(feeds)

    pipe.engine.infer = counted
    return calls


def test_files_results_and_summaries_for_real_dicom(tmp_path, conv_model_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("MR_small.dcm", "emri_small.dcm"):  # one single-frame, one 10-frame file
        shutil.copy(dicom_file(name), folder / name)
    loaded = load_slices([folder])
    out = tmp_path / "out"
    done = []
    with Pipeline.open(conv_model_path, options=EngineConfig(threads=1)) as pipe:
        calls = count_inferences(pipe)
        report = segment_to_folder(
            pipe, loaded, BatchOutput(out, overlay_format="jpeg", save_masks=True), lambda i, n: done.append((i, n))
        )
    assert calls[0] == len(loaded) == 11 and done[-1] == (11, 11)
    assert len(list(out.glob("*.overlay.jpg"))) == 11 and len(list(out.glob("*.mask.npy"))) == 11
    assert report.montage_path is None and report.masks == []  # neither was asked for
    written = json.loads(report.results_path.read_text())
    assert written == json.loads(json.dumps(report.to_dict()))
    assert (
        set(written) == {"scanedge", "model", "series", "slices", "skipped"} and written["model"] == "test-model@0.0.1"
    )
    assert written["skipped"] == []
    first = written["slices"][0]
    assert set(first) >= {"file", "name", "overlay", "mask", "series_uid", "findings", "timings_ms"}
    mask = np.load(first["mask"])
    assert mask.shape == tuple(first["shape"]) and int(np.count_nonzero(mask)) == first["findings"][0]["pixels"]
    assert len(report.series) == 2 and sum(s.slices for s in report.series) == 11
    keys = {"series_uid", "series_number", "series_description", "modality", "slices", "classes", "latency_ms"}
    assert all(set(s) == keys | {"lesion_load"} for s in written["series"])
    for s in written["series"]:  # the 3-D load beside the 2-D per-slice figures, over the same slices
        load = s["lesion_load"]
        assert load["slices"] == s["slices"]
        for c in load["classes"]:
            assert c["slices_with_finding"] == s["classes"][c["name"]]["slices_with_finding"]
            assert c["voxels"] == s["classes"][c["name"]]["pixels"]
            assert (c["lesions"] == 0) == (c["voxels"] == 0)
    frames = [s for s in written["slices"] if "#" in s["name"]]
    assert len(frames) == 10 and all("_f" in s["overlay"] for s in frames)  # frame files never collide


def test_the_demo_runs_the_model_once_per_slice_and_scores_the_kept_masks(tmp_path, demo_series):
    loaded = load_slices([demo_series])
    with Pipeline.open(options=EngineConfig(threads=1)) as pipe:
        calls = count_inferences(pipe)
        report = segment_to_folder(pipe, loaded, BatchOutput(tmp_path, montage=True, keep_masks=True))
        assert calls[0] == len(loaded) == 32
        again = [r.mask for r in pipe.run_series([item.slice for item in loaded], overlay=False)]
    assert all(np.array_equal(a, b) for a, b in zip(report.masks, again))
    truth = load_demo_patient().labels
    score = dice_against_truth(report.masks)
    assert score == pytest.approx(dice(truth, np.stack(again))) and score > 0.9
    summary = report.series[0]
    assert summary.load("lesion").pixels == sum(s.findings[0].pixels for s in report.slices)
    assert report.latency().count == 32 and report.latency("infer_ms").max <= report.latency().max


def test_the_montage_tiles_the_overlays_that_were_written(tmp_path, demo_series):
    loaded = load_slices([demo_series])[:10]
    with Pipeline.open(options=EngineConfig(threads=1)) as pipe:
        report = segment_to_folder(pipe, loaded, BatchOutput(tmp_path, montage=True, montage_columns=4))
    sheet = cv2.cvtColor(cv2.imread(str(report.montage_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    banner = int((sheet[:, 1] == (150, 20, 20)).all(axis=-1).sum())  # the demo model is not for clinical use
    assert report.montage_path.name == "montage.png" and banner > 0
    tiles = sheet[banner : banner + 3 * 256]
    assert tiles.shape == (3 * 256, 4 * 256, 3) and sheet.shape[0] > banner + 3 * 256  # and a legend below
    for i, s in enumerate(report.slices):  # PNG is lossless: each tile is the overlay file, labels aside
        r, c = divmod(i, 4)
        tile = tiles[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256]
        written = cv2.cvtColor(cv2.imread(str(s.overlay_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(tile[45:230, 20:236], written[45:230, 20:236])
    assert not tiles[2 * 256 :, 2 * 256 :].any()  # two empty cells
