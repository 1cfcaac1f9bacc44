"""What the default overlay's outline costs against the fill-only drawing it replaced, side by side.

``python -m scanedge.bench.overlay_cost [--size 512x512] [--rounds 60]`` segments the demo patient's slices
once, then draws every slice's overlay in both styles, alternating per round in the same process, so both
see the same machine; it prints each style's median and p90 in milliseconds (for BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

from scanedge.bench.inputs import bench_slices, parse_size
from scanedge.errors import ConfigError
from scanedge.imaging.overlay import OverlayConfig, OverlayRenderer
from scanedge.runtime.core.pipeline import Pipeline

__all__ = ["STYLES", "main", "measure"]

#: the styles compared: today's default, and the fill-only drawing of the first release
STYLES = {
    "outline + halo + fill (default)": OverlayConfig(),
    "fill only (before)": OverlayConfig(contours=False, halo=False),
}


def measure(size: tuple[int, int] = (512, 512), rounds: int = 60) -> dict[str, list[float]]:
    """Milliseconds per overlay drawn, per style in :data:`STYLES`, over ``rounds`` passes of the slices."""
    slices = bench_slices(size)
    with Pipeline.open() as pipe:
        results = [pipe.run(s, overlay=False, ignore_scope=True) for s in slices]
        renderer = OverlayRenderer(pipe.manifest)
    times: dict[str, list[float]] = {name: [] for name in STYLES}
    for _ in range(rounds):
        for name, options in STYLES.items():
            for s, r in zip(slices, results):
                t = time.perf_counter()
                renderer.render(s, r.mask, r.probabilities, options)
                times[name].append((time.perf_counter() - t) * 1e3)
    return times


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def main(argv: list[str] | None = None) -> int:
    """Measure and print one line per style."""
    parser = argparse.ArgumentParser(prog="python -m scanedge.bench.overlay_cost", description=__doc__)
    parser.add_argument("--size", type=_size, default=(512, 512), help="slice size (default: 512x512)")
    parser.add_argument("--rounds", type=int, default=60, help="passes over the 32 slices (default: 60)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    for name, values in measure(args.size, args.rounds).items():
        values.sort()
        p90 = values[int(len(values) * 0.9)]
        print(f"{name}: p50 {statistics.median(values):.3f} ms, p90 {p90:.3f} ms (n={len(values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
