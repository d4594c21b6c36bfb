"""Small image helpers shared by the data builders: 8-bit RGB in, 8-bit RGB PNG out (written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic_io import atomic_path
from ..image_processing import DEFAULT_MAX_PIXELS, read_image_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def load_rgb_uint8(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as ``uint8`` ``[H, W, 3]`` RGB (grey and RGBA are converted).

    The project's one reader (:func:`fidediff_pipeline.image_processing.read_image`): the same formats, pixel
    limit and one-line ``ValueError`` as the CLI and the app; 16-bit files are rounded to 8 bits, never clipped.
    """
    return read_image_uint8(path, max_pixels)


def to_float01(image: np.ndarray) -> np.ndarray:
    """``uint8`` (or already float in [0, 1]) ``[H, W, 3]`` -> float64 in [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an image [H, W, 3]; got shape {image.shape}")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if np.issubdtype(image.dtype, np.floating):
        if image.size and (image.min() < -1e-6 or image.max() > 1 + 1e-6):
            raise ValueError("float images must have values in [0, 1]")
        return np.clip(image.astype(np.float64), 0.0, 1.0)
    raise ValueError(f"unsupported image dtype {image.dtype}: use uint8 or float in [0, 1]")


def quantize_uint8(image: np.ndarray) -> np.ndarray:
    """Float in [0, 1] -> ``uint8`` with round-to-nearest (what saving an 8-bit PNG does)."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png_atomic(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Save ``uint8`` ``[H, W, 3]`` as PNG via a temporary name, so a killed run never leaves a truncated
    file that a resumed run would mistake for a finished one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.dtype != np.uint8:
        raise ValueError(f"save_png_atomic expects uint8; got {image.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def save_npy_atomic(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Save an array as ``.npy`` (no pickle) via a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
    return path


def load_kernel(path: str | os.PathLike) -> np.ndarray:
    """Load a saved ``[m, m]`` float32 kernel (``allow_pickle=False``), checking its shape."""
    kernel = np.load(path, allow_pickle=False)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise ValueError(f"{path}: expected an [m, m] kernel with m odd; got shape {kernel.shape}")
    return kernel.astype(np.float32, copy=False)
