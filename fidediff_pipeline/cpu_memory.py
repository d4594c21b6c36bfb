"""Let CPU tensors reuse freed memory instead of faulting in fresh pages (glibc's malloc, Linux).

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves every block above its mmap threshold
(128 KiB, raised on the fly up to at most 32 MiB) with a fresh ``mmap`` and returns it to the kernel on ``free``, so
each large activation of a pipeline call (a 96-channel map at 512 x 512 latents is 100 MB) is faulted in page by
page and zeroed by the kernel, once per op. On this project's 2-core VM that is a third of a one-megapixel call
of the tiny model: 7.5-8.6 s with glibc's defaults, 5.3-5.5 s with large blocks kept in the heap
(benchmarks/README.md). The same tuning PyTorch's CPU performance guide gets from jemalloc or tcmalloc, done
with glibc's own ``mallopt``, so nothing is preloaded or installed.

The price: memory freed by the process stays with the process (up to its peak) instead of going back to the
system after each call. The setting is process-wide and stays for the life of the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys

# Blocks up to this size come from (and return to) the heap, and up to this much free memory at the heap's top is
# kept. 1 GiB covers the largest activations of the tiny model's default paths (tiles and windows bound them).
KEEP_FREED_BYTES = 1 << 30
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_applied: bool | None = None


def keep_freed_cpu_memory() -> bool:
    """Make glibc's ``malloc`` keep freed blocks of up to `KEEP_FREED_BYTES` in the process for reuse.

    Idempotent: the first call sets it for the process; later calls return the same answer. Returns ``True`` where
    it was set (Linux with glibc), ``False`` where it does not apply (macOS, Windows, musl), which changes nothing.

    Example:
        >>> from fidediff_pipeline.cpu_memory import keep_freed_cpu_memory
        >>> keep_freed_cpu_memory() in (True, False)
        True
    """
    global _applied
    if _applied is None:
        _applied = _set_glibc_thresholds(KEEP_FREED_BYTES)
    return _applied


def _set_glibc_thresholds(nbytes: int) -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; both must hold, or large blocks would still be unmapped on free.
    return bool(mallopt(_M_MMAP_THRESHOLD, nbytes)) and bool(mallopt(_M_TRIM_THRESHOLD, nbytes))


def peak_rss_gib() -> float:
    """This process's peak resident set size so far, in GiB (2**30 bytes), as benchmarks and training report it.

    Linux reports ``ru_maxrss`` in KiB, macOS in bytes; 0.0 where the ``resource`` module is missing (Windows).
    """
    try:
        import resource
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20
