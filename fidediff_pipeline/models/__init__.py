"""FideDiff's models (diffusers `ModelMixin` / `ConfigMixin` classes, one file each, as in ``diffusers.models``)."""

from .modeling_kernel_controlnet import KernelControlNetModel, KernelControlNetOutput
from .modeling_prompt_embedding import FideDiffPromptEmbedding

__all__ = ["FideDiffPromptEmbedding", "KernelControlNetModel", "KernelControlNetOutput"]
