#!/usr/bin/env python
"""Build the bundled ``fidediff-tiny`` checkpoint from scratch with the project's own data builder and scripts.

    python train/make_tiny.py --threads 2    # ~57 min on 2 CPU cores; writes fidediff_pipeline/checkpoints/fidediff-tiny
    python train/make_tiny.py --steps_scale 0.02 --work_dir /tmp/tiny_smoke --export_dir /tmp/tiny_smoke/out  # smoke test

Steps (all deterministic given ``--seed``):
1. photos: scikit-image's colour sample photos, short side resized to 256 px. Training: astronaut, rocket,
   hubble deep field, immunohistochemistry, motorcycle (left and right), retina.
   HELD OUT entirely (validation and evaluation only): coffee and chelsea.
2. held-out data: ``synthesize_trajectory_set`` (the project's camera-shake builder) on the held-out photos,
   levels n = 7, 11, 15, 3 trajectories per photo, kernel window m = 31, the builder's default camera speed
   (``TrajectoryConfig().speed_range``, 1.0-1.6 px per frame).
   Training data are drawn on the fly from the same builder and settings (``--train_images``: a fresh
   trajectory and crop per item), levels n = 5..15.
3. stage 0 ``train_vae.py`` (tiny VAE), stage 1 ``train_base.py`` (all UNet weights, rank 0: the tiny UNet is
   random), stage 2 ``train_kernel.py``, stage 3 ``train_kcn.py``; each stage's ``main(argv)`` is called in this
   process with the flags logged below (the same flags work with ``accelerate launch``).
4. the stage-3 pipeline is copied to ``--export_dir``; with ``--ablation`` (default) a stage-1 model trained
   with ``--no_consistency`` and the same steps is kept in ``<work_dir>/base_noct/pipeline`` for
   ``train/evaluate_tiny.py``.

The tiny model uses ``upscale_factor=1``: its VAE has factor 2, so its latents are at d = 2 (the paper's d = 4 is
SD's factor-8 VAE after a 2x upsampling); the exported model_index.json records it as ``default_upscale_factor``. It is
trained and exported with the low-frequency colour fix (``color_fix_sigma=12``): a from-scratch tiny VAE drifts
in colour, and blur leaves the lowest frequencies of the input intact.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fidediff_pipeline.data import DEFAULT_KERNEL_SIZE, TrajectoryConfig  # noqa: E402

logger = logging.getLogger("fidediff.make_tiny")

# Colour photos only: with grey textures in the mix the from-scratch VAE learnt colour far more slowly.
TRAIN_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "motorcycle_left",
                "motorcycle_right", "retina")
HELDOUT_PHOTOS = ("coffee", "chelsea")
EVAL_FRAMES = (7, 11, 15)
TRAIN_FRAMES = (5, 7, 9, 11, 13, 15)
# The Kernel ControlNet's m (the paper's and sd21-base's 19; the tiny preset's default 11 is for fast tests).
# m = 11 held only 37% / 11% / 3% of the blur paths at n = 7 / 11 / 15 (1.0-1.6 px per frame, 500 paths):
# longer paths saturate the kernel window, and the t-regressor, which reads the kernels, cannot tell them apart.
# m = 19 holds 100% / 67% / 30%.
KERNEL_SIZE = 19
DATA_KERNEL_SIZE = DEFAULT_KERNEL_SIZE  # the builder's default m (31): blur paths up to 14 px from the centre
# The builder's default camera speed (1.0-1.6 px per 240 fps frame). t counts frames, not pixels: a wider speed
# spread (1.2-2.4 was used before) makes n = 7 at full speed as long as n = 13 at low speed, and t unpredictable.
SPEED_RANGE = TrajectoryConfig().speed_range
COLOR_FIX_SIGMA = 12.0  # low-frequency colour fix (training_utils.low_frequency_transfer), px
SHORT_SIDE = 256
UPSCALE = 1

# Steps per stage at --steps_scale 1 (sized for ~57 min on this 2-core machine, see docs/tiny_results.md).
STEPS = {"vae": 2500, "base": 1400, "kernel": 800, "kcn": 400, "base_noct": 600}


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as uint8 RGB with its short side resized to 256 px (antialiased)."""
    import skimage.data
    from PIL import Image

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        image = left if name.endswith("left") else right
    else:
        image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    h, w = image.shape[:2]
    scale = SHORT_SIDE / min(h, w)
    size = (max(SHORT_SIDE, round(w * scale)), max(SHORT_SIDE, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def write_photos(names, folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(load_photo(name)).save(path)
        paths.append(path)
    return paths


def build_heldout_set(photos: list[Path], out_dir: Path, seed: int, trajectories: int = 3) -> Path:
    from fidediff_pipeline.data import synthesize_trajectory_set

    report = synthesize_trajectory_set(photos, out_dir, frames=EVAL_FRAMES, seed=seed + 1000,
                                       kernel_size=DATA_KERNEL_SIZE, trajectories_per_image=trajectories,
                                       config=TrajectoryConfig(speed_range=SPEED_RANGE))
    return Path(report.manifest_path)


def common_flags(args, work: Path, stage: str, steps: int) -> list[str]:
    return [
        "--train_images", str(work / "photos" / "train"),
        "--validation_manifest", str(work / "data" / "heldout" / "manifest.csv"),
        "--frames", *map(str, TRAIN_FRAMES),
        "--synth_kernel_size", str(DATA_KERNEL_SIZE),
        "--synth_speed_range", *map(str, SPEED_RANGE),
        "--upscale_factor", str(UPSCALE),
        "--output_dir", str(work / stage),
        "--seed", str(args.seed),
        "--max_train_steps", str(steps),
        "--checkpointing_steps", str(max(steps // 2, 1)),
        "--checkpoints_total_limit", "1",
        "--validation_steps", str(max(steps // 3, 1)),
        "--num_validation_images", "4",
        "--validation_crop", "128",
        "--log_every", str(max(min(50, steps // 10), 1)),
        "--report_to", args.report_to,
        "--resume_from_checkpoint", "latest",
    ]


def stage_plan(args, work: Path) -> list[tuple[str, str, list[str]]]:
    """(name, script module, argv) of every training run, in order."""
    s = {k: max(int(round(v * args.steps_scale)), 2) for k, v in STEPS.items()}
    plan = [
        ("vae", "train_vae", ["--preset", "tiny", *common_flags(args, work, "vae", s["vae"]),
                              "--resolution", "32", "--train_batch_size", "6", "--levels_per_group", "2",
                              "--learning_rate", "1e-3", "--lr_scheduler", "cosine", "--lr_warmup_steps", "20",
                              "--edge_weight", "0.5"]),
    ]
    # 64 px crops (32 x 32 latents): room for the longest blur paths (~27 px at n = 15).
    # --latent_weight (not in the paper): a from-scratch UNet learnt only a pass-through from the pixel losses.
    base_flags = ["--init_from", str(work / "vae" / "pipeline"), "--resolution", "64", "--train_batch_size", "4",
                  "--levels_per_group", "3", "--lora_rank", "0", "--learning_rate", "1e-3", "--latent_weight", "1.0",
                  "--lr_scheduler", "cosine", "--lr_warmup_steps", "50", "--lpips_weight", "0",
                  "--edge_weight", "0.5", "--gan_weight", "0.01", "--gan_loss", "non_saturating",
                  "--discriminator_learning_rate", "1e-4", "--color_fix_sigma", str(COLOR_FIX_SIGMA)]
    plan.append(("base", "train_base", [*common_flags(args, work, "base", s["base"]), *base_flags]))
    plan.append(("kernel", "train_kernel", [*common_flags(args, work, "kernel", s["kernel"]),
                                            "--init_from", str(work / "base" / "pipeline"), "--preset", "tiny",
                                            "--kernel_size", str(KERNEL_SIZE), "--resolution", "48",
                                            "--train_batch_size", "4", "--levels_per_group", "3",
                                            "--learning_rate", "5e-4", "--lr_scheduler", "cosine",
                                            "--time_weight", "10"]))
    plan.append(("kcn", "train_kcn", [*common_flags(args, work, "kcn", s["kcn"]),
                                      "--init_from", str(work / "kernel" / "pipeline"), "--resolution", "48",
                                      "--train_batch_size", "4", "--levels_per_group", "3",
                                      "--learning_rate", "2e-4", "--lr_scheduler", "cosine", "--lr_warmup_steps", "30",
                                      "--lpips_weight", "0", "--edge_weight", "0.5", "--reblur_weight", "1.0",
                                      "--latent_weight", "1.0",
                                      "--time_weight", "10"]))
    if args.ablation:
        # Shorter than the CT run (half the steps) to fit the time budget: said so in docs/tiny_results.md.
        noct = common_flags(args, work, "base_noct", s["base_noct"])
        plan.append(("base_noct", "train_base", [*noct, *base_flags, "--no_consistency"]))
    return plan


MODEL_CARD = """---
library_name: diffusers
tags: [image-deblurring, motion-deblurring, fidediff, tiny, cpu]
---
# fidediff-tiny

A **tiny CPU model, not the paper's**: the FideDiff method (one-step consistency-trained diffusion deblurring
with a Kernel ControlNet and t-prediction) at the size of the project's `tiny` preset (a few million
parameters, a factor-2 AutoencoderTiny (TAESD architecture) with 12 latent channels), trained from scratch in under an hour on a 2-core CPU by
`python train/make_tiny.py` on seven scikit-image photos with synthetic camera-shake blur. It exists to run and
test the code path offline; it is not a useful deblurring model for real photos. Results on held-out photos:
`docs/tiny_results.md`.

```python
from fidediff_pipeline import FideDiffPipeline, DEFAULT_MODEL
pipe = FideDiffPipeline.from_pretrained(DEFAULT_MODEL)
out = pipe(image)  # uses the saved defaults: upscale_factor=1 (d = 2 with this VAE), colour fix sigma 12
```
"""


def export_checkpoint(source: Path, export: Path) -> None:
    """Copy the final pipeline folder (safetensors + code files) to the bundled checkpoint location."""
    if export.exists():
        shutil.rmtree(export)
    shutil.copytree(source, export)
    (export / "README.md").write_text(MODEL_CARD)
    size = sum(f.stat().st_size for f in export.rglob("*") if f.is_file())
    logger.info("exported the tiny checkpoint to %s (%.1f MB)", export, size / 1e6)


def run_stage(module_name: str, argv: list[str]) -> dict:
    import importlib

    import torch

    torch.manual_seed(0)
    module = importlib.import_module(f"train.{module_name}")
    return module.main(argv) or {}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--work_dir", type=str, default=str(REPO / "runs" / "make_tiny"))
    p.add_argument("--export_dir", type=str, default=str(REPO / "fidediff_pipeline" / "checkpoints" / "fidediff-tiny"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps_scale", type=float, default=1.0, help="multiply every stage's steps (smoke tests)")
    p.add_argument("--no_ablation", dest="ablation", action="store_false",
                   help="skip the 'w/o CT' stage-1 run used by evaluate_tiny.py")
    p.add_argument("--report_to", type=str, default="tensorboard")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: on a shared 2-core machine, 2 threads spin against other jobs and ran 2-6x slower)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    timings = {}

    write_photos(TRAIN_PHOTOS, work / "photos" / "train")
    heldout = write_photos(HELDOUT_PHOTOS, work / "photos" / "heldout")
    manifest = build_heldout_set(heldout, work / "data" / "heldout", args.seed)
    timings["data"] = round(time.time() - t0, 1)
    logger.info("photos and held-out set ready (%s) in %.1f s", manifest, timings["data"])

    results = {}
    for name, module_name, argv_stage in stage_plan(args, work):
        if (work / name / "pipeline" / "model_index.json").is_file():
            logger.info("stage %s already done (%s): skipped", name, work / name / "pipeline")
            continue
        logger.info("stage %s: python train/%s.py %s", name, module_name, " ".join(argv_stage))
        start = time.time()
        results[name] = {k: float(v) for k, v in (run_stage(module_name, argv_stage) or {}).items()}
        timings[name] = round(time.time() - start, 1)
        logger.info("stage %s done in %.1f min", name, timings[name] / 60)
        if name == "kcn":
            export_checkpoint(work / "kcn" / "pipeline", Path(args.export_dir))

    timings["total"] = round(time.time() - t0, 1)
    summary = {"seed": args.seed, "steps": {k: max(int(round(v * args.steps_scale)), 2) for k, v in STEPS.items()},
               "timings_s": timings, "final_logs": results}
    (work / "make_tiny_summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("make_tiny finished in %.1f min: %s", timings["total"] / 60, json.dumps(timings))
    return summary


if __name__ == "__main__":
    main()
