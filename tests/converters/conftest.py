import shutil
from pathlib import Path

import pytest

from scanedge.converters.convert import ConvertConfig, convert
from scanedge.demo.assets import DEMO_MODEL_PATH


@pytest.fixture(scope="session")
def calibration_dir(demo_series, tmp_path_factory) -> Path:
    """The first half of the demo series: verification then also covers slices never calibrated on."""
    folder = tmp_path_factory.mktemp("calibration")
    for path in sorted(demo_series.glob("*.dcm"))[:16]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def converted(calibration_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("engines")
    return {
        p: convert(
            DEMO_MODEL_PATH,
            ConvertConfig(precision=p, calibration=calibration_dir if p == "int8" else None, out_dir=out),
        ).output
        for p in ("fp32", "fp16", "int8")
    }
