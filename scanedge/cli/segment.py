"""``scanedge segment`` and ``scanedge demo``: segment slices from files into overlays and results.json.

Reports (the per-slice table, series summaries, where the files went) go to stdout; progress and each
skipped file go to stderr. A batch never stops at a bad file: it is named with its typed code, the rest
are segmented, and the exit status is 3 when anything was skipped (2 when nothing could be segmented).
"""

from __future__ import annotations

import argparse
import json
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
    slice_limits,
)
from scanedge.cli.live import add_live_args
from scanedge.console import EXIT_SKIPPED, LazyProgress, make_console, print_table
from scanedge.errors import ConfigError

if TYPE_CHECKING:
    from scanedge.imaging.files import SliceScan
    from scanedge.imaging.heads import SeriesScore
    from scanedge.imaging.series_summary import SeriesSummary
    from scanedge.runtime.core.batch import BatchOutput, BatchReport
    from scanedge.runtime.core.pipeline import Pipeline

__all__ = ["add_parsers", "cmd_demo", "cmd_segment"]

DEFAULT_SEGMENT_OUT = Path("scanedge-out")
DEFAULT_DEMO_OUT = Path("scanedge-demo-out")


def _open_pipeline(args: argparse.Namespace, console: Any) -> Pipeline:
    from scanedge.runtime.core.pipeline import Pipeline

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
    if man.applies_to.restricts:
        console.print(f"made for: {literal(man.applies_to.describe())}")
    if args.ignore_scope:
        console.print("[yellow]--ignore-scope: images outside the model's scope are segmented too (research use)[/]")
    return pipe


def _read(args: argparse.Namespace, paths: list[Path], console: Any) -> SliceScan:
    from scanedge.imaging.files import scan_slices

    with console.status("reading slices ..."):
        scan = scan_slices(paths, limits=slice_limits(args))
    _print_skipped(scan.skipped, console)
    files = len({i.path for i in scan.loaded})
    console.print(
        f"{len(scan.loaded)} slice(s) from {files} file(s)"
        + (f"; {len(scan.skipped)} file(s) skipped" if scan.skipped else "")
    )
    if scan.ignored:
        console.print(f"{len(scan.ignored)} other file(s) ignored (neither DICOM, .npy nor an image)")
    if not scan.loaded:
        what = f"none of the {len(scan.skipped)} file(s) could be read as slices" if scan.skipped else "no slices found"
        raise ConfigError(f"{what} under {', '.join(map(str, paths))}")
    return scan


def _print_skipped(skipped: Any, console: Any) -> None:
    from rich.text import Text

    for s in skipped:
        line = Text("skipped ", style="yellow")
        line.append(f"{s.name} [{s.code}] {s.reason}")
        console.print(line)


def _segment(args: argparse.Namespace, scan: SliceScan, output: BatchOutput, console: Any) -> BatchReport:
    from scanedge.runtime.core.batch import segment_to_folder

    with _open_pipeline(args, console) as pipe, LazyProgress(console, "segmenting", delay_s=1.0) as progress:
        report = segment_to_folder(pipe, scan.loaded, output, progress, scan.skipped)
    _print_skipped(report.skipped[len(scan.skipped) :], console)  # refused by the model: out of scope, ...
    return report


def _volume(mm3: float) -> str:
    """A volume as people read it: 5328, 12.5, 0.47 (never 0.46875 or 5.328e+03)."""
    if mm3 >= 100:
        return f"{mm3:.0f}"
    return f"{mm3:.1f}" if mm3 >= 1 else f"{mm3:.2g}"


def _series_line(s: SeriesSummary) -> str:
    """``series 3 "AX FLAIR" (MR): 32 slice(s); lesion: 9 lesion(s) in 3-D, 5328 mm³; on 23 slice(s), 47 2-D
    component(s) summed over slices``: the 3-D figures first, the per-slice ones labelled as such."""
    parts = []
    for c in s.classes:
        three_d = ""
        if s.lesion_load is not None:
            load = s.lesion_load.load(c.name)
            volume = f", {_volume(load.volume_mm3)} mm³" if load.volume_mm3 is not None else ", volume unknown"
            three_d = f"{load.lesions} lesion(s) in 3-D{volume}; "
        parts.append(
            f"{c.name}: {three_d}on {c.slices_with_finding} slice(s), {c.components} 2-D component(s) summed "
            "over slices"
        )
    parts += [_score_text(score) for score in s.scores]
    return f"{s.label}: {s.slices} slice(s); " + "; ".join(parts)


def _score_text(score: SeriesScore) -> str:
    """``score cls (max over 12 slice(s)): bleed 0.91 POSITIVE (on 3 slice(s)), normal 0.40``."""
    classes = ", ".join(
        f"{c.name} {c.score:.2f}" + (f" POSITIVE (on {c.slices_positive} slice(s))" if c.decision else "")
        for c in score.classes
    )
    return f"score {score.head} ({score.aggregation} over {score.slices} slice(s)): {classes}"


def _exit_status(report: BatchReport, console: Any) -> int:
    from scanedge.console import print_error

    if not report.skipped:
        return 0
    if not report.slices:
        print_error(f"nothing was segmented: all {len(report.skipped)} input(s) were skipped (listed above)")
        return 2
    console.print(
        f"[yellow]{len(report.skipped)} input(s) skipped[/] (listed above and in results.json); "
        f"exit status {EXIT_SKIPPED}"
    )
    return EXIT_SKIPPED


def _output(
    args: argparse.Namespace, *, montage: bool = False, keep_masks: bool = False, overwrite: bool = False
) -> BatchOutput:
    from scanedge.runtime.core.batch import BatchOutput, prepare_output_dir

    output = BatchOutput(
        args.out,
        overlay_format=args.format,
        save_masks=getattr(args, "save_masks", False),
        montage=montage,
        keep_masks=keep_masks,
        overwrite=overwrite or args.force,
    )
    prepare_output_dir(output)  # a wrong --out is refused before anything is read or loaded
    return output


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment files and folders; overlays (and masks) per slice, results.json with per-series summaries.

    Exit 0 when every input was segmented, 3 when some were skipped, 2 when none could be.
    """
    console = make_console()
    output = _output(args, montage=args.montage)
    scan = _read(args, list(args.paths), console)
    report = _segment(args, scan, output, console)
    out = make_console(stderr=False)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for s in report.series:
            out.print(literal(_series_line(s)))
        if report.slices:
            out.print("latency per slice: " + report.latency().describe())
        out.print(f"overlays and results.json written to [bold]{literal(args.out)}[/]")
    return _exit_status(report, console)


_TABLE_COLUMNS = (
    "slice",
    "lesion px",
    "area mm²",
    "lesions (2-D)",
    "max p",
    "pre",
    "infer",
    "post",
    "overlay",
    "total",
)


def cmd_demo(args: argparse.Namespace) -> int:
    """The shipped model on the shipped synthetic series: per-slice table, series summary, Dice, montage.
    With ``--live``: the runtime, a replay at a scanner's pace and the web viewer (:mod:`scanedge.cli.live`)."""
    if args.live:
        from scanedge.cli.live import cmd_demo_live

        return cmd_demo_live(args)
    from scanedge.demo.series import demo_series_dir, dice_against_truth
    from scanedge.runtime.core.batch import RESULTS_NAME

    console = make_console()
    replacing = args.out == DEFAULT_DEMO_OUT and (args.out / RESULTS_NAME).is_file()
    output = _output(args, montage=True, keep_masks=args.check, overwrite=replacing)
    if replacing and not args.force:
        console.print(f"replacing the previous demo output in {literal(args.out)}")
    with console.status("preparing the demo series (DICOM, written on first use) ..."):
        series_dir = demo_series_dir()
    scan = _read(args, [series_dir], console)
    console.print(f"demo series: {len(scan.loaded)} synthetic FLAIR-like slices in {literal(series_dir)}")
    report = _segment(args, scan, output, console)
    classified = _demo_classifier(args, scan, report, console)
    out = make_console(stderr=False)
    if args.json:
        print(json.dumps(_with_classifier(report.to_dict(), classified), indent=2))
        return _exit_status(report, console)
    rows = []
    for s in report.slices:
        f, t = s.findings[0], s.timings
        rows.append(
            [
                str(s.source.slice.identity.instance_number),
                str(f.pixels),
                f"{f.area_mm2:.0f}" if f.area_mm2 is not None else "-",
                str(f.components),
                f"{f.max_probability:.2f}",
                *(f"{v:.2f}" for v in (t.preprocess_ms, t.infer_ms, t.postprocess_ms, t.overlay_ms, t.total_ms)),
            ]
        )
    print_table(out, "per-slice results (times in ms)", _TABLE_COLUMNS, rows)
    for summary in report.series:
        out.print(literal(_series_line(summary)))
    if report.slices:
        out.print(
            "latency per slice (in-process, decoded slices, preprocess to overlay): " + report.latency().describe()
        )
        out.print("model only: " + report.latency("infer_ms").describe())
    if args.check and len(report.masks) == len(scan.loaded):
        dice = dice_against_truth(report.masks)
        out.print(f"agreement with the generator's true lesion labels: Dice {dice:.3f}")
    if classified is not None:
        _print_classifier(out, classified, check=args.check and len(classified.slices) == len(scan.loaded))
    montage = report.montage_path.name if report.montage_path else "-"
    out.print(f"overlays: [bold]{literal(args.out)}[/] (one per slice, montage: {literal(montage)}; results.json)")
    return _exit_status(report, console)


def _demo_classifier(args: argparse.Namespace, scan: SliceScan, report: BatchReport, console: Any) -> Any:
    """The demo's second model on the same slices (only beside the shipped demo model, not with --model):
    its scores are added to results.json under ``classifier``; None when it does not run."""
    from scanedge.demo.classify import classify_slices
    from scanedge.models import DEMO_CLASSIFIER_PATH

    if not args.classifier or args.model is not None or not DEMO_CLASSIFIER_PATH.is_file() or not report.slices:
        return None
    segmented = {s.source.name for s in report.slices}
    with console.status("classifying the slices with the demo classifier ..."):
        classified = classify_slices(
            [i for i in scan.loaded if i.name in segmented], DEMO_CLASSIFIER_PATH, engine_options(args)
        )
    data = json.loads(report.results_path.read_text())
    tmp = report.results_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_with_classifier(data, classified), indent=2) + "\n")
    tmp.replace(report.results_path)
    return classified


def _with_classifier(results: dict[str, Any], classified: Any) -> dict[str, Any]:
    return results if classified is None else {**results, "classifier": classified.to_dict()}


def _print_classifier(out: Any, classified: Any, *, check: bool) -> None:
    """``classifier ms-lesion-classifier-demo@1.0.0 (lesion present on the slice):`` the per-slice
    probabilities in slice order, the series' score, and with ``check`` its agreement with the true labels."""
    import numpy as np

    from scanedge.console import print_table

    rows = []
    for s in classified.slices:
        for head in s.scores:
            for c in head.classes:
                decision = "present" if c.decision else "absent"
                rows.append(
                    [
                        str(s.instance_number if s.instance_number is not None else "-"),
                        literal(c.name),
                        f"{c.probability:.3f}",
                        f"{c.threshold:.3f}",
                        decision,
                        f"{s.infer_ms:.2f}",
                    ]
                )
    print_table(
        out,
        f"classifier {literal(classified.model)}: a lesion on the slice? (times in ms)",
        ("slice", "class", "p", "threshold", "decision", "infer"),
        rows,
    )
    for scores in classified.series.values():
        for score in scores:
            out.print(literal(_score_text(score)))
    if check:
        from scanedge.demo.classify import truth_figures
        from scanedge.demo.series import load_demo_patient

        head = classified.slices[0].scores[0]
        decisions = np.array([s.scores[0].score(head.classes[0].name).decision for s in classified.slices])
        fig = truth_figures(decisions, load_demo_patient().labels)
        out.print(
            f"classifier against the true labels: sensitivity {fig['sensitivity']:.3f} "
            f"({fig['positive_slices']} slices with lesions), specificity {fig['specificity']:.3f} "
            f"({fig['negative_slices']} without)"
        )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``segment`` and ``demo``."""
    p = sub.add_parser(
        "segment",
        help="segment DICOM / .npy / image files and write overlays + results.json",
        description="Segment every slice under the files and folders given. A file that cannot be used "
        "(not DICOM, not an image, outside the model's scope, ...) is named with its error code and skipped; "
        f"the others are segmented. Exit status: 0 all segmented, {EXIT_SKIPPED} some skipped, 2 none could be.",
    )
    p.add_argument("paths", nargs="+", type=Path, help="files or folders (searched recursively)")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_SEGMENT_OUT, help=f"result folder (default: {DEFAULT_SEGMENT_OUT})"
    )
    p.add_argument(
        "--force", action="store_true", help="replace the results of an earlier run in --out (default: refuse)"
    )
    p.add_argument("--save-masks", action="store_true", help="also write each label mask as .npy (default: off)")
    p.add_argument("--montage", action="store_true", help="also write montage.png, every overlay tiled (default: off)")
    p.add_argument("--json", action="store_true", help="print results.json on stdout instead of the summary")
    _add_pipeline_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("demo", help="segment the built-in demo series with the shipped demo model")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_DEMO_OUT,
        help=f"result folder; the previous demo output there is replaced (default: {DEFAULT_DEMO_OUT})",
    )
    p.add_argument("--force", action="store_true", help="replace earlier results in another --out folder")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the comparison with the true labels")
    p.add_argument("--json", action="store_true", help="print results.json on stdout instead of the table")
    p.add_argument(
        "--no-classifier",
        dest="classifier",
        action="store_false",
        help="do not run the demo classifier beside the demo model (it runs only without --model)",
    )
    _add_pipeline_args(p)
    add_live_args(p)
    p.set_defaults(func=cmd_demo)


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_engine_args(p)
    add_overlay_args(p)
    add_limit_args(p)
