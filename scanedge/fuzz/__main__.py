"""``python -m scanedge.fuzz TARGET SECONDS``: coverage-guided fuzzing with atheris (libFuzzer).

Seeds come from the target's own valid inputs (plus any files in ``--corpus``); new interesting inputs
are kept in the corpus folder, and a crashing input is written to ``--artifacts`` so it can become a
regression test. Exit status 0: no crash in the time given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from scanedge.fuzz.targets import TARGETS

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzer as the command line says; returns the exit status (0: no crash, 2: atheris missing)."""
    ap = argparse.ArgumentParser(prog="python -m scanedge.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("target", nargs="?", choices=sorted(TARGETS), help="what to fuzz")
    ap.add_argument("seconds", nargs="?", type=int, default=60, help="how long to run (default: 60)")
    ap.add_argument("--corpus", type=Path, help="corpus folder to read and grow (default: a temporary folder)")
    ap.add_argument("--artifacts", type=Path, default=Path("."), help="where crashing inputs are written")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    args = ap.parse_args(argv)
    if args.list or args.target is None:
        for t in TARGETS.values():
            print(f"{t.name:10} {t.description}")
        return 0
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: pip install 'scanedge[fuzz]'", file=sys.stderr)
        return 2
    target = TARGETS[args.target]
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix=f"scanedge-fuzz-{target.name}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(target.seeds()):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    print(f"fuzzing {target.name} for {args.seconds} s; corpus {corpus}", file=sys.stderr)
    for seed in target.seeds():  # imports everything the target reaches, so it can be instrumented
        target.run(seed)
    atheris.instrument_all()
    libfuzzer_args = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={args.seconds}",
        f"-artifact_prefix={args.artifacts.resolve()}/",
        "-rss_limit_mb=4096",
        "-timeout=10",
        "-print_final_stats=1",
    ]
    atheris.Setup(libfuzzer_args, target.run)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
