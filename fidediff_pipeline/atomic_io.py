"""Writing files so that a crash leaves either the old file or the new one, never a partial one.

Every file the project writes for a user (deblurred images, eval images and tables, data-builder outputs,
checkpoints) goes to a temporary name in the same folder and is renamed into place with ``os.replace``,
which is atomic on POSIX and Windows when both names are on one file system (same folder: always).
Temporary names end in ``.partial-<pid>``: no image extension, so a folder scan never mistakes one for an
input or a finished output, and two processes writing the same file never share one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

PARTIAL_MARK = ".partial"


def temporary_name(path: str | os.PathLike) -> Path:
    """The temporary sibling of ``path`` this process writes before renaming (``<name>.partial-<pid>``)."""
    path = Path(path)
    return path.with_name(f"{path.name}{PARTIAL_MARK}-{os.getpid()}")


def is_temporary(path: str | os.PathLike) -> bool:
    """True for a leftover temporary file or folder of an interrupted write (never a finished output)."""
    return PARTIAL_MARK in Path(path).name or ".tmp-" in Path(path).name


def _fsync(path: Path) -> None:
    # Rename without fsync is enough against a killed process; fsync also covers a power loss.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``, on error it is removed.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "hello.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("hi")
        >>> target.read_text()
        'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``Path.write_text`` through a temporary name."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_image_atomic(image, path: str | os.PathLike, icc_profile: bytes | None = None) -> Path:
    """Save an image as PNG through a temporary name: a PIL image as it is, an ``HxWx3`` (or ``HxWx4``, with alpha)
    float array in ``[0, 1]`` (a result restored from a 16-bit file) as a 16-bit RGB(A) PNG; with ``icc_profile``
    (the input's colour profile, :func:`~fidediff_pipeline.image_processing.read_icc_profile`) embedded."""
    with atomic_path(path) as tmp:
        if hasattr(image, "save"):
            extra = {"icc_profile": icc_profile} if icc_profile else {}
            image.save(tmp, format="PNG", **extra)  # (PNG whatever the temporary suffix)
        else:
            tmp.write_bytes(encode_png16(image, icc_profile))
    return Path(path)


def encode_png16(rgb, icc_profile: bytes | None = None) -> bytes:
    """An ``HxWx3`` (RGB) or ``HxWx4`` (RGBA) float array in ``[0, 1]`` as the bytes of a 16-bit PNG (Pillow cannot
    write 16-bit colour), with ``icc_profile`` in an iCCP chunk when given."""
    import struct
    import zlib

    import numpy as np

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or not np.issubdtype(rgb.dtype, np.floating):
        raise ValueError(f"a 16-bit PNG is written from an HxWx3 or HxWx4 float array in [0, 1], not {rgb.dtype} "
                         f"{rgb.shape}")
    data = np.rint(np.clip(rgb, 0.0, 1.0) * 65535.0).astype(">u2")
    height, width, channels = data.shape
    rows = np.zeros((height, 1 + width * 2 * channels), dtype=np.uint8)  # filter byte 0 ("none") + the pixels
    rows[:, 1:] = data.reshape(height, -1).view(np.uint8)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    colour_type = 2 if channels == 3 else 6  # RGB or RGBA
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    # iCCP: a profile name, a NUL, compression method 0 (zlib), the compressed profile; before the image data
    profile = chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)) if icc_profile else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + profile
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces ``path`` (a folder), on error it is removed.

    A folder cannot be swapped in one ``os.replace`` when the target exists: the old one is first renamed aside
    (``<name>.partial-<pid>.old``) and removed after the new one is in place, so a kill leaves the old folder, the
    new one, or the old one under its aside name next to nothing half-written under ``path``.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "model"
        >>> with atomic_folder(target) as tmp:
        ...     _ = (tmp / "config.json").write_text("{}")
        >>> sorted(p.name for p in target.iterdir())
        ['config.json']
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = tmp.with_name(tmp.name + ".old")
    if path.exists():
        os.replace(path, aside)
    os.replace(tmp, path)
    shutil.rmtree(aside, ignore_errors=True)
