"""Training scripts (train/): every stage runs and exports a loadable pipeline, losses fall, resume is exact,
2-process DDP ends with identical replicas, consistency batches hold several levels of one trajectory.

CPU, tiny preset, 32-48 px crops, a few steps each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fidediff_pipeline import FideDiffPipeline  # noqa: E402
from train import common, train_base, train_kcn, train_kernel, train_vae  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each in-process run gets its own Accelerator settings (accelerate keeps a process-wide singleton)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _photo(name: str, size: int) -> np.ndarray:
    import skimage.data
    from PIL import Image

    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize((size, size), Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two 64 px training photos, a held-out 48 px validation set (n = 7, 11, 15) and a one-photo manifest."""
    from PIL import Image

    from fidediff_pipeline.data import synthesize_trajectory_set

    root = tmp_path_factory.mktemp("data")
    photos = root / "photos"
    photos.mkdir()
    for name in ("astronaut", "rocket"):
        Image.fromarray(_photo(name, 64)).save(photos / f"{name}.png")
    val = synthesize_trajectory_set([_photo("coffee", 48)], root / "val", frames=(7, 11, 15), seed=0, kernel_size=11)
    one = synthesize_trajectory_set([_photo("astronaut", 32)], root / "one", frames=(7, 11, 15), seed=0, kernel_size=11)
    return {"photos": str(photos), "val": str(val.manifest_path), "one": str(one.manifest_path), "root": root}


def _flags(data, out, steps=2, **extra):
    argv = ["--train_images", data["photos"], "--validation_manifest", data["val"], "--frames", "7", "11", "15",
            "--synth_kernel_size", "11", "--upscale_factor", "1", "--resolution", "32", "--train_batch_size", "2",
            "--levels_per_group", "2", "--max_train_steps", str(steps), "--checkpointing_steps", str(steps),
            "--validation_steps", str(steps), "--validation_crop", "32", "--num_validation_images", "2",
            "--report_to", "none", "--output_dir", str(out), "--log_every", "1"]
    for key, value in extra.items():
        flag = f"--{key}"
        if flag in argv:
            i = argv.index(flag)
            del argv[i: i + 2]
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def _summary(out) -> dict:
    return json.loads(Path(out, "train_summary.json").read_text())


@pytest.fixture(scope="module")
def stage_outputs(data, tmp_path_factory):
    """Run all four stages, 2 steps each, chained through their exported pipelines."""
    root = tmp_path_factory.mktemp("stages")
    train_vae.main(["--preset", "tiny", *_flags(data, root / "vae")])
    train_base.main(["--init_from", str(root / "vae" / "pipeline"), *_flags(data, root / "base", validation_steps=1),
                     "--lora_rank", "4", "--lpips_weight", "0", "--gan_weight", "0.1", "--fft_weight", "0.5"])
    train_kernel.main(["--init_from", str(root / "base" / "pipeline"), "--preset", "tiny", "--kernel_size", "11",
                       *_flags(data, root / "kernel"), "--time_weight", "1", "--kernel_weight", "1"])
    train_kcn.main(["--init_from", str(root / "kernel" / "pipeline"), *_flags(data, root / "kcn"), "--lpips_weight", "0",
                    "--fft_weight", "0.5", "--kernel_moment_weight", "1"])
    return root


@pytest.mark.parametrize("stage", ["vae", "base", "kernel", "kcn"])
def test_each_stage_exports_a_loadable_pipeline(stage_outputs, stage):
    folder = stage_outputs / stage / "pipeline"
    pipe = FideDiffPipeline.from_pretrained(folder)
    assert (pipe.kernel_controlnet is not None) == (stage in ("kernel", "kcn"))
    assert not list(folder.rglob("*.bin")), "weights must be safetensors only"
    out = pipe(np.random.rand(32, 32, 3).astype(np.float32), timestep=200, upscale_factor=1, output_type="np")
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()
    summary = _summary(stage_outputs / stage)
    assert summary["steps"] == 2 and all(np.isfinite(summary["loss_history"]))
    assert list((stage_outputs / stage).glob("checkpoint-2")), "accelerate checkpoint missing"


def test_every_validation_is_recorded_per_level_and_the_best_pipeline_is_kept(stage_outputs):
    history = json.loads((stage_outputs / "base" / "validation_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2]
    assert all(h["seconds"] > 0 for h in history)
    assert {"val/psnr_gain", "val/psnr_gain_t120", "val/psnr_gain_t200", "val/psnr_gain_t280"} <= set(history[0]["val"])
    best = json.loads((stage_outputs / "base" / "best_pipeline" / "best.json").read_text())
    assert best["val/psnr_gain"] == max(h["val"]["val/psnr_gain"] for h in history)
    pipe = FideDiffPipeline.from_pretrained(stage_outputs / "base" / "best_pipeline")  # LoRA fused on a copy
    assert not any("lora" in name for name, _ in pipe.unet.named_parameters())
    # The mid-training export fused a COPY: the run went on training its adapter and exported at the end.
    assert _summary(stage_outputs / "base")["steps"] == 2 and "fft" in _summary(stage_outputs / "base")
    kernel = json.loads((stage_outputs / "kernel" / "validation_history.json").read_text())
    assert {"val/reblur", "val/t_mae", "val/t_mae_t200"} <= set(kernel[-1]["val"])
    assert "kernel_l1" in _summary(stage_outputs / "kernel")
    assert not list(stage_outputs.rglob("*.partial-*")), "temporary folders left behind"


def test_kcn_stage_logs_its_loss_terms(stage_outputs):
    summary = _summary(stage_outputs / "kcn")
    for key in ("l1", "reblur", "time", "t_mae", "val/psnr_output", "kernel_moments"):  # true-kernel term on
        assert key in summary
    assert "kernel_l1" not in summary  # --kernel_weight was 0


def test_lora_is_fused_on_export_and_reloads_identically(data, tmp_path):
    """The exported (fused, unloaded) UNet gives the trained LoRA model's output, not the base model's."""
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    args = train_base.parse_args(["--preset", "tiny", *_flags(data, tmp_path, steps=3), "--lora_rank", "4",
                                  "--lora_target", "attention", "--learning_rate", "3e-2", "--lpips_weight", "0",
                                  "--gan_weight", "0", "--validation_steps", "100"])
    accelerator = common.make_accelerator(args)
    stage = train_base.BaseStage(args, accelerator)
    before_training = stage.validation_pipeline()(image, timestep=200, upscale_factor=1, output_type="np").images
    captured = {}
    original_export = stage.export

    def export(folder):
        captured["trained"] = stage.validation_pipeline()(image, timestep=200, upscale_factor=1, output_type="np").images
        original_export(folder)

    stage.export = export
    common.run_training(args, accelerator, stage)
    reloaded = FideDiffPipeline.from_pretrained(tmp_path / "pipeline")
    assert not any("lora" in name for name in reloaded.unet.state_dict()), "LoRA keys left in the exported UNet"
    after = reloaded(image, timestep=200, upscale_factor=1, output_type="np").images
    assert np.abs(captured["trained"] - before_training).max() > 1e-4, "LoRA training changed nothing"
    np.testing.assert_allclose(after, captured["trained"], atol=2e-5)


def test_loss_falls_when_overfitting_a_few_crops(data, tmp_path):
    """The tiny VAE stage on one 32 px photo (one crop window, flips): its loss must clearly fall."""
    argv = _flags(data, tmp_path, steps=60, learning_rate="2e-3", lr_scheduler="constant", validation_steps=100)
    i = argv.index("--train_images")
    argv[i: i + 2] = ["--train_manifest", data["one"]]
    train_vae.main(["--preset", "tiny", *argv, "--edge_weight", "0", "--train_batch_size", "1",
                    "--levels_per_group", "3"])
    history = _summary(tmp_path)["loss_history"]
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:5]), history


def _unet_and_embedding(folder) -> dict:
    pipe = FideDiffPipeline.from_pretrained(folder)
    state = {f"unet.{k}": v for k, v in pipe.unet.state_dict().items()}
    state.update({f"emb.{k}": v for k, v in pipe.prompt_embedding.state_dict().items()})
    return state


def test_resume_continues_exactly(data, tmp_path):
    """2 steps, stop, resume to 4 == 4 steps in one go (optimizer, LR schedule, GAN, RNG and data order)."""
    common_args = ["--preset", "tiny", "--lora_rank", "0", "--lpips_weight", "0", "--gan_weight", "0.1",
                   "--lr_scheduler", "cosine", "--lr_warmup_steps", "1", "--learning_rate", "1e-3"]
    straight = tmp_path / "straight"
    train_base.main([*common_args, *_flags(data, straight, steps=4, checkpointing_steps=2, validation_steps=100)])
    resumed = tmp_path / "resumed"
    train_base.main([*common_args, *_flags(data, resumed, steps=4, checkpointing_steps=100, validation_steps=100),
                     "--max_steps_this_run", "2"])
    assert (resumed / "checkpoint-2").is_dir() and not (resumed / "pipeline").exists()
    train_base.main([*common_args, *_flags(data, resumed, steps=4, checkpointing_steps=2, validation_steps=100),
                     "--resume_from_checkpoint", "latest"])
    a, b = _unet_and_embedding(straight / "pipeline"), _unet_and_embedding(resumed / "pipeline")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_ddp_two_processes_end_with_identical_weights(data, tmp_path):
    """Real multi-process DDP training (gloo) on the CPU, stage 1.

    accelerate 1.15 runs ``--cpu --num_processes 2`` as ONE process unless MPI is installed (its simple launcher
    only goes multi-process through mpirun), so CPU DDP goes through the torchrun launcher: ``--multi_gpu`` with
    ``ACCELERATE_USE_CPU=1`` (the script then reports 2 processes and a gloo process group).
    """
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train" / "train_base.py"),
           "--preset", "tiny", *_flags(data, out, steps=2, validation_steps=100), "--lora_rank", "0",
           "--lpips_weight", "0", "--gan_weight", "0.1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = [Path(out, f"weights_digest_rank{r}.txt").read_text().strip() for r in (0, 1)]
    assert digests[0] == digests[1], "DDP replicas diverged"
    assert "2 processes" in result.stderr + result.stdout
    assert (out / "pipeline" / "model_index.json").is_file()


def test_consistency_batches_hold_several_levels_of_one_trajectory(data, tmp_path):
    args = train_base.parse_args(["--preset", "tiny", *_flags(data, tmp_path), "--levels_per_group", "3",
                                  "--train_batch_size", "2"])
    accelerator = common.make_accelerator(args)
    batch = next(iter(common.build_train_loader(args, accelerator, start_micro_batch=0, consistency=True)))
    assert batch["blurry"].shape[0] == 6
    for g in range(2):
        members = batch["group_index"] == g
        assert int(members.sum()) == 3
        assert len(set(batch["timesteps"][members].tolist())) == 3, "levels of a group must differ"
        sharp = batch["sharp"][members]
        assert torch.equal(sharp[0], sharp[1]) and torch.equal(sharp[0], sharp[2]), "one target per group"
    # "w/o CT": as many samples, each from its own trajectory, all at t = 200
    flat = next(iter(common.build_train_loader(args, accelerator, start_micro_batch=0, consistency=False)))
    assert flat["blurry"].shape[0] == 6 and len(set(flat["group_index"].tolist())) == 6
    assert set(flat["timesteps"].tolist()) == {200}


def test_data_order_is_a_function_of_the_step(data, tmp_path):
    args = train_base.parse_args(["--preset", "tiny", *_flags(data, tmp_path)])
    accelerator = common.make_accelerator(args)
    loader = iter(common.build_train_loader(args, accelerator, start_micro_batch=0))
    next(loader)
    second = next(loader)
    again = next(iter(common.build_train_loader(args, accelerator, start_micro_batch=1)))
    assert torch.equal(second["blurry"], again["blurry"])


def test_validation_crops_do_not_depend_on_the_training_seed(data, tmp_path):
    # A continuation trained with another seed must be scored on the same crops as the run it continues.
    one = common.validation_pairs(train_base.parse_args(["--preset", "tiny", *_flags(data, tmp_path, seed=0)]))
    two = common.validation_pairs(train_base.parse_args(["--preset", "tiny", *_flags(data, tmp_path, seed=5)]))
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        assert torch.equal(a["blurry"], b["blurry"]) and torch.equal(a["sharp"], b["sharp"])
    # ... while the training crops do change with the seed.
    firsts = []
    for seed in (0, 5):
        args = train_base.parse_args(["--preset", "tiny", *_flags(data, tmp_path, seed=seed)])
        firsts.append(next(iter(common.build_train_loader(args, common.make_accelerator(args), start_micro_batch=0))))
    assert not torch.equal(firsts[0]["blurry"], firsts[1]["blurry"])


def test_training_restore_matches_the_pipeline():
    """The training forward (restoration.restore) is the pipeline's maths."""
    from fidediff_pipeline.presets import build_pipeline
    from fidediff_pipeline.restoration import restore

    pipe = build_pipeline("tiny", seed=0)
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ref = pipe(image, timestep=160, upscale_factor=2, output_type="pt", tiling=False).images
        out = restore(pipe.vae, pipe.unet, pipe.scheduler.alphas_cumprod, pipe.prompt_embedding(1), image * 2 - 1,
                      torch.tensor([160]), upscale_factor=2, kernel_controlnet=pipe.kernel_controlnet)
    torch.testing.assert_close(((out.image + 1) / 2).clamp(0, 1), ref.reshape(out.image.shape), rtol=0, atol=1e-6)


def test_restore_uses_kernels_it_is_given_without_running_m_again():
    """Stage 3 estimates the kernels first (T's t for the UNet) and hands them to restore: they must reach the
    ControlNet as they are, and M must not run a second time (it once did: the argument was overwritten)."""
    from fidediff_pipeline.presets import build_pipeline
    from fidediff_pipeline.restoration import restore

    pipe = build_pipeline("tiny", seed=0)
    kcn = pipe.kernel_controlnet
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        given = torch.rand_like(kcn.kernel_estimator(image))
        calls = []
        kcn.kernel_estimator.register_forward_hook(lambda *_: calls.append(1))
        out = restore(pipe.vae, pipe.unet, pipe.scheduler.alphas_cumprod, pipe.prompt_embedding(1), image,
                      torch.tensor([160]), kernel_controlnet=kcn, kernels=given)
    assert calls == [] and out.kernels is given and out.predicted_timestep is None


def test_nan_guard_stops_with_a_clear_message():
    with pytest.raises(common.NonFiniteLossError, match="non-finite loss at step 7"):
        common.check_finite({"loss": torch.tensor(float("nan")), "l1": torch.tensor(0.1)}, 7)
    common.check_finite({"loss": torch.tensor(1.0)}, 1)


def test_missing_lpips_backbone_stops_before_training(data, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match="vgg16-397923af.pth"):
        train_base.main(["--preset", "tiny", *_flags(data, tmp_path / "run"), "--lpips_weight", "1"])
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_ea_lpips_with_random_backbone_for_tests_only():
    from fidediff_pipeline.losses import EALPIPSLoss, sobel_edges

    loss = EALPIPSLoss(net="vgg", edge_weight=1.0, random_backbone=True)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(loss(x, x)) < 1e-3
    assert float(loss(x, x.flip(-1))) > 0
    flat = torch.zeros(1, 3, 8, 8)
    assert float(sobel_edges(flat).max()) < 1e-2


@pytest.mark.parametrize("bad, message", [
    (["--resolution", "31"], "multiple of 2"),  # the tiny VAE's factor
    (["--upscale_factor", "3"], "must divide"),
    (["--frames", "7", "8"], "odd"),
])
def test_bad_flags_fail_clearly(data, tmp_path, bad, message):
    argv = _flags(data, tmp_path)
    flag = bad[0]
    j = argv.index(flag)
    k = j + 1
    while k < len(argv) and not argv[k].startswith("--"):
        k += 1
    argv[j:k] = bad
    with pytest.raises(SystemExit, match=message):
        train_base.main(["--preset", "tiny", *argv, "--lpips_weight", "0"])


def test_colour_fix_and_default_upscale_round_trip_and_match_training(tmp_path):
    """The exported inference settings (default_upscale_factor, color_fix_sigma) reload, and the pipeline's colour
    fix is the training forward's."""
    from fidediff_pipeline.presets import build_pipeline
    from fidediff_pipeline.restoration import restore

    pipe = build_pipeline("tiny", with_kernel_controlnet=False, seed=0)
    pipe.register_to_config(default_upscale_factor=1, color_fix_sigma=4.0)
    pipe.save_pretrained(tmp_path / "p")
    loaded = FideDiffPipeline.from_pretrained(tmp_path / "p")
    assert loaded.config.default_upscale_factor == 1 and loaded.config.color_fix_sigma == 4.0
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ref = loaded(image, timestep=120, output_type="pt", tiling=False).images  # upscale_factor from the config
        out = restore(loaded.vae, loaded.unet, loaded.scheduler.alphas_cumprod, loaded.prompt_embedding(1),
                      image * 2 - 1, torch.tensor([120]), upscale_factor=1, color_fix_sigma=4.0)
    torch.testing.assert_close(((out.image + 1) / 2).clamp(0, 1), ref.reshape(out.image.shape), rtol=0, atol=1e-6)
    plain = build_pipeline("tiny", with_kernel_controlnet=False, seed=0)
    assert plain.config.default_upscale_factor == 2 and plain.config.color_fix_sigma is None


def test_low_frequency_transfer_keeps_detail_and_takes_the_mean_from_the_reference():
    from fidediff_pipeline.restoration import low_frequency_transfer

    detail = torch.rand(1, 3, 64, 64) - 0.5
    out = low_frequency_transfer(detail + 0.3, detail * 0 - 0.2, sigma=6.0)
    assert abs(float(out.mean()) - float((detail - 0.2).mean())) < 0.02
    # one blur of the difference equals output - lowpass(output) + lowpass(reference) (two blurs, as before)
    from fidediff_pipeline.restoration import gaussian_lowpass

    output, reference = torch.rand(2, 3, 40, 56) * 2 - 1, torch.rand(2, 3, 40, 56) * 2 - 1
    two_blurs = output - gaussian_lowpass(output, 12.0) + gaussian_lowpass(reference, 12.0)
    torch.testing.assert_close(low_frequency_transfer(output, reference, 12.0), two_blurs, atol=1e-5, rtol=0)


def test_time_steps_only_times_every_step_and_writes_nothing_else(data, tmp_path):
    out = tmp_path / "timed"
    train_base.main(["--preset", "tiny", *_flags(data, out, steps=3), "--lpips_weight", "0", "--time_steps_only"])
    summary = _summary(out)
    assert summary["steps"] == 3 and len(summary["step_seconds"]) == 3 and all(v > 0 for v in summary["step_seconds"])
    assert summary["median_step_s"] == pytest.approx(summary["step_seconds"][2], abs=1e-4)  # after 2 warm-up steps
    assert summary["samples_per_step"] == 2 * 2 and summary["peak_rss_gib"] > 0
    assert not list(out.glob("checkpoint-*")) and not (out / "pipeline").exists()  # no checkpoint, no export
    assert not (out / "validation_history.json").exists()


def test_training_benchmark_runs_each_stage_script_and_records_failures(tmp_path, capsys):
    """benchmarks/benchmark_training.py on the tiny preset: the kernel stage times its steps; a configuration the
    stage refuses is a row with its error, not a crash."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import benchmark_training

    output = tmp_path / "training.json"
    benchmark_training.main(["--preset", "tiny", "--stages", "kernel", "--resolution", "64", "--train-batch-sizes", "1",
                             "--levels-per-group", "2", "--steps", "2", "--mixed-precision", "no", "--gradient-checkpointing", "off",
                             "--upscale-factor", "1", "--output", str(output)])
    (row,) = json.loads(output.read_text())["results"]
    assert row["stage"] == "kernel" and row["steps"] == 2 and row["samples_per_step"] == 2 and row["median_step_s"] > 0
    benchmark_training.main(["--preset", "tiny", "--stages", "kernel", "--resolution", "64", "--train-batch-sizes", "1",
                             "--levels-per-group", "2", "--steps", "2", "--mixed-precision", "no", "--gradient-checkpointing", "off",
                             "--upscale-factor", "3", "--output", str(output)])
    (row,) = json.loads(output.read_text())["results"]
    assert "median_step_s" not in row and "upscale" in row["error"]
    # a configuration past --timeout-per-config is a row saying so (the file is written after every row)
    benchmark_training.main(["--preset", "tiny", "--stages", "kernel", "--resolution", "64", "--train-batch-sizes", "1",
                             "--steps", "2", "--mixed-precision", "no", "--gradient-checkpointing", "on", "off",
                             "--timeout-per-config", "0.01", "--output", str(output)])
    rows = json.loads(output.read_text())["results"]
    assert [r["gradient_checkpointing"] for r in rows] == [True, False]
    assert all(r["error"] == "not finished within --timeout-per-config 0.01 s" for r in rows)
    with pytest.raises(SystemExit):
        benchmark_training.main(["--preset", "tiny", "--timeout-per-config", "-5", "--output", str(output)])
    assert "--timeout-per-config takes a positive number of seconds; got -5" in capsys.readouterr().err


def test_bf16_accumulation_checkpointing_lora_and_float32_export(data, tmp_path):
    train_base.main(["--preset", "tiny", *_flags(data, tmp_path, steps=1, validation_steps=100), "--lora_rank", "4",
                     "--lpips_weight", "0", "--gan_weight", "0.1", "--mixed_precision", "bf16",
                     "--gradient_checkpointing", "--gradient_accumulation_steps", "2", "--train_batch_size", "1"])
    pipe = FideDiffPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.vae.dtype == torch.float32 and pipe.unet.dtype == torch.float32


def test_stage1_latent_l1_uses_each_samples_own_sharp_latents():
    """Stage 1 encodes each group's sharp frame once (for the GAN and the latent L1) and spreads it over the levels:
    the latent term must equal L1(z0, encode(that sample's own sharp crop)), batch order included."""
    from types import SimpleNamespace

    from fidediff_pipeline.data import collate_trajectory_groups
    from fidediff_pipeline.presets import build_pipeline
    from fidediff_pipeline.restoration import encode_latents

    pipe = build_pipeline("tiny", seed=0)
    torch.manual_seed(0)
    # Two groups of three levels with different sharp frames, so a wrong group-to-sample mapping changes the term.
    items = [{"blurry": torch.rand(3, 3, 16, 16), "sharp": torch.rand(3, 16, 16) * (g + 1) / 2,
              "timesteps": torch.tensor([120, 200, 280]), "frames": torch.tensor([7, 11, 15]), "group": f"g{g}"}
             for g in range(2)]
    batch = collate_trajectory_groups(items)
    args = SimpleNamespace(latent_weight=1.0, fft_weight=0.0, upscale_factor=1, color_fix_sigma=None, gan_weight=0.0,
                           gan_loss="non_saturating", train_vae_decoder=False)
    model = train_base.BaseStageModel(pipe.unet, pipe.prompt_embedding, pipe.vae, pipe.scheduler.alphas_cumprod,
                                      args, None, None)
    with torch.no_grad():
        logs = model(batch)
        z_t = encode_latents(pipe.vae, batch["blurry"] * 2 - 1, 1)
        eps = pipe.unet(z_t, batch["timesteps"], encoder_hidden_states=pipe.prompt_embedding(6)).sample
        a = pipe.scheduler.alphas_cumprod[batch["timesteps"]].view(-1, 1, 1, 1)
        z0 = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
        expected = (z0 - encode_latents(pipe.vae, batch["sharp"] * 2 - 1, 1)).abs().mean()
    torch.testing.assert_close(logs["latent"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("source", ["true", "predicted"])
def test_kcn_stage_runs_the_unet_at_the_true_or_the_predicted_t(source):
    """--unet_timestep predicted: the UNet (and the ControlNet) get T's estimate rounded as the pipeline rounds it,
    while the time loss still compares T with the true t; the default keeps the true t."""
    from types import SimpleNamespace

    from fidediff_pipeline.presets import build_pipeline

    pipe = build_pipeline("tiny", seed=0)
    torch.manual_seed(0)
    batch = {"blurry": torch.rand(3, 3, 16, 16), "sharp": torch.rand(3, 3, 16, 16),
             "timesteps": torch.tensor([120, 200, 280])}
    args = SimpleNamespace(upscale_factor=1, color_fix_sigma=None, reblur_space="linear", latent_weight=0.0,
                           fft_weight=0.0, reblur_weight=1.0, time_weight=1.0, kernel_weight=0.0,
                           kernel_moment_weight=0.0, unet_timestep=source, controlnet_kernels="estimated")
    model = train_kcn.KCNStageModel(pipe.kernel_controlnet, pipe.unet, pipe.prompt_embedding, pipe.vae,
                                    pipe.scheduler.alphas_cumprod, args, None)
    seen = []
    pipe.unet.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[1].clone()))
    with torch.no_grad():
        logs = model(batch)
        predicted = pipe.kernel_controlnet(image=batch["blurry"] * 2 - 1).predicted_timestep
    expected = batch["timesteps"] if source == "true" else torch.tensor([int(round(float(p))) for p in predicted])
    assert torch.equal(seen[0], expected)
    assert not torch.equal(predicted.round().long(), batch["timesteps"])  # the two cases differ
    torch.testing.assert_close(logs["t_mae"], (predicted - batch["timesteps"]).abs().mean())
    assert train_kcn.inference_timesteps(torch.tensor([-3.0, 2.5, 3.5, 1200.0]), 1000).tolist() == [0, 2, 4, 999]


def test_kcn_stage_can_feed_the_controlnet_the_true_kernels_while_m_trains_on_its_own():
    """--controlnet_kernels true (a probe): F gets each crop's true kernel at every position; the reblur loss still
    reads M's kernels, so M keeps its gradient."""
    from types import SimpleNamespace

    from fidediff_pipeline.kernel_ops import linear_motion_kernel
    from fidediff_pipeline.presets import build_pipeline

    pipe = build_pipeline("tiny", seed=0)
    torch.manual_seed(0)
    true = torch.stack([torch.from_numpy(linear_motion_kernel(length, angle, size=31)).float()
                        for length, angle in ((5, 0), (7, 45), (9, 90))])
    batch = {"blurry": torch.rand(3, 3, 16, 16), "sharp": torch.rand(3, 3, 16, 16),
             "timesteps": torch.tensor([120, 200, 280]), "kernels": true}
    args = SimpleNamespace(upscale_factor=1, color_fix_sigma=None, reblur_space="linear", latent_weight=0.0,
                           fft_weight=0.0, reblur_weight=1.0, time_weight=1.0, kernel_weight=0.0,
                           kernel_moment_weight=0.0, unet_timestep="true", controlnet_kernels="true")
    model = train_kcn.KCNStageModel(pipe.kernel_controlnet, pipe.unet, pipe.prompt_embedding, pipe.vae,
                                    pipe.scheduler.alphas_cumprod, args, None)
    seen = []
    pipe.kernel_controlnet.kernel_filter.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[1]))
    logs = model(batch)
    m = pipe.kernel_controlnet.config.kernel_size
    fed = seen[0]
    own = pipe.kernel_controlnet.kernel_estimator(batch["blurry"] * 2 - 1)
    assert fed.shape == own.shape
    expected = true[:, 15 - m // 2: 16 + m // 2, 15 - m // 2: 16 + m // 2]
    expected = (expected / expected.sum(dim=(1, 2), keepdim=True)).reshape(3, m * m)
    torch.testing.assert_close(fed[:, :, 0, 0], expected)
    torch.testing.assert_close(fed[:, :, -1, -1], expected)
    logs["reblur"].backward() if logs["reblur"].requires_grad else logs["loss"].backward()
    grads = [p.grad for p in pipe.kernel_controlnet.kernel_estimator.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    with pytest.raises(SystemExit):
        train_kcn.parse_args(["--init_from", "x", "--controlnet_kernels", "perfect"])


def test_kcn_stage_mix_feeds_some_crops_their_true_kernel_and_the_rest_m_s():
    """--controlnet_kernels mix: per crop, the true kernel (probability --true_kernel_fraction) or M's own map."""
    from types import SimpleNamespace

    from fidediff_pipeline.kernel_ops import linear_motion_kernel
    from fidediff_pipeline.presets import build_pipeline

    pipe = build_pipeline("tiny", seed=0)
    true = torch.stack([torch.from_numpy(linear_motion_kernel(length, 0, size=31)).float()
                        for length in (5, 7, 9, 11, 13, 15, 17, 19)])
    batch = {"blurry": torch.rand(8, 3, 16, 16), "sharp": torch.rand(8, 3, 16, 16),
             "timesteps": torch.full((8,), 200), "kernels": true}
    m = pipe.kernel_controlnet.config.kernel_size
    own = pipe.kernel_controlnet.kernel_estimator(batch["blurry"] * 2 - 1).detach()
    expected_true = train_kcn.true_kernel_map(true, own)
    fed_true = []
    for fraction in (0.0, 0.5, 1.0):
        args = SimpleNamespace(upscale_factor=1, color_fix_sigma=None, reblur_space="linear", latent_weight=0.0,
                               fft_weight=0.0, reblur_weight=1.0, time_weight=1.0, kernel_weight=0.0,
                               kernel_moment_weight=0.0, unet_timestep="true", controlnet_kernels="mix",
                               true_kernel_fraction=fraction)
        model = train_kcn.KCNStageModel(pipe.kernel_controlnet, pipe.unet, pipe.prompt_embedding, pipe.vae,
                                        pipe.scheduler.alphas_cumprod, args, None)
        seen = []
        hook = pipe.kernel_controlnet.kernel_filter.register_forward_pre_hook(
            lambda module, inputs: seen.append(inputs[1].detach()))
        torch.manual_seed(1)
        with torch.no_grad():
            model(batch)
        hook.remove()
        fed = seen[0]
        is_true = [torch.allclose(fed[i], expected_true[i]) for i in range(8)]
        is_own = [torch.allclose(fed[i], own[i], atol=1e-6) for i in range(8)]
        assert all(a != b for a, b in zip(is_true, is_own)), (fraction, is_true, is_own)
        fed_true.append(sum(is_true))
    assert fed_true[0] == 0 and fed_true[2] == 8 and 0 < fed_true[1] < 8, fed_true
    assert fed.shape == (8, m * m) + own.shape[-2:]
    with pytest.raises(SystemExit):
        train_kcn.parse_args(["--init_from", "x", "--controlnet_kernels", "mix", "--true_kernel_fraction", "1.5"])


# ---------------------------------------------------------------------------------------- checkpoints (issue 13)
def _fake_checkpoint(folder: Path, rng: bytes | None = b"zip") -> Path:
    """A checkpoint folder with the files accelerate writes (contents do not matter to the selection)."""
    import zipfile

    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    (folder / "optimizer.bin").write_bytes(b"x")
    if rng is not None:
        if rng == b"zip":
            with zipfile.ZipFile(folder / "random_states_0.pkl", "w") as archive:
                archive.writestr("data", b"x")
        else:
            (folder / "random_states_0.pkl").write_bytes(rng)
    return folder


def test_latest_is_the_newest_complete_checkpoint_and_other_folders_are_ignored(tmp_path, caplog):
    _fake_checkpoint(tmp_path / "checkpoint-2")
    _fake_checkpoint(tmp_path / "checkpoint-10")
    _fake_checkpoint(tmp_path / "checkpoint-7.old")  # a user's backup: not fatal, not picked
    _fake_checkpoint(tmp_path / "checkpoint-12.tmp")  # a save that was killed: never picked
    (tmp_path / "checkpoint-11").mkdir()  # partial folder of an older, non-atomic save
    (tmp_path / "checkpoint-11" / "model.safetensors").write_bytes(b"")
    (tmp_path / "pipeline").mkdir()
    args = argparse.Namespace(resume_from_checkpoint="latest", output_dir=str(tmp_path))
    with caplog.at_level("INFO", logger="fidediff.train"):
        assert common.find_resume_checkpoint(args) == tmp_path / "checkpoint-10"
    assert "checkpoint-10" in caplog.text and "ignoring" in caplog.text and "checkpoint-11" in caplog.text


def test_pruning_keeps_the_newest_complete_checkpoints_only(tmp_path):
    for step in (2, 4, 6):
        _fake_checkpoint(tmp_path / f"checkpoint-{step}")
    _fake_checkpoint(tmp_path / "checkpoint-3.old")
    common.prune_checkpoints(str(tmp_path), 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3.old", "checkpoint-4", "checkpoint-6"]


@pytest.mark.parametrize("rng", [None, b""])
def test_missing_or_empty_rng_state_warns_that_resume_is_not_exact(tmp_path, caplog, rng):
    ckpt = _fake_checkpoint(tmp_path / "checkpoint-2", rng=rng)
    with caplog.at_level("WARNING", logger="fidediff.train"):
        common.warn_if_rng_state_unusable(ckpt, 0)
    assert "no longer exact" in caplog.text
    caplog.clear()
    common.warn_if_rng_state_unusable(_fake_checkpoint(tmp_path / "checkpoint-4"), 0)
    assert "no longer exact" not in caplog.text


class _Killed(BaseException):
    """Stands for SIGKILL: no ``except Exception`` and no cleanup code runs."""


_RESUME_ARGS = ["--preset", "tiny", "--lora_rank", "0", "--lpips_weight", "0", "--gan_weight", "0.1",
                "--lr_scheduler", "cosine", "--lr_warmup_steps", "1", "--learning_rate", "1e-3"]


def _kill_at(monkeypatch, phase: str) -> None:
    """Arm a kill at ``phase`` of the SECOND checkpoint save (step 4; checkpoint-2 exists and is the only one kept)."""
    import accelerate.checkpointing as ckpt_module

    saves = {"n": 0}
    real_save_checkpoint, real_save = common.save_checkpoint, ckpt_module.save
    real_publish, real_prune = common.publish_checkpoint, common.prune_checkpoints

    def save_checkpoint(accelerator, output_dir, step):
        saves["n"] += 1
        return real_save_checkpoint(accelerator, output_dir, step)

    def armed():
        return saves["n"] == 2

    files = {"n": 0}

    def save(obj, path, *args, **kwargs):  # accelerate's writer of model / optimizer / scheduler files
        result = real_save(obj, path, *args, **kwargs)
        if armed():
            files["n"] += 1
            if phase == "after_model_file" and files["n"] == 1:
                raise _Killed
            if phase == "mid_optimizer_file" and Path(path).name == "optimizer.bin":
                data = Path(path).read_bytes()
                Path(path).write_bytes(data[: len(data) // 2])  # a torn write
                raise _Killed
            if phase == "after_optimizer_files" and Path(path).name.startswith("scheduler"):
                raise _Killed
        return result

    def publish(tmp, final):
        if armed() and phase == "before_rename":
            raise _Killed
        return real_publish(tmp, final)

    def prune(output_dir, limit):
        if armed() and phase == "before_prune":
            raise _Killed
        return real_prune(output_dir, limit)

    monkeypatch.setattr(common, "save_checkpoint", save_checkpoint)
    monkeypatch.setattr(ckpt_module, "save", save)
    monkeypatch.setattr(common, "publish_checkpoint", publish)
    monkeypatch.setattr(common, "prune_checkpoints", prune)


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    out = tmp_path_factory.mktemp("straight")
    train_base.main([*_RESUME_ARGS, *_flags(data, out, steps=4, checkpointing_steps=2, validation_steps=100)])
    AcceleratorState._reset_state(reset_partial_state=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["after_model_file", "mid_optimizer_file", "after_optimizer_files", "before_rename",
                                   "before_prune"])
def test_kill_at_each_phase_of_a_checkpoint_save_then_resume_is_bit_identical(data, tmp_path, monkeypatch,
                                                                               straight_run, phase):
    from accelerate.state import AcceleratorState

    out = tmp_path / "run"
    flags = [*_RESUME_ARGS, *_flags(data, out, steps=4, checkpointing_steps=2, validation_steps=100),
             "--checkpoints_total_limit", "1"]
    with monkeypatch.context() as patch:
        _kill_at(patch, phase)
        with pytest.raises(_Killed):
            train_base.main(flags)
    # What the kill leaves: the older checkpoint is whole; checkpoint-4 is complete or absent.
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    if phase == "before_prune":
        assert names == ["checkpoint-2", "checkpoint-4"]
    else:
        assert names == ["checkpoint-2", "checkpoint-4.tmp"]
    AcceleratorState._reset_state(reset_partial_state=True)
    train_base.main([*flags, "--resume_from_checkpoint", "latest"])
    # Resumed at step 2 the new save replaces the leftover .tmp and prunes; resumed at step 4 nothing is saved.
    kept = ["checkpoint-2", "checkpoint-4"] if phase == "before_prune" else ["checkpoint-4"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == kept
    assert (out / "weights_digest_rank0.txt").read_text() == (straight_run / "weights_digest_rank0.txt").read_text()
    a, b = _unet_and_embedding(straight_run / "pipeline"), _unet_and_embedding(out / "pipeline")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad, message", [
    (["--learning_rate=-1e-3"], "--learning_rate must be a finite number > 0"),
    (["--learning_rate=nan"], "--learning_rate must be a finite number > 0"),
    (["--learning_rate=0"], "--learning_rate must be a finite number > 0"),
    (["--max_grad_norm=-1"], "--max_grad_norm must be >= 0"),
    (["--lr_warmup_steps=-5"], "--lr_warmup_steps must be >= 0"),
    (["--checkpoints_total_limit=-1"], "--checkpoints_total_limit must be >= 1"),
])
def test_out_of_range_flags_fail_before_training(data, tmp_path, bad, message):
    with pytest.raises(SystemExit, match=message):
        train_base.main(["--preset", "tiny", *_flags(data, tmp_path / "out"), "--lpips_weight", "0", *bad])
    assert not (tmp_path / "out").exists()


def test_output_dir_that_is_a_file_and_empty_train_images_fail_before_training(data, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="--output_dir .* is a file"):
        train_base.main(["--preset", "tiny", *_flags(data, tmp_path / "file"), "--lpips_weight", "0"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="--train_images: no images"):
        train_base.main(["--preset", "tiny", *_flags(data, tmp_path / "out", train_images=tmp_path / "empty"),
                         "--lpips_weight", "0"])


def test_train_images_skip_unreadable_files_and_read_16_bit_without_clipping(tmp_path, caplog):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((40, 40), 30000, np.uint16)).save(folder / "deep.png")
    (folder / "junk.png").write_bytes(b"not an image")
    with caplog.at_level("WARNING", logger="fidediff.train"):
        images = common.load_train_images(folder)
    assert len(images) == 1 and images[0].dtype == np.uint8
    assert int(images[0].max()) == round(30000 / 65535 * 255)  # was clipped to 255
    assert "junk.png: not an image file" in caplog.text and "1 of 2 --train_images files skipped" in caplog.text
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(folder / "small.png")
    with pytest.raises(SystemExit, match=r"1 of the 2 --train_images are smaller than --resolution 32 on their short "
                                         r"side: .*small\.png \(50x30\); use a smaller --resolution"):
        common.load_train_images(folder, min_side=32)
    assert len(common.load_train_images(folder, min_side=30)) == 2
    (folder / "deep.png").unlink()
    (folder / "small.png").unlink()
    with pytest.raises(SystemExit, match="none of the 1 --train_images files could be read"):
        common.load_train_images(folder)


_SIGKILL_DURING_SAVE = """
import os, signal, sys
import accelerate.checkpointing as ckpt_module
from train import common, train_base

real_save_checkpoint, real_save, saves = common.save_checkpoint, ckpt_module.save, []

def save_checkpoint(accelerator, output_dir, step):
    saves.append(step)
    return real_save_checkpoint(accelerator, output_dir, step)

def save(obj, path, *args, **kwargs):
    result = real_save(obj, path, *args, **kwargs)
    if len(saves) == 2 and os.path.basename(str(path)) == "optimizer.bin":
        os.kill(os.getpid(), signal.SIGKILL)  # the real thing: no Python cleanup at all
    return result

common.save_checkpoint, ckpt_module.save = save_checkpoint, save
train_base.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_save_then_resume_is_bit_identical(data, tmp_path, straight_run):
    from accelerate.state import AcceleratorState

    out = tmp_path / "run"
    flags = [*_RESUME_ARGS, *_flags(data, out, steps=4, checkpointing_steps=2, validation_steps=100),
             "--checkpoints_total_limit", "1"]
    # The killed steps run in a subprocess and the resume in this process: same thread count, or the float
    # reductions (and so the weights) differ in their last bits.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-c", _SIGKILL_DURING_SAVE, *flags], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2",
                                                                                        "checkpoint-4.tmp"]
    AcceleratorState._reset_state(reset_partial_state=True)
    train_base.main([*flags, "--resume_from_checkpoint", "latest"])
    assert (out / "weights_digest_rank0.txt").read_text() == (straight_run / "weights_digest_rank0.txt").read_text()


@pytest.mark.parametrize("bad, message", [
    (["--adam_beta1=1.0"], "--adam_beta1 must be in \\[0, 1\\)"),
    (["--adam_epsilon=0"], "--adam_epsilon must be a finite number > 0"),
    (["--adam_weight_decay=nan"], "--adam_weight_decay must be a finite number >= 0"),
    (["--log_every=0"], "--log_every must be >= 1"),
    (["--max_steps_this_run=-1"], "--max_steps_this_run must be >= 1"),
    (["--synth_speed_range", "2", "1"], "--synth_speed_range needs 0 <= LOW <= HIGH"),
    (["--synth_kernel_size=10"], "--synth_kernel_size must be odd"),
    (["--synth_noise_std=-0.1"], "--synth_noise_std must be a finite number >= 0"),
])
def test_more_out_of_range_flags_fail_before_training(data, tmp_path, bad, message):
    with pytest.raises(SystemExit, match=message):
        train_base.main(["--preset", "tiny", *_flags(data, tmp_path / "out"), "--lpips_weight", "0", *bad])


@pytest.mark.slow
def test_resume_with_an_empty_rng_file_says_it_is_not_exact(data, tmp_path, caplog):
    """Issue 13 (4): accelerate's INFO 'Could not load random states' was the only trace, and it is silenced."""
    from accelerate.state import AcceleratorState

    out = tmp_path / "run"
    flags = [*_RESUME_ARGS, *_flags(data, out, steps=4, checkpointing_steps=2, validation_steps=100)]
    train_base.main([*flags, "--max_steps_this_run", "2"])
    (out / "checkpoint-2" / "random_states_0.pkl").write_bytes(b"")
    AcceleratorState._reset_state(reset_partial_state=True)
    with caplog.at_level("INFO", logger="fidediff.train"):
        train_base.main([*flags, "--resume_from_checkpoint", "latest"])
    assert "--resume_from_checkpoint latest:" in caplog.text and "checkpoint-2" in caplog.text
    assert "random_states_0.pkl is empty or unreadable" in caplog.text and "no longer exact" in caplog.text


def test_estimator_global_context_adds_the_whole_image_branch_to_a_trained_m_and_trains_it(stage_outputs, data,
                                                                                            tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "refit"
    train_kernel.main(["--init_from", str(stage_outputs / "kcn" / "pipeline"), *_flags(data, out, steps=2),
                       "--estimator_global_context", "--kernel_weight", "1", "--learning_rate", "1e-2"])
    config = json.loads((out / "pipeline" / "kernel_controlnet" / "config.json").read_text())
    assert config["estimator_global_context"] is True
    before = load_file(next((stage_outputs / "kcn" / "pipeline" / "kernel_controlnet").glob("*.safetensors")))
    after = load_file(next((out / "pipeline" / "kernel_controlnet").glob("*.safetensors")))
    added = set(after) - set(before)
    assert added == {"kernel_estimator.global_context_in.weight", "kernel_estimator.global_context_in.bias"}
    assert after["kernel_estimator.global_context_in.weight"].abs().max() > 0  # trained away from its zero start
    assert FideDiffPipeline.from_pretrained(out / "pipeline").kernel_controlnet.config.estimator_global_context


def test_time_only_refits_t_and_leaves_everything_else_as_it_was(stage_outputs, data, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "time"
    train_kernel.main(["--init_from", str(stage_outputs / "kcn" / "pipeline"), *_flags(data, out, steps=3),
                       "--time_weight", "1", "--time_only", "--learning_rate", "1e-2"])
    before = load_file(next((stage_outputs / "kcn" / "pipeline" / "kernel_controlnet").glob("*.safetensors")))
    after = load_file(next((out / "pipeline" / "kernel_controlnet").glob("*.safetensors")))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("timestep_regressor.") for k in changed), sorted(changed)[:5]
    assert set(_summary(out)) >= {"time", "t_mae"} and "reblur" not in _summary(out)
    with pytest.raises(SystemExit):
        train_kernel.parse_args(["--init_from", "x", "--time_only"])  # no --time_weight: refused


def test_time_only_with_the_regressor_context_adds_t_s_whole_image_branch_and_trains_only_t(stage_outputs, data,
                                                                                             tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "time_context"
    train_kernel.main(["--init_from", str(stage_outputs / "kcn" / "pipeline"), *_flags(data, out, steps=3),
                       "--time_weight", "1", "--time_only", "--regressor_global_context_radius", "8",
                       "--learning_rate", "1e-2", "--time_loss", "l1"])  # l1: make_tiny --t_context_time_loss
    config = json.loads((out / "pipeline" / "kernel_controlnet" / "config.json").read_text())
    assert config["regressor_global_context_radius"] == 8
    before = load_file(next((stage_outputs / "kcn" / "pipeline" / "kernel_controlnet").glob("*.safetensors")))
    after = load_file(next((out / "pipeline" / "kernel_controlnet").glob("*.safetensors")))
    added = set(after) - set(before)
    assert added == {f"timestep_regressor.global_context_in.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert after["timestep_regressor.global_context_in.2.weight"].abs().max() > 0  # trained away from its zero start
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(k.startswith("timestep_regressor.") for k in changed), sorted(changed)[:5]
    pipe = FideDiffPipeline.from_pretrained(out / "pipeline")
    assert pipe.kernel_controlnet.config.regressor_global_context_radius == 8
    with pytest.raises(SystemExit):
        train_kernel.parse_args(["--init_from", "x", "--output_dir", "y", "--regressor_global_context_radius", "-1"])
    assert "--regressor_global_context_radius must be >= 0 (0 = off); got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_kernel.parse_args(["--init_from", "x", "--output_dir", "y", "--time_loss", "huber"])
    assert "invalid choice: 'huber'" in capsys.readouterr().err


def test_kcn_with_a_frozen_estimator_trains_only_f_and_the_controlnet(data, stage_outputs, tmp_path):
    """--freeze_estimator (make_tiny --kcn_from): M and T stay bit for bit, F and C change."""
    from safetensors.torch import load_file

    from train import train_kcn

    start = stage_outputs / "kcn" / "pipeline"
    out = tmp_path / "kcn_frozen"
    train_kcn.main(["--init_from", str(start), *_flags(data, out, steps=3), "--lpips_weight", "0",
                    "--learning_rate", "1e-2", "--freeze_estimator"])
    before = load_file(next((start / "kernel_controlnet").glob("*.safetensors")))
    after = load_file(next((out / "pipeline" / "kernel_controlnet").glob("*.safetensors")))
    frozen = [k for k in before if k.startswith(("kernel_estimator.", "timestep_regressor."))]
    trained = [k for k in before if not k.startswith(("kernel_estimator.", "timestep_regressor."))]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert sum(not torch.equal(before[k], after[k]) for k in trained) > len(trained) // 2
