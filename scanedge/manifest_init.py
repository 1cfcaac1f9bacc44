"""Writing a manifest for a bring-your-own ONNX model: what the graph says, plus what only its authors know.

The graph gives tensor names, the layout (guessed from where a 1- or 3-channel axis sits) and, when the
input is static, the size; :class:`ManifestInitConfig` gives the rest (classes, intensity policy,
output kind). The draft is checked against the graph before anything is written, so a description
that contradicts the model is refused here rather than when the model is first served.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from scanedge._moved import forward_names
from scanedge.errors import ConfigError, ManifestMismatchError, ModelError
from scanedge.manifest import (
    Activation,
    Aggregation,
    AppliesTo,
    ClassSpec,
    ColorOrder,
    HeadSpec,
    InputRole,
    InputSpec,
    InputsSpec,
    IntensityPolicy,
    Interpolation,
    Layout,
    Manifest,
    OutputKind,
    OutputSpec,
    SeriesModelSpec,
    SizePolicy,
    check_model_io,
    embed_manifest,
    graph_sha256,
    load_onnx_model,
    sidecar_path,
)
from scanedge.model_graph import Dim, TensorInfo, graph_io

__all__ = [
    "DEFAULT_PALETTE",
    "ManifestInitConfig",
    "attach_series_model",
    "draft_manifest",
    "draft_manifest_with_notes",
    "guess_layout",
    "guess_score_activation",
    "write_manifest",
]

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

    - ``classes``: the mask's class names, background first; ``colors`` (RGB) and ``thresholds``: one per
      class or none (then :data:`DEFAULT_PALETTE` and 0.5). Empty: the model has no mask output (a
      classifier), and its 2-D outputs ([N, C]) become score heads.
    - ``score_classes``/``score_thresholds``: names (and thresholds, default 0.5) of the first score head's
      classes; ``score_activation``/``score_kind``: how its values read (default: guessed, see
      :func:`guess_score_activation`); ``score_output``: which output it is (default: every 2-D output is a
      score head); ``aggregation``: how its slices combine over a series; ``saliency_output``: a 4-D output
      that is the first score head's saliency map.
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
    classes: tuple[str, ...] = ()
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
    score_classes: tuple[str, ...] = ()
    score_thresholds: tuple[float, ...] = ()
    score_activation: Activation | None = None
    score_kind: OutputKind | None = None
    score_output: str | None = None
    aggregation: Aggregation = "max"
    saliency_output: str | None = None
    roles: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "score_classes", tuple(self.score_classes))
        object.__setattr__(self, "score_thresholds", tuple(self.score_thresholds))
        if self.score_thresholds and len(self.score_thresholds) != len(self.score_classes):
            raise ConfigError(
                f"score thresholds need one value per score class: {len(self.score_classes)} class(es), "
                f"{len(self.score_thresholds)} threshold(s)"
            )
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
    return draft_manifest_with_notes(model, options)[0]


_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}


def guess_score_activation(model: Any, output: TensorInfo) -> tuple[OutputKind, Activation, str]:
    """(kind, activation, why) for a 2-D score output: read from the graph when the output comes from a
    Softmax or Sigmoid node (through reshapes), else a guess: sigmoid for one class (a softmax over one
    value is constant), softmax for several (say sigmoid if the classes are independent labels)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(output.name)
    while node is not None and node.op_type in _PASS_THROUGH and node.input:
        node = producers.get(node.input[0])
    op = node.op_type if node is not None else ""
    if op == "Softmax":
        return "probabilities", "softmax", "read from the graph: the output comes from a Softmax node"
    if op == "Sigmoid":
        return "probabilities", "sigmoid", "read from the graph: the output comes from a Sigmoid node"
    if op == "LogSoftmax":
        return (
            "logits",
            "softmax",
            "read from the graph: log-probabilities from a LogSoftmax node (softmax restores them)",
        )
    channels = output.shape[1] if len(output.shape) == 2 else None
    if channels == 1:
        return "logits", "sigmoid", "one value per image: logits through a sigmoid (a softmax of one value is constant)"
    return (
        "logits",
        "softmax",
        "GUESSED: logits of mutually exclusive classes (softmax); if the classes are independent labels, "
        "pass --score-activation sigmoid",
    )


def _score_head(model: Any, out: TensorInfo, options: ManifestInitConfig, first: bool, notes: list[str]) -> HeadSpec:
    """A score head for a 2-D output, its activation read or guessed, its class names given or made up."""
    kind, activation, why = guess_score_activation(model, out)
    if first and options.score_activation is not None:
        activation, why = options.score_activation, "as given"
    if first and options.score_kind is not None:
        kind = options.score_kind
    channels = out.shape[1] if isinstance(out.shape[1], int) and out.shape[1] > 0 else None
    names = options.score_classes if first and options.score_classes else ()
    if not names:
        if channels is None:
            raise ManifestMismatchError(
                f"output {out.name!r} {list(out.shape)} has a dynamic class count; "
                "name its classes with --score-classes"
            )
        names = tuple(f"class{i}" for i in range(channels))
        notes.append(f"  could not infer the class names of {out.name!r}: called them class0..class{channels - 1}")
    thresholds = options.score_thresholds if first and options.score_thresholds else (0.5,) * len(names)
    palette = DEFAULT_PALETTE[1:]
    classes = tuple(ClassSpec(n, palette[i % len(palette)], t) for i, (n, t) in enumerate(zip(names, thresholds)))
    notes.append(f"{out.name} {list(out.shape)}: score head, {kind} with {activation} ({why})")
    return HeadSpec(
        out.name, "score", kind=kind, activation=activation, classes=classes, aggregation=options.aggregation
    )


def draft_manifest_with_notes(model: Any, options: ManifestInitConfig) -> tuple[Manifest, list[str]]:
    """:func:`draft_manifest`, plus one note per graph output: the role it was given (mask, score head,
    saliency) and why, or why it is not read, and what could not be inferred."""
    inputs, outputs = graph_io(model)
    if not inputs or not outputs:
        raise ModelError("the ONNX graph declares no inputs or no outputs")
    named = [i for _, i in options.roles if i]
    if named and len(named) != len(options.roles):
        raise ConfigError("give a graph input for every role, or for none (then the roles are channels)")
    inp = _pick(inputs, named[0] if named else options.input_name, "input")
    layout = options.layout or guess_layout(inp.shape)
    per_plane = 1 if options.color == "gray" else 3
    notes: list[str] = []
    mask: TensorInfo | None = None
    if options.output_name is not None or options.classes:
        four_d = [t for t in outputs if len(t.shape) == 4]
        default = four_d[0].name if four_d and options.output_name is None else options.output_name
        mask = _pick(outputs, default, "output")
        notes.append(f"{mask.name} {list(mask.shape)}: the mask (output), {options.kind} with {options.activation}")
    heads: list[HeadSpec] = []
    if options.score_output is not None:
        score_outputs = [_pick(outputs, options.score_output, "output")]
    elif options.score_classes or not options.classes:
        score_outputs = [t for t in outputs if len(t.shape) == 2 and (mask is None or t.name != mask.name)]
    else:
        score_outputs = []
    for i, out in enumerate(score_outputs):
        heads.append(_score_head(model, out, options, i == 0, notes))
    if options.saliency_output is not None:
        if not heads:
            raise ManifestMismatchError("a saliency map explains a score head, and this description has none")
        sal = _pick(outputs, options.saliency_output, "output")
        heads.append(HeadSpec(sal.name, "saliency", of=heads[0].name))
        notes.append(f"{sal.name} {list(sal.shape)}: saliency map of {heads[0].name} (as given)")
    if mask is None and not heads:
        raise ManifestMismatchError(
            "nothing to read: name the mask's classes (--classes background,...) for a segmentation model; a "
            f"classifier needs a 2-D [N, C] output, and this graph's outputs are "
            f"{[(t.name, list(t.shape)) for t in outputs]}"
        )
    used = {mask.name} if mask is not None else set()
    used |= {h.name for h in heads}
    for t in outputs:
        if t.name not in used:
            role = "a further mask or a saliency map" if len(t.shape) == 4 else f"a rank-{len(t.shape)} tensor"
            notes.append(f"{t.name} {list(t.shape)}: not read (looks like {role}; its role could not be inferred)")
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
        output=None if mask is None else OutputSpec(name=mask.name, kind=options.kind, activation=options.activation),
        classes=options.class_specs() if mask is not None else (),
        applies_to=options.applies_to,
        not_for_clinical_use=options.not_for_clinical_use,
        heads=tuple(heads),
        inputs=_inputs_section(options.roles),
    )
    check_model_io(manifest, [(t.name, t.shape) for t in inputs], [(t.name, t.shape) for t in outputs])
    return manifest, notes


def _inputs_section(roles: Sequence[tuple[str, str]]) -> InputsSpec | None:
    if not roles:
        return None
    named = any(i for _, i in roles)
    return InputsSpec(roles=tuple(InputRole(r, input=i) for r, i in roles), assembly="named" if named else "channels")


def _relative_name(volume: Path, folder: Path) -> str:
    """``volume``'s path relative to the manifest's ``folder`` as the manifest names it (``/``-separated);
    ConfigError for a file outside that folder (the manifest names its series model beside it or below)."""
    try:
        rel = volume.resolve().relative_to(folder.resolve())
    except ValueError:
        raise ConfigError(
            f"series model {volume} is not in the manifest's folder {folder} (or below it): the manifest names it "
            "by a relative path, so move or copy it beside the model first"
        ) from None
    return rel.as_posix()


def attach_series_model(
    manifest: Manifest,
    volume_path: str | os.PathLike[str],
    manifest_folder: str | os.PathLike[str],
    *,
    head: str | None = None,
    size: tuple[int, int, int] | None = None,
) -> tuple[Manifest, list[str]]:
    """``manifest`` with a score head's ``series_model`` section written from the 3-D ONNX graph at
    ``volume_path``, and one note per thing read, taken or guessed.

    The graph's first input gives ``input`` and its depth x height x width (``size`` when its dimensions are
    dynamic, or to confirm static ones); its output ([1, C] or [N, C]; the first 2-D one when there are
    several) gives ``output``, its class count checked against the head's. ``kind`` and ``activation`` are
    read from the graph when the output comes from a Softmax or Sigmoid node, else taken from the head. The
    path is written relative to ``manifest_folder`` (the folder of the file the manifest will be in), with
    the graph's sha256. ``head``: the score head's name (default: the only score head).

    Raises ConfigError for a missing file, a file outside the folder, or a dynamic size without ``size``;
    ManifestMismatchError when the graph contradicts the manifest (channels, classes, rank, dtype).
    """
    path = Path(volume_path)
    if not path.is_file():
        raise ConfigError(f"series model {path}: no such file")
    scores = [h for h in manifest.heads if h.role == "score"]
    if head is None:
        if len(scores) != 1:
            raise ConfigError(
                f"name the score head the series model answers for (HEAD=FILE): the model has {len(scores)} score "
                f"heads {[h.name for h in scores]}"
            )
        target = scores[0]
    else:
        found = [h for h in scores if h.name == head]
        if not found:
            raise ConfigError(
                f"no score head {head!r} to give a series model; the score heads are {[h.name for h in scores]}"
            )
        target = found[0]
    rel = _relative_name(path, Path(manifest_folder))
    model = load_onnx_model(path, load_external_data=True)
    inputs, outputs = graph_io(model)
    where = f"series model {path.name}"
    if not inputs or not outputs:
        raise ModelError(f"{where}: the ONNX graph declares no inputs or no outputs")
    inp = inputs[0]
    notes: list[str] = []
    if len(inputs) > 1:
        notes.append(f"{where}: {len(inputs)} inputs; using the first, {inp.name!r}")
    if len(inp.shape) != 5:
        raise ManifestMismatchError(
            f"{where}: input {inp.name!r} is {list(inp.shape)}; a series model takes [1, channels, depth, height, "
            "width]"
        )
    channels = manifest.input.channels_per_plane
    c = inp.shape[1]
    if isinstance(c, int) and c > 0 and c != channels:
        raise ManifestMismatchError(
            f"{where}: input {inp.name!r} has {c} channel(s); the model's {manifest.input.color} slices give {channels}"
        )
    declared = inp.shape[2:]
    static = all(isinstance(d, int) and d > 0 for d in declared)
    if size is not None:
        if static and tuple(declared) != tuple(size):
            raise ManifestMismatchError(
                f"{where}: input {inp.name!r} is {list(inp.shape)}; --series-size {'x'.join(map(str, size))} "
                "contradicts it"
            )
        dhw = size
        notes.append(f"{where}: volume {'x'.join(map(str, dhw))} (depth x height x width) as given")
    elif static:
        dhw = (int(declared[0]), int(declared[1]), int(declared[2]))  # type: ignore[arg-type]
        notes.append(f"{where}: volume {'x'.join(map(str, dhw))} (depth x height x width) read from the graph")
    else:
        raise ConfigError(
            f"{where}: input {inp.name!r} is {list(inp.shape)}; its depth, height or width is dynamic, so the "
            "volume size cannot be inferred: give --series-size DEPTHxHEIGHTxWIDTH"
        )
    two_d = [t for t in outputs if len(t.shape) == 2]
    if not two_d:
        raise ManifestMismatchError(
            f"{where}: no [1, classes] output; its outputs are {[(t.name, list(t.shape)) for t in outputs]}"
        )
    out = two_d[0]
    if len(outputs) > 1:
        notes.append(f"{where}: {len(outputs)} outputs; reading {out.name!r}, the first [N, C] one")
    n = out.shape[1]
    if isinstance(n, int) and n > 0 and n != len(target.classes):
        raise ManifestMismatchError(
            f"{where}: output {out.name!r} is {list(out.shape)}: {n} class(es), and head {target.name!r} has "
            f"{len(target.classes)} ({', '.join(c.name for c in target.classes)})"
        )
    if not isinstance(n, int) or n <= 0:
        notes.append(f"{where}: output {out.name!r} {list(out.shape)} has a dynamic class count; checked when loaded")
    for t in (inp, out):
        if not t.dtype.startswith("float"):
            raise ManifestMismatchError(f"{where}: {t.name!r} is {t.dtype}, not floating point")
    kind, activation, why = guess_score_activation(model, out)
    if not why.startswith("read from the graph"):
        kind, activation, why = target.kind, target.activation, f"as head {target.name!r} reads its slices"
    notes.append(f"{where}: output {out.name!r} {list(out.shape)}, {kind} with {activation} ({why})")
    spec = SeriesModelSpec(
        path=rel,
        depth=dhw[0],
        height=dhw[1],
        width=dhw[2],
        input=inp.name,
        output=out.name,
        kind=kind,
        activation=activation,
        onnx_sha256=graph_sha256(model),
    )
    notes.append(f"{where}: the series score of head {target.name!r}, path {rel!r} (relative to the manifest)")
    heads = tuple(replace(h, series_model=spec) if h.name == target.name else h for h in manifest.heads)
    return manifest.replace(heads=heads), notes


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
