"""Turning user inputs (files, PIL images, numpy arrays, tensors) into model inputs, with clear errors."""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Sequence

import numpy as np
import PIL.Image
import torch

# 40 megapixels: a 8K photo fits; a decompression bomb does not. Configurable per call.
DEFAULT_MAX_PIXELS = 40_000_000
MIN_IMAGE_SIDE = 8
SUPPORTED_INPUTS = "PIL images, numpy arrays (HxW, HxWx1/3/4, or a batch BxHxWxC; uint8, or float in [0, 1]), torch tensors ([C,H,W] or [B,C,H,W], float in [0, 1]), file paths, or a list of these"


def _check_size(height: int, width: int, max_pixels: int | None, what: str) -> None:
    if height == 0 or width == 0:
        raise ValueError(f"{what} is empty ({width}x{height} pixels); it needs at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
    if height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
        raise ValueError(f"{what} is {width}x{height} pixels; the smallest accepted size is {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(
            f"{what} has {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(a guard against decompression bombs); pass a larger max_pixels if you trust it"
        )


def _is_16bit_png(image: PIL.Image.Image) -> bool:
    # Pillow silently reduces 16-bit RGB PNGs to 8-bit "RGB"; the raw mode still tells.
    tile = getattr(image, "tile", None) or []
    return any(len(t) > 3 and isinstance(t[3], (str, tuple)) and ";16" in str(t[3]) for t in tile)


# Modes Pillow gives deep single-channel files: 16-bit grey PNG/TIFF ("I;16*", or "I" for PNG), float TIFF ("F").
_DEEP_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """THE image-file reader of the project (CLI, app, data builders, datasets, eval, ``--train_images``).

    Returns RGB ``[H, W, 3]``: ``uint8`` for 8-bit files, ``float32`` in ``[0, 1]`` for deeper ones (16-bit
    PNG/TIFF are scaled by 1/65535, never clipped to 255; float images must already be in ``[0, 1]``), turned
    the way a viewer shows it (the EXIF orientation of phone photos is applied).
    The size is checked from the header before decoding (``max_pixels``: the decompression-bomb guard).

    Raises ``FileNotFoundError`` for a missing file and a one-line ``ValueError`` naming the file for: not an
    image, corrupt or truncated data, a file that cannot be read (permissions), more than 4 channels, 32-bit
    integer or out-of-range float images, empty or tiny images, and images over ``max_pixels``.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "deep.png")
        >>> PIL.Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(path)
        >>> image = read_image(path)
        >>> image.dtype, image.shape, float(image.max())
        (dtype('float32'), (8, 8, 3), 1.0)
    """
    return _read(path, max_pixels).pixels


class ImageFile(NamedTuple):
    """What :func:`read_image_file` reads: :func:`read_image`'s pixels, and what an output needs to show as its
    input did (:func:`read_alpha`, :func:`read_icc_profile`)."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    icc_profile: bytes | None


def read_image_file(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageFile:
    """:func:`read_image` with the file's transparency and RGB colour profile, from one opening of the file."""
    return _read(path, max_pixels, extras=True)


# Photo formats Pillow does not read without plug-ins, named in the error (iPhones save HEIC by default).
_UNREAD_KINDS = {".heic": "HEIC", ".heif": "HEIF", ".jxl": "JPEG XL", ".dng": "camera raw (DNG)",
                 ".cr2": "camera raw (CR2)", ".cr3": "camera raw (CR3)", ".nef": "camera raw (NEF)",
                 ".arw": "camera raw (ARW)", ".raf": "camera raw (RAF)", ".orf": "camera raw (ORF)",
                 ".rw2": "camera raw (RW2)"}


# EXIF orientation (tag 0x0112) -> the operation on an HxWxC array that shows the picture the way it was taken.
_ORIENT_ARRAY = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, -1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def exif_orientation(image: PIL.Image.Image) -> int:
    """The EXIF orientation of an opened file (1, upright, when it has none or it cannot be read)."""
    try:
        orientation = int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a readable photo unreadable
        return 1
    return orientation if orientation in _ORIENT_ARRAY else 1


def _upright(data: np.ndarray, orientation: int) -> np.ndarray:
    if orientation not in _ORIENT_ARRAY:
        return data
    return np.ascontiguousarray(_ORIENT_ARRAY[orientation](data))  # a writable copy (torch.from_numpy downstream)


def _read(path: str | os.PathLike, max_pixels: int | None, extras: bool = False) -> ImageFile:
    """:func:`read_image`; with ``extras`` also the file's transparency and RGB colour profile (else None)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{path}: permission denied (the file is not readable)")
    try:
        with PIL.Image.open(path) as image:
            width, height = image.size
            _check_size(height, width, max_pixels, path)
            if len(image.getbands()) > 4:
                raise ValueError(f"{path}: {len(image.getbands())} channels; accepted are gray, RGB and RGBA")
            deep = _is_16bit_png(image)  # (before getexif: for a PNG it may load the pixels, which clears `tile`)
            # Phone cameras store the sensor's pixels and say in EXIF how to turn them: every viewer turns them,
            # and so does this reader (diffusers' `load_image` too), so an output is shown as its input was.
            orientation = exif_orientation(image)
            profile = _rgb_profile(image) if extras else None
            if image.mode in _DEEP_GREY_MODES:
                return ImageFile(_upright(_deep_grey(image, path), orientation), None, profile)
            image.load()
            rgb = np.array(to_rgb(image), dtype=np.uint8)  # a writable copy (torch.from_numpy downstream)
            alpha = _alpha_channel(image, orientation) if extras else None
        if deep:  # Pillow reduced a 16-bit colour PNG to 8 bits: read all 16 where OpenCV is installed
            return ImageFile(_upright(_read_16bit_colour(path, rgb), orientation), alpha, profile)
        return ImageFile(_upright(rgb, orientation), alpha, profile)
    except PIL.Image.DecompressionBombError as err:
        raise ValueError(f"{path}: refused as a possible decompression bomb ({err})") from None
    except PIL.UnidentifiedImageError:
        kind = _UNREAD_KINDS.get(os.path.splitext(path)[1].lower())
        if kind:  # a photo in a format Pillow does not read without plug-ins: say which and what to do
            raise ValueError(f"{path}: {kind} files cannot be read here (accepted: PNG, JPEG, WebP, BMP, TIFF); "
                             "export or convert it to JPEG or PNG") from None
        raise ValueError(f"{path}: not an image file that can be read (accepted: PNG, JPEG, WebP, BMP, TIFF)") from None
    except PermissionError as err:
        raise ValueError(f"{path}: permission denied ({err.strerror})") from None
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: the image data is corrupt or truncated ({err})") from None


def _deep_grey(image: PIL.Image.Image, path: str) -> np.ndarray:
    """16-bit grey -> float32 in [0, 1] (/65535); float grey must be in [0, 1]; 32-bit integer is refused."""
    image.load()
    if image.mode == "F":
        data = np.asarray(image, dtype=np.float32)
        if not np.isfinite(data).all() or (data.size and (data.min() < 0 or data.max() > 1)):
            raise ValueError(f"{path}: a floating-point image must hold finite values in [0, 1]")
    elif image.mode == "I" and image.format != "PNG":  # PNG "I" is 16-bit grey; TIFF "I" is 32-bit
        raise ValueError(f"{path}: 32-bit integer images are not supported; save it as 8- or 16-bit (PNG or TIFF)")
    else:
        data = np.asarray(image).astype(np.float32) / 65535.0
    return np.repeat(np.clip(data, 0.0, 1.0)[..., None], 3, axis=-1)


def _read_16bit_colour(path: str, fallback_rgb: np.ndarray) -> np.ndarray:
    try:
        import cv2
    except ImportError:  # Pillow's 8-bit reduction: exact to 1/255, never clipped
        return fallback_rgb
    data = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint16 or data.shape[:2] != fallback_rgb.shape[:2]:
        return fallback_rgb
    if data.ndim == 2:
        data = np.repeat(data[..., None], 3, axis=-1)
    elif data.shape[2] == 2:  # grey + alpha
        data = np.repeat(data[..., :1], 3, axis=-1)
    else:
        data = data[..., 2::-1] if data.shape[2] >= 3 else data  # BGR(A) -> RGB, alpha dropped
    return np.ascontiguousarray(data).astype(np.float32) / 65535.0


def read_icc_profile(path: str | os.PathLike) -> bytes | None:
    """The RGB ICC colour profile embedded in an image file, or None (none, not an RGB profile, or unreadable:
    :func:`read_image` says why).

    The model restores a file's own values, whatever RGB space they are in (Display P3 from phones, Adobe RGB or
    ProPhoto from raw converters); the output carries the input's profile so that viewers show it in the same
    colours, where without it they would take the values for sRGB. A grey or CMYK file's profile does not describe
    the RGB output (PNG allows only an RGB profile on RGB data), so it is not carried.
    """
    try:
        with PIL.Image.open(os.fspath(path)) as image:
            return _rgb_profile(image)
    except Exception:  # noqa: BLE001 - reading the pixels reports the problem
        return None


def _rgb_profile(image: PIL.Image.Image) -> bytes | None:
    profile = image.info.get("icc_profile") or None
    return profile if profile and profile[16:20] == b"RGB " else None  # the header's data colour space


def read_image_uint8(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`read_image` as ``uint8`` RGB: deep images are rounded to the nearest 8-bit level (not clipped)."""
    image = read_image(path, max_pixels)
    if image.dtype == np.uint8:
        return image
    return np.rint(image * 255.0).astype(np.uint8)


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> PIL.Image.Image:
    """Open an image file as an 8-bit RGB PIL image, with the checks and errors of :func:`read_image`.

    16-bit files are rounded to 8 bits; use :func:`read_image` for all 16. The EXIF orientation is applied.
    """
    return PIL.Image.fromarray(read_image_uint8(path, max_pixels))


def _has_alpha(image: PIL.Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def read_alpha(path: str | os.PathLike) -> np.ndarray | None:
    """The transparency of an image file as ``uint8`` ``[H, W]``, turned as :func:`read_image` turns its colours
    (EXIF), or None when it has none (or cannot be read: :func:`read_image` says why). Outputs carry it over:
    a logo on a transparent background stays on one."""
    try:
        with PIL.Image.open(os.fspath(path)) as image:
            return _alpha_channel(image, exif_orientation(image))
    except Exception:  # noqa: BLE001 - reading the pixels reports the problem
        return None


def _alpha_channel(image: PIL.Image.Image, orientation: int) -> np.ndarray | None:
    if not _has_alpha(image):
        return None
    alpha = np.array(image.convert("RGBA"), dtype=np.uint8)[..., 3:]
    return _upright(alpha, orientation)[..., 0]


def with_alpha(image, alpha: np.ndarray | None):
    """``image`` (an RGB PIL image, or an ``HxWx3`` float array in ``[0, 1]``) with ``alpha`` (:func:`read_alpha`,
    :func:`read_image_file`) as its fourth channel; ``image`` itself when ``alpha`` is None."""
    if alpha is None:
        return image
    if isinstance(image, PIL.Image.Image):
        rgba = image.convert("RGBA")
        rgba.putalpha(PIL.Image.fromarray(alpha))
        return rgba
    return np.concatenate([np.asarray(image, dtype=np.float32), alpha[..., None].astype(np.float32) / 255.0], axis=-1)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Gray, palette and RGBA images become RGB (the model restores the colour channels; :func:`read_alpha` and
    :func:`with_alpha` carry a file's transparency over to its output)."""
    if image.mode == "RGB":
        return image
    if _has_alpha(image):
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def _numpy_to_tensor(array: np.ndarray, what: str) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"{what} has shape {array.shape}; accepted are HxW, HxWxC and BxHxWxC arrays with C in 1, 3, 4")
    channels = array.shape[2]
    if channels not in (1, 3, 4):
        raise ValueError(f"{what} has {channels} channels; accepted are 1 (gray), 3 (RGB) and 4 (RGBA)")
    if array.dtype == np.uint8:
        data = array.astype(np.float32) / 255.0
    elif array.dtype in (np.uint16, np.int32, np.uint32, np.int64, np.int16):
        raise ValueError(f"{what} is a {array.dtype} array (16-bit or wider); convert it to uint8, or to float in [0, 1]")
    elif np.issubdtype(array.dtype, np.floating):
        data = array.astype(np.float32)
        if not np.isfinite(data).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        lo, hi = float(data.min()), float(data.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"{what} is a float array with values in [{lo:.3g}, {hi:.3g}]; float images must be in [0, 1]")
    else:
        raise ValueError(f"{what} has dtype {array.dtype}; accepted are uint8 and float arrays")
    tensor = torch.from_numpy(np.ascontiguousarray(data)).permute(2, 0, 1)
    return _to_three_channels(tensor)


def _to_three_channels(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.shape[0] == 1:
        return tensor.expand(3, -1, -1).clone()
    if tensor.shape[0] == 4:
        return tensor[:3].clone()
    return tensor


def _tensor_to_list(tensor: torch.Tensor, what: str) -> list[torch.Tensor]:
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4:
        raise ValueError(f"{what} has shape {tuple(tensor.shape)}; accepted are [C, H, W] and [B, C, H, W] tensors")
    if tensor.shape[1] not in (1, 3, 4):
        raise ValueError(f"{what} has {tensor.shape[1]} channels; accepted are 1, 3 and 4")
    if not tensor.is_floating_point():
        if tensor.dtype == torch.uint8:
            tensor = tensor.float() / 255.0
        else:
            raise ValueError(f"{what} has dtype {tensor.dtype}; accepted are float tensors in [0, 1] and uint8")
    tensor = tensor.detach().float().cpu()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    lo, hi = float(tensor.min()), float(tensor.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{what} has values in [{lo:.3g}, {hi:.3g}]; tensors must be in [0, 1]")
    return [_to_three_channels(t) for t in tensor]


def _check_layout(shape: tuple, what: str, channels_last: bool) -> None:
    """Name an empty batch or a transposed layout, instead of a size error about the wrong axes."""
    if channels_last:
        if len(shape) == 4 and shape[0] == 0:
            raise ValueError(f"{what} is an empty batch (shape {shape}); pass at least one image")
        if len(shape) in (3, 4) and shape[-3] in (1, 3, 4) and shape[-1] not in (1, 3, 4) \
                and min(shape[-2:]) >= MIN_IMAGE_SIDE:
            layout, order = ("HxWxC", "(1, 2, 0)") if len(shape) == 3 else ("BxHxWxC", "(0, 2, 3, 1)")
            raise ValueError(f"{what} has shape {shape}, which looks channels-first; numpy arrays must be {layout} "
                             f"(use array.transpose{order})")
        return
    if len(shape) == 4 and shape[0] == 0:
        raise ValueError(f"{what} is an empty batch (shape {shape}); pass at least one image")
    if len(shape) in (3, 4) and shape[-1] in (1, 3, 4) and shape[-3] not in (1, 3, 4) and min(shape[-3:-1]) >= MIN_IMAGE_SIDE:
        order = "(2, 0, 1)" if len(shape) == 3 else "(0, 3, 1, 2)"
        raise ValueError(f"{what} has shape {shape}, which looks channels-last; tensors must be [C, H, W] or "
                         f"[B, C, H, W] (use tensor.permute{order})")


def _numpy_batch_items(array: np.ndarray, what: str) -> list[tuple[np.ndarray, str]]:
    """A ``BxHxWxC`` array is ``B`` images (diffusers' convention for numpy batches); any other array is one."""
    if array.ndim > 4:
        raise ValueError(f"{what} has shape {array.shape}; accepted are HxW, HxWxC and BxHxWxC arrays with C in 1, 3, 4")
    if array.ndim != 4:
        return [(array, what)]
    if len(array) == 1:
        return [(array[0], what)]
    return [(item, f"{what}, batch item {index}") for index, item in enumerate(array)]


def prepare_images(image: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[torch.Tensor]:
    """Convert any accepted input to a list of float tensors ``[3, H, W]`` in ``[0, 1]`` (CPU).

    A numpy ``BxHxWxC`` array and a ``[B, C, H, W]`` tensor are ``B`` images.

    Example:
        >>> prepare_images(np.zeros((16, 16, 3), dtype=np.uint8))[0].shape
        torch.Size([3, 16, 16])
        >>> len(prepare_images(np.zeros((2, 16, 16, 3), dtype=np.float32)))
        2
    """
    items: Sequence[Any] = image if isinstance(image, (list, tuple)) else [image]
    if len(items) == 0:
        raise ValueError(f"no image given; expected {SUPPORTED_INPUTS}")
    tensors: list[torch.Tensor] = []
    for index, item in enumerate(items):
        what = f"image {index}" if len(items) > 1 else "the image"
        if isinstance(item, (str, os.PathLike)):
            tensors.append(_numpy_to_tensor(read_image(item, max_pixels), os.fspath(item)))  # 16-bit: all of it
            continue
        if isinstance(item, PIL.Image.Image):
            _check_size(item.height, item.width, max_pixels, what)
            if item.mode in _DEEP_GREY_MODES:  # 16-bit grey (as `Image.open` gives a 16-bit PNG) or float grey
                tensors.append(_numpy_to_tensor(_deep_grey(item, what), what))
                continue
            if len(item.getbands()) > 4:
                raise ValueError(f"{what} has {len(item.getbands())} channels; accepted are gray, RGB and RGBA")
            tensors.append(_numpy_to_tensor(np.asarray(to_rgb(item)), what))
        elif isinstance(item, np.ndarray):
            _check_layout(tuple(item.shape), what, channels_last=True)
            for array, array_what in _numpy_batch_items(item, what):
                if array.ndim >= 2:
                    _check_size(array.shape[0], array.shape[1], max_pixels, array_what)
                tensors.append(_numpy_to_tensor(array, array_what))
        elif isinstance(item, torch.Tensor):
            _check_layout(tuple(item.shape), what, channels_last=False)
            if item.ndim >= 2:
                _check_size(item.shape[-2], item.shape[-1], max_pixels, what)
            tensors.extend(_tensor_to_list(item, what))
        else:
            raise ValueError(f"{what} is a {type(item).__name__}; expected {SUPPORTED_INPUTS}")
    return tensors


def postprocess(images: list[torch.Tensor], output_type: str):
    """``[3, H, W]`` tensors in ``[0, 1]`` -> ``pil`` list, ``np`` float array ``[B, H, W, 3]``, or ``pt`` tensor.

    When the images differ in size, ``np`` and ``pt`` return lists instead of one stacked array.
    """
    if output_type == "pil":
        return [PIL.Image.fromarray((img.clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)) for img in images]
    same_size = len({tuple(img.shape) for img in images}) == 1
    if output_type == "np":
        arrays = [img.clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() for img in images]
        return np.stack(arrays) if same_size else arrays
    if output_type == "pt":
        return torch.stack(images) if same_size else images
    raise ValueError(f"output_type must be 'pil', 'np' or 'pt'; got {output_type!r}")
