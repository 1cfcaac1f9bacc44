"""A score head's 3-D series model: the manifest's declaration, the volume built slice by slice, and the one run
at series completion, compared with the same model run without scanedge (tests/heads/conftest.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from scanedge.errors import ManifestInvalidError, ManifestMismatchError, ModelFileError
from scanedge.imaging.heads import SeriesScores
from scanedge.imaging.series_model import SeriesModel, SeriesVolume, resample_depth
from scanedge.imaging.slices import Slice, SliceGeometry
from scanedge.manifest import Manifest, embed_manifest
from scanedge.runtime.core.pipeline import Pipeline
from tests.heads.conftest import (
    VOLUME_SIZE,
    expected_series_probability,
    sample_slices,
    series_model_manifest,
)


def at(pixels: np.ndarray, z: float) -> Slice:
    geometry = SliceGeometry(
        pixel_spacing=(1.0, 1.0),
        image_position=(0.0, 0.0, z),
        image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    )
    return Slice.from_array(pixels, geometry=geometry)


def _series(pipe: Pipeline, slices: list[Slice]):
    """Each slice through the pipeline into the series' scores and volume; the final scores at completion."""
    head = pipe.manifest.series_model_head
    assert head is not None and pipe.series_model is not None
    scores, volume = SeriesScores(pipe.manifest.heads), SeriesVolume(pipe.manifest, head)
    provisional = ()
    for s in slices:
        result = pipe.run(s, overlay=False)
        provisional = scores.add(result.scores, s.geometry)
        volume.add(s)
    return provisional, pipe.series_model.complete(volume, provisional)


def test_the_series_score_is_the_3d_models_answer_on_the_resampled_volume(series_model_dir):
    pixels = sample_slices(9)
    with Pipeline.open(series_model_dir / "model.onnx") as pipe:
        provisional, final = _series(pipe, [at(p, 2.5 * i) for i, p in enumerate(pixels)])
    (before,) = provisional
    assert before.provisional and before.aggregation == "max" and before.series_model is not None
    assert before.series_model.status == "pending"
    (after,) = final
    assert not after.provisional and after.aggregation == "series_model"
    assert after.series_model is not None and after.series_model.status == "done"
    assert after.series_model.slices == 9 and after.series_model.input == VOLUME_SIZE
    expected = expected_series_probability(series_model_dir, pixels)
    assert after.classes[0].score == pytest.approx(expected, abs=1e-5)
    assert after.classes[0].decision == (expected >= 0.6)
    assert after.to_dict()["series_model"]["status"] == "done"


def test_shuffled_and_resent_slices_make_the_same_volume(series_model_dir):
    pixels = sample_slices(7, seed=5)
    order = [4, 0, 6, 2, 1, 5, 3]
    with Pipeline.open(series_model_dir / "model.onnx") as pipe:
        _, in_order = _series(pipe, [at(p, float(i)) for i, p in enumerate(pixels)])
        noise = np.random.default_rng(0).normal(0, 1, pixels[0].shape).astype(np.float32)
        shuffled = [at(noise, 3.0)] + [at(pixels[i], float(i)) for i in order]  # slice 3 re-sent later: replaced
        _, out_of_order = _series(pipe, shuffled)
    assert out_of_order[0].classes[0].score == pytest.approx(in_order[0].classes[0].score, abs=1e-6)
    assert out_of_order[0].series_model.slices == 7


def test_resampling_is_linear_with_half_pixel_centres():
    planes = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 1, 2, 2), np.float32)
    out = resample_depth(planes, 8)
    assert out.shape == (1, 8, 2, 2)
    assert out[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
    assert resample_depth(planes[:1], 3)[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_the_volume_is_bounded(series_model_dir):
    manifest = series_model_manifest(max_slices=3)
    volume = SeriesVolume(manifest, manifest.heads[0])
    for i, p in enumerate(sample_slices(5)):
        volume.add(at(p, float(i)))
    volume.add(at(sample_slices(1)[0], 0.0))  # a held place: replaced, not dropped
    assert len(volume) == 3 and volume.dropped == 2
    assert volume.nbytes == 3 * 16 * 16 * 4


def _folder_with(tmp_path, series_model_dir, manifest: Manifest, volume_file: str | None = "volume_classifier.onnx"):
    if volume_file is not None:
        shutil.copy(series_model_dir / "volume_classifier.onnx", tmp_path / volume_file)
    model = onnx.load(str(series_model_dir / "model.onnx"))
    embed_manifest(model, manifest, tmp_path / "model.onnx")
    return tmp_path / "model.onnx"


def test_a_missing_series_model_file_is_refused_at_open(tmp_path, series_model_dir):
    path = _folder_with(tmp_path, series_model_dir, series_model_manifest(), volume_file=None)
    with pytest.raises(ModelFileError, match=r"volume_classifier\.onnx.*not found"):
        Pipeline.open(path)


@pytest.mark.parametrize(
    ("series", "problem"),
    [
        ({"depth": 7}, r"input 'volume' is \[1, 1, 6, 16, 16\]; the manifest needs \[1, 1, 7, 16, 16\]"),
        ({"height": 32, "width": 32}, r"needs \[1, 1, 6, 32, 32\]"),
        ({"output": "nope"}, "has no output 'nope'"),
        ({"input": "image"}, "has no input 'image'"),
        ({"onnx_sha256": "0" * 64}, "another graph than the manifest names"),
    ],
)
def test_a_series_model_that_contradicts_its_declaration_is_refused(tmp_path, series_model_dir, series, problem):
    path = _folder_with(tmp_path, series_model_dir, series_model_manifest(**series))
    with pytest.raises(ManifestMismatchError, match=problem):
        Pipeline.open(path)


def test_wrong_classes_are_refused(tmp_path, series_model_dir):
    """The series model answers for the head's classes: a head with two gets [1, 2] checked against [1, 1]."""
    data = series_model_manifest().to_dict()
    data["heads"][0]["classes"].append({"name": "other", "color": [0, 0, 255], "threshold": 0.5})
    path = _folder_with(tmp_path, series_model_dir, Manifest.from_dict(data))
    with pytest.raises(ManifestMismatchError, match=r"output 'abnormal_3d' is \[1, 1\]; the manifest needs \[1, 2\]"):
        Pipeline.open(path)


@pytest.mark.parametrize(
    ("series", "problem"),
    [
        ({"depth": 0}, "depth"),
        ({"depth": 10**9}, "more than 512"),
        ({"height": 4096}, "more than 1024"),
        ({"max_slices": 10**6}, "more than 2048"),
        ({"height": 1024, "width": 1024, "max_slices": 2048}, "256 MiB"),
        ({"path": "/etc/passwd"}, "relative file name"),
        ({"path": "../x.onnx"}, "relative file name"),
        ({"depth": "8"}, "integer"),
        ({"unknown": 1}, "unknown key"),
        ({"onnx_sha256": "ABC"}, "hex"),
    ],
)
def test_hostile_declarations_are_refused(series, problem):
    with pytest.raises(ManifestInvalidError, match=problem):
        series_model_manifest(**series)


def test_a_series_model_belongs_to_one_score_head():
    data = series_model_manifest().to_dict()
    second = json.loads(json.dumps(data["heads"][0]))
    second["name"] = "other_logit"
    data["heads"].append(second)
    with pytest.raises(ManifestInvalidError, match="at most one score head"):
        Manifest.from_dict(data)
    mask = {"name": "organs", "role": "mask", "activation": "sigmoid", "series_model": data["heads"][0]["series_model"]}
    mask["classes"] = [{"name": "background", "color": [0, 0, 0]}, {"name": "liver", "color": [0, 200, 0]}]
    data["heads"] = [data["heads"][0], mask]
    with pytest.raises(ManifestInvalidError, match="only a score head"):
        Manifest.from_dict(data)


def test_the_declaration_round_trips_and_old_manifests_read_as_before(series_model_dir):
    manifest = series_model_manifest()
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert "series_model" not in json.dumps(series_model_manifest().replace(heads=()).to_dict())


class _Broken(Exception):
    pass


@pytest.mark.parametrize("fault", ["raise", "nan", "shape"])
def test_a_failing_series_model_gives_a_typed_status_and_the_provisional_score(series_model_dir, monkeypatch, fault):
    pixels = sample_slices(4)
    with Pipeline.open(series_model_dir / "model.onnx") as pipe:
        model = pipe.series_model
        assert model is not None
        real = model.engine.infer

        def infer(feeds):
            if fault == "raise":
                raise _Broken("boom")
            out = dict(real(feeds))
            value = out["abnormal_3d"]
            out["abnormal_3d"] = np.full_like(value, np.nan) if fault == "nan" else np.zeros((1, 3), np.float32)
            return out

        monkeypatch.setattr(model.engine, "infer", infer)
        provisional, final = _series(pipe, [at(p, float(i)) for i, p in enumerate(pixels)])
        monkeypatch.undo()
        _, again = _series(pipe, [at(p, float(i)) for i, p in enumerate(pixels)])  # the model still serves
    (score,) = final
    code = {"raise": "ENGINE_FAILED", "nan": "NON_FINITE_OUTPUT", "shape": "MANIFEST_MISMATCH"}[fault]
    assert score.series_model is not None and score.series_model.status == "failed"
    assert score.series_model.code == code and score.series_model.message
    assert score.provisional and score.aggregation == "max"
    assert score.classes == provisional[0].classes
    assert again[0].series_model.status == "done"


def test_a_series_with_no_plane_fails_typed(series_model_dir):
    with Pipeline.open(series_model_dir / "model.onnx") as pipe:
        head = pipe.manifest.series_model_head
        assert head is not None and pipe.series_model is not None
        (score,) = pipe.series_model.complete(
            SeriesVolume(pipe.manifest, head), SeriesScores(pipe.manifest.heads).scores()
        )
    assert score.series_model.status == "failed" and score.series_model.code == "MANIFEST_MISMATCH"


def test_series_model_open_needs_a_declaration(head_models):
    from tests.heads.conftest import mask_score_manifest

    assert SeriesModel.open(mask_score_manifest(), head_models["mask_score"].parent) is None


def _held_volume(pipe: Pipeline, count: int = 4):
    head = pipe.manifest.series_model_head
    assert head is not None and pipe.series_model is not None
    volume, scores = pipe.series_model.volume(), SeriesScores(pipe.manifest.heads)
    for i, p in enumerate(sample_slices(count)):
        s = at(p, float(i))
        volume.add_plane(pipe.series_model.plane(s), ("pos", float(i)))
        scores.add(pipe.run(s, overlay=False).scores, s.geometry)
    return volume, scores.scores()


def test_the_runtime_holds_at_most_max_volumes(series_model_dir):
    from scanedge.runtime.serving.series_store import SeriesStore, SeriesStoreConfig

    store = SeriesStore(SeriesStoreConfig(max_volumes=2))
    with Pipeline.open(series_model_dir / "model.onnx") as pipe:
        model = pipe.series_model
        assert model is not None
        plane = model.plane(at(sample_slices(1)[0], 0.0))
        for series in ("a", "b", "c"):
            store.add_plane(series, "m", model, plane, ("pos", 0.0))
        store.add_plane("a", "m", model, plane, ("pos", 1.0))  # a dropped volume collects nothing more
        assert store.volumes_dropped == 1 and store.nbytes >= 2 * plane.nbytes
        assert store.take_volume("a", "m") is None
        held = store.take_volume("c", "m")
        assert held is not None and len(held) == 1
        store.add_plane("a", "m", model, plane, ("pos", 0.0))  # after its completion the series collects anew
        again = store.take_volume("a", "m")
        assert again is not None and len(again) == 1


def test_series_completions_answer_every_job_once_and_are_bounded(series_model_dir):
    from scanedge.runtime.serving.series_completion import SeriesCompletions
    from scanedge.runtime.wire.protocol import Result
    from tests.waiting import wait_until

    answered: list = []
    completions = SeriesCompletions(lambda job, outcome: answered.append((job, outcome)), max_pending=1)
    with Pipeline.open(series_model_dir / "model.onnx") as pipe:
        model = pipe.series_model
        assert model is not None
        volume, provisional = _held_volume(pipe)
        header = Result(version=1, id=1, series="s", series_scores=provisional)
        now = completions.submit("job-1", model, None, provisional, header, [np.zeros(3)])  # volume dropped
        assert now is not None and now.header.series_scores[0].series_model.code == "OUT_OF_RESOURCES"
        assert completions.submit("job-2", model, volume, provisional, header, [np.zeros(3)]) is None
        wait_until(lambda: len(answered) == 1, timeout=30, what="the series model's run")
        (job, outcome), expected = answered[0], model.complete(volume, provisional)
        (got,) = outcome.header.series_scores
        assert job == "job-2" and got.classes == expected[0].classes and got.aggregation == "series_model"
        assert got.series_model.status == "done" and got.series_model.slices == 4
        full = SeriesCompletions(lambda job, outcome: answered.append((job, outcome)), max_pending=0)
        busy = full.submit("job-4", model, volume, provisional, header, [])  # no room: answered at once
        assert busy is not None and busy.header.series_scores[0].series_model.code == "OUT_OF_RESOURCES"
        assert busy.header.series_scores[0].provisional and full.refused == 1
        full.close()
        completions.close()
        late = completions.submit("job-3", model, volume, provisional, header, [])  # stopped: answered at once
        assert late is not None and late.header.series_scores[0].series_model.code == "RUNTIME_STATE"
    assert len(answered) == 1
