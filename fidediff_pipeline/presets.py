"""Model presets: ``sd21-base`` (the exact Stable Diffusion 2.1-base shapes) and ``tiny`` (same classes, CPU-sized).

Weights for ``sd21-base`` come from the Hub on a user's machine (`FideDiffPipeline.from_stable_diffusion`);
here the presets build randomly initialised models, for tests, benchmarks and the bundled tiny checkpoint.
"""

from __future__ import annotations

import torch

SD21_BASE_REPO = "stabilityai/stable-diffusion-2-1-base"
# Parameter counts of the released SD 2.1-base weights (unet/, vae/), used by the tests as the ground truth.
SD21_BASE_UNET_PARAMETERS = 865_910_724
SD21_BASE_VAE_PARAMETERS = 83_653_863
PRESETS = ("sd21-base", "tiny")


def sd21_base_unet_config() -> dict:
    """``stabilityai/stable-diffusion-2-1-base/unet/config.json`` (epsilon prediction, 1024-d cross-attention)."""
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        norm_num_groups=32,
        flip_sin_to_cos=True,
        freq_shift=0,
    )


def sd21_base_vae_config() -> dict:
    """``stabilityai/stable-diffusion-2-1-base/vae/config.json`` (factor 8, 4 latent channels)."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=768,
        scaling_factor=0.18215,
    )


def sd21_scheduler_config() -> dict:
    """The SD 2.1-base noise schedule; FideDiff only uses its ``alphas_cumprod`` (paper eq. 3 and 8)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
    )


def tiny_unet_config() -> dict:
    """A small UNet of the same class and block types, trainable on a 2-core CPU."""
    return dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 96),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        use_linear_projection=True,
        norm_num_groups=8,
    )


def tiny_vae_config() -> dict:
    """A small AutoencoderKL with downsampling factor 4 (the SD VAE's is 8): detail a tiny model can keep."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=1.0,
    )


PRESET_SETTINGS = {
    "sd21-base": dict(
        unet=sd21_base_unet_config,
        vae=sd21_base_vae_config,
        num_tokens=77,
        kernel_size=19,
        estimator_channels=(64, 128, 256),
    ),
    "tiny": dict(
        unet=tiny_unet_config,
        vae=tiny_vae_config,
        num_tokens=4,
        kernel_size=15,
        estimator_channels=(24, 48, 96),
    ),
}


def _settings(preset: str) -> dict:
    if preset not in PRESET_SETTINGS:
        raise ValueError(f"unknown preset {preset!r}; available presets: {', '.join(PRESETS)}")
    return PRESET_SETTINGS[preset]


def build_unet(preset: str):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**_settings(preset)["unet"]())


def build_vae(preset: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**_settings(preset)["vae"]())


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**sd21_scheduler_config())


def build_prompt_embedding(preset: str, unet=None):
    from .modeling_prompt_embedding import FideDiffPromptEmbedding

    dim = (unet.config.cross_attention_dim if unet is not None else _settings(preset)["unet"]()["cross_attention_dim"])
    return FideDiffPromptEmbedding(num_tokens=_settings(preset)["num_tokens"], embedding_dim=dim)


def build_kernel_controlnet(preset: str, unet, kernel_size: int | None = None):
    from .modeling_kernel_controlnet import KernelControlNetModel

    settings = _settings(preset)
    return KernelControlNetModel.from_unet(
        unet,
        kernel_size=kernel_size or settings["kernel_size"],
        estimator_channels=settings["estimator_channels"],
    )


def build_pipeline(preset: str = "tiny", with_kernel_controlnet: bool = True, seed: int = 0, kernel_size: int | None = None):
    """A randomly initialised `FideDiffPipeline` of a preset (for tests, benchmarks and training from scratch).

    Example:
        >>> pipe = build_pipeline("tiny", seed=0)
        >>> type(pipe).__name__, pipe.kernel_controlnet is not None
        ('FideDiffPipeline', True)
    """
    from .pipeline_fidediff import FideDiffPipeline

    _settings(preset)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = build_unet(preset)
        vae = build_vae(preset)
        kcn = build_kernel_controlnet(preset, unet, kernel_size) if with_kernel_controlnet else None
        embedding = build_prompt_embedding(preset, unet)
    finally:
        torch.random.set_rng_state(generator_state)
    return FideDiffPipeline(
        vae=vae, unet=unet, scheduler=build_scheduler(), prompt_embedding=embedding, kernel_controlnet=kcn
    )
