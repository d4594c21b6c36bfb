"""Overlapping tiles with smooth blending (linear crossfades), for latents and image-space maps of any size."""

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


def balanced_tiles(length: int, tile: int, overlap: int, multiple: int = 8) -> tuple[int, list[int]]:
    """The size and start offsets of the fewest tiles of at most ``tile`` that cover ``[0, length)`` with at least
    ``overlap`` shared pixels, all shrunk to one size (a multiple of ``multiple`` where it fits) and spread evenly.

    As many tiles as `tile_starts` gives, but no more pixels than they need: full-size tiles with the last one
    aligned to the end overlap the one before by far more than ``overlap`` (512 latents in tiles of 256 with
    overlap 64: three tiles, 768 pixels per axis; balanced: three of 216, 648 pixels), and every pixel a tile
    repeats is recomputed.

    Example:
        >>> balanced_tiles(512, 256, 64)
        (216, [0, 148, 296])
    """
    starts = tile_starts(length, tile, overlap)
    count = len(starts)
    if count == 1:
        return min(tile, length), [0]
    size = -(-(length + (count - 1) * overlap) // count)  # ceil: the smallest size that keeps the overlap
    size = min(size + (-size) % multiple, tile)
    return size, [round(i * (length - size) / (count - 1)) for i in range(count)]


def iterate_tiles(height: int, width: int, tile: int, overlap: int, multiple: int = 8
                  ) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(y0, y1, x0, x1)`` windows covering a ``height x width`` grid (`balanced_tiles` on each axis)."""
    tile_h, starts_y = balanced_tiles(height, tile, overlap, multiple)
    tile_w, starts_x = balanced_tiles(width, tile, overlap, multiple)
    for y0 in starts_y:
        for x0 in starts_x:
            yield y0, y0 + tile_h, x0, x0 + tile_w


def blend_weights(box: tuple[int, int, int, int], grid: tuple[int, int], ramp: int, device=None,
                  dtype=torch.float32) -> torch.Tensor:
    """``[1, 1, h, w]`` weights of the tile ``box = (y0, y1, x0, x1)`` of a ``grid``: 1 inside, falling linearly to
    (almost) 0 over ``ramp`` pixels at each side it shares with a neighbour, flat at the grid's own borders.

    Summed over tiles that overlap by at least ``ramp`` and divided by the sum, each output pixel is a crossfade
    from one tile to the next that reaches zero at a tile's edge, so no tile's border (where its zero padding
    differs from the whole image's) shows as a step. The Gaussian bump this replaced kept ~14% of its peak at the
    edges: with an overlap of an eighth of the tile, the tiny model's output then had 19% larger gradients at the
    tile borders than the untiled output (benchmarks/README.md).

    Example:
        >>> blend_weights((0, 8, 4, 12), (8, 12), 4)[0, 0, 0].tolist()  # the last tile of a row: ramp on its left
        [0.125, 0.375, 0.625, 0.875, 1.0, 1.0, 1.0, 1.0]
    """
    y0, y1, x0, x1 = box
    ramp = max(int(ramp), 1)

    def profile(start: int, stop: int, length: int) -> torch.Tensor:
        i = torch.arange(stop - start, device=device, dtype=torch.float32) + 0.5
        w = torch.ones_like(i)
        if start > 0:  # a neighbour before this tile
            w = torch.minimum(w, i / ramp)
        if stop < length:  # a neighbour after it
            w = torch.minimum(w, (stop - start - i) / ramp)
        return w.clamp_min(1e-3)

    w = profile(y0, y1, grid[0])[:, None] * profile(x0, x1, grid[1])[None, :]
    return w.to(dtype)[None, None]


def tiled_map(fn, x: torch.Tensor, grid: tuple[int, int], tile: int, overlap: int, in_scale: int = 1,
              out_scale: int = 1) -> torch.Tensor:
    """``fn`` on overlapping windows of ``x`` ``[B, C, H, W]``, stitched into the output ``fn`` would give for the whole.

    For convolutional maps such as a VAE's encoder or decoder: only one window's activations are held at a time.
    The windows are `iterate_tiles` over a ``grid`` (e.g. the latent grid); a window ``[y0, y1)`` reads
    ``x[y0 * in_scale : y1 * in_scale]`` and gives the output at ``[y0 * out_scale, y1 * out_scale)`` (a decoder of
    factor f: ``in_scale=1, out_scale=f``; an encoder the reverse). Each window drops the outer ``overlap // 2``
    grid pixels on every side it shares with another window, where its zero padding differs from the whole
    image's, and the kept parts are averaged where they still overlap: the result equals the untiled one wherever
    ``fn``'s receptive field reaches less than ``overlap // 2`` grid pixels. Returns ``[B, C_out, grid_h * out_scale,
    grid_w * out_scale]`` in ``fn``'s dtype.

    Example:
        >>> x = torch.rand(1, 3, 40, 24)
        >>> smooth = lambda t: torch.nn.functional.avg_pool2d(t, 3, stride=1, padding=1)  # receptive field 1
        >>> torch.allclose(tiled_map(smooth, x, (40, 24), 16, 4), smooth(x), atol=1e-6)
        True
    """
    out = weight = None
    drop = overlap // 2
    height, width = grid
    for y0, y1, x0, x1 in iterate_tiles(height, width, tile, overlap):
        piece = fn(x[..., y0 * in_scale:y1 * in_scale, x0 * in_scale:x1 * in_scale])
        if out is None:
            out = torch.zeros(*piece.shape[:2], height * out_scale, width * out_scale, dtype=torch.float32,
                              device=piece.device)
            weight = torch.zeros(1, 1, *out.shape[-2:], dtype=torch.float32, device=piece.device)
        # The kept part of the window, in grid pixels: all of it on the image's own borders.
        ky0, ky1 = y0 + (drop if y0 > 0 else 0), y1 - (drop if y1 < height else 0)
        kx0, kx1 = x0 + (drop if x0 > 0 else 0), x1 - (drop if x1 < width else 0)
        keep = piece[..., (ky0 - y0) * out_scale:(ky1 - y0) * out_scale, (kx0 - x0) * out_scale:(kx1 - x0) * out_scale]
        out[..., ky0 * out_scale:ky1 * out_scale, kx0 * out_scale:kx1 * out_scale] += keep.float()
        weight[..., ky0 * out_scale:ky1 * out_scale, kx0 * out_scale:kx1 * out_scale] += 1.0
    return (out / weight).to(piece.dtype)
