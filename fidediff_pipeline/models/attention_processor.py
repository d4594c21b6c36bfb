"""Attention for heads wider than flash attention takes: the mid-block attention of SD's VAE (one 512-wide head)."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

# PyTorch's flash-attention kernels take heads of at most 256 channels; wider heads fall to the memory-efficient
# kernel, which is slow at SD's VAE head of 512 (benchmarks/README.md, "NVIDIA H200").
FLASH_MAX_HEAD_DIM = 256


class WideHeadAttnProcessor(AttnProcessor2_0):
    r"""Exact self-attention in query chunks (matmul, softmax, matmul) at inference on CUDA for heads wider
    than ``FLASH_MAX_HEAD_DIM``; diffusers' [`AttnProcessor2_0`] (SDPA) everywhere else (CPU, training, masks).

    SD 2.1's VAE attends over every latent pixel with one head of 512 channels: at d = 4 and 1280x720 that is
    57,600 tokens in the encoder and again in the decoder. SDPA has no flash kernel for such a head and falls back to
    its memory-efficient kernel; two dense matrix products per chunk of queries run on the tensor cores instead, and
    a chunk's ``chunk x tokens`` score matrix (at most ``max_scores`` elements, 256 MiB in bf16 by default) bounds
    the extra memory. Each query's softmax runs over all keys, so the result is the same attention up to rounding
    (tested against SDPA). [`FideDiffPipeline`] sets it on an [`~diffusers.AutoencoderKL`]'s attention;
    ``pipe.vae.set_attn_processor(AttnProcessor2_0())`` restores diffusers' default.

    Args:
        max_scores (`int`): the most attention scores (query x key pairs) computed at once per head and image.
        devices (`tuple[str, ...]`): device types on which the chunked path runs (tests pass ``("cpu",)``).
        wide_head_dim (`int`): heads wider than this take the chunked path (tests pass 0).

    Example:

    ```py
    >>> from diffusers import AutoencoderKL
    >>> from fidediff_pipeline.models.attention_processor import WideHeadAttnProcessor

    >>> vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
    ...                     up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32)
    >>> vae.set_attn_processor(WideHeadAttnProcessor())
    ```
    """

    def __init__(self, max_scores: int = 2**27, devices: tuple[str, ...] = ("cuda",),
                 wide_head_dim: int = FLASH_MAX_HEAD_DIM):
        super().__init__()
        if max_scores < 1:
            raise ValueError(f"max_scores must be a positive number of attention scores, got {max_scores}")
        self.max_scores = int(max_scores)
        self.devices = tuple(devices)
        self.wide_head_dim = int(wide_head_dim)

    def _takes(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states, attention_mask) -> bool:
        """Whether the chunked path applies: plain self-attention of 4-D (image) inputs with a wide head."""
        head_dim = attn.to_q.out_features // attn.heads
        # Not under autograd: backward would keep every chunk's scores, the whole attention matrix.
        return (hidden_states.device.type in self.devices and not torch.is_grad_enabled()
                and hidden_states.ndim == 4 and head_dim > self.wide_head_dim
                and encoder_hidden_states is None and attention_mask is None and attn.spatial_norm is None
                and attn.norm_q is None and attn.norm_k is None)

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        if not self._takes(attn, hidden_states, encoder_hidden_states, attention_mask):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        # The steps of AttnProcessor2_0 for this case, with SDPA replaced by `chunked_attention`.
        residual = hidden_states
        batch, channels, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        hidden_states = chunked_attention(query, key, value, self.max_scores)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def chunked_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, max_scores: int) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for ``[B, heads, tokens, d]`` tensors, in chunks of queries whose score matrix
    has at most ``max_scores`` elements per batch entry and head (SDPA's default scale, no mask)."""
    tokens = key.shape[-2]
    chunk = max(1, min(query.shape[-2], max_scores // tokens))
    # Scaling q first keeps fp16 scores in range (|q . k| over 512 channels can pass fp16's 65504).
    query = query * query.shape[-1] ** -0.5
    key_t = key.transpose(-1, -2)
    out = query.new_empty(*query.shape[:-1], value.shape[-1])
    for start in range(0, query.shape[-2], chunk):
        scores = torch.matmul(query[..., start:start + chunk, :], key_t)
        out[..., start:start + chunk, :] = torch.matmul(scores.softmax(dim=-1), value)
    return out
