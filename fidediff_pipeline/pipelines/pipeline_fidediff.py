"""FideDiff: one-step, high-fidelity motion deblurring with a Stable Diffusion UNet, as a diffusers pipeline."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.loaders.lora_pipeline import _LOW_CPU_MEM_USAGE_DEFAULT_LORA
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput, convert_unet_state_dict_to_peft
from safetensors import SafetensorError
from tqdm.auto import tqdm

from ..cpu_memory import keep_freed_cpu_memory
from ..hub.remote_code import write_package_index, write_remote_code
from ..image_processing import DEFAULT_MAX_PIXELS, postprocess, prepare_images
from ..kernel_ops import expand_kernel_map
from ..models.attention_processor import WideHeadAttnProcessor
from ..models.modeling_kernel_controlnet import KernelControlNetModel
from ..models.modeling_prompt_embedding import FideDiffPromptEmbedding
from ..restoration import (
    low_frequency_transfer, predict_original_latents, resize_from_vae, upsample_for_vae, vae_encode_mode,
)
from ..tiling import blend_weights, iterate_tiles, tiled_map

logger = logging.getLogger(__name__)

# GoPro's test blur is 11 averaged frames: t = (11 - 1) * 20 = 200 (paper Sec. 3.4 and 5.1).
DEFAULT_TIMESTEP = 200
# Largest latent window of an AutoencoderTiny pass on the CPU (`FideDiffPipeline._tiny_vae_windows`; the same output
# as one pass). With glibc's default thresholds 256-latent windows were fastest (fresh pages for every large
# activation); with freed pages reused (cpu_memory.py) a 1024 px call takes 5.4-5.7 s with 256, 4.9-5.1 s with 512,
# and 2048 px the same with either (benchmarks/README.md).
TINY_VAE_CPU_WINDOW = 512
# Kernel maps the tiled path keeps from its first pass (t) for its second (the UNet tiles), so that the kernel
# estimator runs once per tile; beyond this the remaining tiles' kernels are estimated again (bounded memory). The
# tiny model at 2048 x 2048 px needs about 0.5 GiB (25 tiles, one 361-tap kernel per 4 x 4 px, fp32).
TILE_KERNEL_BUDGET_BYTES = 768 * 2**20
_COMPONENT_CLASSES = {"prompt_embedding": FideDiffPromptEmbedding, "kernel_controlnet": KernelControlNetModel}

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from diffusers.utils import load_image
        >>> from fidediff_pipeline import FideDiffPipeline, DEFAULT_MODEL

        >>> pipe = FideDiffPipeline.from_pretrained(DEFAULT_MODEL)  # or a Hub id / folder
        >>> blurry = load_image("blurry.png")  # RGB, turned as its EXIF says (phone photos)
        >>> out = pipe(blurry, timestep="auto", upscale_factor=2)
        >>> out.images[0].save("sharp.png")
        >>> out.timesteps  # the blur level used, predicted by the Kernel ControlNet
        [180]
        ```
"""


@dataclass
class FideDiffPipelineOutput(BaseOutput):
    """
    Output of [`FideDiffPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the restored images, each the size of its input.
        timesteps (`list[int]`): the timestep ``t`` used for each image.
        timestep_sources (`list[str]`): per image, ``"predicted"`` (t-regressor), ``"given"`` (by the caller) or
            ``"default"`` (``timestep="auto"`` without a Kernel ControlNet: 200, GoPro's blur level).
        predicted_timesteps (`list[float]` or `None`): the t-regressor's raw estimate, when a Kernel ControlNet ran.
        kernels (`list[np.ndarray]` or `None`): with ``return_kernels=True``, per image the estimated per-pixel
            kernels ``[m*m, H, W]`` (see `fidediff_pipeline.kernel_ops` for the layout).
    """

    images: Any
    timesteps: list[int]
    timestep_sources: list[str]
    predicted_timesteps: list[float] | None = None
    kernels: list[np.ndarray] | None = None


def _drop_derived_vae_config(config_path: Path) -> None:
    """Remove ``block_out_channels`` from a saved AutoencoderTiny config.

    AutoencoderTiny registers it itself (a copy of ``decoder_block_out_channels``) but does not accept it as an
    argument, so diffusers warns "config attributes ... will be ignored" on every load of a folder that has it.
    """
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.pop("block_out_channels", None) is not None:
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _has_self_attention(unet_config) -> bool:
    """Whether a ``UNet2DConditionModel`` config has self-attention layers (SD's UNet does; the tiny preset's
    transformer blocks only attend to the prompt tokens and its mid block is convolutional)."""
    blocks = [*unet_config.get("down_block_types", ()), *unet_config.get("up_block_types", ())]
    only_cross = unet_config.get("only_cross_attention", False)
    only_cross = all(only_cross) if isinstance(only_cross, (list, tuple)) else bool(only_cross)
    mid_only_cross = unet_config.get("mid_block_only_cross_attention")
    mid_only_cross = only_cross if mid_only_cross is None else bool(mid_only_cross)
    blocks_attend = any("CrossAttn" in b for b in blocks) and not only_cross
    mid_attends = unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn" and not mid_only_cross
    return blocks_attend or mid_attends


class FideDiffPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    r"""
    One-step motion deblurring with FideDiff (blur level as the diffusion timestep, a consistency-trained UNet and
    an optional Kernel ControlNet).

    The blurry image is encoded to ``z_t``; one UNet call predicts ``eps``; the sharp latent is
    ``z0 = (z_t - sqrt(1 - a_t) * eps) / sqrt(a_t)`` with the scheduler's own ``alphas_cumprod`` (paper eq. 3, 8).

    Args:
        vae ([`AutoencoderKL`] or [`AutoencoderTiny`]): the image autoencoder (SD's AutoencoderKL; the tiny
            checkpoint uses the TAESD architecture).
        unet ([`UNet2DConditionModel`]): epsilon-prediction UNet.
        scheduler ([`DDPMScheduler`] or any scheduler with ``alphas_cumprod``): the noise schedule.
        prompt_embedding ([`FideDiffPromptEmbedding`]): the learned text embedding ``c``.
        kernel_controlnet ([`KernelControlNetModel`], *optional*): kernels, t-prediction and ControlNet residuals;
            ``None`` gives the base model.
        default_upscale_factor (`int`, defaults to 2): ``upscale_factor`` used when a call does not pass one
            (saved in ``model_index.json``; the tiny checkpoint, whose VAE has factor 2, sets 1).
        color_fix_sigma (`float`, *optional*): when set (by a model trained with it), the output's lowest
            frequencies are taken from the blurry input (`restoration.low_frequency_transfer`).

    On the CPU the pipeline runs its models on channels-last tensors (faster with oneDNN, same output to ~1e-6);
    ``pipe.channels_last_on_cpu = False`` runs them in the default layout. The first call on the CPU also lets the
    process keep freed memory for reuse (`cpu_memory.keep_freed_cpu_memory`: a third less time for a megapixel on
    a 2-core VM; freed memory then stays with the process); ``pipe.reuse_cpu_memory = False`` before it leaves
    glibc's defaults.

    An [`AutoencoderKL`]'s attention (SD's VAE: one head of 512 channels, no flash kernel for it) runs through
    [`~models.attention_processor.WideHeadAttnProcessor`]: on CUDA, in query chunks of plain matrix products (9% less
    time for a 1280x720 image at d = 4 on an H200, benchmarks/README.md); SDPA elsewhere.
    ``pipe.vae.set_attn_processor(AttnProcessor2_0())`` restores diffusers' default.

    The pipeline also inherits diffusers' UNet LoRA methods (needs ``peft``): `load_lora_weights`, `fuse_lora`,
    `unfuse_lora`, `unload_lora_weights`, `save_lora_weights`, `set_adapters` (see `load_lora_weights`).
    """

    # The models in the order of their last call for a batch: prompt embedding, (VAE encoder,) Kernel ControlNet
    # (kernels, t, then residuals), UNet, VAE decoder. With enable_model_cpu_offload a model is moved off the device
    # when the next one in this chain starts, so the UNet leaves before decoding (the largest activations) and the
    # Kernel ControlNet before the UNet. The VAE (small) stays on through the UNet call after encoding, as in
    # diffusers' img2img pipelines. Only in tiled runs do the Kernel ControlNet and UNet alternate per tile.
    model_cpu_offload_seq = "prompt_embedding->kernel_controlnet->unet->vae"
    _optional_components = ["kernel_controlnet"]
    channels_last_on_cpu = True  # see _in_model_layout
    reuse_cpu_memory = True  # see cpu_memory.keep_freed_cpu_memory

    def __init__(
        self,
        vae: AutoencoderKL | AutoencoderTiny,
        unet: UNet2DConditionModel,
        scheduler: DDPMScheduler,
        prompt_embedding: FideDiffPromptEmbedding,
        kernel_controlnet: KernelControlNetModel | None = None,
        default_upscale_factor: int = 2,
        color_fix_sigma: float | None = None,
    ):
        super().__init__()
        prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
        if prediction_type != "epsilon":
            raise ValueError(f"FideDiff needs an epsilon-prediction model; the scheduler says {prediction_type!r}")
        for model in (vae, unet, prompt_embedding, kernel_controlnet):
            if isinstance(model, torch.nn.Module):
                _reallocate_tensors(model)  # bit-identical outputs however the weights were loaded (see there)
        _use_wide_head_attention(vae)
        self.register_modules(
            vae=vae, unet=unet, scheduler=scheduler, prompt_embedding=prompt_embedding, kernel_controlnet=kernel_controlnet
        )
        self.register_to_config(default_upscale_factor=int(default_upscale_factor), color_fix_sigma=color_fix_sigma)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        r"""
        Load a FideDiff pipeline from a folder made by `save_pretrained` or a Hub repo id.

        This is diffusers' own `DiffusionPipeline.from_pretrained`: every argument it takes works with the same
        meaning (``dtype``, also as a dict such as ``{"unet": torch.bfloat16, "default": torch.float32}``,
        ``device_map``, ``low_cpu_mem_usage``, ``variant``, ``use_safetensors``, ``local_files_only``, ``revision``,
        ``token``, ``cache_dir``, ...), and components can be replaced by passing them (``kernel_controlnet=None``
        gives the base model). The Kernel ControlNet and the prompt embedding are this package's classes, not the
        code copies an exported folder carries for ``trust_remote_code`` users. A folder without ``model_index.json``,
        or a Hub id the Hub cannot provide (e.g. offline), fails at once with a one-line ``ValueError``.

        Example:
            >>> from fidediff_pipeline import DEFAULT_MODEL
            >>> pipe = FideDiffPipeline.from_pretrained(DEFAULT_MODEL, dtype={"unet": torch.float32})
            >>> type(pipe.kernel_controlnet).__module__
            'fidediff_pipeline.models.modeling_kernel_controlnet'
        """
        path = Path(os.path.expanduser(str(pretrained_model_name_or_path)))
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ValueError(f"{path} is a folder but has no model_index.json; pass a folder made by save_pretrained")
            pretrained_model_name_or_path = str(path)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs) -> str:
        """diffusers' `DiffusionPipeline.download`, with one readable error when the Hub cannot provide the model."""
        try:
            return super().download(pretrained_model_name, **kwargs)
        except Exception as err:  # every hub failure becomes one readable message
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            raise ValueError(
                f"could not load {pretrained_model_name!r}: it is not a local folder, and the Hugging Face Hub could "
                f"not provide it ({reason}). If the model is on disk, pass the folder that holds model_index.json, "
                f"e.g. FideDiffPipeline.from_pretrained('/path/to/model'); offline, download it first on a connected "
                f"machine with `huggingface-cli download {pretrained_model_name} --local-dir <folder>`."
            ) from None

    @classmethod
    def _dict_from_json_file(cls, json_file):
        # A saved folder names its pipeline.py, ["pipeline", "FideDiffPipeline"] (a code copy, or a stub importing this
        # package), for DiffusionPipeline users. Called on this class, that entry means this class: drop the file name so that
        # diffusers neither imports the copy nor asks for trust_remote_code (both in download and in loading).
        config = super()._dict_from_json_file(json_file)
        class_name = config.get("_class_name")
        if isinstance(class_name, (list, tuple)) and len(class_name) == 2:
            config["_class_name"] = class_name[1]
        return config

    @classmethod
    def load_config(cls, *args, **kwargs):
        # Resolve the custom components to the classes this module uses (the installed package's), instead of the
        # code copies a remote-code folder carries: ["modeling_kernel_controlnet", "KernelControlNetModel"] becomes
        # ["fidediff_pipeline.models.modeling_kernel_controlnet", ...], which diffusers takes from sys.modules. Only here,
        # not in _dict_from_json_file: `download` must still see the folder's file names to fetch them.
        outputs = super().load_config(*args, **kwargs)
        config = outputs[0] if isinstance(outputs, tuple) else outputs
        for name, component_class in _COMPONENT_CLASSES.items():
            entry = config.get(name)
            if isinstance(entry, (list, tuple)) and entry[0] is not None and entry[1] == component_class.__name__:
                config[name] = [component_class.__module__, component_class.__name__]
        return outputs

    def save_pretrained(
        self, save_directory: str | os.PathLike, safe_serialization: bool = True, remote_code: bool | None = None,
        **kwargs,
    ):
        """Save as safetensors (only): weights and configs, whose ``model_index.json`` names the installed package.

        Args:
            remote_code: also write the pipeline's code into the folder (see `fidediff_pipeline.hub.remote_code`),
                so that ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works where this
                package is not installed; ``fidediff push`` and ``fidediff export-space`` do this. Default: only
                when this pipeline itself runs from such code copies, else a weights-and-configs folder (with a
                one-line ``pipeline.py`` importing the installed package, for ``DiffusionPipeline``). With
                ``push_to_hub=True`` the code is always written.

        ``safe_serialization=False`` still saves, as safetensors, with a warning: pickled weights can run code when
        loaded, and the loaders of this project read safetensors only.
        """
        if not safe_serialization:
            logger.warning("FideDiff saves weights as safetensors only: safe_serialization=False is ignored")
        push_to_hub = kwargs.pop("push_to_hub", False)
        hub_keys = ("repo_id", "token", "private", "commit_message", "create_pr")
        hub_kwargs = {k: kwargs.pop(k) for k in hub_keys if k in kwargs}
        super().save_pretrained(save_directory, safe_serialization=True, push_to_hub=False, **kwargs)
        kwargs = hub_kwargs
        if isinstance(self.vae, AutoencoderTiny):
            _drop_derived_vae_config(Path(save_directory) / "vae" / "config.json")
        if remote_code is None:
            remote_code = push_to_hub or not __name__.startswith("fidediff_pipeline.")
        if remote_code:
            write_remote_code(save_directory)
        else:
            write_package_index(save_directory)
        if push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = kwargs.pop("repo_id", None) or Path(save_directory).name
            token, private = kwargs.pop("token", None), kwargs.pop("private", None)
            repo_id = create_repo(repo_id, exist_ok=True, private=private, token=token).repo_id
            upload_folder(repo_id=repo_id, folder_path=save_directory, token=token,
                          commit_message=kwargs.pop("commit_message", "Upload FideDiff pipeline"))

    @classmethod
    def from_stable_diffusion(
        cls,
        pretrained_model_name_or_path: str | os.PathLike = "stabilityai/stable-diffusion-2-1-base",
        with_kernel_controlnet: bool = True,
        kernel_size: int = 19,
        init_prompt: str | None = "",
        dtype: torch.dtype | None = None,
        **hub_kwargs,
    ) -> "FideDiffPipeline":
        r"""
        Start a FideDiff model from a Stable Diffusion (2.1-base) repo id or folder: its VAE, UNet and schedule,
        a learned embedding initialised from the text encoder's embedding of ``init_prompt`` (when the repo has a
        text encoder and ``transformers`` is installed; zeros otherwise), and a Kernel ControlNet copied from the UNet.
        """
        path = Path(os.path.expanduser(str(pretrained_model_name_or_path)))
        if not path.is_dir():
            from huggingface_hub import snapshot_download

            try:
                path = Path(snapshot_download(str(pretrained_model_name_or_path), allow_patterns=[
                    "model_index.json", "vae/*", "unet/*", "scheduler/*", "text_encoder/*", "tokenizer/*"], **hub_kwargs))
            except Exception as err:
                raise ValueError(
                    f"could not load Stable Diffusion {pretrained_model_name_or_path!r}: not a local folder, and the Hub "
                    f"could not provide it ({type(err).__name__}). Pass a local folder with vae/, unet/ and scheduler/."
                ) from None
        for sub in ("vae", "unet", "scheduler"):
            if not (path / sub).is_dir():
                raise ValueError(f"{path} has no {sub}/ folder: a Stable Diffusion folder needs vae/, unet/ and scheduler/")
        load = {"torch_dtype": dtype} if dtype is not None else {}
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **load)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **load)
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(f"{path}: unet/ takes {unet.config.in_channels} latent channels but vae/ makes "
                             f"{vae.config.latent_channels}; the two must come from the same model")
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        embedding = FideDiffPromptEmbedding(num_tokens=77, embedding_dim=unet.config.cross_attention_dim)
        if init_prompt is not None:
            initial = _encode_prompt_if_possible(path, init_prompt)
            if initial is not None and initial.shape[-1] == unet.config.cross_attention_dim:
                embedding = FideDiffPromptEmbedding(num_tokens=initial.shape[1], embedding_dim=initial.shape[2])
                embedding.set_embedding(initial)
            else:
                logger.warning("no usable text encoder in %s: the learned embedding starts at zeros", path)
        embedding = embedding.to(dtype=unet.dtype)
        kcn = KernelControlNetModel.from_unet(unet, kernel_size=kernel_size) if with_kernel_controlnet else None
        return cls(vae=vae, unet=unet, scheduler=scheduler, prompt_embedding=embedding, kernel_controlnet=kcn)

    # ------------------------------------------------------------------ LoRA
    # diffusers' StableDiffusionLoraLoaderMixin does the work (file format, Kohya conversion, peft injection, fusing,
    # adapters, hotswap); FideDiff only narrows it to the UNet: it has no text encoder (the learned prompt embedding
    # replaces it), and the mixin's own load_lora_weights / fuse_lora would otherwise look for one.
    _lora_loadable_modules = ["unet"]

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        hotswap: bool = False,
        **kwargs,
    ):
        r"""
        Load a UNet LoRA in diffusers' format (a file written by `save_lora_weights`, by `train/train_base.py`, or any
        Stable Diffusion 2.1-base UNet LoRA, Kohya files included) into `self.unet`.

        This is [`~loaders.StableDiffusionLoraLoaderMixin.load_lora_weights`] without the text-encoder part: the
        arguments are the same (``weight_name``, ``subfolder``, ``adapter_name``, ``hotswap``, ``low_cpu_mem_usage``,
        Hub arguments), and so are `fuse_lora`, `unfuse_lora`, `unload_lora_weights`, `set_adapters`,
        `disable_lora` and `delete_adapters`. Differences, all because FideDiff has no text encoder and reads
        safetensors only: text-encoder weights in the file are ignored with a warning; a file with no UNet weights
        raises a ``ValueError`` (diffusers only warns, and the pipeline would silently run without the LoRA); pickled
        ``.bin`` files are not read unless ``use_safetensors=False`` is passed.

        Examples:
            ```py
            >>> import torch
            >>> from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
            >>> from fidediff_pipeline import FideDiffPipeline, FideDiffPromptEmbedding, KernelControlNetModel

            >>> # A Hub repo with a stage-1 LoRA, the learned embedding and a Kernel ControlNet, on top of SD 2.1-base
            >>> base, repo = "stabilityai/stable-diffusion-2-1-base", "user/fidediff-lora"
            >>> pipe = FideDiffPipeline(
            ...     vae=AutoencoderKL.from_pretrained(base, subfolder="vae"),
            ...     unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet"),
            ...     scheduler=DDPMScheduler.from_pretrained(base, subfolder="scheduler"),
            ...     prompt_embedding=FideDiffPromptEmbedding.from_pretrained(repo, subfolder="prompt_embedding"),
            ...     kernel_controlnet=KernelControlNetModel.from_pretrained(repo, subfolder="kernel_controlnet"),
            ... )
            >>> pipe.load_lora_weights(repo)  # pytorch_lora_weights.safetensors
            >>> pipe.fuse_lora()  # optional: same output, no LoRA overhead per call
            ```
        """
        # Safetensors only by default, as everywhere in this package; diffusers would fall back to torch.load.
        kwargs.setdefault("use_safetensors", True)
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", _LOW_CPU_MEM_USAGE_DEFAULT_LORA)
        if isinstance(pretrained_model_name_or_path_or_dict, dict):  # copy: diffusers pops keys from it
            pretrained_model_name_or_path_or_dict = pretrained_model_name_or_path_or_dict.copy()
        source = pretrained_model_name_or_path_or_dict
        source_name = "the state dict" if isinstance(source, dict) else repr(str(source))
        kwargs["return_lora_metadata"] = True
        try:
            state_dict, network_alphas, metadata = self.lora_state_dict(source, **kwargs)
        except SafetensorError as err:
            raise ValueError(f"{source_name} holds no readable LoRA safetensors file ({err})") from err
        except (OSError, ValueError) as err:
            if isinstance(source, dict) or Path(os.path.expanduser(str(source))).exists():
                raise  # diffusers' own message names the missing file in the folder
            # Not on disk, so diffusers asked the Hub; offline its message ("you must specify a `weight_name`")
            # does not say that the path was not found.
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            raise ValueError(
                f"could not load a LoRA from {source_name}: it is not a local file or folder, and the Hugging Face "
                f"Hub could not provide it ({reason})"
            ) from err
        if not state_dict:
            raise ValueError(f"{source_name} is not a LoRA checkpoint: it holds no parameters")
        not_lora = [key for key in state_dict if "lora" not in key]
        if not_lora:
            raise ValueError(
                f"{source_name} is not a LoRA checkpoint: {len(not_lora)} of its {len(state_dict)} parameter names lack 'lora' "
                f"(e.g. {not_lora[0]!r}); for a full model use from_pretrained or from_stable_diffusion"
            )
        if any(".lora_A." in key for key in state_dict) and any(".lora.down." in key for key in state_dict):
            # Both namings in one file (convert_state_dict_to_diffusers renames only attention projections, e.g. a
            # UNet LoRA with conv targets from diffusers' SD/SDXL scripts): diffusers' loader picks one naming from
            # the first key and silently drops the other half (huggingface/diffusers#14548). diffusers' own
            # converter maps the old names and leaves peft's untouched.
            state_dict = convert_unet_state_dict_to_peft(state_dict)
        prefix = f"{self.unet_name}."
        ignored = sorted({key.split(".", 1)[0] for key in state_dict if not key.startswith(prefix)})
        if not any(key.startswith(prefix) for key in state_dict):
            raise ValueError(
                f"{source_name} has no UNet LoRA weights (no parameter name starts with {prefix!r}; found "
                f"{ignored}); FideDiff can only load a UNet LoRA"
            )
        if ignored:
            logger.warning("LoRA weights for %s ignored: FideDiff has no text encoder (its learned embedding "
                           "replaces it), only the UNet part is loaded", ", ".join(ignored))
        try:
            self.load_lora_into_unet(
                state_dict,
                network_alphas=network_alphas,
                unet=self.unet,
                adapter_name=adapter_name,
                metadata=metadata,
                _pipeline=self,
                low_cpu_mem_usage=low_cpu_mem_usage,
                hotswap=hotswap,
            )
        except RuntimeError as err:  # diffusers has already removed the half-loaded adapter
            mismatches = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
            if not mismatches:
                raise
            raise ValueError(
                f"the LoRA in {source_name} was made for a UNet of other shapes ({len(mismatches)} tensors differ, "
                f"e.g. {mismatches[0]}); load it onto the UNet it was trained on (FideDiff's stage-1 LoRAs: the "
                f"Stable Diffusion 2.1-base UNet, or the --init_from / --preset model they were trained from)"
            ) from None

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        unet_lora_layers: dict[str, torch.Tensor] | None = None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function=None,
        safe_serialization: bool = True,
        unet_lora_adapter_metadata: dict | None = None,
    ):
        r"""
        Save a UNet LoRA as ``pytorch_lora_weights.safetensors`` in diffusers' format
        ([`~loaders.StableDiffusionLoraLoaderMixin.save_lora_weights`] without text-encoder layers).

        Pass ``unet_lora_adapter_metadata`` (the adapter's `LoraConfig` as a dict) whenever ``lora_alpha`` differs
        from the rank or the targets matter: without it, `load_lora_weights` infers the config from the weights and
        takes ``lora_alpha = rank``.

        Examples:
            ```py
            >>> from diffusers.utils import convert_state_dict_to_diffusers
            >>> from peft.utils import get_peft_model_state_dict

            >>> # pipe.unet carries a peft adapter named "default" (unet.add_adapter(LoraConfig(...)) and training)
            >>> FideDiffPipeline.save_lora_weights(
            ...     "my_lora",
            ...     unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
            ...     unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
            ... )
            ```
        """
        super().save_lora_weights(
            save_directory,
            unet_lora_layers=unet_lora_layers,
            is_main_process=is_main_process,
            weight_name=weight_name,
            save_function=save_function,
            safe_serialization=safe_serialization,
            unet_lora_adapter_metadata=unet_lora_adapter_metadata,
        )

    def fuse_lora(
        self,
        components: list[str] = ["unet"],  # noqa: B006 - diffusers' signature
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
        **kwargs,
    ):
        r"""
        Fuse the loaded LoRA into the UNet's weights ([`~loaders.LoraBaseMixin.fuse_lora`]; only ``"unet"`` is a
        component here). `unfuse_lora` undoes it; `unload_lora_weights` after fusing keeps the fused weights.

        Examples:
            ```py
            >>> pipe.load_lora_weights("runs/base/pipeline/lora")
            >>> pipe.fuse_lora(lora_scale=1.0)
            >>> pipe.unload_lora_weights()  # a plain UNet with the LoRA baked in, e.g. to save_pretrained
            ```
        """
        super().fuse_lora(
            components=components, lora_scale=lora_scale, safe_fusing=safe_fusing, adapter_names=adapter_names, **kwargs
        )

    def unfuse_lora(self, components: list[str] = ["unet"], **kwargs):  # noqa: B006 - diffusers' signature
        r"""Undo `fuse_lora`: the UNet's own weights come back, the LoRA stays loaded (unfused)."""
        super().unfuse_lora(components=components, **kwargs)

    # ------------------------------------------------------------------ inference
    def _validate_timesteps(self, timestep, batch_size: int) -> list[int | None]:
        num_train = int(self.scheduler.config.num_train_timesteps)
        values = timestep if isinstance(timestep, (list, tuple)) else [timestep] * batch_size
        if len(values) != batch_size:
            raise ValueError(f"got {len(values)} timesteps for {batch_size} images; pass one per image, one int, or 'auto'")
        resolved: list[int | None] = []
        for value in values:
            if isinstance(value, str):
                if value != "auto":
                    raise ValueError(f"timestep must be 'auto' or an int in [0, {num_train - 1}]; got {value!r}")
                resolved.append(None)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise ValueError(f"timestep must be 'auto' or an int in [0, {num_train - 1}]; got {value!r}")
            if not 0 <= int(value) < num_train:
                raise ValueError(f"timestep {int(value)} is outside [0, {num_train - 1}]")
            resolved.append(int(value))
        return resolved

    def _default_tile_size(self) -> int:
        # Twice the UNet's training size: 128 latents for SD 2.1-base (1024 px at d = 8, 512 px at d = 4). A UNet
        # without self-attention (the tiny preset) costs the same per pixel at any tile size, so only memory bounds
        # its tiles: 256 latents (512 px at d = 2, under 2 GB) instead of 64, so "auto" leaves images up to 1 MPx
        # whole and a larger one needs 16x fewer tiles (1024 px forced tiling: 121 tiles took 1.58x the untiled time).
        size = max(int(self.unet.config.sample_size) * 2, 64)
        return size if _has_self_attention(self.unet.config) else max(size, 256)

    def _default_tile_overlap(self, tile: int) -> int:
        # A quarter of the tile where the UNet attends over the image (SD 2.1-base). Without self-attention (the
        # tiny preset) an eighth: the tiles differ from the whole pass everywhere (GroupNorm statistics per tile),
        # and the crossfade (tiling.blend_weights) leaves no step at the borders, so a wider overlap buys little.
        # Tiny model, 1024 px forced into 9 tiles of 256: overlap 64 took 1.36x the untiled time and 32 took 1.18x,
        # for 0.14 and 0.18 dB below untiled (benchmarks/README.md).
        return tile // 4 if _has_self_attention(self.unet.config) else tile // 8

    @staticmethod
    def _needs_tiling(latent_h: int, latent_w: int, tile: int) -> bool:
        # "auto" tiles above four tiles' worth of latents: GoPro's 1280x720 at d = 4 (320x180 latents) still runs
        # whole on SD 2.1-base (11.5 GiB in bf16, benchmarks/README.md); larger images are tiled.
        return latent_h * latent_w > (2 * tile) ** 2

    def _padded_size(self, height: int, width: int, upscale: int) -> tuple[int, int]:
        # The padded size must map to whole latents: (H * upscale) % vae_factor == 0.
        multiple = self.vae_scale_factor // upscale
        return height + (-height) % multiple, width + (-width) % multiple

    def _tiles_per_image(self, height: int, width: int, upscale: int, tiling, tile: int, overlap: int) -> int:
        """UNet evaluations one image of this size takes: 0 when it runs whole, else its number of latent tiles."""
        padded_h, padded_w = self._padded_size(height, width, upscale)
        latent_h, latent_w = padded_h * upscale // self.vae_scale_factor, padded_w * upscale // self.vae_scale_factor
        if not (tiling is True or (tiling == "auto" and self._needs_tiling(latent_h, latent_w, tile))):
            return 0
        return len(list(iterate_tiles(latent_h, latent_w, tile, overlap)))

    @torch.no_grad()
    def __call__(
        self,
        image,
        timestep: str | int | list[int] = "auto",
        upscale_factor: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_kernels: bool = False,
        tiling: bool | str = "auto",
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        conditioning_scale: float = 1.0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        batch_size: int | None = None,
    ):
        r"""
        Deblur one image or a batch: same-sized images go through the UNet together, one evaluation per batch.

        Args:
            image: a PIL image, numpy array (``HxW``/``HxWxC``, or a batch ``BxHxWxC``; uint8 or float in
                ``[0, 1]``), tensor (``[C,H,W]`` or ``[B,C,H,W]`` in ``[0, 1]``), file path, or a list of these.
                Gray and RGBA become RGB.
            timestep: ``"auto"`` (the t-regressor; without a Kernel ControlNet the default 200), an int in
                ``[0, 999]``, or a list with one entry per image. ``t = (n - 1) * 20`` for ``n`` averaged frames.
            upscale_factor: 2 upsamples the input 2x before the VAE (the paper's ``d = 4``); 1 is the plain
                ``d = 8`` path (faster, less detail). It must divide the VAE's factor. ``None``: the model's
                ``default_upscale_factor`` (2 unless the saved model says otherwise).
            output_type: ``"pil"``, ``"np"``, ``"pt"``, or ``"latent"``: the restored latents ``z0`` (scaled, as
                the UNet sees them; ``[B, C, h, w]``, of the input padded to whole latents), not decoded.
            return_kernels: also return the estimated per-pixel kernels (needs a Kernel ControlNet).
            tiling: ``"auto"`` tiles latents of more than ``(2 * tile_size) ** 2`` pixels (and the VAE, with
                diffusers' own VAE tiling); ``True`` / ``False`` force it.
            tile_size, tile_overlap: largest latent tile and least overlap (in latent pixels; default twice the
                UNet's ``sample_size`` (at least 256 without self-attention) and a quarter of the tile (an eighth
                without self-attention)). The fewest tiles that fit are shrunk to one size
                that keeps the overlap (`tiling.balanced_tiles`) and blended by linear crossfades over the overlap
                (`tiling.blend_weights`).
            conditioning_scale: scale of the Kernel ControlNet residuals.
            max_pixels: refuse larger inputs (decompression bombs); ``None`` for no limit.
            batch_size: at most this many same-sized images per UNet evaluation (``None``: all of them); lower it
                when a large batch does not fit in memory. Results do not depend on it.

        The progress bar counts images (and, for tiled images, their tiles); ``pipe.set_progress_bar_config(
        disable=True)`` turns it off. One untiled image shows none unless the config asks (``disable=False``).

        Returns:
            [`FideDiffPipelineOutput`] or a tuple ``(images, timesteps)``.
        """
        if upscale_factor is None:
            upscale_factor = int(getattr(self.config, "default_upscale_factor", 2) or 2)
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent'; got {output_type!r}")
        if isinstance(upscale_factor, bool) or not isinstance(upscale_factor, (int, np.integer)) or upscale_factor < 1 \
                or self.vae_scale_factor % int(upscale_factor) != 0:
            raise ValueError(
                f"upscale_factor must be a positive int that divides the VAE factor {self.vae_scale_factor} "
                f"(2 is the paper's d = 4, 1 is d = 8); got {upscale_factor!r}"
            )
        if tiling not in ("auto", True, False):
            raise ValueError(f"tiling must be 'auto', True or False; got {tiling!r}")
        if return_kernels and self.kernel_controlnet is None:
            raise ValueError("return_kernels=True needs a Kernel ControlNet; this pipeline is the base model only")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None; got {batch_size!r}")
        tile = int(tile_size or self._default_tile_size())
        overlap = int(tile_overlap if tile_overlap is not None else self._default_tile_overlap(tile))
        if tile < 8 or not 0 <= overlap < tile:
            raise ValueError(f"tile_size must be >= 8 and 0 <= tile_overlap < tile_size; got {tile}, {overlap}")
        upscale = int(upscale_factor)

        images = prepare_images(image, max_pixels=max_pixels)
        requested = self._validate_timesteps(timestep, len(images))
        # Once per call: diffusers' _execution_device asks every component for its device (~8 ms for the tiny model,
        # 2% of a 256 px call).
        device = self._execution_device
        if self.reuse_cpu_memory and device.type == "cpu":
            keep_freed_cpu_memory()
        batches = same_size_batches([tuple(img.shape[-2:]) for img in images], batch_size)
        tiles = [self._tiles_per_image(*images[b[0]].shape[-2:], upscale, tiling, tile, overlap) for b in batches]

        results: list[dict | None] = [None] * len(images)
        with self._progress_bar(sum(max(n, 1) * len(b) for n, b in zip(tiles, batches))) as progress:
            for indices, num_tiles in zip(batches, tiles):
                batch_results = self._restore_batch(
                    torch.stack([images[i] for i in indices]), device, [requested[i] for i in indices], upscale,
                    num_tiles > 0, tile, overlap, conditioning_scale, return_kernels, output_type == "latent", progress,
                )
                for index, result in zip(indices, batch_results):
                    results[index] = result
        self.maybe_free_model_hooks()

        outputs = [r["image"] for r in results]
        if output_type == "latent":
            images_out = torch.stack(outputs) if len({tuple(o.shape) for o in outputs}) == 1 else outputs
        else:
            images_out = postprocess(outputs, output_type)
        used = [r["timestep"] for r in results]
        if not return_dict:
            return images_out, used
        return FideDiffPipelineOutput(
            images=images_out,
            timesteps=used,
            timestep_sources=[r["source"] for r in results],
            predicted_timesteps=[r["predicted"] for r in results] if self.kernel_controlnet is not None else None,
            kernels=[r["kernels"] for r in results] if return_kernels else None,
        )

    def _progress_bar(self, total: int):
        """diffusers' progress bar (``set_progress_bar_config`` applies), silent for a single step by default.

        One image in one UNet evaluation makes a bar that says nothing, and callers that loop over images (training
        validation, evaluation scripts) would print one per image; an explicit ``disable`` in the config wins.
        """
        if total <= 1 and "disable" not in getattr(self, "_progress_bar_config", {}):
            return tqdm(total=total, disable=True)
        return self.progress_bar(total=total)

    def _choose_timestep(self, requested: int | None, predicted: float | None) -> tuple[int, str]:
        """The caller's t, else the t-regressor's (rounded, clamped), else the default; with where it came from."""
        if requested is not None:
            return requested, "given"
        if predicted is not None:
            last = self.scheduler.config.num_train_timesteps - 1
            return int(round(min(max(predicted, 0.0), last))), "predicted"
        return DEFAULT_TIMESTEP, "default"

    def _restore_batch(self, images, device, requested, upscale, use_tiling, tile, overlap, conditioning_scale,
                       return_kernels, output_latents, progress) -> list[dict]:
        """Restore ``images`` ``[B, 3, H, W]`` (one size) on ``device`` with one UNet evaluation (or one per tile)."""
        dtype = self.unet.dtype
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        padded_h, padded_w = self._padded_size(height, width, upscale)
        pad_h, pad_w = padded_h - height, padded_w - width
        x = images.to(device=device, dtype=torch.float32) * 2.0 - 1.0
        if pad_h or pad_w:
            mode = "reflect" if (pad_h < height and pad_w < width) else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        x = x.to(dtype)
        x = self._in_model_layout(x)

        # Models are called in the order of model_cpu_offload_seq (see there), so that offloading frees each one
        # once it is done: prompt embedding, VAE encoder, Kernel ControlNet, UNet, VAE decoder.
        encoder_hidden_states = self.prompt_embedding(batch_size=batch).to(device=device, dtype=dtype)
        z_t = self._vae_encode(upsample_for_vae(x, upscale), use_tiling, tile)

        kcn = self.kernel_controlnet
        kernels, predicted, tile_kernels = None, [None] * batch, {}
        if kcn is not None:
            if use_tiling:
                predicted, tile_kernels = self._estimate_tile_kernels(x, z_t.shape[-2:], tile, overlap, upscale)
            else:
                kout = kcn(image=x)
                kernels, predicted = kout.kernels, [float(v) for v in kout.predicted_timestep]
        timesteps, sources = zip(*(self._choose_timestep(t_req, t_pred) for t_req, t_pred in zip(requested, predicted)))
        t_tensor = torch.tensor(timesteps, device=device, dtype=torch.long)

        if use_tiling:
            eps, kernels = self._predict_noise_tiled(z_t, x, t_tensor, encoder_hidden_states, tile, overlap,
                                                     upscale, conditioning_scale, return_kernels, progress,
                                                     tile_kernels)
        else:
            eps = self._predict_noise(z_t, t_tensor, encoder_hidden_states, kernels, conditioning_scale)
            progress.update(batch)
        z0 = predict_original_latents(z_t, eps, self.scheduler.alphas_cumprod, t_tensor)

        if output_latents:
            restored = [z.cpu() for z in z0]
        else:
            decoded = self._vae_decode((z0 / self.vae.config.scaling_factor).to(dtype), use_tiling, tile)
            decoded = resize_from_vae(decoded, tuple(x.shape[-2:]), upscale)
            sigma = getattr(self.config, "color_fix_sigma", None)
            if sigma:
                decoded = low_frequency_transfer(decoded.float(), x.float(), float(sigma))
            restored = [((d.float()[:, :height, :width] + 1.0) / 2.0).clamp(0, 1).cpu() for d in decoded]
        results = []
        for i in range(batch):
            kernels_np = None
            if return_kernels and kernels is not None:
                # A coarse map (kernel_stride > 1) is spread to every pixel: the output is per-pixel either way.
                kernels_np = expand_kernel_map(kernels[i:i + 1], *x.shape[-2:])[0, :, :height, :width].float().cpu().numpy()
            results.append({"image": restored[i], "timestep": timesteps[i], "source": sources[i],
                            "predicted": predicted[i], "kernels": kernels_np})
        return results

    def _in_model_layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory layout the models get: channels-last on the CPU (unless ``channels_last_on_cpu`` is
        off), unchanged elsewhere.

        oneDNN's CPU convolutions are faster on channels-last (NHWC) tensors, and a convolution's output keeps its
        input's layout, so the whole chain (VAE, Kernel ControlNet, UNet) runs in it: 19% less time for the tiny
        model at 1024 px, 2% at 256 px, same output to ~1e-6 (benchmarks/README.md). Not on CUDA, where
        channels-last was slower (H100 table there).
        """
        if self.channels_last_on_cpu and x.device.type == "cpu":
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _predict_noise(self, z_t, t, encoder_hidden_states, kernels, conditioning_scale) -> torch.Tensor:
        down_res, mid_res = None, None
        if self.kernel_controlnet is not None:
            kout = self.kernel_controlnet(
                sample=z_t, timestep=t, encoder_hidden_states=encoder_hidden_states, kernels=kernels,
                conditioning_scale=conditioning_scale,
            )
            down_res, mid_res = kout.down_block_res_samples, kout.mid_block_res_sample
        return self.unet(
            z_t, t, encoder_hidden_states=encoder_hidden_states,
            down_block_additional_residuals=down_res, mid_block_additional_residual=mid_res,
        ).sample

    def _tile_crop_kernels(self, x: torch.Tensor, box: tuple[int, int, int, int], pixels_per_latent: int):
        """M and T on the image crop of one latent tile ``box`` plus a margin of context: ``(crop_kernels, crop_box,
        tile_kernels, predicted)``, ``tile_kernels`` being the kernels of the tile's own region (what the ControlNet
        gets) and ``predicted`` T's t for the crop. Through the Kernel ControlNet's own call, so model offloading
        hooks see it."""
        kcn = self.kernel_controlnet
        iy0, iy1, ix0, ix1 = (c * pixels_per_latent for c in box)
        margin = 4 * pixels_per_latent  # context for the kernel estimator at the tile border
        cy0, cx0 = max(iy0 - margin, 0), max(ix0 - margin, 0)
        cy1, cx1 = min(iy1 + margin, x.shape[-2]), min(ix1 + margin, x.shape[-1])
        # A coarse kernel map (kernel_stride s > 1): the crop starts on the s-pixel block grid, so its blocks are
        # the whole image's blocks; the tile takes the blocks it touches.
        s = kcn.kernel_stride
        cy0, cx0 = cy0 - cy0 % s, cx0 - cx0 % s
        out = kcn(image=x[..., cy0:cy1, cx0:cx1])
        crop_kernels = out.kernels
        tile_kernels = crop_kernels[..., (iy0 - cy0) // s: -(-(iy1 - cy0) // s), (ix0 - cx0) // s: -(-(ix1 - cx0) // s)]
        return crop_kernels, (cy0, cy1, cx0, cx1), tile_kernels, out.predicted_timestep

    def _estimate_tile_kernels(self, x: torch.Tensor, latent_hw, tile: int, overlap: int, upscale: int):
        """First pass of the tiled path: M and T once per UNet tile (its image crop with context), T's t averaged by
        tile area into one t per image (t must be known before the first UNet tile). Returns
        ``(predicted, kept)``: ``kept`` maps a tile to M's output, for the second pass, while the maps fit in
        `TILE_KERNEL_BUDGET_BYTES` (the rest are estimated again there), so M runs once per tile in most cases and
        memory stays bounded for any image size."""
        pixels_per_latent = self.vae_scale_factor // upscale
        totals, weight, kept, kept_bytes = torch.zeros(x.shape[0], dtype=torch.float64), 0.0, {}, 0
        for box in iterate_tiles(*latent_hw, tile, overlap):
            crop_kernels, crop_box, tile_kernels, predicted = self._tile_crop_kernels(x, box, pixels_per_latent)
            area = (box[1] - box[0]) * (box[3] - box[2])
            totals += predicted.double().cpu() * area
            weight += area
            size = crop_kernels.numel() * crop_kernels.element_size()
            if kept_bytes + size <= TILE_KERNEL_BUDGET_BYTES:
                kept[box] = (crop_kernels, crop_box, tile_kernels)
                kept_bytes += size
        return [float(v) for v in totals / weight], kept

    def _predict_noise_tiled(self, z_t, x, t, encoder_hidden_states, tile, overlap, upscale, conditioning_scale,
                             return_kernels, progress, tile_kernels=None):
        """UNet (+ Kernel ControlNet) on overlapping latent tiles, crossfaded over the overlap; ``tile_kernels``:
        M's outputs kept by `_estimate_tile_kernels` (others are estimated here)."""
        eps_sum = torch.zeros_like(z_t, dtype=torch.float32)
        weight_sum = torch.zeros_like(z_t[:, :1], dtype=torch.float32)
        kcn = self.kernel_controlnet
        pixels_per_latent = self.vae_scale_factor // upscale
        kernel_map = kernel_weight = None
        if return_kernels and kcn is not None:
            kernel_map = torch.zeros(x.shape[0], kcn.config.kernel_size ** 2, *x.shape[-2:], dtype=torch.float32)
            kernel_weight = torch.zeros(1, 1, *x.shape[-2:], dtype=torch.float32)
        for box in iterate_tiles(z_t.shape[-2], z_t.shape[-1], tile, overlap):
            y0, y1, x0, x1 = box
            z_tile = z_t[..., y0:y1, x0:x1]
            kernels = None
            if kcn is not None:
                known = (tile_kernels or {}).pop(box, None)  # dropped once used: memory back as the pass goes
                crop_kernels, (cy0, cy1, cx0, cx1), kernels = (known or self._tile_crop_kernels(x, box, pixels_per_latent))[:3]
                if kernel_map is not None:
                    iy0, iy1, ix0, ix1 = (c * pixels_per_latent for c in box)
                    pixel_kernels = expand_kernel_map(crop_kernels, cy1 - cy0, cx1 - cx0)
                    pixel_kernels = pixel_kernels[..., iy0 - cy0:iy1 - cy0, ix0 - cx0:ix1 - cx0]
                    w_img = blend_weights((iy0, iy1, ix0, ix1), tuple(x.shape[-2:]), overlap * pixels_per_latent)
                    kernel_map[..., iy0:iy1, ix0:ix1] += pixel_kernels.float().cpu() * w_img
                    kernel_weight[..., iy0:iy1, ix0:ix1] += w_img
            eps = self._predict_noise(z_tile, t, encoder_hidden_states, kernels, conditioning_scale)
            w = blend_weights(box, tuple(z_t.shape[-2:]), overlap, device=z_t.device)
            eps_sum[..., y0:y1, x0:x1] += eps.float() * w
            weight_sum[..., y0:y1, x0:x1] += w
            progress.update(z_t.shape[0])
        full_kernels = kernel_map / kernel_weight if kernel_map is not None else None
        return eps_sum / weight_sum, full_kernels

    class _TilingSwitch:
        """Set ``vae.use_tiling`` to ``state`` for one pass (None: leave the user's setting), then restore it."""

        def __init__(self, vae, state: bool | None):
            self.vae, self.state, self.previous = vae, state, getattr(vae, "use_tiling", False)

        def __enter__(self):
            if self.state is not None:
                self.vae.use_tiling = self.state

        def __exit__(self, *exc):
            self.vae.use_tiling = self.previous

    def _tiny_vae_windows(self, grid: tuple[int, int], use_tiling: bool, tile: int) -> tuple[int, int] | None:
        """Latent windows (size, overlap) for an AutoencoderTiny pass over a latent ``grid``, or None: one whole pass.

        Under tiling: twice the UNet's tile (its convolutions are cheap; fewer windows repeat fewer pixels) and at
        least 128, so a forced small UNet tile does not cut a small image's VAE pass. On the CPU also without
        tiling, and never above ``TINY_VAE_CPU_WINDOW``: the windows give the whole pass's result (`tiled_map`;
        the overlap is three times the decoder's receptive field, ~10 latents) and their activations stay closer
        to the CPU's cache. Either way not for a grid that fits one window.
        """
        if not isinstance(self.vae, AutoencoderTiny):
            return None
        use_tiling = use_tiling or getattr(self.vae, "use_tiling", False)  # also after `pipe.vae.enable_tiling()`
        size = max(2 * tile, 128) if use_tiling else None
        if self.vae.device.type == "cpu":
            size = min(size or TINY_VAE_CPU_WINDOW, TINY_VAE_CPU_WINDOW)
        if size is None or max(grid) <= size:
            return None
        return size, 32

    def _vae_encode(self, pixels: torch.Tensor, use_tiling: bool, tile: int) -> torch.Tensor:
        """Scaled latents of ``pixels`` (already upsampled for the VAE)."""
        f = self.vae_scale_factor
        grid = (pixels.shape[-2] // f, pixels.shape[-1] // f)
        windows = self._tiny_vae_windows(grid, use_tiling, tile)
        if windows:
            z = tiled_map(lambda p: vae_encode_mode(self.vae, p), pixels, grid, *windows, in_scale=f)
        else:
            with self._vae_tiling(use_tiling):
                z = vae_encode_mode(self.vae, pixels)
        return z * self.vae.config.scaling_factor

    def _vae_decode(self, latents: torch.Tensor, use_tiling: bool, tile: int) -> torch.Tensor:
        """The image of unscaled ``latents``."""
        grid = tuple(latents.shape[-2:])
        windows = self._tiny_vae_windows(grid, use_tiling, tile)
        if windows:
            return tiled_map(lambda z: self.vae.decode(z).sample, latents, grid, *windows,
                             out_scale=self.vae_scale_factor)
        with self._vae_tiling(use_tiling):
            return self.vae.decode(latents).sample

    def _vae_tiling(self, enabled: bool):
        """Turn on diffusers' own VAE tiling for large images, restoring the user's setting afterwards.

        Not for an AutoencoderTiny: diffusers' tiled encode there assumes 4 latent channels and a factor of
        2**out_channels (TAESD's own shape), and failed on the tiny model's after `pipe.vae.enable_tiling()`;
        `_vae_encode` / `_vae_decode` tile it with `tiling.tiled_map` instead (at 2048 x 2048 px its
        full-resolution activations were the pipeline's peak memory), and its own tiling stays off for the pass.
        """
        if isinstance(self.vae, AutoencoderTiny):
            return self._TilingSwitch(self.vae, False)
        return self._TilingSwitch(self.vae, True if enabled else None)


def same_size_batches(sizes: list[tuple[int, int]], batch_size: int | None = None) -> list[list[int]]:
    """Group image indices by size (first appearance order), in chunks of at most ``batch_size``.

    Example:
        >>> same_size_batches([(16, 16), (8, 8), (16, 16), (16, 16)], batch_size=2)
        [[0, 2], [3], [1]]
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    step = batch_size or len(sizes)
    return [group[i:i + step] for group in groups.values() for i in range(0, len(group), step)]


def _use_wide_head_attention(vae) -> None:
    """SD's VAE attention (one head of 512 channels) through `WideHeadAttnProcessor`: query chunks of plain matrix
    products on CUDA, where SDPA has no flash kernel for such a head (benchmarks/README.md, "NVIDIA H200"); SDPA
    elsewhere. Only a VAE on diffusers' default processor: one a caller set is kept."""
    if not isinstance(vae, AutoencoderKL):
        return
    processors = vae.attn_processors
    if processors and all(type(p) is AttnProcessor2_0 for p in processors.values()):
        vae.set_attn_processor(WideHeadAttnProcessor())


def _reallocate_tensors(model):
    """Copy every parameter and buffer into fresh memory.

    Tensors loaded from safetensors can sit at unaligned addresses; oneDNN then picks different (numerically
    slightly different, ~1e-6) CPU convolution kernels for some shapes (seen with the tiny UNet's 8-channel
    conv_in), so a reloaded model would not reproduce the saved one bit for bit. Fresh allocations are aligned.
    Done for every component when a pipeline is assembled (our loader, DiffusionPipeline's remote-code loader or
    in code); meta or offloaded tensors are left alone.
    """
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.device.type != "meta":
                tensor.data = tensor.data.clone()
    return model


def _encode_prompt_if_possible(folder: Path, prompt: str) -> torch.Tensor | None:
    if not ((folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir()):
        return None
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        return None
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0].float()


FideDiffPipeline.__call__.__doc__ = (FideDiffPipeline.__call__.__doc__ or "") + EXAMPLE_DOC_STRING
