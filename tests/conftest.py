import os

# Tests never touch the network: set before huggingface_hub is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_pipeline():
    from fidediff_pipeline.presets import build_pipeline

    pipe = build_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipeline_folder(tiny_pipeline, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_pipeline")
    tiny_pipeline.save_pretrained(folder)
    return folder


@pytest.fixture
def rgb_image():
    rng = np.random.default_rng(0)
    return (rng.random((37, 53, 3)) * 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def small_kl_vae():
    """A factory of small ``AutoencoderKL`` models with SD's mid-block attention (one head as wide as its 64
    channels), in eval mode, seeded."""
    from diffusers import AutoencoderKL

    def make(seed: int = 0) -> AutoencoderKL:
        torch.manual_seed(seed)
        return AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32, latent_channels=4).eval()

    return make


@pytest.fixture
def pipeline_with_kl_vae():
    """A factory of `FideDiffPipeline`s around an ``AutoencoderKL`` with attention (the tiny preset's factor-4 test
    config) and the tiny UNet; ``make(vae)`` takes a VAE of one's own."""
    from diffusers import AutoencoderKL, DDPMScheduler

    from fidediff_pipeline import FideDiffPipeline
    from fidediff_pipeline.presets import build_pipeline, tiny_autoencoder_kl_config

    tiny = build_pipeline("tiny", with_kernel_controlnet=False)

    def make(vae=None) -> FideDiffPipeline:
        vae = vae if vae is not None else new_vae()
        return FideDiffPipeline(vae=vae, unet=tiny.unet, scheduler=DDPMScheduler(),
                                prompt_embedding=tiny.prompt_embedding)

    def new_vae() -> AutoencoderKL:
        return AutoencoderKL(**{**tiny_autoencoder_kl_config(), "mid_block_add_attention": True})

    make.new_vae = new_vae
    return make
