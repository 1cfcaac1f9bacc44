"""``scanedge convert``, ``verify`` and ``export-triton``: building engines, checking them, shipping them."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from scanedge.cli.arguments import add_engine_args, engine_options, literal, read_slices
from scanedge.cli.segment_inputs import add_roles_arg
from scanedge.console import make_console, user_values
from scanedge.errors import ConfigError

__all__ = ["add_parsers", "cmd_convert", "cmd_export_triton", "cmd_verify"]


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a model with a manifest into an optimized engine, reporting each step."""
    from scanedge.converters.convert import ConvertConfig, convert

    console = make_console()
    calibration, sets = _calibration(args, console)
    with user_values():
        options = ConvertConfig(
            target=args.target,
            precision=args.precision,
            calibration=calibration,
            calibration_limit=args.calibration_limit,
            shapes=args.shapes,
            out_dir=args.out,
            timing_cache=args.timing_cache,
        )
    t0 = time.perf_counter()
    with console.status("converting ...") as status:

        def say(message: str) -> None:
            console.print(literal(message))
            status.update(literal(message))

        result = convert(args.model, options, manifest_path=args.manifest, say=say, calibration_sets=sets)
    console.print(
        f"[bold]{literal(result.output)}[/] ({options.target}, {options.precision}) in "
        f"{time.perf_counter() - t0:.1f} s; check the result with: "
        + literal(f"scanedge verify {result.output} --reference {args.model} --data {'STUDY' if sets else 'SLICES'}")
    )
    return 0


def _calibration(args: argparse.Namespace, console: Any) -> tuple[Path | None, list[dict[str, Any]] | None]:
    """The calibration folder, and for a multi-input model converted to int8 its study paired: one slice per
    role at each reference slice (:func:`~scanedge.cli.segment_inputs.paired_study`, the runtime's pairing), so
    the converter calibrates on the feeds the runtime will build. ``--roles`` is checked (syntax, the model's
    role names, the paths) before anything is read."""
    from scanedge.cli.segment_inputs import named_roles
    from scanedge.manifest import load_manifest

    args.paths = [args.calibration] if args.calibration is not None else []
    named = named_roles(args)  # a malformed --roles is refused here, before the model is even read
    manifest, _ = load_manifest(args.model, args.manifest, verify_sha=False)
    if manifest.inputs is None or args.precision != "int8":
        if named and manifest.inputs is None:
            raise ConfigError(f"--roles names input roles; model {manifest.name} takes one input and has none")
        if named:
            raise ConfigError("--roles names each role's calibration series; only --precision int8 calibrates")
        return args.calibration, None
    from scanedge.runtime.core.batch_inputs import check_role_names

    check_role_names(manifest, list(named))
    for role, paths in named.items():
        for path in paths:
            if not path.exists():
                raise ConfigError(f"--roles {role}={path}: no such file or folder")
    if args.calibration is None and not named:
        raise ConfigError(
            f"int8 needs calibration data: model {manifest.name} takes the roles {', '.join(manifest.roles)}, so "
            "give --calibration STUDY (a folder with every role's series) or --roles ROLE=DIR for each role"
        )
    from scanedge.cli.segment_inputs import paired_study

    with console.status("reading and pairing the calibration study's series ..."):
        study, sets = paired_study(manifest, args, args.calibration_limit)
    for line in study.lines()[:-1]:
        console.print(literal(line))
    left = f"; {study.missing} reference slice(s) without a partner left out" if study.missing else ""
    console.print(f"model takes {len(manifest.roles)} roles: calibrating on {len(sets)} paired slice set(s){left}")
    folders = [Path(p) for p in args.paths] + [p for paths in named.values() for p in paths]
    where = (
        args.calibration if args.calibration is not None else Path(os.path.commonpath([p.resolve() for p in folders]))
    )
    return where, sets


def cmd_verify(args: argparse.Namespace) -> int:
    """Compare an engine with its reference model on real slices; exit 1 when it misses the thresholds."""
    from scanedge.converters.verify import Thresholds, judge, measure_engine_file

    console = make_console()
    slices = _verify_slices(args, console)
    with console.status(f"running both models on {len(slices)} slice(s) ..."):
        manifest, agreement = measure_engine_file(
            args.engine_file,
            args.reference,
            slices,
            manifest_path=args.manifest,
            options=engine_options(args),
        )
    thresholds = Thresholds.for_precision(manifest.precision, args.min_dice, args.max_abs_diff)
    verdict = judge(agreement, thresholds)
    if args.json:
        report = {
            "agreement": agreement.to_dict(),
            "thresholds": thresholds.__dict__,
            "passed": verdict.passed,
            "failures": list(verdict.failures),
        }
        print(json.dumps(report, indent=2))
    out = console if args.json else make_console(stderr=False)  # the verdict is the report: stdout
    dice = ", ".join(f"{literal(k)} {v:.4f}" for k, v in agreement.dice.items())
    if manifest.output is not None:
        out.print(
            f"{manifest.precision} engine vs reference on {agreement.slices} slices: Dice {dice}; probabilities "
            f"max |diff| {agreement.max_abs_diff:.4f}, mean {agreement.mean_abs_diff:.5f}; "
            f"{agreement.pixel_agreement:.4%} of mask pixels identical"
        )
    else:
        out.print(f"{manifest.precision} engine vs reference on {agreement.slices} slices")
    for name, head in agreement.heads.items():
        line = f"  {head.role} head {literal(name)}: max |diff| {head.max_abs_diff:.4f}"
        if head.decision_agreement is not None:
            line += f", decisions agree on {head.decision_agreement:.2%} of slice x class"
        if head.dice:
            line += ", Dice " + ", ".join(f"{literal(k)} {v:.4f}" for k, v in head.dice.items())
        out.print(line)
    series = agreement.series_model
    if series is not None and series.unchanged:
        out.print(
            f"  series model of {literal(series.head)}: unchanged (same sha256 {series.candidate_sha256[:12]}...)"
        )
    elif series is not None:
        out.print(
            f"  series model of {literal(series.head)} on the {series.slices} slices as one series "
            f"({'x'.join(map(str, series.input))} volume): max |diff| {series.max_abs_diff:.4f}, decisions agree on "
            f"{series.decision_agreement:.2%} of classes"
        )
    if verdict.passed:
        out.print(f"[green]PASS[/] (Dice >= {thresholds.min_dice})")
        return 0
    out.print("[red]FAIL[/] " + literal("; ".join(verdict.failures)))
    return 1


def _verify_slices(args: argparse.Namespace, console: Any) -> Any:
    """What verify compares on: the slices of ``--data``, or for a multi-input model (manifest ``inputs``) each
    reference slice with its partners, the roles recognised (or named with ``--roles``) and paired as
    ``scanedge segment`` does (:mod:`scanedge.cli.segment_inputs`)."""
    from scanedge.manifest import load_manifest

    manifest, _ = load_manifest(args.engine_file, args.manifest, verify_sha=False)
    args.paths = [args.data] if args.data is not None else []
    if manifest.inputs is None:
        if args.roles:
            raise ConfigError(f"--roles names input roles; model {manifest.name} takes one input and has none")
        if args.data is None:
            raise ConfigError("--data names the folder of slices to compare on")
        with console.status("reading slices ..."):
            return [item.slice for item in read_slices([args.data])][: args.limit]
    from scanedge.cli.segment_inputs import paired_study

    with console.status("reading and pairing the study's series ..."):
        study, sets = paired_study(manifest, args, args.limit)
    for line in study.lines()[:-1]:
        console.print(literal(line))
    left = f"; {study.missing} reference slice(s) without a partner left out" if study.missing else ""
    console.print(f"model takes {len(manifest.roles)} roles: comparing on {len(sets)} paired slice set(s){left}")
    return sets


def cmd_export_triton(args: argparse.Namespace) -> int:
    """Write a Triton model repository entry for a model or engine."""
    from scanedge.converters.triton import export_triton

    entry = export_triton(
        args.model, args.repo, manifest_path=args.manifest, instances=args.instances, force=args.force
    )
    make_console().print(f"Triton model repository entry written to {literal(entry)} (config.pbtxt, 1/model.*)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``convert``, ``verify`` and ``export-triton``."""
    from scanedge.converters.calibration import MIN_CALIBRATION_SLICES

    p = sub.add_parser("convert", help="build an optimized engine (ORT or TensorRT; fp32, fp16, int8)")
    p.add_argument("model", type=Path, help="ONNX model with a manifest")
    p.add_argument("--target", choices=("ort", "tensorrt"), default="ort", help="engine to build (default: ort)")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="numeric precision: int8 for CPU consoles, fp16 for GPUs (default: fp32)",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        help=f"folder of slices for int8 calibration, at least {MIN_CALIBRATION_SLICES} inside the model's scope; "
        "for a multi-input model the study's series, paired as the runtime pairs them (default: none; required for "
        "int8 unless --roles names every role's ROLE=DIR)",
    )
    add_roles_arg(p)
    p.add_argument(
        "--calibration-limit", type=int, default=200, help="use at most this many calibration slices (default: 200)"
    )
    p.add_argument(
        "--shapes",
        help="TensorRT optimization profile MIN:OPT:MAX, e.g. 1x1x256x256:1x1x256x256:1x1x512x512 "
        "(default: the model's static shape)",
    )
    p.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file (default: one in --out)")
    p.add_argument("--manifest", type=Path, default=None, help="manifest JSON to use (default: the model's own)")
    p.add_argument("--out", type=Path, default=Path("engines"), help="output folder (default: engines)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("verify", help="compare an engine's segmentations with the reference ONNX model")
    p.add_argument("engine_file", type=Path, metavar="ENGINE", help="converted ONNX model or TensorRT plan")
    p.add_argument("--reference", type=Path, required=True, help="the original ONNX model (required)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder of slices to compare on; for a multi-input model the study's series (default: none, "
        "required unless --roles names every role's ROLE=PATH)",
    )
    add_roles_arg(p)
    p.add_argument("--manifest", type=Path, default=None, help="manifest JSON to use (default: the engine's own)")
    p.add_argument("--min-dice", type=float, default=None, help="default: 0.99 for fp16, 0.97 for int8, 0.999 for fp32")
    p.add_argument(
        "--max-abs-diff", type=float, default=None, help="also fail above this probability difference (default: off)"
    )
    p.add_argument("--limit", type=int, default=500, help="compare at most this many slices (default: 500)")
    add_engine_args(p, threads_help="inference threads of both models (default: one per core)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout (the summary on stderr)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("export-triton", help="write a Triton model repository entry")
    p.add_argument("model", type=Path, help="ONNX model or TensorRT plan (with its manifest)")
    p.add_argument("--repo", type=Path, required=True, help="the Triton model repository folder (required)")
    p.add_argument("--manifest", type=Path, default=None, help="manifest JSON to use (default: the model's own)")
    p.add_argument("--instances", type=int, default=1, help="model instances Triton runs (default: 1)")
    p.add_argument("--force", action="store_true", help="replace an existing version of the model (default: refuse)")
    p.set_defaults(func=cmd_export_triton)
