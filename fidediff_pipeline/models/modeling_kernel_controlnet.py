"""Kernel ControlNet of FideDiff (paper Sec. 4.2): kernel estimator M, t-regressor T, filter F, ControlNet C."""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.controlnets.controlnet import ControlNetModel
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput


@dataclass
class KernelControlNetOutput(BaseOutput):
    """
    Output of [`KernelControlNetModel`].

    Args:
        kernels (`torch.Tensor` of shape `[B, m*m, H / s, W / s]`): blur kernels in image space (non-negative,
            each sums to 1), in the convention of `fidediff_pipeline.kernel_ops`, one per pixel (``s = 1``, the
            paper's) or one per ``s x s`` block of pixels with the model's ``kernel_stride = s`` (rounded up;
            `fidediff_pipeline.kernel_ops.expand_kernel_map` spreads them back to every pixel).
        predicted_timestep (`torch.Tensor` of shape `[B]`, or `None`): the t-regressor's blur level, in diffusion
            timesteps; `None` when the caller passed precomputed ``kernels`` (it already has their estimate).
        down_block_res_samples (`tuple` of `torch.Tensor`, or `None`): ControlNet residuals for the UNet's down blocks.
        mid_block_res_sample (`torch.Tensor`, or `None`): ControlNet residual for the UNet's mid block.
    """

    kernels: torch.Tensor
    predicted_timestep: torch.Tensor | None = None
    down_block_res_samples: tuple[torch.Tensor, ...] | None = None
    mid_block_res_sample: torch.Tensor | None = None


_NORM_GROUPS = 8


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(_NORM_GROUPS, channels), num_channels=channels)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def check_kernel_controlnet_config(kernel_size, estimator_channels, regressor_channels, kernel_embedding_channels,
                                   num_train_timesteps, kernel_stride: int = 1,
                                   estimator_autocorrelation_radius: int = 0,
                                   estimator_autocorrelation_window: int = 16,
                                   kernel_input_scale: float = 1.0, estimator_global_context: bool = False,
                                   regressor_global_context_radius: int = 0) -> None:
    """Refuse a configuration that cannot be built, in one line that names the setting (not deep in GroupNorm).

    The kernel estimator normalises each level and each skip join (two neighbouring levels concatenated) with
    GroupNorm of ``min(8, channels)`` groups, so those channel counts must be below 8 or multiples of 8.

    Example:
        >>> check_kernel_controlnet_config(9, (4, 8), 64, 64, 1000)
        Traceback (most recent call last):
        ...
        ValueError: estimator_channels=(4, 8): the skip join of levels 0 and 1 has 12 channels, which GroupNorm with 8 groups cannot split; use levels whose neighbouring sums are multiples of 8, e.g. (16, 32, 64)
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be a positive odd number; got {kernel_size!r}")
    channels = tuple(estimator_channels) if isinstance(estimator_channels, (list, tuple)) else None
    if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
        raise ValueError(f"estimator_channels must be a non-empty list of positive ints; got {estimator_channels!r}")
    norms = [(f"level {i}", c) for i, c in enumerate(channels)]
    norms += [(f"the skip join of levels {i} and {i + 1}", channels[i] + channels[i + 1]) for i in range(len(channels) - 1)]
    for where, count in norms:
        if count % min(_NORM_GROUPS, count):
            raise ValueError(
                f"estimator_channels={channels}: {where} has {count} channels, which GroupNorm with {_NORM_GROUPS} "
                "groups cannot split; use levels whose neighbouring sums are multiples of 8, e.g. (16, 32, 64)"
            )
    for name, value in (("regressor_channels", regressor_channels), ("kernel_embedding_channels",
                        kernel_embedding_channels), ("num_train_timesteps", num_train_timesteps)):
        _check_positive_int(name, value)
    _check_positive_int("kernel_stride", kernel_stride)
    radius = estimator_autocorrelation_radius
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"estimator_autocorrelation_radius must be 0 (off) or a positive int; got {radius!r}")
    _check_positive_int("estimator_autocorrelation_window", estimator_autocorrelation_window)
    if not isinstance(estimator_global_context, bool):
        raise ValueError(f"estimator_global_context must be True or False; got {estimator_global_context!r}")
    if estimator_global_context and radius == 0:
        raise ValueError("estimator_global_context reads the whole image's gradient autocorrelations: it needs "
                         "estimator_autocorrelation_radius > 0 (got 0)")
    context = regressor_global_context_radius
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ValueError(f"regressor_global_context_radius must be 0 (off) or a positive int (pixels); got {context!r}")
    if (isinstance(kernel_input_scale, bool) or not isinstance(kernel_input_scale, (int, float))
            or not math.isfinite(kernel_input_scale) or kernel_input_scale <= 0):
        raise ValueError(f"kernel_input_scale must be a positive number (1.0: the kernel map as M gives it); "
                         f"got {kernel_input_scale!r}")
    coarsest = 2 ** (len(channels) - 1)
    if kernel_stride & (kernel_stride - 1) or kernel_stride > coarsest:
        raise ValueError(f"kernel_stride must be a power of 2 up to {coarsest} (the estimator's coarsest level with "
                         f"estimator_channels={channels}); got {kernel_stride}")


class _ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def polar_offsets(distances, directions: int) -> list[tuple[int, int]]:
    """Pixel offsets ``(dy, dx)`` at ``directions`` angles over half a turn and the given distances, rounded to whole
    pixels, without repeats, ``(0, 0)`` or mirror images (the other half turn mirrors the first)."""
    offsets = []
    for distance in distances:
        for k in range(directions):
            angle = math.pi * k / directions
            offset = (round(distance * math.sin(angle)), round(distance * math.cos(angle)))
            if offset != (0, 0) and offset not in offsets and (-offset[0], -offset[1]) not in offsets:
                offsets.append(offset)
    return offsets


def whole_image_gradient_autocorrelation(image: torch.Tensor, offsets) -> torch.Tensor:
    """``image`` ``[B, C, H, W]`` -> ``[B, len(offsets)]`` (float32): for each offset ``d``, the sum over the image of
    ``g(p) . g(p + d)`` (the grey image's gradient vectors; pairs leaving the image count as zero) divided by the
    sum at offset 0; the same ratios as `GradientAutocorrelation`'s ``with_whole_image``, for any number of offsets
    at the cost of two FFTs (the correlation theorem, on a grid padded so that no offset wraps around)."""
    h, w = image.shape[-2:]
    reach_y = max((abs(dy) for dy, _ in offsets), default=0)
    reach_x = max((abs(dx) for _, dx in offsets), default=0)
    grey = image.float().mean(dim=1)
    grads = torch.stack([F.pad(grey[..., :, 1:] - grey[..., :, :-1], (0, 1, 0, 0)),
                         F.pad(grey[..., 1:, :] - grey[..., :-1, :], (0, 0, 0, 1))], dim=1)  # [B, 2, H, W]
    size = (h + reach_y, w + reach_x)
    spectrum = torch.fft.rfft2(grads, s=size)  # float32 agrees with float64 to ~1e-8 here, at a third of the time
    correlation = torch.fft.irfft2(spectrum.abs().square(), s=size).sum(dim=1)  # [B, H + ry, W + rx]
    dy = torch.tensor([o[0] for o in offsets], dtype=torch.long, device=correlation.device) % size[0]
    dx = torch.tensor([o[1] for o in offsets], dtype=torch.long, device=correlation.device) % size[1]
    return correlation[:, dy, dx] / (correlation[:, :1, 0] + 1e-8)


class GradientAutocorrelation(nn.Module):
    """Fixed, parameter-free features for ``M``: the local autocorrelation of the image's gradients.

    Not in the paper. A blurry image's gradients are the sharp image's gradients (close to white noise for natural
    images) convolved with the kernel, so their autocorrelation over a window is close to the kernel's own
    autocorrelation: its direction and extent show up as a ridge of high correlation along the blur (a classic
    cue of blind blur identification). Measured before adding it: over 96 px training crops, the principal axis
    of the whole-crop autocorrelation alone is within 14 degrees of the true kernel's (median), while an
    estimator that had to discover the cue from pixels predicted one average kernel after 3000 steps.

    For every offset ``(dy, dx)`` of a polar set over half a turn (the other half mirrors it), the product
    ``g(p) . g(p + d)`` of the grey image's gradient vectors is averaged over ``window x window`` pixels around each
    block of ``stride`` pixels and divided by the same average at offset 0 (contrast-invariant). Returns
    ``[B, num_offsets, ceil(H / stride), ceil(W / stride)]``; no gradient is needed through it. With
    ``with_whole_image=True`` it also returns the same ratios over the whole image, ``[B, num_offsets]``.
    """

    DISTANCES = (1, 2, 3, 4, 6, 8, 11, 14, 18, 23)

    def __init__(self, radius: int, stride: int, window: int = 16, directions: int = 8):
        super().__init__()
        self.radius, self.stride, self.window = radius, stride, max(window, stride)
        # A polar set (`directions` angles over half a turn, distances up to `radius` spaced wider further out),
        # rounded to whole pixels: a 20 px blur needs offsets to ~20 px, and a full half window would be 4x as many.
        self.offsets = polar_offsets([d for d in self.DISTANCES if d <= radius], directions)

    @property
    def num_features(self) -> int:
        return len(self.offsets)

    def forward(self, image: torch.Tensor, with_whole_image: bool = False):
        """``image`` ``[B, C, H, W]`` -> ``[B, num_features, ceil(H / stride), ceil(W / stride)]`` (float32), and
        with ``with_whole_image`` also ``[B, num_features]``: the ratios of the whole image's sums."""
        h, w = image.shape[-2:]
        s, r, cells = self.stride, self.radius, self.window // self.stride
        grey = image.float().mean(dim=1, keepdim=True)
        grads = torch.cat([F.pad(grey[..., :, 1:] - grey[..., :, :-1], (0, 1, 0, 0)),
                           F.pad(grey[..., 1:, :] - grey[..., :-1, :], (0, 0, 0, 1))], dim=1)  # [B, 2, H, W]
        out_h, out_w = -(-h // s), -(-w // s)
        # Zeros outside the image (no gradient there): up to a whole block grid, plus r rows below and r columns
        # either side for the offsets.
        padded = F.pad(grads, (r, out_w * s - w + r, 0, out_h * s - h + r))
        rows, cols = out_h * s, out_w * s
        centre = padded[..., :rows, r : r + cols]
        # Per block: the mean of each product over the block's pixels (cheap, non-overlapping) ...
        def block_mean(moved: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d((centre * moved).sum(dim=1, keepdim=True), s)

        blocks = torch.cat([block_mean(centre)] + [block_mean(padded[..., dy : dy + rows, r + dx : r + dx + cols])
                                                   for dy, dx in self.offsets], dim=1)
        # The padding adds zeros to every sum alike, so the ratio of the means over all blocks is the image's own.
        whole = blocks.mean(dim=(-2, -1)) if with_whole_image else None
        # ... then over `cells x cells` blocks around it: a window of about `window` pixels, for a steadier estimate.
        if cells > 1:
            blocks = F.avg_pool2d(blocks, cells, stride=1, padding=cells // 2, count_include_pad=False)
            blocks = blocks[..., :out_h, :out_w]
        local = blocks[:, 1:] / (blocks[:, :1] + 1e-8)
        if whole is None:
            return local
        return local, whole[:, 1:] / (whole[:, :1] + 1e-8)


class KernelEstimator(nn.Module):
    """M: an image-space convolutional UNet that predicts an ``m x m`` kernel for every pixel.

    The kernels go through a softmax over the ``m*m`` taps, so they are non-negative and sum to 1. The output
    layer starts as a near-identity kernel (a strong bias on the centre tap) so that early training is stable.
    With ``output_stride = s > 1`` the decoder stops ``log2(s)`` levels early: one kernel per ``s x s`` block
    (blur varies slowly over a photo; the ``m*m``-channel maps at full resolution cost more than the rest of M).

    With ``global_context`` (not in the paper; needs the autocorrelation features) every position also reads the
    gradient autocorrelations of the whole input: how long a blur is shows far more clearly over a large area than
    in the ~50 px each position sees (`train/probe_kernel_cue.py --length`), and camera shake blurs a whole photo
    alike. The branch starts at zero, so adding it to a trained ``M`` leaves its kernels unchanged.
    """

    def __init__(self, kernel_size: int, block_channels: tuple[int, ...] = (32, 64, 128), in_channels: int = 3,
                 output_stride: int = 1, autocorrelation_radius: int = 0, autocorrelation_window: int = 16,
                 global_context: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.output_stride = output_stride
        out_level = output_stride.bit_length() - 1
        self.conv_in = nn.Conv2d(in_channels, block_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i, ch in enumerate(block_channels):
            prev = block_channels[max(i - 1, 0)]
            self.down_blocks.append(_ResBlock(prev, ch))
            is_last = i == len(block_channels) - 1
            self.downsamplers.append(nn.Identity() if is_last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid_block = _ResBlock(block_channels[-1], block_channels[-1])
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(out_level, len(block_channels) - 1)):
            self.up_blocks.append(_ResBlock(block_channels[i + 1] + block_channels[i], block_channels[i]))
        # Not in the paper (0 = off): gradient autocorrelation features joined at the output level.
        self.autocorrelation = None
        if autocorrelation_radius > 0:
            self.autocorrelation = GradientAutocorrelation(autocorrelation_radius, output_stride, autocorrelation_window)
            channels = block_channels[out_level]
            self.autocorrelation_in = nn.Conv2d(self.autocorrelation.num_features, channels, 1)
            self.autocorrelation_block = _ResBlock(2 * channels, channels)
        self.global_context_in = None
        if global_context:
            if self.autocorrelation is None:
                raise ValueError("global_context needs the autocorrelation features (autocorrelation_radius > 0)")
            self.global_context_in = nn.Linear(self.autocorrelation.num_features, block_channels[out_level])
            nn.init.zeros_(self.global_context_in.weight)
            nn.init.zeros_(self.global_context_in.bias)
        self.norm_out = _group_norm(block_channels[out_level])
        # 1x1 at a coarse output: each position already sees ~100 px, and a 3x3 conv into m*m channels would be
        # most of M's cost.
        out_kernel = 3 if output_stride == 1 else 1
        self.conv_out = nn.Conv2d(block_channels[out_level], kernel_size * kernel_size, out_kernel,
                                  padding=out_kernel // 2)
        nn.init.normal_(self.conv_out.weight, std=1e-3)
        with torch.no_grad():
            self.conv_out.bias.zero_()
            self.conv_out.bias[(kernel_size * kernel_size) // 2] = 4.0
        self.downscale = 2 ** (len(block_channels) - 1)
        # diffusers' switch: KernelControlNetModel.enable_gradient_checkpointing() turns it on here too, and then each
        # residual block is recomputed in the backward pass (its activations at image resolution are M's memory)
        self.gradient_checkpointing = False

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, x)
        return block(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` ``[B, 3, H, W]`` in ``[-1, 1]`` -> kernels ``[B, m*m, ceil(H / s), ceil(W / s)]``."""
        h, w = image.shape[-2:]
        pad_h, pad_w = (-h) % self.downscale, (-w) % self.downscale
        x = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate") if (pad_h or pad_w) else image
        x = self.conv_in(x)
        skips = []
        for block, down in zip(self.down_blocks, self.downsamplers):
            x = self._run_block(block, x)
            skips.append(x)
            x = down(x)
        x = self._run_block(self.mid_block, x)
        skips.pop()  # the deepest level feeds the mid block directly
        for block in self.up_blocks:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = self._run_block(block, torch.cat([x, skip], dim=1))
        s = self.output_stride
        if self.autocorrelation is not None:
            if self.global_context_in is None:
                local, whole = self.autocorrelation(image), None
            else:
                local, whole = self.autocorrelation(image, with_whole_image=True)
            features = self.autocorrelation_in(local.to(x.dtype))
            if whole is not None:
                features = features + self.global_context_in(whole.to(x.dtype))[..., None, None]
            x = x[..., : features.shape[-2], : features.shape[-1]]
            x = self._run_block(self.autocorrelation_block, torch.cat([x, features], dim=1))
        logits = self.conv_out(F.silu(self.norm_out(x)))[..., : -(-h // s), : -(-w // s)]
        return torch.softmax(logits.float(), dim=1).to(image.dtype)


class TimestepRegressor(nn.Module):
    """T: regresses the blur level ``t`` from the kernel map (longer, more complex kernels mean larger ``t``).

    Returns ``t`` in diffusion timesteps, in ``(0, num_train_timesteps)`` through a sigmoid.

    With ``global_context_radius = r > 0`` (not in the paper) T also reads the gradient autocorrelations of its
    whole input image at every offset up to ``r`` px (`whole_image_gradient_autocorrelation`, 16 directions): how
    long a blur is shows over a whole photo far better than in the kernels M estimates from ~50 px each
    (`train/probe_timestep_cue.py`). The branch is added to the pooled kernel features and starts at zero, so
    adding it to a trained T leaves its t unchanged until it is trained.
    """

    GLOBAL_CONTEXT_DIRECTIONS = 16

    def __init__(self, kernel_channels: int, hidden_channels: int = 64, num_train_timesteps: int = 1000,
                 global_context_radius: int = 0):
        super().__init__()
        self.num_train_timesteps = num_train_timesteps
        self.features = nn.Sequential(
            nn.Conv2d(kernel_channels, hidden_channels, 1),
            nn.SiLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, stride=2, padding=1),
            nn.SiLU(),
        )
        self.head = nn.Sequential(nn.Linear(hidden_channels, hidden_channels), nn.SiLU(), nn.Linear(hidden_channels, 1))
        self.global_context_offsets, self.global_context_in = [], None
        if global_context_radius > 0:
            self.global_context_offsets = polar_offsets(range(1, global_context_radius + 1),
                                                        self.GLOBAL_CONTEXT_DIRECTIONS)
            self.global_context_in = nn.Sequential(
                nn.Linear(len(self.global_context_offsets), 2 * hidden_channels), nn.SiLU(),
                nn.Linear(2 * hidden_channels, hidden_channels))
            nn.init.zeros_(self.global_context_in[-1].weight)
            nn.init.zeros_(self.global_context_in[-1].bias)

    def forward(self, kernels: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """``kernels`` ``[B, m*m, h, w]`` (and, with the whole-image branch, the ``image`` ``[B, 3, H, W]`` they were
        estimated from) -> ``t`` ``[B]``."""
        pooled = self.features(kernels).mean(dim=(-2, -1))
        if self.global_context_in is not None:
            if image is None:
                raise ValueError("this t-regressor reads the whole image too (global_context_radius > 0): pass the "
                                 "image the kernels were estimated from")
            whole = whole_image_gradient_autocorrelation(image, self.global_context_offsets)
            pooled = pooled + self.global_context_in(whole.to(pooled.dtype))
        return torch.sigmoid(self.head(pooled).squeeze(-1).float()) * self.num_train_timesteps


class KernelFilterModule(nn.Module):
    r"""F: injects the kernel map into the ControlNet input with the paper's filter equations

    z_in2 = Conv(z_in1),  W = Conv(Cat(k_in, z_in2)),  O = W * z_in2 (element-wise),  z_out = z_in1 + Z(O)

    where ``z_in1 = Conv(z_t)`` is the ControlNet's own ``conv_in``, ``k_in`` the kernel map embedded and resized
    to the latent grid, and ``Z`` a zero-initialised convolution. This module returns ``Z(O)``; the ControlNet
    adds it to ``z_in1`` (its conditioning path), which makes ``z_out``.

    ``input_scale`` multiplies the kernel map before the embedding (1 in the paper and by default). Each
    kernel's ``m * m`` taps sum to 1, so a tap is ~``1 / m**2``: fed as is, the embedding's first convolution
    starts close to its bias alone, and under Adam (a step of about the learning rate per weight) its output moves
    by ``lr * sum(taps)``, ``m**2`` times slower than for inputs of order one; ``input_scale = m**2`` makes a flat
    kernel read 1 per tap. Measured on the tiny model (m = 19, round 6 of ``train/make_tiny.py``, same start and
    steps): trained with scale 1, F's output changed by 7e-6 (against 0.01) when the kernels were replaced by zeros;
    with m**2, by 0.003 (against 0.006). But the restored images did not depend on the kernels either way (18 whole
    held-out images at the true t: the same PSNR within 0.003 dB with M's kernels, the true kernel or a point) and
    the gain was the same (36 whole held-out images, t-prediction: +1.59 dB with m**2, +1.60 with 1). Trained on
    the TRUE kernels with m**2 (``train_kcn.py --controlnet_kernels true``, 600 steps), the ControlNet does use
    them: +1.79 dB with the true kernel, +0.79 with a point; fed half of its crops their true kernel and half M's
    (``--controlnet_kernels mix``), it uses M's too, and the bundled checkpoint since round 7 is trained that way
    with m**2 (``docs/tiny_results.md``). The presets' new ControlNets keep the paper's 1; ``train/make_tiny.py``
    sets m**2 on stage 3's start.
    """

    def __init__(self, kernel_channels: int, latent_feature_channels: int, embedding_channels: int = 64,
                 kernel_stride: int = 1, input_scale: float = 1.0):
        super().__init__()
        self.input_scale = float(input_scale)
        # Two 2x reductions for a per-pixel map (s = 1); a coarser map (s = 2, 4) is already that small.
        stride_1, stride_2 = (2 if kernel_stride < 4 else 1), (2 if kernel_stride < 2 else 1)
        self.kernel_embedding = nn.Sequential(
            nn.Conv2d(kernel_channels, embedding_channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(embedding_channels, embedding_channels, 3, stride=stride_1, padding=1),
            nn.SiLU(),
            nn.Conv2d(embedding_channels, embedding_channels, 3, stride=stride_2, padding=1),
            nn.SiLU(),
            nn.Conv2d(embedding_channels, latent_feature_channels, 3, padding=1),
        )
        self.conv_z = nn.Conv2d(latent_feature_channels, latent_feature_channels, 3, padding=1)
        self.conv_weight = nn.Conv2d(2 * latent_feature_channels, latent_feature_channels, 3, padding=1)
        self.zero_conv = nn.Conv2d(latent_feature_channels, latent_feature_channels, 1)
        nn.init.zeros_(self.zero_conv.weight)
        nn.init.zeros_(self.zero_conv.bias)

    def embed_kernels(self, kernels: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        k_in = self.kernel_embedding(kernels * self.input_scale if self.input_scale != 1.0 else kernels)
        if tuple(k_in.shape[-2:]) == tuple(latent_size):
            return k_in
        # area when shrinking (d = 8 path) keeps every pixel's kernel in the average; bilinear when growing.
        mode = "area" if k_in.shape[-1] > latent_size[1] else "bilinear"
        return F.interpolate(k_in, size=latent_size, mode=mode)

    def forward(self, z_in1: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        k_in = self.embed_kernels(kernels, tuple(z_in1.shape[-2:]))
        z_in2 = self.conv_z(z_in1)
        weight = self.conv_weight(torch.cat([k_in, z_in2], dim=1))
        return self.zero_conv(weight * z_in2)


class KernelControlNetModel(ModelMixin, AttentionMixin, ConfigMixin):
    r"""
    FideDiff's Kernel ControlNet: kernel estimator ``M``, t-regressor ``T``, filter module ``F`` and a ControlNet
    ``C`` copied from the UNet's encoder, in one component.

    A fresh model leaves the base UNet's output unchanged: the ControlNet's output convolutions and ``F``'s last
    convolution start at zero. The attention API of diffusers models (``attn_processors``, ``set_attn_processor``,
    ``set_default_attn_processor``, ``set_attention_slice``) reaches the ControlNet's attention layers, so
    ``pipe.enable_attention_slicing()`` and processor swaps on the pipeline cover them too. The configuration is
    checked at construction (`check_kernel_controlnet_config`).

    Args:
        controlnet_config (`dict`): config of the inner diffusers `ControlNetModel` (made by `from_unet`).
        kernel_size (`int`): ``m``, the side of each per-pixel kernel (odd).
        estimator_channels (`tuple[int]`): channels of ``M``'s levels.
        regressor_channels (`int`): hidden width of ``T``.
        kernel_embedding_channels (`int`): hidden width of ``F``'s kernel embedding.
        num_train_timesteps (`int`): range of ``T``'s output.
        kernel_stride (`int`): 1 (the paper's, one kernel per pixel) or a power of 2 ``s``: one kernel per
            ``s x s`` block, estimated at ``M``'s level ``log2(s)`` (the tiny preset's 4: the full-resolution
            ``m*m`` maps were most of a CPU's time).
        estimator_autocorrelation_radius (`int`): 0 (the paper's ``M``, default) or the largest offset in pixels
            of the gradient-autocorrelation features ``M`` also reads (`GradientAutocorrelation`; not in the paper).
        estimator_autocorrelation_window (`int`): side in pixels of the window those features are averaged over
            (16 by default; configs saved before it existed used 16).
        kernel_input_scale (`float`): multiplier of the kernel map fed to ``F``'s embedding (`KernelFilterModule`):
            1.0 (the paper's; the default, and configs saved before it existed) or e.g. ``m**2`` (not in the paper),
            which brings per-pixel kernels, whose taps sum to 1, to inputs of order one.
        estimator_global_context (`bool`): False (the default, and configs saved before it existed) or True (not
            in the paper): ``M`` also reads the gradient autocorrelations of its whole input
            (`KernelEstimator`'s ``global_context``); needs ``estimator_autocorrelation_radius > 0``.
        regressor_global_context_radius (`int`): 0 (the paper's T, which reads the kernels alone; the default, and
            configs saved before it existed) or the largest offset in pixels of the whole-image gradient
            autocorrelations ``T`` also reads (`TimestepRegressor`'s ``global_context_radius``; not in the paper).

    Example:
        >>> from diffusers import UNet2DConditionModel
        >>> from fidediff_pipeline.presets import tiny_unet_config
        >>> unet = UNet2DConditionModel(**tiny_unet_config())
        >>> kcn = KernelControlNetModel.from_unet(unet, kernel_size=5)
        >>> out = kcn(image=torch.zeros(1, 3, 32, 32))
        >>> out.kernels.shape, out.predicted_timestep.shape
        (torch.Size([1, 25, 32, 32]), torch.Size([1]))
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        controlnet_config: dict,
        kernel_size: int = 9,
        estimator_channels: tuple[int, ...] = (32, 64, 128),
        regressor_channels: int = 64,
        kernel_embedding_channels: int = 64,
        num_train_timesteps: int = 1000,
        kernel_stride: int = 1,
        estimator_autocorrelation_radius: int = 0,
        estimator_autocorrelation_window: int = 16,
        kernel_input_scale: float = 1.0,
        estimator_global_context: bool = False,
        regressor_global_context_radius: int = 0,
    ):
        super().__init__()
        check_kernel_controlnet_config(kernel_size, estimator_channels, regressor_channels, kernel_embedding_channels,
                                       num_train_timesteps, kernel_stride, estimator_autocorrelation_radius,
                                       estimator_autocorrelation_window, kernel_input_scale, estimator_global_context,
                                       regressor_global_context_radius)
        kernel_channels = kernel_size * kernel_size
        self.controlnet = ControlNetModel.from_config(controlnet_config)
        latent_feature_channels = self.controlnet.conv_in.out_channels
        # F replaces ControlNet's usual image-conditioning embedding: its output is added to conv_in(z_t) as is.
        self.controlnet.controlnet_cond_embedding = nn.Identity()
        self.kernel_estimator = KernelEstimator(kernel_size, tuple(estimator_channels), output_stride=kernel_stride,
                                                autocorrelation_radius=estimator_autocorrelation_radius,
                                                autocorrelation_window=estimator_autocorrelation_window,
                                                global_context=estimator_global_context)
        self.timestep_regressor = TimestepRegressor(kernel_channels, regressor_channels, num_train_timesteps,
                                                    regressor_global_context_radius)
        self.kernel_filter = KernelFilterModule(kernel_channels, latent_feature_channels, kernel_embedding_channels,
                                                kernel_stride, kernel_input_scale)

    @classmethod
    def from_unet(cls, unet, kernel_size: int = 9, load_weights_from_unet: bool = True, **kwargs):
        """Create a Kernel ControlNet whose ControlNet ``C`` copies the UNet's encoder (like `ControlNetModel.from_unet`)."""
        latent_feature_channels = unet.config.block_out_channels[0]
        controlnet = ControlNetModel.from_unet(
            unet,
            conditioning_embedding_out_channels=(16,),
            conditioning_channels=latent_feature_channels,
            load_weights_from_unet=load_weights_from_unet,
        )
        controlnet_config = {k: v for k, v in controlnet.config.items() if not k.startswith("_")}
        controlnet_config = {k: list(v) if isinstance(v, tuple) else v for k, v in controlnet_config.items()}
        model = cls(controlnet_config=controlnet_config, kernel_size=kernel_size, **kwargs)
        state = {k: v for k, v in controlnet.state_dict().items() if not k.startswith("controlnet_cond_embedding.")}
        model.controlnet.load_state_dict(state, strict=True)
        return model if unet.dtype == torch.float32 else model.to(dtype=unet.dtype)

    def with_estimator_global_context(self) -> "KernelControlNetModel":
        """This model with ``M``'s whole-image branch added (``estimator_global_context=True``), every other weight
        copied. The branch starts at zero, so the new model's outputs equal this one's until it is trained (the
        model itself if it already has the branch)."""
        if self.config.get("estimator_global_context", False):
            return self
        return self._rebuilt_with({"estimator_global_context": True}, "kernel_estimator.global_context_in.")

    def with_regressor_global_context(self, radius: int) -> "KernelControlNetModel":
        """This model with ``T``'s whole-image branch added (``regressor_global_context_radius=radius``), every other
        weight copied. The branch starts at zero, so the new model's outputs equal this one's until it is trained (the
        model itself if it already has a branch of that radius)."""
        if self.config.get("regressor_global_context_radius", 0) == radius:
            return self
        return self._rebuilt_with({"regressor_global_context_radius": radius}, "timestep_regressor.global_context_in.")

    def _rebuilt_with(self, changes: dict, branch_prefix: str) -> "KernelControlNetModel":
        """A new model with ``changes`` to this one's config and every weight copied except those of the branch under
        ``branch_prefix`` (which the new model builds afresh: zero-started, or absent), on this model's device and
        dtype."""
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        model = type(self)(**{**config, **changes})
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(branch_prefix)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith(branch_prefix) for k in missing), missing
        return model.to(self.device) if self.dtype == torch.float32 else model.to(device=self.device, dtype=self.dtype)

    @property
    def kernel_size(self) -> int:
        return self.config.kernel_size

    @property
    def kernel_stride(self) -> int:
        """Pixels per estimated kernel along each axis (1: one per pixel; configs saved before it existed: 1)."""
        return self.config.get("kernel_stride", 1)

    # attn_processors, set_attn_processor and fuse_qkv_projections come from AttentionMixin, which walks every
    # attention layer (all of them sit in the inner ControlNet); these two need the ControlNet's own logic.
    def set_default_attn_processor(self) -> None:
        """Give every attention layer diffusers' default processor (as `ControlNetModel.set_default_attn_processor`)."""
        self.controlnet.set_default_attn_processor()

    def set_attention_slice(self, slice_size: str | int | list[int]) -> None:
        """Sliced attention in the ControlNet (``"auto"``, ``"max"`` or an int); `pipe.enable_attention_slicing` calls it."""
        self.controlnet.set_attention_slice(slice_size)

    def forward(
        self,
        image: torch.Tensor | None = None,
        sample: torch.Tensor | None = None,
        timestep: torch.Tensor | int | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        kernels: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        return_dict: bool = True,
    ):
        r"""
        Estimate kernels and ``t`` from ``image`` and, when ``sample`` is given, the ControlNet residuals.

        Args:
            image (`torch.Tensor` `[B, 3, H, W]` in `[-1, 1]`): the blurry image (image space, not upsampled).
                Not needed when ``kernels`` are passed.
            sample (`torch.Tensor` `[B, C, h, w]`): the blurry latent ``z_t``; omit to only estimate kernels and t.
            timestep: the diffusion timestep used for ``sample``.
            encoder_hidden_states (`torch.Tensor`): the learned prompt embedding.
            kernels (`torch.Tensor` `[B, m*m, H', W']`): precomputed kernels (e.g. a tile's crop, at this model's
                ``kernel_stride``); they cover the same region as ``sample``.
            conditioning_scale (`float`): multiplier of the residuals.
        """
        predicted_timestep = None
        if kernels is None:
            if image is None:
                raise ValueError("KernelControlNetModel needs `image` (to estimate kernels) or `kernels`")
            kernels = self.kernel_estimator(image)
            # Only for freshly estimated kernels: a caller passing kernels in (the pipeline's residual pass, each
            # tile) already has their t, and T on a full-resolution m*m map is not free.
            predicted_timestep = self.timestep_regressor(kernels, image)
        down_res, mid_res = None, None
        if sample is not None:
            if timestep is None or encoder_hidden_states is None:
                raise ValueError("`timestep` and `encoder_hidden_states` are required together with `sample`")
            z_in1 = self.controlnet.conv_in(sample)
            filter_residual = self.kernel_filter(z_in1, kernels.to(sample.dtype))
            down_res, mid_res = self.controlnet(
                sample,
                timestep,
                encoder_hidden_states=encoder_hidden_states,
                controlnet_cond=filter_residual,
                conditioning_scale=conditioning_scale,
                return_dict=False,
            )
        if not return_dict:
            return kernels, predicted_timestep, down_res, mid_res
        return KernelControlNetOutput(
            kernels=kernels,
            predicted_timestep=predicted_timestep,
            down_block_res_samples=down_res,
            mid_block_res_sample=mid_res,
        )
