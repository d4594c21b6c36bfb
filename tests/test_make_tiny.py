"""train/make_tiny.py's training content and its checks (the training itself is tested in test_training.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import make_tiny  # noqa: E402


def test_training_photos_have_unique_names_and_leave_out_the_held_out_ones():
    training = make_tiny.TRAIN_PHOTOS + make_tiny.OPENCV_PHOTOS
    labels = [make_tiny.photo_label(p) for p in training]
    assert len(set(labels)) == len(labels) == 38
    held_out = {make_tiny.photo_label(p) for p in make_tiny.HELDOUT_PHOTOS}
    assert not held_out & set(labels) and "cat" not in labels  # skimage's cat is chelsea
    # Reserved for independent evaluation: never a training source.
    assert {source for source, _ in training} == {"skimage", "sklearn", "opencv"}


def test_missing_opencv_photos_stop_with_the_install_hint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_tiny.parse_args(["--opencv_examples", str(tmp_path)])
    message = capsys.readouterr().err
    assert "opencv-doc" in message and "--no_opencv_photos" in message and "23 of 23 missing" in message
    assert make_tiny.parse_args(["--opencv_examples", str(tmp_path), "--no_opencv_photos"]).opencv_photos is False


def test_an_opencv_photo_loads_as_rgb_with_a_256_px_short_side(tmp_path):
    from PIL import Image

    (tmp_path / "data").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400), dtype=np.uint8)).save(tmp_path / "data" / "x.png")
    photo = make_tiny.load_photo(("opencv", "data/x.png"), tmp_path)  # a grey PNG
    assert photo.shape == (256, 341, 3) and photo.dtype == np.uint8
    written = make_tiny.write_photos([("opencv", "data/x.png")], tmp_path / "out", tmp_path)
    assert [p.name for p in written] == ["opencv_x.png"] and not list((tmp_path / "out").glob("*.partial*"))


def test_a_warm_started_stage_1_draws_a_fresh_data_stream_at_half_the_learning_rate(tmp_path):
    def base_flags(*extra):
        args = make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos", *extra])
        argv = next(job["argv"] for job in make_tiny.stage_plan(args, tmp_path) if job["name"] == "base")
        last = lambda flag: argv[len(argv) - 1 - argv[::-1].index(flag) + 1]  # noqa: E731  (argparse: last wins)
        return last("--seed"), last("--learning_rate"), last("--init_from")

    assert base_flags("--seed", "3") == ("3", "1e-3", str(tmp_path / "vae" / "pipeline"))
    (tmp_path / "start").mkdir()
    (tmp_path / "start" / "model_index.json").write_text("{}")
    assert base_flags("--seed", "3", "--init_base_from", str(tmp_path / "start")) == (
        "4", "5e-4", str(tmp_path / "base_init"))
    # A further round from a warm-started result takes its own seed (the held-out set keeps --seed's).
    assert base_flags("--seed", "3", "--base_seed", "9", "--init_base_from", str(tmp_path / "start"))[0] == "9"


def test_kernel_window_autocorrelation_reach_and_stage_3_t_reach_their_stages(tmp_path):
    def jobs(*extra):
        args = make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos", *extra])
        return {job["name"]: job["argv"] for job in make_tiny.stage_plan(args, tmp_path)}

    flag = lambda argv, name: argv[argv.index(name) + 1]  # noqa: E731
    default = jobs()
    names = ("--kernel_size", "--autocorrelation_radius", "--autocorrelation_window")
    assert tuple(flag(default["kernel"], name) for name in names) == ("19", "14", str(make_tiny.AUTOCORRELATION_WINDOW))
    assert flag(default["kcn"], "--unet_timestep") == "predicted"
    changed = jobs("--kernel_size", "23", "--autocorrelation_radius", "18", "--autocorrelation_window", "40",
                   "--kcn_unet_timestep", "true")
    assert tuple(flag(changed["kernel"], name) for name in names) == ("23", "18", "40")
    assert flag(changed["kcn"], "--unet_timestep") == "true"
    assert (flag(default["kcn"], "--controlnet_kernels"), flag(default["kcn"], "--true_kernel_fraction")) == (
        "mix", "0.5")
    assert make_tiny.kcn_input_scale(make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos"])) == 361
    papers = jobs("--kcn_controlnet_kernels", "estimated", "--kcn_true_kernel_fraction", "0.25")
    assert (flag(papers["kcn"], "--controlnet_kernels"), flag(papers["kcn"], "--true_kernel_fraction")) == (
        "estimated", "0.25")
    for bad in (["--kernel_size", "20"], ["--autocorrelation_window", "0"], ["--kernel_input_scale", "-1"],
                ["--kernel_input_scale", "m3"], ["--kcn_true_kernel_fraction", "1.5"]):
        with pytest.raises(SystemExit):
            make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos", *bad])


def test_the_merge_for_stage_3_keeps_the_kernel_stages_estimator(tmp_path):
    """Stage 3's start gets a ControlNet from the stage-1 UNet and M + T (window, autocorrelation reach, weights)
    from stage 2, whatever the preset's defaults."""
    from fidediff_pipeline import FideDiffPipeline
    from fidediff_pipeline.presets import build_kernel_controlnet, build_pipeline

    base = build_pipeline("tiny", with_kernel_controlnet=False, seed=0)
    base.save_pretrained(tmp_path / "base" / "pipeline")
    kernel = build_pipeline("tiny", with_kernel_controlnet=False, seed=1)
    kernel.register_modules(kernel_controlnet=build_kernel_controlnet("tiny", kernel.unet, 13, 18, 40))
    kernel.save_pretrained(tmp_path / "kernel" / "pipeline")
    merged = FideDiffPipeline.from_pretrained(make_tiny.merge_for_kcn(tmp_path, keep_final=("base",),
                                                                      kernel_input_scale=169.0))
    kcn = merged.kernel_controlnet
    config = kcn.config
    assert config.kernel_input_scale == 169.0  # --kernel_input_scale m2 with m = 13
    assert (config.kernel_size, config.estimator_autocorrelation_radius, config.estimator_autocorrelation_window) == (
        13, 18, 40)
    assert kcn.kernel_estimator.autocorrelation.window == 40
    for name, value in kernel.kernel_controlnet.kernel_estimator.state_dict().items():
        assert torch.equal(kcn.kernel_estimator.state_dict()[name], value), name
    assert torch.equal(kcn.controlnet.conv_in.weight, base.unet.conv_in.weight)


def test_the_w_o_ct_ablation_is_the_same_run_without_consistency(tmp_path):
    (tmp_path / "start").mkdir()
    (tmp_path / "start" / "model_index.json").write_text("{}")
    args = make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos",
                                 "--init_base_from", str(tmp_path / "start")])
    jobs = {job["name"]: job["argv"] for job in make_tiny.stage_plan(args, tmp_path)}
    base, noct = jobs["base"], jobs["base_noct"]
    # After a warm start: the same continuation (start, steps, learning rate, seed); only the folder differs.
    assert noct == [str(tmp_path / "base_noct") if a == str(tmp_path / "base") else a for a in base] + ["--no_consistency"]
    # From scratch it is a shorter run from the VAE stage (the time budget).
    args = make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos"])
    noct = next(job["argv"] for job in make_tiny.stage_plan(args, tmp_path) if job["name"] == "base_noct")
    assert noct[noct.index("--max_train_steps") + 1] == str(make_tiny.STEPS["base_noct"])
    assert noct[noct.index("--init_from") + 1] == str(tmp_path / "vae" / "pipeline") and noct[-1] == "--no_consistency"


def test_the_results_page_says_how_the_w_o_ct_run_was_made(tmp_path):
    from train.evaluate_tiny import noct_text

    for name, steps in (("base", 2400), ("base_noct", 2400)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train_summary.json").write_text(f'{{"steps": {steps}}}')
    warm = noct_text(tmp_path, "runs/start")
    assert "2400 steps" in warm and "same start" in warm and "`runs/start`" in warm
    (tmp_path / "base_noct" / "train_summary.json").write_text('{"steps": 800}')
    scratch = noct_text(tmp_path, None)
    assert "800 steps from the VAE stage" in scratch and "base of 2400 steps" in scratch and "same start" not in scratch


def test_keep_final_carries_a_stages_final_pipeline_forward_instead_of_its_best(tmp_path):
    for folder in ("best_pipeline", "pipeline"):
        (tmp_path / "base" / folder).mkdir(parents=True)
        (tmp_path / "base" / folder / "model_index.json").write_text("{}")
    assert make_tiny.stage_result(tmp_path, "base") == tmp_path / "base" / "best_pipeline"
    assert make_tiny.stage_result(tmp_path, "base", ["base"]) == tmp_path / "base" / "pipeline"
    assert make_tiny.stage_result(tmp_path, "kcn", ["base"]) == tmp_path / "kcn" / "pipeline"  # no best kept
    args = make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos", "--keep_final", "base"])
    assert args.keep_final == ["base"]


def test_compare_pipelines_scores_whole_held_out_photos_and_refuses_the_evaluation_draw(capsys):
    from fidediff_pipeline import DEFAULT_MODEL
    from train import compare_pipelines

    with pytest.raises(SystemExit):
        compare_pipelines.main([DEFAULT_MODEL, "--seed", "2024"])
    assert "tune on the test" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_pipelines.main([str(Path(DEFAULT_MODEL).parent)])
    assert "no model_index.json" in capsys.readouterr().err
    results = compare_pipelines.main([DEFAULT_MODEL, "--trajectories", "1", "--timestep", "auto", "--threads", "2"])
    gain = results[DEFAULT_MODEL]["gain"]
    assert sorted(gain) == [7, 11, 15] and all(np.isfinite(g) for g in gain.values())
    assert results[DEFAULT_MODEL]["mean_gain"] > 0.3  # the bundled model deblurs these photos
    t_mae = results[DEFAULT_MODEL]["t_mae"]  # t-prediction ran: its error per level is reported too
    assert sorted(t_mae) == [7, 11, 15] and all(0 <= v < 1000 for v in t_mae.values())
    assert "t-MAE" in capsys.readouterr().out


def test_compare_pipelines_scores_training_photos_on_request(tmp_path, capsys):
    """--photos train: the same scores on make_tiny's training photos (here one of them, through ``compare``)."""
    from fidediff_pipeline import DEFAULT_MODEL
    from train import compare_pipelines

    results = compare_pipelines.compare([DEFAULT_MODEL], 5, 1, "auto", photos=(("skimage", "astronaut"),),
                                        kernels=True)
    row = results[DEFAULT_MODEL]
    assert [(r["length"], r["angle"]) for r in row["kernels"]] == [(n, a) for n in (9, 15, 21) for a in (0, 45, 90, 135)]
    assert all(r["angle_error"] <= 20 for r in row["kernels"])  # the bundled M points along straight blurs
    with pytest.raises(ValueError, match="needs training photos"):
        compare_pipelines.compare([DEFAULT_MODEL], 5, 1, "auto", kernels=True)
    assert sorted(row["gain"]) == [7, 11, 15] and row["mean_gain"] > 0.3
    assert all(80 <= row["t_mean_predicted"][n] <= 320 for n in (7, 11, 15))
    assert row["t_mae"][7] == pytest.approx(abs(row["t_mean_predicted"][7] - 120))  # one image per level
    from train.evaluate_tiny import photo_pairs

    for side, shape in ((None, (303, 384)), (256, (256, 324))):  # coins ships at 303 x 384
        pairs = photo_pairs((("skimage", "coins"),), 1, 1, tmp_path / str(side), short_side=side)
        assert [p["sharp"].shape[:2] for p in pairs] == [shape] * 3 and [p["n"] for p in pairs] == [7, 11, 15]
    for bad, message in ((["--opencv_examples", str(tmp_path)], "--opencv_examples goes with --photos train"),
                         (["--photos", "train", "--opencv_examples", str(tmp_path)], "of OpenCV's sample photos missing"),
                         (["--photos", "test"], "invalid choice"),
                         (["--kernels"], "--kernels needs --photos train"),
                         (["--short_side", "huge"], "--short_side takes a size in px")):
        with pytest.raises(SystemExit):
            compare_pipelines.main([DEFAULT_MODEL, *bad])
        assert message in capsys.readouterr().err


def test_the_results_page_measures_kernel_lengths_on_the_evaluation_blurs():
    """Per level, the true kernels' mean length and the model's: a 9 px horizontal line is ~8.2 px long, and an
    estimator's kernels (softmax over a 19-tap window here) have a length between 0 and the window's diagonal."""
    from fidediff_pipeline.kernel_ops import linear_motion_kernel
    from fidediff_pipeline.presets import build_pipeline
    from train.evaluate_tiny import LEVELS, trajectory_kernel_lengths

    pipe = build_pipeline("tiny", seed=0)
    rng = np.random.default_rng(0)
    pairs = [{"n": n, "blurry": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
              "kernel": linear_motion_kernel(9 if n == LEVELS[0] else 15, 0, size=31)} for n in LEVELS]
    lengths = trajectory_kernel_lengths(pipe, pairs)
    assert sorted(lengths) == sorted(LEVELS)
    assert abs(lengths[LEVELS[0]]["true_length"] - 8.2) < 0.3 and lengths[LEVELS[1]]["true_length"] > 13
    m = pipe.kernel_controlnet.config.kernel_size
    assert all(0 < value["estimated_length"] < m * 2 ** 0.5 for value in lengths.values())


def test_the_refit_stage_trains_m_and_t_on_large_crops_after_stage_3(tmp_path):
    def jobs(*extra):
        args = make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos", *extra])
        return {job["name"]: job for job in make_tiny.stage_plan(args, tmp_path)}

    assert "refit" not in jobs("--no_refit_estimator") and "refit" not in jobs("--refit_t")
    assert "time" in jobs("--refit_t")
    refit = jobs()["refit"]  # the default recipe ends with it
    argv = refit["argv"]
    assert refit["script"] == "train_kernel" and refit["needs"] == ("kcn",)
    assert argv[argv.index("--init_from") + 1] == str(tmp_path / "kcn_result")
    assert argv[argv.index("--resolution") + 1] == "192" and "--time_only" not in argv
    assert argv[argv.index("--max_train_steps") + 1] == str(make_tiny.STEPS["refit"])
    assert float(argv[argv.index("--kernel_weight") + 1]) > 0 and float(argv[argv.index("--time_weight") + 1]) > 0
    assert "--estimator_global_context" not in argv  # tried, not the recipe's (docs/tiny_results.md)
    assert "--estimator_global_context" in jobs("--refit_global_context")["refit"]["argv"]
    for bad in (["--refit_estimator", "--refit_t"], ["--no_refit_estimator", "--only", "refit"]):
        with pytest.raises(SystemExit):
            make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos", *bad])


def test_the_refit_runs_from_a_finished_pipeline_at_its_own_camera_speeds(tmp_path, capsys):
    def plan(*extra):
        args = make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos", *extra])
        return make_tiny.stage_plan(args, tmp_path)

    def flag(job, name, count=1):
        argv = job["argv"]
        return argv[argv.index(name) + 1: argv.index(name) + 1 + count]

    full = {job["name"]: job for job in plan()}
    assert flag(full["refit"], "--synth_speed_range", 2) == [str(v) for v in make_tiny.REFIT_SPEED_RANGE]
    assert flag(full["kcn"], "--synth_speed_range", 2) == [str(v) for v in make_tiny.SPEED_RANGE]  # others unchanged
    assert flag(full["t_context"], "--synth_speed_range", 2) == [str(v) for v in make_tiny.SPEED_RANGE]
    start = tmp_path / "previous"
    start.mkdir()
    (start / "model_index.json").write_text("{}")
    jobs = plan("--refit_from", str(start), "--refit_speed_range", "0.5", "2.5", "--steps", "refit=40")
    assert [job["name"] for job in jobs] == ["refit", "t_context"]
    assert jobs[0]["needs"] == () and flag(jobs[0], "--init_from") == [str(start)]
    assert flag(jobs[0], "--synth_speed_range", 2) == ["0.5", "2.5"] and flag(jobs[0], "--max_train_steps") == ["40"]
    assert flag(jobs[1], "--init_from") == [str(tmp_path / "refit" / "pipeline")]
    assert [job["name"] for job in plan("--refit_from", str(start), "--no_t_context")] == ["refit"]
    assert flag(plan("--t_context_from", str(start))[0], "--time_loss") == ["l2"]  # the paper's L_time by default
    assert flag(plan("--t_context_from", str(start), "--t_context_time_loss", "l1")[0], "--time_loss") == ["l1"]
    for bad, message in ((["--refit_from", str(tmp_path / "nothing")], "--refit_from takes a saved pipeline"),
                         (["--refit_from", str(start), "--no_refit_estimator"], "--refit_from runs the refit"),
                         (["--refit_speed_range", "2", "1"], "--refit_speed_range takes MIN MAX")):
        with pytest.raises(SystemExit):
            make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos", *bad])
        assert message in capsys.readouterr().err


def test_the_t_context_stage_refits_t_alone_with_its_whole_image_branch(tmp_path, capsys):
    def jobs(*extra):
        args = make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos", *extra])
        return [job["name"] for job in make_tiny.stage_plan(args, tmp_path)], make_tiny.stage_plan(args, tmp_path)

    names, plan = jobs()  # the default recipe ends with it
    assert names[-2:] == ["refit", "t_context"] and jobs("--t_context")[0] == names
    assert jobs("--no_t_context")[0][-1] == "refit"
    assert "t_context" not in jobs("--no_refit_estimator")[0] and "t_context" not in jobs("--refit_t")[0]
    job = plan[-1]
    argv = job["argv"]
    assert job["script"] == "train_kernel" and job["needs"] == ("refit",)
    assert argv[argv.index("--init_from") + 1] == str(tmp_path / "refit" / "pipeline")
    assert "--time_only" in argv and argv[argv.index("--resolution") + 1] == "256"
    assert argv[argv.index("--regressor_global_context_radius") + 1] == str(make_tiny.T_CONTEXT_RADIUS)
    assert argv[argv.index("--max_train_steps") + 1] == str(make_tiny.STEPS["t_context"])
    # From a finished pipeline (e.g. the previous bundled checkpoint): that stage alone, from there.
    start = tmp_path / "previous"
    start.mkdir()
    (start / "model_index.json").write_text("{}")
    names, plan = jobs("--t_context_from", str(start), "--t_context_radius", "24", "--steps", "t_context=40",
                       "--t_context_frames", "5", "7", "9")
    argv = plan[0]["argv"]
    assert argv[argv.index("--frames", argv.index("--time_only")) + 1:][:3] == ["5", "7", "9"]  # later flags win
    assert names == ["t_context"] and plan[0]["needs"] == ()
    assert argv[argv.index("--init_from") + 1] == str(start)
    assert argv[argv.index("--regressor_global_context_radius") + 1] == "24"
    assert argv[argv.index("--max_train_steps") + 1] == "40"
    for bad, message in ((["--t_context", "--no_refit_estimator"], "--t_context follows the refit stage"),
                         (["--t_context_from", str(tmp_path / "nothing")], "--t_context_from takes a saved pipeline"),
                         (["--t_context", "--t_context_radius", "0"], "--t_context_radius must be >= 1"),
                         (["--no_t_context", "--only", "t_context"], "--only t_context needs --t_context")):
        with pytest.raises(SystemExit):
            make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos", *bad])
        assert message in capsys.readouterr().err


def test_the_length_probe_refuses_crops_the_photos_cannot_give(capsys):
    from train import probe_kernel_cue

    for bad in (["--length_crops", "0"], ["--length_crops", "96", "300"]):
        with pytest.raises(SystemExit):
            probe_kernel_cue.main(["--length", *bad])
        assert "--length_crops must be between 16 and 256 px" in capsys.readouterr().err


def test_the_results_page_can_feed_the_controlnet_other_kernels_and_puts_m_back():
    """The kernel-use rows of evaluate_tiny: inside the block M answers the given kernels (the true one, cropped to
    the model's window, or a point), afterwards its own again; the scores come per level."""
    from fidediff_pipeline.kernel_ops import linear_motion_kernel
    from fidediff_pipeline.presets import build_pipeline
    from train.evaluate_tiny import LEVELS, kernel_estimator_replaced, run_with_given_kernels

    pipe = build_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    kcn, m = pipe.kernel_controlnet, pipe.kernel_controlnet.config.kernel_size
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    own = kcn(image=image).kernels
    point = torch.zeros(1, m * m, 1, 1)
    point[0, (m * m) // 2] = 1
    with kernel_estimator_replaced(pipe, lambda k: point.expand_as(k)):
        inside = kcn(image=image).kernels
    assert inside.shape == own.shape and torch.equal(inside[0, :, 0, 0], point[0, :, 0, 0])
    assert torch.equal(kcn(image=image).kernels, own)
    rng = np.random.default_rng(0)
    pairs = [{"n": n, "t": (n - 1) * 20, "blurry": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
              "sharp": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "kernel": linear_motion_kernel(9, 0, size=31)}
             for n in LEVELS]
    for source in ("true", "point"):
        scores = run_with_given_kernels(pipe, pairs, source)
        assert sorted(scores) == sorted(LEVELS) and all(0 < s["psnr"] < 60 for s in scores.values())
    assert torch.equal(kcn(image=image).kernels, own)


def test_t_read_from_a_noisy_blur_length_errs_more_than_from_the_exact_one():
    """probe_data's t-from-length ceiling: the builder's random speed leaves an error even with exact lengths, well
    under always answering the mean t (100 off at n = 15), and a reader that sees lengths with 3 px of noise errs
    more at the longest level."""
    from train.probe_data import t_from_length_ceiling

    exact = t_from_length_ceiling(400, seed=0)
    noisy = t_from_length_ceiling(400, seed=0, noise_px=3.0)
    assert sorted(exact) == [7, 11, 15] and sorted(noisy) == [7, 11, 15]
    assert 5 < exact[15]["t_mae"] < 60 and noisy[15]["t_mae"] > exact[15]["t_mae"] + 5
    assert exact[7]["length_px_5_95"][1] < exact[15]["length_px_5_95"][1]


def test_training_photos_at_several_short_sides_never_upsampled(tmp_path, capsys):
    from PIL import Image

    photos = (("skimage", "astronaut"), ("skimage", "coins"))  # ship at 512 x 512 and 303 x 384
    paths = make_tiny.write_photos(photos, tmp_path, short_sides=(256, 384, 512))
    sizes = {p.name: min(Image.open(p).size) for p in paths}
    assert sizes == {"astronaut.png": 256, "astronaut_s384.png": 384, "astronaut_s512.png": 512, "coins.png": 256}
    assert make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos"]).train_short_sides == [256, 384, 512]
    with pytest.raises(SystemExit):
        make_tiny.parse_args(["--work_dir", str(tmp_path), "--no_opencv_photos", "--train_short_sides", "384"])
    assert "--train_short_sides must include 256" in capsys.readouterr().err


def test_base_from_runs_stage_1_alone_and_exports_its_start_with_the_new_unet(tmp_path, capsys):
    import torch

    from fidediff_pipeline import FideDiffPipeline
    from fidediff_pipeline.presets import build_pipeline

    start, other = tmp_path / "start", tmp_path / "other"
    build_pipeline("tiny", seed=0).save_pretrained(start)
    build_pipeline("tiny", seed=1).save_pretrained(other)
    args = make_tiny.parse_args(["--work_dir", str(tmp_path / "work"), "--no_opencv_photos", "--base_from", str(start),
                                 "--base_seed", "7", "--steps", "base=30"])
    assert args.init_base_from == str(start) and "base" in args.keep_final  # the final UNet, not the best on 18 crops
    [job] = make_tiny.stage_plan(args, tmp_path / "work")
    argv = job["argv"]
    assert job["name"] == "base" and job["needs"] == () and argv[argv.index("--max_train_steps") + 1] == "30"
    assert argv[len(argv) - 1 - argv[::-1].index("--init_from") + 1] == str(tmp_path / "work" / "base_init")
    assert argv[len(argv) - 1 - argv[::-1].index("--seed") + 1] == "7"  # later flags win
    make_tiny.export_checkpoint(start, tmp_path / "export", unet_from=other)
    exported, a, b = (FideDiffPipeline.from_pretrained(p) for p in (tmp_path / "export", start, other))
    for name, value in exported.unet.state_dict().items():
        assert torch.equal(value, b.unet.state_dict()[name])
    for part in ("kernel_controlnet", "vae"):
        mine, theirs = getattr(exported, part).state_dict(), getattr(a, part).state_dict()
        assert all(torch.equal(value, theirs[name]) for name, value in mine.items())
    for bad, message in ((["--base_from", str(tmp_path)], "--base_from takes a saved pipeline"),
                         (["--base_from", str(start), "--refit_from", str(start)], "--base_from runs stage 1 alone")):
        with pytest.raises(SystemExit):
            make_tiny.parse_args(["--work_dir", str(tmp_path / "work"), "--no_opencv_photos", *bad])
        assert message in capsys.readouterr().err


def test_kcn_from_runs_stage_3_alone_with_m_and_t_frozen(tmp_path, capsys):
    start = tmp_path / "start"
    (start / "kernel_controlnet").mkdir(parents=True)
    (start / "model_index.json").write_text("{}")
    args = make_tiny.parse_args(["--work_dir", str(tmp_path / "work"), "--no_opencv_photos", "--kcn_from", str(start),
                                 "--steps", "kcn=40"])
    assert "kcn" in args.keep_final
    [job] = make_tiny.stage_plan(args, tmp_path / "work")
    argv = job["argv"]
    assert job["name"] == "kcn" and job["needs"] == () and argv[argv.index("--init_from") + 1] == str(start)
    assert "--freeze_estimator" in argv and argv[len(argv) - 1 - argv[::-1].index("--learning_rate") + 1] == "2e-4"
    assert argv[argv.index("--max_train_steps") + 1] == "40"
    (tmp_path / "no_kcn").mkdir()
    (tmp_path / "no_kcn" / "model_index.json").write_text("{}")
    for bad, message in ((["--kcn_from", str(tmp_path / "no_kcn")], "with a Kernel ControlNet"),
                         (["--kcn_from", str(start), "--t_context_from", str(start)], "--kcn_from runs stage 3 alone")):
        with pytest.raises(SystemExit):
            make_tiny.parse_args(["--work_dir", str(tmp_path / "work"), "--no_opencv_photos", *bad])
        assert message in capsys.readouterr().err


def test_base_crop_and_batch_reach_stage_1_and_bad_values_are_refused(tmp_path, capsys):
    start = tmp_path / "start"
    start.mkdir()
    (start / "model_index.json").write_text("{}")
    work = ["--work_dir", str(tmp_path / "work"), "--no_opencv_photos", "--base_from", str(start)]
    for extra, crop, batch in (([], "64", "4"), (["--base_crop", "128", "--base_batch", "1"], "128", "1")):
        [job] = make_tiny.stage_plan(make_tiny.parse_args([*work, *extra]), tmp_path / "work")
        argv = job["argv"]
        assert argv[argv.index("--resolution") + 1] == crop and argv[argv.index("--train_batch_size") + 1] == batch
    for bad in (["--base_crop", "72"], ["--base_crop", "16"], ["--base_batch", "0"]):
        with pytest.raises(SystemExit):
            make_tiny.parse_args([*work, *bad])
        assert "--base_crop must be a multiple of 16 px" in capsys.readouterr().err
