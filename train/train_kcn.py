#!/usr/bin/env python
"""Stage 3 of FideDiff (paper Sec. 4.2, 4.3 eq. 13): train the Kernel ControlNet {F, C, M, T}, base frozen.

Loss ``L1 + lambda1 * EA-LPIPS + lambda3 * reblur + lambda4 * L_time``, where ``L_time`` is the L2 between the
t-regressor's output and the true ``t`` (both / 1000). The UNet, the VAE and the learned embedding are frozen;
by default the UNet sees the ground-truth ``t`` (as in stage 1) and the t-regressor learns to predict it for
inference. With ``--unet_timestep predicted`` the UNet and the ControlNet instead run at the t-regressor's own
(rounded, detached) estimate, as they do at inference with ``timestep="auto"``: the ControlNet then learns to
restore at the t it will actually be given (not in the paper, which does not say which t stage 3 uses).

    accelerate launch train/train_kcn.py --init_from runs/kernel/pipeline \
        --train_manifest data/gopro_enlarged/manifest.csv --validation_manifest data/gopro_test/manifest.csv \
        --output_dir runs/kcn --resolution 512 --upscale_factor 2
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train import common  # noqa: E402
from train.train_kernel import add_reblur_args  # noqa: E402


def parse_args(argv=None):
    parser = common.build_parser(__doc__.splitlines()[1])
    common.add_perceptual_args(parser)
    add_reblur_args(parser)
    g = parser.add_argument_group("stage 3")
    g.add_argument("--reblur_weight", type=float, default=1.0, help="lambda3")
    g.add_argument("--time_weight", type=float, default=1.0, help="lambda4 (L2 on t/1000)")
    g.add_argument("--unet_timestep", type=str, default="true", choices=["true", "predicted"],
                   help="the t the frozen UNet and the ControlNet run at: the true t, or T's estimate as at inference")
    g.add_argument("--kernel_size", type=int, default=None, help="m of a NEW Kernel ControlNet (when --init_from has none)")
    g.add_argument("--controlnet_kernels", type=str, default="estimated", choices=["estimated", "true", "mix"],
                   help="what F and the ControlNet are fed: M's kernels (the paper's), or NOT IN THE PAPER, a probe: "
                        "the builder's true kernel of each crop (cropped to m, the same at every position), so the "
                        "ControlNet can learn what exact kernels are worth; M and T still train on their own losses. "
                        "'mix': each crop gets its true kernel with probability --true_kernel_fraction, else M's "
                        "(F learns to use kernels and what M's errors look like)")
    g.add_argument("--true_kernel_fraction", type=float, default=0.5,
                   help="with --controlnet_kernels mix: the share of crops fed their true kernel")
    g.add_argument("--freeze_estimator", action="store_true",
                   help="NOT IN THE PAPER: keep M and T as they are and train only F and the ControlNet C, e.g. to fit "
                        "a finished Kernel ControlNet to a UNet trained further (make_tiny.py --kcn_from)")
    # Stage 3 also trains M (eq. 13 reaches it through the restoration, reblur and time losses); with these flags
    # the true kernels keep it as accurate as stage 2 left it.
    common.add_kernel_supervision_args(g)
    args = parser.parse_args(argv)
    if not args.init_from:
        parser.error("--init_from <stage-2 (or stage-1) pipeline folder> is required")
    if min(args.reblur_weight, args.time_weight, args.kernel_weight, args.kernel_moment_weight) < 0:
        parser.error("--reblur_weight, --time_weight, --kernel_weight and --kernel_moment_weight must be >= 0")
    if not 0.0 <= args.true_kernel_fraction <= 1.0:
        parser.error(f"--true_kernel_fraction must be in [0, 1]; got {args.true_kernel_fraction}")
    return args


def inference_timesteps(predicted: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """The t-regressor's estimates as the pipeline uses them with ``timestep="auto"``: rounded to the nearest step
    (half to even, as Python's ``round``), clamped to ``[0, num_train_timesteps - 1]``, no gradient."""
    return predicted.detach().float().round().clamp(0, num_train_timesteps - 1).long()


def true_kernel_map(true_kernels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The builder's kernels ``[B, M, M]`` as a kernel map shaped ``like`` M's output ``[B, m*m, h, w]``: each crop's
    kernel, cropped to ``m x m`` and renormalised as the supervision loss sees it, at every position."""
    from fidediff_pipeline.losses import _true_kernel_taps

    m = int(round(like.shape[1] ** 0.5))
    return _true_kernel_taps(true_kernels, m).to(like.dtype).expand_as(like).contiguous()


class KCNStageModel(nn.Module):
    """The Kernel ControlNet (trainable) around the frozen base model; ``forward(batch)`` returns eq. 13's terms."""

    def __init__(self, kernel_controlnet, unet, prompt_embedding, vae, alphas_cumprod, args, ea_loss):
        super().__init__()
        self.kernel_controlnet = kernel_controlnet
        self.__dict__["_frozen"] = {"unet": unet, "prompt_embedding": prompt_embedding, "vae": vae, "ea": ea_loss}
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone(), persistent=False)
        self.args = args

    def forward(self, batch: dict) -> dict:
        from fidediff_pipeline.losses import reblur_loss, time_regression_loss
        from fidediff_pipeline.restoration import encode_latents, restore

        fz, args = self._frozen, self.args
        device = self.alphas_cumprod.device
        vae_dtype = next(fz["vae"].parameters()).dtype
        x = common.to_model_range(batch["blurry"]).to(device, vae_dtype)
        target = common.to_model_range(batch["sharp"]).to(device)
        timesteps = batch["timesteps"].to(device)
        with torch.no_grad():
            z_t = encode_latents(fz["vae"], x, args.upscale_factor)
            context = fz["prompt_embedding"](batch_size=x.shape[0]).to(z_t.dtype)
        kernels = predicted = None
        unet_timesteps = timesteps
        if args.unet_timestep == "predicted" or args.controlnet_kernels != "estimated":
            kernels = self.kernel_controlnet.kernel_estimator(x)
            predicted = self.kernel_controlnet.timestep_regressor(kernels, x)
        if args.unet_timestep == "predicted":
            unet_timesteps = inference_timesteps(predicted, len(self.alphas_cumprod))
        estimated = kernels
        if args.controlnet_kernels == "true":
            kernels = true_kernel_map(batch["kernels"].to(device), estimated)
        elif args.controlnet_kernels == "mix":
            # Drawn from torch's global generator, which the trainer seeds: the same crops get true kernels on rerun.
            use_true = torch.rand(x.shape[0]) < args.true_kernel_fraction
            use_true = use_true.to(device)[:, None, None, None]
            kernels = torch.where(use_true, true_kernel_map(batch["kernels"].to(device), estimated), estimated)
        out = restore(fz["vae"], fz["unet"], self.alphas_cumprod, context, x, unet_timesteps, args.upscale_factor,
                      kernel_controlnet=self.kernel_controlnet, z_t=z_t, color_fix_sigma=args.color_fix_sigma,
                      kernels=kernels)
        if predicted is None:
            predicted = out.predicted_timestep
        if estimated is None:
            estimated = out.kernels  # M's own: the reblur and supervision losses below train M on them
        restored = out.image.float()
        l1 = F.l1_loss(restored, target)
        ea, logs = common.ea_lpips_terms(fz["ea"], restored, target, args)
        fft, fft_logs = common.frequency_term(restored, target, args)
        ea = ea + fft
        logs.update(fft_logs)
        reblur = reblur_loss(batch["sharp"].to(device), batch["blurry"].to(device), estimated, args.reblur_space)
        t_loss = time_regression_loss(predicted, timesteps)
        latent, latent_logs = common.latent_l1_term(fz["vae"], out.z0, target, args)
        supervision, supervision_logs = common.kernel_supervision_terms(estimated, batch, args)
        loss = l1 + ea + latent + args.reblur_weight * reblur + args.time_weight * t_loss + supervision
        logs.update(latent_logs)
        logs.update(supervision_logs)
        t_mae = (predicted.detach().float() - timesteps.float()).abs().mean()
        return {"loss": loss, "l1": l1.detach(), "reblur": reblur.detach(), "time": t_loss.detach(), "t_mae": t_mae, **logs}


class KCNStage(common.Stage):
    name = "kcn"
    validation_timestep = "auto"

    def __init__(self, args, accelerator):
        self.args, self.accelerator = args, accelerator
        self.pipe = pipe = common.load_pipeline(args, with_kernel_controlnet=True)
        common.validate_common_args(args, pipe.vae_scale_factor)
        self.kernel_size = pipe.kernel_controlnet.config.kernel_size
        ea_loss = common.build_ea_loss(args, accelerator.device)
        common.freeze(pipe.vae, pipe.unet, pipe.prompt_embedding)
        pipe.kernel_controlnet.requires_grad_(True).train()
        if args.freeze_estimator:  # their losses stay in the logs; with no trainable weights they change nothing
            common.freeze(pipe.kernel_controlnet.kernel_estimator, pipe.kernel_controlnet.timestep_regressor)
        if args.gradient_checkpointing:
            from fidediff_pipeline.training_utils import enable_vae_decoder_checkpointing

            pipe.kernel_controlnet.enable_gradient_checkpointing()
            pipe.unet.enable_gradient_checkpointing()
            enable_vae_decoder_checkpointing(pipe.vae)  # the image losses backpropagate through its decoder
        self.model = KCNStageModel(pipe.kernel_controlnet, pipe.unet, pipe.prompt_embedding, pipe.vae,
                                   pipe.scheduler.alphas_cumprod, args, ea_loss)
        self.frozen = (pipe.vae, pipe.unet, pipe.prompt_embedding)
        self.with_kernels = args.kernel_weight > 0 or args.kernel_moment_weight > 0 or args.controlnet_kernels != "estimated"

    def validation_pipeline(self):
        self.pipe.register_modules(kernel_controlnet=common.unwrap(self.accelerator, self.model).kernel_controlnet)
        return self.pipe

    def export(self, export_dir):
        pipe = self.validation_pipeline()
        pipe.kernel_controlnet.eval()
        common.save_pipeline(pipe, export_dir)


def main(argv=None):
    args = parse_args(argv)
    accelerator = common.make_accelerator(args)
    common.setup_logging(accelerator)
    return common.run_training(args, accelerator, KCNStage(args, accelerator))


if __name__ == "__main__":
    main()
