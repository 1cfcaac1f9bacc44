"""Train, evaluate and export the shipped demo model (needs the ``train`` extra; CPU is enough).

    pip install torch==2.13.0 -e '.[train]'
    python -m scanedge.demo.train            # ~25 min on 2 cores; writes the model + demo patient

What it does: synthesises FLAIR-like slices with lesions on MNI152 anatomy (scanedge.demo.synth), runs
each through scanedge's own preprocessor (so training sees exactly the tensors inference sees), trains
a small U-Net, exports it to ONNX with its manifest embedded, and evaluates the exported model through
the scanedge pipeline on held-out subjects that were never trained on (their own random seeds, lesions,
contrast and deformation). Finally it writes the demo patient, one more held-out subject, as the
volume the demo DICOM series is generated from.

The network keeps full-resolution detail without full-resolution convolutions: a pixel-unshuffle stem
turns 256x256x1 into 128x128x4, four encoder levels (16-32-64-96 channels) and an additive-skip decoder
work below that, and a pixel-shuffle head restores 256x256. That is ~0.7 GFLOP per slice and runs in
about 4 ms with ONNX Runtime on two cores, where a plain base-16 U-Net needs 6 GFLOP and ~32 ms.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scanedge.demo import synth
from scanedge.demo.assets import DEMO_MODEL_PATH, DEMO_PATIENT_PATH, demo_manifest
from scanedge.imaging.preprocess import Preprocessor
from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest

__all__ = [
    "evaluate",
    "export",
    "lesion_metrics",
    "main",
    "make_training_set",
    "preprocess_slice",
    "subject_volume",
    "train",
    "write_demo_patient",
]

CHANNELS = (16, 32, 64, 96)
HELD_OUT_SEEDS = tuple(range(900_000, 900_006))
DEMO_PATIENT_SEED = 424_242
DEMO_SLICES = tuple(range(22, 150, 4))  # 32 axial slices, 4 mm apart


def _build_network() -> Any:  # torch is imported lazily: the runtime never needs it
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def conv(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class LesionNet(nn.Module):
        def __init__(self, channels: Sequence[int] = CHANNELS, classes: int = 2) -> None:
            super().__init__()
            self.encoders = nn.ModuleList()
            previous = 4
            for c in channels:
                self.encoders.append(nn.Sequential(conv(previous, c), conv(c, c)))
                previous = c
            self.bottleneck = conv(channels[-1], channels[-1])
            self.reduce = nn.ModuleList(
                nn.Conv2d(a, b, 1, bias=False) for a, b in zip(channels[:0:-1], channels[-2::-1])
            )
            self.decoders = nn.ModuleList(conv(c, c) for c in channels[-2::-1])
            self.head = nn.Conv2d(channels[0], classes * 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.pixel_unshuffle(x, 2)
            skips = []
            for i, encoder in enumerate(self.encoders):
                x = encoder(x)
                if i < len(self.encoders) - 1:
                    skips.append(x)
                    x = F.max_pool2d(x, 2)
            x = self.bottleneck(x)
            for reduce, decoder in zip(self.reduce, self.decoders):
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
                x = decoder(reduce(x) + skips.pop())
            return F.pixel_shuffle(self.head(x), 2)

    return LesionNet()


# --- data --------------------------------------------------------------------------------------------

_PRE: Preprocessor | None = None


def preprocess_slice(image: np.ndarray) -> np.ndarray:
    """A synthetic slice through scanedge's own preprocessor, as inference will see it (256x256 float32)."""
    global _PRE
    if _PRE is None:
        _PRE = Preprocessor(demo_manifest())
    tensor, _ = _PRE(Slice.from_array(image))
    return tensor[0, 0].copy()


def _training_sample(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    anatomy = synth.load_anatomy()
    subject = synth.random_subject(rng)
    z = int(rng.integers(15, 165))
    count = 0 if rng.random() < 0.08 else int(rng.integers(2, 45))
    lesions = synth.random_lesions(anatomy, rng, count, z_range=(z - 8, z + 9))
    image, label = synth.synth_slice(anatomy, subject, lesions, z, rng)
    return preprocess_slice(image).astype(np.float16), label


def subject_volume(seed: int, zs: tuple[int, ...], deform: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A held-out subject from ``seed``: its raw slices at ``zs`` and their lesion labels, each (len(zs), h, w)."""
    rng = np.random.default_rng(seed)
    anatomy = synth.load_anatomy()
    subject = synth.random_subject(rng, deform=deform)
    lesions = synth.random_lesions(anatomy, rng, int(rng.integers(18, 40)))
    pairs = [synth.synth_slice(anatomy, subject, lesions, z, rng) for z in zs]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def make_training_set(
    samples: int,
    seed: int,
    workers: int,
    sample: Callable[[int], tuple[np.ndarray, np.ndarray]] = _training_sample,
) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` preprocessed synthetic slices (float16) and their lesion labels (uint8), each (samples,
    256, 256), synthesised by ``workers`` processes; one random subject per slice, derived from ``seed``.
    ``sample`` makes one from its seed (a module-level function: the worker processes look it up by name)."""
    seeds = [seed * 1_000_003 + i for i in range(samples)]
    images = np.empty((samples, 256, 256), np.float16)
    labels = np.empty((samples, 256, 256), np.uint8)
    start = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        for i, (img, lab) in enumerate(pool.imap(sample, seeds, chunksize=16)):
            images[i], labels[i] = img, lab
            if (i + 1) % 500 == 0 or i + 1 == samples:
                print(f"  synthesised {i + 1}/{samples} slices ({time.perf_counter() - start:.0f} s)", flush=True)
    return images, labels


# --- training ----------------------------------------------------------------------------------------


def train(images: np.ndarray, labels: np.ndarray, steps: int, batch: int, crop: int, seed: int) -> Any:
    """Train the demo network for ``steps`` AdamW steps on random ``crop``-pixel crops, ``batch`` per step,
    with weighted cross-entropy plus soft Dice; returns the torch module in eval mode."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = _build_network()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    weights = torch.tensor([1.0, 3.0])
    start, running = time.perf_counter(), []
    net.train()
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(images), batch)
        r0 = rng.integers(40, 256 - crop - 40 + 1, batch)
        c0 = rng.integers(40, 256 - crop - 40 + 1, batch)
        x = np.stack([images[i, r : r + crop, c : c + crop] for i, r, c in zip(idx, r0, c0)]).astype(np.float32)
        y = np.stack([labels[i, r : r + crop, c : c + crop] for i, r, c in zip(idx, r0, c0)]).astype(np.int64)
        xt, yt = torch.from_numpy(x[:, None]), torch.from_numpy(y)
        logits = net(xt)
        ce = F.cross_entropy(logits, yt, weight=weights)
        prob = torch.softmax(logits, 1)[:, 1]
        fg = (yt == 1).float()
        dice = 1 - (2 * (prob * fg).sum() + 1) / (prob.sum() + fg.sum() + 1)
        loss = ce + dice
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(float(loss))
        if step % 100 == 0 or step == steps:
            el = time.perf_counter() - start
            print(
                f"  step {step}/{steps}  loss {np.mean(running):.4f}  {el:.0f} s elapsed, "
                f"~{el / step * (steps - step):.0f} s left",
                flush=True,
            )
            running.clear()
    net.eval()
    return net


def export(net: Any, out: Path, manifest: Manifest | None = None, output_name: str = "logits") -> None:
    """Export ``net`` to ONNX (opset 17, fixed 1x1x256x256 input ``image``, output ``output_name``) at ``out``
    with ``manifest`` (default: the demo manifest) embedded."""
    import onnx
    import torch

    from scanedge.manifest import embed_manifest

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    torch.onnx.export(
        net,
        (torch.zeros(1, 1, 256, 256),),
        str(tmp),
        dynamo=False,
        input_names=["image"],
        output_names=[output_name],
        opset_version=17,
        do_constant_folding=True,
    )
    model = onnx.load(str(tmp))
    tmp.unlink()
    onnx.checker.check_model(model)
    embed_manifest(model, manifest if manifest is not None else demo_manifest(), out)


# --- evaluation ----------------------------------------------------------------------------------------


def lesion_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Voxel Dice/sensitivity/specificity and lesion-wise detection (3-D connected components)."""
    from scipy import ndimage

    t, p = truth.astype(bool), pred.astype(bool)
    tp, fp, fn = np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)
    tn = t.size - tp - fp - fn
    components, n = ndimage.label(t)
    hit = set(np.unique(components[p])) - {0}
    pred_components, m = ndimage.label(p)
    true_hit = set(np.unique(pred_components[t])) - {0}
    return {
        "dice": float(2 * tp / max(1, 2 * tp + fp + fn)),
        "sensitivity": float(tp / max(1, tp + fn)),
        "specificity": float(tn / max(1, tn + fp)),
        "lesions": int(n),
        "lesion_detection_rate": float(len(hit) / max(1, n)),
        "false_positive_lesions": int(m - len(true_hit)),
    }


def evaluate(model_path: Path) -> dict[str, float]:
    """:func:`lesion_metrics` of the exported model, run through the scanedge pipeline, pooled over the
    held-out subjects, plus the numbers of slices and subjects."""
    from scanedge.runtime.core.pipeline import Pipeline

    zs = tuple(range(30, 150, 3))
    truths, preds = [], []
    with Pipeline.open(model_path) as pipe:
        for k, seed in enumerate(HELD_OUT_SEEDS):
            images, labels = subject_volume(seed, zs)
            preds.append(np.stack([pipe.run(Slice.from_array(img), overlay=False).mask for img in images]))
            truths.append(labels)
            print(f"  held-out subject {k + 1}/{len(HELD_OUT_SEEDS)}: {labels.sum()} lesion voxels", flush=True)
    per_subject = [lesion_metrics(t, p) for t, p in zip(truths, preds)]
    pooled = lesion_metrics(np.concatenate(truths), np.concatenate(preds))
    pooled["lesions"] = sum(s["lesions"] for s in per_subject)
    detected = sum(s["lesion_detection_rate"] * s["lesions"] for s in per_subject)
    pooled["lesion_detection_rate"] = float(detected / max(1, pooled["lesions"]))
    pooled["false_positive_lesions"] = sum(s["false_positive_lesions"] for s in per_subject)
    pooled["slices"] = int(sum(len(t) for t in truths))
    pooled["subjects"] = len(HELD_OUT_SEEDS)
    return pooled


def write_demo_patient(path: Path) -> None:
    """The demo patient: a held-out subject, mild deformation, stored as MR-like int16 values."""
    images, labels = subject_volume(DEMO_PATIENT_SEED, DEMO_SLICES, deform=0.3)
    scale = 1800.0 / float(np.percentile(images, 99.9))
    stored = np.clip(np.rint(images * scale), 0, 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        pixels=stored,
        labels=labels.astype(np.uint8),
        z_mm=np.asarray(DEMO_SLICES, np.float64),
        pixel_spacing=np.asarray([1.0, 1.0]),
        seed=np.asarray(DEMO_PATIENT_SEED),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m scanedge.demo.train``: synthesise, train, export, evaluate, write the demo patient; returns
    the exit status (2 without torch)."""
    ap = argparse.ArgumentParser(prog="python -m scanedge.demo.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=6000, help="synthetic training slices (default 6000)")
    ap.add_argument("--steps", type=int, default=5000, help="optimiser steps (default 5000)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=160, help="training crop size (the network is fully convolutional)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2, help="processes synthesising data")
    ap.add_argument("--out", type=Path, default=DEMO_MODEL_PATH, help="where to write the ONNX model")
    ap.add_argument("--patient", type=Path, default=DEMO_PATIENT_PATH, help="where to write the demo patient")
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/demo_model.pt"))
    ap.add_argument("--eval-only", action="store_true", help="export + evaluate an existing --checkpoint")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("training needs torch: pip install torch==2.13.0 -e '.[train]'", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.workers))
    t0 = time.perf_counter()
    if args.eval_only:
        net = _build_network()
        net.load_state_dict(torch.load(args.checkpoint))
        net.eval()
    else:
        print(f"1/4 synthesising {args.samples} training slices on MNI152 anatomy ...", flush=True)
        images, labels = make_training_set(args.samples, args.seed, args.workers)
        print(f"2/4 training for {args.steps} steps (batch {args.batch}, {args.crop}px crops) ...", flush=True)
        net = train(images, labels, args.steps, args.batch, args.crop, args.seed)
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), args.checkpoint)
    export(net, args.out)
    print(f"3/4 exported {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)", flush=True)
    print("4/4 evaluating the exported model on held-out subjects (never trained on) ...", flush=True)
    metrics = evaluate(args.out)
    print(json.dumps(metrics, indent=2))
    args.out.with_name(args.out.stem + ".evaluation.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_demo_patient(args.patient)
    print(f"wrote the demo patient to {args.patient}; done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
