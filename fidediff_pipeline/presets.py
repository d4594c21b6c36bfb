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
        # 12 latent channels to match the tiny VAE's (SD's 4 at a factor-4 VAE kept too little detail to deblur).
        in_channels=12,
        out_channels=12,
        layers_per_block=1,
        block_out_channels=(32, 64, 96),
        # No attention at the full latent resolution, and no self-attention anywhere (SD's UNet has both): the
        # transformer blocks attend only to the learned prompt tokens (``only_cross_attention``) and the mid block
        # is convolutional. Self-attention over 4096 tokens was half of the CPU time of a 256 px image and grows
        # with the square of the image area; without it the cost is linear in pixels, and a model trained on
        # 64 px crops sees the same operation on a whole photo (deblurring needs local context, not global).
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=True,
        mid_block_type="UNetMidBlock2D",
        cross_attention_dim=64,
        attention_head_dim=8,
        use_linear_projection=True,
        norm_num_groups=8,
    )


def tiny_vae_config() -> dict:
    """The tiny preset's autoencoder: a diffusers ``AutoencoderTiny`` (the TAESD architecture) with factor 2.

    Not an ``AutoencoderKL`` like SD's: a from-scratch AutoencoderKL's GroupNorms throw away each crop's
    brightness and contrast, and on this CPU budget it stalled at ~27 dB reconstruction PSNR, below the blurry
    inputs it was meant to deblur. TAESD (a distilled stand-in for SD's VAE, norm-free convolutions) reached a
    higher ceiling in fewer, cheaper steps (see docs/tiny_results.md).
    """
    return dict(
        in_channels=3,
        out_channels=3,
        # Two stages = one 2x down/upsampling: factor 2 (SD's VAE: 8). EncoderTiny's strided convs need equal
        # widths at every stage; 32 keeps the full-resolution decoder block cheap on a CPU.
        encoder_block_out_channels=(32, 32),
        decoder_block_out_channels=(32, 32),
        num_encoder_blocks=(1, 2),
        num_decoder_blocks=(2, 1),
        # 12 channels at factor 2 (no compression; SD: 4 channels at factor 8, 48x). A factor-4 version with 16
        # channels reached 28.9 dB on held-out photos and lost 0.3-0.6 dB on blurry inputs before any deblurring;
        # this one reached 32 dB in a third of the steps (docs/tiny_results.md). The tiny model is for testing
        # the code path on a CPU, so fidelity of the autoencoder matters more here than latent compression.
        latent_channels=12,
        scaling_factor=1.0,
    )


def tiny_autoencoder_kl_config() -> dict:
    """A small ``AutoencoderKL`` (SD's VAE class) with factor 4, for tests of Stable-Diffusion-layout folders."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        latent_channels=tiny_unet_config()["in_channels"],  # what the tiny UNet takes
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=1.0,
        mid_block_add_attention=False,
    )


PRESET_SETTINGS = {
    "sd21-base": dict(
        unet=sd21_base_unet_config,
        vae=sd21_base_vae_config,
        vae_class="AutoencoderKL",
        num_tokens=77,
        kernel_size=19,
        estimator_channels=(64, 128, 256),
        regressor_channels=64,
        kernel_embedding_channels=64,
        kernel_stride=1,  # the paper's per-pixel kernels
        estimator_autocorrelation_radius=0,  # the paper's M reads the image only
        estimator_autocorrelation_window=16,  # unused while the radius is 0
    ),
    "tiny": dict(
        unet=tiny_unet_config,
        vae=tiny_vae_config,
        vae_class="AutoencoderTiny",
        num_tokens=4,
        # m = 11: kernels up to ~9 px long; the per-pixel m*m maps at full image resolution are the tiny
        # model's largest CPU cost, so m and the kernel-side widths are kept small for tests. The bundled
        # checkpoint is trained with m = 19 (train/make_tiny.py): its blur paths need the longer window.
        kernel_size=11,
        # One kernel per 4x4 block (kernel_stride), from a 4-level M whose coarsest level sees ~120 px of context
        # (blur paths reach ~20 px): a per-pixel 19x19 map at full resolution was most of the tiny model's time.
        estimator_channels=(16, 32, 64, 96),
        regressor_channels=32,
        kernel_embedding_channels=16,
        kernel_stride=4,
        # M also reads the local autocorrelation of the image's gradients up to 14 px apart (not in the paper):
        # without it M predicted one average kernel for every blur after 3000 steps (docs/tiny_results.md).
        estimator_autocorrelation_radius=14,
        estimator_autocorrelation_window=16,
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
    import diffusers

    settings = _settings(preset)
    return getattr(diffusers, settings["vae_class"])(**settings["vae"]())


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**sd21_scheduler_config())


def build_prompt_embedding(preset: str, unet=None):
    from .models.modeling_prompt_embedding import FideDiffPromptEmbedding

    dim = (unet.config.cross_attention_dim if unet is not None else _settings(preset)["unet"]()["cross_attention_dim"])
    return FideDiffPromptEmbedding(num_tokens=_settings(preset)["num_tokens"], embedding_dim=dim)


def build_kernel_controlnet(preset: str, unet, kernel_size: int | None = None,
                            autocorrelation_radius: int | None = None, autocorrelation_window: int | None = None,
                            kernel_input_scale: float = 1.0):
    """A new Kernel ControlNet for ``unet`` with the preset's sizes; ``kernel_size`` (m), ``autocorrelation_radius``
    (M's gradient-autocorrelation features, 0 = off) and ``autocorrelation_window`` (the side in pixels they are
    averaged over) override the preset's; ``kernel_input_scale`` multiplies the kernel map F embeds (1: the
    paper's)."""
    from .models.modeling_kernel_controlnet import KernelControlNetModel

    settings = _settings(preset)
    if autocorrelation_radius is None:
        autocorrelation_radius = settings["estimator_autocorrelation_radius"]
    if autocorrelation_window is None:
        autocorrelation_window = settings["estimator_autocorrelation_window"]
    return KernelControlNetModel.from_unet(
        unet,
        kernel_size=kernel_size or settings["kernel_size"],
        estimator_channels=settings["estimator_channels"],
        regressor_channels=settings["regressor_channels"],
        kernel_embedding_channels=settings["kernel_embedding_channels"],
        kernel_stride=settings["kernel_stride"],
        estimator_autocorrelation_radius=autocorrelation_radius,
        estimator_autocorrelation_window=autocorrelation_window,
        kernel_input_scale=kernel_input_scale,
    )


def build_pipeline(preset: str = "tiny", with_kernel_controlnet: bool = True, seed: int = 0, kernel_size: int | None = None):
    """A randomly initialised `FideDiffPipeline` of a preset (for tests, benchmarks and training from scratch).

    Example:
        >>> pipe = build_pipeline("tiny", seed=0)
        >>> type(pipe).__name__, pipe.kernel_controlnet is not None
        ('FideDiffPipeline', True)
    """
    from .pipelines.pipeline_fidediff import FideDiffPipeline

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
    # In eval mode, as diffusers' from_pretrained leaves loaded models (training scripts call .train() themselves):
    # a built pipeline and its saved-and-reloaded copy then take the same code paths (on channels-last CPU
    # tensors, diffusers' blocks in train mode differ from eval mode by ~1e-6).
    for model in (unet, vae, kcn, embedding):
        if model is not None:
            model.eval()
    return FideDiffPipeline(
        vae=vae, unet=unet, scheduler=build_scheduler(), prompt_embedding=embedding, kernel_controlnet=kcn
    )
