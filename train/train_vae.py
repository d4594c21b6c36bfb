#!/usr/bin/env python
"""Stage 0 (tiny preset only): pretrain the tiny autoencoder that stands in for Stable Diffusion's VAE.

The full recipe keeps SD 2.1's VAE frozen; a randomly initialised tiny model has no VAE worth keeping, so this
trains one on sharp and blurry crops: ``L1 + edge_weight * L1(Sobel edges)`` plus, for an ``AutoencoderKL``,
``kl_weight * KL`` (decoding the posterior mode by default); the tiny preset's ``AutoencoderTiny`` has no
posterior and no KL term. LPIPS is off (no backbone offline). The output is a whole pipeline folder (other components as given) for ``--init_from``.

    python train/train_vae.py --preset tiny --train_images photos/ --output_dir runs/vae --resolution 64
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train import common  # noqa: E402


def parse_args(argv=None):
    parser = common.build_parser(__doc__.splitlines()[1])
    g = parser.add_argument_group("vae")
    g.add_argument("--kl_weight", type=float, default=1e-4, help="weight of the mean per-element KL")
    g.add_argument("--edge_weight", type=float, default=0.5, help="weight of the Sobel-edge L1")
    g.add_argument("--sample_posterior", action="store_true",
                   help="decode a posterior sample (classic VAE); default decodes the mode, which is what the "
                        "pipeline encodes at inference and trains much faster from scratch")
    parser.set_defaults(learning_rate=1e-3, upscale_factor=1, levels_per_group=2)
    args = parser.parse_args(argv)
    if args.kl_weight < 0 or args.edge_weight < 0:
        parser.error("--kl_weight and --edge_weight must be >= 0")
    return args


class VAEStageModel(nn.Module):
    """Reconstruction of sharp and blurry crops through the posterior sample (the KL keeps latents tame)."""

    def __init__(self, vae, kl_weight: float, edge_weight: float, sample_posterior: bool = False):
        super().__init__()
        self.vae = vae
        self.kl_weight, self.edge_weight, self.sample_posterior = kl_weight, edge_weight, sample_posterior

    def forward(self, batch: dict) -> dict:
        from fidediff_pipeline.losses import sobel_edges

        device = next(self.vae.parameters()).device
        x = common.to_model_range(torch.cat([batch["sharp_per_group"], batch["blurry"]])).to(device)
        encoded = self.vae.encode(x)
        if hasattr(encoded, "latent_dist"):  # AutoencoderKL
            posterior = encoded.latent_dist
            # The mode is what inference uses; with a random init a posterior sample starts with unit-variance
            # noise on every latent, which a small KL weight takes thousands of steps to shrink.
            z = posterior.sample() if self.sample_posterior else posterior.mode()
            kl = (posterior.kl() / posterior.mean[0].numel()).mean()
        else:  # AutoencoderTiny: deterministic latents, no KL (and none logged)
            z, kl = encoded.latents, None
        recon = self.vae.decode(z).sample
        l1 = F.l1_loss(recon, x)
        edge = F.l1_loss(sobel_edges(recon), sobel_edges(x)) if self.edge_weight else recon.new_zeros(())
        loss = l1 + self.edge_weight * edge + (self.kl_weight * kl if kl is not None else 0.0)
        logs = {"loss": loss, "l1": l1.detach(), "edge": edge.detach()}
        if kl is not None:
            logs["kl"] = kl.detach()
        return logs


class VAEStage(common.Stage):
    name = "vae"

    def __init__(self, args, accelerator):
        self.args, self.accelerator = args, accelerator
        self.pipe = common.load_pipeline(args, with_kernel_controlnet=False)
        common.validate_common_args(args, self.pipe.vae_scale_factor)
        common.freeze(self.pipe.unet, self.pipe.prompt_embedding)
        self.pipe.vae.requires_grad_(True).train()
        self.model = VAEStageModel(self.pipe.vae, args.kl_weight, args.edge_weight, args.sample_posterior)

    @torch.no_grad()
    def validate(self, pairs, args, step, accelerator) -> dict:
        from fidediff_pipeline.restoration import vae_encode_mode

        vae = common.unwrap(accelerator, self.model).vae
        scores = []
        for item in pairs:
            x = common.to_model_range(item["sharp"][None])
            recon = vae.decode(vae_encode_mode(vae, x)).sample
            scores.append(common.psnr_uint8(common.to_uint8((recon[0] + 1) / 2), common.to_uint8(item["sharp"])))
        return {"val/psnr_recon": float(sum(scores) / max(len(scores), 1))}

    def export(self, export_dir):
        self.pipe.vae = common.unwrap(self.accelerator, self.model).vae
        self.pipe.register_modules(vae=self.pipe.vae)
        self.pipe.vae.eval()
        common.save_pipeline(self.pipe, export_dir)


def main(argv=None):
    args = parse_args(argv)
    accelerator = common.make_accelerator(args)
    common.setup_logging(accelerator)
    return common.run_training(args, accelerator, VAEStage(args, accelerator))


if __name__ == "__main__":
    main()
