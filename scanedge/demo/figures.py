"""The README's pictures, made from the shipped model and demo series: ``python -m scanedge.demo.figures DIR``.

``demo-overlay.png``: three slices as ``scanedge segment`` draws them (outline, halo, light fill) and the
middle one again as ``--heatmap`` draws it. ``demo-montage.png``: the middle of the series as the
``scanedge demo`` montage shows it (slice labels, orientation, legend, the not-for-clinical-use banner).
Generated, never hand-edited, so the pictures always show what the code draws.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from scanedge.imaging.annotate import put_label
from scanedge.imaging.files import load_slices
from scanedge.imaging.montage import montage, tile_label
from scanedge.imaging.overlay import OverlayConfig

__all__ = ["main", "write_figures"]

#: instance numbers shown in demo-overlay.png (slices with lesions at several levels)
OVERLAY_SLICES = (13, 17, 20)


def write_figures(out_dir: Path) -> list[Path]:
    """Write ``demo-overlay.png`` and ``demo-montage.png`` into ``out_dir``; returns their paths."""
    from scanedge.demo.series import demo_series_dir
    from scanedge.runtime.core.pipeline import Pipeline

    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_slices([demo_series_dir()])
    by_number = {item.slice.identity.instance_number: item.slice for item in loaded}
    with Pipeline.open() as pipe:
        panels = []
        for number in OVERLAY_SLICES:
            result = pipe.run(by_number[number])
            panel = result.overlay.copy()  # type: ignore[union-attr]  # drawn by default
            put_label(panel, f"#{number}  {result.finding('lesion').components} lesion(s)", (4, 4), 0.45)
            panels.append(panel)
        heat = pipe.run(by_number[OVERLAY_SLICES[1]], overlay=OverlayConfig(heatmap=True)).overlay.copy()  # type: ignore[union-attr]
        put_label(heat, f"#{OVERLAY_SLICES[1]}  --heatmap", (4, 4), 0.45)
        gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
        strip = np.hstack([panels[0], gap, panels[1], gap, panels[2], gap, heat])
        middle = [item.slice for item in loaded][8:24]
        results = [pipe.run(s) for s in middle]
        sheet = montage(
            [r.overlay for r in results],  # type: ignore[misc]
            8,
            labels=[tile_label(s) for s in middle],
            legend=[(c.name, c.color) for c in pipe.manifest.classes[1:]],
            not_for_clinical_use=pipe.manifest.not_for_clinical_use,
            notes=[f"{pipe.model_label}: slices 9-24 of the synthetic demo series"],
        )
    paths = [out_dir / "demo-overlay.png", out_dir / "demo-montage.png"]
    for path, image in zip(paths, (strip, sheet)):  # smallest PNG: these live in the repository
        _, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        path.write_bytes(data.tobytes())
    return paths


def main(argv: list[str] | None = None) -> int:
    """Write the figures into the folder named on the command line (default: docs/images)."""
    args = sys.argv[1:] if argv is None else argv
    for path in write_figures(Path(args[0] if args else "docs/images")):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
