"""Writing a manifest for a bring-your-own ONNX model: what the graph says, plus what only its authors know.

The graph gives tensor names, the layout (guessed from where a 1- or 3-channel axis sits) and, when the
input is static, the size; :class:`ManifestInitConfig` gives the rest (classes, intensity policy,
output kind). The draft is checked against the graph before anything is written, so a description
that contradicts the model is refused here rather than when the model is first served.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scanedge._moved import forward_names
from scanedge.errors import ConfigError, ManifestMismatchError, ModelError
from scanedge.manifest import (
    Activation,
    AppliesTo,
    ClassSpec,
    ColorOrder,
    InputRole,
    InputSpec,
    InputsSpec,
    IntensityPolicy,
    Interpolation,
    Layout,
    Manifest,
    OutputKind,
    OutputSpec,
    SizePolicy,
    check_model_io,
    embed_manifest,
    graph_sha256,
    sidecar_path,
)
from scanedge.model_graph import Dim, TensorInfo, graph_io

__all__ = ["DEFAULT_PALETTE", "ManifestInitConfig", "draft_manifest", "guess_layout", "write_manifest"]

#: Class colours (RGB) when none are given: black background, then colours that stay apart on grey images.
DEFAULT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (255, 40, 40),
    (40, 200, 255),
    (255, 220, 0),
    (60, 220, 90),
    (200, 80, 255),
    (255, 140, 0),
)


@dataclass(frozen=True)
class ManifestInitConfig:
    """What the graph does not say about a model. Empty or None fields are taken from the graph or defaults.

    - ``classes``: class names, background first; ``colors`` (RGB) and ``thresholds``: one per class
      or none (then :data:`DEFAULT_PALETTE` and 0.5).
    - ``input_name``/``output_name``: which tensors to use (default: the first input/output).
    - ``layout``: NCHW or NHWC (default: guessed from the input shape, see :func:`guess_layout`).
    - ``color``/``context_slices``: grey or RGB/BGR planes, and neighbours on each side for 2.5D models;
      together they fix the input's channel count.
    - ``size``: (height, width) the model takes; default: the input's static size, else ``size_mode``
      (``pad`` or ``multiple`` of ``multiple``) for dynamic height/width.
    - ``name``, ``version``, ``description``, ``intended_use``: the manifest's fields of the same names.
    - ``intensity``, ``kind``, ``activation``, ``interpolation``: as in the manifest (docs/manifest.md).
    - ``applies_to``: the images the model was made for (others are refused); ``not_for_clinical_use``:
      mark what scanedge writes for this model as not for clinical use.
    - ``roles``: a model that takes several series of one study: (role, graph input) per role, reference
      first; with no graph input names the roles are channels of the one input, in this order (manifest
      ``inputs``; recognition rules and per-role intensity are then edited in the JSON).

    Raises ConfigError when ``colors`` or ``thresholds`` do not give one value per class.
    """

    name: str
    classes: tuple[str, ...]
    version: str = "1.0.0"
    description: str = ""
    intended_use: str = ""
    colors: tuple[tuple[int, int, int], ...] = ()
    thresholds: tuple[float, ...] = ()
    input_name: str | None = None
    output_name: str | None = None
    layout: Layout | None = None
    color: ColorOrder = "gray"
    context_slices: int = 0
    size: tuple[int, int] | None = None
    size_mode: Literal["multiple", "pad"] = "pad"
    multiple: int = 32
    interpolation: Interpolation = "area"
    intensity: IntensityPolicy = field(default_factory=IntensityPolicy)
    kind: OutputKind = "logits"
    activation: Activation = "softmax"
    applies_to: AppliesTo = field(default_factory=AppliesTo)
    not_for_clinical_use: bool = False
    roles: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "roles", tuple((str(r), str(i)) for r, i in self.roles))
        object.__setattr__(self, "colors", tuple(tuple(c) for c in self.colors))
        object.__setattr__(self, "thresholds", tuple(self.thresholds))
        n = len(self.classes)
        if (self.colors and len(self.colors) != n) or (self.thresholds and len(self.thresholds) != n):
            raise ConfigError(
                f"colours and thresholds need one value per class (background included): {n} classes, "
                f"{len(self.colors) or 'no'} colour(s), {len(self.thresholds) or 'no'} threshold(s)"
            )

    def class_specs(self) -> tuple[ClassSpec, ...]:
        """The classes with their colours and thresholds, defaults filled in."""
        colors = self.colors or tuple(DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)] for i in range(len(self.classes)))
        thresholds = self.thresholds or (0.5,) * len(self.classes)
        return tuple(ClassSpec(n, c, t) for n, c, t in zip(self.classes, colors, thresholds))


def guess_layout(shape: Sequence[Dim]) -> Layout:
    """NHWC when a rank-4 shape has 1 or 3 in its last axis and not in its second; NCHW otherwise."""
    if len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3):
        return "NHWC"
    return "NCHW"


def _size_policy(shape: Sequence[Dim], layout: Layout, options: ManifestInitConfig) -> SizePolicy:
    h_axis, w_axis = (2, 3) if layout == "NCHW" else (1, 2)
    if options.size is not None:
        height, width = options.size
        return SizePolicy(mode="fixed", height=height, width=width, interpolation=options.interpolation)
    h, w = (shape[h_axis], shape[w_axis]) if len(shape) == 4 else (None, None)
    if isinstance(h, int) and isinstance(w, int):
        return SizePolicy(mode="fixed", height=h, width=w, interpolation=options.interpolation)
    return SizePolicy(
        mode=options.size_mode, height=None, width=None, multiple=options.multiple, interpolation=options.interpolation
    )


def _pick(tensors: Sequence[TensorInfo], name: str | None, what: str) -> TensorInfo:
    if name is None:
        return tensors[0]
    for t in tensors:
        if t.name == name:
            return t
    raise ManifestMismatchError(f"the graph has no {what} named {name!r}; its {what}s are {[t.name for t in tensors]}")


def draft_manifest(model: Any, options: ManifestInitConfig) -> Manifest:
    """A manifest for ``model`` (an ``onnx.ModelProto``) from its graph and ``options``, checked against
    the graph's inputs and outputs (ManifestMismatchError when they contradict each other).

    The graph hash is not stamped yet: :func:`write_manifest` does that when it writes.
    """
    inputs, outputs = graph_io(model)
    if not inputs or not outputs:
        raise ModelError("the ONNX graph declares no inputs or no outputs")
    named = [i for _, i in options.roles if i]
    if named and len(named) != len(options.roles):
        raise ConfigError("give a graph input for every role, or for none (then the roles are channels)")
    inp = _pick(inputs, named[0] if named else options.input_name, "input")
    out = _pick(outputs, options.output_name, "output")
    layout = options.layout or guess_layout(inp.shape)
    per_plane = 1 if options.color == "gray" else 3
    manifest = Manifest(
        name=options.name,
        version=options.version,
        description=options.description,
        intended_use=options.intended_use,
        input=InputSpec(
            name=inp.name,
            layout=layout,
            channels=(2 * options.context_slices + 1) * per_plane,
            color=options.color,
            context_slices=options.context_slices,
        ),
        size=_size_policy(inp.shape, layout, options),
        intensity=options.intensity,
        output=OutputSpec(name=out.name, kind=options.kind, activation=options.activation),
        classes=options.class_specs(),
        applies_to=options.applies_to,
        not_for_clinical_use=options.not_for_clinical_use,
        inputs=_inputs_section(options.roles),
    )
    check_model_io(manifest, [(t.name, t.shape) for t in inputs], [(t.name, t.shape) for t in outputs])
    return manifest


def _inputs_section(roles: Sequence[tuple[str, str]]) -> InputsSpec | None:
    if not roles:
        return None
    named = any(i for _, i in roles)
    return InputsSpec(roles=tuple(InputRole(r, input=i) for r, i in roles), assembly="named" if named else "channels")


def write_manifest(
    model: Any,
    manifest: Manifest,
    model_path: str | os.PathLike[str],
    *,
    sidecar: bool = False,
    out_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Stamp ``manifest`` with the graph's sha256 and store it; returns the file written.

    ``sidecar``: write ``MODEL.onnx.manifest.json`` beside ``model_path`` and leave the model untouched.
    Otherwise embed it into the model and save that to ``out_path`` (default: ``model_path``, in place).
    """
    if sidecar:
        path = sidecar_path(model_path)
        path.write_text(manifest.replace(onnx_sha256=graph_sha256(model)).to_json() + "\n")
        return path
    target = Path(out_path if out_path is not None else model_path)
    embed_manifest(model, manifest, target)
    return target


#: earlier names of configuration classes (every frozen configuration is now called ...Config)
__getattr__ = forward_names(
    __name__,
    {
        "ManifestInitOptions": ("scanedge.manifest_init", "ManifestInitConfig"),
    },
)
