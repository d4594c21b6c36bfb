"""Dead-leaves images: procedural training content with natural-image statistics.

The dead-leaves model (Matheron 1968; Lee, Mumford & Huang 2001) drops random opaque shapes ("leaves") on top of
each other until the plane is covered. With radii drawn from ``p(r) ~ r^-3`` the result is scale invariant and has
the ``1/f^2`` power spectrum, edge statistics and occlusions of natural photos, and it has been used as training
data for image restoration (e.g. Achddou et al., "Synthetic images as a regularity prior for image restoration
neural networks", 2021). For deblurring it adds what a few sample photos lack: sharp edges of every orientation,
length and contrast, in unlimited variety.

Each leaf here is a disc or a rotated rectangle, filled with a colour plus a gentle linear shading, and a quarter
of them carry a sinusoidal stripe texture (fine detail to recover). Images are rendered at 2x and box-downsampled
(anti-aliased edges, like a camera's). Deterministic given the generator.

Example:
    >>> import numpy as np
    >>> image = dead_leaves_image(64, np.random.default_rng(0))
    >>> image.shape, image.dtype
    ((64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import numpy as np

SUPERSAMPLE = 2


def _leaf_radius(rng: np.random.Generator, r_min: float, r_max: float, alpha: float) -> float:
    """One radius from ``p(r) ~ r^-alpha`` on ``[r_min, r_max]`` (inverse-CDF sampling)."""
    u = rng.uniform()
    a = 1.0 - alpha
    return float((r_min**a + u * (r_max**a - r_min**a)) ** (1.0 / a))


def _leaf_colour(rng: np.random.Generator) -> np.ndarray:
    """A colour with photo-like saturation: a random grey level pulled towards a random hue."""
    grey = rng.uniform(0.05, 0.95)
    hue = rng.uniform(0.0, 1.0, size=3)
    return np.clip(grey + rng.uniform(0.1, 0.6) * (hue - hue.mean()), 0.0, 1.0)


def dead_leaves_image(size: int | tuple[int, int], rng: np.random.Generator, *, r_min: float = 3.0,
                      r_max: float | None = None, alpha: float = 2.5, max_leaves: int = 30000) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 dead-leaves image.

    Args:
        size: ``H`` (square) or ``(H, W)`` in output pixels.
        rng: the random generator (the image depends only on its state).
        r_min, r_max: leaf radii in output pixels (``r_max`` default: a quarter of the short side).
        alpha: exponent of the radius distribution (3 is exactly scale invariant; 2.5 gives larger smooth regions, closer
            to photos at this size).
        max_leaves: stop after this many leaves (pixels still uncovered take the last leaf's colour).
    """
    h, w = (size, size) if isinstance(size, int) else size
    if h < 4 or w < 4:
        raise ValueError(f"dead-leaves images need at least 4x4 pixels; got {h}x{w}")
    s = SUPERSAMPLE
    H, W = h * s, w * s
    r_max = (r_max or min(h, w) / 4.0) * s
    r_min = r_min * s
    canvas = np.zeros((H, W, 3), dtype=np.float32)
    covered = np.zeros((H, W), dtype=bool)
    uncovered = H * W
    colour = np.full(3, 0.5)
    # Front to back: each new leaf lies UNDER the ones already drawn, so it only fills uncovered pixels, and the
    # loop ends when the plane is covered (equivalent to dropping leaves until nothing more can be seen).
    for _ in range(max_leaves):
        if uncovered == 0:
            break
        r = _leaf_radius(rng, r_min, r_max, alpha)
        cy, cx = rng.uniform(-r, H + r), rng.uniform(-r, W + r)
        shape = rng.uniform()
        angle = rng.uniform(0.0, np.pi)
        aspect = rng.uniform(0.3, 1.0)
        colour = _leaf_colour(rng)
        shading = rng.normal(0.0, 0.15, size=2) / max(r, 1.0)
        stripes = rng.uniform() < 0.25
        period = rng.uniform(2.0, 8.0) * s
        stripe_angle = rng.uniform(0.0, np.pi)
        stripe_contrast = rng.uniform(0.05, 0.3)
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, H)
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, W)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy - cy, xx - cx
        if shape < 0.6:
            inside = dy * dy + dx * dx <= r * r
        else:  # a rotated rectangle with half-sides r and aspect * r
            c, si = np.cos(angle), np.sin(angle)
            u, v = c * dx + si * dy, -si * dx + c * dy
            inside = (np.abs(u) <= r) & (np.abs(v) <= aspect * r)
        fill = inside & ~covered[y0:y1, x0:x1]
        count = int(fill.sum())
        if count == 0:
            continue
        value = colour[None, None, :] * (1.0 + shading[0] * dy + shading[1] * dx)[..., None]
        if stripes:
            phase = (np.cos(stripe_angle) * dx + np.sin(stripe_angle) * dy) * (2.0 * np.pi / period)
            value = value * (1.0 + stripe_contrast * np.sin(phase))[..., None]
        canvas[y0:y1, x0:x1][fill] = value[fill]
        covered[y0:y1, x0:x1] |= fill
        uncovered -= count
    if uncovered:
        canvas[~covered] = colour
    small = canvas.reshape(h, s, w, s, 3).mean(axis=(1, 3))
    return (np.clip(small, 0.0, 1.0) * 255.0).round().astype(np.uint8)
