"""Training-only helpers used by the training scripts (``train/``).

:class:`LatentDiscriminator`: the paper's GAN discriminator (a copy of the UNet encoder plus a few convolution blocks,
judging latents). The restoration maths that training and inference share (``restore``, ``encode_latents``,
``predict_original_latents``, ...) are in :mod:`fidediff_pipeline.restoration`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class LatentDiscriminator(nn.Module):
    r"""The paper's GAN discriminator (Sec. 4.1): the UNet's encoder (``conv_in``, time embedding, down blocks and
    mid block, copied with their weights, as in ADD) followed by a few convolution blocks that output a map of
    real/fake logits. It judges latents: ``z_HQ`` (real) versus ``z0_hat`` (fake).

    The encoder needs a timestep and cross-attention states: it uses ``t = 0`` (clean latents) and a fixed
    zero embedding (a buffer, not trained), so the discriminator does not depend on the generator's embedding.
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

