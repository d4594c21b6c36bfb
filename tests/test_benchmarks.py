"""benchmarks/benchmark_pipeline.py's record of the machine it ran on."""

import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import benchmark_pipeline  # noqa: E402


def test_cpu_model_reads_name_and_clock_and_falls_back_without_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654\ncpu MHz\t\t: 2396.400\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 9654\ncpu MHz\t\t: 2396.400\n")
    assert benchmark_pipeline.cpu_model(cpuinfo) == "AMD EPYC 9654, 2396.400 MHz"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert benchmark_pipeline.cpu_model(cpuinfo) == "Some CPU"
    assert benchmark_pipeline.cpu_model(tmp_path / "missing") == platform.processor()


def test_attention_cudnn_and_group_norm_options_reach_the_pipeline(pipeline_with_kl_vae):
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from fidediff_pipeline.models.attention_processor import WideHeadAttnProcessor

    vae = pipeline_with_kl_vae.new_vae()

    def fresh():
        return pipeline_with_kl_vae(vae)

    def vae_processors(pipe):
        return {type(p) for p in pipe.vae.attn_processors.values()}

    before = torch.backends.cudnn.benchmark
    try:
        pipe = fresh()
        benchmark_pipeline.apply_optimisations(pipe, False, False, "wide-head", cudnn_benchmark=True)
        assert vae_processors(pipe) == {WideHeadAttnProcessor} and torch.backends.cudnn.benchmark is True
        benchmark_pipeline.apply_optimisations(pipe, False, False, "sdpa")
        assert vae_processors(pipe) == {AttnProcessor2_0} and torch.backends.cudnn.benchmark is False
        pipe = fresh()
        benchmark_pipeline.apply_optimisations(pipe, False, False, "eager")
        assert vae_processors(pipe) == {AttnProcessor}
        assert {type(p) for p in pipe.unet.attn_processors.values()} <= {AttnProcessor}
        from fidediff_pipeline.models.normalization import ReductionGroupNorm

        pipe = fresh()
        benchmark_pipeline.apply_optimisations(pipe, False, False, "wide-head", group_norm="native")
        assert not any(isinstance(m, ReductionGroupNorm) for model in (pipe.vae, pipe.unet) for m in model.modules())
        benchmark_pipeline.apply_optimisations(pipe, False, False, "wide-head", group_norm="reduction")
        norms = [m for model in (pipe.vae, pipe.unet) for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert norms and all(type(m) is ReductionGroupNorm and m.devices == ("cuda",) for m in norms)
        benchmark_pipeline.apply_optimisations(pipe, False, False, "wide-head", group_norm="native")
        assert all(m.devices == () for m in norms)  # switched over before: nn.GroupNorm's path everywhere
    finally:
        torch.backends.cudnn.benchmark = before


def test_compile_unet_compiles_the_unet_and_controlnet_but_not_the_vae():
    from fidediff_pipeline.presets import build_pipeline

    pipe = build_pipeline("tiny")
    encoder, decoder = pipe.vae.encoder, pipe.vae.decoder
    benchmark_pipeline.apply_optimisations(pipe, "unet", False, "wide-head")
    assert type(pipe.unet).__name__ == "OptimizedModule"
    assert type(pipe.kernel_controlnet.controlnet).__name__ == "OptimizedModule"
    assert pipe.vae.encoder is encoder and pipe.vae.decoder is decoder
    line = benchmark_pipeline.markdown_table([{
        "preset": "tiny", "width": 8, "height": 8, "batch_size": 1, "d": 2, "kernel_controlnet": True,
        "dtype": "float32", "timestep": 200, "compile": "unet", "channels_last": False, "attention": "wide-head",
        "cudnn_benchmark": True, "error": "x"}]).splitlines()[-1]
    assert "| unet | off | wide-head |  | on | native |" in line


def test_group_norm_benchmark_finds_every_call_and_measures_both_paths(tmp_path):
    """benchmark_group_norm: SD 2.1-base's VAE meets 52 GroupNorm calls in one encode + decode, the UNet 61 in one
    call (counted through forward hooks on the meta device); on the CPU both paths are timed and agree with a
    float64 reference to bf16's rounding."""
    import json

    import benchmark_group_norm

    shapes = benchmark_group_norm.group_norm_shapes(64, 48)
    calls = {model: sum(n for (m, _, _), n in shapes.items() if m == model) for model in ("vae", "unet")}
    assert calls == {"vae": 52, "unet": 61}
    assert shapes[("vae", (1, 128, 48, 64), 32)] == 10  # the encoder's and decoder's full-resolution blocks
    output = tmp_path / "gn.json"
    assert benchmark_group_norm.main(["--device", "cpu", "--size", "16x16", "--repeats", "1",
                                      "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert sum(r["calls"] for r in report["results"]) == 52 + 61
    for row in report["results"]:
        assert not row["reduction_path_by_default"]  # the CPU keeps nn.GroupNorm's path
        for path in ("native", "reduction"):
            assert row[path]["median_s"] > 0 and 0 < row[path]["rms_error"] < 0.01
        assert row["reduction"]["rms_error"] <= 1.2 * row["native"]["rms_error"]
    assert set(report["total_s"]) == {"vae", "unet"}


def test_compare_gpu_paths_on_the_cpu_rows_agree_with_the_reference(tmp_path):
    """On the CPU the pipeline takes the old paths whatever is asked, so all four rows equal the float32 reference."""
    import json

    import compare_gpu_paths

    output = tmp_path / "paths.json"
    assert compare_gpu_paths.main(["--device", "cpu", "--preset", "tiny", "--size", "48x32", "--output",
                                   str(output)]) == 0
    rows = json.loads(output.read_text())["results"]
    assert {(r["attention"], r["group_norm"]) for r in rows} == set(compare_gpu_paths.PATHS)
    assert all(r["finite"] and r["max_abs"] == 0 and r["psnr_db"] is None for r in rows)


def test_training_saved_activations_counts_each_component_and_checkpointing_keeps_less(tmp_path):
    """benchmarks/training_saved_activations.py on the tiny preset's stage 1: the UNet's blocks and the VAE decoder
    appear by name, and with --gradient_checkpointing the step keeps fewer bytes for its backward pass."""
    import json

    import training_saved_activations

    from train import common

    run_training = common.run_training
    totals = {}
    for flag in ([], ["--gradient_checkpointing"]):
        output = tmp_path / f"saved{len(flag)}.json"
        assert training_saved_activations.main(
            ["--output", str(output), "train/train_base.py", "--preset", "tiny", "--resolution", "64",
             "--mixed_precision", "no", "--levels_per_group", "2", *flag]) == 0
        report = json.loads(output.read_text())
        parts = report["saved_gib_by_component"]
        assert any(name.startswith("unet.up_blocks.") for name in parts) and "discriminator" in parts
        assert abs(sum(parts.values()) - report["saved_gib_total"]) < 1e-9 and report["saved_gib_total"] > 0
        totals[bool(flag)] = report["saved_gib_total"]
    assert common.run_training is run_training  # restored after the run
    assert totals[True] < 0.6 * totals[False]


def test_gpu_scripts_refuse_a_missing_cuda_device_and_bad_sizes(monkeypatch, capsys, tmp_path):
    import benchmark_group_norm
    import compare_gpu_paths
    import pytest
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for main, argv, message in [
        (benchmark_group_norm.main, ["--device", "cuda"], "no CUDA device"),
        (compare_gpu_paths.main, ["--device", "cuda"], "no CUDA device"),
        (benchmark_group_norm.main, ["--device", "cpu", "--size", "12"], "WIDTHxHEIGHT"),
        (benchmark_group_norm.main, ["--device", "cpu", "--repeats", "0"], "positive"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--output", str(tmp_path / "x.json")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
