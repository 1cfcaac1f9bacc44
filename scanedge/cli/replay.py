"""``scanedge replay``: play series from disk to a runtime as a console would, at the scanner's pace."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanedge.cli.arguments import literal, role_names
from scanedge.console import make_console, user_values

if TYPE_CHECKING:
    from scanedge.imaging.lesion_load import LesionLoad
    from scanedge.runtime.console.replay import SeriesReport, SliceEvent

__all__ = ["add_parsers", "cmd_replay", "describe_load", "slice_line", "summary_lines"]


def describe_load(load: LesionLoad | None) -> str:
    """``7 lesions, 1234.5 mm³ (largest 512.0 mm³)`` summed over the foreground classes."""
    if load is None:
        return "no series load"
    volume = load.volume_mm3
    largest = max((c.largest_mm3 or 0.0 for c in load.classes), default=0.0)
    if volume is None:
        voxels = sum(c.voxels for c in load.classes)
        return f"{load.lesions} lesion(s), {voxels} voxels (no volume: spacing unknown)"
    return f"{load.lesions} lesion(s), {volume:.1f} mm³ (largest {largest:.1f} mm³)"


def slice_line(event: SliceEvent, tag: str) -> str:
    """One live line: which slice, its latency, what it shows, and the series' load so far."""
    where = f"{event.position + 1:>3}/{event.count}"
    if event.loop:
        where += f" (pass {event.loop + 1})"
    if event.result is None:
        code = getattr(event.error, "code", type(event.error).__name__)
        return f"{tag} {where}  {code.lower():>10}  {event.latency_ms:7.1f} ms"
    r = event.result
    z = f"z {r.position_mm:+7.1f} mm" if r.position_mm is not None else f"#{r.index}"
    found = ", ".join(f"{f.name} {f.pixels} px/{f.components}" for f in r.findings) or "-"
    return f"{tag} {where}  {z}  {event.latency_ms:7.1f} ms  {found:<22}  load: {describe_load(r.series_load)}"


def summary_lines(report: SeriesReport, tag: str) -> list[str]:
    """The series summary: counts, latency percentiles, final lesion load per class."""
    lines = [
        f"{tag} series {report.uid}: {report.slices} slices; sent {report.sent}, ok {report.ok}, "
        f"superseded {report.superseded}, failed {report.failed}" + (f" {report.errors}" if report.errors else "")
    ]
    latency = report.latency()
    if latency is not None:
        lines.append(f"{tag}   end-to-end latency: {latency.describe()}")
    load = report.load
    if load is not None:
        spacing = f"{load.spacing_mm:g} mm ({load.spacing_source})" if load.spacing_mm else load.spacing_source
        lines.append(f"{tag}   lesion load over {load.slices} slices, slice spacing {spacing}: {describe_load(load)}")
        for c in load.classes:
            volume = "-" if c.volume_mm3 is None else f"{c.volume_mm3:.1f} mm³"
            largest = "-" if c.largest_mm3 is None else f"{c.largest_mm3:.1f} mm³"
            lines.append(
                f"{tag}     {c.name}: {c.lesions} lesion(s), {volume}, largest {largest} over "
                f"{c.largest_slices} slice(s), on {c.slices_with_finding} slice(s)"
            )
    if report.scores:
        from scanedge.cli.segment import _score_text  # the segment report's wording, for the same scores

        lines += [f"{tag}   {_score_text(score)}" for score in report.scores]
    return lines


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay until every series is sent (or Ctrl-C with --loop); exit 1 when any slice failed."""
    from scanedge.runtime.console.replay import Replay, ReplayConfig, read_series

    err = make_console()
    out = make_console(stderr=False)
    with user_values():
        settings = ReplayConfig(
            endpoint=args.endpoint,
            rate=args.rate,
            loop=args.loop,
            jitter_ms=args.jitter,
            seed=args.seed,
            outputs=tuple(o.strip() for o in args.outputs.split(",") if o.strip()),
            dicom=args.dicom,
            deadline_ms=args.deadline_ms,
            roles=role_names(args.roles),
        )
    with err.status("reading and ordering the series ..."):
        series = read_series(args.paths, dicom=args.dicom)
    tags = [f"S{k + 1}" for k in range(len(series))]
    for tag, s in zip(tags, series):
        err.print(f"{tag}: series {literal(s.uid)}, {len(s.slices)} slices in acquisition order")
    mode = ", looping until Ctrl-C" if args.loop else ""
    err.print(f"replaying to {literal(args.endpoint)} at {args.rate:g} slices/s per series{mode}")
    stop = install_stop_handler()
    replay = Replay(series, settings)

    def show(event: SliceEvent) -> None:
        if not args.quiet:
            out.print(literal(slice_line(event, tags[event.series])))

    reports = replay.run(show, stop)
    for tag, report in zip(tags, reports):
        for line in summary_lines(report, tag):
            out.print(literal(line))
    if args.json:
        args.json.write_text(json.dumps({"series": [r.to_dict() for r in reports]}, indent=2))
        err.print(f"summary written to {literal(args.json)}")
    return 1 if any(r.failed for r in reports) else 0


def install_stop_handler() -> threading.Event:
    """An event set by the first Ctrl-C (or SIGTERM): the run winds down and still prints its summary.
    A second Ctrl-C interrupts at once."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``replay``."""
    p = sub.add_parser("replay", help="stream series from disk to a runtime at a scanner's pace, as a console would")
    p.add_argument("paths", nargs="+", type=Path, metavar="SERIES_DIR", help="folders (or files) of slices")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="the runtime (default: tcp://127.0.0.1:5555)")
    p.add_argument("--rate", type=float, default=10.0, help="slices per second per series (default: 10)")
    p.add_argument(
        "--loop", action="store_true", help="start each series again when it ends, until Ctrl-C (default: off)"
    )
    p.add_argument(
        "--jitter", type=float, default=0.0, metavar="MS", help="move each send by up to +-MS ms (default: 0)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the jitter (default: 0)")
    p.add_argument(
        "--outputs",
        default="mask,image,saliency",
        help="reply frames (default: mask,image,saliency; what a viewer on the PUB feed draws from)",
    )
    p.add_argument(
        "--dicom", action="store_true", help="send the DICOM files' bytes instead of raw pixels (default: raw pixels)"
    )
    p.add_argument(
        "--deadline-ms", type=float, default=None, help="per-slice deadline in the runtime's queue (default: none)"
    )
    p.add_argument(
        "--roles",
        default=None,
        metavar="ROLE,ROLE",
        help="the input role of each series in order (S1, S2, ...), for a model that takes several series of one "
        "study, e.g. flair,t1 (default: none sent; with --dicom the runtime recognises them)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="only the series summary, no line per slice (default: a line per slice)"
    )
    p.add_argument("--json", type=Path, help="also write the summary as JSON here (default: none)")
    p.set_defaults(func=cmd_replay)
