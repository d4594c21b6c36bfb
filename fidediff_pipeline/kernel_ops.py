"""Per-pixel blur kernels: the reblur operator shared by the model, the data builders and the losses.

Convention (used everywhere in this project): a kernel map has shape ``[B, m*m, H, W]``; entry
``k[b, i*m + j, y, x]`` is the weight of the input pixel at offset ``(i - m//2, j - m//2)`` from
``(y, x)``.  So ``out[y, x] = sum_ij k[i*m+j, y, x] * img[y + i - r, x + j - r]`` (a correlation,
not a flipped convolution).  A kernel that is 1 at the centre index ``(m*m)//2`` is the identity.
Borders are reflect-padded so a normalised kernel never darkens the image edge.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kernel_size_from_channels(num_channels: int) -> int:
    """Return ``m`` for a kernel map with ``m*m`` channels, with a clear error otherwise."""
    m = int(round(math.sqrt(num_channels)))
    if m * m != num_channels or m % 2 == 0:
        raise ValueError(
            f"a per-pixel kernel map needs m*m channels with m odd (e.g. 25 for 5x5); got {num_channels} channels"
        )
    return m


def identity_kernels(batch: int, kernel_size: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """Kernel map that leaves an image unchanged (a delta at the centre of every pixel's kernel)."""
    kernels = torch.zeros(batch, kernel_size * kernel_size, height, width, device=device, dtype=dtype)
    kernels[:, (kernel_size * kernel_size) // 2] = 1.0
    return kernels


def apply_per_pixel_kernels(image: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Blur ``image`` ``[B, C, H, W]`` with its own kernel at every pixel, ``kernels`` ``[B, m*m, H, W]``.

    Plain PyTorch (``F.unfold`` and an ``einsum``), differentiable in both arguments, any float dtype.

    Example:
        >>> img = torch.rand(1, 3, 32, 32)
        >>> k = identity_kernels(1, 5, 32, 32)
        >>> torch.allclose(apply_per_pixel_kernels(img, k), img)
        True
    """
    if image.ndim != 4 or kernels.ndim != 4:
        raise ValueError(
            f"expected image [B, C, H, W] and kernels [B, m*m, H, W]; got {tuple(image.shape)} and {tuple(kernels.shape)}"
        )
    b, c, h, w = image.shape
    if kernels.shape[0] != b or kernels.shape[-2:] != (h, w):
        raise ValueError(
            f"kernels {tuple(kernels.shape)} do not match image {tuple(image.shape)}: batch and H, W must agree"
        )
    m = kernel_size_from_channels(kernels.shape[1])
    r = m // 2
    pad_mode = "reflect" if (h > r and w > r) else "replicate"
    padded = F.pad(image, (r, r, r, r), mode=pad_mode)
    patches = F.unfold(padded, kernel_size=m)  # [B, C*m*m, H*W], channel-major then (i, j)
    patches = patches.view(b, c, m * m, h, w)
    return torch.einsum("bckhw,bkhw->bchw", patches, kernels.to(patches.dtype))


def kernel_map_stride(height: int, width: int, map_height: int, map_width: int) -> int:
    """The block size ``s`` of a ``map_height x map_width`` kernel map over a ``height x width`` image (1 for a
    per-pixel map); a ValueError if the map is not the ``ceil(H / s) x ceil(W / s)`` block grid of any ``s``."""
    stride = -(-height // map_height)
    if stride < 1 or -(-height // stride) != map_height or -(-width // stride) != map_width:
        raise ValueError(f"a kernel map of {map_height}x{map_width} is not a block grid of a {height}x{width} image")
    return stride


def expand_kernel_map(kernels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Spread a coarse kernel map (one kernel per ``s x s`` block, a Kernel ControlNet with ``kernel_stride = s``)
    to every pixel of an ``height x width`` image: each block's pixels get its kernel. A per-pixel map of that size
    is returned as is.

    Example:
        >>> coarse = identity_kernels(1, 3, 2, 3)
        >>> expand_kernel_map(coarse, 7, 10).shape
        torch.Size([1, 9, 7, 10])
    """
    h, w = kernels.shape[-2:]
    if (h, w) == (height, width):
        return kernels
    stride = kernel_map_stride(height, width, h, w)
    expanded = kernels.repeat_interleave(stride, dim=-2).repeat_interleave(stride, dim=-1)
    return expanded[..., :height, :width]


def block_centre_indices(size: int, blocks: int) -> torch.Tensor:
    """Row (or column) index of the centre pixel of each of ``blocks`` blocks along an image side of ``size``
    pixels (blocks of ``ceil(size / blocks)``; a partial last block's centre is clamped into the image)."""
    stride = -(-size // blocks)
    return (torch.arange(blocks) * stride + stride // 2).clamp(max=size - 1)


def apply_block_kernels_at_centres(image: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Blur the centre pixel of every block of ``image`` ``[B, C, H, W]`` with its block's kernel, from a coarse
    map ``kernels`` ``[B, m*m, h, w]`` (one kernel per block, a Kernel ControlNet with ``kernel_stride > 1``).

    Returns ``[B, C, h, w]``: ``apply_per_pixel_kernels(image, expand_kernel_map(kernels, H, W))`` at the pixels
    ``block_centre_indices`` picks, at about ``1 / s**2`` of its cost (the full map repeats each kernel ``s * s``
    times and unfolds every pixel's ``m x m`` window). Same tap layout and border padding; differentiable.

    Example:
        >>> img = torch.rand(1, 3, 12, 12)
        >>> apply_block_kernels_at_centres(img, identity_kernels(1, 5, 3, 3)).shape
        torch.Size([1, 3, 3, 3])
    """
    b, c, height, width = image.shape
    h, w = kernels.shape[-2:]
    m = kernel_size_from_channels(kernels.shape[1])
    kernel_map_stride(height, width, h, w)  # a map that is not a block grid: the same ValueError
    r = m // 2
    pad_mode = "reflect" if (height > r and width > r) else "replicate"
    padded = F.pad(image, (r, r, r, r), mode=pad_mode)
    taps = torch.arange(m, device=image.device)
    # Padded coordinates of every centre's m x m window: rows [h, m], columns [w, m].
    rows = block_centre_indices(height, h).to(image.device)[:, None] + taps[None, :]
    cols = block_centre_indices(width, w).to(image.device)[:, None] + taps[None, :]
    windows = padded[:, :, rows][..., cols]  # [B, C, h, m, w, m]
    return torch.einsum("bchiwj,bijhw->bchw", windows, kernels.view(b, m, m, h, w).to(windows.dtype))


def global_kernel_to_map(kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Broadcast one ``[m, m]`` (or ``[B, m, m]``) kernel to a per-pixel map ``[B, m*m, H, W]``."""
    if kernel.ndim == 2:
        kernel = kernel[None]
    b, m, m2 = kernel.shape
    if m != m2:
        raise ValueError(f"a kernel must be square; got {m}x{m2}")
    return kernel.reshape(b, m * m, 1, 1).expand(b, m * m, height, width).contiguous()


def kernel_principal_axis(kernel) -> tuple[float, float]:
    """Direction and length of a blur kernel ``[m, m]`` (this module's convention), from its second moments.

    Returns ``(angle_degrees, length_px)``: the principal axis's angle in ``[0, 180)``, counter-clockwise from the
    image's x axis as seen on screen (y points down), and ``sqrt(12 * variance)`` along that axis, which is the
    length of a uniform straight blur. Used to check that estimated kernels follow the blur.

    Example:
        >>> import numpy as np
        >>> k = np.zeros((9, 9)); k[4, 1:8] = 1 / 7   # a horizontal line of 7 taps: sqrt(12 * 4) = 6.9 px
        >>> [round(v, 1) for v in kernel_principal_axis(k)]
        [0.0, 6.9]
    """
    import numpy as np

    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
        raise ValueError(f"expected one square kernel [m, m] with m odd; got shape {k.shape}")
    k = k / k.sum()
    r = k.shape[0] // 2
    dy, dx = np.mgrid[-r: r + 1, -r: r + 1].astype(np.float64)
    my, mx = (k * dy).sum(), (k * dx).sum()
    # Screen coordinates: up is -y, so use (x, -y) for a counter-clockwise angle.
    u, v = dx - mx, -(dy - my)
    cov = np.array([[(k * u * u).sum(), (k * u * v).sum()], [(k * u * v).sum(), (k * v * v).sum()]])
    values, vectors = np.linalg.eigh(cov)
    axis = vectors[:, 1]
    angle = float(np.degrees(np.arctan2(axis[1], axis[0])) % 180.0)
    return angle, float(np.sqrt(12.0 * max(values[1], 0.0)))


def linear_motion_kernel(length: float, angle_degrees: float, size: int | None = None, supersample: int = 8) -> np.ndarray:
    """A straight motion path of ``length`` pixels at ``angle_degrees`` (0 = horizontal), as an ``m x m`` kernel
    summing to 1; drawn at ``supersample`` x resolution and box-downsampled, so fractional lengths are smooth.

    Example:
        >>> k = linear_motion_kernel(9, 0)
        >>> k.shape, round(float(k.sum()), 6), bool(k[k.shape[0] // 2].sum() > 0.99)
        ((11, 11), 1.0, True)
    """
    import numpy as np
    import PIL.Image
    import PIL.ImageDraw

    size = size or (int(math.ceil(length)) // 2) * 2 + 3  # odd, with a margin of one pixel
    big = size * supersample
    canvas = PIL.Image.new("F", (big, big), 0.0)
    half = (length - 1) / 2 * supersample
    c = big / 2 - 0.5  # PIL puts pixel centres on integers: the centre of the middle output pixel
    dx, dy = half * math.cos(math.radians(angle_degrees)), -half * math.sin(math.radians(angle_degrees))
    PIL.ImageDraw.Draw(canvas).line([(c - dx, c - dy), (c + dx, c + dy)], fill=1.0, width=supersample)
    kernel = np.asarray(canvas, dtype=np.float64).reshape(size, supersample, size, supersample).sum(axis=(1, 3))
    return (kernel / kernel.sum()).astype(np.float32)
