"""Shared machinery of FideDiff's training scripts (train_vae.py, train_base.py, train_kernel.py, train_kcn.py).

Each stage defines a :class:`Stage`: an ``nn.Module`` whose ``forward(batch)`` returns a dict of losses (with the
total under ``"loss"``), optionally a discriminator, and how to export a pipeline. :func:`run_training` does the
rest, the same way for every stage, following diffusers' ``examples/controlnet/train_controlnet.py``: Accelerate
(CPU, one GPU or multi-GPU DDP), ``accelerator.save_state`` checkpoints and ``--resume_from_checkpoint latest``,
trackers, periodic validation (images + PSNR on a held-out manifest), a NaN/inf guard, and an exported
``FideDiffPipeline`` folder at the end.

Determinism and exact resume: the data a process sees at micro-batch ``b`` is a function of ``(seed, b, rank)``
only (see :class:`StepBatchSampler`), so resuming at step ``s`` simply starts at micro-batch ``s * accumulation``;
model, optimizer, LR scheduler and RNG states come back from ``accelerator.load_state``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from fidediff_pipeline.atomic_io import atomic_folder, write_text_atomic

logger = logging.getLogger("fidediff.train")

PRESET_CHOICES = ("tiny", "sd21-base")


# ================================================================================================ arguments
def build_parser(description: str) -> argparse.ArgumentParser:
    """Flags shared by every stage (data, optimisation, checkpoints, logging, validation)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--init_from", type=str, default=None,
                   help="a FideDiff pipeline folder (save_pretrained) to start from, e.g. the previous stage's output")
    g.add_argument("--preset", type=str, default=None, choices=PRESET_CHOICES,
                   help="sizes of newly created components (and, for stages 0/1 without --init_from, a random model)")
    g.add_argument("--upscale_factor", type=int, default=2,
                   help="2: upsample 2x before the VAE (the paper's d=4 with SD's VAE); 1: plain path (d=8). Saved "
                        "as the exported pipeline's default_upscale_factor")
    g.add_argument("--color_fix_sigma", type=float, default=None,
                   help="train and export with the low-frequency colour fix (Gaussian sigma in px; see "
                        "restoration.low_frequency_transfer); default: inherit from --init_from, else off")
    g = p.add_argument_group("data")
    g.add_argument("--train_manifest", type=str, default=None,
                   help="manifest.csv of trajectory groups (fidediff data gopro / synth)")
    g.add_argument("--train_images", type=str, default=None,
                   help="instead of a manifest: a folder of sharp photos, blurred on the fly along fresh random "
                        "camera-shake trajectories (fidediff_pipeline.data.InMemoryTrajectoryGroupDataset)")
    g.add_argument("--frames", type=int, nargs="+", default=[5, 7, 9, 11, 13, 15],
                   help="blur levels n (odd, 240 fps frames) drawn on the fly with --train_images")
    g.add_argument("--synth_kernel_size", type=int, default=None,
                   help="kernel size m of on-the-fly trajectories (default: the Kernel ControlNet's m, else 31)")
    g.add_argument("--synth_speed_range", type=float, nargs=2, default=None,
                   help="camera speed range (px per 240 fps frame) of on-the-fly trajectories (default: the builder's)")
    g.add_argument("--synth_shake", type=str, default="handheld", choices=["handheld", "strong"],
                   help="camera model of on-the-fly trajectories (fidediff_pipeline.data.trajectories.SHAKE_PRESETS)")
    g.add_argument("--synth_noise_std", type=float, default=0.0)
    g.add_argument("--validation_manifest", type=str, default=None, help="held-out manifest for validation PSNR")
    g.add_argument("--resolution", type=int, default=256, help="training crop size (pixels)")
    g.add_argument("--train_batch_size", type=int, default=4,
                   help="trajectory groups per process and micro-batch (each gives --levels_per_group samples)")
    g.add_argument("--levels_per_group", type=int, default=3, help="blur levels of one trajectory in a batch (k)")
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    g = p.add_argument_group("optimisation")
    g.add_argument("--max_train_steps", type=int, default=1000)
    g.add_argument("--learning_rate", type=float, default=5e-5)
    g.add_argument("--lr_scheduler", type=str, default="constant",
                   help='diffusers.optimization.get_scheduler name: "linear", "cosine", "constant", "constant_with_warmup", ...')
    g.add_argument("--lr_warmup_steps", type=int, default=0)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=1e-2)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for memory: UNet, ControlNet, the VAE decoder the losses backpropagate through and the stage-1 discriminator")
    g.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                   help="overrides the accelerate config; frozen components are cast to this dtype")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--output_dir", type=str, required=True)
    g.add_argument("--export_dir", type=str, default=None, help="pipeline folder written at the end (default <output_dir>/pipeline)")
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=None)
    g.add_argument("--resume_from_checkpoint", type=str, default=None, help='a checkpoint folder or "latest"')
    g.add_argument("--max_steps_this_run", type=int, default=None,
                   help="checkpoint and stop after this many steps in this invocation (time-limited jobs); resume "
                        "later with --resume_from_checkpoint latest. The export happens when --max_train_steps is reached")
    g.add_argument("--time_steps_only", action="store_true",
                   help="time the training steps only (benchmarks/benchmark_training.py): no validation, checkpoint, "
                        "resume or export; train_summary.json gets every step's seconds and the peak memory")
    g.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all" or "none"')
    g.add_argument("--logging_dir", type=str, default="logs")
    g.add_argument("--tracker_project_name", type=str, default=None)
    g.add_argument("--log_every", type=int, default=10, help="print losses every N steps")
    g.add_argument("--validation_steps", type=int, default=500)
    g.add_argument("--num_validation_images", type=int, default=4, help="validation crops shown in the image strips")
    g.add_argument("--num_validation_pairs", type=int, default=8,
                   help="held-out pairs scored at each validation (0: every pair of --validation_manifest)")
    g.add_argument("--validation_crop", type=int, default=128, help="centre-ish crop of validation images (0: whole)")
    return p


def add_kernel_supervision_args(parser) -> None:
    """``--kernel_weight`` / ``--kernel_moment_weight``: M supervised with the synthetic data's true kernels (stages 2
    and 3; not in the paper)."""
    parser.add_argument("--kernel_weight", type=float, default=0.0,
                        help="NOT IN THE PAPER (0 = off): L1 between M's per-pixel kernels and the true kernels of "
                             "synthetic data (fidediff_pipeline.losses.kernel_supervision_loss); needs kernels in "
                             "the data (--train_images, or a manifest from `fidediff data synth`)")
    parser.add_argument("--kernel_moment_weight", type=float, default=0.0,
                        help="NOT IN THE PAPER (0 = off): L1 between the centroid and second moments (offset, length, "
                             "direction) of M's kernels and the true kernels (fidediff_pipeline.losses.kernel_moment_loss)")


def kernel_supervision_terms(kernels, batch: dict, args) -> tuple[torch.Tensor | float, dict]:
    """The weighted true-kernel losses of `add_kernel_supervision_args` (0.0 and no logs when both are off)."""
    from fidediff_pipeline.losses import kernel_moment_loss, kernel_supervision_loss

    loss, logs = 0.0, {}
    if args.kernel_weight > 0:
        k_loss = kernel_supervision_loss(kernels, batch["kernels"].to(kernels.device))
        loss, logs["kernel_l1"] = loss + args.kernel_weight * k_loss, k_loss.detach()
    if args.kernel_moment_weight > 0:
        moment_loss = kernel_moment_loss(kernels, batch["kernels"].to(kernels.device))
        loss, logs["kernel_moments"] = loss + args.kernel_moment_weight * moment_loss, moment_loss.detach()
    return loss, logs


def add_perceptual_args(parser) -> None:
    """EA-LPIPS flags of stages 1 and 3 (see fidediff_pipeline.losses for the definition)."""
    g = parser.add_argument_group("EA-LPIPS")
    g.add_argument("--lpips_weight", type=float, default=1.0, help="lambda1 (LPIPS part of EA-LPIPS); 0 turns LPIPS off")
    g.add_argument("--lpips_net", type=str, default="vgg", choices=["vgg", "alex"])
    g.add_argument("--lpips_random_backbone", action="store_true",
                   help="TESTS ONLY: LPIPS with a random backbone (no download); not a perceptual loss")
    g.add_argument("--edge_weight", type=float, default=1.0,
                   help="weight of EA-LPIPS's Sobel-edge L1 term (independent of --lpips_weight, so it also works without LPIPS)")
    g.add_argument("--fft_weight", type=float, default=0.0,
                   help="NOT IN THE PAPER (0 = off): L1 between the spectra of output and target "
                        "(fidediff_pipeline.losses.frequency_l1_loss), as deblurring networks use")
    g.add_argument("--latent_weight", type=float, default=0.0,
                   help="NOT IN THE PAPER (0 = off): L1 between z0 and the sharp image's latents. The tiny recipe uses "
                        "it: a direct target that does not pass through a from-scratch decoder")


def build_ea_loss(args, device):
    """The EA-LPIPS module, or None when both weights are 0. Checks the LPIPS backbone BEFORE training."""
    from fidediff_pipeline.losses import EALPIPSLoss

    if min(args.lpips_weight, args.edge_weight, args.latent_weight, args.fft_weight) < 0:
        raise SystemExit("error: --lpips_weight, --edge_weight, --latent_weight and --fft_weight must be >= 0 "
                         "(0 turns a term off)")
    if args.lpips_weight == 0 and args.edge_weight == 0:
        return None
    net = args.lpips_net if args.lpips_weight > 0 else None
    try:
        loss = EALPIPSLoss(net=net, edge_weight=args.edge_weight, random_backbone=args.lpips_random_backbone)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    return loss.to(device)


def latent_l1_term(vae, z0: torch.Tensor, target: torch.Tensor, args,
                   z_sharp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """``latent_weight * L1(z0, encode(sharp))`` (``target`` in [-1, 1]) and its log entry; zero when off.

    ``z_sharp``: the sharp latents when the caller already has them (stage 1 encodes them once for the GAN too).
    """
    from fidediff_pipeline.restoration import encode_latents

    if not args.latent_weight:
        return z0.new_zeros((), dtype=torch.float32), {}
    if z_sharp is None:
        with torch.no_grad():
            z_sharp = encode_latents(vae, target.to(next(vae.parameters()).dtype), args.upscale_factor)
    term = F.l1_loss(z0.float(), z_sharp.float())
    return args.latent_weight * term, {"latent": term.detach()}


def frequency_term(restored, target, args) -> tuple[torch.Tensor, dict]:
    """``fft_weight * frequency_l1_loss`` and its log entry; zero when off."""
    from fidediff_pipeline.losses import frequency_l1_loss

    if not args.fft_weight:
        return restored.new_zeros((), dtype=torch.float32), {}
    term = frequency_l1_loss(restored, target)
    return args.fft_weight * term, {"fft": term.detach()}


def ea_lpips_terms(ea_loss, restored, target, args) -> tuple[torch.Tensor, dict]:
    """``lambda1 * LPIPS + edge_weight * L1(Sobel)`` and the parts to log."""
    if ea_loss is None:
        return restored.new_zeros((), dtype=torch.float32), {}
    lp, edge = ea_loss.lpips_term(restored, target), ea_loss.edge_term(restored, target)
    return args.lpips_weight * lp + args.edge_weight * edge, {"lpips": lp.detach(), "edge": edge.detach()}


def validate_common_args(args, vae_factor: int | None = None) -> None:
    """Clear errors for bad flag combinations, before anything heavy happens."""
    if (args.train_manifest is None) == (args.train_images is None):
        raise SystemExit("error: pass exactly one of --train_manifest (files) or --train_images (on-the-fly synthesis)")
    for name in ("train_manifest", "validation_manifest", "train_images", "init_from"):
        value = getattr(args, name, None)
        if value and not os.path.exists(value):
            raise SystemExit(f"error: --{name} {value} does not exist")
    positive = ("max_train_steps", "train_batch_size", "levels_per_group", "gradient_accumulation_steps", "resolution",
                "checkpointing_steps", "validation_steps", "upscale_factor")
    for name in positive:
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1; got {getattr(args, name)}")
    if any(n < 1 or n % 2 == 0 for n in args.frames):
        raise SystemExit(f"error: --frames must be odd numbers >= 1 (frames averaged); got {args.frames}")
    check_optimisation_args(args)
    if args.train_images:
        from fidediff_pipeline.data.trajectories import list_images

        try:
            list_images(args.train_images)
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"error: --train_images: {err}") from None
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise SystemExit(f"error: --output_dir {args.output_dir} is a file; it must be a folder (created if missing)")
    if args.train_images and args.levels_per_group > len(set(args.frames)):
        raise SystemExit(f"error: --levels_per_group {args.levels_per_group} > the {len(set(args.frames))} levels in --frames")
    if vae_factor is not None:
        if vae_factor % args.upscale_factor:
            raise SystemExit(f"error: --upscale_factor {args.upscale_factor} must divide the VAE factor {vae_factor}")
        multiple = vae_factor // args.upscale_factor
        if args.resolution % multiple:
            raise SystemExit(f"error: --resolution {args.resolution} must be a multiple of {multiple} "
                             f"(VAE factor {vae_factor} / upscale {args.upscale_factor}) so that latents are whole")
        if args.validation_crop and args.validation_crop % multiple:
            raise SystemExit(f"error: --validation_crop must be a multiple of {multiple}")


def check_optimisation_args(args) -> None:
    """Range checks of the optimiser, data, checkpoint and logging flags (``not 0 < x`` style comparisons also
    catch NaN, which compares false to everything)."""
    if not args.learning_rate > 0 or args.learning_rate == float("inf"):
        raise SystemExit(f"error: --learning_rate must be a finite number > 0; got {args.learning_rate}")
    if not args.max_grad_norm >= 0:
        raise SystemExit(f"error: --max_grad_norm must be >= 0 (0 turns clipping off); got {args.max_grad_norm}")
    if args.lr_warmup_steps < 0:
        raise SystemExit(f"error: --lr_warmup_steps must be >= 0; got {args.lr_warmup_steps}")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise SystemExit(f"error: --checkpoints_total_limit must be >= 1 (checkpoints kept); "
                         f"got {args.checkpoints_total_limit}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be in [0, 1); got {getattr(args, name)}")
    if not 0 < args.adam_epsilon < float("inf"):
        raise SystemExit(f"error: --adam_epsilon must be a finite number > 0; got {args.adam_epsilon}")
    for name in ("adam_weight_decay", "synth_noise_std"):
        if not 0 <= getattr(args, name) < float("inf"):
            raise SystemExit(f"error: --{name} must be a finite number >= 0; got {getattr(args, name)}")
    if args.log_every < 1:
        raise SystemExit(f"error: --log_every must be >= 1; got {args.log_every}")
    for name in ("dataloader_num_workers", "num_validation_images", "validation_crop"):
        if getattr(args, name) < 0:
            raise SystemExit(f"error: --{name} must be >= 0; got {getattr(args, name)}")
    if args.max_steps_this_run is not None and args.max_steps_this_run < 0:
        raise SystemExit(f"error: --max_steps_this_run must be >= 1 (0 or unset: no limit); got {args.max_steps_this_run}")
    if args.synth_speed_range is not None:
        low, high = args.synth_speed_range
        if not 0 <= low <= high < float("inf"):
            raise SystemExit(f"error: --synth_speed_range needs 0 <= LOW <= HIGH (px per frame); got {low} {high}")
    if args.synth_kernel_size is not None and (args.synth_kernel_size < 3 or args.synth_kernel_size % 2 == 0):
        raise SystemExit(f"error: --synth_kernel_size must be odd and >= 3; got {args.synth_kernel_size}")


# ================================================================================================ models
def load_pipeline(args, with_kernel_controlnet: bool):
    """The starting pipeline: ``--init_from`` folder, or a random ``--preset`` model (from_stable_diffusion is
    handled by train_base.py). A Kernel ControlNet is added (from the UNet, ``--preset`` sizes) when asked and
    missing, and dropped when not asked."""
    from fidediff_pipeline import FideDiffPipeline
    from fidediff_pipeline.presets import build_kernel_controlnet, build_pipeline

    if args.init_from:
        pipe = FideDiffPipeline.from_pretrained(args.init_from)
    elif args.preset:
        pipe = build_pipeline(args.preset, with_kernel_controlnet=False, seed=args.seed)
    else:
        raise SystemExit("error: pass --init_from <pipeline folder> or --preset tiny|sd21-base")
    if with_kernel_controlnet and pipe.kernel_controlnet is None:
        torch.manual_seed(args.seed)
        kcn = build_kernel_controlnet(args.preset or "sd21-base", pipe.unet, getattr(args, "kernel_size", None),
                                      getattr(args, "autocorrelation_radius", None),
                                      getattr(args, "autocorrelation_window", None))
        pipe.register_modules(kernel_controlnet=kcn)
    elif not with_kernel_controlnet and pipe.kernel_controlnet is not None:
        pipe.register_modules(kernel_controlnet=None)
    return configure_pipeline(pipe, args)


def configure_pipeline(pipe, args):
    """Record the inference settings training used (upscale factor, colour fix) in the pipeline's config, so that
    the exported model runs the same way by default. ``--color_fix_sigma`` unset inherits the loaded model's."""
    if getattr(args, "color_fix_sigma", None) is None:
        args.color_fix_sigma = getattr(pipe.config, "color_fix_sigma", None)
    pipe.register_to_config(default_upscale_factor=int(args.upscale_factor), color_fix_sigma=args.color_fix_sigma)
    return pipe


def freeze(*modules) -> None:
    for m in modules:
        if m is not None:
            m.requires_grad_(False)
            m.eval()


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ================================================================================================ data
class _EpochIndexed(Dataset):
    """Wraps a dataset with ``set_epoch``: items are addressed by ``(epoch, index)`` so workers need no state."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        epoch, index = key
        self.base.set_epoch(epoch)
        return self.base[index]


class StepBatchSampler(Sampler):
    """Infinite micro-batches whose content is a function of ``(seed, micro-batch index, rank)``.

    Micro-batch ``b`` of process ``rank`` (of ``world``) takes positions ``[(b * world + rank) * bs, ... + bs)``
    of an endless stream made of per-epoch permutations (epoch ``e`` shuffled with seed ``(seed, e)``), so all
    processes together see each item once per epoch, and a resumed run continues the stream exactly.
    """

    def __init__(self, dataset_len: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.n, self.bs, self.seed, self.rank, self.world, self.start = dataset_len, batch_size, seed, rank, world, start
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, 7919, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def batch(self, b: int) -> list[tuple[int, int]]:
        first = (b * self.world + self.rank) * self.bs
        out = []
        for pos in range(first, first + self.bs):
            epoch, i = divmod(pos, self.n)
            out.append((epoch, int(self._perm(epoch)[i])))
        return out

    def __iter__(self):
        b = self.start
        while True:
            yield self.batch(b)
            b += 1

    def __len__(self):  # infinite; DataLoader only needs this for len(loader)
        return 2**62


def load_train_images(folder, min_side: int | None = None) -> list[np.ndarray]:
    """The photos of ``--train_images`` with the project's one reader (16-bit rounded, never clipped; pixel
    limit); an unreadable file is skipped with a warning and counted, not fatal. Photos whose short side is under
    ``min_side`` (the crop, ``--resolution``) stop the run with their names."""
    from fidediff_pipeline.data.image_io import load_rgb_uint8
    from fidediff_pipeline.data.trajectories import list_images

    paths = list_images(folder)
    images, read, bad = [], [], []
    for path in paths:
        try:
            images.append(load_rgb_uint8(path))
            read.append(path)
        except ValueError as err:
            bad.append(str(err))
            logger.warning("skipped a --train_images file: %s", err)
    if not images:
        raise SystemExit(f"error: none of the {len(paths)} --train_images files could be read (first: {bad[0]})")
    if bad:
        logger.warning("%d of %d --train_images files skipped (unreadable); training on %d", len(bad), len(paths),
                       len(images))
    small = [f"{path} ({image.shape[1]}x{image.shape[0]})" for path, image in zip(read, images)
             if min_side is not None and min(image.shape[:2]) < min_side]
    if small:
        raise SystemExit(f"error: {len(small)} of the {len(images)} --train_images are smaller than --resolution "
                         f"{min_side} on their short side: {', '.join(small[:5])}{' ...' if len(small) > 5 else ''}; "
                         "use a smaller --resolution, or move them out of the folder")
    return images


def build_train_dataset(args, groups_per_batch_levels: int, kernel_size: int | None, with_kernels: bool):
    """The trajectory-group dataset of ``--train_manifest`` or ``--train_images`` (on-the-fly synthesis)."""
    from fidediff_pipeline.data import InMemoryTrajectoryGroupDataset, TrajectoryConfig, TrajectoryGroupDataset

    if args.train_manifest:
        return TrajectoryGroupDataset(
            args.train_manifest, crop_size=args.resolution, levels_per_group=groups_per_batch_levels,
            seed=args.seed, flip=True, with_kernels=with_kernels,
        )  # fmt: skip
    images = load_train_images(args.train_images, min_side=args.resolution)
    speed = {"speed_range": tuple(args.synth_speed_range)} if args.synth_speed_range else {}
    config = TrajectoryConfig.preset(args.synth_shake, **speed)
    m = args.synth_kernel_size or kernel_size or 31
    # Many more "groups" than photos: every item is a fresh trajectory and crop of one of the photos.
    return InMemoryTrajectoryGroupDataset(
        images, frames=tuple(sorted(set(args.frames))), crop_size=args.resolution,
        levels_per_group=groups_per_batch_levels, num_groups=max(len(images) * 1000, 1000), seed=args.seed,
        kernel_size=m, noise_std=args.synth_noise_std, config=config,
    )  # fmt: skip


def build_train_loader(args, accelerator, start_micro_batch: int, consistency: bool = True,
                       kernel_size: int | None = None, with_kernels: bool = False):
    """An endless DataLoader of collated trajectory batches for this process.

    With ``consistency`` each micro-batch holds ``--train_batch_size`` groups x ``--levels_per_group`` levels of
    the same trajectory; without it (the paper's "w/o CT" ablation) the same number of samples, each from a
    different random trajectory (one level each), all relabelled ``t = 200``.
    """
    from fidediff_pipeline.data import collate_trajectory_groups

    k = args.levels_per_group if consistency else 1
    groups = args.train_batch_size if consistency else args.train_batch_size * args.levels_per_group
    dataset = build_train_dataset(args, k, kernel_size, with_kernels)
    sampler = StepBatchSampler(len(dataset), groups, args.seed, accelerator.process_index, accelerator.num_processes,
                               start=start_micro_batch)

    def collate(items):
        batch = collate_trajectory_groups(items)
        if not consistency:
            batch["timesteps"] = torch.full_like(batch["timesteps"], 200)
        return batch

    return DataLoader(_EpochIndexed(dataset), batch_sampler=sampler, collate_fn=collate,
                      num_workers=args.dataloader_num_workers, persistent_workers=args.dataloader_num_workers > 0)


def to_model_range(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (the pipeline's convention)."""
    return images01 * 2.0 - 1.0


# ================================================================================================ validation
VALIDATION_CROP_SEED = 1


def validation_pairs(args, limit: int | None = None):
    """Deterministic (sharp, blurry, t, n) crops of the held-out manifest (no flips)."""
    from fidediff_pipeline.data import PairDataset

    if not args.validation_manifest:
        return []
    crop = args.validation_crop or None
    # The crops do not depend on --seed: runs with different seeds (e.g. a warm-started continuation) are scored on
    # the same crops, so their learning curves compare. VALIDATION_CROP_SEED is what seed 0 used to give.
    ds = PairDataset(args.validation_manifest, crop_size=crop, seed=VALIDATION_CROP_SEED, flip=False)
    count = len(ds) if limit is None else min(limit, len(ds))
    # Spread over the manifest (it is sorted by group, then n) so several levels and photos are covered.
    picks = np.linspace(0, len(ds) - 1, count).round().astype(int) if count else []
    return [ds[int(i)] for i in picks]


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images (data_range 255), via scikit-image."""
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a, b, data_range=255))


def to_uint8(chw01: torch.Tensor) -> np.ndarray:
    return (chw01.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)


@torch.no_grad()
def run_validation(pipe, pairs, args, step: int, accelerator, timestep_mode: str = "given") -> dict:
    """Deblur the validation crops with the pipeline (the inference code path), log PSNR and image strips."""
    if not pairs:
        return {}
    in_psnr, out_psnr, strips, levels = [], [], [], []
    for item in pairs:
        t = int(item["timestep"]) if timestep_mode == "given" else "auto"
        with accelerator.autocast():  # frozen parts may be in the mixed-precision dtype
            out = pipe(item["blurry"], timestep=t, upscale_factor=args.upscale_factor, output_type="pt", tiling=False)
        restored = out.images[0] if out.images.ndim == 4 else out.images
        sharp, blurry, restored = to_uint8(item["sharp"]), to_uint8(item["blurry"]), to_uint8(restored)
        in_psnr.append(psnr_uint8(blurry, sharp))
        out_psnr.append(psnr_uint8(restored, sharp))
        levels.append(int(item["timestep"]))
        strips.append(np.concatenate([blurry, restored, sharp], axis=1))
    logs = {"val/psnr_input": float(np.mean(in_psnr)), "val/psnr_output": float(np.mean(out_psnr))}
    logs["val/psnr_gain"] = logs["val/psnr_output"] - logs["val/psnr_input"]
    gains = np.array(out_psnr) - np.array(in_psnr)
    for t in sorted(set(levels)):  # per blur level: a mean can hide a level that gets worse
        logs[f"val/psnr_gain_t{t}"] = float(gains[np.array(levels) == t].mean())
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.concatenate(strips[: args.num_validation_images], axis=0)
    from PIL import Image

    Image.fromarray(grid).save(folder / f"step_{step:06d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation (blurry | restored | sharp)", grid[None], step, dataformats="NHWC")
    return logs


def read_validation_history(output_dir) -> list[dict]:
    path = Path(output_dir) / "validation_history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def record_validation(args, stage, step: int, seconds: float, val: dict) -> None:
    """Append a validation to ``<output_dir>/validation_history.json`` (the learning curve: step, training seconds,
    held-out gains) and, when ``val/psnr_gain`` is the best so far, export the pipeline to
    ``<output_dir>/best_pipeline`` (validation-based checkpoint selection; written to a temporary folder first)."""
    history = [h for h in read_validation_history(args.output_dir) if h["step"] < step]
    best = max((h["val"].get("val/psnr_gain", -np.inf) for h in history), default=-np.inf)
    history.append({"step": step, "seconds": round(seconds, 1), "val": val})
    write_text_atomic(Path(args.output_dir) / "validation_history.json", json.dumps(history, indent=1))
    gain = val.get("val/psnr_gain")
    if gain is None or gain <= best:
        return
    target = Path(args.output_dir) / "best_pipeline"
    with atomic_folder(target) as tmp_dir:
        stage.export(str(tmp_dir))
        (tmp_dir / "best.json").write_text(json.dumps({"step": step, **val}, indent=1))
    logger.info("[%s] best validation gain so far (%.3f dB at step %d): exported to %s", stage.name, gain, step, target)


# ================================================================================================ checkpoints
# A checkpoint is complete or absent: accelerate writes it into ``checkpoint-<step>.tmp`` and only the finished
# folder is renamed to ``checkpoint-<step>``; old ones are pruned after that. Anything else in the output folder
# (a ``.tmp`` left by a kill, ``checkpoint-7.old``, ``pipeline``) is not a checkpoint and is ignored.
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
TMP_CHECKPOINT_SUFFIX = ".tmp"


def find_resume_checkpoint(args) -> Path | None:
    """The checkpoint folder to resume from (``latest`` = the newest complete one, logged), or None to start fresh."""
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint != "latest":
        path = Path(args.resume_from_checkpoint)
        if not path.is_dir():
            raise SystemExit(f"error: --resume_from_checkpoint {path} is not a folder")
        if not CHECKPOINT_PATTERN.fullmatch(path.name):
            raise SystemExit(f"error: --resume_from_checkpoint {path} is not named checkpoint-<step>")
        if not checkpoint_is_complete(path):
            raise SystemExit(f"error: --resume_from_checkpoint {path} is incomplete (no model or optimizer file)")
        return path
    found = list_checkpoints(args.output_dir)
    if found:
        logger.info("--resume_from_checkpoint latest: %s (the newest complete checkpoint of %d)", found[-1], len(found))
    return found[-1] if found else None


def checkpoint_step(path: Path) -> int:
    match = CHECKPOINT_PATTERN.fullmatch(Path(path).name)
    if not match:
        raise SystemExit(f"error: {path} is not named checkpoint-<step>")
    return int(match.group(1))


def checkpoint_is_complete(path: Path) -> bool:
    """Model and optimizer files present. Checkpoints of this version are complete by construction (renamed when
    finished); this also keeps a partial folder left by an older, non-atomic save from being resumed."""
    names = [p.name for p in Path(path).iterdir()] if Path(path).is_dir() else []
    has_model = any(n.startswith(("model", "pytorch_model")) and n.endswith((".safetensors", ".bin")) for n in names)
    has_optimizer = any(n.startswith("optimizer") and n.endswith(".bin") for n in names)
    return has_model and has_optimizer


def list_checkpoints(output_dir) -> list[Path]:
    """Complete ``checkpoint-<int>`` folders of ``output_dir``, oldest first; other names are ignored."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if not (path.is_dir() and CHECKPOINT_PATTERN.fullmatch(path.name)):
            continue
        if checkpoint_is_complete(path):
            found.append(path)
        else:
            logger.warning("ignoring %s: incomplete (no model or optimizer file; an interrupted save)", path)
    return sorted(found, key=checkpoint_step)


def prune_checkpoints(output_dir: str, limit: int | None) -> None:
    """Keep the newest ``limit`` complete checkpoints; called only after the newest one is complete."""
    if not limit:
        return
    found = list_checkpoints(output_dir)
    for old in found[: max(len(found) - limit, 0)]:
        shutil.rmtree(old)


def save_checkpoint(accelerator, output_dir: str, step: int) -> Path:
    """``accelerator.save_state`` into ``checkpoint-<step>.tmp``, then rename it to ``checkpoint-<step>``.

    Every process writes into the same temporary folder (its own RNG file); the main process renames. A kill at
    any point leaves the previous checkpoints untouched and at most a ``.tmp`` folder, which is ignored on resume
    and removed by the next save.
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = final.with_name(final.name + TMP_CHECKPOINT_SUFFIX)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed save of the same step
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_checkpoint(tmp, final)
    accelerator.wait_for_everyone()
    return final


def publish_checkpoint(tmp: Path, final: Path) -> None:
    """Rename a finished temporary checkpoint into place (a same-step checkpoint already there is replaced)."""
    if final.exists():  # e.g. a run resumed from an earlier checkpoint saves this step again
        aside = final.with_name(final.name + f"{TMP_CHECKPOINT_SUFFIX}-replaced-{os.getpid()}")
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)


def warn_if_rng_state_unusable(checkpoint: Path, process_index: int) -> None:
    """Accelerate skips a missing or unreadable RNG file with an INFO line nobody sees; say it loudly.

    ``torch.save`` writes a zip archive, so a readable one is checked without unpickling it.
    """
    import zipfile

    path = Path(checkpoint) / f"random_states_{process_index}.pkl"
    problem = None
    if not path.is_file():
        problem = "is missing"
    elif path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        problem = "is empty or unreadable"
    if problem:
        logger.warning("%s %s: random states were not restored, so this resume is no longer exact "
                       "(results will differ from an uninterrupted run)", path, problem)


class NonFiniteLossError(RuntimeError):
    pass


def check_finite(logs: dict, step: int) -> None:
    """Stop with a clear message at the first NaN/inf loss (before it reaches the weights)."""
    bad = {k: float(v) for k, v in logs.items() if torch.is_tensor(v) and v.ndim == 0 and not torch.isfinite(v)}
    if bad:
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: {bad}. Training stopped before the update; lower --learning_rate, "
            f"use --mixed_precision no, or resume from an earlier checkpoint (--resume_from_checkpoint)."
        )


# ================================================================================================ the loop
class Stage:
    """What a training script provides to :func:`run_training`.

    Attributes:
        name: e.g. ``"base"``.
        model: ``nn.Module`` whose ``forward(batch)`` returns a dict with ``"loss"`` (and other scalars to log; keys
            starting with ``_`` are tensors for the discriminator step and not logged).
        discriminator: optional ``nn.Module``; then ``discriminator_loss(d, outputs)`` must be defined.
        frozen: modules moved to the device (and cast to the mixed-precision dtype) but not trained.
    """

    name = "stage"
    model: nn.Module
    discriminator: nn.Module | None = None
    frozen: tuple = ()
    consistency = True
    with_kernels = False
    kernel_size: int | None = None
    validation_timestep = "given"

    def discriminator_loss(self, discriminator, outputs: dict) -> torch.Tensor:  # pragma: no cover - optional
        raise NotImplementedError

    def validation_pipeline(self):
        """A FideDiffPipeline built from the current (unwrapped) modules, or None to skip validation."""
        return None

    def validate(self, pairs, args, step: int, accelerator) -> dict:
        """Validation logs; by default the pipeline deblurs the held-out crops (PSNR, image strips)."""
        pipe = self.validation_pipeline()
        if pipe is None:
            return {}
        return run_validation(pipe, pairs, args, step, accelerator, self.validation_timestep)

    def export(self, export_dir: str) -> None:
        raise NotImplementedError


def make_accelerator(args):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    project = ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir))
    from accelerate.utils import set_seed

    report_to = None if args.report_to in (None, "none") else args.report_to
    set_seed(args.seed)  # model initialisation and any torch randomness (e.g. the VAE's posterior samples)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, log_with=report_to, project_config=project)
    if accelerator.device.type == "cpu":
        # Training allocates the same large activations and gradients every step: keep freed blocks for reuse
        # instead of faulting in fresh pages each time (as the pipeline does on its first CPU call).
        from fidediff_pipeline.cpu_memory import keep_freed_cpu_memory

        keep_freed_cpu_memory()
    return accelerator


def setup_logging(accelerator) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    if not accelerator.is_local_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    for noisy in ("diffusers", "accelerate", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _optimizer(args, params, lr=None):
    return torch.optim.AdamW(params, lr=lr or args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)


def _scheduler(args, optimizer):
    from diffusers.optimization import get_scheduler

    return get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps,
                         num_training_steps=args.max_train_steps)


def run_training(args, accelerator, stage: Stage, discriminator_lr: float | None = None) -> dict:
    """Train ``stage`` for ``--max_train_steps`` optimizer steps; returns the last logged values.

    Order inside a step: ``--gradient_accumulation_steps`` generator micro-batches (DDP sync on the last),
    clip, step; then, with a discriminator, its own update on the same micro-batches' detached fakes (the
    paper's alternating G / D training).
    """
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for module in stage.frozen:
        if module is not None:
            module.to(accelerator.device)
            if weight_dtype != torch.float32:  # frozen parts run in the mixed-precision dtype (diffusers' recipe)
                for param in module.parameters():
                    if not param.requires_grad:  # a trained part (e.g. --train_vae_decoder) stays float32
                        param.data = param.data.to(weight_dtype)
    params = [p for p in stage.model.parameters() if p.requires_grad]
    if not params:
        raise SystemExit("error: nothing to train (no parameter requires grad)")
    optimizer, scheduler = _optimizer(args, params), None
    scheduler = _scheduler(args, optimizer)
    d_model = stage.discriminator
    if d_model is not None:
        d_optimizer = _optimizer(args, [p for p in d_model.parameters() if p.requires_grad], discriminator_lr)
        d_scheduler = _scheduler(args, d_optimizer)
        model, d_model, optimizer, d_optimizer, scheduler, d_scheduler = accelerator.prepare(
            stage.model, d_model, optimizer, d_optimizer, scheduler, d_scheduler)
    else:
        model, optimizer, scheduler = accelerator.prepare(stage.model, optimizer, scheduler)

    if accelerator.is_main_process:
        config = {k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in vars(args).items()}
        accelerator.init_trackers(args.tracker_project_name or f"fidediff-{stage.name}", config=config)

    global_step = 0
    timing = bool(getattr(args, "time_steps_only", False))
    resume = None if timing else find_resume_checkpoint(args)
    if resume is not None:
        accelerator.load_state(str(resume))
        warn_if_rng_state_unusable(resume, accelerator.process_index)
        global_step = checkpoint_step(resume)
        logger.info("resumed from %s at step %d", resume, global_step)
    elif args.resume_from_checkpoint:
        logger.info("no checkpoint in %s: starting a new run", args.output_dir)

    ga = args.gradient_accumulation_steps
    loader = build_train_loader(args, accelerator, start_micro_batch=global_step * ga, consistency=stage.consistency,
                                kernel_size=stage.kernel_size, with_kernels=stage.with_kernels)
    batches = iter(loader)
    limit = max(args.num_validation_pairs, args.num_validation_images) if args.num_validation_pairs else None
    pairs = validation_pairs(args, limit=limit) if accelerator.is_main_process and not timing else []
    logger.info("stage %s: %d trainable parameters, %d processes, %d steps (batch %d groups x %d levels, accumulation %d)",
                stage.name, sum(p.numel() for p in params), accelerator.num_processes, args.max_train_steps,
                args.train_batch_size if stage.consistency else args.train_batch_size * args.levels_per_group,
                args.levels_per_group if stage.consistency else 1, ga)

    logs: dict = {}
    history: list[float] = []  # the total loss of every step (train_summary.json; used by the tests)
    step_seconds: list[float] = []  # wall time of every step, with --time_steps_only
    if timing and accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    start_time, last_print = time.time(), time.time()
    # Training minutes of earlier invocations (resumed runs), so the learning curve's time axis is cumulative.
    earlier = read_validation_history(args.output_dir) if resume is not None else []
    elapsed_before = earlier[-1]["seconds"] if earlier else 0.0
    first_step = global_step
    while global_step < args.max_train_steps:
        if args.max_steps_this_run and global_step - first_step >= args.max_steps_this_run:
            break
        model.train()
        outputs_for_d, step_logs = [], {}
        step_start = time.perf_counter()
        for micro in range(ga):
            batch = next(batches)
            sync = micro == ga - 1
            ctx = contextlib.nullcontext() if sync else accelerator.no_sync(model)
            with ctx, accelerator.autocast():
                out = model(batch)
                check_finite(out, global_step + 1)
                accelerator.backward(out["loss"] / ga)
            for key, value in out.items():
                if not key.startswith("_") and torch.is_tensor(value) and value.ndim == 0:
                    step_logs[key] = step_logs.get(key, 0.0) + float(value.detach()) / ga
            if d_model is not None:
                outputs_for_d.append({k: v.detach() for k, v in out.items() if k.startswith("_")})
        if accelerator.sync_gradients and args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        if d_model is not None:
            for micro, out in enumerate(outputs_for_d):
                ctx = contextlib.nullcontext() if micro == ga - 1 else accelerator.no_sync(d_model)
                with ctx, accelerator.autocast():
                    d_loss = stage.discriminator_loss(d_model, out)
                    check_finite({"d_loss": d_loss}, global_step + 1)
                    accelerator.backward(d_loss / ga)
                step_logs["d_loss"] = step_logs.get("d_loss", 0.0) + float(d_loss.detach()) / ga
            if args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(d_model.parameters(), args.max_grad_norm)
            d_optimizer.step()
            d_scheduler.step()
            d_optimizer.zero_grad(set_to_none=True)

        global_step += 1
        if timing:
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize(accelerator.device)
            step_seconds.append(time.perf_counter() - step_start)
        history.append(step_logs["loss"])
        step_logs["lr"] = scheduler.get_last_lr()[0]
        logs = step_logs
        accelerator.log(step_logs, step=global_step)
        if accelerator.is_main_process and (global_step % args.log_every == 0 or global_step == args.max_train_steps):
            text = " ".join(f"{k}={v:.4g}" for k, v in step_logs.items())
            logger.info("[%s] step %d/%d %s (%.2fs/step)", stage.name, global_step, args.max_train_steps, text,
                        (time.time() - last_print) / args.log_every)
            last_print = time.time()

        stopping = bool(args.max_steps_this_run) and global_step - first_step >= args.max_steps_this_run
        if timing:
            continue
        if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps or stopping:
            save_checkpoint(accelerator, args.output_dir, global_step)  # complete or absent, never partial
            if accelerator.is_main_process:  # only now: a kill during the save keeps the older checkpoints
                prune_checkpoints(args.output_dir, args.checkpoints_total_limit)

        if accelerator.is_main_process and pairs and (global_step % args.validation_steps == 0
                                                      or global_step == args.max_train_steps):
            model.eval()
            val = stage.validate(pairs, args, global_step, accelerator)
            if val:
                accelerator.log(val, step=global_step)
                logs.update(val)
                record_validation(args, stage, global_step, time.time() - start_time + elapsed_before, val)
                logger.info("[%s] validation at step %d: %s", stage.name, global_step,
                            " ".join(f"{k}={v:.3f}" for k, v in val.items()))

    accelerator.wait_for_everyone()
    if timing:
        write_step_timing(args, accelerator, stage, step_seconds, history)
        accelerator.end_training()
        return logs
    # Every process records a hash of its trained weights: DDP replicas must end identical.
    digest = weights_digest(accelerator.unwrap_model(model))
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(args.output_dir, f"weights_digest_rank{accelerator.process_index}.txt"), digest + "\n")
    if global_step < args.max_train_steps:
        logger.info("stopped at step %d of %d (--max_steps_this_run); resume with --resume_from_checkpoint latest",
                    global_step, args.max_train_steps)
        accelerator.end_training()
        return logs
    if accelerator.is_main_process:
        export_dir = args.export_dir or os.path.join(args.output_dir, "pipeline")
        with atomic_folder(export_dir) as tmp_dir:  # a kill never leaves a half-written pipeline folder
            stage.export(str(tmp_dir))
        summary = {"stage": stage.name, "steps": global_step, "seconds": round(time.time() - start_time, 1), **logs,
                   "loss_history": history}
        write_text_atomic(Path(args.output_dir, "train_summary.json"), json.dumps(summary, indent=2))
        logger.info("exported %s pipeline to %s", stage.name, export_dir)
    accelerator.end_training()
    return logs


def write_step_timing(args, accelerator, stage, step_seconds: list[float], history: list[float]) -> None:
    """train_summary.json of a ``--time_steps_only`` run: each step's seconds, the median after the first two
    (warm-up: allocator, cuDNN/oneDNN algorithm choice) and the peak memory of this process."""
    from fidediff_pipeline.cpu_memory import peak_rss_gib

    steady = step_seconds[2:] or step_seconds
    summary = {
        "stage": stage.name, "steps": len(step_seconds), "step_seconds": [round(v, 4) for v in step_seconds],
        "median_step_s": round(float(np.median(steady)), 4), "steps_in_median": len(steady),
        "samples_per_step": args.train_batch_size * args.levels_per_group * args.gradient_accumulation_steps,
        "resolution": args.resolution, "mixed_precision": accelerator.mixed_precision,
        "gradient_checkpointing": bool(args.gradient_checkpointing), "device": str(accelerator.device),
        "num_processes": accelerator.num_processes, "loss_history": history,
        "peak_rss_gib": round(peak_rss_gib(), 3),
    }
    if accelerator.device.type == "cuda":
        summary["peak_cuda_allocated_gib"] = round(torch.cuda.max_memory_allocated(accelerator.device) / 2**30, 3)
        summary["gpu"] = torch.cuda.get_device_name(accelerator.device)
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.output_dir, "train_summary.json"), json.dumps(summary, indent=2))
        logger.info("[%s] %d timed steps, median %.3f s/step", stage.name, len(step_seconds), summary["median_step_s"])


def unwrap(accelerator, module):
    return accelerator.unwrap_model(module) if accelerator is not None else module


def save_pipeline(pipe, export_dir: str) -> None:
    """``save_pretrained`` (safetensors weights and configs) after checking no LoRA layer is left unfused."""
    for name, module in pipe.unet.named_modules():
        if "lora" in type(module).__name__.lower() or hasattr(module, "lora_A"):
            raise RuntimeError(f"refusing to export: LoRA layer {name} is not fused and unloaded "
                               "(an unfused adapter silently reloads wrong weights)")
    # Frozen parts ran in the mixed-precision dtype: export float32 weights (users choose dtype= when loading).
    modules = [m for m in pipe.components.values() if isinstance(m, nn.Module)]
    if any(p.dtype != torch.float32 for m in modules for p in m.parameters()):
        pipe.to(dtype=torch.float32)
    pipe.save_pretrained(export_dir)


def weights_digest(module: nn.Module) -> str:
    """A hash of a module's state dict (used by the DDP test to compare ranks)."""
    import hashlib

    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
