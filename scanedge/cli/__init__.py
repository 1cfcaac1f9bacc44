"""The ``scanedge`` command: one module per command group, each only parsing, delegating and printing.

Library code never sees an argparse Namespace: every command turns its arguments into the library's
own frozen config objects first (shared argument groups live in :mod:`scanedge.cli.arguments`).
Progress and tables go to stderr, machine-readable output to stdout; exit codes are set by
:func:`scanedge.console.run_command`.

=====================  =========================================
module                 commands
=====================  =========================================
``cli.segment``        ``segment``, ``demo``
``cli.live``           ``demo --live`` (runtime, replay and viewer in one process)
``cli.models``         ``inspect``, ``manifest init``
``cli.serve``          ``serve``, ``keys generate``, ``keys allow``
``cli.replay``         ``replay``
``cli.view``           ``view``
``cli.convert``        ``convert``, ``verify``, ``export-triton``
``cli.dicom``          ``dicom-listen``
``cli.bench``          ``bench``, and the ``edge-bench`` command itself
=====================  =========================================
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from scanedge.cli import convert, dicom, models, replay, segment, serve, view
from scanedge.console import run_command
from scanedge.version import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``scanedge`` argument parser with every command (``bench`` is only listed: edge-bench parses it)."""
    ap = argparse.ArgumentParser(prog="scanedge", description="Edge inference for medical scanner consoles.")
    ap.add_argument("--version", action="version", version=f"scanedge {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    segment.add_parsers(sub)
    sub.add_parser("bench", help="latency profiler (same as edge-bench; see `edge-bench --help`)", add_help=False)
    serve.add_parsers(sub)
    replay.add_parsers(sub)
    view.add_parsers(sub)
    dicom.add_parsers(sub)
    convert.add_parsers(sub)
    models.add_parsers(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scanedge`` with ``argv`` (default: the process arguments); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # `scanedge bench ...` is edge-bench
        from scanedge.cli.bench import main as bench_main

        return bench_main(argv[1:], prog="scanedge bench")
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
