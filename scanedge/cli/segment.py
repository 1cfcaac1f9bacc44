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
from scanedge.cli.segment_inputs import add_roles_arg, input_paths
from scanedge.console import EXIT_SKIPPED, LazyProgress, make_console, print_table
from scanedge.errors import ConfigError

if TYPE_CHECKING:
    from scanedge.imaging.files import SliceScan
    from scanedge.imaging.heads import MaskHeadLoad, SeriesScore
    from scanedge.imaging.series_summary import SeriesSummary
    from scanedge.runtime.core.batch import BatchOutput, BatchReport
    from scanedge.runtime.core.batch_followup import FollowupOutcome
    from scanedge.runtime.core.pipeline import Pipeline

__all__ = ["add_parsers", "cmd_demo", "cmd_segment"]

DEFAULT_SEGMENT_OUT = Path("scanedge-out")
DEFAULT_DEMO_OUT = Path("scanedge-demo-out")
#: registration time budget of ``demo --prior`` (seconds): generous, so its figures are reproducible
DEMO_REGISTRATION_BUDGET_S = 60.0


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


def _segment(
    args: argparse.Namespace, scan: SliceScan, output: BatchOutput, console: Any, prior: SliceScan | None = None
) -> tuple[BatchReport, FollowupOutcome | None]:
    """Segment ``scan`` into ``output``; with ``prior``, compare the series with it using the same pipeline."""
    from scanedge.runtime.core.batch import segment_to_folder

    with _open_pipeline(args, console) as pipe:
        with LazyProgress(console, "segmenting", delay_s=1.0) as progress:
            if pipe.manifest.inputs is not None or getattr(args, "roles", None):  # several series: segment_inputs
                from scanedge.cli.segment_inputs import segment_study

                report, _ = segment_study(args, pipe, scan, output, progress, console)
            else:
                report = segment_to_folder(pipe, scan.loaded, output, progress, scan.skipped)
        _print_skipped(report.skipped[len(scan.skipped) :], console)  # refused by the model: out of scope, ...
        outcome = _compare(args, pipe, report, prior, console) if prior is not None else None
    return report, outcome


def _read_prior(args: argparse.Namespace, console: Any) -> SliceScan | None:
    """The prior folder's slices (``--prior``), checked before the model is loaded; None without --prior."""
    from scanedge.imaging.files import scan_slices
    from scanedge.runtime.core.batch_followup import require_followup_extra

    folder = getattr(args, "prior", None)
    if folder is None:
        return None
    require_followup_extra()  # before anything is read or segmented
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(
            f"the prior folder {folder} {what}; --prior names the folder of the prior series' DICOM files"
        )
    with console.status("reading the prior series ..."):
        scan = scan_slices([folder], limits=slice_limits(args))
    console.print(f"prior: {len(scan.loaded)} slice(s) from {len({i.path for i in scan.loaded})} file(s)")
    return scan


def _compare(
    args: argparse.Namespace, pipe: Pipeline, report: BatchReport, prior: SliceScan, console: Any
) -> FollowupOutcome:
    """The segmented series against the prior: the library does it all; this prints progress to stderr."""
    from scanedge.imaging.registration import RegistrationConfig
    from scanedge.runtime.core.batch_followup import compare_with_prior

    budget = getattr(args, "registration_budget", None)
    if budget is not None and not 0 < budget <= 3600:
        raise ConfigError(f"--registration-budget must be in (0, 3600] seconds, got {budget}")
    current = [(s.source, s.mask) for s in report.slices if s.mask is not None]
    with LazyProgress(console, "segmenting the prior", delay_s=1.0) as progress:
        outcome = compare_with_prior(
            pipe,
            current,
            prior.loaded,
            prior.skipped,
            any_patient=getattr(args, "prior_any_patient", False),
            out_dir=args.out,
            montage=True,
            montage_limit=getattr(args, "montage_limit", None),
            source=f"folder {Path(args.prior).name}",
            registration=RegistrationConfig(time_budget_s=budget) if budget else None,
            progress=lambda message: console.print(literal(message)),
            slice_progress=progress,
        )
    for s in outcome.prior_skipped:  # a lesion SEG used for the tracking ids is not among them
        console.print(literal(f"prior: skipped {s.name} [{s.code}] {s.reason}"), style="yellow")
    for warning in outcome.warnings:
        console.print(literal(f"warning: {warning}"), style="yellow")
    return outcome


def _print_followup(outcome: FollowupOutcome, out: Any) -> None:
    from scanedge.runtime.core.batch_followup import followup_lines

    for line in followup_lines(outcome):
        out.print(literal(line))


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
    parts += [_mask_head_text(head) for head in s.mask_heads]
    return f"{s.label}: {s.slices} slice(s); " + "; ".join(parts)


def _score_text(score: SeriesScore) -> str:
    """``score cls (max over 12 slice(s)): bleed 0.91 POSITIVE (on 3 slice(s)), normal 0.40``."""
    classes = ", ".join(
        f"{c.name} {c.score:.2f}" + (f" POSITIVE (on {c.slices_positive} slice(s))" if c.decision else "")
        for c in score.classes
    )
    run = score.series_model
    if run is not None and run.status == "done":  # one answer for the volume: no slice counts
        d, h, w = run.input
        how = f"3-D series model on {run.slices} slice(s) resampled to {d}x{h}x{w}, {run.ms:.1f} ms"
        classes = ", ".join(f"{c.name} {c.score:.2f}" + (" POSITIVE" if c.decision else "") for c in score.classes)
        return f"score {score.head} ({how}): {classes}"
    if run is not None:  # the model could not run: the slices' aggregate, said to be provisional
        failed = f"; series model failed: {run.code}" if run.status == "failed" else ""
        return f"score {score.head} (provisional {score.aggregation} over {score.slices} slice(s){failed}): {classes}"
    return f"score {score.head} ({score.aggregation} over {score.slices} slice(s)): {classes}"


def _mask_head_text(head: MaskHeadLoad) -> str:
    """``head organs: liver 1 region(s) in 3-D, 5328 mm³; kidney 0 region(s) in 3-D``: a further mask head's
    load over the series (names as one printable line, at most 64 characters each)."""
    from scanedge.safe_text import printable

    classes = []
    for c in head.lesion_load.classes:
        volume = f", {_volume(c.volume_mm3)} mm³" if c.volume_mm3 is not None else ""
        classes.append(f"{printable(c.name, 64)} {c.lesions} region(s) in 3-D{volume}")
    return f"head {head.label}: " + ", ".join(classes)


def _exit_status(report: BatchReport, console: Any, outcome: FollowupOutcome | None = None) -> int:
    from scanedge.console import print_error

    prior_skipped = len(outcome.prior_skipped) if outcome is not None else 0
    if prior_skipped and report.slices:
        console.print(
            f"[yellow]{len(report.skipped)} input(s) and {prior_skipped} prior file(s) skipped[/] (listed above "
            f"and in results.json); exit status {EXIT_SKIPPED}"
        )
        return EXIT_SKIPPED
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
    output = _output(args, montage=args.montage, keep_masks=args.prior is not None)
    prior = _read_prior(args, console)
    scan = _read(args, input_paths(args), console)
    if prior is not None and prior.loaded:  # a prior that must not be compared is refused before any work
        from scanedge.runtime.core.batch_followup import check_prior, series_facts

        current_facts, prior_facts = series_facts(scan.loaded, "current"), series_facts(prior.loaded, "prior")
        check_prior(current_facts, prior_facts, any_patient=args.prior_any_patient)
    report, outcome = _segment(args, scan, output, console, prior)
    if outcome is not None:
        from scanedge.runtime.core.batch_followup import add_to_results

        add_to_results(report.results_path, outcome)
    out = make_console(stderr=False)
    if args.json:
        print(report.results_path.read_text(), end="")
    else:
        for s in report.series:
            out.print(literal(_series_line(s)))
        if report.slices:
            out.print("latency per slice: " + report.latency().describe())
        if outcome is not None:
            _print_followup(outcome, out)
        changes = " and change pictures (*.change.png, change-montage.png)" if outcome is not None else ""
        out.print(f"overlays{changes} and results.json written to [bold]{literal(args.out)}[/]")
    return _exit_status(report, console, outcome)


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
        if args.prior:
            raise ConfigError("--prior and --live cannot be combined; run `scanedge demo --prior` on its own")
        from scanedge.cli.live import cmd_demo_live

        return cmd_demo_live(args)
    if args.prior:
        return _demo_followup(args)
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
    report, _ = _segment(args, scan, output, console)
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
    if classified is not None and classified.montage_path is not None:
        montage += f", the classifier's: {classified.montage_path.name}"
    out.print(f"overlays: [bold]{literal(args.out)}[/] (one per slice, montage: {literal(montage)}; results.json)")
    return _exit_status(report, console)


def _demo_followup(args: argparse.Namespace) -> int:
    """``demo --prior``: a prior of the demo patient with a known motion and known lesion changes, compared as
    ``segment --prior`` compares, then scored against the truth."""
    from scanedge.demo.followup_series import make_demo_followup, score_followup, write_demo_followup
    from scanedge.runtime.core.batch import RESULTS_NAME
    from scanedge.runtime.core.batch_followup import add_to_results, require_followup_extra

    require_followup_extra()
    console = make_console()
    replacing = args.out == DEFAULT_DEMO_OUT and (args.out / RESULTS_NAME).is_file()
    output = _output(args, montage=False, keep_masks=True, overwrite=replacing)
    with console.status("making the prior study of the demo patient (known motion and lesion changes) ..."):
        followup = make_demo_followup()
        current_dir, prior_dir = write_demo_followup(args.out / "series", followup)
    console.print(f"demo follow-up: current {literal(current_dir)}, prior {literal(prior_dir)} (DICOM)")
    args.prior = prior_dir
    args.montage_limit = 8
    # the optimiser runs to convergence rather than to the node's 5 s budget, so the figures do not depend on
    # how busy the machine is
    args.registration_budget = DEMO_REGISTRATION_BUDGET_S
    prior = _read_prior(args, console)
    scan = _read(args, [current_dir], console)
    report, outcome = _segment(args, scan, output, console, prior)
    if outcome is None:  # _segment compares whenever a prior was read
        raise ConfigError("the demo's prior could not be read")
    score = score_followup(followup, outcome.comparison)
    add_to_results(report.results_path, outcome, {"truth": score.to_dict()})
    out = make_console(stderr=False)
    if args.json:
        print(report.results_path.read_text(), end="")
        return _exit_status(report, console, outcome)
    for summary in report.series:
        out.print(literal(_series_line(summary)))
    _print_followup(outcome, out)
    for line in score.lines():
        out.print(literal(line))
    montage = next((p.name for p in outcome.pictures if p.name.startswith("change-")), "-")
    out.print(
        f"change pictures: [bold]{literal(args.out)}[/] (one per slice, montage: {literal(montage)}; results.json)"
    )
    return _exit_status(report, console, outcome)


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
            [i for i in scan.loaded if i.name in segmented],
            DEMO_CLASSIFIER_PATH,
            engine_options(args),
            montage_dir=report.results_path.parent if report.montage_path is not None else None,
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
    p.add_argument("paths", nargs="*", type=Path, help="files or folders (searched recursively)")
    add_roles_arg(p)
    p.add_argument(
        "--out", type=Path, default=DEFAULT_SEGMENT_OUT, help=f"result folder (default: {DEFAULT_SEGMENT_OUT})"
    )
    p.add_argument(
        "--force", action="store_true", help="replace the results of an earlier run in --out (default: refuse)"
    )
    p.add_argument(
        "--save-masks",
        action="store_true",
        help="also write each label mask (and each further mask head's) as .npy (default: off)",
    )
    p.add_argument("--montage", action="store_true", help="also write montage.png, every overlay tiled (default: off)")
    p.add_argument("--json", action="store_true", help="print results.json on stdout instead of the summary")
    g = p.add_argument_group("follow-up (needs scanedge[followup])")
    g.add_argument(
        "--prior",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of the prior series' DICOM files: segmented with the same model, registered, and each lesion "
        "reported new / enlarging / stable / shrinking / disappeared (default: no comparison)",
    )
    g.add_argument(
        "--registration-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wall-time budget of the registration (default: 5, as the DICOM node; raise it on a slow or busy "
        "machine so the optimiser converges)",
    )
    g.add_argument(
        "--prior-any-patient",
        action="store_true",
        help="compare even when the prior's Patient ID differs (phantoms, research; default: refuse)",
    )
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
        "--prior",
        action="store_true",
        help="follow-up demo: a prior study of the demo patient with known motion and lesion changes, compared as "
        "`segment --prior` does and scored against the truth (needs scanedge[followup])",
    )
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
