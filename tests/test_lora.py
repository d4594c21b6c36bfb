"""LoRA the diffusers way (issue 12): stage 1 exports its UNet LoRA as a diffusers LoRA file next to the fused
pipeline, and `FideDiffPipeline.load_lora_weights` (diffusers' StableDiffusionLoraLoaderMixin, UNet only) puts it
back on the base UNet with the fused model's output; fuse/unfuse/unload round trips; bad files fail clearly.

CPU, tiny preset: 3 real training steps of train/train_base.py on a saved random tiny base.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from fidediff_pipeline import FideDiffPipeline  # noqa: E402

pytest.importorskip("peft")

LORA_FILE = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A random tiny base (saved), 3 stage-1 steps with a rank-4 LoRA (alpha 8, every target) from it, exported."""
    from accelerate.state import AcceleratorState
    from PIL import Image

    from fidediff_pipeline.presets import build_pipeline
    from train import train_base

    root = tmp_path_factory.mktemp("lora")
    build_pipeline("tiny", seed=0, with_kernel_controlnet=False).save_pretrained(root / "base")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        # Smooth random pictures (blurring pure noise teaches nothing, and training only has to move the weights).
        small = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((48, 48), Image.Resampling.BICUBIC).save(photos / f"{i}.png")
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        train_base.main([
            "--init_from", str(root / "base"), "--train_images", str(photos), "--output_dir", str(root / "run"),
            "--frames", "7", "11", "--synth_kernel_size", "9", "--upscale_factor", "1", "--resolution", "32",
            "--train_batch_size", "1", "--levels_per_group", "2", "--max_train_steps", "3",
            "--checkpointing_steps", "100", "--validation_steps", "100", "--report_to", "none", "--log_every", "1",
            # alpha != rank and conv targets: both must survive the file (LoraConfig metadata), not be inferred
            "--lora_rank", "4", "--lora_alpha", "8", "--lora_target", "all", "--learning_rate", "3e-2",
            "--lpips_weight", "0", "--gan_weight", "0",
        ])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return root


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)


def _run(pipe, image) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(image, timestep=200, upscale_factor=1, output_type="np").images


def _base_with_trained_embedding(trained) -> FideDiffPipeline:
    """The exported pipeline with its UNet replaced by a fresh copy of the untrained base UNet.

    Stage 1 also trains the prompt embedding; that lives in the pipeline folder, the LoRA file holds the UNet only.
    """
    unet = UNet2DConditionModel.from_pretrained(trained / "base", subfolder="unet")
    return FideDiffPipeline.from_pretrained(trained / "run" / "pipeline", unet=unet)


def test_stage1_exports_a_diffusers_lora_file_next_to_the_fused_pipeline(trained):
    lora_dir = trained / "run" / "pipeline" / "lora"
    assert sorted(p.name for p in lora_dir.iterdir()) == [LORA_FILE]
    weights = load_file(lora_dir / LORA_FILE)
    # diffusers' format: "unet."-prefixed peft names (lora_A / lora_B), attention and convs (--lora_target all)
    assert weights and all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in weights)
    assert any(".resnets." in k and ".conv1." in k for k in weights) and any(".to_q." in k for k in weights)
    assert {v.dtype for v in weights.values()} == {torch.float32}
    assert {v.shape[0] for k, v in weights.items() if k.endswith("lora_A.weight")} == {4}
    with safe_open(lora_dir / LORA_FILE, "pt") as f:
        config = json.loads(f.metadata()["lora_adapter_metadata"])
    assert config["unet.r"] == 4 and config["unet.lora_alpha"] == 8
    assert {"to_q", "conv1", "time_emb_proj"} <= set(config["unet.target_modules"])
    fused = FideDiffPipeline.from_pretrained(trained / "run" / "pipeline")
    assert not any("lora" in name for name, _ in fused.unet.named_parameters()), "the pipeline's UNet is fused"
    # The best-validation export is the same code path; no validation ran here, so there is none.
    assert not (trained / "run" / "best_pipeline").exists()


def test_load_lora_weights_on_the_base_gives_the_fused_models_output(trained, image):
    fused_out = _run(FideDiffPipeline.from_pretrained(trained / "run" / "pipeline"), image)
    pipe = _base_with_trained_embedding(trained)
    base_out = _run(pipe, image)
    assert np.abs(fused_out - base_out).max() > 1e-3, "the trained LoRA changed nothing: the test would prove nothing"

    pipe.load_lora_weights(trained / "run" / "pipeline" / "lora", adapter_name="stage1")
    assert pipe.get_active_adapters() == ["stage1"]
    np.testing.assert_allclose(_run(pipe, image), fused_out, atol=1e-5)

    pipe.fuse_lora()
    assert pipe.num_fused_loras == 1
    np.testing.assert_allclose(_run(pipe, image), fused_out, atol=1e-5)
    pipe.unfuse_lora()  # base weights back, the adapter still loaded and active
    np.testing.assert_allclose(_run(pipe, image), fused_out, atol=1e-5)
    pipe.set_adapters("stage1", adapter_weights=0.0)
    np.testing.assert_allclose(_run(pipe, image), base_out, atol=1e-5)
    pipe.set_adapters("stage1", adapter_weights=1.0)
    pipe.unload_lora_weights()
    assert not any("lora" in name for name, _ in pipe.unet.named_parameters())
    np.testing.assert_allclose(_run(pipe, image), base_out, atol=1e-5)

    # fuse + unload bakes it in (a plain UNet, saved like any other); a single file path loads too.
    pipe.load_lora_weights(trained / "run" / "pipeline" / "lora" / LORA_FILE)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    assert not any("lora" in name for name, _ in pipe.unet.named_parameters())
    np.testing.assert_allclose(_run(pipe, image), fused_out, atol=1e-5)


def test_a_file_mixing_diffusers_and_peft_names_loads_whole(trained, image, tmp_path):
    """convert_state_dict_to_diffusers renames only attention projections (to_q.lora.down); diffusers' loader alone
    would drop them when the first key is a conv's lora_A (huggingface/diffusers#14548)."""
    from diffusers.utils import convert_state_dict_to_diffusers

    path = trained / "run" / "pipeline" / "lora" / LORA_FILE
    with safe_open(path, "pt") as f:
        header = f.metadata()  # the LoraConfig (alpha 8 != rank 4) travels in the header
    mixed = convert_state_dict_to_diffusers(load_file(path))
    assert ".lora_A." in next(iter(mixed)) and any(".to_q.lora.down." in k for k in mixed)
    save_file(mixed, tmp_path / LORA_FILE, metadata=header)
    pipe = _base_with_trained_embedding(trained)
    pipe.load_lora_weights(tmp_path)
    fused_out = _run(FideDiffPipeline.from_pretrained(trained / "run" / "pipeline"), image)
    np.testing.assert_allclose(_run(pipe, image), fused_out, atol=1e-5)


def test_save_lora_weights_round_trip_and_kernel_controlnet_kept(trained, image, tmp_path):
    """`FideDiffPipeline.save_lora_weights` writes what `load_lora_weights` reads, with a Kernel ControlNet on."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from fidediff_pipeline.presets import build_kernel_controlnet

    pipe = _base_with_trained_embedding(trained)
    torch.manual_seed(0)
    pipe.register_modules(kernel_controlnet=build_kernel_controlnet("tiny", pipe.unet, 9))
    pipe.load_lora_weights(trained / "run" / "pipeline" / "lora")
    expected = _run(pipe, image)
    FideDiffPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet, adapter_name="default_0")),
        unet_lora_adapter_metadata=pipe.unet.peft_config["default_0"].to_dict())
    pipe.unload_lora_weights()
    assert np.abs(_run(pipe, image) - expected).max() > 1e-3
    pipe.load_lora_weights(tmp_path)
    np.testing.assert_allclose(_run(pipe, image), expected, atol=1e-5)


def test_missing_or_bad_lora_files_fail_clearly(trained, image, tmp_path):
    pipe = _base_with_trained_embedding(trained)
    base_out = _run(pipe, image)
    weights = load_file(trained / "run" / "pipeline" / "lora" / LORA_FILE)

    with pytest.raises(ValueError, match="not a local file or folder, and the Hugging Face Hub could not provide"):
        pipe.load_lora_weights(tmp_path / "does-not-exist")
    with pytest.raises(OSError, match=f"no file named {LORA_FILE}"):
        pipe.load_lora_weights(tmp_path)  # a folder without the file
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / LORA_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="holds no readable LoRA safetensors file"):
        pipe.load_lora_weights(tmp_path / "corrupt")
    with pytest.raises(ValueError, match="is not a LoRA checkpoint: 1 of its 1 parameter names lack 'lora'"):
        pipe.load_lora_weights({"unet.conv_in.weight": torch.zeros(1)})
    text_encoder_only = {k.replace("unet.", "text_encoder.", 1): v for k, v in weights.items()}
    with pytest.raises(ValueError, match="has no UNet LoRA weights"):
        pipe.load_lora_weights(text_encoder_only)
    key = next(k for k in weights if k.endswith("to_q.lora_A.weight"))
    wrong = dict(weights, **{key: torch.zeros(4, weights[key].shape[1] + 8)})
    save_file(wrong, tmp_path / LORA_FILE)
    with pytest.raises(ValueError, match="was made for a UNet of other shapes"):
        pipe.load_lora_weights(tmp_path)
    # Every failure left the pipeline as it was (diffusers removes a half-loaded adapter), and the good file loads.
    assert pipe.get_active_adapters() == []
    np.testing.assert_allclose(_run(pipe, image), base_out, atol=1e-6)
    pipe.load_lora_weights(weights)
    assert len(pipe.get_active_adapters()) == 1


def test_text_encoder_weights_are_ignored_with_a_warning(trained, caplog):
    """An SD LoRA with text-encoder layers loads its UNet part; the mixin never looks for a text encoder."""
    import logging

    pipe = _base_with_trained_embedding(trained)
    weights = load_file(trained / "run" / "pipeline" / "lora" / LORA_FILE)
    te = {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 8)}
    with caplog.at_level(logging.WARNING, logger="fidediff_pipeline.pipelines.pipeline_fidediff"):
        pipe.load_lora_weights({**weights, **te})
    assert "text_encoder ignored" in caplog.text
    assert any("lora" in name for name, _ in pipe.unet.named_parameters())
    assert not hasattr(pipe, "text_encoder") and pipe._lora_loadable_modules == ["unet"]
