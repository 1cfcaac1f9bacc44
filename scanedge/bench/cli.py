"""``edge-bench`` (also ``scanedge bench``): latency of the engine, the pipeline and the live stream.

Arguments become the bench modules' own config objects here; nothing below sees argparse.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from scanedge.console import LazyProgress, make_console, run_command, user_values
from scanedge.engines.options import BACKENDS
from scanedge.errors import ConfigError

if TYPE_CHECKING:  # the bench modules are imported lazily, by the command that runs
    from scanedge.bench.inprocess import RunLength
    from scanedge.bench.report import BenchReport
    from scanedge.engines import EngineOptions

__all__ = ["build_parser", "main"]


def _run_length(args: argparse.Namespace) -> RunLength:
    from scanedge.bench.inprocess import RunLength

    with user_values():
        return RunLength(count=args.count, duration_s=args.duration, warmup=args.warmup)


def _engine_options(args: argparse.Namespace, **changes: Any) -> EngineOptions:
    """The engine settings the command line asked for, as the library's one options object (``--remote``
    picks the remote backend, as for ``scanedge``)."""
    from scanedge.engines import EngineOptions, RemoteOptions

    backend, remote = args.backend, None
    if getattr(args, "remote", None) is not None:
        if backend not in ("auto", "remote"):
            raise ConfigError(f"--remote sends inference to a server; it does not go with --backend {backend}")
        backend = "remote"
        with user_values():
            remote = RemoteOptions(args.remote, insecure=args.remote_insecure)
    with user_values():
        return EngineOptions(**{"backend": backend, "threads": args.threads, "remote": remote, **changes})


def _emit(report: BenchReport, args: argparse.Namespace, console: Any) -> int:
    report.render(console)
    if args.json:
        report.write_json(args.json)
        console.print(f"JSON report: {escape(str(args.json))}")
    if args.plot:
        report.plot(args.plot)
        console.print(f"plot: {escape(str(args.plot))}")
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    from scanedge.bench.inprocess import bench_engine

    console = make_console()
    with user_values():
        shape = tuple(int(v) for v in args.shape.lower().split("x")) if args.shape else None
    with LazyProgress(console, "engine") as progress:
        report = bench_engine(
            args.model,
            options=_engine_options(args),
            shape=shape,
            batch=args.batch,
            run=_run_length(args),
            baseline=args.baseline,
            baseline_model=args.baseline_model,
            progress=progress,
        )
    return _emit(report, args, console)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from scanedge.bench.inprocess import bench_pipeline
    from scanedge.bench.inputs import bench_slices, parse_size

    console = make_console()
    slices = bench_slices(parse_size(args.size), args.series)
    with LazyProgress(console, "pipeline") as progress:
        report = bench_pipeline(
            slices,
            args.model,
            options=_engine_options(args),
            overlay=not args.no_overlay,
            dicom=args.dicom,
            run=_run_length(args),
            baseline=args.baseline,
            progress=progress,
        )
    return _emit(report, args, console)


def cmd_stream(args: argparse.Namespace) -> int:
    from scanedge.bench.inputs import bench_slices, parse_size
    from scanedge.bench.stream import StreamSettings, bench_stream

    if (args.endpoint is None) == (not args.spawn):
        raise ConfigError("give exactly one of --spawn or --endpoint URL")
    console = make_console()
    slices = bench_slices(parse_size(args.size), args.series)
    versus = _engine_options(args, spinning=False, backend="ort", remote=None) if args.versus_local else None
    with user_values():
        settings = StreamSettings(
            endpoint=args.endpoint,
            model=args.model,
            engine=_engine_options(args, spinning=False),
            workers=args.workers,
            rate=args.rate,
            consoles=args.consoles,
            outputs=tuple(o.strip() for o in args.outputs.split(",") if o.strip()),
            overlay_encoding=args.overlay_encoding,
            deadline_ms=args.deadline_ms,
            dicom=args.dicom,
            run=_run_length(args),
            baseline=args.baseline,
            runtimes=args.runtimes,
            versus=versus,
        )
    where = f"{args.runtimes} spawned runtime(s)" if args.spawn else escape(args.endpoint)
    if settings.engine.remote is not None:
        where += f" on {escape(settings.engine.remote.url)}"
    if versus is not None:
        where += ", side by side with a spawned runtime on the local engine"
    rate = f"{args.rate:g} slices/s per console" if args.rate else "flat out"
    console.print(f"streaming to {where}: {args.consoles} console(s), {rate}")
    with LazyProgress(console, "stream") as progress:
        report = bench_stream(slices, settings, progress)
    code = _emit(report, args, console)
    rss = report.settings.get("server_rss_mb")
    if rss:
        console.print(
            f"runtime memory (RSS): start {rss['start']:.0f} MB, max {rss['max']:.0f} MB, end {rss['end']:.0f} MB "
            f"(second half of the run: {rss['growth_second_half']:+.1f} MB)"
        )
    return code


def cmd_soak(args: argparse.Namespace) -> int:
    from scanedge.bench.inputs import parse_size
    from scanedge.bench.soak import SoakSettings, bench_soak

    if (args.endpoint is None) == (not args.spawn):
        raise ConfigError("give exactly one of --spawn or --endpoint URL")
    console = make_console()
    with user_values():
        settings = SoakSettings(
            endpoint=args.endpoint,
            model=args.model,
            engine=_engine_options(args, spinning=False),
            workers=args.workers,
            duration_s=args.duration,
            consoles=args.consoles,
            overload=args.overload,
            malformed=args.malformed,
            size=parse_size(args.size),
            window_s=args.window,
            rss_slope_limit_mb_h=args.max_rss_slope,
        )
    where = "a spawned runtime" if args.spawn else escape(args.endpoint)
    console.print(
        f"soaking {where} for {args.duration:g} s: {args.consoles} console(s) at {args.overload:g}x capacity, "
        f"{args.malformed:.0%} malformed messages"
    )
    with LazyProgress(console, "soak", delay_s=0.0) as progress:
        report = bench_soak(settings, progress)
    report.render(make_console(stderr=False))
    if args.json:
        report.write_json(args.json)
        console.print(f"JSON report: {escape(str(args.json))}")
    return 0 if report.passed else 1


def cmd_echo(args: argparse.Namespace) -> int:
    from scanedge.bench.echo import bench_echo
    from scanedge.bench.inputs import parse_size

    rows, cols = parse_size(args.size)
    request = rows * cols * 2  # int16 pixels
    reply = rows * cols * 4 if args.reply == "mask+overlay" else rows * cols
    console = make_console()
    with LazyProgress(console, "echo") as progress:
        report = bench_echo(request, reply, pause_ms=args.pause_ms, run=_run_length(args), progress=progress)
    return _emit(report, args, console)


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.table import Table

    from scanedge.bench.compare import compare_reports
    from scanedge.bench.report import BenchReport

    console = make_console()
    with user_values():  # a file that is not a report
        a, b = BenchReport.read_json(args.a), BenchReport.read_json(args.b)
    figures = [f.strip() for f in args.figures.split(",")] if args.figures else None
    result = compare_reports(a, b, max_ratio=args.max_ratio, figures=figures)
    table = Table(title=escape(f"B/A: {args.b} vs {args.a}"), title_justify="left")
    for col in ("figure", "stat", "A ms", "B ms", "B/A"):
        table.add_column(col, justify="right" if col not in ("figure", "stat") else "left")
    for r in result.rows:
        mark = "[red]" if r.exceeded else ""
        table.add_row(r.figure, r.stat, f"{r.a:.3f}", f"{r.b:.3f}", f"{mark}{r.ratio:.3f}")
    console.print(table)
    if result.throughput_ratio is not None:
        console.print(f"throughput B/A: {result.throughput_ratio:.3f}")
    if result.failed:
        bad = ", ".join(f"{r.figure} {r.stat} {r.ratio:.2f}x" for r in result.rows if r.exceeded)
        console.print(f"[red]regression:[/] {bad} exceed --max-ratio {args.max_ratio}")
        return 1
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: one per core)")
    p.add_argument(
        "--backend",
        "--engine",
        dest="backend",
        choices=BACKENDS,
        default="auto",
        help="inference backend (default auto: a matching TensorRT plan if there is one, else ONNX Runtime)",
    )
    p.add_argument("--count", type=int, default=500, help="measured iterations (default 500)")
    p.add_argument("--duration", type=float, default=None, help="measure for this many seconds instead of --count")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured iterations first (default 20)")
    p.add_argument("--baseline", action="store_true", help="also time raw ONNX Runtime session.run, interleaved")
    p.add_argument("--json", type=Path, help="write the full report (schema scanedge.bench/1) here")
    p.add_argument("--plot", type=Path, help="write a latency histogram + timeline PNG here")
    _add_remote(p)


def _add_remote(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--remote",
        metavar="URL",
        default=None,
        help="run the model on this Open Inference Protocol server (the remote backend): grpc://HOST:PORT[/MODEL]",
    )
    p.add_argument("--remote-insecure", action="store_true", help="allow plain gRPC beyond loopback")


def build_parser() -> argparse.ArgumentParser:
    """The ``edge-bench`` argument parser: one subcommand per mode, each bound to its handler (``func``)."""
    ap = argparse.ArgumentParser(
        prog="edge-bench", description="Latency profiler for scanedge engines, pipeline and stream."
    )
    sub = ap.add_subparsers(dest="mode", required=True, metavar="MODE")

    p = sub.add_parser("engine", help="the inference engine alone")
    p.add_argument("model", type=Path, help="ONNX model (or engine file)")
    p.add_argument("--shape", help="input shape, e.g. 1x1x256x256 (default: the model's static shape)")
    p.add_argument("--batch", type=int, help="batch size (first dimension)")
    p.add_argument("--baseline-model", type=Path, help="time this ONNX model as the baseline (e.g. the fp32 original)")
    _add_common(p)
    p.set_defaults(func=cmd_engine)

    p = sub.add_parser("pipeline", help="the in-process pipeline, per stage")
    p.add_argument("--model", type=Path, default=None, help="default: the shipped demo model")
    p.add_argument("--size", default="512x512", help="slice size for the demo-patient inputs (default 512x512)")
    p.add_argument("--series", type=Path, help="use the slices of this DICOM folder instead")
    p.add_argument("--dicom", action="store_true", help="feed DICOM bytes (adds the decode stage)")
    p.add_argument("--no-overlay", action="store_true", help="skip overlay rendering")
    _add_common(p)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("stream", help="end to end against a runtime over ZeroMQ")
    p.add_argument("--spawn", action="store_true", help="start `scanedge serve` in a child process for the run")
    p.add_argument("--endpoint", help="a running runtime, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--model", type=Path, default=None, help="model for --spawn (default: the demo model)")
    p.add_argument("--workers", type=int, default=1, help="workers of a spawned runtime")
    p.add_argument("--size", default="512x512", help="slice size of the demo-patient inputs (default 512x512)")
    p.add_argument("--series", type=Path, help="send the slices of this DICOM folder instead")
    p.add_argument("--dicom", action="store_true", help="send DICOM bytes instead of raw pixel frames")
    p.add_argument("--rate", type=float, default=None, help="slices per second per console (default: flat out)")
    p.add_argument("--consoles", type=int, default=1, help="concurrent consoles, each with its own series")
    p.add_argument("--outputs", default="mask,overlay", help="reply frames: mask,overlay,probabilities")
    p.add_argument("--overlay-encoding", choices=("raw", "jpeg", "png"), default="raw")
    p.add_argument("--deadline-ms", type=float, default=None, help="per-request deadline")
    p.add_argument(
        "--runtimes", type=int, default=1, help="spawned runtimes; console k talks to runtime k %% N (default 1)"
    )
    p.add_argument(
        "--versus-local",
        action="store_true",
        help="also spawn a runtime on the local ONNX Runtime engine and drive both in alternating blocks (one "
        "console, flat out): the side-by-side cost of --remote",
    )
    _add_common(p)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser(
        "soak", help="overload plus malformed messages for a long time: every reply accounted for, nothing leaks"
    )
    p.add_argument("--spawn", action="store_true", help="start `scanedge serve` in a child process for the run")
    p.add_argument("--endpoint", help="a running runtime, e.g. tcp://127.0.0.1:5555 (no process metrics)")
    p.add_argument("--model", type=Path, default=None, help="model for --spawn (default: the demo model)")
    p.add_argument("--workers", type=int, default=1, help="workers of a spawned runtime (default 1)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    p.add_argument("--consoles", type=int, default=3, help="concurrent consoles, each its own series (default 3)")
    p.add_argument("--overload", type=float, default=2.0, help="offered load / measured capacity (default 2)")
    p.add_argument("--malformed", type=float, default=0.05, help="fraction of malformed messages (default 0.05)")
    p.add_argument("--size", default="256x256", help="slice size of the good requests (default 256x256)")
    p.add_argument("--window", type=float, default=10.0, help="seconds per report row (default 10)")
    p.add_argument(
        "--max-rss-slope", type=float, default=60.0, help="fail above this memory growth, MB/hour (default 60)"
    )
    p.add_argument("--threads", type=int, default=None, help="inference threads of a spawned runtime")
    p.add_argument(
        "--backend",
        "--engine",
        dest="backend",
        choices=BACKENDS,
        default="auto",
        help="backend of a spawned runtime (default auto)",
    )
    _add_remote(p)
    p.add_argument("--json", type=Path, help="write the full report (schema scanedge.soak/1) here")
    p.set_defaults(func=cmd_soak)

    p = sub.add_parser("echo", help="the transport floor: raw ZeroMQ echo of slice-sized messages, no scanedge")
    p.add_argument("--size", default="512x512", help="slice size: requests carry int16 pixels of this size")
    p.add_argument("--reply", choices=("mask+overlay", "mask"), default="mask+overlay", help="reply size")
    p.add_argument("--pause-ms", type=float, default=0.0, help="peer pauses this long before replying")
    _add_common(p)
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("compare", help="ratios between two JSON reports; exit 1 past --max-ratio")
    p.add_argument("a", type=Path, help="reference report")
    p.add_argument("b", type=Path, help="candidate report")
    p.add_argument("--max-ratio", type=float, default=None, help="fail when any B/A ratio exceeds this")
    p.add_argument("--figures", help="comma-separated figures to compare (default: all shared)")
    p.set_defaults(func=cmd_compare)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``edge-bench`` with ``argv`` (default: the process arguments); returns the exit status
    (2 for a typed scanedge error, after one line on stderr)."""
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
