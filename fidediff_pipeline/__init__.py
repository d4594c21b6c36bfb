"""FideDiff for the Hugging Face ecosystem: one-step, high-fidelity motion deblurring with diffusers."""

import importlib
from pathlib import Path

__version__ = "0.1.0"

# The public names, imported on first use (PEP 562), as diffusers does: importing the package (every `fidediff`
# command, `fidediff --help`) does not pay for torch and diffusers (4 s here) until a model is needed.
_LAZY = {
    "apply_per_pixel_kernels": ".kernel_ops",
    "FideDiffPromptEmbedding": ".models",
    "KernelControlNetModel": ".models",
    "KernelControlNetOutput": ".models",
    "DEFAULT_TIMESTEP": ".pipelines",
    "FideDiffPipeline": ".pipelines",
    "FideDiffPipelineOutput": ".pipelines",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])

# The bundled fidediff-tiny checkpoint (trained here by train/make_tiny.py), the default model offline.
DEFAULT_MODEL = str(Path(__file__).resolve().parent / "checkpoints" / "fidediff-tiny")

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TIMESTEP",
    "FideDiffPipeline",
    "FideDiffPipelineOutput",
    "FideDiffPromptEmbedding",
    "KernelControlNetModel",
    "KernelControlNetOutput",
    "apply_per_pixel_kernels",
]
