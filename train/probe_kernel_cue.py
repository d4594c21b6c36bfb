#!/usr/bin/env python
"""Does a blurry crop show its blur's direction? The gradient-autocorrelation cue, with no learning at all.

    python train/probe_kernel_cue.py          # prints a table and writes docs/kernel_cue.json, ~1 min

A blurry image's gradients are the sharp image's gradients (close to white noise for natural photos) convolved
with the kernel, so their autocorrelation is close to the kernel's own: a ridge along the blur. For crops of the
held-out photos of ``train/make_tiny.py``, blurred by the project's builder as in training (default hand-held
camera model, n = 7, 11, 15, 96 px crops), this script measures the principal axis of the clipped
autocorrelation (``GradientAutocorrelation`` with one window over the whole crop) against the true kernel's
(``kernel_ops.kernel_principal_axis``). It is the evidence behind the tiny preset's
``estimator_autocorrelation_radius``: the kernel estimator M, reading pixels only, predicted one average kernel
for every blur after 3000 steps (``docs/tiny_results.md``), while this fixed cue alone already points along the
blur.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.make_tiny import DATA_KERNEL_SIZE, HELDOUT_PHOTOS, load_photo  # noqa: E402

LEVELS = (7, 11, 15)


def cue_axis(blurry: torch.Tensor, radius: int = 14) -> float:
    """Direction (degrees) of the gradient autocorrelation of a whole crop ``[3, H, W]``: its (non-negative)
    correlations laid out as a symmetric kernel over the offsets, measured by ``kernel_principal_axis``."""
    from fidediff_pipeline.kernel_ops import kernel_principal_axis
    from fidediff_pipeline.models.modeling_kernel_controlnet import GradientAutocorrelation

    h, w = blurry.shape[-2:]
    size = max(h, w)
    features = GradientAutocorrelation(radius, stride=size, window=size)
    values = features(blurry[None] * 2 - 1)[0, :, 0, 0].clamp(min=0).double().numpy()
    ridge = np.zeros((2 * radius + 1, 2 * radius + 1))
    ridge[radius, radius] = 1.0  # offset 0: no effect on the symmetric second moments, keeps the sum positive
    for (dy, dx), value in zip(features.offsets, values):  # each offset also stands for its mirror
        ridge[radius + dy, radius + dx] = ridge[radius - dy, radius - dx] = value
    return kernel_principal_axis(ridge)[0]


def measure(crops_per_level: int, seed: int) -> dict:
    from fidediff_pipeline.data import InMemoryTrajectoryGroupDataset
    from fidediff_pipeline.kernel_ops import kernel_principal_axis
    from train.evaluate_tiny import angle_difference

    photos = [load_photo(name) for name in HELDOUT_PHOTOS]
    results = {}
    for n in LEVELS:
        dataset = InMemoryTrajectoryGroupDataset(photos, frames=(n,), crop_size=96, levels_per_group=1,
                                                 num_groups=crops_per_level, seed=seed,
                                                 kernel_size=DATA_KERNEL_SIZE)
        errors, lengths = [], []
        for i in range(crops_per_level):
            item = dataset[i]
            true_angle, true_length = kernel_principal_axis(item["kernels"][0].numpy())
            errors.append(angle_difference(cue_axis(item["blurry"][0]), true_angle))
            lengths.append(true_length)
        errors = np.array(errors)
        results[f"n={n}"] = {"crops": crops_per_level, "median_angle_error": round(float(np.median(errors)), 1),
                             "within_20_degrees": round(float(np.mean(errors <= 20)), 3),
                             "mean_true_length_px": round(float(np.mean(lengths)), 1)}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--crops", type=int, default=60, help="crops per level")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=str, default=str(REPO / "docs" / "kernel_cue.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = measure(args.crops, args.seed)
    print("| level | crops | mean true length | median direction error | within 20 degrees |")
    print("|---|---|---|---|---|")
    for level, row in results.items():
        print(f"| {level} | {row['crops']} | {row['mean_true_length_px']} px | {row['median_angle_error']} deg | "
              f"{100 * row['within_20_degrees']:.0f}% |")
    from fidediff_pipeline.atomic_io import write_text_atomic

    write_text_atomic(args.out, json.dumps({"settings": vars(args), "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
