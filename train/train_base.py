#!/usr/bin/env python
"""Stage 1 of FideDiff (paper Sec. 4.1, 4.3 eq. 9-11): the one-step deblurring foundation model.

LoRA on the UNet (peft) plus the learnable text embedding, trained with consistency training: every batch holds
``--levels_per_group`` blur levels of the same trajectory, all regressed to the same sharp target through
``z0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` with ``t = (n - 1) * 20``. Loss:
``L1 + lambda1 * EA-LPIPS + lambda2 * L_G``, with a latent discriminator (a copy of the UNet encoder plus conv
blocks) trained in alternation.

    accelerate launch train/train_base.py --pretrained_model_name_or_path stabilityai/stable-diffusion-2-1-base \
        --train_manifest data/gopro_enlarged/manifest.csv --validation_manifest data/gopro_test/manifest.csv \
        --output_dir runs/base --resolution 512 --upscale_factor 2 --lora_rank 16

``--no_consistency`` is the paper's "w/o CT" ablation: random unrelated pairs, all at t = 200.
``--lora_rank 0`` trains every UNet weight (needed for randomly initialised models such as ``--preset tiny``).
With ``--lora_rank > 0`` the exported pipeline has the LoRA fused into its UNet, and the LoRA alone is also saved,
in diffusers' format, as ``<pipeline>/lora/pytorch_lora_weights.safetensors`` (``pipe.load_lora_weights``).
"""

from __future__ import annotations

import copy
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train import common  # noqa: E402

# LoRA targets: every attention projection (self and cross) plus, with --lora_target all, the resnet convs,
# time-embedding and feed-forward linears. Attention-only is the usual diffusers recipe; OSEDiff / FideDiff-like
# restorers also adapt the convs, which matters for a task that changes local structure (blur).
LORA_ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_ALL_TARGETS = LORA_ATTENTION_TARGETS + ["conv1", "conv2", "conv_shortcut", "proj_in", "proj_out",
                                             "ff.net.0.proj", "ff.net.2", "time_emb_proj"]


# The standalone LoRA file goes to <pipeline folder>/lora/pytorch_lora_weights.safetensors.
LORA_SUBFOLDER = "lora"
LORA_METADATA_KEYS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "lora_dropout", "bias",
                      "use_rslora", "use_dora", "peft_type")


def save_unet_lora(unet, save_directory: str) -> None:
    """Save the UNet's peft adapter as a diffusers LoRA file (``pytorch_lora_weights.safetensors``).

    As diffusers' training scripts do (``get_peft_model_state_dict`` + the pipeline's ``save_lora_weights``, which
    prefixes ``unet.``), plus the adapter's ``LoraConfig`` as metadata, so that ``--lora_alpha`` other than the rank
    and the ``--lora_target`` modules reload exactly. Float32, like the exported pipeline.

    The keys keep peft's ``lora_A`` / ``lora_B`` names, as diffusers' own ``save_lora_adapter`` writes them. Not
    ``convert_state_dict_to_diffusers`` (``train_text_to_image_lora.py``): it renames only the attention
    projections (``to_q.lora.down``), and diffusers' loader picks one naming from the first key, so with
    ``--lora_target all`` (convs first) every attention adapter would be dropped on load
    (huggingface/diffusers#14548).
    """
    from peft.utils import get_peft_model_state_dict

    from fidediff_pipeline import FideDiffPipeline

    layers = get_peft_model_state_dict(unet)
    layers = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in layers.items()}
    config = unet.peft_config["default"].to_dict()
    # Only the fields that decide the adapter's output: diffusers rebuilds the config as LoraConfig(**metadata),
    # and the fields a newer peft adds (e.g. use_bdlora) would make an older peft refuse the file.
    metadata = {key: config[key] for key in LORA_METADATA_KEYS if key in config}
    FideDiffPipeline.save_lora_weights(save_directory, unet_lora_layers=layers, unet_lora_adapter_metadata=metadata)


def parse_args(argv=None):
    parser = common.build_parser(__doc__.splitlines()[1])
    common.add_perceptual_args(parser)
    g = parser.add_argument_group("stage 1")
    g.add_argument("--pretrained_model_name_or_path", type=str, default=None,
                   help="Stable Diffusion 2.1-base repo id or folder (vae/, unet/, scheduler/ [, text_encoder/])")
    g.add_argument("--lora_rank", type=int, default=16, help="LoRA rank; 0 trains all UNet weights")
    g.add_argument("--lora_alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    g.add_argument("--lora_target", type=str, default="all", choices=["attention", "all"],
                   help=f"attention: {LORA_ATTENTION_TARGETS}; all: also {LORA_ALL_TARGETS[4:]}")
    g.add_argument("--freeze_embedding", action="store_true", help="do not train the text embedding")
    g.add_argument("--train_vae_decoder", action="store_true",
                   help="TINY PRESET: also train the VAE decoder (with the loss of eq. 9). The paper keeps SD's "
                        "pretrained VAE frozen; a from-scratch tiny VAE is too weak a decoder to show deblurring")
    g.add_argument("--gan_weight", type=float, default=0.05, help="lambda2; 0 turns the discriminator off")
    g.add_argument("--gan_loss", type=str, default="non_saturating", choices=["non_saturating", "hinge"],
                   help="non_saturating is the paper's eq. 10-11 (log loss)")
    g.add_argument("--discriminator_learning_rate", type=float, default=None, help="default: --learning_rate")
    g.add_argument("--no_consistency", action="store_true",
                   help='"w/o CT" ablation: unrelated random pairs, every sample at t=200')
    args = parser.parse_args(argv)
    sources = [bool(args.pretrained_model_name_or_path), bool(args.init_from),
               bool(args.preset and not args.init_from and not args.pretrained_model_name_or_path)]
    if sum(sources) != 1 or (args.pretrained_model_name_or_path and args.init_from):
        parser.error("pass exactly one of --pretrained_model_name_or_path, --init_from or --preset")
    if args.lora_rank < 0:
        parser.error("--lora_rank must be >= 0")
    if args.gan_weight < 0:
        parser.error("--gan_weight must be >= 0")
    return args


class BaseStageModel(nn.Module):
    """Generator of stage 1: the UNet and the learned embedding (trainable) around the frozen VAE.

    ``forward(batch)`` returns the losses; ``_fake`` / ``_real`` latents feed the discriminator step.
    """

    def __init__(self, unet, prompt_embedding, vae, alphas_cumprod, args, ea_loss, discriminator):
        super().__init__()
        self.unet = unet
        self.prompt_embedding = prompt_embedding
        # Not registered as submodules: frozen (VAE), or trained by its own optimizer (discriminator).
        self.__dict__["_vae"] = vae
        self.__dict__["_ea_loss"] = ea_loss
        self.__dict__["_discriminator"] = discriminator
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone(), persistent=False)
        if args.train_vae_decoder:
            # Registered here so the optimizer, DDP and checkpoints see them; vae.decode still uses these modules.
            self.vae_decoder = vae.decoder
            self.vae_post_quant_conv = vae.post_quant_conv
        self.upscale = args.upscale_factor
        self.args = args
        self.gan_weight, self.gan_loss = args.gan_weight, args.gan_loss

    def forward(self, batch: dict) -> dict:
        from fidediff_pipeline.losses import generator_adversarial_loss
        from fidediff_pipeline.restoration import encode_latents, restore

        device = self.alphas_cumprod.device
        vae_dtype = next(self._vae.parameters()).dtype
        x = common.to_model_range(batch["blurry"]).to(device, vae_dtype)
        target = common.to_model_range(batch["sharp"]).to(device)
        timesteps = batch["timesteps"].to(device)
        with torch.no_grad():
            z_t = encode_latents(self._vae, x, self.upscale)
        context = self.prompt_embedding(batch_size=x.shape[0])
        out = restore(self._vae, self.unet, self.alphas_cumprod, context, x, timesteps, self.upscale, z_t=z_t,
                      color_fix_sigma=self.args.color_fix_sigma)
        restored = out.image.float()
        l1 = F.l1_loss(restored, target)
        loss = l1
        logs = {"l1": l1.detach()}
        ea, ea_logs = common.ea_lpips_terms(self._ea_loss, restored, target, self.args)
        fft, fft_logs = common.frequency_term(restored, target, self.args)
        ea, ea_logs = ea + fft, {**ea_logs, **fft_logs}
        z_hq = None
        if self._discriminator is not None or self.args.latent_weight:
            with torch.no_grad():
                # Each group's sharp frame is encoded once (the batch repeats it per level), for both the
                # discriminator's real samples and the latent L1.
                sharp = common.to_model_range(batch["sharp_per_group"]).to(device, vae_dtype)
                z_hq = encode_latents(self._vae, sharp, self.upscale)
        z_sharp = z_hq[batch["group_index"].to(device)] if z_hq is not None else None
        latent, latent_logs = common.latent_l1_term(self._vae, out.z0, target, self.args, z_sharp=z_sharp)
        loss = loss + ea + latent
        logs.update(ea_logs)
        logs.update(latent_logs)
        if self._discriminator is not None:
            self._discriminator.requires_grad_(False)  # G step: no gradients into D
            g_loss = generator_adversarial_loss(self._discriminator(out.z0.to(z_t.dtype)), self.gan_loss)
            loss = loss + self.gan_weight * g_loss
            logs.update(gan_g=g_loss.detach(), _fake=out.z0.detach(), _real=z_hq)
        return {"loss": loss, **logs}


class BaseStage(common.Stage):
    name = "base"

    def __init__(self, args, accelerator):
        from fidediff_pipeline import FideDiffPipeline
        from fidediff_pipeline.training_utils import LatentDiscriminator, enable_vae_decoder_checkpointing

        self.args, self.accelerator = args, accelerator
        if args.pretrained_model_name_or_path:
            pipe = FideDiffPipeline.from_stable_diffusion(args.pretrained_model_name_or_path, with_kernel_controlnet=False)
            common.configure_pipeline(pipe, args)
        else:
            pipe = common.load_pipeline(args, with_kernel_controlnet=False)
        common.validate_common_args(args, pipe.vae_scale_factor)
        self.pipe = pipe
        self.consistency = not args.no_consistency
        torch.manual_seed(args.seed)
        # LPIPS is checked before anything trains: offline without the backbone, stop here with the file's name.
        ea_loss = common.build_ea_loss(args, accelerator.device)
        # The discriminator copies the UNet encoder BEFORE LoRA layers are added.
        self.discriminator = LatentDiscriminator(pipe.unet) if args.gan_weight > 0 else None
        common.freeze(pipe.vae)
        if args.train_vae_decoder:
            pipe.vae.decoder.requires_grad_(True).train()
            pipe.vae.post_quant_conv.requires_grad_(True)
        unet = pipe.unet
        if args.lora_rank > 0:
            from peft import LoraConfig

            unet.requires_grad_(False)
            targets = LORA_ATTENTION_TARGETS if args.lora_target == "attention" else LORA_ALL_TARGETS
            unet.add_adapter(LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha or args.lora_rank,
                                        init_lora_weights="gaussian", target_modules=targets))
        else:
            unet.requires_grad_(True)
        if args.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            # The image losses backpropagate through the frozen VAE decoder: at 512 px crops and d = 4 its
            # activations (1024 px, 128-512 channels, per sample) were what ran out of memory on a 141 GB GPU.
            enable_vae_decoder_checkpointing(pipe.vae)
            if self.discriminator is not None:  # its activations were the largest part left (train/README.md)
                self.discriminator.enable_gradient_checkpointing()
        pipe.prompt_embedding.requires_grad_(not args.freeze_embedding)
        self.model = BaseStageModel(unet, pipe.prompt_embedding, pipe.vae, pipe.scheduler.alphas_cumprod, args,
                                    ea_loss, self.discriminator)
        self.frozen = (pipe.vae,)

    def discriminator_loss(self, discriminator, outputs):
        from fidediff_pipeline.losses import discriminator_loss

        inner = common.unwrap(self.accelerator, discriminator)
        inner.requires_grad_(True)
        return discriminator_loss(discriminator(outputs["_real"]), discriminator(outputs["_fake"]), self.args.gan_loss)

    def validation_pipeline(self):
        from fidediff_pipeline import FideDiffPipeline

        model = common.unwrap(self.accelerator, self.model)
        return FideDiffPipeline(vae=self.pipe.vae, unet=model.unet, scheduler=self.pipe.scheduler,
                                prompt_embedding=model.prompt_embedding, kernel_controlnet=None,
                                default_upscale_factor=self.args.upscale_factor,
                                color_fix_sigma=self.args.color_fix_sigma)

    def export(self, export_dir):
        pipe = self.validation_pipeline()
        trained_unet = pipe.unet
        if self.args.lora_rank > 0:
            # Fuse then unload: an unfused adapter would be saved next to base weights that reload without it.
            # On a copy: the best-validation export happens mid-training, and the trained UNet must keep its adapter.
            pipe.register_modules(unet=copy.deepcopy(pipe.unet))
            pipe.unet.fuse_lora()
            pipe.unet.unload_lora()
        common.save_pipeline(pipe, export_dir)
        if self.args.lora_rank > 0:
            # The same LoRA also on its own, for `pipe.load_lora_weights` on top of the base UNet (a few MB that a
            # Hub repo can ship instead of a fused UNet). Inside the pipeline folder: written atomically with it,
            # and the best-validation export gets its own.
            save_unet_lora(trained_unet, os.path.join(export_dir, LORA_SUBFOLDER))


def main(argv=None):
    args = parse_args(argv)
    accelerator = common.make_accelerator(args)
    common.setup_logging(accelerator)
    stage = BaseStage(args, accelerator)
    return common.run_training(args, accelerator, stage, discriminator_lr=args.discriminator_learning_rate)


if __name__ == "__main__":
    main()
