"""Camera response curves: blur is an average of *light*, so frames are averaged in linear light.

A camera writes roughly ``pixel = irradiance ** (1 / gamma)``.  Motion blur is the sensor integrating
irradiance over the exposure, so a physically faithful blur of 8-bit frames is::

    signal = (pixel / 255) ** 2.2          # inverse camera response
    blur   = mean(signal) ** (1 / 2.2)     # integrate, then re-apply the response

This is what the GoPro authors did for ``GOPRO_Large/*/blur_gamma`` (gamma 2.2).  Their ``blur`` folder
instead averaged the 8-bit values directly (a linear response), and most later papers train and test on
``blur``; pick ``"linear"`` to match that distribution, ``"gamma2.2"`` (the default here) for physics.

Two curves are offered, by name:

- ``"gamma2.2"``: ``to_linear(x) = x ** 2.2``, ``from_linear(s) = s ** (1 / 2.2)``.
- ``"linear"``: the identity (average the stored values as they are).

Both functions take numpy arrays or torch tensors with values in [0, 1].

Example:
    >>> import numpy as np
    >>> x = np.array([0.0, 0.5, 1.0])
    >>> np.allclose(from_linear(to_linear(x, "gamma2.2"), "gamma2.2"), x)
    True
"""

from __future__ import annotations

CRF_CHOICES = ("gamma2.2", "linear")
DEFAULT_CRF = "gamma2.2"
GAMMA = 2.2


def check_crf(crf: str) -> str:
    if crf not in CRF_CHOICES:
        raise ValueError(f"unknown camera response {crf!r}; choose one of {', '.join(CRF_CHOICES)}")
    return crf


def _clip01(x):
    # numpy arrays and torch tensors both have .clip(min, max)
    return x.clip(0.0, 1.0)


def to_linear(image, crf: str = DEFAULT_CRF):
    """Map stored values in [0, 1] to linear light (the inverse camera response)."""
    check_crf(crf)
    if crf == "linear":
        return image
    return _clip01(image) ** GAMMA


def from_linear(signal, crf: str = DEFAULT_CRF):
    """Map linear light in [0, 1] back to stored values (the camera response)."""
    check_crf(crf)
    if crf == "linear":
        return signal
    return _clip01(signal) ** (1.0 / GAMMA)


def reblur_in_linear_light(image, kernels, crf: str = DEFAULT_CRF, eps: float = 1e-7, apply=None):
    """Reblur ``image`` ``[B, C, H, W]`` (values in [0, 1]) with per-pixel ``kernels`` ``[B, m*m, H, W]``
    the way the data builders blurred it: linearise, apply the kernels, re-apply the camera response.

    With ``crf="linear"`` this is exactly :func:`fidediff_pipeline.kernel_ops.apply_per_pixel_kernels`.
    With ``"gamma2.2"`` the result is clamped at ``eps`` before ``** (1 / 2.2)`` so its gradient stays
    finite at black (the value error this adds is at most ``eps ** (1 / 2.2)``, 7e-4 for the default).
    Use it for the reblur loss when the training data were built with ``gamma2.2``: a plain
    ``apply_per_pixel_kernels`` on stored values misses such data at high-contrast edges. ``apply`` replaces
    ``apply_per_pixel_kernels`` (e.g. ``kernel_ops.apply_block_kernels_at_centres`` for a coarse kernel map).

    Example:
        >>> import torch
        >>> from fidediff_pipeline.kernel_ops import identity_kernels
        >>> img = torch.rand(1, 3, 16, 16)
        >>> out = reblur_in_linear_light(img, identity_kernels(1, 5, 16, 16))
        >>> bool((out - img).abs().max() < 1e-3)
        True
    """
    from fidediff_pipeline.kernel_ops import apply_per_pixel_kernels

    check_crf(crf)
    apply = apply or apply_per_pixel_kernels
    if crf == "linear":
        return apply(image, kernels)
    blurred = apply(to_linear(image, crf), kernels)
    return from_linear(blurred.clamp(min=eps), crf)
