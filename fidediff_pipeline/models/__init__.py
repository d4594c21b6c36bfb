"""FideDiff's models (diffusers `ModelMixin` / `ConfigMixin` classes, one file each, as in ``diffusers.models``), the
VAE attention processor and the opt-in GroupNorm for large images on CUDA."""

from .attention_processor import WideHeadAttnProcessor
from .modeling_kernel_controlnet import KernelControlNetModel, KernelControlNetOutput
from .modeling_prompt_embedding import FideDiffPromptEmbedding
from .normalization import ReductionGroupNorm, use_reduction_group_norm

__all__ = ["FideDiffPromptEmbedding", "KernelControlNetModel", "KernelControlNetOutput", "ReductionGroupNorm",
           "WideHeadAttnProcessor", "use_reduction_group_norm"]
