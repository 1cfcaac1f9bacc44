"""``scanedge segment`` and ``scanedge demo``: segment slices from files into overlays and results.json."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanedge.cli.arguments import (
    add_engine_args,
    add_limit_args,
    add_model_args,
    add_overlay_args,
    engine_options,
    literal,
    pipeline_config,
    read_slices,
    slice_limits,
)
from scanedge.console import LazyProgress, make_console

if TYPE_CHECKING:
    from scanedge.imaging.files import LoadedSlice
    from scanedge.runtime.batch import BatchOutput, BatchReport
    from scanedge.runtime.pipeline import Pipeline

__all__ = ["add_parsers", "cmd_demo", "cmd_segment"]


def _open_pipeline(args: argparse.Namespace, console: Any) -> Pipeline:
    from scanedge.runtime.pipeline import Pipeline

    config = pipeline_config(args)
    with console.status("loading the model and warming up the engine ..."):
        pipe = Pipeline.open(args.model, manifest=args.manifest, options=engine_options(args), config=config)
    man = pipe.manifest
    info = pipe.engine.describe()
    providers = info.get("providers") or info.get("target", "")
    console.print(
        f"model [bold]{literal(man.name)}[/] {literal(man.version)} on {pipe.engine.backend} {literal(providers)}"
    )
    if man.intended_use:
        console.print(f"[yellow]{literal(man.intended_use)}[/]")
    return pipe


def _segment(args: argparse.Namespace, loaded: list[LoadedSlice], output: BatchOutput, console: Any) -> BatchReport:
    from scanedge.runtime.batch import segment_to_folder

    with _open_pipeline(args, console) as pipe, LazyProgress(console, "segmenting", delay_s=1.0) as progress:
        return segment_to_folder(pipe, loaded, output, progress)


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment files and folders; overlays (and masks) per slice, results.json with per-series summaries."""
    from scanedge.runtime.batch import BatchOutput

    console = make_console()
    output = BatchOutput(args.out, overlay_format=args.format, save_masks=args.save_masks)
    with console.status("reading slices ..."):
        loaded = read_slices(args.paths, slice_limits(args))
    console.print(f"{len(loaded)} slice(s) from {len({i.path for i in loaded})} file(s)")
    report = _segment(args, loaded, output, console)
    for s in report.series:
        found = ", ".join(
            f"{literal(c.name)}: {c.slices_with_finding} slice(s), {c.components} component(s)" for c in s.classes
        )
        console.print(f"series {literal(s.series_uid or '(none)')}: {s.slices} slices; {found}")
    console.print("latency per slice: " + report.latency().describe())
    console.print(f"overlays and results.json written to [bold]{literal(args.out)}[/]")
    return 0


_TABLE_COLUMNS = ("slice", "lesion px", "area mm²", "lesions", "max p", "pre", "infer", "post", "overlay", "total")


def cmd_demo(args: argparse.Namespace) -> int:
    """The shipped model on the shipped synthetic series: per-slice table, series summary, Dice, montage."""
    from rich.table import Table

    from scanedge.demo.series import demo_series_dir, dice_against_truth
    from scanedge.runtime.batch import BatchOutput

    console = make_console()
    output = BatchOutput(args.out, overlay_format=args.format, montage=True, keep_masks=args.check)
    with console.status("preparing the demo series (DICOM, written on first use) ..."):
        series_dir = demo_series_dir()
        loaded = read_slices([series_dir], slice_limits(args))
    console.print(f"demo series: {len(loaded)} synthetic FLAIR-like slices in {literal(series_dir)}")
    report = _segment(args, loaded, output, console)
    table = Table(title="per-slice results (ms)", show_lines=False)
    for col in _TABLE_COLUMNS:
        table.add_column(col, justify="right")
    for s in report.slices:
        f, t = s.findings[0], s.timings
        table.add_row(
            str(s.source.slice.identity.instance_number),
            str(f.pixels),
            f"{f.area_mm2:.0f}" if f.area_mm2 is not None else "-",
            str(f.components),
            f"{f.max_probability:.2f}",
            *(f"{v:.2f}" for v in (t.preprocess_ms, t.infer_ms, t.postprocess_ms, t.overlay_ms, t.total_ms)),
        )
    console.print(table)
    summary = report.series[0]
    lesion = summary.load("lesion")
    console.print(
        f"series summary: lesions on {lesion.slices_with_finding}/{summary.slices} slices, "
        f"{lesion.components} lesion component(s) in all, lesion volume ~{lesion.volume_mm3} mm³"
    )
    console.print("latency per slice (in-process, all stages): " + report.latency().describe())
    console.print("model only: " + report.latency("infer_ms").describe())
    if args.check:
        dice = dice_against_truth(report.masks)
        console.print(f"agreement with the generator's true lesion labels: Dice {dice:.3f}")
    montage = report.montage_path.name if report.montage_path else "-"
    console.print(f"overlays: [bold]{literal(args.out)}[/] (one per slice, montage: {literal(montage)}; results.json)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``segment`` and ``demo``."""
    p = sub.add_parser("segment", help="segment DICOM / .npy / image files and write overlays + results.json")
    p.add_argument("paths", nargs="+", type=Path, help="files or folders")
    p.add_argument("--out", type=Path, default=Path("scanedge-out"))
    p.add_argument("--save-masks", action="store_true", help="also write each label mask as .npy")
    _add_pipeline_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("demo", help="segment the built-in demo series with the shipped demo model")
    p.add_argument("--out", type=Path, default=Path("scanedge-demo-out"))
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the comparison with the true labels")
    _add_pipeline_args(p)
    p.set_defaults(func=cmd_demo)


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_engine_args(p)
    add_overlay_args(p)
    add_limit_args(p)
