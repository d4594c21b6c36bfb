"""Training-only helpers used by the training scripts (``train/``).

:class:`LatentDiscriminator`: the paper's GAN discriminator (a copy of the UNet encoder plus a few convolution blocks,
judging latents). :func:`enable_vae_decoder_checkpointing`: layer-by-layer checkpointing of the frozen VAE decoder
the image losses backpropagate through. The restoration maths that training and inference share (``restore``,
``encode_latents``, ``predict_original_latents``, ...) are in :mod:`fidediff_pipeline.restoration`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class LatentDiscriminator(nn.Module):
    r"""The paper's GAN discriminator (Sec. 4.1): the UNet's encoder (``conv_in``, time embedding, down blocks and
    mid block, copied with their weights, as in ADD) followed by a few convolution blocks that output a map of
    real/fake logits. It judges latents: ``z_HQ`` (real) versus ``z0_hat`` (fake).

    The encoder needs a timestep and cross-attention states: it uses ``t = 0`` (clean latents) and a fixed
    zero embedding (a buffer, not trained), so the discriminator does not depend on the generator's embedding.

    `enable_gradient_checkpointing` checkpoints the copied blocks as the UNet's own do: with the UNet and the VAE
    decoder checkpointed, the discriminator's activations (kept for the generator's adversarial gradient) were
    the largest part of stage 1's saved activations (train/README.md).
    """

    def __init__(self, unet, head_channels: int = 64, num_head_blocks: int = 2):
        super().__init__()
        self.conv_in = copy.deepcopy(unet.conv_in)
        self.time_proj = copy.deepcopy(unet.time_proj)
        self.time_embedding = copy.deepcopy(unet.time_embedding)
        self.down_blocks = copy.deepcopy(unet.down_blocks)
        self.mid_block = copy.deepcopy(unet.mid_block)
        for module in self.modules():  # the copies must own their parameters (no LoRA layers in D)
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
        in_ch = unet.config.block_out_channels[-1]
        blocks = []
        for _ in range(num_head_blocks):
            blocks += [nn.GroupNorm(min(32, in_ch) if in_ch % 32 == 0 else 8, in_ch), nn.SiLU(),
                       nn.Conv2d(in_ch, head_channels, 3, padding=1)]
            in_ch = head_channels
        blocks += [nn.SiLU(), nn.Conv2d(in_ch, 1, 1)]
        self.head = nn.Sequential(*blocks)
        tokens = 1
        self.register_buffer("context", torch.zeros(1, tokens, unet.config.cross_attention_dim), persistent=False)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the copied blocks' activations in the backward pass instead of keeping them: each block with a
        ``gradient_checkpointing`` switch (diffusers' down, mid and transformer blocks) gets it on, with the same
        non-reentrant ``torch.utils.checkpoint`` diffusers' ``ModelMixin.enable_gradient_checkpointing`` uses."""
        switched = 0
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module._gradient_checkpointing_func = _checkpoint_call
                module.gradient_checkpointing = True
                switched += 1
        if not switched:
            raise ValueError("this discriminator's UNet blocks have no gradient_checkpointing switch to turn on")

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 1, h, w]`` (patch-wise real/fake scores)."""
        b = latents.shape[0]
        t = torch.zeros(b, device=latents.device, dtype=torch.long)
        emb = self.time_embedding(self.time_proj(t).to(latents.dtype))
        context = self.context.to(latents.dtype).expand(b, -1, -1)
        h = self.conv_in(latents)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, _ = block(hidden_states=h, temb=emb)
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                h = self.mid_block(h, emb, encoder_hidden_states=context)
            else:
                h = self.mid_block(h, emb)
        return self.head(h)


def enable_vae_decoder_checkpointing(vae) -> None:
    """Gradient checkpointing for a frozen VAE whose decoder the image losses backpropagate through, one layer at a
    time in the decoder's up blocks.

    diffusers' ``vae.enable_gradient_checkpointing()`` (called here first) checkpoints each of the decoder's up blocks
    whole, so the backward pass recomputes a whole block at once: at d = 4 the last one works at twice the crop's
    size with 128 channels and three ResNet layers, the largest thing alive during the backward pass (SD 2.1-base's
    shapes, 3 samples at 128 px crops, float32: its layers keep 1.97 GiB while recomputed, against 1.4 GiB the rest
    of the step keeps at that point; train/README.md).
    Here each ``UpDecoderBlock2D``'s ResNet layers and upsamplers are checkpointed one by one instead: the block's
    layer inputs are kept, one layer is recomputed at a time. Other blocks (the mid block with its attention,
    AutoencoderTiny's layers) keep diffusers' own checkpointing. Same gradients (tested).
    """
    vae.enable_gradient_checkpointing()
    decoder = getattr(vae, "decoder", None)
    if decoder is not None and getattr(decoder, "gradient_checkpointing", False):
        decoder._gradient_checkpointing_func = _checkpoint_up_block_by_layer


def _checkpoint_up_block_by_layer(block, *args):
    """``UpDecoderBlock2D.forward`` (its ResNet layers with ``temb``, then its upsamplers; diffusers 0.42's) with each
    layer in its own checkpoint; any other block, subclasses included, in one checkpoint, as diffusers does."""
    from diffusers.models.unets.unet_2d_blocks import UpDecoderBlock2D

    if type(block) is not UpDecoderBlock2D:
        return _checkpoint_call(block, *args)
    hidden_states, temb = args[0], (args[1] if len(args) > 1 else None)
    for resnet in block.resnets:
        hidden_states = _checkpoint_call(resnet, hidden_states, temb)
    for upsampler in block.upsamplers or ():
        hidden_states = _checkpoint_call(upsampler, hidden_states)
    return hidden_states


def _checkpoint_call(module, *args):
    # module.__call__, not module.forward: hooks still run, as with diffusers' own checkpointing function
    return checkpoint(module.__call__, *args, use_reentrant=False)
