"""``edge-bench`` (also ``scanedge bench``): latency of the engine, the pipeline and the live stream.

Arguments become the bench modules' own config objects here; nothing below sees argparse. The engine
options (``--backend``, ``--threads``, ``--remote`` and its TLS, timeout and retry settings) are the
``scanedge`` commands' own argument group, so a flag means the same in both commands. Reports go to
stdout (``edge-bench engine M > report.txt`` keeps the table), progress and notes to stderr; ``--json -``
puts the JSON report on stdout instead. An option that means nothing for what was asked (an engine for
``echo``, a model for a runtime already running) is refused rather than silently ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from scanedge.cli.arguments import add_engine_args, engine_options, model_file
from scanedge.console import LazyProgress, make_console, run_command, user_values
from scanedge.errors import ConfigError

if TYPE_CHECKING:  # the bench modules are imported lazily, by the command that runs
    from scanedge.bench.inprocess import RunLength
    from scanedge.bench.report import BenchReport

__all__ = ["build_parser", "main"]


def _run_length(args: argparse.Namespace) -> RunLength:
    from scanedge.bench.inprocess import RunLength

    with user_values():
        return RunLength(count=args.count, duration_s=args.duration, warmup=args.warmup)


def _json_to_stdout(args: argparse.Namespace) -> bool:
    return args.json is not None and str(args.json) == "-"


def _report_console(args: argparse.Namespace, console: Any) -> Any:
    """Where the human-readable report goes: stdout, unless ``--json -`` claims stdout for the JSON."""
    return console if _json_to_stdout(args) else make_console(stderr=False)


def _emit(report: BenchReport, args: argparse.Namespace, console: Any) -> int:
    """The report on stdout (or its JSON with ``--json -``, the table then on stderr), notes on stderr."""
    import json

    to_stdout = _json_to_stdout(args)
    report.render(_report_console(args, console))
    if to_stdout:
        print(json.dumps(report.to_dict(), indent=1))
    elif args.json:
        report.write_json(args.json)
        console.print(f"JSON report: {escape(str(args.json))}")
    if getattr(args, "plot", None):
        report.plot(args.plot)
        console.print(f"plot: {escape(str(args.plot))}")
    return 0


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does: spawned runtimes are stopped on the way out and a
    partial report is printed, instead of the process vanishing and leaving its children behind."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: options that only shape a runtime spawned for the run, with the values that mean "not given"
_SPAWN_ONLY = {
    "model": None,
    "workers": 1,
    "threads": None,
    "backend": "auto",
    "remote": None,
    "runtimes": 1,
    "transport": "tcp",
}


def _check_target(args: argparse.Namespace) -> None:
    """Exactly one of --spawn and --endpoint; with --endpoint, none of the options for a spawned runtime."""
    if (args.endpoint is None) == (not args.spawn):
        raise ConfigError("give exactly one of --spawn or --endpoint URL")
    if args.endpoint is not None:
        given = [
            "--" + name.replace("_", "-") for name, unset in _SPAWN_ONLY.items() if getattr(args, name, unset) != unset
        ]
        if given:
            raise ConfigError(
                f"{', '.join(given)} shape(s) a runtime spawned for the run (--spawn); the runtime at "
                f"{args.endpoint} runs with its own settings"
            )


def _slices(args: argparse.Namespace) -> Any:
    from scanedge.bench.inputs import DEFAULT_SIZE, bench_slices, parse_size

    if args.series is not None and args.size is not None:
        raise ConfigError("--size resizes the demo-patient inputs; the slices of --series keep their own size")
    return bench_slices(parse_size(args.size or DEFAULT_SIZE), args.series)


def cmd_engine(args: argparse.Namespace) -> int:
    from scanedge.bench.inprocess import bench_engine

    console = make_console()
    with user_values():
        shape = tuple(int(v) for v in args.shape.lower().split("x")) if args.shape else None
    with LazyProgress(console, "engine") as progress:
        report = bench_engine(
            args.model,
            options=engine_options(args),
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

    console = make_console()
    slices = _slices(args)
    with LazyProgress(console, "pipeline") as progress:
        report = bench_pipeline(
            slices,
            args.model,
            options=engine_options(args),
            overlay=not args.no_overlay,
            dicom=args.dicom,
            run=_run_length(args),
            baseline=args.baseline,
            progress=progress,
        )
    return _emit(report, args, console)


def cmd_stream(args: argparse.Namespace) -> int:
    from scanedge.bench.stream import StreamConfig, bench_stream

    _check_target(args)
    console = make_console()
    slices = _slices(args)
    versus = engine_options(args, spinning=False, backend="ort", remote=None) if args.versus_local else None
    with user_values():
        settings = StreamConfig(
            endpoint=args.endpoint,
            model=args.model,
            engine=engine_options(args, spinning=False),
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
            keep_warm=args.keep_warm,
            vs_flat_out=args.vs_flat_out,
            transports=tuple(t.strip() for t in args.transport.split(",") if t.strip()),
            payloads=("frames", "shm") if args.shm else tuple(p.strip() for p in args.payload.split(",") if p.strip()),
        )
    where = f"{args.runtimes} spawned runtime(s)" if args.spawn else escape(args.endpoint)
    if settings.engine.remote is not None:
        where += f" on {escape(settings.engine.remote.url)}"
    if versus is not None:
        where += ", side by side with a spawned runtime on the local engine"
    rate = f"{args.rate:g} slices/s per console" if args.rate else "flat out"
    if args.vs_flat_out:
        rate += ", alternating with flat-out blocks"
    console.print(f"streaming to {where}: {args.consoles} console(s), {rate}")
    with _sigterm_interrupts(), LazyProgress(console, "stream") as progress:
        report = bench_stream(slices, settings, progress)
    code = _emit(report, args, console)
    rss = report.settings.get("server_rss_mb")
    if rss:
        _report_console(args, console).print(
            f"runtime memory (RSS): start {rss['start']:.0f} MB, max {rss['max']:.0f} MB, end {rss['end']:.0f} MB "
            f"(second half of the run: {rss['growth_second_half']:+.1f} MB)"
        )
    cpu = report.settings.get("server_cpu")
    if cpu:
        _report_console(args, console).print(
            f"runtime CPU: {cpu['seconds']:.2f} s over {cpu['wall_s']:.1f} s "
            f"({cpu['percent_of_one_core']:.1f}% of one core)"
        )
    return 130 if report.settings.get("interrupted") else code


def cmd_soak(args: argparse.Namespace) -> int:
    import json

    from scanedge.bench.inputs import parse_size
    from scanedge.bench.soak import SoakConfig, bench_soak

    _check_target(args)
    console = make_console()
    with user_values():
        settings = SoakConfig(
            endpoint=args.endpoint,
            model=args.model,
            engine=engine_options(args, spinning=False),
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
    with _sigterm_interrupts(), LazyProgress(console, "soak", delay_s=0.0) as progress:
        report = bench_soak(settings, progress)
    report.render(_report_console(args, console))
    if _json_to_stdout(args):
        print(json.dumps(report.to_dict(), indent=1))
    elif args.json:
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
    """B against A figure by figure; exit 1 past --max-ratio, 2 when the runs are not comparable."""
    import json

    from rich.text import Text

    from scanedge.bench.compare import compare_reports
    from scanedge.bench.report import BenchReport, speed_ratio
    from scanedge.console import print_table

    console = make_console()
    with user_values():  # a file that is not a report
        a, b = BenchReport.read_json(args.a), BenchReport.read_json(args.b)
    figures = [f.strip() for f in args.figures.split(",")] if args.figures else None
    result = compare_reports(a, b, max_ratio=args.max_ratio, figures=figures)
    if result.mismatches and not args.allow_mismatch:
        raise ConfigError(
            "the runs were measured under different conditions, so their ratios would measure that, not the "
            f"change: {'; '.join(result.mismatches)}. Rerun them alike, or pass --allow-mismatch"
        )
    out = make_console(stderr=False)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        rows = [
            [r.figure, r.stat, f"{r.a:.3f}", f"{r.b:.3f}", f"{r.ratio:.3f}", speed_ratio(r.ratio)]
            + (["REGRESSION"] if r.exceeded else [""])
            for r in result.rows
        ]
        columns = ("figure", "stat", "A ms", "B ms", "B/A", "B vs A", "")
        print_table(out, f"B: {args.b} against A: {args.a}", columns, rows, left=2)
        if result.throughput_ratio is not None:
            out.print(
                Text(f"throughput B/A: {result.throughput_ratio:.3f} (B {speed_ratio(1 / result.throughput_ratio)})")
            )
    for m in result.mismatches:
        line = Text("warning: not alike: ", style="bold red")
        line.append(m)
        console.print(line)
    if result.failed:
        bad = ", ".join(f"{r.figure} {r.stat} {r.ratio:.2f}x" for r in result.rows if r.exceeded)
        console.print(Text(f"regression: {bad} exceed --max-ratio {args.max_ratio}", style="red"))
        return 1
    return 0


def _add_run_args(p: argparse.ArgumentParser, *, json_help: str = "the full report (schema scanedge.bench/1)") -> None:
    from scanedge.bench.inprocess import RunLength

    run = RunLength()
    p.add_argument("--count", type=int, default=run.count, help=f"measured iterations (default: {run.count})")
    p.add_argument(
        "--duration", type=float, default=None, help="measure for this many seconds instead of --count (default: off)"
    )
    p.add_argument(
        "--warmup", type=int, default=run.warmup, help=f"unmeasured iterations first (default: {run.warmup})"
    )
    p.add_argument(
        "--json", type=Path, metavar="FILE", help=f"write {json_help} to FILE, or to stdout with '-' (default: none)"
    )
    p.add_argument(
        "--plot", type=Path, help="write a latency histogram + timeline PNG here, needs matplotlib (default: none)"
    )


def _add_common(
    p: argparse.ArgumentParser,
    *,
    baseline_help: str = "also time raw ONNX Runtime session.run, interleaved (default: off)",
) -> None:
    add_engine_args(p, threads_help="inference threads, or auto: measured at start-up (default: one per core)")
    p.add_argument("--baseline", action="store_true", help=baseline_help)
    _add_run_args(p)


def build_parser(prog: str = "edge-bench") -> argparse.ArgumentParser:
    """The ``edge-bench`` argument parser: one subcommand per mode, each bound to its handler (``func``);
    ``prog`` is the name it is called by (``scanedge bench`` runs the same parser)."""
    from scanedge.version import __version__

    ap = argparse.ArgumentParser(prog=prog, description="Latency profiler for scanedge engines, pipeline and stream.")
    ap.add_argument("--version", action="version", version=f"{prog} (scanedge {__version__})")
    sub = ap.add_subparsers(dest="mode", required=True, metavar="MODE")

    p = sub.add_parser("engine", help="the inference engine alone")
    p.add_argument("model", type=Path, help="ONNX model (or engine file)")
    p.add_argument("--shape", help="input shape, e.g. 1x1x256x256 (default: the model's static shape)")
    p.add_argument("--batch", type=int, help="batch size, the first dimension (default: the model's)")
    p.add_argument(
        "--baseline-model",
        type=Path,
        help="time this ONNX model as the baseline, e.g. the fp32 original of an int8 engine (default: none)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_engine)

    p = sub.add_parser("pipeline", help="the in-process pipeline, per stage")
    p.add_argument(
        "--model", type=model_file, default=None, help="ONNX model, or demo / demo-classifier (default: demo)"
    )
    _add_inputs(p)
    p.add_argument("--dicom", action="store_true", help="feed DICOM bytes, adding the decode stage (default: raw)")
    p.add_argument("--no-overlay", action="store_true", help="skip overlay rendering (default: drawn)")
    _add_common(p)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("stream", help="end to end against a runtime over ZeroMQ")
    p.add_argument("--spawn", action="store_true", help="start `scanedge serve` in a child process for the run")
    p.add_argument(
        "--endpoint", help="a running runtime, e.g. tcp://127.0.0.1:5555, instead of --spawn (default: none)"
    )
    p.add_argument(
        "--model", type=model_file, default=None, help="model for --spawn, or demo / demo-classifier (default: demo)"
    )
    p.add_argument("--workers", type=int, default=1, help="workers of a spawned runtime (default: 1)")
    _add_inputs(p)
    p.add_argument("--dicom", action="store_true", help="send DICOM bytes instead of raw pixel frames (default: raw)")
    p.add_argument("--rate", type=float, default=None, help="slices per second per console (default: flat out)")
    p.add_argument("--consoles", type=int, default=1, help="concurrent consoles, each with its own series (default: 1)")
    p.add_argument(
        "--outputs", default="mask,overlay", help="reply frames: mask,overlay,probabilities (default: mask,overlay)"
    )
    p.add_argument(
        "--overlay-encoding", choices=("raw", "jpeg", "png"), default="raw", help="overlay frames (default: raw)"
    )
    p.add_argument(
        "--deadline-ms",
        type=float,
        default=None,
        help="per-request deadline; ok replies arriving after it are counted separately (default: none)",
    )
    p.add_argument(
        "--runtimes", type=int, default=1, help="spawned runtimes; console k talks to runtime k %% N (default: 1)"
    )
    p.add_argument(
        "--versus-local",
        action="store_true",
        help="also spawn a runtime on the local ONNX Runtime engine and drive both in alternating blocks (one "
        "console, flat out): the side-by-side cost of --remote (default: off)",
    )
    p.add_argument(
        "--vs-flat-out",
        action="store_true",
        help="with --rate: alternate paced blocks with flat-out blocks in the same run, flat out being the "
        "baseline (default: off)",
    )
    p.add_argument(
        "--no-keep-warm",
        dest="keep_warm",
        action="store_false",
        help="spawn the runtime with --no-keep-warm (default: kept warm)",
    )
    p.add_argument(
        "--transport",
        default="tcp",
        help="how --spawn's runtime is reached: tcp, ipc, or tcp,ipc to measure both side by side (default: tcp)",
    )
    p.add_argument(
        "--payload",
        default="frames",
        help="how pixels and outputs travel: frames, shm (shared memory), or frames,shm side by side (default: frames)",
    )
    p.add_argument("--shm", action="store_true", help="the same as --payload frames,shm (default: off)")
    _add_common(p, baseline_help="also time the in-process pipeline on the same slices (default: off)")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser(
        "soak", help="overload plus malformed messages for a long time: every reply accounted for, nothing leaks"
    )
    p.add_argument("--spawn", action="store_true", help="start `scanedge serve` in a child process for the run")
    p.add_argument(
        "--endpoint",
        help="a running runtime, e.g. tcp://127.0.0.1:5555, instead of --spawn; no process metrics (default: none)",
    )
    p.add_argument(
        "--model", type=model_file, default=None, help="model for --spawn, or demo / demo-classifier (default: demo)"
    )
    p.add_argument("--workers", type=int, default=1, help="workers of a spawned runtime (default: 1)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load (default: 120)")
    p.add_argument("--consoles", type=int, default=3, help="concurrent consoles, each its own series (default: 3)")
    p.add_argument("--overload", type=float, default=2.0, help="offered load / measured capacity (default: 2)")
    p.add_argument("--malformed", type=float, default=0.05, help="fraction of malformed messages (default: 0.05)")
    p.add_argument("--size", default="256x256", help="slice size of the good requests (default: 256x256)")
    p.add_argument("--window", type=float, default=10.0, help="seconds per report row (default: 10)")
    p.add_argument(
        "--max-rss-slope", type=float, default=60.0, help="fail above this memory growth, MB/hour (default: 60)"
    )
    add_engine_args(p, threads_help="inference threads of a spawned runtime, or auto (default: one per core)")
    p.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write the full report (schema scanedge.soak/1) to FILE, or to stdout with '-' (default: none)",
    )
    p.set_defaults(func=cmd_soak)

    p = sub.add_parser("echo", help="the transport floor: raw ZeroMQ echo of slice-sized messages, no scanedge")
    p.add_argument(
        "--size", default="512x512", help="slice size: requests carry int16 pixels of this size (default: 512x512)"
    )
    p.add_argument(
        "--reply", choices=("mask+overlay", "mask"), default="mask+overlay", help="reply size (default: mask+overlay)"
    )
    p.add_argument("--pause-ms", type=float, default=0.0, help="the peer pauses this long before replying (default: 0)")
    _add_run_args(p)  # no engine, no model: nothing but ZeroMQ is measured
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("compare", help="ratios between two JSON reports; exit 1 past --max-ratio")
    p.add_argument("a", type=Path, help="reference report")
    p.add_argument("b", type=Path, help="candidate report")
    p.add_argument("--max-ratio", type=float, default=None, help="fail when any B/A ratio exceeds this (default: off)")
    p.add_argument("--figures", help="comma-separated figures to compare (default: all shared)")
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="compare runs measured under different conditions (threads, engine, sizes, machine, ...), "
        "flagging each difference (default: refused)",
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON on stdout")
    p.set_defaults(func=cmd_compare)
    return ap


def _add_inputs(p: argparse.ArgumentParser) -> None:
    from scanedge.bench.inputs import DEFAULT_SIZE

    p.add_argument(
        "--size", default=None, help=f"slice size of the demo-patient inputs, ROWSxCOLS (default: {DEFAULT_SIZE})"
    )
    p.add_argument(
        "--series", type=Path, help="use the slices of this DICOM folder instead (default: the demo patient)"
    )


def main(argv: Sequence[str] | None = None, *, prog: str = "edge-bench") -> int:
    """Run ``edge-bench`` with ``argv`` (default: the process arguments); returns the exit status
    (2 for a typed scanedge error, after one line on stderr). ``prog`` names the command in help and errors."""
    args = build_parser(prog).parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
