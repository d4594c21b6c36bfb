"""Pictures of the estimated per-pixel blur kernels: a grid of kernels sampled over the image.

A full kernel map is ``[m*m, H, W]`` floats (225 values per pixel for ``m = 15``: 3.6 GB for a 4 MP image), far too
much to keep or show. What a person can read is a few dozen kernels spread over the picture, each drawn where it
was estimated. This module samples such a grid, either from a full map (`sample_kernel_map`) or by running the
kernel estimator ``M`` on small crops around the grid points (`sample_kernels`: bounded memory for any image
size), and draws it over a faded copy of the image (`draw_kernel_grid`).

Example:
    >>> import numpy as np
    >>> from PIL import Image
    >>> from fidediff_pipeline.kernel_ops import identity_kernels
    >>> image = Image.new("RGB", (64, 48), "gray")
    >>> full = identity_kernels(1, 5, 48, 64)[0].numpy()
    >>> grid = sample_kernel_map(full, grid_shape(48, 64))
    >>> grid.shape
    (6, 8, 5, 5)
    >>> draw_kernel_grid(image, grid).size[0] > 0
    True
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from .kernel_ops import kernel_size_from_channels


def grid_shape(height: int, width: int, long_side: int = 8, short_side: int = 6) -> tuple[int, int]:
    """``(rows, cols)`` of the sampling grid: 8 cells along the long side of the image, 6 along the short one.

    Example:
        >>> grid_shape(720, 1280), grid_shape(1280, 720)
        ((6, 8), (8, 6))
    """
    return (short_side, long_side) if width >= height else (long_side, short_side)


def grid_centres(height: int, width: int, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (``ys``, ``xs``) of the centres of a ``rows x cols`` grid of equal cells."""
    rows, cols = grid
    ys = ((np.arange(rows) + 0.5) * height / rows).astype(int).clip(0, height - 1)
    xs = ((np.arange(cols) + 0.5) * width / cols).astype(int).clip(0, width - 1)
    return ys, xs


def sample_kernel_map(kernels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Pick the kernels at the grid centres of a full map ``[m*m, H, W]`` -> ``[rows, cols, m, m]``."""
    kernels = np.asarray(kernels)
    if kernels.ndim != 3:
        raise ValueError(f"expected a kernel map [m*m, H, W]; got shape {kernels.shape}")
    m = kernel_size_from_channels(kernels.shape[0])
    ys, xs = grid_centres(kernels.shape[1], kernels.shape[2], grid)
    picked = kernels[:, ys[:, None], xs[None, :]]  # [m*m, rows, cols]
    return np.ascontiguousarray(picked.transpose(1, 2, 0).reshape(len(ys), len(xs), m, m), dtype=np.float32)


def _image_to_tensor(image) -> torch.Tensor:
    """PIL image or ``[3, H, W]`` tensor in ``[0, 1]`` -> ``[1, 3, H, W]`` float tensor in ``[-1, 1]`` (CPU)."""
    if isinstance(image, PIL.Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
    else:
        tensor = torch.as_tensor(image, dtype=torch.float32)
    return tensor[None] * 2.0 - 1.0


@torch.no_grad()
def sample_kernels(pipe, image, grid: tuple[int, int] | None = None, crop: int = 96, batch_size: int = 16) -> np.ndarray:
    """Estimate the blur kernels at a grid of points with the pipeline's kernel estimator ``M``.

    Each grid point gets a ``crop x crop`` window (shifted inside the image at the borders) and ``M`` runs on
    these windows in batches, so memory stays bounded for any image size. The window is larger than ``M``'s
    receptive field, so the kernel at the point is what ``M`` finds on the whole image up to border effects.

    Args:
        pipe: a `FideDiffPipeline` with a Kernel ControlNet.
        image: a PIL image or a ``[3, H, W]`` tensor in ``[0, 1]``.
        grid: ``(rows, cols)``; by default `grid_shape` (8 x 6 cells).
        crop: window side in pixels (clipped to the image).

    Returns:
        ``[rows, cols, m, m]`` float32 kernels, each summing to 1.
    """
    kcn = getattr(pipe, "kernel_controlnet", None)
    if kcn is None:
        raise ValueError("this pipeline has no Kernel ControlNet, so it does not estimate blur kernels")
    x = _image_to_tensor(image)
    height, width = x.shape[-2:]
    grid = grid or grid_shape(height, width)
    ys, xs = grid_centres(height, width, grid)
    crop_h, crop_w = min(crop, height), min(crop, width)
    windows, offsets = [], []
    for y in ys:
        for x_c in xs:
            y0 = int(np.clip(y - crop_h // 2, 0, height - crop_h))
            x0 = int(np.clip(x_c - crop_w // 2, 0, width - crop_w))
            windows.append(x[0, :, y0:y0 + crop_h, x0:x0 + crop_w])
            offsets.append((int(y) - y0, int(x_c) - x0))
    device, dtype = kcn.device, kcn.dtype
    picked = []
    for start in range(0, len(windows), batch_size):
        batch = torch.stack(windows[start:start + batch_size]).to(device=device, dtype=dtype)
        kernels = kcn.kernel_estimator(batch)  # [b, m*m, crop_h, crop_w]
        dy, dx = (torch.tensor(v, device=device) for v in zip(*offsets[start:start + batch_size]))
        # Pick each window's kernel on the device: copying whole kernel maps to the CPU is what takes time.
        picked.append(kernels[torch.arange(len(dy), device=device), :, dy, dx].float().cpu())
    m = kcn.config.kernel_size
    return torch.cat(picked).reshape(len(ys), len(xs), m, m).numpy().astype(np.float32)


def _kernel_tile(kernel: np.ndarray, size: int, colour: tuple[int, int, int]) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """One kernel as a ``size x size`` colour tile and its alpha mask (normalised to its peak: shapes, not scale)."""
    peak = float(kernel.max())
    norm = kernel / peak if peak > 0 else np.zeros_like(kernel)
    alpha = PIL.Image.fromarray((norm * 255).round().astype(np.uint8))
    alpha = alpha.resize((size, size), PIL.Image.Resampling.NEAREST)
    return PIL.Image.new("RGB", (size, size), colour), alpha


def draw_kernel_grid(
    image: PIL.Image.Image,
    kernels: np.ndarray,
    max_side: int = 960,
    min_side: int = 720,
    fade: float = 0.65,
    colour: tuple[int, int, int] = (200, 0, 90),
) -> PIL.Image.Image:
    """Draw ``[rows, cols, m, m]`` kernels, each at its grid cell, over a faded copy of ``image``.

    Each kernel is scaled to its own maximum (the shape of the motion is what matters; the total is always 1)
    and drawn in a box in the middle of its cell; a kernel that is a single dot means "no blur here".

    Args:
        image: the (blurry) input image.
        kernels: from `sample_kernels` or `sample_kernel_map`.
        max_side, min_side: the picture is resized so that its long side is within these bounds (small images are
            enlarged so that every kernel tap gets a few screen pixels).
        fade: how much white is blended into the image (0 = unchanged, 1 = white).
    """
    kernels = np.asarray(kernels, dtype=np.float32)
    if kernels.ndim != 4 or kernels.shape[2] != kernels.shape[3]:
        raise ValueError(f"expected kernels [rows, cols, m, m]; got shape {kernels.shape}")
    rows, cols, m, _ = kernels.shape
    base = image.convert("RGB")
    long_side = max(base.size)
    scale = max_side / long_side if long_side > max_side else max(1.0, min_side / long_side)
    if scale != 1.0:
        base = base.resize((max(1, round(base.width * scale)), max(1, round(base.height * scale))), PIL.Image.Resampling.LANCZOS)
    canvas = PIL.Image.blend(base, PIL.Image.new("RGB", base.size, "white"), fade)
    draw = PIL.ImageDraw.Draw(canvas)
    cell_h, cell_w = canvas.height / rows, canvas.width / cols
    # A whole number of screen pixels per kernel tap keeps the taps sharp; at least 1.
    tap = max(1, int(min(cell_h, cell_w) * 0.8) // m)
    size = tap * m
    for r in range(rows):
        for c in range(cols):
            cy, cx = (r + 0.5) * cell_h, (c + 0.5) * cell_w
            x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
            tile, alpha = _kernel_tile(kernels[r, c], size, colour)
            canvas.paste(tile, (x0, y0), alpha)
            draw.rectangle([x0 - 1, y0 - 1, x0 + size, y0 + size], outline=(120, 120, 120))
    return canvas
