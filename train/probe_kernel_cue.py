#!/usr/bin/env python
"""Does a blurry crop show its blur's direction? The gradient-autocorrelation cue, with no learning at all.

    python train/probe_kernel_cue.py          # prints a table and writes docs/kernel_cue.json, ~1 min
    python train/probe_kernel_cue.py --length # how long? the length cue against crop size, ~5 min

A blurry image's gradients are the sharp image's gradients (close to white noise for natural photos) convolved
with the kernel, so their autocorrelation is close to the kernel's own: a ridge along the blur. For crops of the
held-out photos of ``train/make_tiny.py``, blurred by the project's builder as in training (default hand-held
camera model, n = 7, 11, 15, 96 px crops), this script measures the principal axis of the clipped
autocorrelation (``GradientAutocorrelation`` with one window over the whole crop) against the true kernel's
(``kernel_ops.kernel_principal_axis``). It is the evidence behind the tiny preset's
``estimator_autocorrelation_radius``: the kernel estimator M, reading pixels only, predicted one average kernel
for every blur after 3000 steps (``docs/tiny_results.md``), while this fixed cue alone already points along the
blur.

``--length`` asks the second question: does a crop show how long its blur is? A regressor (scikit-learn's
gradient boosting, so no deep learning in the way) is fitted on the whole-crop autocorrelations (48 px windows)
of crops of the TRAINING photos of ``train/make_tiny.py`` (with OpenCV's where installed), blurred at
n = 5 ... 15 as in training, to the true kernel's length, and tested on crops of the held-out photos, for several
crop sizes. If the length cue in a crop is weak, the kernel estimator cannot read lengths from such crops either,
whatever its training: its predictions fall back towards the mean length.
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


def _autocorrelation_samples(photos, crop: int, count: int, seed: int):
    """Whole-crop gradient autocorrelations and true kernel lengths of ``count`` blurred crops."""
    from fidediff_pipeline.data import InMemoryTrajectoryGroupDataset
    from fidediff_pipeline.kernel_ops import kernel_principal_axis
    from fidediff_pipeline.models.modeling_kernel_controlnet import GradientAutocorrelation
    from train.make_tiny import TRAIN_FRAMES

    features = GradientAutocorrelation(14, stride=4, window=48)
    dataset = InMemoryTrajectoryGroupDataset(photos, frames=TRAIN_FRAMES, crop_size=crop, levels_per_group=1,
                                             num_groups=count, seed=seed, kernel_size=DATA_KERNEL_SIZE)
    x, lengths = [], []
    for i in range(count):
        item = dataset[i]
        with torch.no_grad():
            x.append(features(item["blurry"][:1] * 2 - 1)[0].mean(dim=(1, 2)).numpy())
        lengths.append(kernel_principal_axis(item["kernels"][0].numpy())[1])
    return np.array(x), np.array(lengths)


def measure_length(crops: tuple[int, ...], train_count: int, test_count: int, seed: int, opencv_examples: Path) -> dict:
    from sklearn.ensemble import HistGradientBoostingRegressor

    from train.make_tiny import OPENCV_PHOTOS, TRAIN_PHOTOS

    names = list(TRAIN_PHOTOS)
    if all(Path(opencv_examples, name).is_file() for _, name in OPENCV_PHOTOS):
        names += OPENCV_PHOTOS
    train_photos = [load_photo(name, opencv_examples) for name in names]
    heldout = [load_photo(name) for name in HELDOUT_PHOTOS]
    results = {}
    for crop in crops:
        x, y = _autocorrelation_samples(train_photos, crop, train_count, seed)
        x_test, y_test = _autocorrelation_samples(heldout, crop, test_count, seed + 1)
        predicted = HistGradientBoostingRegressor(max_iter=300, random_state=0).fit(x, y).predict(x_test)
        short, long = y_test <= np.quantile(y_test, 0.25), y_test >= np.quantile(y_test, 0.75)
        results[f"{crop} px"] = {
            "heldout_mae_px": round(float(np.abs(predicted - y_test).mean()), 2),
            "mae_of_the_mean_length_px": round(float(np.abs(y_test - y.mean()).mean()), 2),
            "shortest_quarter_true_vs_predicted_px": [round(float(y_test[short].mean()), 1),
                                                      round(float(predicted[short].mean()), 1)],
            "longest_quarter_true_vs_predicted_px": [round(float(y_test[long].mean()), 1),
                                                     round(float(predicted[long].mean()), 1)],
        }
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--crops", type=int, default=60, help="crops per level")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=str, default=None,
                        help="JSON (default: docs/kernel_cue.json, with --length docs/kernel_length_cue.json)")
    parser.add_argument("--length", action="store_true", help="measure the length cue against crop size instead")
    parser.add_argument("--length_crops", type=int, nargs="+", default=[64, 96, 128, 192])
    parser.add_argument("--train_crops", type=int, default=1200, help="with --length: training crops per size")
    parser.add_argument("--opencv_examples", type=str, default=None,
                        help="with --length: OpenCV's examples folder (default: make_tiny's); skipped if absent")
    args = parser.parse_args(argv)
    from train.make_tiny import SHORT_SIDE

    if any(not 16 <= crop <= SHORT_SIDE for crop in args.length_crops):
        parser.error(f"--length_crops must be between 16 and {SHORT_SIDE} px (the photos' short side); "
                     f"got {args.length_crops}")
    if args.crops < 1 or args.train_crops < 1:
        parser.error(f"--crops and --train_crops must be >= 1; got {args.crops}, {args.train_crops}")
    torch.set_num_threads(1)
    from fidediff_pipeline.atomic_io import write_text_atomic

    if args.length:
        args.out = args.out or str(REPO / "docs" / "kernel_length_cue.json")
        from train.make_tiny import OPENCV_EXAMPLES

        results = measure_length(tuple(args.length_crops), args.train_crops, 3 * args.crops, args.seed,
                                 Path(args.opencv_examples or OPENCV_EXAMPLES))
        print("| crop | held-out MAE | MAE of always the mean | shortest quarter: true -> predicted | "
              "longest quarter: true -> predicted |")
        print("|---|---|---|---|---|")
        for crop, row in results.items():
            (s_true, s_pred), (l_true, l_pred) = (row["shortest_quarter_true_vs_predicted_px"],
                                                  row["longest_quarter_true_vs_predicted_px"])
            print(f"| {crop} | {row['heldout_mae_px']} px | {row['mae_of_the_mean_length_px']} px | "
                  f"{s_true} -> {s_pred} px | {l_true} -> {l_pred} px |")
        write_text_atomic(args.out, json.dumps({"settings": vars(args), "results": results}, indent=2) + "\n")
        return results
    args.out = args.out or str(REPO / "docs" / "kernel_cue.json")
    results = measure(args.crops, args.seed)
    print("| level | crops | mean true length | median direction error | within 20 degrees |")
    print("|---|---|---|---|---|")
    for level, row in results.items():
        print(f"| {level} | {row['crops']} | {row['mean_true_length_px']} px | {row['median_angle_error']} deg | "
              f"{100 * row['within_20_degrees']:.0f}% |")
    write_text_atomic(args.out, json.dumps({"settings": vars(args), "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
