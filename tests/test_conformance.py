"""FideDiff as diffusers checks a pipeline and a model.

Modelled on the ideas of diffusers' common testers (``PipelineTesterMixin`` for pipelines, ``ModelTesterMixin`` for
models), written for this project: tiny components, 16-32 px images, CPU. Each test names the contract it checks.
"""

import copy
import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import diffusers
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor

from fidediff_pipeline import FideDiffPipeline, FideDiffPromptEmbedding, KernelControlNetModel
from fidediff_pipeline.presets import build_pipeline, build_unet


@pytest.fixture(scope="module")
def pipe():
    """The tiny preset with trained-looking (non-zero) Kernel ControlNet residuals, so that every path matters."""
    pipeline = build_pipeline("tiny", seed=0)
    generator = torch.Generator().manual_seed(1)
    kcn = pipeline.kernel_controlnet
    with torch.no_grad():
        for conv in [kcn.kernel_filter.zero_conv, *kcn.controlnet.controlnet_down_blocks, kcn.controlnet.controlnet_mid_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def folder(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("conformance_pipeline")
    pipe.save_pretrained(path)
    return path


def _images(count, height=16, width=24, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((height, width, 3)).astype(np.float32) for _ in range(count)]


def _count_calls(module):
    """Attach a forward pre-hook that counts calls; returns (counter list, handle)."""
    calls = []
    handle = module.register_forward_pre_hook(lambda *args: calls.append(1))
    return calls, handle


# ---------------------------------------------------------------------------------------------- loading (issue 12, 1)
def test_from_pretrained_is_diffusers_loader_with_a_dtype_dict(folder):
    loaded = FideDiffPipeline.from_pretrained(folder, dtype={"unet": torch.bfloat16, "default": torch.float32})
    assert loaded.unet.dtype == torch.bfloat16
    assert loaded.vae.dtype == torch.float32 and loaded.kernel_controlnet.dtype == torch.float32
    assert loaded.prompt_embedding.dtype == torch.float32


def test_custom_components_are_the_installed_package_classes(folder):
    loaded = FideDiffPipeline.from_pretrained(folder)
    assert type(loaded) is FideDiffPipeline
    assert type(loaded.kernel_controlnet) is KernelControlNetModel
    assert type(loaded.prompt_embedding) is FideDiffPromptEmbedding


@pytest.mark.parametrize(
    "kwargs",
    [
        {"device_map": "cpu"},
        {"low_cpu_mem_usage": False},
        {"use_safetensors": True},
        {"local_files_only": True, "revision": "main", "token": None},
        {"trust_remote_code": True},
        {"dtype": torch.float32},
    ],
    ids=lambda kwargs: ",".join(kwargs),
)
def test_diffusers_loading_arguments_are_accepted_and_reload_bit_identical(pipe, folder, kwargs, tmp_path):
    image = _images(1)[0]
    expected = pipe(image, output_type="np").images
    loaded = FideDiffPipeline.from_pretrained(folder, cache_dir=tmp_path, **kwargs)
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(loaded(image, output_type="np").images, expected)


def test_diffusers_logs_each_loaded_component(folder, caplog):
    diffusers.utils.logging.enable_propagation()
    diffusers.utils.logging.set_verbosity_info()
    try:
        with caplog.at_level(logging.INFO):
            FideDiffPipeline.from_pretrained(folder)
    finally:
        diffusers.utils.logging.set_verbosity_warning()
        diffusers.utils.logging.disable_propagation()
    assert "Loaded kernel_controlnet as KernelControlNetModel" in caplog.text
    assert "Loaded unet as UNet2DConditionModel" in caplog.text


def test_variants_save_and_load_and_a_missing_variant_is_diffusers_value_error(pipe, tmp_path):
    pipe.save_pretrained(tmp_path, variant="v1")
    assert (tmp_path / "kernel_controlnet" / "diffusion_pytorch_model.v1.safetensors").is_file()
    loaded = FideDiffPipeline.from_pretrained(tmp_path, variant="v1")
    loaded.set_progress_bar_config(disable=True)
    image = _images(1)[0]
    assert np.array_equal(loaded(image, output_type="np").images, pipe(image, output_type="np").images)
    with pytest.raises(ValueError, match="variant=nope"):
        FideDiffPipeline.from_pretrained(tmp_path, variant="nope")


def test_optional_component_passed_as_none_and_saved_as_none(pipe, folder, tmp_path):
    base = FideDiffPipeline.from_pretrained(folder, kernel_controlnet=None)
    assert base.kernel_controlnet is None
    passed = FideDiffPipeline.from_pretrained(folder, kernel_controlnet=pipe.kernel_controlnet, default_upscale_factor=1)
    assert passed.kernel_controlnet is pipe.kernel_controlnet and passed.config.default_upscale_factor == 1
    base.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["kernel_controlnet"] == [None, None]
    assert FideDiffPipeline.from_pretrained(tmp_path).kernel_controlnet is None


# ---------------------------------------------------------------------------------------------- saving (issue 12, 4)
def test_save_with_safe_serialization_false_warns_and_writes_safetensors(pipe, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        pipe.save_pretrained(tmp_path, safe_serialization=False)
    assert "safetensors only" in caplog.text
    files = [p.name for p in Path(tmp_path).rglob("*") if p.is_file()]
    assert "diffusion_pytorch_model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for name in files)
    loaded = FideDiffPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    image = _images(1)[0]
    assert np.array_equal(loaded(image, output_type="np").images, pipe(image, output_type="np").images)


# ----------------------------------------------------------------------------------------- CPU offload (issue 12, 2)
def _record_offload_residency(pipeline):
    """Run diffusers' model CPU offload chain and record, at each model call, which models sit on the device.

    ``enable_model_cpu_offload`` builds accelerate ``CpuOffload`` hooks in ``model_cpu_offload_seq`` order; each
    hook's ``pre_forward`` (also run by the VAE's ``encode`` / ``decode``) offloads the previous model of the chain
    and loads its own. On a CPU-only machine both "devices" are the CPU, so the moves are tracked here from the real
    hooks' own chain: a call loads its model and offloads its ``prev_module_hook``'s model.
    """
    pipeline.enable_model_cpu_offload(device="cpu")
    names = {id(model): name for name, model in pipeline.components.items() if isinstance(model, torch.nn.Module)}
    resident, record = set(), []
    for model_id, name in names.items():
        hook = pipeline.components[name]._hf_hook
        original = hook.pre_forward

        def pre_forward(module, *args, _name=name, _hook=hook, _original=original, **kwargs):
            previous = _hook.prev_module_hook
            if previous is not None:
                resident.discard(names[id(previous.model)])
            resident.add(_name)
            record.append((_name, frozenset(resident)))
            return _original(module, *args, **kwargs)

        hook.pre_forward = pre_forward
    return record


def test_model_cpu_offload_sequence_follows_the_call_order(pipe):
    pipeline = FideDiffPipeline(**pipe.components)
    pipeline.set_progress_bar_config(disable=True)
    record = _record_offload_residency(pipeline)
    try:
        pipeline(_images(1)[0], timestep="auto", output_type="np")
    finally:
        pipeline.remove_all_hooks()
    calls = [name for name, _ in record]
    assert calls == ["prompt_embedding", "vae", "kernel_controlnet", "kernel_controlnet", "unet", "vae"]
    on_device = dict(zip(range(len(record)), (r for _, r in record)))
    unet_call, decode_call = calls.index("unet"), len(calls) - 1
    # The UNet runs without the Kernel ControlNet or the embedding on the device; VAE decoding without the UNet.
    assert on_device[unet_call] <= {"unet", "vae"}
    assert on_device[decode_call] == {"vae"}
    assert all("unet" not in on_device[i] for i, name in enumerate(calls) if name == "kernel_controlnet")
    # The chain is the order of each model's last call.
    last_calls = sorted(set(calls), key=lambda name: max(i for i, c in enumerate(calls) if c == name))
    assert pipeline.model_cpu_offload_seq.split("->") == last_calls


def test_model_cpu_offload_gives_the_same_output(pipe):
    image = _images(1)[0]
    expected = pipe(image, output_type="np").images
    pipeline = FideDiffPipeline(**pipe.components)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.enable_model_cpu_offload(device="cpu")
    try:
        np.testing.assert_allclose(pipeline(image, output_type="np").images, expected, atol=1e-6)
    finally:
        pipeline.remove_all_hooks()


# ------------------------------------------------------------------------------------------------ batching, outputs
def test_same_sized_images_are_one_unet_batch_equal_to_one_by_one(pipe):
    images = _images(3) + _images(1, height=20, width=16, seed=5)
    timesteps = ["auto", 120, "auto", 200]
    singles = [pipe(img, timestep=t, output_type="np", return_kernels=True) for img, t in zip(images, timesteps)]
    calls, handle = _count_calls(pipe.unet)
    try:
        batched = pipe(images, timestep=timesteps, output_type="np", return_kernels=True)
    finally:
        handle.remove()
    assert len(calls) == 2  # the three 16x24 images together, the 20x16 one alone
    for index, single in enumerate(singles):
        np.testing.assert_allclose(batched.images[index], single.images[0], atol=1e-5)
        np.testing.assert_allclose(batched.kernels[index], single.kernels[0], atol=1e-5)
        assert batched.timesteps[index] == single.timesteps[0]
        assert batched.timestep_sources[index] == single.timestep_sources[0]
        assert batched.predicted_timesteps[index] == pytest.approx(single.predicted_timesteps[0], abs=1e-3)


def test_batch_size_caps_the_batch_without_changing_results(pipe):
    images = _images(3)
    full = pipe(images, timestep=160, output_type="pt").images
    calls, handle = _count_calls(pipe.unet)
    try:
        capped = pipe(images, timestep=160, output_type="pt", batch_size=2).images
    finally:
        handle.remove()
    assert len(calls) == 2
    torch.testing.assert_close(capped, full, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="batch_size"):
        pipe(images, batch_size=0)


def test_tiled_batch_equals_tiled_singles(pipe):
    images = _images(2, height=32, width=40, seed=3)
    settings = dict(timestep="auto", tiling=True, tile_size=8, tile_overlap=2, output_type="np", return_kernels=True)
    batched = pipe(images, **settings)
    for index, image in enumerate(images):
        single = pipe(image, **settings)
        np.testing.assert_allclose(batched.images[index], single.images[0], atol=1e-5)
        np.testing.assert_allclose(batched.kernels[index], single.kernels[0], atol=1e-5)
        assert batched.timesteps[index] == single.timesteps[0]


def test_output_type_latent_returns_the_restored_latents(pipe):
    image = _images(1)[0]
    latents = pipe(image, timestep=120, upscale_factor=1, output_type="latent").images
    factor = pipe.vae_scale_factor
    assert latents.shape == (1, pipe.unet.config.in_channels, 16 // factor, 24 // factor)
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    expected = pipe(image, timestep=120, upscale_factor=1, output_type="pt").images
    torch.testing.assert_close(((decoded + 1) / 2).clamp(0, 1), expected, atol=1e-6, rtol=0)
    mixed = pipe([image, _images(1, 20, 16)[0]], timestep=120, output_type="latent").images
    assert isinstance(mixed, list) and len(mixed) == 2


def test_progress_bar_counts_images_and_tiles_and_can_be_disabled(pipe, capsys):
    pipeline = FideDiffPipeline(**pipe.components)
    pipeline.set_progress_bar_config(disable=False)
    pipeline(_images(3), timestep=120, output_type="np")
    assert "3/3" in capsys.readouterr().err
    tiles = pipeline._tiles_per_image(32, 40, 2, True, 8, 2)  # 32x40 px at upscale 2 -> latent tiles of 8
    assert tiles > 1
    pipeline(_images(1, 32, 40)[0], timestep=120, tiling=True, tile_size=8, tile_overlap=2, output_type="np")
    assert f"{tiles}/{tiles}" in capsys.readouterr().err
    pipeline(_images(1)[0], timestep=120, output_type="np")
    assert "1/1" in capsys.readouterr().err  # asked for explicitly
    pipeline.set_progress_bar_config(disable=True)
    pipeline(_images(2), timestep=120, output_type="np")
    assert capsys.readouterr().err == ""


def test_no_progress_bar_for_one_image_by_default(pipe, capsys):
    pipeline = FideDiffPipeline(**pipe.components)  # no progress-bar config
    pipeline(_images(1)[0], timestep=120, output_type="np")
    assert capsys.readouterr().err == ""
    pipeline(_images(2), timestep=120, output_type="np")
    assert "2/2" in capsys.readouterr().err


def test_dict_and_tuple_outputs_are_the_same(pipe):
    images = _images(2)
    out = pipe(images, timestep="auto", output_type="np")
    images_tuple, timesteps = pipe(images, timestep="auto", output_type="np", return_dict=False)
    assert np.array_equal(out.images, images_tuple) and out.timesteps == timesteps


def test_pt_np_and_pil_inputs_and_outputs_agree(pipe):
    array = (_images(1)[0] * 255).round().astype(np.uint8)
    pil = PIL.Image.fromarray(array)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    outs = [pipe(x, timestep=160, output_type="np").images[0] for x in (array, pil, tensor)]
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-6)
    np.testing.assert_allclose(outs[2], outs[0], atol=1e-6)
    pt = pipe(array, timestep=160, output_type="pt").images[0]
    pil_out = pipe(array, timestep=160, output_type="pil").images[0]
    np.testing.assert_allclose(pt.permute(1, 2, 0).numpy(), outs[0], atol=1e-6)
    assert np.abs(np.asarray(pil_out).astype(np.float32) / 255 - outs[0]).max() <= 0.5 / 255 + 1e-6


def test_to_dtype_and_device(folder):
    loaded = FideDiffPipeline.from_pretrained(folder)
    loaded.to(torch.bfloat16)
    assert all(m.dtype == torch.bfloat16 for m in (loaded.unet, loaded.vae, loaded.kernel_controlnet, loaded.prompt_embedding))
    loaded.to("cpu", torch.float32)
    assert loaded.device.type == "cpu" and loaded.unet.dtype == torch.float32


# ------------------------------------------------------------------------------------------ batched inputs (issue 12, 3)
def test_numpy_batch_is_a_batch_of_images(pipe):
    images = _images(3)
    expected = pipe(images, timestep="auto", output_type="np")
    batched = pipe(np.stack(images), timestep="auto", output_type="np")
    assert batched.images.shape == (3, 16, 24, 3) and batched.timesteps == expected.timesteps
    np.testing.assert_allclose(batched.images, expected.images, atol=1e-6)
    single = pipe(np.random.default_rng(0).random((1, 16, 16, 3)).astype(np.float32), output_type="np")
    assert single.images.shape == (1, 16, 16, 3)


def test_tensor_batch_is_a_batch_of_images(pipe):
    images = _images(2)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    expected = pipe(images, timestep=120, output_type="pt").images
    torch.testing.assert_close(pipe(tensor, timestep=120, output_type="pt").images, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((0, 16, 16, 3), np.float32), "empty batch"),
        (np.zeros((2, 3, 16, 16), np.float32), r"looks channels-first.*BxHxWxC.*transpose\(0, 2, 3, 1\)"),
        (np.zeros((2, 16, 16, 5), np.float32), "batch item 0 has 5 channels"),
        (np.zeros((1, 2, 16, 16, 3), np.float32), "BxHxWxC"),
    ],
)
def test_bad_numpy_batches_are_named(pipe, array, message):
    with pytest.raises(ValueError, match=message):
        pipe(array)


# ------------------------------------------------------------------------------------- attention API (issue 12, 5)
def _attention_layers(model):
    return [module for module in model.modules() if isinstance(module, Attention)]


def _fresh_pipeline(pipe):
    """A pipeline with its own copies of the models, so that processor changes do not leak into other tests."""
    copies = {name: copy.deepcopy(c) if isinstance(c, torch.nn.Module) else c for name, c in pipe.components.items()}
    pipeline = FideDiffPipeline(**copies)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_kernel_controlnet_exposes_every_attention_processor(pipe):
    kcn = pipe.kernel_controlnet
    layers = _attention_layers(kcn)
    assert layers and len(kcn.attn_processors) == len(layers)
    assert all(name.startswith("controlnet.") and name.endswith(".processor") for name in kcn.attn_processors)


def test_attention_slicing_reaches_the_kernel_controlnet_and_keeps_the_output(pipe):
    pipeline = _fresh_pipeline(pipe)
    image = _images(1)[0]
    expected = pipeline(image, timestep=160, output_type="np").images
    pipeline.enable_attention_slicing(slice_size=1)
    for model in (pipeline.unet, pipeline.kernel_controlnet):
        assert all(isinstance(layer.processor, SlicedAttnProcessor) for layer in _attention_layers(model))
    np.testing.assert_allclose(pipeline(image, timestep=160, output_type="np").images, expected, atol=1e-5)
    pipeline.disable_attention_slicing()
    assert not any(isinstance(layer.processor, SlicedAttnProcessor) for layer in _attention_layers(pipeline.kernel_controlnet))


def test_processor_swaps_reach_every_layer_and_keep_the_output(pipe):
    pipeline = _fresh_pipeline(pipe)
    image = _images(1)[0]
    expected = pipeline(image, timestep=160, output_type="np").images
    for model in (pipeline.unet, pipeline.kernel_controlnet):
        model.set_attn_processor(AttnProcessor())
        assert all(type(p) is AttnProcessor for p in model.attn_processors.values())
    np.testing.assert_allclose(pipeline(image, timestep=160, output_type="np").images, expected, atol=1e-5)
    kcn = pipeline.kernel_controlnet
    kcn.set_attn_processor({name: AttnProcessor2_0() for name in kcn.attn_processors})  # one processor per layer
    assert all(type(p) is AttnProcessor2_0 for p in kcn.attn_processors.values())
    kcn.set_default_attn_processor()
    assert all(type(p) is AttnProcessor for p in kcn.attn_processors.values())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"estimator_channels": (4, 8)}, r"estimator_channels=\(4, 8\): the skip join of levels 0 and 1 has 12 channels"),
        ({"estimator_channels": (12,)}, "level 0 has 12 channels"),
        ({"estimator_channels": ()}, "non-empty list of positive ints"),
        ({"kernel_size": 4}, "positive odd number"),
        ({"regressor_channels": 0}, "regressor_channels must be a positive int"),
    ],
)
def test_kernel_controlnet_config_is_checked_at_construction(kwargs, message):
    unet = build_unet("tiny")
    with pytest.raises(ValueError, match=message):
        KernelControlNetModel.from_unet(unet, **{"kernel_size": 5, **kwargs})


# --------------------------------------------------------------- KernelControlNetModel as diffusers tests a model
@pytest.fixture(scope="module")
def kcn_inputs(pipe):
    generator = torch.Generator().manual_seed(2)
    channels = pipe.unet.config.in_channels
    return {
        "image": torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1,
        "sample": torch.randn(2, channels, 8, 8, generator=generator),
        "timestep": torch.tensor([120, 200]),
        "encoder_hidden_states": pipe.prompt_embedding(batch_size=2).detach().clone(),
    }


def _kcn_outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return [out.kernels, out.predicted_timestep, *out.down_block_res_samples, out.mid_block_res_sample]


def _assert_outputs_close(actual, expected, atol=0.0, rtol=0.0):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.float(), e.float(), atol=atol, rtol=rtol)


def test_kernel_controlnet_is_deterministic_and_batch_independent(pipe, kcn_inputs):
    kcn = pipe.kernel_controlnet
    first, second = _kcn_outputs(kcn, kcn_inputs), _kcn_outputs(kcn, kcn_inputs)
    _assert_outputs_close(first, second)
    single = _kcn_outputs(kcn, {k: v[:1] for k, v in kcn_inputs.items()})
    # Float rounding only: with several CPU threads a batch of 2 may take another conv algorithm than a batch of 1.
    _assert_outputs_close(single, [o[:1] for o in first], atol=1e-5, rtol=1e-5)


def test_kernel_controlnet_save_load_and_variants(pipe, kcn_inputs, tmp_path):
    kcn = pipe.kernel_controlnet
    kcn.save_pretrained(tmp_path / "plain")
    kcn.save_pretrained(tmp_path / "variant", variant="v1")
    _assert_outputs_close(_kcn_outputs(KernelControlNetModel.from_pretrained(tmp_path / "plain"), kcn_inputs),
                          _kcn_outputs(kcn, kcn_inputs))
    reloaded = KernelControlNetModel.from_pretrained(tmp_path / "variant", variant="v1")
    _assert_outputs_close(_kcn_outputs(reloaded, kcn_inputs), _kcn_outputs(kcn, kcn_inputs))
    with pytest.raises(OSError, match="nope"):
        KernelControlNetModel.from_pretrained(tmp_path / "variant", variant="nope")


def test_kernel_controlnet_dtypes(pipe, kcn_inputs, tmp_path):
    pipe.kernel_controlnet.save_pretrained(tmp_path)
    expected = _kcn_outputs(pipe.kernel_controlnet, kcn_inputs)
    for dtype in (torch.bfloat16, torch.float16):
        model = KernelControlNetModel.from_pretrained(tmp_path, dtype=dtype)
        assert model.dtype == dtype and all(p.dtype == dtype for p in model.parameters())
    model = KernelControlNetModel.from_pretrained(tmp_path).to(torch.bfloat16)
    outputs = _kcn_outputs(model, {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in kcn_inputs.items()})
    assert all(o.dtype in (torch.bfloat16, torch.float32) for o in outputs)
    # kernels are probabilities, t is in [0, 1000]: bf16 keeps them within a few percent
    torch.testing.assert_close(outputs[0].float(), expected[0], atol=2e-2, rtol=0)
    torch.testing.assert_close(outputs[1].float(), expected[1], atol=10.0, rtol=0)


def _training_gradients(model, inputs):
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    loss = out.kernels.square().mean() + out.predicted_timestep.mean() / 1000
    loss = loss + sum(r.square().mean() for r in out.down_block_res_samples) + out.mid_block_res_sample.square().mean()
    loss.backward()
    model.eval()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_kernel_controlnet_trains_and_gradient_checkpointing_gives_the_same_gradients(pipe, kcn_inputs):
    model = copy.deepcopy(pipe.kernel_controlnet)
    plain = _training_gradients(model, kcn_inputs)
    assert set(plain) == {name for name, _ in model.named_parameters()}, "every parameter is trained"
    assert not model.is_gradient_checkpointing
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    assert model.kernel_estimator.gradient_checkpointing  # M's residual blocks too (stage 2 trains only M and T)
    recomputed = []
    model.kernel_estimator.mid_block.register_forward_pre_hook(lambda m, a: recomputed.append(torch.is_grad_enabled()))
    checkpointed = _training_gradients(model, kcn_inputs)
    assert len(recomputed) == 2  # the forward pass, then the recomputation in the backward pass
    assert set(checkpointed) == set(plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_layerwise_casting_runs_on_cpu(pipe):
    pipeline = _fresh_pipeline(pipe)
    image = _images(1)[0]
    expected = pipeline(image, timestep=160, output_type="np").images
    for model in (pipeline.unet, pipeline.kernel_controlnet):
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert pipeline.kernel_controlnet.kernel_filter.conv_z.weight.dtype == torch.float8_e4m3fn
    out = pipeline(image, timestep=160, output_type="np").images
    assert out.shape == expected.shape and np.isfinite(out).all()
    assert np.abs(out - expected).mean() < 0.1  # float8 storage: close, not equal


def test_group_offloading_runs_on_cpu_with_the_same_output(pipe):
    pipeline = _fresh_pipeline(pipe)
    image = _images(1)[0]
    expected = pipeline(image, timestep="auto", output_type="np").images
    cpu = torch.device("cpu")
    for model in (pipeline.unet, pipeline.kernel_controlnet):
        model.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="leaf_level")
    np.testing.assert_allclose(pipeline(image, timestep="auto", output_type="np").images, expected, atol=1e-6)


def test_hub_id_that_cannot_be_fetched_is_one_readable_error_with_any_hub_argument(tmp_path):
    with pytest.raises(ValueError, match=r"could not load 'someone/fidediff-missing'.*folder"):
        FideDiffPipeline.from_pretrained("someone/fidediff-missing", local_files_only=True, cache_dir=tmp_path,
                                         revision="main", variant="fp16", dtype={"default": torch.float16})
