"""The ``scanedge`` command. Parses arguments, builds config objects, calls the library, prints.

Library code never sees an argparse Namespace: every command turns its arguments into the library's
own frozen config objects first. Progress and tables go to stderr, machine-readable output to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scanedge import __version__
from scanedge.console import LazyProgress, make_console, run_command
from scanedge.errors import ScanedgeError

__all__ = ["main"]


def _percentile_line(values: Sequence[float]) -> str:
    a = np.asarray(values, np.float64)
    p50, p90, p99 = np.percentile(a, (50, 90, 99))
    return f"p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms, max {a.max():.2f} ms (n={a.size})"


# --- segment / demo -------------------------------------------------------------------------------------


def _overlay_options(args: argparse.Namespace):
    from scanedge.imaging.overlay import OverlayOptions

    return OverlayOptions(alpha=args.alpha, contours=args.contours, heatmap=args.heatmap)


def _open_pipeline(args: argparse.Namespace, console):
    from scanedge.engines import EngineOptions
    from scanedge.imaging.slices import SliceLimits
    from scanedge.runtime.pipeline import Pipeline, PipelineConfig

    config = PipelineConfig(limits=SliceLimits(max_pixels=args.max_pixels), overlay=_overlay_options(args))
    options = EngineOptions(backend=args.backend, threads=args.threads)
    with console.status("loading the model and warming up the engine ..."):
        pipe = Pipeline.open(args.model, manifest=args.manifest, options=options, config=config)
    man = pipe.manifest
    console.print(
        f"model [bold]{man.name}[/] {man.version} on {pipe.engine.backend} "
        f"{pipe.engine.describe().get('providers', '')}"
    )
    if man.intended_use:
        console.print(f"[yellow]{man.intended_use}[/]")
    return pipe


def _segment_all(pipe, loaded, out: Path, fmt: str, console, save_masks: bool) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    records = []
    series = [item.slice for item in loaded]
    from scanedge.imaging.series import context_window

    k = pipe.manifest.input.context_slices
    with LazyProgress(console, "segmenting", delay_s=1.0) as progress:
        for i, item in enumerate(loaded):
            result = pipe.run(item.slice, context=context_window(series, i, k))
            stem = item.name.replace("#", "_f").replace("/", "_")
            overlay_path = out / f"{stem}.overlay.{'jpg' if fmt == 'jpeg' else 'png'}"
            overlay_path.write_bytes(result.encode_overlay(fmt))
            record = {"file": str(item.path), "name": item.name, "overlay": str(overlay_path), **result.to_dict()}
            if save_masks:
                mask_path = out / f"{stem}.mask.npy"
                np.save(mask_path, result.mask)
                record["mask"] = str(mask_path)
            records.append(record)
            progress(i + 1, len(loaded))
    return records


def _series_summary(
    records: list[dict[str, Any]], spacing_between: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    by_series: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_series.setdefault(r["series_uid"], []).append(r)
    summary = []
    for uid, rows in by_series.items():
        totals = [r["timings_ms"]["total_ms"] for r in rows]
        classes: dict[str, dict[str, Any]] = {}
        for r in rows:
            for f in r["findings"]:
                c = classes.setdefault(
                    f["name"], {"slices_with_finding": 0, "pixels": 0, "area_mm2": 0.0, "components": 0}
                )
                c["slices_with_finding"] += int(f["pixels"] > 0)
                c["pixels"] += f["pixels"]
                c["area_mm2"] = (
                    None if f["area_mm2"] is None or c["area_mm2"] is None else c["area_mm2"] + f["area_mm2"]
                )
                c["components"] += f["components"]
        step = (spacing_between or {}).get(uid)
        for c in classes.values():
            c["volume_mm3"] = None if step is None or c["area_mm2"] is None else round(c["area_mm2"] * step, 1)
        summary.append(
            {
                "series_uid": uid,
                "slices": len(rows),
                "classes": classes,
                "latency_ms": {
                    "p50": float(np.percentile(totals, 50)),
                    "p90": float(np.percentile(totals, 90)),
                    "p99": float(np.percentile(totals, 99)),
                    "max": float(max(totals)),
                },
            }
        )
    return summary


def _spacing_between(loaded) -> dict[str, float]:
    """Median distance between neighbouring slices of each series (for lesion volume)."""
    positions: dict[str, list[float]] = {}
    for item in loaded:
        pos = item.slice.geometry.position_along_normal
        if pos is not None:
            positions.setdefault(item.slice.identity.series_uid, []).append(pos)
    return {uid: float(np.median(np.diff(sorted(p)))) for uid, p in positions.items() if len(p) > 1}


def cmd_segment(args: argparse.Namespace) -> int:
    from scanedge.imaging.files import load_slices
    from scanedge.imaging.slices import SliceLimits

    console = make_console()
    with console.status("reading slices ..."):
        loaded = load_slices(args.paths, limits=SliceLimits(max_pixels=args.max_pixels))
    if not loaded:
        console.print("[red]no slices found[/] under " + ", ".join(map(str, args.paths)))
        return 2
    console.print(f"{len(loaded)} slice(s) from {len({i.path for i in loaded})} file(s)")
    with _open_pipeline(args, console) as pipe:
        records = _segment_all(pipe, loaded, args.out, args.format, console, args.save_masks)
    summary = _series_summary(records, _spacing_between(loaded))
    report = {"scanedge": __version__, "model": records[0]["model"], "series": summary, "slices": records}
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    for s in summary:
        found = ", ".join(
            f"{name}: {c['slices_with_finding']} slice(s), {c['components']} component(s)"
            for name, c in s["classes"].items()
        )
        console.print(f"series {s['series_uid'] or '(none)'}: {s['slices']} slices; {found}")
    console.print("latency per slice: " + _percentile_line([r["timings_ms"]["total_ms"] for r in records]))
    console.print(f"overlays and results.json written to [bold]{args.out}[/]")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.table import Table

    from scanedge.demo.series import demo_series_dir, load_demo_patient
    from scanedge.imaging.files import load_slices

    console = make_console()
    with console.status("preparing the demo series (DICOM, written on first use) ..."):
        series_dir = demo_series_dir()
        loaded = load_slices([series_dir])
    console.print(f"demo series: {len(loaded)} synthetic FLAIR-like slices in {series_dir}")
    with _open_pipeline(args, console) as pipe:
        records = _segment_all(pipe, loaded, args.out, args.format, console, save_masks=False)
        masks = [pipe.run(item.slice, overlay=False).mask for item in loaded] if args.check else []
    table = Table(title="per-slice results (ms)", show_lines=False)
    for col in ("slice", "lesion px", "area mm²", "lesions", "max p", "pre", "infer", "post", "overlay", "total"):
        table.add_column(col, justify="right")
    for r in records:
        f = r["findings"][0]
        t = r["timings_ms"]
        table.add_row(
            str(r["instance_number"]),
            str(f["pixels"]),
            f"{f['area_mm2']:.0f}" if f["area_mm2"] is not None else "-",
            str(f["components"]),
            f"{f['max_probability']:.2f}",
            f"{t['preprocess_ms']:.2f}",
            f"{t['infer_ms']:.2f}",
            f"{t['postprocess_ms']:.2f}",
            f"{t['overlay_ms']:.2f}",
            f"{t['total_ms']:.2f}",
        )
    console.print(table)
    summary = _series_summary(records, _spacing_between(loaded))[0]
    lesion = summary["classes"]["lesion"]
    console.print(
        f"series summary: lesions on {lesion['slices_with_finding']}/{summary['slices']} slices, "
        f"{lesion['components']} lesion component(s) in all, lesion volume ~{lesion['volume_mm3']} mm³"
    )
    console.print(
        "latency per slice (in-process, all stages): "
        + _percentile_line([r["timings_ms"]["total_ms"] for r in records])
    )
    console.print("model only: " + _percentile_line([r["timings_ms"]["infer_ms"] for r in records]))
    if masks:
        truth = load_demo_patient().labels.astype(bool)
        pred = np.stack(masks).astype(bool)
        dice = 2 * np.sum(truth & pred) / max(1, truth.sum() + pred.sum())
        console.print(f"agreement with the generator's true lesion labels: Dice {dice:.3f}")
    montage = _montage([r["overlay"] for r in records], args.out / "montage.png")
    report = {"scanedge": __version__, "model": records[0]["model"], "series": [summary], "slices": records}
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"overlays: [bold]{args.out}[/] (one per slice, montage: {montage.name}; results.json)")
    return 0


def _montage(paths: list[str], out: Path, columns: int = 8) -> Path:
    import cv2

    tiles = [cv2.imread(p) for p in paths]
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = cv2.resize(tile, (w, h))
    cv2.imwrite(str(out), sheet)
    return out


# --- inspect / manifest -------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    import onnx

    from scanedge.manifest import graph_sha256, load_manifest

    console = make_console(stderr=False)
    model = onnx.load(str(args.model), load_external_data=False)
    io = _graph_io(model)
    sha = graph_sha256(model)
    manifest, source = load_manifest(args.model, args.manifest, verify_sha=False)
    sha_ok = manifest.onnx_sha256 in (None, sha)
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(args.model),
                    "graph_sha256": sha,
                    "manifest_source": source,
                    "manifest_matches_graph": sha_ok,
                    "inputs": io[0],
                    "outputs": io[1],
                    "manifest": manifest.to_dict(),
                },
                indent=2,
            )
        )
        return 0 if sha_ok else 1
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default="?")
    console.print(f"[bold]{args.model}[/]  opset {opset}, graph sha256 {sha}")
    for kind, tensors in (("input", io[0]), ("output", io[1])):
        for t in tensors:
            console.print(f"  {kind:6} {t['name']}: {t['dtype']} {t['shape']}")
    console.print(f"manifest ({source}):" + ("" if sha_ok else " [red]written for another graph (sha256 differs)[/]"))
    console.print_json(manifest.to_json())
    return 0 if sha_ok else 1


def _graph_io(model) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import onnx

    inits = {i.name for i in model.graph.initializer}

    def describe(v) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}

    return (
        [describe(v) for v in model.graph.input if v.name not in inits],
        [describe(v) for v in model.graph.output],
    )


def _csv(text: str | None, cast=str) -> tuple:
    return tuple(cast(x.strip()) for x in text.split(",") if x.strip()) if text else ()


def _parse_color(text: str) -> tuple[int, int, int]:
    text = text.strip().lstrip("#")
    if len(text) == 6 and all(c in "0123456789abcdefABCDEF" for c in text):
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    raise ValueError(f"colour {text!r} is not RRGGBB hex")


_PALETTE = ((0, 0, 0), (255, 40, 40), (40, 200, 255), (255, 220, 0), (60, 220, 90), (200, 80, 255), (255, 140, 0))


def cmd_manifest_init(args: argparse.Namespace) -> int:
    import onnx

    from scanedge.manifest import (
        ClassSpec,
        InputSpec,
        IntensityPolicy,
        Manifest,
        OutputSpec,
        SizePolicy,
        check_model_io,
        embed_manifest,
        graph_sha256,
        sidecar_path,
    )

    console = make_console()
    model = onnx.load(str(args.model))
    inputs, outputs = _graph_io(model)
    if not inputs or not outputs:
        raise ScanedgeError("the ONNX graph declares no inputs or no outputs")
    inp = next((i for i in inputs if i["name"] == args.input_name), None) if args.input_name else inputs[0]
    out = next((o for o in outputs if o["name"] == args.output_name), None) if args.output_name else outputs[0]
    if inp is None or out is None:
        raise ScanedgeError(
            f"no such tensor; inputs are {[i['name'] for i in inputs]}, outputs {[o['name'] for o in outputs]}"
        )
    shape = inp["shape"]
    layout = args.layout or ("NHWC" if len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW")
    h_axis, w_axis = (2, 3) if layout == "NCHW" else (1, 2)
    if args.size:
        h, w = (int(v) for v in args.size.lower().split("x"))
        size = SizePolicy(mode="fixed", height=h, width=w, interpolation=args.interpolation)
    elif len(shape) == 4 and isinstance(shape[h_axis], int) and isinstance(shape[w_axis], int):
        size = SizePolicy(mode="fixed", height=shape[h_axis], width=shape[w_axis], interpolation=args.interpolation)
    else:
        size = SizePolicy(
            mode=args.size_mode, height=None, width=None, multiple=args.multiple, interpolation=args.interpolation
        )
    names = _csv(args.classes)
    colors = [_parse_color(c) for c in _csv(args.colors)] or [_PALETTE[i % len(_PALETTE)] for i in range(len(names))]
    thresholds = _csv(args.thresholds, float) or (0.5,) * len(names)
    if len(colors) != len(names) or len(thresholds) != len(names):
        raise ScanedgeError("--colors and --thresholds need one value per class (background included)")
    window = _csv(args.window, float)
    intensity = IntensityPolicy(
        mode=args.intensity,
        apply_rescale=not args.no_rescale,
        window_center=window[0] if window else None,
        window_width=window[1] if window else None,
        **(
            {"percentile_low": _csv(args.percentiles, float)[0], "percentile_high": _csv(args.percentiles, float)[1]}
            if args.percentiles
            else {}
        ),
        scale=args.scale,
        mean=_csv(args.mean, float),
        std=_csv(args.std, float),
    )
    cpp = 1 if args.color == "gray" else 3
    manifest = Manifest(
        name=args.name,
        version=args.version,
        description=args.description,
        intended_use=args.intended_use,
        input=InputSpec(
            name=inp["name"],
            layout=layout,
            channels=(2 * args.context + 1) * cpp,
            color=args.color,
            context_slices=args.context,
        ),
        size=size,
        intensity=intensity,
        output=OutputSpec(name=out["name"], kind=args.kind, activation=args.activation),
        classes=tuple(ClassSpec(n, c, t) for n, c, t in zip(names, colors, thresholds)),
    )
    check_model_io(manifest, [(i["name"], i["shape"]) for i in inputs], [(o["name"], o["shape"]) for o in outputs])
    if args.sidecar:
        path = sidecar_path(args.model)
        path.write_text(manifest.replace(onnx_sha256=graph_sha256(model)).to_json() + "\n")
        console.print(f"wrote {path}")
    else:
        target = args.out or args.model
        embed_manifest(model, manifest, target)
        console.print(f"embedded the manifest into {target}")
    return 0


# --- serve / keys -----------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    from scanedge.engines import EngineOptions
    from scanedge.imaging.slices import SliceLimits
    from scanedge.runtime.security import CurveServerKeys
    from scanedge.runtime.server import ModelSpec, Server, ServerConfig

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if (args.curve_secret is None) != (args.curve_clients is None):
        raise ValueError("--curve-secret and --curve-clients go together")
    curve = CurveServerKeys(args.curve_secret, args.curve_clients) if args.curve_secret else None
    config = ServerConfig(
        bind=args.bind,
        publish=args.publish,
        workers=args.workers,
        engine=EngineOptions(backend=args.backend, threads=args.threads, spinning=args.spinning),
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        max_inflight_bytes=int(args.max_inflight_mb * 1024 * 1024),
        limits=SliceLimits(max_pixels=args.max_pixels),
        curve=curve,
        insecure=args.insecure,
        stats_log_interval_s=args.stats_interval,
    )
    if args.insecure:
        logging.getLogger("scanedge.runtime").warning(
            "--insecure: traffic is NOT encrypted and any client may connect; use CurveZMQ on real networks"
        )
    server = Server([ModelSpec(m) for m in args.model], config)

    def stop(signum: int, frame: object) -> None:
        logging.getLogger("scanedge.runtime").info("signal %d: finishing requests in flight, then exiting", signum)
        server.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve()
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from scanedge.runtime.security import generate_keys

    public, secret = generate_keys(args.dir, args.name)
    make_console().print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return 0


def cmd_keys_allow(args: argparse.Namespace) -> int:
    from scanedge.runtime.security import allow_client

    target = allow_client(args.clients_dir, args.public_key)
    make_console().print(f"allowed: {target}")
    return 0


# --- convert / verify / export ----------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    import time

    from scanedge.converters.convert import ConvertOptions, convert

    console = make_console()
    options = ConvertOptions(
        target=args.target,
        precision=args.precision,
        calibration=args.calibration,
        calibration_limit=args.calibration_limit,
        shapes=args.shapes,
        out_dir=args.out,
        timing_cache=args.timing_cache,
    )
    t0 = time.perf_counter()
    with console.status("converting ...") as status:
        result = convert(
            args.model, options, manifest_path=args.manifest, say=lambda m: (console.print(m), status.update(m))
        )
    console.print(
        f"[bold]{result.output}[/] ({options.target}, {options.precision}) in {time.perf_counter() - t0:.1f} s; "
        f"check the result with: scanedge verify {result.output} --reference {args.model} --data SLICES"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from scanedge.converters.verify import DEFAULT_MIN_DICE, Thresholds, judge, measure_agreement
    from scanedge.engines import EngineOptions, open_engine
    from scanedge.imaging.files import load_slices
    from scanedge.manifest import load_manifest

    console = make_console()
    manifest, _ = load_manifest(args.engine_file, args.manifest)
    ref_manifest, _ = load_manifest(args.reference)
    if [c.name for c in manifest.classes] != [c.name for c in ref_manifest.classes]:
        raise ValueError("the engine and the reference model have different classes; they cannot be compared")
    with console.status("reading slices ..."):
        slices = [item.slice for item in load_slices([args.data])][: args.limit]
    if not slices:
        raise ValueError(f"no slices found in {args.data}")
    with console.status(f"running both models on {len(slices)} slice(s) ..."):
        with (
            open_engine(
                args.engine_file,
                EngineOptions(backend=args.backend, threads=args.threads),
                onnx_sha256=manifest.onnx_sha256,
            ) as cand,
            open_engine(args.reference, EngineOptions(backend="ort", threads=args.threads)) as ref,
        ):
            agreement = measure_agreement(cand, ref, ref_manifest, slices)
    thresholds = Thresholds(args.min_dice or DEFAULT_MIN_DICE[manifest.precision], args.max_abs_diff)
    verdict = judge(agreement, thresholds)
    if args.json:
        print(
            json.dumps(
                {
                    "agreement": agreement.to_dict(),
                    "thresholds": thresholds.__dict__,
                    "passed": verdict.passed,
                    "failures": list(verdict.failures),
                },
                indent=2,
            )
        )
    dice = ", ".join(f"{k} {v:.4f}" for k, v in agreement.dice.items())
    console.print(
        f"{manifest.precision} engine vs reference on {agreement.slices} slices: Dice {dice}; probabilities "
        f"max |diff| {agreement.max_abs_diff:.4f}, mean {agreement.mean_abs_diff:.5f}; "
        f"{agreement.pixel_agreement:.4%} of mask pixels identical"
    )
    if verdict.passed:
        console.print(f"[green]PASS[/] (Dice >= {thresholds.min_dice})")
        return 0
    console.print("[red]FAIL[/] " + "; ".join(verdict.failures))
    return 1


def cmd_export_triton(args: argparse.Namespace) -> int:
    from scanedge.converters.triton import export_triton

    entry = export_triton(args.model, args.repo, manifest_path=args.manifest, instances=args.instances)
    make_console().print(f"Triton model repository entry written to {entry} (config.pbtxt, 1/model.*)")
    return 0


# --- argument parsing ----------------------------------------------------------------------------------


def _add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        "--engine",  # the earlier name of the flag, kept so that existing scripts keep working
        dest="backend",
        choices=("auto", "ort", "tensorrt"),
        default="auto",
        help="inference backend (default auto: a matching TensorRT plan if there is one, else ONNX Runtime)",
    )


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped demo model)")
    p.add_argument("--manifest", type=Path, default=None, help="manifest JSON overriding the embedded one")
    _add_backend_arg(p)
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: one per core)")
    p.add_argument("--format", choices=("png", "jpeg"), default="png", help="overlay file format")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of class colours (0-1)")
    p.add_argument("--contours", action="store_true", help="outline each finding")
    p.add_argument("--heatmap", action="store_true", help="tint by lesion probability")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="refuse slices larger than this")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scanedge", description="Edge inference for medical scanner consoles.")
    ap.add_argument("--version", action="version", version=f"scanedge {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    sub.add_parser("bench", help="latency profiler (same as edge-bench; see `edge-bench --help`)", add_help=False)

    p = sub.add_parser("serve", help="run the streaming runtime (ZeroMQ; docs/protocol.md)")
    p.add_argument("--model", type=Path, action="append", default=[], help="model to serve (repeatable; default: demo)")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ROUTER endpoint for consoles")
    p.add_argument("--publish", default=None, help="PUB endpoint for viewers, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--workers", type=int, default=1, help="inference workers (each with its own engine)")
    p.add_argument("--threads", type=int, default=None, help="inference threads per worker")
    p.add_argument("--spinning", action="store_true", help="let ONNX Runtime threads busy-wait (off by default)")
    _add_backend_arg(p)
    p.add_argument("--max-message-mb", type=float, default=64.0, help="larger messages are refused (TOO_LARGE)")
    p.add_argument("--max-inflight-mb", type=float, default=256.0, help="payload bytes in flight before BUSY")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096)
    p.add_argument("--curve-secret", type=Path, help="the runtime's CurveZMQ secret key file (NAME.key_secret)")
    p.add_argument("--curve-clients", type=Path, help="directory of allowed client public keys (*.key)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without encryption")
    p.add_argument("--stats-interval", type=float, default=60.0, help="seconds between stats log lines")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keys", help="CurveZMQ keys for networked runtimes")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = ksub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret into DIR")
    k.add_argument("dir", type=Path)
    k.add_argument("--name", required=True, help="e.g. server, or the console's name")
    k.set_defaults(func=cmd_keys_generate)
    k = ksub.add_parser("allow", help="add a client's public key to the runtime's allow-list directory")
    k.add_argument("clients_dir", type=Path)
    k.add_argument("public_key", type=Path)
    k.set_defaults(func=cmd_keys_allow)

    p = sub.add_parser("convert", help="build an optimized engine (ORT or TensorRT; fp32, fp16, int8)")
    p.add_argument("model", type=Path, help="ONNX model with a manifest")
    p.add_argument("--target", choices=("ort", "tensorrt"), default="ort")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--calibration", type=Path, help="folder of slices for int8 calibration")
    p.add_argument("--calibration-limit", type=int, default=200, help="use at most this many slices")
    p.add_argument(
        "--shapes", help="TensorRT optimization profile MIN:OPT:MAX, e.g. 1x1x256x256:1x1x256x256:1x1x512x512"
    )
    p.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file (default: in --out)")
    p.add_argument("--manifest", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("engines"))
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("verify", help="compare an engine's segmentations with the reference ONNX model")
    p.add_argument("engine_file", type=Path, metavar="ENGINE", help="converted ONNX model or TensorRT plan")
    p.add_argument("--reference", type=Path, required=True, help="the original ONNX model")
    p.add_argument("--data", type=Path, required=True, help="folder of slices to compare on")
    _add_backend_arg(p)
    p.add_argument("--manifest", type=Path, default=None)
    p.add_argument("--min-dice", type=float, default=None, help="default: 0.99 for fp16, 0.97 for int8, 0.999 fp32")
    p.add_argument("--max-abs-diff", type=float, default=None, help="also fail above this probability difference")
    p.add_argument("--limit", type=int, default=500, help="compare at most this many slices")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("export-triton", help="write a Triton model repository entry")
    p.add_argument("model", type=Path, help="ONNX model or TensorRT plan (with its manifest)")
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--manifest", type=Path, default=None)
    p.add_argument("--instances", type=int, default=1)
    p.set_defaults(func=cmd_export_triton)

    p = sub.add_parser("inspect", help="print a model's inputs, outputs and manifest")
    p.add_argument("model", type=Path)
    p.add_argument("--manifest", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("manifest", help="write manifests for bring-your-own models")
    msub = p.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")
    m = msub.add_parser("init", help="describe an ONNX model and embed the manifest (or write a sidecar)")
    m.add_argument("model", type=Path)
    m.add_argument("--name", required=True)
    m.add_argument("--classes", required=True, help="comma-separated class names, background first")
    m.add_argument("--version", default="1.0.0")
    m.add_argument("--description", default="")
    m.add_argument("--intended-use", default="")
    m.add_argument("--colors", help="RRGGBB per class, comma-separated")
    m.add_argument("--thresholds", help="probability threshold per class, comma-separated")
    m.add_argument("--input-name")
    m.add_argument("--output-name")
    m.add_argument("--layout", choices=("NCHW", "NHWC"))
    m.add_argument("--color", choices=("gray", "rgb", "bgr"), default="gray")
    m.add_argument("--context", type=int, default=0, help="neighbouring slices on each side (2.5D)")
    m.add_argument("--size", help="HxW the model takes (default: from a static input shape)")
    m.add_argument("--size-mode", choices=("multiple", "pad"), default="pad", help="for dynamic height/width")
    m.add_argument("--multiple", type=int, default=32)
    m.add_argument("--interpolation", choices=("linear", "area", "nearest", "cubic"), default="area")
    m.add_argument("--intensity", choices=("none", "window", "percentile", "zscore", "scale"), default="zscore")
    m.add_argument("--no-rescale", action="store_true", help="do not apply DICOM rescale slope/intercept")
    m.add_argument("--window", help="CENTER,WIDTH for --intensity window")
    m.add_argument("--percentiles", help="LOW,HIGH for --intensity percentile")
    m.add_argument("--scale", type=float, default=1.0)
    m.add_argument("--mean", help="per-channel means for --intensity scale")
    m.add_argument("--std", help="per-channel standard deviations for --intensity scale")
    m.add_argument("--kind", choices=("logits", "probabilities"), default="logits")
    m.add_argument("--activation", choices=("softmax", "sigmoid"), default="softmax")
    m.add_argument("--sidecar", action="store_true", help="write MODEL.onnx.manifest.json instead of embedding")
    m.add_argument("--out", type=Path, help="write the model with its manifest here (default: in place)")
    m.set_defaults(func=cmd_manifest_init)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # `scanedge bench ...` is edge-bench
        from scanedge.bench.cli import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
