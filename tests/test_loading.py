import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fidediff_pipeline import FideDiffPipeline
from fidediff_pipeline.presets import (
    SD21_BASE_UNET_PARAMETERS,
    SD21_BASE_VAE_PARAMETERS,
    build_kernel_controlnet,
    build_unet,
    build_vae,
    tiny_unet_config,
    tiny_autoencoder_kl_config,
)


def test_save_and_reload_gives_bit_identical_outputs(tiny_pipeline, tiny_pipeline_folder, rgb_image):
    reloaded = FideDiffPipeline.from_pretrained(tiny_pipeline_folder)
    a = tiny_pipeline(rgb_image, timestep="auto", output_type="np")
    b = reloaded(rgb_image, timestep="auto", output_type="np")
    assert np.array_equal(a.images, b.images) and a.timesteps == b.timesteps


def test_saved_folder_is_safetensors_only_and_points_at_its_code(tiny_pipeline_folder):
    files = [p.name for p in Path(tiny_pipeline_folder).rglob("*") if p.is_file()]
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for name in files)
    index = json.loads((tiny_pipeline_folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "FideDiffPipeline"]
    assert index["kernel_controlnet"] == ["modeling_kernel_controlnet", "KernelControlNetModel"]
    assert (tiny_pipeline_folder / "pipeline.py").is_file()
    assert (tiny_pipeline_folder / "kernel_controlnet" / "modeling_kernel_controlnet.py").is_file()


def test_base_model_round_trip(tiny_pipeline, tmp_path, rgb_image):
    base = FideDiffPipeline(**{**tiny_pipeline.components, "kernel_controlnet": None})
    base.save_pretrained(tmp_path)
    reloaded = FideDiffPipeline.from_pretrained(tmp_path)
    assert reloaded.kernel_controlnet is None
    assert np.array_equal(base(rgb_image, output_type="np").images, reloaded(rgb_image, output_type="np").images)


def test_loading_without_the_package_via_trust_remote_code(tiny_pipeline, tiny_pipeline_folder, rgb_image, tmp_path):
    expected = tiny_pipeline(rgb_image, timestep=200, output_type="np").images
    np.save(tmp_path / "input.npy", rgb_image)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["fidediff_pipeline"] = None  # as on a machine without the package (it may be installed here)
        try:
            import fidediff_pipeline
            sys.exit("fidediff_pipeline must not be importable in this test")
        except ImportError:
            pass
        import numpy as np
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(tiny_pipeline_folder)!r}, trust_remote_code=True)
        out = pipe(np.load({str(tmp_path / 'input.npy')!r}), timestep=200, output_type="np")
        np.save({str(tmp_path / 'output.npy')!r}, out.images)
        print(type(pipe).__name__)
    """)
    # Keep PYTHONPATH entries that hold other packages (e.g. diffusers on a device), drop those holding ours.
    keep = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and not (Path(p) / "fidediff_pipeline").exists()]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH=os.pathsep.join(keep))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FideDiffPipeline" in result.stdout
    np.testing.assert_allclose(np.load(tmp_path / "output.npy"), expected, atol=1e-6)


def test_offline_hub_id_gives_a_clear_error():
    with pytest.raises(ValueError) as info:
        FideDiffPipeline.from_pretrained("someone/fidediff-does-not-exist")
    message = str(info.value)
    assert "someone/fidediff-does-not-exist" in message and "folder" in message


def test_folder_without_model_index_is_explained(tmp_path):
    with pytest.raises(ValueError, match="no model_index.json"):
        FideDiffPipeline.from_pretrained(tmp_path)


def _write_tiny_stable_diffusion_folder(folder: Path) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(**tiny_unet_config()).save_pretrained(folder / "unet")
    AutoencoderKL(**tiny_autoencoder_kl_config()).save_pretrained(folder / "vae")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1, set_alpha_to_one=False).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))


def test_from_stable_diffusion_folder(tmp_path, rgb_image):
    sd = tmp_path / "sd"
    _write_tiny_stable_diffusion_folder(sd)
    pipe = FideDiffPipeline.from_stable_diffusion(sd, kernel_size=5)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd / "unet")
    assert torch.equal(pipe.unet.conv_in.weight, unet.conv_in.weight)
    assert torch.equal(pipe.kernel_controlnet.controlnet.conv_in.weight, unet.conv_in.weight)
    assert tuple(pipe.prompt_embedding.embedding.shape) == (1, 77, unet.config.cross_attention_dim)
    expected_alphas = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod, expected_alphas)
    assert pipe(rgb_image, timestep=200, output_type="np").images.shape == (1, 37, 53, 3)
    pipe.save_pretrained(tmp_path / "fidediff")
    assert FideDiffPipeline.from_pretrained(tmp_path / "fidediff").kernel_controlnet.config.kernel_size == 5


def test_from_stable_diffusion_offline_hub_id_is_explained():
    with pytest.raises(ValueError, match="stabilityai/stable-diffusion-2-1-base"):
        FideDiffPipeline.from_stable_diffusion("stabilityai/stable-diffusion-2-1-base")


def test_from_stable_diffusion_mismatched_unet_and_vae_is_explained(tmp_path):
    from diffusers import AutoencoderKL

    sd = tmp_path / "sd"
    _write_tiny_stable_diffusion_folder(sd)
    AutoencoderKL(**{**tiny_autoencoder_kl_config(), "latent_channels": 4}).save_pretrained(sd / "vae")
    with pytest.raises(ValueError, match="unet/ takes 12 latent channels but vae/ makes 4"):
        FideDiffPipeline.from_stable_diffusion(sd)


def test_from_stable_diffusion_incomplete_folder(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ValueError, match="no vae/ folder"):
        FideDiffPipeline.from_stable_diffusion(tmp_path)


@pytest.mark.slow
def test_sd21_base_preset_has_the_released_parameter_counts():
    torch.manual_seed(0)
    unet = build_unet("sd21-base")  # real random weights, fp32: about 3.5 GB
    assert sum(p.numel() for p in unet.parameters()) == SD21_BASE_UNET_PARAMETERS
    assert unet.conv_in.weight.std() > 0
    with torch.device("meta"):  # the ControlNet copy only needs shapes here
        kcn = build_kernel_controlnet("sd21-base", unet.to("meta"))
    encoder = sum(p.numel() for n, p in kcn.controlnet.named_parameters() if not n.startswith("controlnet_"))
    assert 300_000_000 < encoder < SD21_BASE_UNET_PARAMETERS
    del unet, kcn
    vae = build_vae("sd21-base")
    assert sum(p.numel() for p in vae.parameters()) == SD21_BASE_VAE_PARAMETERS


def test_bundled_checkpoint_code_matches_the_package():
    """The bundled folder's code copies (used with trust_remote_code) must not drift from the package."""
    import fidediff_pipeline
    from fidediff_pipeline import DEFAULT_MODEL

    package = Path(fidediff_pipeline.__file__).parent
    checkpoint = Path(DEFAULT_MODEL)
    copies = {checkpoint / "pipeline.py": package / "pipeline_fidediff.py"}
    for code in checkpoint.rglob("*.py"):
        if code.name != "pipeline.py":
            copies[code] = package / code.name
    assert len(copies) > 3
    for copy, source in copies.items():
        assert copy.read_text() == source.read_text(), f"{copy} is stale: re-export the checkpoint or copy {source}"
