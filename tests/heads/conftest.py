"""Multi-head test models, built with torch and exported to ONNX: a classifier with a saliency map, a mask
plus score model, and a two-mask model. Small (32x32 input), seeded, and written once per session. Where
torch is not installed (it is an optional extra) the same networks are written with onnx.helper instead."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from scanedge.manifest import ClassSpec, HeadSpec, InputSpec, IntensityPolicy, Manifest, OutputSpec, SizePolicy
from scanedge.manifest import embed_manifest as _embed

SIZE = 32


def _torch():
    import torch

    return torch


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


def _helper_models() -> dict[str, onnx.ModelProto]:
    """The networks of :func:`_modules` as ONNX graphs written by hand (seeded random weights)."""
    rng = np.random.default_rng(7)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.normal(0, 0.5, shape)).astype(np.float32), name)

    def const(name: str, value: float) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(value, np.float32), name)

    features = [
        helper.make_node("Conv", ["image", "fw", "fb"], ["fc"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["fc"], ["f"]),
    ]

    def model(nodes, weights, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(
            features + nodes,
            "heads",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, SIZE, SIZE])],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in outputs],
            initializer=weights,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m

    classifier = model(
        [
            helper.make_node("AveragePool", ["f"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
            helper.make_node("Conv", ["pooled", "cw", "cb"], ["cam"], kernel_shape=[1, 1]),
            helper.make_node("ReduceMean", ["cam"], ["mean"], axes=[2, 3], keepdims=0),
            helper.make_node("Mul", ["mean", "three"], ["class_logits"]),
        ],
        [w("fw", 6, 1, 3, 3), w("fb", 6), w("cw", 3, 6, 1, 1), w("cb", 3), const("three", 3.0)],
        [("class_logits", [1, 3]), ("cam", [1, 3, 8, 8])],
    )
    mask_score = model(
        [
            helper.make_node("Conv", ["f", "mw", "mb"], ["logits"], kernel_shape=[1, 1]),
            helper.make_node("ReduceMean", ["f"], ["mean"], axes=[2, 3], keepdims=0),
            helper.make_node("Gemm", ["mean", "sw", "sb"], ["raw"], transB=1),
            helper.make_node("Mul", ["raw", "four"], ["abnormal_logit"]),
        ],
        [
            w("fw", 4, 1, 3, 3),
            w("fb", 4),
            w("mw", 2, 4, 1, 1),
            w("mb", 2),
            w("sw", 1, 4),
            w("sb", 1),
            const("four", 4.0),
        ],
        [("logits", [1, 2, SIZE, SIZE]), ("abnormal_logit", [1, 1])],
    )
    two_masks = model(
        [
            helper.make_node("Conv", ["f", "lw", "lb"], ["logits"], kernel_shape=[1, 1]),
            helper.make_node("Conv", ["f", "ow", "ob"], ["raw"], kernel_shape=[1, 1]),
            helper.make_node("Mul", ["raw", "three"], ["organs"]),
        ],
        [
            w("fw", 4, 1, 3, 3),
            w("fb", 4),
            w("lw", 2, 4, 1, 1),
            w("lb", 2),
            w("ow", 2, 4, 1, 1),
            w("ob", 2),
            const("three", 3.0),
        ],
        [("logits", [1, 2, SIZE, SIZE]), ("organs", [1, 2, SIZE, SIZE])],
    )
    return {"classifier": classifier, "mask_score": mask_score, "two_masks": two_masks}


@pytest.fixture(scope="session")
def head_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three models, exported (no manifest) and with their manifest embedded (``NAME+manifest``)."""
    folder = tmp_path_factory.mktemp("head-models")
    try:
        modules = _modules()
    except ModuleNotFoundError:
        modules = {}
    if modules:
        raw = {name: _export(m, folder / f"{name}.onnx", outputs) for name, (m, outputs) in modules.items()}
    else:  # the same three networks written with onnx.helper, so that a machine without torch tests them too
        raw = {}
        for name, model in _helper_models().items():
            raw[name] = folder / f"{name}.onnx"
            onnx.save(model, str(raw[name]))
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


#: the test series model's input: depth x height x width (slices are 32x32; planes are resized to 16x16)
VOLUME_SIZE = (6, 16, 16)


def volume_classifier(path: Path, scale: float = 3.0) -> Path:
    """A small 3-D classifier (Conv3d -> ReLU -> global mean -> Linear), input ``volume`` [1, 1, 6, 16, 16],
    output ``abnormal_3d`` [1, 1] (one logit), exported by torch (skips where torch is not installed)."""
    torch = pytest.importorskip("torch")

    class Volume(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Conv3d(1, 4, 3, padding=1)
            self.score = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.score(torch.relu(self.features(x)).mean(dim=(2, 3, 4))) * scale

    torch.manual_seed(11)
    module = Volume().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(1, 1, *VOLUME_SIZE),),
            str(path),
            input_names=["volume"],
            output_names=["abnormal_3d"],
            dynamo=False,
            opset_version=17,
        )
    return path


def series_model_manifest(**series: object) -> Manifest:
    """:func:`mask_score_manifest` (max aggregation, z-scored slices) whose score head has the series model
    ``volume_classifier.onnx`` beside it (``series`` overrides its declaration)."""
    base = mask_score_manifest("max").replace(intensity=IntensityPolicy(mode="zscore"))
    head = base.heads[0].to_dict()
    d, h, w = VOLUME_SIZE
    head["series_model"] = {
        "path": "volume_classifier.onnx",
        "depth": d,
        "height": h,
        "width": w,
        "input": "volume",
        "output": "abnormal_3d",
        "activation": "sigmoid",
        **series,
    }
    data = base.to_dict()
    data["heads"] = [head]
    return Manifest.from_dict(data)


@pytest.fixture(scope="session")
def series_model_dir(head_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``model.onnx`` (the mask + score model, :func:`series_model_manifest` embedded, the
    series model's sha256 in it) and ``volume_classifier.onnx`` beside it."""
    from scanedge.manifest import graph_sha256

    folder = tmp_path_factory.mktemp("series-model")
    volume = volume_classifier(folder / "volume_classifier.onnx")
    manifest = series_model_manifest(onnx_sha256=graph_sha256(onnx.load(str(volume))))
    _embed(onnx.load(str(head_models["mask_score"])), manifest, folder / "model.onnx")
    return folder


def expected_series_probability(folder: Path, slices_in_order: list[np.ndarray]) -> float:
    """The series model's probability for slices given in their order along the normal, computed without
    scanedge: each slice resized bilinearly to 16x16 (half-pixel centres) and z-scored, the stack resampled
    trilinearly to the model's depth (torch ``interpolate``, ``align_corners=False``), run through an
    InferenceSession, sigmoid."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    _, h, w = VOLUME_SIZE
    planes = []
    for pixels in slices_in_order:
        t = torch.from_numpy(pixels.astype(np.float32))[None, None]
        p = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
        p = p.astype(np.float64)
        planes.append(((p - p.mean()) / max(p.std(), 1e-6)).astype(np.float32))
    stack = torch.from_numpy(np.stack(planes))[None, None]  # [1, 1, N, h, w]
    volume = torch.nn.functional.interpolate(stack, size=VOLUME_SIZE, mode="trilinear", align_corners=False)
    session = ort.InferenceSession(str(folder / "volume_classifier.onnx"), providers=["CPUExecutionProvider"])
    (logit,) = session.run(["abnormal_3d"], {"volume": volume.numpy().astype(np.float32)})
    return float(1.0 / (1.0 + np.exp(-float(logit[0, 0]))))


def nan_volume_classifier(path: Path) -> Path:
    """A series model with the test model's input and output that always answers NaN (0 / 0): a real faulty
    graph, for the failure path without patching scanedge."""
    d, h, w = VOLUME_SIZE
    zero = numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["volume"], ["mean"], axes=[2, 3, 4], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Div", ["nothing", "zero"], ["abnormal_3d"]),
        ],
        "nan-volume",
        [helper.make_tensor_value_info("volume", TensorProto.FLOAT, [1, 1, d, h, w])],
        [helper.make_tensor_value_info("abnormal_3d", TensorProto.FLOAT, [1, 1])],
        initializer=[zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def failing_series_model_dir(head_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As :func:`series_model_dir`, with a series model that answers NaN and the model named ``test-nan-series``."""
    folder = tmp_path_factory.mktemp("nan-series-model")
    nan_volume_classifier(folder / "volume_classifier.onnx")
    manifest = series_model_manifest().replace(name="test-nan-series")
    _embed(onnx.load(str(head_models["mask_score"])), manifest, folder / "model.onnx")
    return folder
