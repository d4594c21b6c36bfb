#!/usr/bin/env python
"""Evaluate the bundled fidediff-tiny checkpoint on held-out photos and write docs/tiny_results.md (+ .json).

    python train/evaluate_tiny.py [--model fidediff_pipeline/checkpoints/fidediff-tiny] [--work_dir runs/make_tiny]

Data: the held-out photos of train/make_tiny.py (coffee, chelsea, china; never seen in training), short side
256 px, blurred with the project's camera-shake builder (``synthesize_trajectory_set``, default handheld camera
model) at n = 7, 11, 15 along ``--trajectories`` random trajectories per photo (seed ``--seed``, kernel window 31,
the builder's default camera speed). Whole images, no crops.

Metrics: PSNR and SSIM on uint8 RGB with scikit-image (``peak_signal_noise_ratio(data_range=255)``,
``structural_similarity(channel_axis=-1, data_range=255)``, i.e. per-channel SSIM, not MATLAB's 3-D variant).

Rows: the full model with t-prediction (``timestep="auto"``), with a fixed t = 200 and with the true t; the base
model alone (``kernel_controlnet=None``) at t = 200 and at the true t; the "w/o CT" stage-1 model (trained with
``--no_consistency``) at t = 200; the VAE pass-through; the t-regressor's mean absolute error per level; the
direction and length of the mean estimated kernel for straight blurs of 9, 15 and 21 px at 0, 45, 90 and 135
degrees; the time for one 256 x 256 image; the learning curves of the training run (``<work_dir>/<stage>/
validation_history.json``); and a before/after picture of the three held-out photos at n = 11.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.make_tiny import (  # noqa: E402
    DATA_KERNEL_SIZE, DEAD_LEAVES, HELDOUT_PHOTOS, OPENCV_EXAMPLES, SHORT_SIDE, SPEED_RANGE, TRAIN_PHOTOS, UPSCALE,
    load_photo, photo_label, shipped_photo, stage_result,
)

from fidediff_pipeline.atomic_io import atomic_path, write_text_atomic  # noqa: E402

LEVELS = (7, 11, 15)
KERNEL_LENGTHS = (9, 15, 21)
KERNEL_ANGLES = (0, 45, 90, 135)


def heldout_pairs(seed: int, trajectories: int, folder: Path) -> list[dict]:
    """(sharp, blurry, n, t) uint8 arrays of the held-out photos, from the project's builder, with the true kernel."""
    return photo_pairs(HELDOUT_PHOTOS, seed, trajectories, folder)


def photo_pairs(names, seed: int, trajectories: int, folder: Path, opencv_examples: Path = OPENCV_EXAMPLES,
                short_side: int | None = SHORT_SIDE) -> list[dict]:
    """``heldout_pairs`` of any of make_tiny's photos (``("skimage", "coffee")``, ...) at levels ``LEVELS``, short
    side resized to ``short_side`` px (``None``: each photo at the size it ships in)."""
    from PIL import Image

    from fidediff_pipeline.data import TrajectoryConfig, load_kernel, read_manifest, synthesize_trajectory_set

    photos = []
    for name in names:
        path = folder / "photos" / f"{photo_label(name)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo = shipped_photo(name, opencv_examples) if short_side is None else load_photo(name, opencv_examples, short_side)
        Image.fromarray(photo).save(path)
        photos.append(path)
    report = synthesize_trajectory_set(photos, folder / "set", frames=LEVELS, seed=seed,
                                       kernel_size=DATA_KERNEL_SIZE, trajectories_per_image=trajectories,
                                       config=TrajectoryConfig(speed_range=SPEED_RANGE))
    rows = read_manifest(report.manifest_path)
    load = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
    return [{"sharp": load(r.sharp), "blurry": load(r.blurry), "n": r.n, "t": r.t, "group": r.group,
             "kernel": load_kernel(r.kernel)} for r in rows]


def psnr_ssim(output: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    return (float(peak_signal_noise_ratio(target, output, data_range=255)),
            float(structural_similarity(target, output, channel_axis=-1, data_range=255)))


def run_variant(pipe, pairs, timestep) -> dict:
    """Per level: mean PSNR/SSIM of the outputs; and the timesteps used."""
    per_level: dict[int, list] = {n: [] for n in LEVELS if any(item["n"] == n for item in pairs)}
    predicted: dict[int, list] = {n: [] for n in LEVELS}
    for item in pairs:
        t = item["t"] if timestep == "true" else timestep
        out = pipe(item["blurry"], timestep=t, upscale_factor=UPSCALE, output_type="np")
        restored = (out.images[0] * 255.0).round().clip(0, 255).astype(np.uint8)
        per_level[item["n"]].append(psnr_ssim(restored, item["sharp"]))
        if out.predicted_timesteps:
            predicted[item["n"]].append(out.predicted_timesteps[0])
    result = {}
    for n in per_level:
        scores = np.array(per_level[n])
        result[n] = {"psnr": float(scores[:, 0].mean()), "ssim": float(scores[:, 1].mean())}
        if predicted[n]:
            t_true = (n - 1) * 20
            result[n]["t_mae"] = float(np.mean([abs(p - t_true) for p in predicted[n]]))
            result[n]["t_mean_predicted"] = float(np.mean(predicted[n]))
    return result


@contextlib.contextmanager
def kernel_estimator_replaced(pipe, kernels_for):
    """Within the block, the Kernel ControlNet's M answers ``kernels_for(its own output)`` instead (same shape):
    how much does the ControlNet use what M tells it?"""
    estimator = pipe.kernel_controlnet.kernel_estimator
    own = estimator.forward
    estimator.forward = lambda image: kernels_for(own(image))
    try:
        yield
    finally:
        del estimator.forward  # back to the class's method


def run_with_given_kernels(pipe, pairs, source: str) -> dict:
    """`run_variant` at the true t with M's kernels replaced, everywhere in the image, by each image's TRUE kernel
    (``source="true"``, cropped to the model's window as in training) or by a point (``"point"``: no blur at all)."""
    from train.train_kcn import true_kernel_map

    m = pipe.kernel_controlnet.config.kernel_size
    per_level = {n: [] for n in LEVELS}
    for item in pairs:
        kernel = np.asarray(item["kernel"], dtype=np.float32)
        if source == "point":
            kernel = np.zeros((m, m), dtype=np.float32)
            kernel[m // 2, m // 2] = 1.0
        kernel = torch.from_numpy(kernel)[None]
        with kernel_estimator_replaced(pipe, lambda own: true_kernel_map(kernel, own)):
            per_level[item["n"]].append(run_variant(pipe, [item], "true")[item["n"]])
    return {n: {key: float(np.mean([r[key] for r in per_level[n]])) for key in ("psnr", "ssim")} for n in LEVELS}


def input_scores(pairs) -> dict:
    out = {}
    for n in LEVELS:
        scores = np.array([psnr_ssim(p["blurry"], p["sharp"]) for p in pairs if p["n"] == n])
        out[n] = {"psnr": float(scores[:, 0].mean()), "ssim": float(scores[:, 1].mean())}
    return out


def vae_roundtrip(pipe, image: np.ndarray, color_fix: bool) -> tuple[np.ndarray, np.ndarray]:
    """Encode and decode a uint8 image with the pipeline's VAE alone (no UNet); optionally the pipeline's colour fix.

    Returns the uint8 reconstruction and the image cropped to the same size (a multiple of the VAE factor).
    """
    from fidediff_pipeline.restoration import decode_latents, encode_latents, low_frequency_transfer

    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    h, w = x.shape[-2:]
    factor = pipe.vae_scale_factor
    x = x[..., : h - h % factor, : w - w % factor]
    sigma = getattr(pipe.config, "color_fix_sigma", None)
    with torch.no_grad():
        rec = decode_latents(pipe.vae, encode_latents(pipe.vae, x, UPSCALE), tuple(x.shape[-2:]), UPSCALE)
        if color_fix and sigma:
            rec = low_frequency_transfer(rec, x, float(sigma))
    rec = ((rec[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return rec, image[: x.shape[-2], : x.shape[-1]]


def vae_ceiling(pipe, pairs) -> float:
    """PSNR of the VAE alone on the sharp photos (encode-decode): the best any output can reach."""
    seen, scores = set(), []
    for item in pairs:
        if item["group"] in seen:
            continue
        seen.add(item["group"])
        rec, sharp = vae_roundtrip(pipe, item["sharp"], color_fix=False)
        scores.append(psnr_ssim(rec, sharp)[0])
    return float(np.mean(scores))


def vae_passthrough(pipe, pairs) -> dict:
    """Per level: the blurry image through the VAE alone (encode, decode, the pipeline's colour fix), no UNet.

    What a UNet that only learnt to pass its input through would score: the bar any deblurring must clear.
    """
    per_level: dict[int, list] = {n: [] for n in LEVELS}
    for item in pairs:
        rec, _ = vae_roundtrip(pipe, item["blurry"], color_fix=True)
        per_level[item["n"]].append(psnr_ssim(rec, item["sharp"][: rec.shape[0], : rec.shape[1]]))
    return {n: {"psnr": float(np.mean([s[0] for s in v])), "ssim": float(np.mean([s[1] for s in v]))}
            for n, v in per_level.items()}


def time_256(pipe, repeats: int = 5) -> dict:
    image = np.random.default_rng(0).random((256, 256, 3)).astype(np.float32)
    pipe(image, timestep="auto", upscale_factor=UPSCALE)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe(image, timestep="auto", upscale_factor=UPSCALE)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def angle_difference(a: float, b: float) -> float:
    """Smallest difference of two axis directions in degrees (an axis at 0 equals one at 180)."""
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


def kernel_direction_scores(pipe, photos: list[np.ndarray], lengths=KERNEL_LENGTHS, angles=KERNEL_ANGLES) -> list[dict]:
    """For straight blurs of each length and angle: the direction and length of the model's mean estimated kernel.

    Each photo is blurred by the builder's operator (``blur_with_kernel``, linear light) with
    ``linear_motion_kernel(length, angle)``; the kernel estimator runs on a 4 x 4 grid of windows (the app's
    ``sample_kernels``), and the kernels of all windows and photos are averaged before measuring.
    """
    from fidediff_pipeline.data import blur_with_kernel
    from fidediff_pipeline.kernel_ops import kernel_principal_axis, linear_motion_kernel
    from fidediff_pipeline.kernel_visualization import sample_kernels

    rows = []
    for length in lengths:
        for angle in angles:
            kernel = linear_motion_kernel(length, angle, size=DATA_KERNEL_SIZE)
            true_angle, true_length = kernel_principal_axis(kernel)
            estimates = []
            for sharp in photos:
                blurry = np.clip(blur_with_kernel(sharp, kernel), 0, 1)
                blurry = torch.from_numpy((blurry * 255).round() / 255.0).permute(2, 0, 1).float()
                estimates.append(sample_kernels(pipe, blurry, grid=(4, 4)).mean(axis=(0, 1)))
            est_angle, est_length = kernel_principal_axis(np.mean(estimates, axis=0))
            rows.append({"length": length, "angle": angle, "true_angle": true_angle, "true_length": true_length,
                         "estimated_angle": est_angle, "estimated_length": est_length,
                         "angle_error": angle_difference(est_angle, true_angle),
                         "length_error": abs(est_length - true_length) / true_length})
    return rows


def trajectory_kernel_lengths(pipe, pairs) -> dict:
    """Per level: the mean length of the builder's true kernels and of the model's estimates on the same images.

    The camera-shake paths of the evaluation set (curved, not straight), so it says whether the estimator reads
    how long the blur is where it matters. Each image's estimate is the mean kernel of a 4 x 4 grid of windows
    (`sample_kernels`); lengths from the second moments (`kernel_ops.kernel_principal_axis`).
    """
    from fidediff_pipeline.kernel_ops import kernel_principal_axis
    from fidediff_pipeline.kernel_visualization import sample_kernels

    per_level: dict[int, list] = {n: [] for n in LEVELS}
    for item in pairs:
        blurry = torch.from_numpy(item["blurry"]).permute(2, 0, 1).float() / 255.0
        estimate = sample_kernels(pipe, blurry, grid=(4, 4)).mean(axis=(0, 1))
        per_level[item["n"]].append((kernel_principal_axis(item["kernel"])[1], kernel_principal_axis(estimate)[1]))
    return {n: {"true_length": float(np.mean([v[0] for v in values])),
                "estimated_length": float(np.mean([v[1] for v in values]))} for n, values in per_level.items()}


def learning_curves(work_dir: Path) -> dict:
    """``{stage: [{"step", "minutes", gains...}]}`` from each stage's validation history (if the run is here)."""
    curves = {}
    for stage in ("base", "base_noct", "kernel", "kcn", "time", "refit", "t_context"):
        path = work_dir / stage / "validation_history.json"
        if path.is_file():
            curves[stage] = [{"step": h["step"], "minutes": round(h["seconds"] / 60, 1), **h["val"]}
                             for h in json.loads(path.read_text())]
    return curves


def fmt_curves(curves: dict) -> list[str]:
    lines = []
    for stage, points in curves.items():
        keys = [k for k in points[0] if k.startswith("val/") and k != "val/psnr_input" and k != "val/psnr_output"]
        lines += [f"**{stage}**", "", "| step | minutes | " + " | ".join(k[4:] for k in keys) + " |",
                  "|---" * (len(keys) + 2) + "|"]
        lines += [f"| {p['step']} | {p['minutes']} | " + " | ".join(f"{p[k]:+.2f}" if "gain" in k else f"{p[k]:.3f}"
                                                          for k in keys) + " |" for p in points]
        lines.append("")
    return lines


def before_after_picture(pipe, pairs, out_path: Path) -> None:
    """One row per held-out photo at n = 11: blurry | restored | sharp, saved as a JPEG."""
    from PIL import Image

    rows, seen = [], set()
    for item in pairs:
        photo = item["group"].rsplit("_", 1)[0]
        if item["n"] != 11 or photo in seen:
            continue
        seen.add(photo)
        out = pipe(item["blurry"], output_type="np")
        restored = (out.images[0] * 255.0).round().clip(0, 255).astype(np.uint8)
        h = min(x.shape[0] for x in (item["blurry"], restored, item["sharp"]))
        w = min(x.shape[1] for x in (item["blurry"], restored, item["sharp"]))
        row = np.concatenate([item["blurry"][:h, :w], restored[:h, :w], item["sharp"][:h, :w]], axis=1)
        rows.append(np.asarray(Image.fromarray(row).resize((3 * 256 * w // h, 256), Image.Resampling.LANCZOS)))
    width = min(r.shape[1] for r in rows)
    grid = np.concatenate([r[:, :width] for r in rows], axis=0)
    with atomic_path(out_path) as tmp:
        Image.fromarray(grid).save(tmp, format="JPEG", quality=90)


def write_card_results(card_path: Path, text: str) -> None:
    """Replace the results block of a model card (between its ``<!-- results`` and ``<!-- /results -->`` markers)."""
    if not card_path.is_file():
        return
    card = card_path.read_text()
    start, end = card.find("<!-- results"), card.find("<!-- /results -->")
    if start < 0 or end < 0:
        return
    start = card.index("\n", start) + 1
    write_text_atomic(card_path, card[:start] + text + "\n" + card[end:])


def fmt_table(rows: list[tuple[str, dict]], inputs: dict) -> str:
    lines = ["| model / setting | " + " | ".join(f"n={n} (t={(n - 1) * 20}) PSNR / SSIM" for n in LEVELS)
             + " | mean PSNR | mean gain |", "|---" * (len(LEVELS) + 3) + "|"]
    mean_in = np.mean([inputs[n]["psnr"] for n in LEVELS])
    for name, res in [("blurry input", inputs)] + rows:
        cells = [f"{res[n]['psnr']:.2f} / {res[n]['ssim']:.4f}" for n in LEVELS]
        mean = np.mean([res[n]["psnr"] for n in LEVELS])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean:.2f} | {mean - mean_in:+.2f} |")
    return "\n".join(lines)


def noct_text(work: Path, warm_start: str | None) -> str:
    """What the "w/o CT" rows are, from the two stage-1 runs' own summaries."""
    steps = {name: json.loads((work / name / "train_summary.json").read_text())["steps"]
             if (work / name / "train_summary.json").is_file() else None for name in ("base", "base_noct")}
    text = ("The \"w/o CT\" rows are a separate stage-1 run with `--no_consistency` (unrelated pairs, all trained "
            f"at t = 200) of {steps['base_noct']} steps")
    if warm_start:
        return text + (f", continued from the same start as the consistency-trained base (`{warm_start}`) with the "
                       f"same steps ({steps['base']}), learning rate and seed: only the last phase of stage 1 differs "
                       "between the two; it shares the VAE. ")
    return text + (f" from the VAE stage, beside a consistency-trained base of {steps['base']} steps; it shares the "
                   "VAE. ")


def training_content_text(train_info: dict | None) -> str:
    """What make_tiny trained on, from its summary (runs before OpenCV's photos were added have no count)."""
    opencv = (train_info or {}).get("opencv_photos", 0)
    return (f"{len(TRAIN_PHOTOS)} sample photos (scikit-image, scikit-learn)"
            + (f", {opencv} photos of OpenCV's sample data (Debian's opencv-doc)" if opencv else "")
            + f" and {DEAD_LEAVES} procedural dead-leaves images")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--model", default=str(REPO / "fidediff_pipeline" / "checkpoints" / "fidediff-tiny"))
    p.add_argument("--work_dir", default=str(REPO / "runs" / "make_tiny"),
                   help="make_tiny's work folder: the w/o-CT model, learning curves and stage times (optional)")
    p.add_argument("--seed", type=int, default=2024, help="trajectory seed of the evaluation set")
    p.add_argument("--trajectories", type=int, default=2, help="trajectories per held-out photo")
    p.add_argument("--out", default=str(REPO / "docs" / "tiny_results.md"))
    p.add_argument("--picture", default=None, help="before/after JPEG (default: <model>/before_after.jpg)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fidediff_pipeline import FideDiffPipeline

    work = Path(args.work_dir)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = heldout_pairs(args.seed, args.trajectories, Path(tmp))
    full = FideDiffPipeline.from_pretrained(args.model)
    base = FideDiffPipeline.from_pretrained(args.model, kernel_controlnet=None)
    inputs = input_scores(pairs)
    rows = [
        ("FideDiff-tiny, KCN, t-prediction (timestep='auto')", run_variant(full, pairs, "auto")),
        ("FideDiff-tiny, KCN, fixed t = 200", run_variant(full, pairs, 200)),
        ("FideDiff-tiny, KCN, true t (oracle)", run_variant(full, pairs, "true")),
        ("base only (no KCN), t = 200", run_variant(base, pairs, 200)),
        ("base only (no KCN), true t (oracle)", run_variant(base, pairs, "true")),
        # Does the ControlNet use its kernels? The same model fed each image's true kernel, or a point (no blur).
        ("FideDiff-tiny, KCN fed the TRUE kernel (oracle), true t", run_with_given_kernels(full, pairs, "true")),
        ("FideDiff-tiny, KCN fed a point kernel (no blur), true t", run_with_given_kernels(full, pairs, "point")),
    ]
    noct_path = stage_result(work, "base_noct")
    if (noct_path / "model_index.json").is_file():
        noct = FideDiffPipeline.from_pretrained(noct_path)
        rows.append(("w/o CT base (--no_consistency), t = 200", run_variant(noct, pairs, 200)))
        rows.append(("w/o CT base (--no_consistency), true t (oracle)", run_variant(noct, pairs, "true")))
    rows.append(("VAE pass-through (encode-decode the blurry input, no UNet)", vae_passthrough(full, pairs)))
    timing = time_256(full)
    ceiling = vae_ceiling(full, pairs)
    photos = [load_photo(name) for name in HELDOUT_PHOTOS]
    kernels = kernel_direction_scores(full, photos)
    lengths = trajectory_kernel_lengths(full, pairs)
    picture = Path(args.picture) if args.picture else Path(args.model) / "before_after.jpg"
    before_after_picture(full, pairs, picture)
    curves = learning_curves(work)
    t_mae = {n: rows[0][1][n]["t_mae"] for n in LEVELS}
    mean_in = float(np.mean([inputs[n]["psnr"] for n in LEVELS]))
    auto = rows[0][1]
    gains = {n: auto[n]["psnr"] - inputs[n]["psnr"] for n in LEVELS}
    kcn_vs_base = float(np.mean([rows[1][1][n]["psnr"] - rows[3][1][n]["psnr"] for n in LEVELS]))
    # Mean PSNR at the true t with M's kernels, the true kernels and a point kernel (rows 2, 5 and 6).
    kernel_use = {name: float(np.mean([rows[i][1][n]["psnr"] for n in LEVELS]))
                  for name, i in (("estimated", 2), ("true", 5), ("point", 6))}
    size_mb = sum(f.stat().st_size for f in Path(args.model).rglob("*") if f.is_file()) / 1e6
    floors = {
        "mean PSNR gain >= +1.5 dB": float(np.mean(list(gains.values()))) >= 1.5,
        "PSNR gain >= +0.5 dB at every level": all(g >= 0.5 for g in gains.values()),
        "SSIM up at every level": all(auto[n]["ssim"] > inputs[n]["ssim"] for n in LEVELS),
        "t-MAE <= 40 per level": all(t_mae[n] <= 40 for n in LEVELS),
        "kernel direction within 20 degrees (all 12 straight blurs, whole held-out photos)": all(k["angle_error"] <= 20 for k in kernels),
        "kernel length within 35% (all 12 straight blurs, whole held-out photos; the test uses textured crops)": all(k["length_error"] <= 0.35 for k in kernels),
        "KCN better than base-only (t=200) by >= 0.2 dB": kcn_vs_base >= 0.2,
        "256x256 inference <= 2 s": timing["median_s"] <= 2.0,
    }
    results = {"levels": list(LEVELS), "input": inputs, "rows": {name: res for name, res in rows}, "t_mae": t_mae,
               "gains": gains, "kcn_minus_base_db": kcn_vs_base, "kernel_directions": kernels,
               "trajectory_kernel_lengths": lengths, "kernel_use_mean_psnr_true_t": kernel_use,
               "timing_256": timing, "vae_ceiling_psnr": ceiling, "checkpoint_mb": size_mb, "floors": floors,
               "learning_curves": curves, "num_images_per_level": len(pairs) // len(LEVELS), "seed": args.seed,
               "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), shared 2-core CPU"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    summary_path = work / "make_tiny_summary.json"
    train_info = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    warm_start = (train_info or {}).get("init_base_from")
    has_noct = any(name.startswith("w/o CT") for name, _ in rows)
    photos_text = ", ".join(photo_label(p) for p in HELDOUT_PHOTOS)
    picture_text = os.path.relpath(picture.resolve(), out.resolve().parent)  # a link that works from the doc
    md = [
        "# fidediff-tiny: results on held-out photos",
        "",
        "**A tiny CPU model, not the paper's.** `fidediff_pipeline/checkpoints/fidediff-tiny` is the tiny preset "
        "(same classes as SD 2.1-base FideDiff, a few million parameters) trained on this 2-core CPU by "
        f"`python train/make_tiny.py` on {training_content_text(train_info)}, with synthetic hand-held camera-shake "
        "blur. Its numbers say nothing about the paper's GoPro results."
        + (f" Stage 1 of this checkpoint was warm-started (`--init_base_from {warm_start}`) from an earlier "
           "stage-1 UNet (see 'Training run')." if warm_start else ""),
        "",
        f"Evaluation (`python train/evaluate_tiny.py`): held-out photos {photos_text} (never used in training), "
        f"short side 256 px, whole images; {args.trajectories} random trajectories per photo from the project's "
        f"builder (`synthesize_trajectory_set`, default handheld camera model, seed {args.seed}, m = "
        f"{DATA_KERNEL_SIZE}, camera speed {SPEED_RANGE[0]}-{SPEED_RANGE[1]} px per frame), levels n = 7, 11, 15 "
        f"({len(pairs) // len(LEVELS)} images per level). `upscale_factor=1` (the tiny VAE has factor 2: d = 2; "
        "the paper's d = 4 is SD's factor-8 VAE after 2x upsampling). PSNR / SSIM: scikit-image on uint8 RGB "
        "(per-channel SSIM). How learnable the data are (ambiguity ceilings, non-blind oracle): "
        "`docs/data_learnability.md`.",
        "",
        f"![blurry | restored | sharp, n = 11]({picture_text})",
        "",
        f"*{picture_text}: blurry (n = 11) | FideDiff-tiny | sharp, one row per held-out photo.*",
        "",
        fmt_table(rows, inputs),
        "",
        f"Gain of the full model (t-prediction) over its input: "
        + ", ".join(f"n={n}: {gains[n]:+.2f} dB" for n in LEVELS)
        + f"; mean {float(np.mean(list(gains.values()))):+.2f} dB. KCN minus base-only at t = 200: {kcn_vs_base:+.2f} dB.",
        "",
        "Does the ControlNet use its kernels? At the true t, mean PSNR with M's kernels "
        f"{kernel_use['estimated']:.2f} dB, with each image's true kernel {kernel_use['true']:.2f} dB, with a point "
        f"kernel (no blur) {kernel_use['point']:.2f} dB: "
        + ("the ControlNet barely reads its kernels." if abs(kernel_use["true"] - kernel_use["point"]) < 0.05 else
           f"the true kernel is worth {kernel_use['true'] - kernel_use['point']:+.2f} dB over a point, M's "
           f"{kernel_use['estimated'] - kernel_use['point']:+.2f} dB."),
        "",
        (noct_text(work, warm_start) if has_noct else
         "No \"w/o CT\" ablation for this checkpoint (the `base_noct` stage was not run with the current "
         "architecture, to fit the time budget). ") + "\"oracle\" rows use the true t of each image.",
        "",
        "t-prediction (Kernel ControlNet's regressor) on the same images: "
        + ", ".join(f"n={n}: MAE {t_mae[n]:.1f} (mean predicted {auto[n]['t_mean_predicted']:.0f}, true {(n - 1) * 20})"
                    for n in LEVELS) + ".",
        "",
        "Estimated kernels for straight blurs (mean kernel over a 4 x 4 grid of windows on the three held-out "
        "photos; direction and length from its second moments, `kernel_ops.kernel_principal_axis`; the model's "
        f"kernel window is {full.kernel_controlnet.config.kernel_size} px, so a 21 px blur can only show about 18 px):",
        "",
        "| blur | true direction / length | estimated direction / length | direction error | length error |",
        "|---|---|---|---|---|",
        *[f"| {k['length']} px at {k['angle']} deg | {k['true_angle']:.0f} / {k['true_length']:.1f} px | "
          f"{k['estimated_angle']:.0f} / {k['estimated_length']:.1f} px | {k['angle_error']:.1f} deg | "
          f"{100 * k['length_error']:.0f}% |" for k in kernels],
        "",
        "Kernel lengths on the evaluation images themselves (curved hand-held paths; mean over the images of a "
        "level, each image's estimate the mean kernel of a 4 x 4 grid of windows): "
        + ", ".join(f"n={n}: true {lengths[n]['true_length']:.1f} px, estimated {lengths[n]['estimated_length']:.1f} px"
                    for n in LEVELS) + ".",
        "",
        f"VAE ceiling (encode-decode of the sharp photos): {ceiling:.2f} dB PSNR.",
        "",
        f"Time for one 256 x 256 image (`timestep='auto'`, KCN on, fp32, {args.threads} torch "
        f"thread{'s' if args.threads != 1 else ''}, machine shared with other jobs): median {timing['median_s']:.2f} s, "
        f"best {timing['min_s']:.2f} s of {timing['repeats']}.",
        f"Checkpoint size: {size_mb:.1f} MB.",
        "",
        "## Floors",
        "",
        *[f"- {name}: {'met' if ok else '**NOT met**'}" for name, ok in floors.items()],
        "",
        "## Learning curves (held-out validation during training)",
        "",
        "Each stage validates on all 18 held-out pairs (128 px crops, 6 per level) and keeps its best pipeline; "
        "gains are output minus input PSNR in dB, per level (t = 120 / 200 / 280 is n = 7 / 11 / 15). Minutes are "
        "training minutes of that stage (two stages share the 2 cores, one thread each).",
        "",
        *fmt_curves(curves),
    ]
    if train_info:
        md += ["## Training run", "", "```json", json.dumps(train_info, indent=1), "```", ""]
    card = [
        f"Held-out photos {photos_text} (never trained on), whole images, {len(pairs) // len(LEVELS)} per level, "
        "blurred by the project's builder; PSNR / SSIM on uint8 RGB (`python train/evaluate_tiny.py`, full "
        "table in the project's `docs/tiny_results.md`).",
        "",
        "| n (t) | blurry input PSNR / SSIM | fidediff-tiny PSNR / SSIM | gain | t-prediction MAE |",
        "|---|---|---|---|---|",
        *[f"| {n} ({(n - 1) * 20}) | {inputs[n]['psnr']:.2f} / {inputs[n]['ssim']:.4f} | {auto[n]['psnr']:.2f} / "
          f"{auto[n]['ssim']:.4f} | {gains[n]:+.2f} dB | {t_mae[n]:.0f} |" for n in LEVELS],
        "",
        f"Kernel ControlNet minus base only at t = 200: {kcn_vs_base:+.2f} dB. "
        + ("Measured, not only assumed: that gain does not come from the kernels. Fed each image's true kernel, or a "
           "point kernel (no blur), instead of its own estimates, the model restores these images to the same PSNR "
           f"({kernel_use['true']:.2f} / {kernel_use['point']:.2f} / {kernel_use['estimated']:.2f} dB at the true t)."
           if abs(kernel_use["true"] - kernel_use["point"]) < 0.05 else
           f"At the true t the true kernel is worth {kernel_use['true'] - kernel_use['point']:+.2f} dB over a point "
           f"kernel, its own estimates {kernel_use['estimated'] - kernel_use['point']:+.2f} dB."),
        "",
        f"![blurry | restored | sharp, n = 11]({picture.name})" if picture.parent.resolve() == Path(args.model).resolve()
        else "",
    ]
    write_card_results(Path(args.model) / "README.md", "\n".join(card))
    out.write_text("\n".join(md))
    print("\n".join(md))
    return results


if __name__ == "__main__":
    main()
