"""FideDiff for the Hugging Face ecosystem: one-step, high-fidelity motion deblurring with diffusers."""

from pathlib import Path

from .kernel_ops import apply_per_pixel_kernels
from .models import FideDiffPromptEmbedding, KernelControlNetModel, KernelControlNetOutput
from .pipelines import DEFAULT_TIMESTEP, FideDiffPipeline, FideDiffPipelineOutput

__version__ = "0.1.0"

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
