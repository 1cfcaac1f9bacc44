"""Multi-head test models, built with torch and exported to ONNX: a classifier with a saliency map, a mask
plus score model, and a two-mask model. Small (32x32 input), seeded, and written once per session."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from scanedge.manifest import ClassSpec, HeadSpec, InputSpec, IntensityPolicy, Manifest, OutputSpec, SizePolicy
from scanedge.manifest import embed_manifest as _embed

SIZE = 32


def _torch():
    return pytest.importorskip("torch", reason="the multi-head test models are built with torch (pip install torch)")


def _export(module, path: Path, outputs: list[str]) -> Path:
    torch = _torch()
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (torch.zeros(1, 1, SIZE, SIZE),),
            str(path),
            input_names=["image"],
            output_names=outputs,
            dynamo=False,
            opset_version=17,
        )
    return path


def _modules() -> dict[str, tuple[object, list[str]]]:
    """The three test networks (torch is imported here, so tests that need no model run without it)."""
    torch = _torch()

    class Classifier(torch.nn.Module):
        """Three classes: CAM-style saliency [1, 3, 8, 8] and logits [1, 3] as the saliency's spatial mean."""

        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Conv2d(1, 6, 3, padding=1)
            self.cam = torch.nn.Conv2d(6, 3, 1)
            self.pool = torch.nn.AvgPool2d(4)

        def forward(self, x):
            cam = self.cam(self.pool(torch.relu(self.features(x))))
            return cam.mean(dim=(2, 3)) * 3.0, cam

    class MaskAndScore(torch.nn.Module):
        """A two-class softmax mask [1, 2, 32, 32] and a sigmoid score [1, 1] from the same features."""

        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.mask = torch.nn.Conv2d(4, 2, 1)
            self.score = torch.nn.Linear(4, 1)

        def forward(self, x):
            f = torch.relu(self.features(x))
            return self.mask(f), self.score(f.mean(dim=(2, 3))) * 4.0

    class TwoMasks(torch.nn.Module):
        """A two-class softmax mask and a sigmoid mask with two foreground classes (no background channel)."""

        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.lesion = torch.nn.Conv2d(4, 2, 1)
            self.organs = torch.nn.Conv2d(4, 2, 1)

        def forward(self, x):
            f = torch.relu(self.features(x))
            return self.lesion(f), self.organs(f) * 3.0

    torch.manual_seed(7)
    return {
        "classifier": (Classifier(), ["class_logits", "cam"]),
        "mask_score": (MaskAndScore(), ["logits", "abnormal_logit"]),
        "two_masks": (TwoMasks(), ["logits", "organs"]),
    }


def _base(
    name: str, output: OutputSpec | None, classes: tuple[ClassSpec, ...], heads: tuple[HeadSpec, ...]
) -> Manifest:
    return Manifest(
        name=name,
        version="1.0.0",
        classes=classes,
        input=InputSpec(name="image"),
        size=SizePolicy(mode="fixed", height=SIZE, width=SIZE, interpolation="linear"),
        intensity=IntensityPolicy(mode="none", apply_rescale=False),
        output=output,
        heads=heads,
    )


CLASSIFIER_HEADS = (
    HeadSpec(
        "class_logits",
        "score",
        activation="softmax",
        classes=(ClassSpec("normal", (200, 200, 200), 0.5), ClassSpec("bleed", (255, 40, 40), 0.3), ClassSpec("mass")),
        aggregation="max",
        operating_point={"name": "triage", "sensitivity": 0.95, "specificity": 0.8},  # type: ignore[arg-type]
    ),
    HeadSpec("cam", "saliency", of="class_logits"),
)
LESION = (ClassSpec("background", (0, 0, 0)), ClassSpec("lesion", (255, 0, 0), 0.5))


def classifier_manifest() -> Manifest:
    """The classifier: no mask output, a softmax score head and its saliency map."""
    return _base("test-classifier", None, (), CLASSIFIER_HEADS)


def mask_score_manifest(aggregation: str = "noisy_or") -> Manifest:
    """Mask ``logits`` (today's output) plus a sigmoid score head ``abnormal``."""
    score = HeadSpec(
        "abnormal_logit",
        "score",
        activation="sigmoid",
        classes=(ClassSpec("abnormal", threshold=0.6),),
        aggregation=aggregation,  # type: ignore[arg-type]
    )
    return _base("test-mask-score", OutputSpec("logits"), LESION, (score,))


def two_mask_manifest() -> Manifest:
    """Mask ``logits`` plus a sigmoid mask head ``organs`` with two foreground classes."""
    organs = HeadSpec(
        "organs",
        "mask",
        activation="sigmoid",
        classes=(ClassSpec("background", (0, 0, 0)), ClassSpec("liver", (0, 200, 0), 0.5), ClassSpec("kidney")),
    )
    return _base("test-two-masks", OutputSpec("logits"), LESION, (organs,))


@pytest.fixture(scope="session")
def head_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three models, exported (no manifest) and with their manifest embedded (``NAME+manifest``)."""
    folder = tmp_path_factory.mktemp("head-models")
    raw = {name: _export(module, folder / f"{name}.onnx", outputs) for name, (module, outputs) in _modules().items()}
    manifests = {
        "classifier": classifier_manifest(),
        "mask_score": mask_score_manifest(),
        "two_masks": two_mask_manifest(),
    }
    out = dict(raw)
    for name, path in raw.items():
        target = folder / f"{name}.embedded.onnx"
        _embed(onnx.load(str(path)), manifests[name], target)
        out[f"{name}+manifest"] = target
    return out


def sample_slices(count: int = 6, seed: int = 3) -> list[np.ndarray]:
    """Float32 32x32 slices with a bright blob that moves, so scores differ from slice to slice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = []
    for i in range(count):
        cy, cx = 8 + 3 * i, 20 - 2 * i
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (2 + i) ** 2)) * (1 + i)
        out.append((blob + rng.normal(0, 0.2, (SIZE, SIZE))).astype(np.float32))
    return out
