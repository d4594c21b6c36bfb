#!/usr/bin/env python
"""Stage 2 of FideDiff (paper Sec. 4.3 eq. 12): pretrain the kernel estimator M of the Kernel ControlNet alone.

Reblur loss ``L1(M(I_LQ) (*) I_HQ, I_LQ)``: every pixel's predicted ``m x m`` kernel applied to the sharp image
(`fidediff_pipeline.kernel_ops.apply_per_pixel_kernels`) must reproduce the blurry one. Everything else is frozen
and untouched; the Kernel ControlNet is created from the UNet (``--preset`` sizes, ``--kernel_size``) if the
starting pipeline has none.

    accelerate launch train/train_kernel.py --init_from runs/base/pipeline --preset sd21-base --kernel_size 19 \
        --train_manifest data/gopro_enlarged/manifest.csv --output_dir runs/kernel --resolution 256
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train import common  # noqa: E402


def add_reblur_args(parser) -> None:
    g = parser.add_argument_group("reblur")
    g.add_argument("--reblur_space", type=str, default="linear", choices=["linear", "srgb"],
                   help="linear: reblur in linear light (gamma 2.2, how the project's data are made); srgb: the paper's plain formula")


def parse_args(argv=None):
    parser = common.build_parser(__doc__.splitlines()[1])
    parser.add_argument("--kernel_size", type=int, default=None, help="m of a NEW Kernel ControlNet (odd; default: preset's)")
    parser.add_argument("--autocorrelation_radius", type=int, default=None,
                        help="of a NEW Kernel ControlNet: M's gradient-autocorrelation features reach this many px "
                             "(0 = off; default: the preset's; not in the paper)")
    parser.add_argument("--autocorrelation_window", type=int, default=None,
                        help="of a NEW Kernel ControlNet: the side in px of the window M's gradient autocorrelations "
                             "are averaged over (default: the preset's, 16)")
    parser.add_argument("--estimator_global_context", action="store_true",
                        help="give M a branch that reads the gradient autocorrelations of its whole input (not in the "
                             "paper; added, starting at zero, to a loaded M that has none; needs the autocorrelation "
                             "features)")
    parser.add_argument("--regressor_global_context_radius", type=int, default=None,
                        help="give T a branch that reads the gradient autocorrelations of its whole input image at "
                             "offsets up to this many px (not in the paper; added, starting at zero, to a loaded T "
                             "without one; 0 removes it; default: keep the loaded T's)")
    add_reblur_args(parser)
    parser.add_argument("--time_weight", type=float, default=0.0,
                        help="also fit the t-regressor T on M's DETACHED kernels (L2 on t/1000; not in the paper, "
                             "M's training is unchanged); 0 = M alone, as in the paper")
    parser.add_argument("--time_loss", type=str, default="l2", choices=["l2", "l1"],
                        help="of the t-regressor: l2 (the paper's L_time) or l1 (NOT IN THE PAPER: the median of the "
                             "levels a blur fits, which minimises the t-prediction MAE)")
    common.add_kernel_supervision_args(parser)
    parser.add_argument("--time_only", action="store_true",
                        help="NOT IN THE PAPER: train only the t-regressor T on the frozen M's kernels (time loss "
                             "alone; needs --time_weight > 0), e.g. to refit T to M after stage 3 changed M")
    parser.set_defaults(learning_rate=1e-4, levels_per_group=3)
    args = parser.parse_args(argv)
    if args.time_only and args.time_weight <= 0:
        parser.error("--time_only trains T alone: give it a --time_weight > 0")
    if not args.init_from:
        parser.error("--init_from <stage-1 pipeline folder> is required")
    if min(args.kernel_weight, args.time_weight, args.kernel_moment_weight) < 0:
        parser.error("--kernel_weight, --kernel_moment_weight and --time_weight must be >= 0")
    if args.kernel_size is not None and (args.kernel_size < 1 or args.kernel_size % 2 == 0):
        parser.error(f"--kernel_size must be odd and >= 1; got {args.kernel_size}")
    if args.autocorrelation_radius is not None and args.autocorrelation_radius < 0:
        parser.error(f"--autocorrelation_radius must be >= 0 (0 = off); got {args.autocorrelation_radius}")
    if args.regressor_global_context_radius is not None and args.regressor_global_context_radius < 0:
        parser.error(f"--regressor_global_context_radius must be >= 0 (0 = off); got {args.regressor_global_context_radius}")
    if args.autocorrelation_window is not None and args.autocorrelation_window < 1:
        parser.error(f"--autocorrelation_window must be >= 1 (pixels); got {args.autocorrelation_window}")
    return args


class KernelStageModel(nn.Module):
    """M alone: ``forward(batch)`` returns the reblur loss."""

    def __init__(self, kernel_estimator, reblur_space: str, timestep_regressor=None, time_weight: float = 0.0,
                 kernel_weight: float = 0.0, kernel_moment_weight: float = 0.0, time_only: bool = False,
                 time_loss: str = "l2"):
        super().__init__()
        self.kernel_estimator = kernel_estimator
        self.time_only = time_only
        self.timestep_regressor = timestep_regressor if time_weight > 0 else None
        self.reblur_space, self.time_weight, self.kernel_weight = reblur_space, time_weight, kernel_weight
        self.kernel_moment_weight, self.time_loss = kernel_moment_weight, time_loss

    def forward(self, batch: dict) -> dict:
        from fidediff_pipeline.losses import reblur_loss

        device = next(self.kernel_estimator.parameters()).device
        blurry, sharp = batch["blurry"].to(device), batch["sharp"].to(device)
        image = common.to_model_range(blurry)  # what M reads (and T too, with its whole-image branch)
        if self.time_only:  # M frozen: T alone learns to read its kernels
            from fidediff_pipeline.losses import time_regression_loss

            with torch.no_grad():
                kernels = self.kernel_estimator(image)
            timesteps = batch["timesteps"].to(device)
            predicted = self.timestep_regressor(kernels, image)
            t_loss = time_regression_loss(predicted, timesteps, norm=self.time_loss)
            return {"loss": self.time_weight * t_loss, "time": t_loss.detach(),
                    "t_mae": (predicted.detach() - timesteps.float()).abs().mean()}
        kernels = self.kernel_estimator(image)
        reblur = reblur_loss(sharp, blurry, kernels, self.reblur_space)
        supervision, logs = common.kernel_supervision_terms(kernels, batch, self)  # self has the two weights
        loss = reblur + supervision
        logs["reblur"] = reblur.detach()
        if self.timestep_regressor is not None:
            from fidediff_pipeline.losses import time_regression_loss

            timesteps = batch["timesteps"].to(device)
            predicted = self.timestep_regressor(kernels.detach(), image)
            t_loss = time_regression_loss(predicted, timesteps, norm=self.time_loss)
            loss = loss + self.time_weight * t_loss
            logs.update(time=t_loss.detach(), t_mae=(predicted.detach() - timesteps.float()).abs().mean())
        return {"loss": loss, **logs}


class KernelStage(common.Stage):
    name = "kernel"

    def __init__(self, args, accelerator):
        self.args, self.accelerator = args, accelerator
        self.pipe = common.load_pipeline(args, with_kernel_controlnet=True)
        common.validate_common_args(args, self.pipe.vae_scale_factor)
        kcn = self.pipe.kernel_controlnet
        if args.estimator_global_context:
            if not kcn.config.estimator_autocorrelation_radius:
                raise SystemExit("error: --estimator_global_context needs M's autocorrelation features; this Kernel "
                                 "ControlNet has estimator_autocorrelation_radius 0 (pass --autocorrelation_radius "
                                 "> 0 for a new one)")
            kcn = kcn.with_estimator_global_context()
            self.pipe.register_modules(kernel_controlnet=kcn)
        if args.regressor_global_context_radius is not None:
            kcn = kcn.with_regressor_global_context(args.regressor_global_context_radius)
            self.pipe.register_modules(kernel_controlnet=kcn)
        self.kernel_size = kcn.config.kernel_size
        common.freeze(self.pipe.vae, self.pipe.unet, self.pipe.prompt_embedding, kcn)
        if args.time_only:
            kcn.kernel_estimator.eval()
        else:
            kcn.kernel_estimator.requires_grad_(True).train()
        if args.time_weight > 0:
            kcn.timestep_regressor.requires_grad_(True).train()
        if args.gradient_checkpointing:  # M's residual blocks (this stage trains M and T only)
            kcn.enable_gradient_checkpointing()
        self.model = KernelStageModel(kcn.kernel_estimator, args.reblur_space, kcn.timestep_regressor, args.time_weight,
                                      args.kernel_weight, args.kernel_moment_weight, args.time_only,
                                      args.time_loss)
        self.with_kernels = not args.time_only and (args.kernel_weight > 0 or args.kernel_moment_weight > 0)

    @torch.no_grad()
    def validate(self, pairs, args, step, accelerator) -> dict:
        """Held-out reblur error and, with the t-regressor trained, its mean absolute error per level."""
        from fidediff_pipeline.losses import reblur_loss

        model = common.unwrap(accelerator, self.model)
        device = next(model.kernel_estimator.parameters()).device
        reblur, errors, levels = [], [], []
        for item in pairs:
            blurry, sharp = item["blurry"][None].to(device), item["sharp"][None].to(device)
            image = common.to_model_range(blurry)
            kernels = model.kernel_estimator(image)
            reblur.append(float(reblur_loss(sharp, blurry, kernels, model.reblur_space)))
            if model.timestep_regressor is not None:
                errors.append(abs(float(model.timestep_regressor(kernels, image)[0]) - int(item["timestep"])))
                levels.append(int(item["timestep"]))
        logs = {"val/reblur": float(np.mean(reblur))}
        if errors:
            logs["val/t_mae"] = float(np.mean(errors))
            for t in sorted(set(levels)):
                logs[f"val/t_mae_t{t}"] = float(np.mean([e for e, lv in zip(errors, levels) if lv == t]))
        return logs

    def export(self, export_dir):
        model = common.unwrap(self.accelerator, self.model)
        self.pipe.kernel_controlnet.kernel_estimator = model.kernel_estimator
        if model.timestep_regressor is not None:
            self.pipe.kernel_controlnet.timestep_regressor = model.timestep_regressor
        common.save_pipeline(self.pipe, export_dir)


def main(argv=None):
    args = parse_args(argv)
    accelerator = common.make_accelerator(args)
    common.setup_logging(accelerator)
    return common.run_training(args, accelerator, KernelStage(args, accelerator))


if __name__ == "__main__":
    main()
