"""Times a score head's series model (BENCHMARKS.md): the plane each slice adds to the volume, and the run at
series completion (resampling the planes to the model's depth and inference), for the test model of
tests/heads/conftest.py at its own size and at a larger one. Random slices (timing only)::

    PYTHONPATH=. python -m tests.heads.series_model_bench
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import tests.heads.conftest as models
from scanedge.engines.options import EngineConfig
from scanedge.imaging.heads import SeriesScores
from scanedge.imaging.series_model import SeriesModel
from scanedge.imaging.slices import Slice, SliceGeometry


def bench(size: tuple[int, int, int], slices: int, rows: int, runs: int = 30) -> str:
    models.VOLUME_SIZE = size  # the builders read it: the same network, exported at this input size
    folder = Path(tempfile.mkdtemp())
    models.volume_classifier(folder / "volume_classifier.onnx")
    manifest = models.series_model_manifest()
    model = SeriesModel.open(manifest, folder, EngineConfig(threads=1))
    assert model is not None
    volume = model.volume()
    rng = np.random.default_rng(0)
    plane_ms = []
    for i in range(slices):
        geometry = SliceGeometry(image_position=(0.0, 0.0, float(i)), image_orientation=(1, 0, 0, 0, 1, 0))
        s = Slice.from_array(rng.normal(0, 1, (rows, rows)).astype(np.float32), geometry=geometry)
        t0 = time.perf_counter()
        volume.add_plane(model.plane(s), ("pos", float(i)))
        plane_ms.append((time.perf_counter() - t0) * 1e3)
    provisional = SeriesScores(manifest.heads).scores()
    run_ms = []
    for _ in range(runs):
        (score,) = model.complete(volume, provisional)
        assert score.series_model is not None and score.series_model.status == "done"
        run_ms.append(score.series_model.ms)
    model.close()
    d, h, w = size
    return (
        f"input 1x1x{d}x{h}x{w}, {slices} slices of {rows}x{rows}: plane per slice p50 "
        f"{statistics.median(plane_ms):.3f} ms; run at completion p50 {statistics.median(run_ms):.2f} ms, "
        f"max {max(run_ms):.2f} ms ({runs} runs)"
    )


if __name__ == "__main__":
    print(bench((6, 16, 16), 9, 256))
    print(bench((32, 128, 128), 160, 256))
