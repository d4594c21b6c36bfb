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


def test_saved_folder_is_safetensors_weights_and_configs_naming_the_package(tiny_pipeline_folder):
    files = [p.relative_to(tiny_pipeline_folder).as_posix() for p in Path(tiny_pipeline_folder).rglob("*") if p.is_file()]
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for name in files)
    index = json.loads((tiny_pipeline_folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "FideDiffPipeline"]
    # As diffusers names a component of a library it does not know: the installed module and the class.
    assert index["kernel_controlnet"] == ["fidediff_pipeline.models.modeling_kernel_controlnet", "KernelControlNetModel"]
    assert index["prompt_embedding"] == ["fidediff_pipeline.models.modeling_prompt_embedding", "FideDiffPromptEmbedding"]
    # No code copies: only the one-line pipeline.py that points DiffusionPipeline at the installed package.
    assert [name for name in files if name.endswith(".py")] == ["pipeline.py"]
    stub = (tiny_pipeline_folder / "pipeline.py").read_text()
    assert "from fidediff_pipeline import FideDiffPipeline" in stub and len(stub.splitlines()) < 6


def test_diffusion_pipeline_loads_a_saved_folder_with_the_package_installed(tiny_pipeline, tiny_pipeline_folder,
                                                                           rgb_image):
    from diffusers import DiffusionPipeline

    from fidediff_pipeline import FideDiffPromptEmbedding, KernelControlNetModel

    pipe = DiffusionPipeline.from_pretrained(tiny_pipeline_folder, trust_remote_code=True)
    assert type(pipe) is FideDiffPipeline
    assert type(pipe.kernel_controlnet) is KernelControlNetModel and type(pipe.prompt_embedding) is FideDiffPromptEmbedding
    pipe.set_progress_bar_config(disable=True)
    expected = tiny_pipeline(rgb_image, timestep="auto", output_type="np").images
    assert np.array_equal(pipe(rgb_image, timestep="auto", output_type="np").images, expected)


def test_save_with_remote_code_and_back_to_weights_only(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path, remote_code=True)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "FideDiffPipeline"]
    assert index["kernel_controlnet"] == ["modeling_kernel_controlnet", "KernelControlNetModel"]
    assert "class FideDiffPipeline(" in (tmp_path / "pipeline.py").read_text()
    assert (tmp_path / "kernel_controlnet" / "modeling_kernel_controlnet.py").is_file()
    assert type(FideDiffPipeline.from_pretrained(tmp_path)) is FideDiffPipeline  # the package's class, not the copy
    tiny_pipeline.save_pretrained(tmp_path)  # saving again over it leaves no stale code copies
    assert sorted(p.name for p in tmp_path.rglob("*.py")) == ["pipeline.py"]
    assert json.loads((tmp_path / "model_index.json").read_text())["kernel_controlnet"][0].startswith("fidediff_pipeline.")


def test_base_model_round_trip(tiny_pipeline, tmp_path, rgb_image):
    base = FideDiffPipeline(**{**tiny_pipeline.components, "kernel_controlnet": None})
    base.save_pretrained(tmp_path)
    reloaded = FideDiffPipeline.from_pretrained(tmp_path)
    assert reloaded.kernel_controlnet is None
    assert np.array_equal(base(rgb_image, output_type="np").images, reloaded(rgb_image, output_type="np").images)


def _load_without_the_package(folder, rgb_image, tmp_path, timestep=200) -> np.ndarray:
    """Load ``folder`` with DiffusionPipeline + trust_remote_code in a fresh interpreter where fidediff_pipeline
    cannot be imported; return its output for ``rgb_image``."""
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
        pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
        out = pipe(np.load({str(tmp_path / 'input.npy')!r}), timestep={timestep!r}, output_type="np")
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
    return np.load(tmp_path / "output.npy")


def test_loading_without_the_package_via_trust_remote_code(tiny_pipeline, rgb_image, tmp_path):
    expected = tiny_pipeline(rgb_image, timestep=200, output_type="np").images
    tiny_pipeline.save_pretrained(tmp_path / "exported", remote_code=True)
    np.testing.assert_allclose(_load_without_the_package(tmp_path / "exported", rgb_image, tmp_path), expected, atol=1e-6)


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


def test_exported_bundled_checkpoint_code_matches_the_package_and_loads_without_it(rgb_image, tmp_path):
    """The bundled checkpoint holds no code copies; exported with remote code (as `fidediff push` does), its code
    files are the package's modules (only the package-relative imports flattened) and it loads without the package."""
    import shutil

    import fidediff_pipeline
    from fidediff_pipeline import DEFAULT_MODEL
    from fidediff_pipeline.hub.remote_code import write_remote_code

    checkpoint = Path(DEFAULT_MODEL)
    assert sorted(p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*.py")) == ["pipeline.py"]
    index = json.loads((checkpoint / "model_index.json").read_text())
    assert index["kernel_controlnet"] == ["fidediff_pipeline.models.modeling_kernel_controlnet", "KernelControlNetModel"]

    exported = tmp_path / "exported"
    shutil.copytree(checkpoint, exported)
    write_remote_code(exported)
    package = Path(fidediff_pipeline.__file__).parent
    sources = {p.name: p for p in package.rglob("*.py") if "checkpoints" not in p.parts}
    sources["pipeline.py"] = package / "pipelines" / "pipeline_fidediff.py"
    copies = list(exported.rglob("*.py"))
    assert len(copies) > 3
    for copy in copies:
        source_lines = sources[copy.name].read_text().splitlines()
        copy_lines = copy.read_text().splitlines()
        assert len(copy_lines) == len(source_lines), copy
        for ours, theirs in zip(copy_lines, source_lines):
            if ours != theirs:  # only relative imports differ: `from ..models.x import` -> `from .x import`
                assert ours.lstrip().startswith("from .") and theirs.lstrip().startswith("from ."), (copy, ours, theirs)
                assert ours.split(" import ")[1] == theirs.split(" import ")[1], (copy, ours, theirs)

    pipe = FideDiffPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(rgb_image, timestep="auto", output_type="np").images
    remote = _load_without_the_package(exported, rgb_image, tmp_path, timestep="auto")
    np.testing.assert_allclose(remote, expected, atol=1e-5)


def test_remote_code_flattens_package_imports_and_refuses_package_imports(tmp_path):
    from fidediff_pipeline.hub.remote_code import flat_closure

    package = tmp_path / "pkg"
    (package / "models").mkdir(parents=True)
    (package / "pipelines").mkdir()
    (package / "models" / "modeling_a.py").write_text("from ..util import helper\n")
    (package / "util.py").write_text("def helper():\n    return 1\n")
    (package / "pipelines" / "pipeline_a.py").write_text(
        "from ..models.modeling_a import helper\n\ndef f():\n    from ..util import helper\n    return helper()\n"
    )
    files = flat_closure(package / "pipelines" / "pipeline_a.py", "pipeline.py")
    assert sorted(files) == ["modeling_a.py", "pipeline.py", "util.py"]
    assert files["pipeline.py"].splitlines()[0] == "from .modeling_a import helper"
    assert "    from .util import helper" in files["pipeline.py"]
    assert files["modeling_a.py"] == "from .util import helper\n"
    (package / "models" / "modeling_a.py").write_text("from .. import util\n")
    with pytest.raises(ValueError, match="not a module file"):
        flat_closure(package / "models" / "modeling_a.py")
