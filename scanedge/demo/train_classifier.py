"""Train, evaluate and export the shipped demo classifier (needs the ``train`` extra; CPU is enough).

    pip install torch==2.13.0 -e '.[train]'
    python -m scanedge.demo.train_classifier     # a few minutes on 2 cores; writes the classifier + evaluation

The demo's second model answers one question per slice: is there a lesion on it? It is trained exactly as
the segmentation model is (:mod:`scanedge.demo.train`): synthetic FLAIR-like slices on MNI152 anatomy
(:mod:`scanedge.demo.synth`), each run through the segmentation model's own manifest by scanedge's
preprocessor, so the classifier sees exactly the tensors the demo model sees. A slice is positive when the
generator labelled at least one lesion pixel on it.

The threshold is chosen on validation subjects (their own seeds) as the highest one that still finds
:data:`TARGET_SENSITIVITY` of their positive slices; the figures that ship (AUC, sensitivity, specificity at
that threshold) come from the segmentation model's held-out subjects, never trained or tuned on, run
through the scanedge pipeline from the exported ONNX file.

The network is small on purpose: a pixel-unshuffle stem (256x256x1 to 64x64x16, so one-pixel lesions
survive), four convolution stages with max pooling, and a global max pool, as "is there any bright spot in
white matter" is a max question. About 0.1 GFLOP, ~1 ms per slice with ONNX Runtime on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scanedge.demo import synth
from scanedge.demo import train as segmentation_training
from scanedge.demo.classifier_saliency import add_saliency_output, saliency_head
from scanedge.demo.train import HELD_OUT_SEEDS, preprocess_slice, subject_volume
from scanedge.manifest import ClassSpec, HeadSpec, Manifest, OperatingPoint
from scanedge.models import DEMO_CLASSIFIER_PATH

__all__ = [
    "CLASSIFIER_ZS",
    "EVALUATE_COMMAND",
    "TARGET_SENSITIVITY",
    "VALIDATION_SEEDS",
    "auc",
    "choose_threshold",
    "classifier_manifest",
    "evaluate",
    "export",
    "main",
    "make_training_set",
    "operating_figures",
    "slice_scores",
    "train",
]

CHANNELS = (16, 32, 48, 64)
HEAD = "lesion_present"  # the graph output and the score head's name
CLASS = "lesion"
VALIDATION_SEEDS = tuple(range(910_000, 910_004))  # threshold only; neither trained on nor the held-out subjects
CLASSIFIER_ZS = tuple(range(10, 172, 3))  # the whole brain, top and bottom slices included (lesion-free ones)
TARGET_SENSITIVITY = 0.95
#: reproduces the shipped evaluation's held-out figures from the shipped ONNX file
EVALUATE_COMMAND = "python -m scanedge.demo.train_classifier --evaluate-model"


def classifier_manifest(
    threshold: float = 0.5, sensitivity: float | None = None, specificity: float | None = None
) -> Manifest:
    """The classifier's manifest: the demo model's input, size and intensity (so both see the same tensor),
    no mask output, one sigmoid score head ``lesion_present`` with class ``lesion`` at ``threshold``, and its
    saliency head ``lesion_present_saliency``."""
    from scanedge.demo.assets import demo_manifest

    seg = demo_manifest()
    point = OperatingPoint(
        name=f"sensitivity-{TARGET_SENSITIVITY:.2f}",
        sensitivity=sensitivity,
        specificity=specificity,
        description="threshold chosen on synthetic validation subjects; figures measured on held-out synthetic "
        "subjects (scanedge/models/ms_lesion_classifier_demo.evaluation.json)",
    )
    return Manifest(
        name="ms-lesion-classifier-demo",
        version="1.0.0",
        description="Slice-level classifier: is there an MS-like white-matter lesion on this FLAIR-like axial "
        "brain slice? Small CNN trained on synthetic data built on the MNI152 template.",
        intended_use=seg.intended_use,
        input=seg.input,
        size=seg.size,
        intensity=seg.intensity,
        output=None,
        classes=(),
        applies_to=seg.applies_to,
        not_for_clinical_use=True,
        heads=(
            HeadSpec(
                name=HEAD,
                role="score",
                kind="logits",
                activation="sigmoid",
                classes=(ClassSpec(CLASS, (255, 40, 40), threshold=round(float(threshold), 4)),),
                aggregation="max",
                operating_point=point,
            ),
            saliency_head(HEAD),  # the graph's second output, added by export (classifier_saliency)
        ),
    )


def _build_network() -> Any:  # torch is imported lazily: the runtime never needs it
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def conv(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class LesionClassifier(nn.Module):
        def __init__(self, channels: Sequence[int] = CHANNELS) -> None:
            super().__init__()
            previous, stages = 16, []
            for c in channels:
                stages.append(conv(previous, c))
                previous = c
            self.stages = nn.ModuleList(stages)
            self.head = nn.Linear(channels[-1], 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.pixel_unshuffle(x, 4)
            for i, stage in enumerate(self.stages):
                x = stage(x)
                if i < len(self.stages) - 1:
                    x = F.max_pool2d(x, 2)
            return self.head(torch.amax(x, dim=(2, 3)))

    return LesionClassifier()


# --- data --------------------------------------------------------------------------------------------


def _training_sample(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One preprocessed slice of a fresh random subject and its lesion labels: a third have no lesions at
    all, the others a few lesions placed near the slice (some miss it: near-miss negatives)."""
    rng = np.random.default_rng(seed)
    anatomy = synth.load_anatomy()
    subject = synth.random_subject(rng)
    z = int(rng.integers(5, anatomy.depth - 5))
    count = 0 if rng.random() < 0.3 else int(rng.integers(1, 25))
    lesions = synth.random_lesions(anatomy, rng, count, z_range=(z - 10, z + 11)) if count else []
    image, label = synth.synth_slice(anatomy, subject, lesions, z, rng)
    return preprocess_slice(image).astype(np.float16), label.astype(np.uint8)


def make_training_set(samples: int, seed: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` preprocessed synthetic slices (float16) and their lesion labels (uint8), each (samples, 256,
    256), synthesised by ``workers`` processes from ``seed``, as the demo model's are (this module's sampling)."""
    return segmentation_training.make_training_set(samples, seed, workers, sample=_training_sample)


# --- training ----------------------------------------------------------------------------------------


def train(images: np.ndarray, labels: np.ndarray, steps: int, batch: int, crop: int, seed: int) -> Any:
    """Train for ``steps`` AdamW steps on ``batch`` random ``crop``-pixel crops per step (random left-right
    flips; a crop is positive when a lesion pixel lies in it: the network ends in a global max, so it reads
    any size), binary cross-entropy; returns the torch module in eval mode."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = _build_network()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    start, running = time.perf_counter(), []
    net.train()
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(images), batch)
        r0 = rng.integers(0, 256 - crop + 1, batch)
        c0 = rng.integers(0, 256 - crop + 1, batch)
        x = np.stack([images[i, r : r + crop, c : c + crop] for i, r, c in zip(idx, r0, c0)]).astype(np.float32)
        y = np.array([labels[i, r : r + crop, c : c + crop].any() for i, r, c in zip(idx, r0, c0)], np.float32)
        flip = rng.random(batch) < 0.5
        x[flip] = x[flip, :, ::-1]
        xt = torch.from_numpy(np.ascontiguousarray(x[:, None]))
        yt = torch.from_numpy(y)
        loss = F.binary_cross_entropy_with_logits(net(xt)[:, 0], yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        if step % 50 == 0 or step == steps:
            el = time.perf_counter() - start
            print(
                f"  step {step}/{steps}  loss {np.mean(running):.4f}  {el:.0f} s elapsed, "
                f"~{el / step * (steps - step):.0f} s left",
                flush=True,
            )
            running.clear()
    net.eval()
    return net


def export(net: Any, out: Path, manifest: Manifest) -> None:
    """Export ``net`` to ONNX (opset 17, fixed 1x1x256x256 input, output ``lesion_present`` [1, 1] logits, and
    its saliency map ``lesion_present_saliency`` [1, 1, 8, 8], :mod:`scanedge.demo.classifier_saliency`) at
    ``out`` with ``manifest`` embedded."""
    import onnx

    from scanedge.manifest import embed_manifest

    segmentation_training.export(net, out, manifest, output_name=HEAD)
    model = onnx.load(str(out))
    add_saliency_output(model, HEAD)
    embed_manifest(model, manifest, out)


# --- evaluation ----------------------------------------------------------------------------------------


def auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative (ties
    count half); NaN without both classes."""
    t = np.asarray(truth, bool)
    s = np.asarray(scores, np.float64)
    pos, neg = s[t], s[~t]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.sort(neg)
    below = np.searchsorted(order, pos, side="left")
    ties = np.searchsorted(order, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(pos) * len(neg)))


def operating_figures(truth: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity and specificity of ``scores >= threshold`` against ``truth``."""
    t = np.asarray(truth, bool)
    p = np.asarray(scores, np.float64) >= threshold
    return {
        "sensitivity": float(np.sum(t & p) / max(1, np.sum(t))),
        "specificity": float(np.sum(~t & ~p) / max(1, np.sum(~t))),
    }


def choose_threshold(truth: np.ndarray, scores: np.ndarray, target: float = TARGET_SENSITIVITY) -> float:
    """The highest threshold whose sensitivity on (``truth``, ``scores``) is at least ``target``: every score
    of a positive is a candidate; the one at the ``1 - target`` quantile of the positives' scores, rounded
    down to 1e-4 so the decision ``p >= threshold`` keeps it."""
    pos = np.sort(np.asarray(scores, np.float64)[np.asarray(truth, bool)])
    if not len(pos):
        raise ValueError("no positive slices to choose a threshold on")
    k = int(np.floor((1.0 - target) * len(pos) + 1e-9))
    return float(np.floor(pos[min(k, len(pos) - 1)] * 1e4) / 1e4)


def slice_scores(model_path: Path, seeds: Sequence[int], zs: Sequence[int] = CLASSIFIER_ZS) -> tuple[Any, Any]:
    """The exported classifier's ``lesion`` probability on every slice ``zs`` of the subjects ``seeds``, run
    through the scanedge pipeline, and the truth (a lesion pixel on the slice); two flat arrays."""
    from scanedge.imaging.slices import Slice
    from scanedge.runtime.core.pipeline import Pipeline

    truth, scores = [], []
    with Pipeline.open(model_path) as pipe:
        for k, seed in enumerate(seeds):
            images, labels = subject_volume(seed, tuple(zs))
            for img, lab in zip(images, labels):
                result = pipe.run(Slice.from_array(img), overlay=False)
                scores.append(result.scores[0].score(CLASS).probability)
                truth.append(bool(lab.any()))
            print(
                f"  subject {k + 1}/{len(seeds)} (seed {seed}): {int(labels.any(axis=(1, 2)).sum())} of "
                f"{len(labels)} slices with lesions",
                flush=True,
            )
    return np.asarray(truth), np.asarray(scores)


def evaluate(model_path: Path, threshold: float) -> dict[str, Any]:
    """AUC, and sensitivity and specificity at ``threshold``, of the exported classifier on the held-out
    subjects (the demo model's, never trained or tuned on), plus the counts."""
    truth, scores = slice_scores(model_path, HELD_OUT_SEEDS)
    return {
        "auc": auc(truth, scores),
        "threshold": threshold,
        **operating_figures(truth, scores, threshold),
        "positive_slices": int(truth.sum()),
        "negative_slices": int((~truth).sum()),
        "slices": len(truth),
        "subjects": len(HELD_OUT_SEEDS),
    }


def _evaluate_model(path: Path) -> int:
    from scanedge.manifest import load_manifest

    (head,) = load_manifest(path)[0].score_heads
    metrics = evaluate(path, head.classes[0].threshold)
    print(json.dumps(metrics, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m scanedge.demo.train_classifier``: synthesise, train, choose the threshold on validation
    subjects, export, evaluate on held-out subjects; returns the exit status (2 without torch)."""
    ap = argparse.ArgumentParser(
        prog="python -m scanedge.demo.train_classifier", description=(__doc__ or "").split("\n\n")[0]
    )
    ap.add_argument("--samples", type=int, default=2000, help="synthetic training slices (default 2000)")
    ap.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=160, help="training crop size, multiple of 32 (default 160)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workers", type=int, default=2, help="processes synthesising data")
    ap.add_argument("--out", type=Path, default=DEMO_CLASSIFIER_PATH, help="where to write the ONNX model")
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/demo_classifier.pt"))
    ap.add_argument("--eval-only", action="store_true", help="export + evaluate an existing --checkpoint")
    ap.add_argument(
        "--validation-subjects", type=int, default=len(VALIDATION_SEEDS), help="subjects the threshold is chosen on"
    )
    ap.add_argument("--no-evaluate", dest="evaluate", action="store_false", help="skip the held-out evaluation")
    ap.add_argument(
        "--evaluate-model",
        action="store_true",
        help="only evaluate the model at --out on the held-out subjects, at its manifest's threshold (no torch "
        "needed): reproduces the shipped evaluation JSON's figures",
    )
    args = ap.parse_args(argv)
    if args.evaluate_model:
        return _evaluate_model(args.out)
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
        print(f"  {int(labels.any(axis=(1, 2)).sum())} of {len(labels)} slices show a lesion", flush=True)
        print(f"2/4 training for {args.steps} steps (batch {args.batch}, {args.crop}px crops) ...", flush=True)
        net = train(images, labels, args.steps, args.batch, args.crop, args.seed)
        del images
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), args.checkpoint)
    print("3/4 choosing the threshold on validation subjects ...", flush=True)
    export(net, args.out, classifier_manifest())
    seeds = VALIDATION_SEEDS[: max(1, args.validation_subjects)]
    truth, scores = slice_scores(args.out, seeds)
    threshold = choose_threshold(truth, scores)
    validation = {"auc": auc(truth, scores), "threshold": threshold, **operating_figures(truth, scores, threshold)}
    print(f"  validation: {json.dumps(validation)}", flush=True)
    if not args.evaluate:
        export(net, args.out, classifier_manifest(threshold))
        print(f"exported {args.out} ({args.out.stat().st_size / 1e3:.0f} kB) without evaluation", flush=True)
        return 0
    print("4/4 evaluating on held-out subjects (never trained or tuned on) ...", flush=True)
    metrics = evaluate(args.out, threshold)  # the probabilities do not depend on the threshold in the manifest
    export(net, args.out, classifier_manifest(threshold, metrics["sensitivity"], metrics["specificity"]))
    print(f"exported {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)", flush=True)
    metrics["validation"] = validation
    metrics["command"] = EVALUATE_COMMAND
    print(json.dumps(metrics, indent=2))
    args.out.with_name(args.out.stem + ".evaluation.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
