"""Choosing the model, device and dtype the way every entry point (CLI, demo, Space, eval) does."""

from __future__ import annotations

import os
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def default_model() -> str:
    """``$FIDEDIFF_MODEL`` if set, else the bundled tiny checkpoint (``fidediff_pipeline.DEFAULT_MODEL``)."""
    from .. import DEFAULT_MODEL

    return os.environ.get("FIDEDIFF_MODEL") or DEFAULT_MODEL


def resolve_device(device: str | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    # Checked here, not by torch at the first tensor moved there (a traceback from deep inside torch).
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if resolved.type not in available:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if not available[resolved.type]:
        what = "no CUDA GPU" if resolved.type == "cuda" else "no Apple GPU (MPS)"
        raise ValueError(f"device {device!r} was asked for, but {what} is available here; use --device cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"device {device!r} was asked for, but this machine has {count} CUDA GPU(s): "
                         f"cuda:0 to cuda:{count - 1}")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None = "float32") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16")
    return DTYPES[dtype]


def load_pipeline(model: str | None = None, device: str | None = "auto", dtype: str | torch.dtype | None = "float32"):
    """Load a `FideDiffPipeline` from a folder or Hub id (default: `default_model()`), on a device, in a dtype.

    Example:
        >>> pipe = load_pipeline()  # the bundled tiny checkpoint, on CUDA if present
    """
    from ..pipelines.pipeline_fidediff import FideDiffPipeline

    model = model or default_model()
    from .. import DEFAULT_MODEL

    if model == DEFAULT_MODEL and not Path(model).is_dir():
        raise ValueError(
            f"the bundled checkpoint is missing at {model}; build it with `python train/make_tiny.py` "
            "or pass --model <folder or Hub id>"
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    if torch_device.type == "cpu" and torch_dtype != torch.float32:
        # Half precision on CPU is slow (bf16 ~50x here) or unsupported; say so rather than silently waiting.
        import warnings

        warnings.warn(f"{torch_dtype} on CPU is much slower than float32", stacklevel=2)
    pipe = FideDiffPipeline.from_pretrained(model, dtype=torch_dtype)
    return pipe.to(torch_device)
