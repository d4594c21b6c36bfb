"""The learnable text embedding ``c`` of FideDiff (paper Sec. 4.1): no tokenizer or text encoder at inference."""

from __future__ import annotations

import torch
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class FideDiffPromptEmbedding(ModelMixin, ConfigMixin):
    r"""
    A learned prompt embedding of shape ``[1, num_tokens, embedding_dim]`` (``[1, 77, 1024]`` for SD 2.1).

    It is a model of its own, not a raw tensor, so that ``save_pretrained`` / ``from_pretrained`` round-trip it
    as safetensors like every other component.

    Example:
        >>> emb = FideDiffPromptEmbedding(num_tokens=77, embedding_dim=1024)
        >>> emb(batch_size=2).shape
        torch.Size([2, 77, 1024])
    """

    @register_to_config
    def __init__(self, num_tokens: int = 77, embedding_dim: int = 1024):
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(1, num_tokens, embedding_dim))

    @torch.no_grad()
    def set_embedding(self, value: torch.Tensor) -> None:
        """Initialise from a text encoder's output (e.g. the empty prompt), shape ``[1, tokens, dim]``."""
        if tuple(value.shape) != tuple(self.embedding.shape):
            raise ValueError(f"embedding must have shape {tuple(self.embedding.shape)}; got {tuple(value.shape)}")
        self.embedding.copy_(value.to(self.embedding.dtype))

    def forward(self, batch_size: int = 1) -> torch.Tensor:
        # Going through forward (not reading .embedding) lets accelerate's offload hooks move the weights.
        return self.embedding.expand(batch_size, -1, -1)
