#!/usr/bin/env python
"""Build the bundled ``fidediff-tiny`` checkpoint from scratch with the project's own data builder and scripts.

    python train/make_tiny.py                # ~2 h on this 2-core CPU; writes fidediff_pipeline/checkpoints/fidediff-tiny
    python train/make_tiny.py --device cuda  # the same recipe on a GPU
    python train/make_tiny.py --steps_scale 0.01 --work_dir /tmp/tiny_smoke --export_dir /tmp/tiny_smoke/out  # smoke test
    # the bundled checkpoint, in warm-started rounds that kept the VAE of commit 598d69b's checkpoint
    # (<work_dir>/vae/pipeline = that checkpoint without its Kernel ControlNet, so stage 0 was skipped):
    # round 1 (commit 48eecd3's checkpoint): stage 1 continued from 598d69b's; stages 2 and 3 from scratch
    python train/make_tiny.py --work_dir runs/make_tiny4 --init_base_from runs/fidediff-tiny-598d69b \
        --steps base=1800 kernel=2500 kcn=400 --no_ablation   # then: stage 1 at seed 0, stage 3 at lr 2e-4
    # round 2 (commit 0811eb8's checkpoint): stage 1 continued from round 1's best stage-1 pipeline (= the UNet of
    # commit 48eecd3's checkpoint) with the next seed; stage 2 is round 1's (the same flags and seed give the same
    # result); stage 3 from scratch; the w/o-CT ablation is the same continuation without consistency training
    python train/make_tiny.py --work_dir runs/make_tiny5 --init_base_from runs/make_tiny4/base/best_pipeline \
        --steps base=2400 kernel=2500 kcn=1600
    # round 3 (commit 5663c51's checkpoint): stage 1 continued from round 2's best stage-1 pipeline with a third seed;
    # stage 2 is round 2's; stage 3 with kernel supervision; final pipelines carried forward
    # (train/compare_pipelines.py on 36 whole held-out images: the best of the 18 validation crops was luck)
    python train/make_tiny.py --work_dir runs/make_tiny6 --init_base_from runs/make_tiny5/base/best_pipeline \
        --base_seed 2 --steps base=2400 kernel=2500 kcn=1600 --keep_final base kcn --no_ablation
    # round 4 (commit dd5f870's checkpoint): stage 1 continued from round 3's final stage-1 pipeline with a fourth
    # seed; stage 2 is round 2's; stage 3 at T's predicted t (now the default)
    python train/make_tiny.py --work_dir runs/make_tiny7 --init_base_from runs/make_tiny6/base/pipeline \
        --base_seed 3 --steps base=2400 kernel=2500 kcn=1600 --keep_final base kcn --no_ablation
    # round 5 (commit c75b061's checkpoint): stage 1 continued from round 4's final stage-1 pipeline with a fifth
    # seed; stage 2 is round 2's; stage 3 as round 4's; then M and T refitted on 192 px crops (commit 4a139b8's
    # checkpoint is the same run without the refit)
    python train/make_tiny.py --work_dir runs/make_tiny8 --init_base_from runs/make_tiny7/base/pipeline \
        --base_seed 4 --steps base=2400 kernel=2500 kcn=1600 --keep_final base kcn --no_ablation
    # round 6 (commit e596b6f's checkpoint): stage 1 continued from round 5's final stage-1 pipeline with a sixth
    # seed; stage 2 is round 2's; stage 3 and the refit as round 5's
    python train/make_tiny.py --work_dir runs/make_tiny10 --init_base_from runs/make_tiny8/base/pipeline \
        --base_seed 5 --steps base=2400 kernel=2500 kcn=1600 --keep_final base kcn --no_ablation
    # round 7: stage 1 continued from round 6's final stage-1 pipeline with a seventh seed; stage 2
    # is round 2's; stage 3 with F fed kernels times m**2 and half of its crops their true kernel (now the
    # defaults); the refit as round 5's
    python train/make_tiny.py --work_dir runs/make_tiny12 --init_base_from runs/make_tiny10/base/pipeline \
        --base_seed 6 --steps base=2400 kernel=2500 kcn=1600 --keep_final base kcn --no_ablation \
        --kernel_input_scale m2 --kcn_controlnet_kernels mix
    # round 7 + t_context (commit a237c6a's checkpoint): round 7's result (commit 9e9b482's checkpoint, copied to
    # runs/round7) with T's whole-image branch added and T alone trained on 256 px crops, twice (the second run
    # continues from the first's export with the next seed: fresh crops, trajectories and dead-leaves images)
    python train/make_tiny.py --work_dir runs/tctx --t_context_from runs/round7 --export_dir runs/tctx_export
    python train/make_tiny.py --work_dir runs/tctx2 --t_context_from runs/tctx_export --seed 1 \
        --export_dir runs/tctx2_export
    # round 7 + t_context + refit (commit c3ac2ae's checkpoint): M and T refitted once more from the previous checkpoint
    # (runs/tctx2_export) with wider camera speeds (--refit_speed_range, default 0.7 2.0 since), then T alone again
    # with the L1 time loss and the next seed
    # (one thread each; rerun so from commit a237c6a's checkpoint, they reproduce it up to float rounding:
    # docs/tiny_results.md, 'Training run')
    python train/make_tiny.py --work_dir runs/refit2 --refit_from runs/tctx2_export --steps refit=400 \
        --no_t_context --threads 1 --export_dir runs/refit2_export
    python train/make_tiny.py --work_dir runs/tctx3 --t_context_from runs/refit2_export --seed 2 \
        --t_context_time_loss l1 --threads 1 --export_dir runs/tctx3_export
    # round 8: stage 1 continued twice from that checkpoint (commit c3ac2ae's) with the training
    # photos also at short sides 384 and 512 px (--train_short_sides, the default since), 2400 steps each, the next two
    # seeds; the Kernel ControlNet (M, T, F, C), VAE and prompt embedding kept (about 16 min each on two threads)
    python train/make_tiny.py --work_dir runs/r8 --base_from runs/tctx3_export --base_seed 7 --steps base=2400 \
        --export_dir runs/r8_export
    python train/make_tiny.py --work_dir runs/r9 --base_from runs/r8_export --base_seed 8 --steps base=2400 \
        --export_dir runs/round8
    # round 9 (commit 343e820's checkpoint): stage 1 continued three more times from round 8's checkpoint (commit
    # e5f65bf's, copied to runs/round8), seeds 9, 10 and 11, then stage 3 alone with M and T frozen so that F and the
    # ControlNet fit the new UNet (--kcn_from, 800 steps); about 15-28 min per stage-1 run, 5 min for stage 3
    python train/make_tiny.py --work_dir runs/r10 --base_from runs/round8 --base_seed 9 --steps base=2400 \
        --export_dir runs/r10_export
    python train/make_tiny.py --work_dir runs/r11 --base_from runs/r10_export --base_seed 10 --steps base=2400 \
        --export_dir runs/r11_export
    python train/make_tiny.py --work_dir runs/r12 --base_from runs/r11_export --base_seed 11 --steps base=2400 \
        --export_dir runs/r12_export
    python train/make_tiny.py --work_dir runs/k12 --kcn_from runs/r12_export --steps kcn=800 --export_dir runs/round9
    # round 10 (this checkpoint): stage 1 once more from round 9's stage-1 UNet (runs/r12_export, seed 12; 17 min on
    # two threads), then stage 3 alone on it again (5 min)
    python train/make_tiny.py --work_dir runs/r13 --base_from runs/r12_export --base_seed 12 --steps base=2400 \
        --export_dir runs/r13_export
    python train/make_tiny.py --work_dir runs/k13 --kcn_from runs/r13_export --steps kcn=800
    # (rounds 1-4 ran before the refit stage existed and was made the default: add --no_refit_estimator to rerun them;
    # rounds 1-6 before stage 3's kernel settings: add --kernel_input_scale 1 --kcn_controlnet_kernels estimated;
    # rounds 5-7 before the t_context stage: add --no_t_context; rounds before commit c3ac2ae's checkpoint refitted
    # at the builder's camera speeds: add --refit_speed_range 1.0 1.6; every round before round 8 trained on photos at
    # 256 px only: add --train_short_sides 256)
    (see docs/tiny_results.md for the times and learning curves)

Steps (all deterministic given ``--seed`` and the device):
1. training content (``<work_dir>/photos/train``): every usable sample photo that installed packages ship, short
   side resized to 256 px and, where the photo ships that large, also to 384 and 512 px (``--train_short_sides``):
   scikit-image's colour photos (astronaut, rocket, hubble deep field,
   immunohistochemistry, retina, motorcycle left and right), scikit-learn's ``flower``, scikit-image's grey photos
   as RGB (brick, camera, grass, gravel, moon, clock, coins), the 23 ``OPENCV_PHOTOS`` of OpenCV's sample data
   (Debian's ``opencv-doc`` package: ``apt-get install opencv-doc``, or ``--opencv_examples DIR``), plus
   ``DEAD_LEAVES`` procedural dead-leaves images (``fidediff_pipeline.data.dead_leaves``: natural-image
   statistics, unlimited edges and textures).
   HELD OUT entirely (validation and evaluation only): scikit-image's coffee and chelsea (= ``cat``, so not trained
   on either), scikit-learn's china. NEVER used at all: matplotlib's sample data and Debian's wallpapers (reserved
   for independent evaluation).
2. held-out data: ``synthesize_trajectory_set`` (the project's camera-shake builder, default "handheld" camera
   model) on the held-out photos, levels n = 7, 11, 15, 2 trajectories per photo, kernel window m = 31.
   Training data are drawn on the fly from the same builder and settings (``--train_images``: a fresh
   trajectory and crop per item), levels n = 5..15.
3. stage 0 ``train_vae.py`` (tiny VAE); then, two at a time, one torch thread each (fastest on 2 cores):
   stage 1 ``train_base.py`` (all UNet weights: the tiny UNet is random) beside stage 2 ``train_kernel.py`` (M and
   the t-regressor T; M does not depend on the base model, so training it beside stage 1 equals training it
   after), then the "w/o CT" ablation; stage 3 ``train_kcn.py`` starts from the best stage-1 pipeline with a
   Kernel ControlNet whose ControlNet is copied from that UNet (as ``from_unet`` does) and whose M and T come
   from stage 2. Each stage is its own ``python train/<script>.py`` process (the same flags work with
   ``accelerate launch``), logged to ``<work_dir>/<stage>/stage.log``; a finished stage is skipped on a rerun and
   an interrupted one resumes from its latest checkpoint.
4. unless ``--no_refit_estimator`` (not in the paper; the bundled checkpoint's recipe): M and T trained again, alone,
   on 192 px crops after stage 3 (the ``refit`` stage), where a blur's length shows far better than in stage 2's
   96 px and stage 3's 64 px crops.
5. unless ``--no_t_context`` (not in the paper; the bundled checkpoint's recipe since round 7): T alone again, M and
   everything else frozen, with a branch that reads the whole image's gradient autocorrelations, on 256 px crops
   (the ``t_context`` stage): a blur's level shows over a whole photo far better than in M's kernels
   (``train/probe_timestep_cue.py``).
6. every stage validates on the held-out set and keeps its best pipeline (``best_pipeline``); the last stage's
   pipeline (best, or final with ``--keep_final``) is copied to ``--export_dir``; the learning curves are in
   ``<stage>/validation_history.json``.

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
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fidediff_pipeline.data import DEFAULT_KERNEL_SIZE, TrajectoryConfig  # noqa: E402

logger = logging.getLogger("fidediff.make_tiny")

# Training photos: (source, name). Colour first; grey photos are stacked to RGB (edges and textures, no colour).
TRAIN_PHOTOS = (("skimage", "astronaut"), ("skimage", "rocket"), ("skimage", "hubble_deep_field"),
                ("skimage", "immunohistochemistry"), ("skimage", "motorcycle_left"), ("skimage", "motorcycle_right"),
                ("skimage", "retina"), ("sklearn", "flower"),
                ("skimage", "brick"), ("skimage", "camera"), ("skimage", "grass"), ("skimage", "gravel"),
                ("skimage", "moon"), ("skimage", "clock"), ("skimage", "coins"))
# Debian's opencv-doc package (OpenCV's sample data): colour photos of objects, animals, buildings, aerial views and
# a circuit board, plus one grey photo. Left out: blurred on purpose (licenseplate_motion, text_*), synthetic or
# drawn (pic*, fuzzy, ellipses, logos, chessboards, digits, the anime face), paintings (starry_night) and the
# second view of each stereo or sequence pair (aloeR, leuvenB, rubberwhale2, ...: nearly the same content).
OPENCV_PHOTOS = tuple(("opencv", name) for name in (
    "data/aero1.jpg", "data/aero3.jpg", "data/aloeL.jpg", "data/apple.jpg", "data/baboon.jpg", "data/board.jpg",
    "data/building.jpg", "data/butterfly.jpg", "data/ela_original.jpg", "data/fruits.jpg", "data/home.jpg",
    "data/leuvenA.jpg", "data/messi5.jpg", "data/orange.jpg", "data/squirrel_cls.jpg", "data/stuff.jpg",
    "data/chicky_512.png", "data/graf1.png", "data/rubberwhale1.png", "data/smarties.png", "data/basketball1.png",
    "alphamat/input_images/plant.jpg", "hfs/data/000.jpg"))
# Where Debian's opencv-doc installs them (`apt-get install opencv-doc`; or `apt-get download opencv-doc` and
# `dpkg-deb -x` it anywhere, then pass --opencv_examples <that>/usr/share/doc/opencv-doc/examples).
OPENCV_EXAMPLES = Path("/usr/share/doc/opencv-doc/examples")
HELDOUT_PHOTOS = (("skimage", "coffee"), ("skimage", "chelsea"), ("sklearn", "china"))
DEAD_LEAVES = 16  # procedural images (320 px), about half of the training content
EVAL_FRAMES = (7, 11, 15)
TRAIN_FRAMES = (5, 7, 9, 11, 13, 15)
# The Kernel ControlNet's m (the paper's and sd21-base's 19; the tiny preset's default 11 is for fast tests).
# m = 19 and autocorrelations to 14 px. Tried (2026-12-03, stage 2 alone, 2200 steps, mean kernel over the three
# held-out photos): m = 23 with autocorrelations to 18 px did not read long blurs longer (21 px blurs 32-45% short,
# against 27-49% for m = 19) and pointed worse (up to 13.9 degrees off, against 4.5), t-MAE on the validation crops
# alike (111 at n = 15): M's short estimates of long blurs are not the window's doing.
KERNEL_SIZE = 19
AUTOCORRELATION_RADIUS = 14  # the tiny preset's
AUTOCORRELATION_WINDOW = 16  # the tiny preset's
DATA_KERNEL_SIZE = DEFAULT_KERNEL_SIZE  # the builder's default m (31): blur paths up to 14 px from the centre
# The builder's default camera speed (1.0-1.6 px per 240 fps frame). t counts frames, not pixels: a wider speed
# spread makes n = 7 at full speed as long as n = 13 at low speed, and t unpredictable.
SPEED_RANGE = TrajectoryConfig().speed_range
COLOR_FIX_SIGMA = 12.0  # low-frequency colour fix (restoration.low_frequency_transfer), px
SHORT_SIDE = 256
UPSCALE = 1

# Steps per stage at --steps_scale 1 (about 2 hours on this 2-core machine, of which stage 3 is ~40 min; see
# docs/tiny_results.md).
STEPS = {"vae": 2500, "base": 2100, "kernel": 2500, "kcn": 1600, "time": 1500, "refit": 300, "base_noct": 800,
         "t_context": 1500}
# Reach in px of the whole-image gradient autocorrelations the t-regressor reads after the t_context stage (the
# longest blur paths are ~24 px at n = 15; offsets to 32 px cost no more: they come from two FFTs).
T_CONTEXT_RADIUS = 32
# The refit's camera speeds (px per 240 fps frame): wider than the builder's default on both sides, so the refit sees
# more short and more long blurs and M's kernel lengths follow the blur further before falling back towards the
# mean (docs/tiny_results.md; the kernel test's straight 21 px blurs on held-out crops read 24-40% short with the
# checkpoint refitted at 1.0-1.6, 17-33% after a refit at these speeds)
REFIT_SPEED_RANGE = (0.7, 2.0)
# Short sides (px) at which the training photos are written (each where the photo ships at least that large): 256
# alone gave a model that deblurred photos at 256 px far better than the same photos at their own size (held-out
# coffee, chelsea, china at 300-427 px: +1.40 dB against +1.81 at 256 px; docs/tiny_results.md), so stage 1 also
# sees finer detail per pixel. Measured against a control (round 8's first run, same start, seed and steps): +0.05
# dB at the photos' own size, +0.01 at 256 px; most of that round's gain was the further training itself.
TRAIN_SHORT_SIDES = (256, 384, 512)


def photo_label(source_name) -> str:
    source, name = source_name
    if source == "opencv":  # a path inside opencv-doc's examples: "data/aero1.jpg" -> "opencv_aero1"
        return "opencv_" + Path(name).stem if Path(name).parts[0] == "data" else "opencv_" + Path(name).parts[0]
    return name


def shipped_photo(name, opencv_examples: Path = OPENCV_EXAMPLES) -> np.ndarray:
    """A sample photo (``"coffee"`` or ``(source, name)``) as uint8 RGB, at the size it ships in."""
    from PIL import Image

    source, name = ("skimage", name) if isinstance(name, str) else name
    if source == "opencv":
        image = np.asarray(Image.open(Path(opencv_examples) / name).convert("RGB"))
    elif source == "sklearn":
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    elif name.startswith("motorcycle_"):
        import skimage.data

        left, right, _ = skimage.data.stereo_motorcycle()
        image = left if name.endswith("left") else right
    else:
        import skimage.data

        image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    return image


def load_photo(name, opencv_examples: Path = OPENCV_EXAMPLES, short_side: int = SHORT_SIDE) -> np.ndarray:
    """A sample photo (``"coffee"`` or ``(source, name)``) as uint8 RGB, short side resized to ``short_side`` px
    (antialiased; 256 unless said)."""
    return resized_to_short_side(shipped_photo(name, opencv_examples), short_side)


def resized_to_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """``image`` with its short side resized to ``short_side`` px (antialiased)."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def write_photos(names, folder: Path, opencv_examples: Path = OPENCV_EXAMPLES,
                 short_sides: tuple[int, ...] = (SHORT_SIDE,)) -> list[Path]:
    """Each photo as a PNG in ``folder``, once per short side in ``short_sides`` that it has natively (256 px
    always; a larger size only where the photo is at least that large: no upsampled copies)."""
    from PIL import Image

    from fidediff_pipeline.atomic_io import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        shipped = None  # loaded once per photo, and only when one of its files is missing
        for side in short_sides:
            path = folder / (f"{photo_label(name)}.png" if side == SHORT_SIDE else f"{photo_label(name)}_s{side}.png")
            if not path.exists():
                shipped = shipped_photo(name, opencv_examples) if shipped is None else shipped
                if side != SHORT_SIDE and side > min(shipped.shape[:2]):
                    continue
                with atomic_path(path) as tmp:
                    Image.fromarray(resized_to_short_side(shipped, side)).save(tmp, format="PNG")
            paths.append(path)
    return paths


def write_dead_leaves(count: int, folder: Path, seed: int) -> list[Path]:
    from PIL import Image

    from fidediff_pipeline.data.dead_leaves import dead_leaves_image

    paths = []
    for i in range(count):
        path = folder / f"dead_leaves_{i:03d}.png"
        if not path.exists():
            Image.fromarray(dead_leaves_image(320, np.random.default_rng([seed, 4242, i]))).save(path)
        paths.append(path)
    return paths


def build_heldout_set(photos: list[Path], out_dir: Path, seed: int, trajectories: int = 2) -> Path:
    from fidediff_pipeline.data import synthesize_trajectory_set

    report = synthesize_trajectory_set(photos, out_dir, frames=EVAL_FRAMES, seed=seed + 1000,
                                       kernel_size=DATA_KERNEL_SIZE, trajectories_per_image=trajectories,
                                       config=TrajectoryConfig(speed_range=SPEED_RANGE))
    return Path(report.manifest_path)


def common_flags(args, work: Path, stage: str, steps: int, validations: int = 8,
                 speed_range: tuple[float, float] = SPEED_RANGE) -> list[str]:
    return [
        "--train_images", str(work / "photos" / "train"),
        "--validation_manifest", str(work / "data" / "heldout" / "manifest.csv"),
        "--frames", *map(str, TRAIN_FRAMES),
        "--synth_kernel_size", str(DATA_KERNEL_SIZE),
        "--synth_speed_range", *map(str, speed_range),
        "--upscale_factor", str(UPSCALE),
        "--output_dir", str(work / stage),
        "--seed", str(args.seed),
        "--max_train_steps", str(steps),
        "--checkpointing_steps", str(max(steps // 6, 1)),
        "--checkpoints_total_limit", "1",
        "--validation_steps", str(max(steps // validations, 1)),
        "--num_validation_images", "4",
        "--num_validation_pairs", "0",
        "--validation_crop", "128",
        "--log_every", str(max(min(50, steps // 10), 1)),
        "--report_to", args.report_to,
        "--resume_from_checkpoint", "latest",
    ]


def stage_plan(args, work: Path) -> list[dict]:
    """Every training run: name, script, argv, the stages it needs and its torch threads, in priority order."""
    s = {k: max(int(round(v * args.steps_scale)), 2) for k, v in {**STEPS, **args.steps}.items()}
    if args.t_context_from:  # the t_context stage alone, from a finished pipeline (e.g. a bundled checkpoint)
        return [t_context_job(args, work, s["t_context"], Path(args.t_context_from), ())]
    if args.kcn_from:  # F and C alone (M, T frozen) from a finished pipeline, e.g. after --base_from
        return [kcn_job(args, work, s["kcn"], Path(args.kcn_from), (), args.threads,
                        extra=["--freeze_estimator", "--learning_rate", "2e-4"])]
    if args.refit_from:  # the refit (and the t_context stage unless --no_t_context) from a finished pipeline
        plan = [refit_job(args, work, s["refit"], Path(args.refit_from), ())]
        if args.t_context:
            plan.append(t_context_job(args, work, s["t_context"], stage_result(work, "refit", args.keep_final),
                                      ("refit",)))
        return plan
    both = args.threads  # a stage that runs alone
    one = max(args.threads // args.parallel, 1)  # two stages side by side get half each
    vae = work / "vae" / "pipeline"
    plan = [dict(name="vae", script="train_vae", needs=(), threads=both,
                 argv=["--preset", "tiny", *common_flags(args, work, "vae", s["vae"], validations=3),
                       "--resolution", "32", "--train_batch_size", "6", "--levels_per_group", "2",
                       "--learning_rate", "1e-3", "--lr_scheduler", "cosine", "--lr_warmup_steps", "20",
                       "--edge_weight", "0.5"])]
    # 64 px crops (32 x 32 latents): room for the longest blur paths (~21 px at n = 15).
    # --latent_weight and --fft_weight are not in the paper: a from-scratch UNet learnt only a pass-through from
    # the pixel losses; the spectrum term weighs the high frequencies that blur removed.
    base_training = ["--resolution", str(args.base_crop), "--train_batch_size", str(args.base_batch),
                     "--levels_per_group", "3", "--lora_rank", "0", "--learning_rate", "1e-3", "--latent_weight", "1.0",
                     "--lr_scheduler", "cosine", "--lr_warmup_steps", "50", "--lpips_weight", "0",
                     "--edge_weight", "0.5", "--fft_weight", "0.5", "--gan_weight", "0.01", "--gan_loss",
                     "non_saturating", "--discriminator_learning_rate", "1e-4", "--color_fix_sigma", str(COLOR_FIX_SIGMA)]
    base_flags = ["--init_from", str(vae), *base_training]
    if args.init_base_from:
        # Warm start: stage 1 continues from an earlier stage-1 UNet (converted by warm_start_base) at half the
        # learning rate, so the restart does not undo what it learnt, and with the next seed, so it draws crops and
        # trajectories its start has not already seen (later flags win).
        base_flags_1 = [*base_training, "--init_from", str(work / "base_init"), "--learning_rate", "5e-4",
                        "--seed", str(args.seed + 1 if args.base_seed is None else args.base_seed)]
    else:
        base_flags_1 = base_flags
    base_job = dict(name="base", script="train_base", needs=("vae",), threads=one,
                    argv=[*common_flags(args, work, "base", s["base"]), *base_flags_1])
    if args.base_from:  # stage 1 alone, continued from a finished pipeline whose other parts are kept (see main)
        return [{**base_job, "needs": (), "threads": both}]
    plan.append(base_job)
    # Stage 2 from the VAE stage's pipeline: only M and T train, and the merge below gives stage 3 a ControlNet
    # copied from the trained stage-1 UNet. --kernel_weight and --kernel_moment_weight (not in the paper): the
    # builder's true kernels; 96 px crops give M the context of the longest blur paths (~20 px). The tiny
    # preset's M also reads gradient autocorrelations (estimator_autocorrelation_radius): without them it learnt
    # one average kernel; with them every straight test blur is within 5 degrees after 2500 steps (~27 min).
    plan.append(dict(name="kernel", script="train_kernel", needs=("vae",), threads=one,
                     argv=[*common_flags(args, work, "kernel", s["kernel"]), "--init_from", str(vae),
                           "--preset", "tiny", "--kernel_size", str(args.kernel_size), "--autocorrelation_radius",
                           str(args.autocorrelation_radius), "--autocorrelation_window",
                           str(args.autocorrelation_window), "--resolution", "96",
                           "--train_batch_size", "4", "--levels_per_group", "3", "--learning_rate", "1e-3",
                           "--lr_scheduler", "cosine", "--lr_warmup_steps", "50", "--kernel_weight", "1.0",
                           "--kernel_moment_weight", "1.0",
                           "--time_weight", "10"]))
    if args.ablation:
        # "w/o CT": stage 1 again with --no_consistency. After a warm start it is the same continuation (same start,
        # steps, learning rate and seed), so the two differ only in consistency training.
        noct_steps = s["base"] if args.init_base_from else s["base_noct"]
        noct = common_flags(args, work, "base_noct", noct_steps)
        plan.append(dict(name="base_noct", script="train_base", needs=("vae",), threads=one,
                         argv=[*noct, *base_flags_1, "--no_consistency"]))
    # Stage 3 keeps stage 2's supervision of M by the builder's true kernels (round 3, same start and steps, 36 whole
    # held-out images of train/compare_pipelines.py, t-prediction: final pipelines +1.17 dB with it, +1.12 without).
    # It runs the UNet and the ControlNet at T's own estimate of t, as inference does (--kcn_unet_timestep; round 3's
    # merged start, 1600 steps each, the same 36 images: +1.20 dB with t-prediction against +1.17 when trained at the
    # true t; Kernel ControlNet minus base at t = 200 +0.08 against +0.05). 1600 steps at 5e-4 rather than 400 at
    # 2e-4: measured from the same stage-1 and stage-2 results on the whole held-out images, +1.01 dB against +0.96
    # (true t and t-prediction alike), t-MAE 21 / 42 / 111 against 13 / 47 / 117 at n = 7 / 11 / 15.
    plan.append(kcn_job(args, work, s["kcn"], work / "merged", ("base", "kernel"), one))
    if args.refit_estimator:
        # Not in the paper: after stage 3, M and T again together (as in stage 2: kernel supervision, T on M's
        # detached kernels) on 192 px crops, everything else frozen. How long a blur is shows far more clearly in
        # a large crop than in stage 2's 96 px or stage 3's 64 px (train/probe_kernel_cue.py --length: held-out
        # MAE of a regressor on the crop's autocorrelations 2.96 px at 96 px, 2.21 at 192; 3.58 for always the
        # mean length), and M and T trained on small crops read long blurs short. Measured on round 5 (300 steps,
        # 12 min; 36 whole held-out images of train/compare_pipelines.py, t-prediction): t-MAE 20 / 39 / 110 ->
        # 35 / 22 / 70 at n = 7 / 11 / 15, PSNR gain +1.47 -> +1.55 dB (+1.77 / +1.80 / +0.83 -> +1.60 / +1.79 /
        # +1.25: light blurs now read a little long, long ones much less short).
        plan.append(refit_job(args, work, s["refit"], work / "kcn_result", ("kcn",)))
    if args.t_context:
        plan.append(t_context_job(args, work, s["t_context"], stage_result(work, "refit", args.keep_final), ("refit",)))
    if not args.refit_t:
        return plan
    # Not in the paper, off by default: stage 3 also changes M (its restoration, reblur and time losses reach M), so
    # T is refitted alone to the final M's kernels, on 192 px crops (closer to the whole photos it reads at inference
    # than 64 px). Measured on the previous checkpoint (commit 598d69b, its docs/tiny_results.md): t-MAE on held-out
    # photos 23/65/134 -> 29/28/74, but the PSNR gain fell from +0.67 to +0.56 dB: over-predicting t on a light blur
    # (n = 7) over-sharpens it, so the bundled checkpoint is stage 3's.
    plan.append(dict(name="time", script="train_kernel", needs=("kcn",), threads=both,
                     argv=[*common_flags(args, work, "time", s["time"]), "--init_from", str(work / "kcn_result"),
                           "--resolution", "192", "--train_batch_size", "4", "--levels_per_group", "3",
                           "--learning_rate", "1e-3", "--lr_scheduler", "cosine", "--lr_warmup_steps", "50",
                           "--time_weight", "1", "--time_only"]))
    return plan


def kcn_job(args, work: Path, steps: int, start: Path, needs: tuple, threads: int, extra=()) -> dict:
    """Stage 3 (see ``stage_plan``) from ``start``; ``extra`` flags come last and win."""
    return dict(name="kcn", script="train_kcn", needs=needs, threads=threads,
                argv=[*common_flags(args, work, "kcn", steps), "--init_from", str(start),
                      "--resolution", "64", "--train_batch_size", "4", "--levels_per_group", "3",
                      "--learning_rate", "5e-4", "--lr_scheduler", "cosine", "--lr_warmup_steps", "30",
                      "--lpips_weight", "0", "--edge_weight", "0.5", "--fft_weight", "0.5",
                      "--reblur_weight", "1.0", "--latent_weight", "1.0", "--time_weight", "10",
                      "--kernel_weight", "1.0", "--kernel_moment_weight", "1.0",
                      "--unet_timestep", args.kcn_unet_timestep,
                      "--controlnet_kernels", args.kcn_controlnet_kernels,
                      "--true_kernel_fraction", str(args.kcn_true_kernel_fraction), *extra])


def refit_job(args, work: Path, steps: int, start: Path, needs: tuple) -> dict:
    """M and T again, alone, on 192 px crops (see ``stage_plan``), with camera speeds ``--refit_speed_range``."""
    return dict(name="refit", script="train_kernel", needs=needs, threads=args.threads,
                argv=[*common_flags(args, work, "refit", steps, speed_range=tuple(args.refit_speed_range)),
                      "--init_from", str(start),
                      "--resolution", "192", "--train_batch_size", "4", "--levels_per_group", "3",
                      "--learning_rate", "3e-4", "--lr_scheduler", "cosine", "--lr_warmup_steps", "20",
                      "--kernel_weight", "1.0", "--kernel_moment_weight", "1.0", "--time_weight", "10",
                      *(["--estimator_global_context"] if args.refit_global_context else [])])


def t_context_job(args, work: Path, steps: int, start: Path, needs: tuple) -> dict:
    """Not in the paper: T alone again, M and everything else frozen, with a branch that reads the gradient
    autocorrelations of the whole image (``regressor_global_context_radius``), on 256 px crops (about the whole
    training photos). T read from M's kernels alone predicts long blurs short: probed on whole held-out photos
    (``train/probe_timestep_cue.py``), the whole image's autocorrelations carry more of a blur's length than M's
    kernels, and more training samples keep helping, so each step draws fresh crops and trajectories (one level
    per trajectory)."""
    return dict(name="t_context", script="train_kernel", needs=needs, threads=args.threads,
                argv=[*common_flags(args, work, "t_context", steps), "--init_from", str(start),
                      "--resolution", "256", "--train_batch_size", "8", "--levels_per_group", "1",
                      "--learning_rate", "1e-3", "--lr_scheduler", "cosine", "--lr_warmup_steps", "50",
                      "--time_weight", "1", "--time_only", "--time_loss", args.t_context_time_loss,
                      "--regressor_global_context_radius", str(args.t_context_radius),
                      *(["--frames", *map(str, args.t_context_frames)] if args.t_context_frames else [])])


def copy_kcn_result(work: Path, keep_final=()) -> Path:
    """The time or refit stage's starting point: stage 3's result (its best validated pipeline unless kept final),
    copied when stage 3 is done."""
    from fidediff_pipeline.atomic_io import atomic_folder

    target = work / "kcn_result"
    if not (target / "model_index.json").is_file():
        with atomic_folder(target) as tmp:
            shutil.copytree(stage_result(work, "kcn", keep_final), tmp, dirs_exist_ok=True)
    return target


def stage_result(work: Path, name: str, keep_final=()) -> Path:
    """A finished stage's pipeline: the best validated one where the stage keeps one, else (or for a stage named in
    ``keep_final``) its final export."""
    best = work / name / "best_pipeline"
    if name in keep_final or not (best / "model_index.json").is_file():
        return work / name / "pipeline"
    return best


def kcn_input_scale(args) -> float:
    """``--kernel_input_scale`` as a number: 'm2' is ``kernel_size ** 2``."""
    if args.kernel_input_scale == "m2":
        return float(args.kernel_size ** 2)
    return float(args.kernel_input_scale)


def merge_for_kcn(work: Path, keep_final=(), kernel_input_scale: float = 1.0) -> Path:
    """Stage 3's starting point: the best stage-1 pipeline plus a Kernel ControlNet copied from its UNet, with M and
    T from stage 2 (what running stage 2 after stage 1 would give: stage 2 trains only M and T)."""
    from fidediff_pipeline import FideDiffPipeline
    from fidediff_pipeline.atomic_io import atomic_folder
    from fidediff_pipeline.presets import build_kernel_controlnet

    out = work / "merged"
    if (out / "model_index.json").is_file():
        return out
    import torch

    base = FideDiffPipeline.from_pretrained(stage_result(work, "base", keep_final))
    kernel = FideDiffPipeline.from_pretrained(work / "kernel" / "pipeline").kernel_controlnet
    torch.manual_seed(0)
    kcn = build_kernel_controlnet("tiny", base.unet, kernel.config.kernel_size,
                                  kernel.config.estimator_autocorrelation_radius,
                                  kernel.config.estimator_autocorrelation_window, kernel_input_scale)
    kcn.kernel_estimator.load_state_dict(kernel.kernel_estimator.state_dict())
    kcn.timestep_regressor.load_state_dict(kernel.timestep_regressor.state_dict())
    base.register_modules(kernel_controlnet=kcn)
    with atomic_folder(out) as tmp:
        base.save_pretrained(tmp)
    return out


def warm_start_base(work: Path, source: Path) -> Path:
    """Stage 1's starting point for ``--init_base_from``: that pipeline with its UNet converted to the tiny preset's
    UNet config by diffusers' own partial loading (``ignore_mismatched_sizes``): every weight whose shape still fits
    is kept, the rest (e.g. self-attention key/value projections that became prompt cross-attention) start fresh."""
    from diffusers import UNet2DConditionModel

    from fidediff_pipeline import FideDiffPipeline
    from fidediff_pipeline.atomic_io import atomic_folder
    from fidediff_pipeline.presets import tiny_unet_config

    out = work / "base_init"
    if (out / "model_index.json").is_file():
        return out
    pipe = FideDiffPipeline.from_pretrained(source)
    if pipe.kernel_controlnet is not None:
        pipe.register_modules(kernel_controlnet=None)
    wanted = {k: list(v) if isinstance(v, tuple) else v for k, v in tiny_unet_config().items()}  # config stores lists
    overrides = {k: v for k, v in wanted.items() if pipe.unet.config.get(k) != v}
    unet = UNet2DConditionModel.from_pretrained(Path(source) / "unet", low_cpu_mem_usage=False,
                                                ignore_mismatched_sizes=True, **overrides)
    pipe.register_modules(unet=unet)
    logger.info("warm start of stage 1 from %s (UNet config changes: %s)", source, sorted(overrides))
    with atomic_folder(out) as tmp:
        pipe.save_pretrained(tmp)
    return out


def stage_done(work: Path, name: str) -> bool:
    return (work / name / "pipeline" / "model_index.json").is_file()


def launch(job: dict, work: Path, args) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]), MKL_NUM_THREADS=str(job["threads"]),
               HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    (work / job["name"]).mkdir(parents=True, exist_ok=True)
    log = open(work / job["name"] / "stage.log", "a")
    cmd = [sys.executable, str(REPO / "train" / f"{job['script']}.py"), *job["argv"]]
    logger.info("stage %s (%d thread(s)): %s", job["name"], job["threads"], " ".join(cmd[1:]))
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def run_plan(plan: list[dict], work: Path, args) -> dict:
    """Run the stages, at most ``--parallel`` at a time, each once its needs are done; returns minutes per stage."""
    timings, running = {}, {}
    pending = [job for job in plan if not stage_done(work, job["name"])]
    for job in plan:
        if stage_done(work, job["name"]):
            logger.info("stage %s already done: skipped", job["name"])
    if args.only:
        pending = [job for job in pending if job["name"] in args.only]
    while pending or running:
        for job in list(pending):
            if len(running) >= args.parallel:
                break
            if all(stage_done(work, need) for need in job["needs"]):
                if job["name"] == "kcn" and "base" in job["needs"]:  # not with --kcn_from
                    merge_for_kcn(work, args.keep_final, kcn_input_scale(args))
                if job["name"] in ("time", "refit") and "kcn" in job["needs"]:
                    copy_kcn_result(work, args.keep_final)
                if job["name"] in ("base", "base_noct") and args.init_base_from:
                    warm_start_base(work, Path(args.init_base_from))
                running[job["name"]] = (launch(job, work, args), time.time())
                pending.remove(job)
        if not running:
            raise SystemExit(f"error: stages {[j['name'] for j in pending]} wait for stages that did not finish")
        time.sleep(5)
        for name, (proc, start) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode != 0 or not stage_done(work, name):
                for other, _ in running.values():
                    other.terminate()
                raise SystemExit(f"error: stage {name} failed (exit {proc.returncode}); see {work / name / 'stage.log'}")
            timings[name] = round((time.time() - start) / 60, 1)
            logger.info("stage %s done in %.1f min", name, timings[name])
    return timings


MODEL_CARD = """---
library_name: diffusers
tags: [image-deblurring, motion-deblurring, fidediff, tiny, cpu, demo]
---
# fidediff-tiny

A **tiny CPU demo model, not the paper's**: the FideDiff method (one-step consistency-trained diffusion deblurring
with a Kernel ControlNet and t-prediction) at the size of the project's `tiny` preset (a few million parameters, a
factor-2 AutoencoderTiny (TAESD architecture) with 12 latent channels, a UNet without self-attention and one
blur kernel per 4x4 pixels from a kernel estimator that also reads the local autocorrelation of the image's
gradients, and a t-regressor that also reads the whole image's gradient autocorrelations, both not in the paper),
trained on a 2-core CPU by
`python train/make_tiny.py` on 15 sample photos (scikit-image, scikit-learn), 23 photos of OpenCV's sample data
(Debian's opencv-doc), each at short sides of 256 px and, where it ships that large, 384 and 512 px, and 16
procedural dead-leaves images, with synthetic hand-held camera-shake blur (240 fps frames averaged, n = 5-15).
Expect modest sharpening of motion blur on small photos (most at a short side near 256 px), not the paper's quality; it exists so that the demo, the CLI and the tests run offline.
For real photos use a FideDiff model trained from Stable Diffusion 2.1-base (`train/README.md`).

```python
from fidediff_pipeline import FideDiffPipeline, DEFAULT_MODEL
pipe = FideDiffPipeline.from_pretrained(DEFAULT_MODEL)
out = pipe(image)  # uses the saved defaults: upscale_factor=1 (d = 2 with this VAE), colour fix sigma 12
```

## Results on held-out photos

<!-- results: written by train/evaluate_tiny.py -->
Not evaluated yet: run `python train/evaluate_tiny.py`.
<!-- /results -->
"""


def export_checkpoint(source: Path, export: Path, unet_from: Path | None = None) -> None:
    """Save the final pipeline to the bundled checkpoint location (to a temporary folder, then renamed); with
    ``unet_from``, ``source`` with its UNet replaced by that pipeline's (``--base_from``)."""
    from diffusers import UNet2DConditionModel

    from fidediff_pipeline import FideDiffPipeline
    from fidediff_pipeline.atomic_io import atomic_folder

    with atomic_folder(export) as tmp:
        # Reload and save (not a file copy): weights and configs, model_index.json naming the installed package.
        pipe = FideDiffPipeline.from_pretrained(source)
        if unet_from is not None:
            pipe.register_modules(unet=UNet2DConditionModel.from_pretrained(Path(unet_from) / "unet"))
        pipe.save_pretrained(tmp)
        (tmp / "README.md").write_text(MODEL_CARD)
    size = sum(f.stat().st_size for f in export.rglob("*") if f.is_file())
    logger.info("exported the tiny checkpoint from %s to %s (%.1f MB)", source, export, size / 1e6)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--work_dir", type=str, default=str(REPO / "runs" / "make_tiny"))
    p.add_argument("--export_dir", type=str, default=str(REPO / "fidediff_pipeline" / "checkpoints" / "fidediff-tiny"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps_scale", type=float, default=1.0, help="multiply every stage's steps (smoke tests)")
    p.add_argument("--no_ablation", dest="ablation", action="store_false",
                   help="skip the 'w/o CT' stage-1 run used by evaluate_tiny.py")
    p.add_argument("--report_to", type=str, default="tensorboard")
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all; two stages side by side get half each")
    p.add_argument("--parallel", type=int, default=2, help="stages run at the same time (1: one after another)")
    p.add_argument("--device", type=str, default="cpu", choices=["cpu", "cuda"],
                   help="cpu (the bundled checkpoint's recipe) or cuda (Accelerate picks the GPU)")
    p.add_argument("--init_base_from", type=str, default=None,
                   help="warm-start stage 1 from this pipeline's UNet (weights that fit the tiny preset's UNet)")
    p.add_argument("--base_from", type=str, default=None,
                   help="run only stage 1, warm-started from this saved pipeline's UNet (as --init_base_from), and "
                        "export that pipeline with stage 1's final UNet in place of its own (Kernel ControlNet, VAE "
                        "and the rest kept)")
    p.add_argument("--kcn_from", type=str, default=None,
                   help="run only stage 3 from this saved pipeline with M and T frozen (train_kcn.py "
                        "--freeze_estimator, lr 2e-4): F and the ControlNet fitted to its UNet, e.g. after --base_from; "
                        "exports its final pipeline")
    p.add_argument("--base_seed", type=int, default=None,
                   help="seed of a warm-started stage 1 (default --seed + 1); a further round from a warm-started "
                        "result takes another one, so it does not replay its start's crops and trajectories")
    p.add_argument("--base_crop", type=int, default=64,
                   help="stage 1's training crops, px (64: 32 x 32 latents, the recipe's; larger crops show a long "
                        "blur more of its surroundings at the same cost per step with a smaller --base_batch)")
    p.add_argument("--base_batch", type=int, default=4,
                   help="stage 1's trajectory groups per step (each --levels_per_group 3 crops; the recipe's 4)")
    p.add_argument("--keep_final", nargs="+", default=[], choices=["base", "kcn"], metavar="STAGE",
                   help="carry these stages' final pipelines (end of the schedule) forward instead of their best "
                        "validated ones: the 18 held-out crops are a noisy judge (train/compare_pipelines.py checks "
                        "on more whole images)")
    p.add_argument("--steps", nargs="+", default=[], metavar="STAGE=N",
                   help=f"override steps of stages (before --steps_scale), e.g. base=1500; defaults: {STEPS}")
    p.add_argument("--kernel_size", type=int, default=KERNEL_SIZE,
                   help="m of the Kernel ControlNet's kernels (odd; stage 2 creates it)")
    p.add_argument("--autocorrelation_radius", type=int, default=AUTOCORRELATION_RADIUS,
                   help="reach in px of M's gradient-autocorrelation features (stage 2 creates M)")
    p.add_argument("--autocorrelation_window", type=int, default=AUTOCORRELATION_WINDOW,
                   help="side in px of the window M's gradient autocorrelations are averaged over (stage 2 creates M)")
    p.add_argument("--kcn_unet_timestep", type=str, default="predicted", choices=["true", "predicted"],
                   help="stage 3 runs the UNet and the ControlNet at T's estimate (as at inference) or at the true t "
                        "(train_kcn.py --unet_timestep)")
    # Round 7 (docs/tiny_results.md): with the paper's scale and M's kernels the ControlNet ignored its kernels (the
    # same PSNR fed the true kernel or a point); with m**2 and half the crops fed their true kernel it uses them
    # (round 7's model at the true t, 18 whole held-out images: M's kernels +1.79 dB, a point +1.49) and gains at
    # least as much (from round 6's start, 600 steps against the paper's way's 1600: +1.71 dB against +1.69).
    p.add_argument("--kcn_controlnet_kernels", type=str, default="mix", choices=["estimated", "true", "mix"],
                   help="what stage 3 feeds F and the ControlNet (train_kcn.py --controlnet_kernels): M's kernels "
                        "(the paper's: 'estimated'), the true ones, or a per-crop mix of both (not in the paper; "
                        "the default)")
    p.add_argument("--kcn_true_kernel_fraction", type=float, default=0.5,
                   help="with --kcn_controlnet_kernels mix: the share of crops fed their true kernel")
    p.add_argument("--kernel_input_scale", type=str, default="m2",
                   help="the Kernel ControlNet's kernel_input_scale (a number, or 'm2' for kernel_size**2, the "
                        "default: F then sees taps of order 1 instead of 1/m**2; 1 is the paper's); set when stage "
                        "3's start is built")
    p.add_argument("--refit_t", action="store_true",
                   help="after stage 3, refit the t-regressor alone to the final kernel estimator ('time' stage; "
                        "export its result). Off by default: it lowered t-MAE but also the PSNR gain")
    p.add_argument("--refit_estimator", dest="refit_estimator", action="store_true", default=None,
                   help="after stage 3, train M and T again on 192 px crops ('refit' stage; export its result), where "
                        "a blur's length shows far better than in stage 2's and 3's small crops (default: on, "
                        "unless --refit_t)")
    p.add_argument("--no_refit_estimator", dest="refit_estimator", action="store_false",
                   help="end the recipe with stage 3 (or --refit_t's time stage), as rounds 1-4 did")
    p.add_argument("--refit_speed_range", type=float, nargs=2, default=REFIT_SPEED_RANGE, metavar=("MIN", "MAX"),
                   help="camera speeds (px per 240 fps frame) of the refit's training blurs (default: %(default)s, "
                        "wider than the builder's 1.0-1.6 so that M's kernel lengths follow the blur further; the "
                        "checkpoints up to round 7 + t_context used 1.0 1.6)")
    p.add_argument("--refit_from", type=str, default=None,
                   help="run only the refit (and the t_context stage unless --no_t_context) from this saved "
                        "pipeline, and export the result")
    p.add_argument("--refit_global_context", action="store_true",
                   help="the refit adds M's whole-image branch (train_kernel.py --estimator_global_context; not in "
                        "the paper) and trains it with the rest of M")
    p.add_argument("--t_context", dest="t_context", action="store_true", default=None,
                   help="after the refit, train T alone again with a branch that reads the whole image's gradient "
                        "autocorrelations ('t_context' stage; export its result; not in the paper; default: on "
                        "when the refit runs)")
    p.add_argument("--no_t_context", dest="t_context", action="store_false",
                   help="end the recipe with the refit, as rounds 5-7 did")
    p.add_argument("--t_context_radius", type=int, default=T_CONTEXT_RADIUS,
                   help="reach in px of those autocorrelations (train_kernel.py --regressor_global_context_radius)")
    p.add_argument("--t_context_frames", type=int, nargs="+", default=None,
                   help="blur levels n the t_context stage trains on (default: the recipe's, 5 ... 15)")
    p.add_argument("--t_context_time_loss", type=str, default="l2", choices=["l2", "l1"],
                   help="T's loss in the t_context stage (train_kernel.py --time_loss)")
    p.add_argument("--t_context_from", type=str, default=None,
                   help="run only the t_context stage, from this saved pipeline (e.g. a previous checkpoint), and "
                        "export its result")
    p.add_argument("--opencv_examples", type=str, default=str(OPENCV_EXAMPLES),
                   help="Debian opencv-doc's examples folder: OPENCV_PHOTOS are trained on from there")
    p.add_argument("--train_short_sides", type=int, nargs="+", default=list(TRAIN_SHORT_SIDES), metavar="PX",
                   help="write each training photo at these short sides (256 always; larger ones only where the photo "
                        "ships at least that large), so that training sees finer detail per pixel as well "
                        "(default: %(default)s; checkpoints up to commit c3ac2ae's used 256 only)")
    p.add_argument("--no_opencv_photos", dest="opencv_photos", action="store_false",
                   help="train without OpenCV's sample photos (the recipe before they were added)")
    p.add_argument("--only", nargs="+", default=None, choices=sorted(STEPS),
                   help="run only these stages (their needs must be done) and skip the export")
    args = p.parse_args(argv)
    try:
        args.steps = {name: int(n) for name, n in (item.split("=") for item in args.steps)}
    except ValueError:
        p.error("--steps takes STAGE=N items, e.g. base=1500")
    for flag in ("init_base_from", "base_from", "kcn_from", "refit_from", "t_context_from"):
        folder = getattr(args, flag)
        if folder and not Path(folder, "model_index.json").is_file():
            p.error(f"--{flag} takes a saved pipeline folder (with model_index.json); got {folder!r}")
    if args.only and "time" in args.only and not args.refit_t:
        p.error("--only time needs --refit_t")
    if args.refit_t and args.refit_estimator:
        p.error("--refit_t and --refit_estimator are two ways to end the recipe: choose one")
    if args.refit_estimator is None:
        args.refit_estimator = not args.refit_t
    if args.only and "refit" in args.only and not args.refit_estimator:
        p.error("--only refit needs the refit stage (drop --no_refit_estimator)")
    if args.base_from:
        if args.refit_from or args.t_context_from or args.init_base_from:
            p.error("--base_from runs stage 1 alone: not with --refit_from, --t_context_from or --init_base_from")
        args.init_base_from = args.base_from
        args.keep_final = sorted({*args.keep_final, "base"})
    if args.kcn_from:
        if not Path(args.kcn_from, "kernel_controlnet").is_dir():
            p.error(f"--kcn_from takes a saved pipeline folder with a Kernel ControlNet; got {args.kcn_from!r}")
        if args.base_from or args.refit_from or args.t_context_from:
            p.error("--kcn_from runs stage 3 alone: not with --base_from, --refit_from or --t_context_from")
        args.keep_final = sorted({*args.keep_final, "kcn"})
    if args.refit_from:
        if args.t_context_from or args.refit_estimator is False:
            p.error("--refit_from runs the refit: not with --t_context_from or --no_refit_estimator")
        args.refit_estimator = True
    if SHORT_SIDE not in args.train_short_sides or min(args.train_short_sides) < SHORT_SIDE:
        p.error(f"--train_short_sides must include {SHORT_SIDE} and nothing smaller; got {args.train_short_sides}")
    lo, hi = args.refit_speed_range
    if not 0 < lo <= hi:
        p.error(f"--refit_speed_range takes MIN MAX with 0 < MIN <= MAX; got {lo} {hi}")
    if args.t_context_from:
        args.t_context = True
    if args.t_context and not args.refit_estimator and not args.t_context_from:
        p.error("--t_context follows the refit stage: drop --no_refit_estimator / --refit_t, or give --t_context_from")
    if args.t_context is None:
        args.t_context = args.refit_estimator
    if args.t_context_radius < 1:
        p.error(f"--t_context_radius must be >= 1 (pixels); got {args.t_context_radius}")
    if args.only and "t_context" in args.only and not args.t_context:
        p.error("--only t_context needs --t_context")
    if set(args.steps) - set(STEPS):
        p.error(f"--steps: unknown stage(s) {sorted(set(args.steps) - set(STEPS))}; stages: {sorted(STEPS)}")
    if args.opencv_photos:
        missing = [name for _, name in OPENCV_PHOTOS if not Path(args.opencv_examples, name).is_file()]
        if missing:
            p.error(f"OpenCV's sample photos are not in {args.opencv_examples} ({len(missing)} of "
                    f"{len(OPENCV_PHOTOS)} missing, e.g. {missing[0]}): install Debian's opencv-doc "
                    "(apt-get install opencv-doc), or pass --opencv_examples DIR (its examples folder), or "
                    "--no_opencv_photos")
    if (args.kernel_size < 1 or args.kernel_size % 2 == 0 or args.autocorrelation_radius < 0
            or args.autocorrelation_window < 1):
        p.error(f"--kernel_size must be odd and >= 1, --autocorrelation_radius >= 0 and --autocorrelation_window >= 1; "
                f"got {args.kernel_size}, {args.autocorrelation_radius}, {args.autocorrelation_window}")
    if args.steps_scale <= 0 or args.threads < 1 or args.parallel < 1:
        p.error("--steps_scale must be > 0, --threads and --parallel >= 1")
    if args.base_crop < 32 or args.base_crop % 16 or args.base_batch < 1:
        # the tiny VAE halves a crop and its UNet halves the latents twice (8 px would do; 16 keeps the latents even)
        p.error(f"--base_crop must be a multiple of 16 px, at least 32, and --base_batch >= 1; "
                f"got {args.base_crop} and {args.base_batch}")
    try:
        scale = kcn_input_scale(args)
    except ValueError:  # neither a number nor 'm2'
        scale = None
    if scale is None or not 0 < scale < float("inf"):
        p.error(f"--kernel_input_scale takes a positive number or 'm2' (kernel_size**2); got {args.kernel_input_scale!r}")
    if not 0.0 <= args.kcn_true_kernel_fraction <= 1.0:
        p.error(f"--kcn_true_kernel_fraction must be in [0, 1]; got {args.kcn_true_kernel_fraction}")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    train_dir = work / "photos" / "train"
    write_photos(TRAIN_PHOTOS + (OPENCV_PHOTOS if args.opencv_photos else ()), train_dir, Path(args.opencv_examples),
                 tuple(args.train_short_sides))
    write_dead_leaves(DEAD_LEAVES, train_dir, args.seed)
    heldout = write_photos(HELDOUT_PHOTOS, work / "photos" / "heldout")
    manifest = build_heldout_set(heldout, work / "data" / "heldout", args.seed)
    logger.info("training content and held-out set ready (%s) in %.1f s", manifest, time.time() - t0)

    plan = stage_plan(args, work)
    timings = run_plan(plan, work, args)
    if args.only:
        logger.info("stages %s done (--only: no export)", args.only)
        return {"stage_minutes": timings}
    if args.base_from:  # the starting pipeline with its UNet replaced by stage 1's (its final one: --keep_final base)
        export_checkpoint(Path(args.base_from), Path(args.export_dir),
                          unet_from=stage_result(work, "base", args.keep_final))
    else:
        final_stage = ("kcn" if args.kcn_from else "t_context" if args.t_context else "refit" if args.refit_estimator
                       else "time" if args.refit_t else "kcn")
        export_checkpoint(stage_result(work, final_stage, args.keep_final), Path(args.export_dir))
    summary_path = work / "make_tiny_summary.json"
    previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    # Minutes per stage: each stage's own training time (train_summary.json), so stages that finished in an
    # earlier invocation, or were run by hand into the work dir, count too; else this invocation's wall time.
    planned = {job["name"] for job in plan}
    timings = {name: minutes for name, minutes in {**previous.get("stage_minutes", {}), **timings}.items()
               if name in planned}
    for name in planned:
        stage_summary = work / name / "train_summary.json"
        if stage_summary.is_file():
            timings[name] = round(json.loads(stage_summary.read_text())["seconds"] / 60, 1)
    summary = {"seed": args.seed, "device": args.device, "threads": args.threads, "parallel": args.parallel,
               # what each stage was given (e.g. the warm-started w/o-CT run takes stage 1's steps)
               "steps": {job["name"]: int(job["argv"][job["argv"].index("--max_train_steps") + 1]) for job in plan},
               "init_base_from": args.init_base_from, "base_seed": args.base_seed, "keep_final": args.keep_final, "refit_t": args.refit_t,
               "base_crop": args.base_crop, "base_batch": args.base_batch,
               "refit_estimator": args.refit_estimator, "t_context": args.t_context,
               "t_context_radius": args.t_context_radius if args.t_context else None,
               "t_context_time_loss": args.t_context_time_loss if args.t_context else None,
               "t_context_from": args.t_context_from, "refit_from": args.refit_from, "base_from": args.base_from, "kcn_from": args.kcn_from,
               "train_short_sides": args.train_short_sides,
               "refit_speed_range": list(args.refit_speed_range) if args.refit_estimator else None,
               "kcn_unet_timestep": args.kcn_unet_timestep, "kernel_size": args.kernel_size,
               "kcn_controlnet_kernels": args.kcn_controlnet_kernels,
               "kcn_true_kernel_fraction": args.kcn_true_kernel_fraction,
               "kernel_input_scale": kcn_input_scale(args),
               "autocorrelation_radius": args.autocorrelation_radius,
               "autocorrelation_window": args.autocorrelation_window,
               "opencv_photos": len(OPENCV_PHOTOS) if args.opencv_photos else 0,
               "stage_minutes": timings, "wall_minutes_this_invocation": round((time.time() - t0) / 60, 1)}
    from fidediff_pipeline.atomic_io import write_text_atomic

    write_text_atomic(summary_path, json.dumps(summary, indent=2))
    logger.info("make_tiny finished in %.1f min: %s", (time.time() - t0) / 60, json.dumps(timings))
    return summary


if __name__ == "__main__":
    main()
