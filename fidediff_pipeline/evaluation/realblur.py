"""RealBlur's evaluation protocol: align the restored image to the ground truth, then PSNR/SSIM.

RealBlur's ground truth is captured by a second camera through a beam splitter, so restored images and
targets are slightly misaligned in geometry and gain. The RealBlur authors' script (copied by Restormer's
``evaluate_realblur.py``, AdaRevD, UFPNet, MISC Filter) therefore, per image, on float images in ``[0, 1]``:

1. gain-matches the output to the target: ``zs = (sum(x*z) / sum(z*z)) * z``;
2. finds a homography with ``cv2.findTransformECC`` (``MOTION_HOMOGRAPHY``, grayscale, 100 iterations,
   termination eps 0, ``gaussFiltSize=5``), target as the template;
3. warps the output with ``INTER_CUBIC | WARP_INVERSE_MAP`` (``BORDER_REFLECT``), and a ones image with
   ``INTER_NEAREST | WARP_INVERSE_MAP`` (``BORDER_CONSTANT`` 0) to get the validity mask; both images are
   multiplied by the mask;
4. PSNR over the valid region: ``sum((x - z)^2) / sum(mask)``, data range 1;
5. SSIM: scikit-image's full SSIM map (``gaussian_weights=True, use_sample_covariance=False,
   data_range=1``; ``channel_axis=-1`` replaces the removed ``multichannel=True``) times the mask, cropped by
   5 px, averaged over the mask per channel, then over channels.

Example:
    >>> from fidediff_pipeline.evaluation.realblur import realblur_psnr_ssim
    >>> score = realblur_psnr_ssim(restored_uint8, sharp_uint8)   # doctest: +SKIP
    >>> score.psnr, score.ssim, score.converged                   # doctest: +SKIP
    (28.96, 0.8695, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import as_uint8_rgb

REALBLUR_DESCRIPTION = (
    "RealBlur protocol (RealBlur authors' ECC script as in Restormer's evaluate_realblur.py): gain match, "
    "cv2.findTransformECC homography (100 iterations, gaussFiltSize 5), masked PSNR and mask-weighted "
    "skimage SSIM map cropped by 5 px"
)


@dataclass
class RealBlurScore:
    """PSNR (dB) and SSIM of one image under the RealBlur protocol.

    ``converged`` is False when ECC raised (it does if it cannot converge); the original script would stop
    there, this one keeps the identity warp for that image and reports it.
    """

    psnr: float
    ssim: float
    converged: bool
    warp: np.ndarray


def _import_cv2():
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            "the RealBlur protocol needs OpenCV's findTransformECC: pip install opencv-python-headless"
        ) from err
    return cv2


def realblur_align(restored, target) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Gain-match and ECC-align ``restored`` to ``target``.

    Returns ``(aligned, target_masked, mask, warp, converged)``: float32 ``[H, W, 3]`` arrays in ``[0, 1]``
    (the mask is 1 where the warped output has valid pixels, per channel), the 3x3 warp and whether ECC
    converged.
    """
    cv2 = _import_cv2()
    z = as_uint8_rgb(restored).astype(np.float32) / 255.0
    x = as_uint8_rgb(target).astype(np.float32) / 255.0
    if z.shape != x.shape:
        raise ValueError(f"restored {z.shape} and target {x.shape} differ in size")

    denominator = float(np.sum(z * z))
    zs = (float(np.sum(x * z)) / denominator) * z if denominator > 0 else z  # simple intensity matching

    warp = np.eye(3, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 0)
    converged = True
    try:
        _, warp = cv2.findTransformECC(
            cv2.cvtColor(x, cv2.COLOR_RGB2GRAY),
            cv2.cvtColor(zs, cv2.COLOR_RGB2GRAY),
            warp,
            cv2.MOTION_HOMOGRAPHY,
            criteria,
            inputMask=None,
            gaussFiltSize=5,
        )
    except cv2.error:
        converged = False
        warp = np.eye(3, 3, dtype=np.float32)

    height, width = x.shape[:2]
    aligned = cv2.warpPerspective(
        zs, warp, (width, height), flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
    )
    mask = cv2.warpPerspective(
        np.ones_like(zs, dtype=np.float32),
        warp,
        (width, height),
        flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return aligned * mask, x * mask, mask, warp, converged


def masked_psnr(target: np.ndarray, aligned: np.ndarray, mask: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR over the valid region (the RealBlur script's ``compute_psnr``)."""
    err = np.sum((target - aligned) ** 2, dtype=np.float64) / np.sum(mask, dtype=np.float64)
    if err == 0:
        return float("inf")
    return float(10 * np.log10(data_range**2 / err))


def masked_ssim(target: np.ndarray, aligned: np.ndarray, mask: np.ndarray) -> float:
    """SSIM map weighted by the mask and cropped by 5 px (the RealBlur script's ``compute_ssim``)."""
    from skimage.metrics import structural_similarity

    _, ssim_map = structural_similarity(
        target,
        aligned,
        channel_axis=-1,
        gaussian_weights=True,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    ssim_map = ssim_map * mask
    pad = int(3.5 * 1.5 + 0.5)  # skimage's Gaussian radius for sigma 1.5: the border its SSIM drops
    cropped = ssim_map[pad:-pad, pad:-pad, :]
    cropped_mask = mask[pad:-pad, pad:-pad, :]
    per_channel = cropped.sum(axis=(0, 1)) / cropped_mask.sum(axis=(0, 1))
    return float(np.mean(per_channel))


def realblur_psnr_ssim(restored, target) -> RealBlurScore:
    """PSNR and SSIM of ``restored`` against ``target`` under the RealBlur protocol (see module docstring)."""
    aligned, target_masked, mask, warp, converged = realblur_align(restored, target)
    return RealBlurScore(
        psnr=masked_psnr(target_masked, aligned, mask),
        ssim=masked_ssim(target_masked, aligned, mask),
        converged=converged,
        warp=np.asarray(warp),
    )
