#!/usr/bin/env python
"""Evaluate the bundled fidediff-tiny checkpoint on held-out photos and write docs/tiny_results.md (+ .json).

    python train/evaluate_tiny.py [--model fidediff_pipeline/checkpoints/fidediff-tiny] [--noct runs/make_tiny/base_noct/pipeline]

Data: the held-out photos of train/make_tiny.py (coffee, chelsea; never seen in training), short side 256 px,
blurred with the project's camera-shake builder (``synthesize_trajectory_set``) at n = 7, 11, 15 along
``--trajectories`` random trajectories per photo (seed ``--seed``, kernel window 31, the builder's default camera
speed). Whole images, no crops.

Metrics: PSNR and SSIM on uint8 RGB with scikit-image (``peak_signal_noise_ratio(data_range=255)``,
``structural_similarity(channel_axis=-1, data_range=255)``, i.e. per-channel SSIM, not MATLAB's 3-D variant).

Rows: the full model with t-prediction (``timestep="auto"``), with a fixed t = 200 and with the true t; the base
model alone (``kernel_controlnet=None``) at t = 200 and at the true t; the "w/o CT" stage-1 model (trained with
``--no_consistency``) at t = 200; the t-regressor's mean absolute error per level; and the time for one 256 x 256
image. This is a tiny CPU model trained for minutes on 7 photos, not the paper's SD 2.1 model.
"""

from __future__ import annotations

import argparse
import json
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

from train.make_tiny import DATA_KERNEL_SIZE, HELDOUT_PHOTOS, SPEED_RANGE, STEPS, UPSCALE, load_photo  # noqa: E402

LEVELS = (7, 11, 15)


def heldout_pairs(seed: int, trajectories: int, folder: Path) -> list[dict]:
    """(sharp, blurry, n, t) uint8 arrays of the held-out photos, from the project's builder."""
    from PIL import Image

    from fidediff_pipeline.data import TrajectoryConfig, read_manifest, synthesize_trajectory_set

    photos = []
    for name in HELDOUT_PHOTOS:
        path = folder / "photos" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(load_photo(name)).save(path)
        photos.append(path)
    report = synthesize_trajectory_set(photos, folder / "set", frames=LEVELS, seed=seed,
                                       kernel_size=DATA_KERNEL_SIZE, trajectories_per_image=trajectories,
                                       config=TrajectoryConfig(speed_range=SPEED_RANGE))
    rows = read_manifest(report.manifest_path)
    load = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
    return [{"sharp": load(r.sharp), "blurry": load(r.blurry), "n": r.n, "t": r.t, "group": r.group} for r in rows]


def psnr_ssim(output: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    return (float(peak_signal_noise_ratio(target, output, data_range=255)),
            float(structural_similarity(target, output, channel_axis=-1, data_range=255)))


def run_variant(pipe, pairs, timestep) -> dict:
    """Per level: mean PSNR/SSIM of the outputs; and the timesteps used."""
    per_level: dict[int, list] = {n: [] for n in LEVELS}
    predicted: dict[int, list] = {n: [] for n in LEVELS}
    for item in pairs:
        t = item["t"] if timestep == "true" else timestep
        out = pipe(item["blurry"], timestep=t, upscale_factor=UPSCALE, output_type="np")
        restored = (out.images[0] * 255.0).round().clip(0, 255).astype(np.uint8)
        per_level[item["n"]].append(psnr_ssim(restored, item["sharp"]))
        if out.predicted_timesteps:
            predicted[item["n"]].append(out.predicted_timesteps[0])
    result = {}
    for n in LEVELS:
        scores = np.array(per_level[n])
        result[n] = {"psnr": float(scores[:, 0].mean()), "ssim": float(scores[:, 1].mean())}
        if predicted[n]:
            t_true = (n - 1) * 20
            result[n]["t_mae"] = float(np.mean([abs(p - t_true) for p in predicted[n]]))
            result[n]["t_mean_predicted"] = float(np.mean(predicted[n]))
    return result


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
    from fidediff_pipeline.training_utils import decode_latents, encode_latents, low_frequency_transfer

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


def fmt_table(rows: list[tuple[str, dict]], inputs: dict) -> str:
    lines = ["| model / setting | " + " | ".join(f"n={n} (t={(n - 1) * 20}) PSNR / SSIM" for n in LEVELS)
             + " | mean PSNR | mean gain |", "|---" * (len(LEVELS) + 3) + "|"]
    mean_in = np.mean([inputs[n]["psnr"] for n in LEVELS])
    for name, res in [("blurry input", inputs)] + rows:
        cells = [f"{res[n]['psnr']:.2f} / {res[n]['ssim']:.4f}" for n in LEVELS]
        mean = np.mean([res[n]["psnr"] for n in LEVELS])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean:.2f} | {mean - mean_in:+.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--model", default=str(REPO / "fidediff_pipeline" / "checkpoints" / "fidediff-tiny"))
    p.add_argument("--noct", default=str(REPO / "runs" / "make_tiny" / "base_noct" / "pipeline"),
                   help='the "w/o CT" stage-1 pipeline (skipped if missing)')
    p.add_argument("--seed", type=int, default=2024, help="trajectory seed of the evaluation set")
    p.add_argument("--trajectories", type=int, default=3, help="trajectories per held-out photo")
    p.add_argument("--out", default=str(REPO / "docs" / "tiny_results.md"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fidediff_pipeline import FideDiffPipeline

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
    ]
    if Path(args.noct, "model_index.json").is_file():
        noct = FideDiffPipeline.from_pretrained(args.noct)
        rows.append(("w/o CT base (--no_consistency), t = 200", run_variant(noct, pairs, 200)))
    rows.append(("VAE pass-through (encode-decode the blurry input, no UNet)", vae_passthrough(full, pairs)))
    timing = time_256(full)
    ceiling = vae_ceiling(full, pairs)
    t_mae = {n: rows[0][1][n]["t_mae"] for n in LEVELS}
    mean_in = float(np.mean([inputs[n]["psnr"] for n in LEVELS]))
    auto = rows[0][1]
    size_mb = sum(f.stat().st_size for f in Path(args.model).rglob("*") if f.is_file()) / 1e6
    floors = {
        "mean gain >= 1.5 dB": float(np.mean([auto[n]["psnr"] for n in LEVELS]) - mean_in) >= 1.5,
        "gain > 0 at every level": all(auto[n]["psnr"] > inputs[n]["psnr"] for n in LEVELS),
        "t-MAE <= 40 per level": all(t_mae[n] <= 40 for n in LEVELS),
        "KCN not worse than base-only (t=200)": np.mean([rows[1][1][n]["psnr"] for n in LEVELS])
        >= np.mean([rows[3][1][n]["psnr"] for n in LEVELS]),
        "256x256 inference <= 2 s": timing["median_s"] <= 2.0,
        "checkpoint <= 50 MB": size_mb <= 50,
    }
    results = {"levels": list(LEVELS), "input": inputs, "rows": {name: res for name, res in rows}, "t_mae": t_mae,
               "timing_256": timing, "vae_ceiling_psnr": ceiling, "checkpoint_mb": size_mb, "floors": floors,
               "num_images_per_level": len(pairs) // len(LEVELS), "seed": args.seed,
               "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), shared 2-core CPU"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    summary_path = REPO / "runs" / "make_tiny" / "make_tiny_summary.json"
    train_info = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    md = [
        "# fidediff-tiny: results on held-out photos",
        "",
        "**A tiny CPU model, not the paper's.** `fidediff_pipeline/checkpoints/fidediff-tiny` is the tiny preset "
        "(same classes as SD 2.1-base FideDiff, a few million parameters) trained from scratch on this 2-core CPU by "
        "`python train/make_tiny.py` on 7 scikit-image colour photos with synthetic camera-shake blur. It demonstrates "
        "and tests the method's code path; its numbers say nothing about the paper's GoPro results.",
        "",
        f"Evaluation (`python train/evaluate_tiny.py`): held-out photos {', '.join(HELDOUT_PHOTOS)} (never used in "
        f"training), short side 256 px, whole images; {args.trajectories} random trajectories per photo from the "
        f"project's builder (`synthesize_trajectory_set`, seed {args.seed}, m = {DATA_KERNEL_SIZE}, camera speed "
        f"{SPEED_RANGE[0]}-{SPEED_RANGE[1]} px per frame), levels n = 7, 11, 15 "
        f"({len(pairs) // len(LEVELS)} images per level). `upscale_factor=1` (the tiny VAE has factor 2: d = 2; "
        "the paper's d = 4 is SD's factor-8 VAE after 2x upsampling). PSNR / SSIM: scikit-image on uint8 RGB (per-channel SSIM).",
        "",
        fmt_table(rows, inputs),
        "",
        f"The \"w/o CT\" row is a separate stage-1 run with `--no_consistency` (unrelated pairs, all at t = 200) of "
        f"{STEPS['base_noct']} steps, SHORTER than the consistency-trained base ({STEPS['base']} steps), to fit the "
        "time budget; it shares the VAE. \"oracle\" rows use the true t of each image.",
        "",
        "t-prediction (Kernel ControlNet's regressor) on the same images: "
        + ", ".join(f"n={n}: MAE {t_mae[n]:.1f} (mean predicted {auto[n]['t_mean_predicted']:.0f}, true {(n - 1) * 20})"
                    for n in LEVELS) + ".",
        "",
        f"VAE ceiling (encode-decode of the sharp photos): {ceiling:.2f} dB PSNR.",
        "",
        f"Time for one 256 x 256 image (`timestep='auto'`, KCN on, fp32, {args.threads} torch thread, machine shared "
        f"with other jobs): median {timing['median_s']:.2f} s, best {timing['min_s']:.2f} s of {timing['repeats']}.",
        f"Checkpoint size: {size_mb:.1f} MB.",
        "",
        "## Floors",
        "",
        *[f"- {name}: {'met' if ok else '**NOT met**'}" for name, ok in floors.items()],
        "",
    ]
    if train_info:
        md += ["## Training run", "", "```json", json.dumps(train_info.get("timings_s", {}), indent=1), "```", ""]
    out.write_text("\n".join(md))
    print("\n".join(md))
    return results


if __name__ == "__main__":
    main()
