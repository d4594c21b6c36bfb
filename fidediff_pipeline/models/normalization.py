"""GroupNorm with its statistics from PyTorch's general reductions, for the large groups of SD's VAE on CUDA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ReductionGroupNorm(nn.GroupNorm):
    r"""[`torch.nn.GroupNorm`] with the same parameters and result, computed another way for large groups on CUDA.

    A profile of the full SD 2.1-base pipeline at 1280x720, d = 4, bf16 on an H200 put ``aten::native_group_norm``
    at 0.356 s of the call's 0.725 s of GPU time, against 0.138 s for every convolution (benchmarks/README.md).
    PyTorch's CUDA GroupNorm reduces each (image, group) pair in one thread block, so one image's 32 groups of up to
    15 million values (the VAE at 2560x1440) keep 32 of an H200's 132 multiprocessors busy. Here the statistics
    come from ``mean`` and ``vector_norm`` with float32 accumulation (PyTorch's general reductions spread a long row
    over many blocks), ``var = E[x^2] - E[x]^2``, and the normalisation and affine transform are one inference-mode
    ``batch_norm`` pass with those statistics as each channel's running mean and variance (float32 statistics and
    parameters, float32 arithmetic: as accurate as ``nn.GroupNorm`` on a 16-bit input, also when the mean is many
    times the spread, where a 16-bit scale and shift were not). Float32 inputs, groups under
    ``min_group_elements`` values, non-contiguous inputs, other devices and anything autograd records take
    ``nn.GroupNorm``'s own path (``batch_norm`` does not differentiate through its running statistics).

    **Opt-in and not yet timed on a GPU** (no device was lent since the profile that found the cost): set it with
    [`use_reduction_group_norm`] or ``benchmarks/benchmark_pipeline.py --group-norm reduction``;
    ``benchmarks/run_gpu_issue15.sh`` times it against ``nn.GroupNorm`` per shape and in the pipeline, and checks the
    outputs against float32. ``min_group_elements`` (2**17) is a guess until then. On the CPU PyTorch's own kernel is
    faster (1.1-7x on 2 cores), so the CPU never takes this path.

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
    min_group_elements: int = 2**17

    def _takes(self, x: torch.Tensor) -> bool:
        group_elements = x[0].numel() // self.num_groups if x.ndim > 1 and x.shape[0] else 0
        records_gradients = torch.is_grad_enabled() and (
            x.requires_grad or (self.affine and (self.weight.requires_grad or self.bias.requires_grad)))
        return (x.device.type in self.devices and x.dtype in self.dtypes and x.is_contiguous()
                and group_elements >= self.min_group_elements and not records_gradients)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._takes(x):
            return super().forward(x)
        batch, channels = x.shape[:2]
        groups = x.reshape(batch, self.num_groups, -1)
        mean = groups.mean(dim=-1, dtype=torch.float32)
        mean_square = torch.linalg.vector_norm(groups, dim=-1, dtype=torch.float32).square() / groups.shape[-1]
        variance = (mean_square - mean.square()).clamp_min(0)
        per_group = channels // self.num_groups
        # every (image, channel) pair one batch-norm channel: its group's statistics, the channel's weight and bias
        weight = self.weight.float().repeat(batch) if self.affine else None
        bias = self.bias.float().repeat(batch) if self.affine else None
        out = F.batch_norm(x.reshape(1, batch * channels, -1), mean.repeat_interleave(per_group, dim=1).flatten(),
                           variance.repeat_interleave(per_group, dim=1).flatten(), weight, bias,
                           training=False, eps=self.eps)
        return out.view(x.shape)


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
