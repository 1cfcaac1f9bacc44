"""``scanedge inspect`` and ``scanedge manifest init``: what a model declares, and describing one once."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from scanedge.cli.arguments import literal, parse_color, parse_numbers, parse_size, split_list
from scanedge.console import make_console, print_error
from scanedge.errors import ConfigError

if TYPE_CHECKING:
    from scanedge.manifest import AppliesTo, IntensityPolicy, Manifest

__all__ = ["add_parsers", "cmd_inspect", "cmd_manifest_init"]


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print a model's inputs, outputs and manifest on stdout.

    Exit 1 when the manifest was written for another graph; 2 (after the inputs and outputs, which are what
    a manifest is written from) when the model has none.
    """
    from scanedge.model_graph import inspect_model

    info = inspect_model(args.model, args.manifest)
    status = 0 if info.manifest_matches_graph else 1
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
    else:
        console = make_console(stderr=False)
        opset = "?" if info.opset is None else info.opset
        console.print(f"[bold]{literal(args.model)}[/]  opset {opset}, graph sha256 {info.graph_sha256}")
        for kind, tensors in (("input", info.inputs), ("output", info.outputs)):
            for t in tensors:
                console.print(f"  {kind:6} {literal(t.name)}: {t.dtype} {literal(list(t.shape))}")
        if info.manifest is not None:
            mismatch = "" if info.manifest_matches_graph else " [red]written for another graph (sha256 differs)[/]"
            console.print(f"scope: {literal(info.manifest.applies_to.describe())}")
            console.print(f"manifest ({info.manifest_source}):{mismatch}")
            console.print_json(info.manifest.to_json())
    if info.manifest_missing is not None:
        print_error(info.manifest_missing.message, info.manifest_missing.code)
        return 2
    return status


def _roles(text: str | None) -> tuple[tuple[str, str], ...]:
    """``flair,t1`` (channels) or ``flair=in_flair,t1=in_t1`` (one graph input per role)."""
    return tuple((item.partition("=")[0].strip(), item.partition("=")[2].strip()) for item in split_list(text))


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


def _applies_to(args: argparse.Namespace) -> AppliesTo:
    from scanedge.manifest import AppliesTo

    spacing = parse_numbers(args.pixel_spacing, "--pixel-spacing", 2)
    thickness = parse_numbers(args.slice_thickness, "--slice-thickness", 2)
    return AppliesTo(
        modalities=split_list(args.modalities),
        body_parts=split_list(args.body_parts),
        image_type=split_list(args.image_type),
        series_description=args.series_description or "",
        photometric=split_list(args.photometric),
        pixel_spacing_mm=(spacing[0], spacing[1]) if spacing else None,
        slice_thickness_mm=(thickness[0], thickness[1]) if thickness else None,
    )


def _series_model(args: argparse.Namespace, manifest: Manifest) -> tuple[Manifest, list[str]]:
    """``--series-model [HEAD=]FILE`` (and ``--series-size``): the score head's 3-D model, read from its graph,
    named relative to the folder the manifest is written in."""
    from scanedge.manifest_init import attach_series_model

    head, sep, file = args.series_model.partition("=")
    if not sep:
        head, file = "", head
    size = None
    if args.series_size:
        parts = args.series_size.lower().split("x")
        if len(parts) != 3 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            raise ConfigError(f"--series-size takes DEPTHxHEIGHTxWIDTH, e.g. 32x64x64; got {args.series_size!r}")
        size = (int(parts[0]), int(parts[1]), int(parts[2]))
    folder = Path(args.out).parent if args.out is not None and not args.sidecar else Path(args.model).parent
    return attach_series_model(manifest, Path(file.strip()), folder, head=head.strip() or None, size=size)


def cmd_manifest_init(args: argparse.Namespace) -> int:
    """Draft a manifest from the graph and the options, check it against the graph, embed it (or a sidecar)."""
    from scanedge.manifest import load_onnx_model
    from scanedge.manifest_init import ManifestInitConfig, draft_manifest_with_notes, write_manifest

    options = ManifestInitConfig(
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
        applies_to=_applies_to(args),
        not_for_clinical_use=args.not_for_clinical_use,
        score_classes=split_list(args.score_classes),
        score_thresholds=parse_numbers(args.score_thresholds, "--score-thresholds"),
        score_activation=args.score_activation,
        score_kind=args.score_kind,
        score_output=args.score_output,
        aggregation=args.aggregation,
        saliency_output=args.saliency_output,
        roles=_roles(args.roles),
    )
    model = load_onnx_model(args.model, load_external_data=True)
    manifest, notes = draft_manifest_with_notes(model, options)
    if args.series_model:
        manifest, more = _series_model(args, manifest)
        notes += more
    elif args.series_size:
        raise ConfigError("--series-size is the size of a series model's volume: give --series-model too")
    written = write_manifest(model, manifest, args.model, sidecar=args.sidecar, out_path=args.out)
    console = make_console()
    for note in notes:  # each graph output: the role given to it and why, or why it is not read
        console.print(literal(note))
    if args.sidecar:
        console.print(f"wrote {literal(written)}")
    else:
        console.print(f"embedded the manifest into {literal(written)}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``inspect`` and ``manifest init``."""
    p = sub.add_parser("inspect", help="print a model's inputs, outputs and manifest")
    p.add_argument("model", type=Path, help="ONNX model")
    p.add_argument(
        "--manifest", type=Path, default=None, help="manifest JSON to show instead of the model's own (default: none)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("manifest", help="write manifests for bring-your-own models")
    msub = p.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")
    m = msub.add_parser("init", help="describe an ONNX model and embed the manifest (or write a sidecar)")
    m.add_argument("model", type=Path, help="ONNX model to describe")
    g = m.add_argument_group("identity")
    g.add_argument("--name", required=True, help="model name shown in results and reports (required)")
    g.add_argument(
        "--classes",
        default="",
        help="the mask's class names, background first, comma-separated (needed for a segmentation model; "
        "default: none, a classifier whose [N, C] outputs become score heads)",
    )
    g.add_argument("--version", default="1.0.0", help="model version (default: 1.0.0)")
    g.add_argument("--description", default="", help="what the model does (default: empty)")
    g.add_argument("--intended-use", default="", help="what it may be used for, printed on load (default: empty)")
    g.add_argument(
        "--not-for-clinical-use",
        action="store_true",
        help="burn 'not for clinical use' into the montages and overlay files written for it (default: off)",
    )
    g.add_argument("--colors", help="RRGGBB per class, comma-separated (default: a palette readable on grey)")
    g.add_argument("--thresholds", help="probability threshold per class, comma-separated (default: 0.5 each)")
    g = m.add_argument_group("tensors")
    g.add_argument("--input-name", help="input tensor (default: the graph's first input)")
    g.add_argument("--output-name", help="output tensor (default: the graph's first output)")
    g.add_argument("--layout", choices=("NCHW", "NHWC"), help="input layout (default: guessed from its shape)")
    g.add_argument("--color", choices=("gray", "rgb", "bgr"), default="gray", help="input planes (default: gray)")
    g.add_argument("--context", type=int, default=0, help="neighbouring slices on each side, 2.5D (default: 0)")
    g.add_argument("--size", help="HxW the model takes (default: from a static input shape)")
    g.add_argument(
        "--roles",
        help="several series of one study as input, reference first: ROLE,ROLE (channels of the input, in order) "
        "or ROLE=INPUT,ROLE=INPUT (one graph input each), e.g. flair,t1 (default: one series)",
    )
    g.add_argument(
        "--size-mode", choices=("multiple", "pad"), default="pad", help="for dynamic height/width (default: pad)"
    )
    g.add_argument("--multiple", type=int, default=32, help="stride for --size-mode (default: 32)")
    g.add_argument(
        "--interpolation",
        choices=("linear", "area", "nearest", "cubic"),
        default="area",
        help="how slices are resized (default: area)",
    )
    g.add_argument(
        "--kind", choices=("logits", "probabilities"), default="logits", help="what the output holds (default: logits)"
    )
    g.add_argument(
        "--activation", choices=("softmax", "sigmoid"), default="softmax", help="output activation (default: softmax)"
    )
    g = m.add_argument_group("classification (score heads: [N, C] outputs)")
    g.add_argument("--score-classes", default="", help="the score head's class names (default: class0, class1, ...)")
    g.add_argument("--score-thresholds", help="probability per score class to decide it present (default: 0.5 each)")
    g.add_argument(
        "--score-activation",
        choices=("softmax", "sigmoid"),
        help="softmax (exclusive classes) or sigmoid (independent labels) (default: read from the graph or guessed)",
    )
    g.add_argument(
        "--score-kind", choices=("logits", "probabilities"), help="what the score output holds (default: as guessed)"
    )
    g.add_argument("--score-output", help="the score output (default: every 2-D output is a score head)")
    g.add_argument(
        "--aggregation",
        choices=("max", "mean", "noisy_or"),
        default="max",
        help="how slice scores combine over a series (default: max)",
    )
    g.add_argument("--saliency-output", help="a 4-D output that is the score head's saliency map (default: none)")
    g.add_argument(
        "--series-model",
        metavar="[HEAD=]FILE",
        help="a 3-D ONNX model of the whole series whose answer is the score head's series score, in the model's "
        "folder or below; HEAD: which score head (default: the only one) (default: none)",
    )
    g.add_argument(
        "--series-size",
        metavar="DxHxW",
        help="the series model's volume, depth x height x width, when its input is dynamic (default: from its graph)",
    )
    g = m.add_argument_group("intensity")
    g.add_argument(
        "--intensity",
        choices=("none", "window", "percentile", "zscore", "scale"),
        default="zscore",
        help="normalisation of pixel values (default: zscore)",
    )
    g.add_argument(
        "--no-rescale", action="store_true", help="do not apply DICOM rescale slope/intercept (default: off)"
    )
    g.add_argument("--window", help="CENTER,WIDTH for --intensity window (default: the slice's own window)")
    g.add_argument("--percentiles", help="LOW,HIGH for --intensity percentile (default: 0.5,99.5)")
    g.add_argument("--scale", type=float, default=1.0, help="factor for --intensity scale (default: 1)")
    g.add_argument("--mean", help="per-channel means for --intensity scale (default: none)")
    g.add_argument("--std", help="per-channel standard deviations for --intensity scale (default: none)")
    g = m.add_argument_group("scope: the images the model is made for (others are refused; default: any image)")
    g.add_argument("--modalities", help="accepted DICOM modalities, e.g. MR or CT,PT (default: any)")
    g.add_argument("--body-parts", help="accepted Body Part Examined values, e.g. BRAIN,HEAD (default: any)")
    g.add_argument("--image-type", help="values Image Type must contain, e.g. ORIGINAL,PRIMARY (default: any)")
    g.add_argument("--series-description", help="regular expression the series description must match (default: any)")
    g.add_argument("--photometric", help="accepted photometric interpretations, e.g. MONOCHROME2 (default: any)")
    g.add_argument("--pixel-spacing", help="MIN,MAX in-plane pixel spacing in mm (default: any)")
    g.add_argument("--slice-thickness", help="MIN,MAX slice thickness in mm (default: any)")
    g = m.add_argument_group("output")
    g.add_argument("--sidecar", action="store_true", help="write MODEL.onnx.manifest.json instead of embedding")
    g.add_argument("--out", type=Path, help="write the model with its manifest here (default: in place)")
    m.set_defaults(func=cmd_manifest_init)
