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
import PIL.ImageFont
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
def sample_kernels(pipe, image, grid: tuple[int, int] | None = None, crop: int = 96, batch_size: int = 16,
                   return_timesteps: bool = False):
    """Estimate the blur kernels at a grid of points with the pipeline's kernel estimator ``M``.

    Each grid point gets a ``crop x crop`` window (shifted inside the image at the borders) and ``M`` runs on
    these windows in batches, so memory stays bounded for any image size. The window is larger than ``M``'s
    receptive field, so the kernel at the point is what ``M`` finds on the whole image up to border effects.

    Args:
        pipe: a `FideDiffPipeline` with a Kernel ControlNet.
        image: a PIL image or a ``[3, H, W]`` tensor in ``[0, 1]``.
        grid: ``(rows, cols)``; by default `grid_shape` (8 x 6 cells).
        crop: window side in pixels (clipped to the image).
        return_timesteps: also run the t-regressor ``T`` on each window's kernel map: how the blur level varies
            over the image (a spread the single whole-image estimate hides).

    Returns:
        ``[rows, cols, m, m]`` float32 kernels, each summing to 1; with ``return_timesteps`` a tuple of those and
        ``[rows, cols]`` float32 blur levels ``t``.
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
    regressor = getattr(kcn, "timestep_regressor", None) if return_timesteps else None
    picked, timesteps = [], []
    for start in range(0, len(windows), batch_size):
        batch = torch.stack(windows[start:start + batch_size]).to(device=device, dtype=dtype)
        kernels = kcn.kernel_estimator(batch)  # [b, m*m, crop_h / s, crop_w / s] (s: the model's kernel_stride)
        stride = getattr(kcn, "kernel_stride", 1)
        dy, dx = (torch.tensor(v, device=device) // stride for v in zip(*offsets[start:start + batch_size]))
        # Pick each window's kernel on the device: copying whole kernel maps to the CPU is what takes time.
        picked.append(kernels[torch.arange(len(dy), device=device), :, dy, dx].float().cpu())
        if regressor is not None:
            timesteps.append(regressor(kernels, batch).float().reshape(-1).cpu())
    m = kcn.config.kernel_size
    grid_kernels = torch.cat(picked).reshape(len(ys), len(xs), m, m).numpy().astype(np.float32)
    if not return_timesteps:
        return grid_kernels
    grid_t = torch.cat(timesteps).reshape(len(ys), len(xs)).numpy().astype(np.float32) if timesteps else None
    return grid_kernels, grid_t


def kernel_lengths(kernels: np.ndarray) -> np.ndarray:
    """Blur length in pixels of each kernel ``[..., m, m]``: ``sqrt(12 * variance + 1)`` along its main axis.

    That is exact for a straight, evenly lit streak (``L`` taps in a row have variance ``(L**2 - 1) / 12``), 1 for
    a single dot (no blur), and a fair "how far did the picture move" for curved paths.

    Example:
        >>> line = np.zeros((9, 9), np.float32); line[4, 2:7] = 0.2  # a 5 px horizontal streak
        >>> round(float(kernel_lengths(line)), 2)
        5.0
    """
    kernels = np.asarray(kernels, dtype=np.float64)
    m = kernels.shape[-1]
    weights = kernels / np.maximum(kernels.sum(axis=(-2, -1), keepdims=True), 1e-12)
    ys, xs = np.meshgrid(np.arange(m, dtype=np.float64), np.arange(m, dtype=np.float64), indexing="ij")
    mean_y = (weights * ys).sum(axis=(-2, -1))
    mean_x = (weights * xs).sum(axis=(-2, -1))
    dy, dx = ys - mean_y[..., None, None], xs - mean_x[..., None, None]
    var_y, var_x = (weights * dy * dy).sum(axis=(-2, -1)), (weights * dx * dx).sum(axis=(-2, -1))
    cov = (weights * dy * dx).sum(axis=(-2, -1))
    largest = (var_y + var_x) / 2 + np.sqrt(((var_y - var_x) / 2) ** 2 + cov ** 2)  # the main axis' variance
    return np.sqrt(12 * largest + 1).astype(np.float32)


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
    legend: bool = False,
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
        legend: add a strip below the picture that says what a dot, a line and a curve mean and shows the scale
            (a bar of so many pixels of the input image).
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
    if legend:
        canvas = _add_legend(canvas, tap, m, colour)
    return canvas


def _font(size: int):
    try:
        return PIL.ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return PIL.ImageFont.load_default()


def _add_legend(canvas: PIL.Image.Image, tap: int, m: int, colour: tuple[int, int, int]) -> PIL.Image.Image:
    """Append a white strip: sample glyphs (dot, line, curve) with their meaning, the box size and a scale bar.

    Items flow left to right and wrap onto a new line when the picture is narrow.
    """
    font = _font(15)
    glyph = 28
    scale_px = 10 if m > 10 else 5
    items = [("dot", "a dot: little or no blur"), ("line", "a line: straight motion"),
             ("curve", "a curve: shaky, curved motion"),
             ("scale", f"{scale_px} px of blur in your image (each box: {m} x {m} px)")]
    measure = PIL.ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))
    widths = []
    for kind, text in items:
        lead = max(glyph, scale_px * tap) if kind == "scale" else glyph
        widths.append(lead + 8 + int(measure.textlength(text, font=font)) + 24)
    pad, line_h = 10, glyph + 10
    positions, x, y = [], pad, pad
    for width in widths:
        if x > pad and x + width > canvas.width - pad:
            x, y = pad, y + line_h
        positions.append((x, y))
        x += width
    strip = PIL.Image.new("RGB", (canvas.width, y + line_h + pad), "white")
    draw = PIL.ImageDraw.Draw(strip)
    for (kind, text), (x, y) in zip(items, positions):
        cy = y + glyph // 2
        if kind == "dot":
            draw.ellipse([x + glyph // 2 - 3, cy - 3, x + glyph // 2 + 3, cy + 3], fill=colour)
            lead = glyph
        elif kind == "line":
            draw.line([x + 3, cy + 8, x + glyph - 3, cy - 8], fill=colour, width=4)
            lead = glyph
        elif kind == "curve":
            points = [(x + 2 + i, cy + 7 * np.sin(i / (glyph - 4) * 2 * np.pi)) for i in range(glyph - 3)]
            draw.line(points, fill=colour, width=4, joint="curve")
            lead = glyph
        else:
            lead = max(glyph, scale_px * tap)
            draw.rectangle([x, cy - 3, x + scale_px * tap - 1, cy + 3], fill=(40, 40, 40))
        draw.text((x + lead + 8, cy), text, fill=(30, 30, 30), font=font, anchor="lm")
    out = PIL.Image.new("RGB", (canvas.width, canvas.height + strip.height), "white")
    out.paste(canvas, (0, 0))
    out.paste(strip, (0, canvas.height))
    PIL.ImageDraw.Draw(out).line([0, canvas.height, canvas.width, canvas.height], fill=(200, 200, 200))
    return out
