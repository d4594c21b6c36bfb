"""Overlapping tiles with smooth (Gaussian) blending, for latents and image-space maps of any size."""

from __future__ import annotations

from typing import Iterator

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` shared pixels.

    The last tile is aligned to the end, so every tile has the full size (no thin edge tiles).

    Example:
        >>> tile_starts(10, 4, 1)
        [0, 3, 6]
    """
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need 0 <= overlap < tile; got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def iterate_tiles(height: int, width: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(y0, y1, x0, x1)`` windows covering a ``height x width`` grid."""
    for y0 in tile_starts(height, tile, overlap):
        for x0 in tile_starts(width, tile, overlap):
            yield y0, min(y0 + tile, height), x0, min(x0 + tile, width)


def gaussian_weights(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """A ``[1, 1, h, w]`` bump, highest in the centre, never zero, so overlapping tiles blend without seams."""

    def profile(n: int) -> torch.Tensor:
        x = torch.linspace(-1.0, 1.0, n, device=device, dtype=torch.float32)
        return torch.exp(-0.5 * (x / 0.5) ** 2)  # sigma = a quarter of the tile

    w = profile(height)[:, None] * profile(width)[None, :]
    return w.clamp_min(1e-3).to(dtype)[None, None]
