"""``scanedge inspect`` and ``scanedge manifest init``: what a model declares, and describing one once."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from scanedge.cli.arguments import literal, parse_color, parse_numbers, parse_size, split_list
from scanedge.console import make_console

if TYPE_CHECKING:
    from scanedge.manifest import IntensityPolicy

__all__ = ["add_parsers", "cmd_inspect", "cmd_manifest_init"]


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print a model's inputs, outputs and manifest; exit 1 when the manifest was written for another graph."""
    from scanedge.model_graph import inspect_model

    info = inspect_model(args.model, args.manifest)
    status = 0 if info.manifest_matches_graph else 1
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return status
    console = make_console(stderr=False)
    opset = "?" if info.opset is None else info.opset
    console.print(f"[bold]{literal(args.model)}[/]  opset {opset}, graph sha256 {info.graph_sha256}")
    for kind, tensors in (("input", info.inputs), ("output", info.outputs)):
        for t in tensors:
            console.print(f"  {kind:6} {literal(t.name)}: {t.dtype} {literal(list(t.shape))}")
    mismatch = "" if info.manifest_matches_graph else " [red]written for another graph (sha256 differs)[/]"
    console.print(f"manifest ({info.manifest_source}):{mismatch}")
    console.print_json(info.manifest.to_json())
    return status


def _intensity(args: argparse.Namespace) -> IntensityPolicy:
    from scanedge.manifest import IntensityPolicy

    window = parse_numbers(args.window, "--window", 2)
    percentiles = parse_numbers(args.percentiles, "--percentiles", 2)
    return IntensityPolicy(
        mode=args.intensity,
        apply_rescale=not args.no_rescale,
        window_center=window[0] if window else None,
        window_width=window[1] if window else None,
        **({"percentile_low": percentiles[0], "percentile_high": percentiles[1]} if percentiles else {}),
        scale=args.scale,
        mean=parse_numbers(args.mean, "--mean"),
        std=parse_numbers(args.std, "--std"),
    )


def cmd_manifest_init(args: argparse.Namespace) -> int:
    """Draft a manifest from the graph and the options, check it against the graph, embed it (or a sidecar)."""
    from scanedge.manifest import load_onnx_model
    from scanedge.manifest_init import ManifestInitOptions, draft_manifest, write_manifest

    options = ManifestInitOptions(
        name=args.name,
        classes=split_list(args.classes),
        version=args.version,
        description=args.description,
        intended_use=args.intended_use,
        colors=tuple(parse_color(c) for c in split_list(args.colors)),
        thresholds=parse_numbers(args.thresholds, "--thresholds"),
        input_name=args.input_name,
        output_name=args.output_name,
        layout=args.layout,
        color=args.color,
        context_slices=args.context,
        size=parse_size(args.size, "--size") if args.size else None,
        size_mode=args.size_mode,
        multiple=args.multiple,
        interpolation=args.interpolation,
        intensity=_intensity(args),
        kind=args.kind,
        activation=args.activation,
    )
    model = load_onnx_model(args.model, load_external_data=True)
    manifest = draft_manifest(model, options)
    written = write_manifest(model, manifest, args.model, sidecar=args.sidecar, out_path=args.out)
    console = make_console()
    if args.sidecar:
        console.print(f"wrote {literal(written)}")
    else:
        console.print(f"embedded the manifest into {literal(written)}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``inspect`` and ``manifest init``."""
    p = sub.add_parser("inspect", help="print a model's inputs, outputs and manifest")
    p.add_argument("model", type=Path)
    p.add_argument("--manifest", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("manifest", help="write manifests for bring-your-own models")
    msub = p.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")
    m = msub.add_parser("init", help="describe an ONNX model and embed the manifest (or write a sidecar)")
    m.add_argument("model", type=Path)
    m.add_argument("--name", required=True)
    m.add_argument("--classes", required=True, help="comma-separated class names, background first")
    m.add_argument("--version", default="1.0.0")
    m.add_argument("--description", default="")
    m.add_argument("--intended-use", default="")
    m.add_argument("--colors", help="RRGGBB per class, comma-separated")
    m.add_argument("--thresholds", help="probability threshold per class, comma-separated")
    m.add_argument("--input-name")
    m.add_argument("--output-name")
    m.add_argument("--layout", choices=("NCHW", "NHWC"))
    m.add_argument("--color", choices=("gray", "rgb", "bgr"), default="gray")
    m.add_argument("--context", type=int, default=0, help="neighbouring slices on each side (2.5D)")
    m.add_argument("--size", help="HxW the model takes (default: from a static input shape)")
    m.add_argument("--size-mode", choices=("multiple", "pad"), default="pad", help="for dynamic height/width")
    m.add_argument("--multiple", type=int, default=32)
    m.add_argument("--interpolation", choices=("linear", "area", "nearest", "cubic"), default="area")
    m.add_argument("--intensity", choices=("none", "window", "percentile", "zscore", "scale"), default="zscore")
    m.add_argument("--no-rescale", action="store_true", help="do not apply DICOM rescale slope/intercept")
    m.add_argument("--window", help="CENTER,WIDTH for --intensity window")
    m.add_argument("--percentiles", help="LOW,HIGH for --intensity percentile")
    m.add_argument("--scale", type=float, default=1.0)
    m.add_argument("--mean", help="per-channel means for --intensity scale")
    m.add_argument("--std", help="per-channel standard deviations for --intensity scale")
    m.add_argument("--kind", choices=("logits", "probabilities"), default="logits")
    m.add_argument("--activation", choices=("softmax", "sigmoid"), default="softmax")
    m.add_argument("--sidecar", action="store_true", help="write MODEL.onnx.manifest.json instead of embedding")
    m.add_argument("--out", type=Path, help="write the model with its manifest here (default: in place)")
    m.set_defaults(func=cmd_manifest_init)
