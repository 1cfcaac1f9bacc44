"""Export a model or a TensorRT plan as a Triton Inference Server model repository entry.

For sites that outgrow one console: ``<repo>/<name>/config.pbtxt`` plus ``<repo>/<name>/1/model.onnx``
(platform ``onnxruntime_onnx``) or ``1/model.plan`` (``tensorrt_plan``). Tensor names, types and dims
come from the model's manifest; the manifest itself travels along as ``scanedge.manifest.json`` and as a
``parameters`` entry, so a scanedge client can preprocess and postprocess for Triton exactly as the
runtime does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from scanedge.engines import PLAN_SUFFIXES
from scanedge.errors import ConfigError, ConversionError
from scanedge.manifest import Manifest, load_manifest

__all__ = ["export_triton", "triton_config"]

_TYPE = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8"}


def _dims(manifest: Manifest, channels: int) -> list[int]:
    size = manifest.size
    h, w = (int(size.height), int(size.width)) if size.mode == "fixed" else (-1, -1)  # type: ignore[arg-type]
    return [1, channels, h, w] if manifest.input.layout == "NCHW" else [1, h, w, channels]


def triton_config(manifest: Manifest, platform: str, instances: int = 1, gpu: bool = False) -> str:
    """config.pbtxt text (batch dimension explicit: max_batch_size 0, as the models take batch 1)."""
    inp = manifest.input
    in_dims = _dims(manifest, inp.channels)
    outputs = []
    if manifest.output is not None:
        dims = (
            [1, manifest.output_channels, *in_dims[2:]]
            if inp.layout == "NCHW"
            else [1, manifest.output_channels, in_dims[1], in_dims[2]]
        )
        outputs.append((manifest.output.name, dims))
    for head in manifest.heads:  # every head the manifest reads must come back from the server
        if head.role == "score":
            outputs.append((head.name, [1, head.channels]))
        elif head.role == "mask":
            outputs.append((head.name, [1, head.channels, *(in_dims[2:] if inp.layout == "NCHW" else in_dims[1:3])]))
        else:
            outputs.append((head.name, [1, -1, -1, -1]))
    manifest_json = json.dumps(manifest.to_json(indent=None))
    return "\n".join(
        [
            f'name: "{manifest.name}"',
            f'platform: "{platform}"',
            "max_batch_size: 0",
            "input [",
            f'  {{ name: "{inp.name}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, in_dims))} ] }}',
            "]",
            "output [",
            ",\n".join(
                f'  {{ name: "{name}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, dims))} ] }}'
                for name, dims in outputs
            ),
            "]",
            f"instance_group [ {{ kind: {'KIND_GPU' if gpu else 'KIND_CPU'} count: {instances} }} ]",
            "version_policy: { specific: { versions: [ 1 ] } }",
            f'parameters: {{ key: "scanedge.manifest" value: {{ string_value: {manifest_json} }} }}',
            "",
        ]
    )


def export_triton(
    model: str | os.PathLike[str],
    repo: str | os.PathLike[str],
    *,
    manifest_path: str | os.PathLike[str] | None = None,
    instances: int = 1,
    force: bool = False,
) -> Path:
    """Write the repository entry; returns its folder.

    An entry that already holds version 1 of the model is refused (ConfigError) unless ``force``: a Triton
    server polling the repository would swap the deployed model for this one without anyone deciding to.
    """
    path = Path(model)
    manifest, _ = load_manifest(path, manifest_path)
    is_plan = path.suffix.lower() in PLAN_SUFFIXES
    if path.suffix.lower() not in (".onnx", *PLAN_SUFFIXES):
        raise ConversionError(f"{path.name} is neither an ONNX model nor a TensorRT plan")
    entry = Path(repo) / manifest.name
    version = entry / "1"
    existing = sorted(p.name for p in version.glob("model.*")) if version.is_dir() else []
    if existing and not force:
        raise ConfigError(
            f"{version} already holds {existing[0]} of model {manifest.name!r}; replacing a deployed model must be "
            "deliberate: pass --force (export_triton(force=True)), or export into another repository"
        )
    version.mkdir(parents=True, exist_ok=True)
    for name in existing:  # a plan replacing an ONNX model (or the reverse) must not leave both behind
        (version / name).unlink()
    shutil.copyfile(path, version / ("model.plan" if is_plan else "model.onnx"))
    platform = "tensorrt_plan" if is_plan else "onnxruntime_onnx"
    (entry / "config.pbtxt").write_text(triton_config(manifest, platform, instances, gpu=is_plan))
    (entry / "scanedge.manifest.json").write_text(manifest.to_json() + "\n")
    return entry
