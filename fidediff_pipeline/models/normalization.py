"""GroupNorm with its statistics from PyTorch's general reductions, for the large groups of SD's VAE on CUDA."""

from __future__ import annotations

import torch
from torch import nn


class ReductionGroupNorm(nn.GroupNorm):
    r"""[`torch.nn.GroupNorm`] with the same parameters and result, computed another way for large groups on CUDA.

    A profile of the full SD 2.1-base pipeline at 1280x720, d = 4, bf16 on an H200 put ``aten::native_group_norm``
    at 0.356 s of the call's 0.725 s of GPU time, against 0.138 s for every convolution (benchmarks/README.md).
    PyTorch's CUDA GroupNorm reduces each (image, group) pair in one thread block, so one image's 32 groups of up to
    15 million values (the VAE at 2560x1440) keep 32 of an H200's 132 multiprocessors busy. Here the statistics
    come from ``mean`` and ``vector_norm`` with float32 accumulation (PyTorch's general reductions spread a long row
    over many blocks), ``var = E[x^2] - E[x]^2``, and the normalisation and affine transform are one ``addcmul``
    pass; float32 inputs, groups under ``min_group_elements`` values, non-contiguous inputs and other devices take
    ``nn.GroupNorm``'s own path.

    **Opt-in and not yet timed on a GPU** (no device time was left in the session that found the cost): set it with
    [`use_reduction_group_norm`] or ``benchmarks/benchmark_pipeline.py --group-norm reduction``. On the CPU PyTorch's
    own kernel is faster (1.1-7x on 2 cores), so the CPU never takes this path.

    Example:

    ```py
    >>> import torch
    >>> from fidediff_pipeline.models.normalization import ReductionGroupNorm

    >>> norm = ReductionGroupNorm(num_groups=32, num_channels=128)
    >>> norm(torch.randn(1, 128, 64, 64)).shape
    torch.Size([1, 128, 64, 64])
    ```
    """

    devices: tuple[str, ...] = ("cuda",)
    # 16-bit inputs only: E[x^2] - E[x]^2 loses float32 digits as (mean / spread)^2 grows (about 3e-4 of an output
    # at a mean 20 times the spread, 4e-3 at 100 times), below a bf16 output's own rounding but not float32's.
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)
    min_group_elements: int = 2**20

    def _takes(self, x: torch.Tensor) -> bool:
        group_elements = x[0].numel() // self.num_groups if x.ndim > 1 and x.shape[0] else 0
        return (x.device.type in self.devices and x.dtype in self.dtypes and x.is_contiguous()
                and group_elements >= self.min_group_elements)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._takes(x):
            return super().forward(x)
        batch, channels = x.shape[:2]
        groups = x.reshape(batch, self.num_groups, -1)
        mean = groups.mean(dim=-1, dtype=torch.float32)
        mean_square = torch.linalg.vector_norm(groups, dim=-1, dtype=torch.float32).square() / groups.shape[-1]
        rstd = torch.rsqrt((mean_square - mean.square()).clamp_min(0) + self.eps)
        per_group = channels // self.num_groups
        scale = rstd.repeat_interleave(per_group, dim=1)
        shift = -mean.repeat_interleave(per_group, dim=1) * scale
        if self.affine:
            scale = scale * self.weight.float()
            shift = shift * self.weight.float() + self.bias.float()
        spatial = (1,) * (x.ndim - 2)
        return torch.addcmul(shift.view(batch, channels, *spatial).to(x.dtype), x,
                             scale.view(batch, channels, *spatial).to(x.dtype))


def use_reduction_group_norm(model: nn.Module) -> int:
    """Put a [`ReductionGroupNorm`] (sharing the parameters) in place of every plain ``nn.GroupNorm`` in ``model``;
    returns how many. The state dict is unchanged (same names, same tensors)."""
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.GroupNorm]
    for parent, name, child in targets:
        replacement = ReductionGroupNorm(child.num_groups, child.num_channels, child.eps, child.affine, device="meta")
        if child.affine:
            replacement.weight, replacement.bias = child.weight, child.bias
        setattr(parent, name, replacement.train(child.training))
    return len(targets)
