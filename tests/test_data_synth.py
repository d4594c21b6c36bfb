"""Synthetic camera-shake trajectories: nesting, kernels, reblur consistency, determinism, CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fidediff_pipeline import cli
from fidediff_pipeline.data.camera_response import from_linear, reblur_in_linear_light, to_linear
from fidediff_pipeline.data.manifest import read_manifest
from fidediff_pipeline.data.trajectories import (
    TrajectoryConfig,
    blur_image_along_trajectory,
    correlate_global_kernel,
    fit_to_kernel,
    offsets_to_kernel,
    sample_camera_shake,
    synthesize_trajectory_set,
)
from fidediff_pipeline.kernel_ops import apply_per_pixel_kernels, global_kernel_to_map

# Reblur tolerance: reblurring the sharp image with the saved kernel (in the same camera response) gives
# the saved blurry image up to 8-bit rounding, i.e. at most half a level, plus float error.
REBLUR_TOL = 0.5 / 255 + 1e-5


def photo(seed: int = 0, height: int = 40, width: int = 52) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3))
    return np.kron(blocks, np.ones((4, 4, 1)))[:height, :width].astype(np.uint8)


def reblur_torch(sharp01: np.ndarray, kernel: np.ndarray, crf: str) -> np.ndarray:
    """The project's shared operator, in the builder's camera response."""
    img = torch.from_numpy(np.ascontiguousarray(sharp01)).permute(2, 0, 1)[None].double()
    kmap = global_kernel_to_map(torch.from_numpy(kernel).double(), img.shape[-2], img.shape[-1])
    out = from_linear(apply_per_pixel_kernels(to_linear(img, crf), kmap), crf)
    return out[0].permute(1, 2, 0).numpy()


def test_levels_are_nested_centred_subframe_windows():
    traj = sample_camera_shake(15, np.random.default_rng(3))
    assert traj.offsets.shape == (15, 7, 2)
    for n in range(1, 15, 2):
        inner, outer = traj.level_offsets(n), traj.level_offsets(n + 2)
        assert inner.shape == (n, 7, 2)
        np.testing.assert_array_equal(inner, outer[1:-1])
    np.testing.assert_array_equal(traj.subframe_indices(5), [5, 6, 7, 8, 9])
    # Offsets are relative to the sharp moment: the middle sample of the middle sub-frame.
    np.testing.assert_allclose(traj.offsets[7, 3], 0.0, atol=1e-12)
    # Histograms nest too: level n+2 = level n plus the two outer sub-frames (all weights >= 0).
    for n in (7, 11, 13):
        k_small, k_big = traj.kernel(n, 41).astype(np.float64), traj.kernel(n + 2, 41).astype(np.float64)
        assert (k_big * (n + 2) - k_small * n).min() > -1e-5
        assert np.abs(k_big - k_small).max() > 1e-3  # but they are different levels


def test_motion_has_inertia_and_varying_speed():
    traj = sample_camera_shake(15, np.random.default_rng(0), TrajectoryConfig.preset("strong"))
    path = traj.offsets.reshape(-1, 2)
    steps = np.diff(path, axis=0)
    speed = np.hypot(steps[:, 0], steps[:, 1])
    assert speed.std() / speed.mean() > 0.05  # not constant speed (DeblurGAN's port renormalises it)
    turn = np.arccos(np.clip((steps[1:] * steps[:-1]).sum(1) / (speed[1:] * speed[:-1]), -1, 1))
    assert np.median(turn) < 0.3  # inertia: successive steps mostly keep their direction


def test_default_scale_matches_documentation():
    lengths = {7: [], 11: [], 15: []}
    for seed in range(60):
        traj = fit_to_kernel(sample_camera_shake(15, np.random.default_rng(seed)), 31, 15)
        assert traj.extent(15) <= 14 + 1e-9
        for n in lengths:
            steps = np.diff(traj.level_offsets(n).reshape(-1, 2), axis=0)
            lengths[n].append(np.hypot(steps[:, 0], steps[:, 1]).sum())
    med = {n: float(np.median(v)) for n, v in lengths.items()}
    assert 6.5 < med[7] < 9 and 10.5 < med[11] < 13.5 and 14 < med[15] < 18, med  # documented: 7.6 / 11.9 / 15.9


def _mean_centroid_offset(config, n, paths=200):
    offsets = [np.hypot(*sample_camera_shake(15, np.random.default_rng(seed), config).level_offsets(n)
                        .reshape(-1, 2).mean(0)) for seed in range(paths)]
    return float(np.mean(offsets))


def test_default_handheld_shake_keeps_the_sharp_frame_at_the_centre_of_the_blur():
    """The default camera model's blur is centred on the sharp moment (a blind model can find the target); the
    "strong" preset, the old default, is about three times further off-centre (docs/data_learnability.md)."""
    assert TrajectoryConfig() == TrajectoryConfig.preset("handheld")
    assert (TrajectoryConfig().accel_std, TrajectoryConfig().jerk_prob) == (0.05, 0.0)
    strong = TrajectoryConfig.preset("strong")
    assert (strong.accel_std, strong.jerk_prob) == (0.25, 0.05)
    for n, limit in ((7, 0.2), (11, 0.4), (15, 0.7)):  # documented means 0.12 / 0.27 / 0.48 px
        handheld, old = _mean_centroid_offset(TrajectoryConfig(), n), _mean_centroid_offset(strong, n)
        assert handheld < limit and old > 2.5 * handheld, (n, handheld, old)
    assert TrajectoryConfig.preset("strong", speed_range=(2.0, 2.0)).speed_range == (2.0, 2.0)
    with pytest.raises(ValueError, match="unknown shake preset 'wobbly'; choose one of handheld, strong"):
        TrajectoryConfig.preset("wobbly")


def test_kernel_sums_to_one_nonnegative_and_fits():
    sharp = photo()
    out = blur_image_along_trajectory(sharp, frames=(7, 11, 15), rng=np.random.default_rng(1), kernel_size=31)
    assert sorted(out) == [7, 11, 15]
    for n, (blurry, kernel) in out.items():
        assert kernel.shape == (31, 31) and kernel.dtype == np.float32
        assert kernel.min() >= 0 and abs(float(kernel.sum()) - 1) < 1e-5
        assert kernel[0].sum() == kernel[-1].sum() == kernel[:, 0].sum() == kernel[:, -1].sum() == 0
        assert blurry.shape == sharp.shape and 0 <= blurry.min() and blurry.max() <= 1
        assert np.abs(blurry - sharp / 255).mean() > 0.02  # visibly blurred
    k = offsets_to_kernel(np.array([[0.0, 0.0], [0.0, 1.5]]), 5)
    assert k[2, 2:].tolist() == [0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="fit_to_kernel"):
        offsets_to_kernel(np.array([[0.0, 3.0]]), 5)


def test_numpy_correlation_matches_shared_operator():
    rng = np.random.default_rng(0)
    image = rng.random((20, 23, 3))
    kernel = rng.random((7, 7)) * (rng.random((7, 7)) < 0.4)  # sparse, asymmetric
    kernel /= kernel.sum()
    ours = correlate_global_kernel(image, kernel)
    theirs = reblur_torch(image, kernel.astype(np.float64), "linear")
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    # Convention check: a delta at (r + 1, r) reads the pixel one row below.
    delta = np.zeros((7, 7))
    delta[4, 3] = 1
    np.testing.assert_allclose(correlate_global_kernel(image, delta)[5:10, 5:10], image[6:11, 5:10])


@pytest.mark.parametrize("crf", ["gamma2.2", "linear"])
def test_reblur_with_kernel_reproduces_blurry(crf):
    sharp = photo(1)
    out = blur_image_along_trajectory(sharp, frames=(5, 9, 13), rng=7, crf=crf, kernel_size=25)
    for n, (blurry, kernel) in out.items():
        reblurred = reblur_torch(sharp / 255.0, kernel, crf)
        assert np.abs(reblurred - blurry).max() <= REBLUR_TOL
        # Same through the differentiable torch helper meant for the reblur loss.
        t_sharp = torch.from_numpy(sharp / 255.0).permute(2, 0, 1)[None].float()
        kmap = global_kernel_to_map(torch.from_numpy(kernel), *sharp.shape[:2])
        t_out = reblur_in_linear_light(t_sharp, kmap, crf)[0].permute(1, 2, 0).double().numpy()
        assert np.abs(t_out - blurry).max() <= REBLUR_TOL + 1e-5
        if crf == "gamma2.2":
            # Reblurring stored values directly (ignoring the response) misses the data noticeably.
            naive = reblur_torch(sharp / 255.0, kernel, "linear")
            assert np.abs(naive - blurry).max() > 10 * REBLUR_TOL


def test_noise_option():
    sharp = photo(2)
    clean = blur_image_along_trajectory(sharp, frames=(7, 11, 15), rng=5)
    noisy = blur_image_along_trajectory(sharp, frames=(7, 11, 15), rng=5, noise_std=0.02)
    diff = noisy[11][0] - clean[11][0]
    np.testing.assert_array_equal(noisy[11][1], clean[11][1])  # same trajectory, same kernel
    assert 0.01 < diff.std() < 0.03


def test_determinism_by_seed():
    sharp = photo(3)
    a = blur_image_along_trajectory(sharp, frames=(7, 11, 15), rng=11)
    b = blur_image_along_trajectory(sharp, frames=(7, 11, 15), rng=11)
    c = blur_image_along_trajectory(sharp, frames=(7, 11, 15), rng=12)
    for n in a:
        np.testing.assert_array_equal(a[n][0], b[n][0])
        np.testing.assert_array_equal(a[n][1], b[n][1])
    assert not np.array_equal(a[15][1], c[15][1])


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    images = tmp_path_factory.mktemp("photos")
    for i in range(2):
        Image.fromarray(photo(10 + i)).save(images / f"photo{i}.png")
    out = tmp_path_factory.mktemp("synth")
    report = synthesize_trajectory_set(images, out, frames=(5, 7, 9), seed=4, kernel_size=15, trajectories_per_image=2)
    return images, out, report


def test_synthesized_set_on_disk(synth_set):
    images, out, report = synth_set
    rows = read_manifest(out, check_files=True)
    assert len(rows) == 2 * 2 * 3 and report.counts == {5: 4, 7: 4, 9: 4}
    assert {r.group for r in rows} == {"photo0_00", "photo0_01", "photo1_00", "photo1_01"}
    for r in rows:
        assert r.t == (r.n - 1) * 20 and r.kernel.endswith(".npy")
        kernel = np.load(r.kernel, allow_pickle=False)
        assert kernel.shape == (15, 15) and kernel.dtype == np.float32
        sharp = np.asarray(Image.open(r.sharp)) / 255.0
        blurry = np.asarray(Image.open(r.blurry)) / 255.0
        assert np.abs(reblur_torch(sharp, kernel, "gamma2.2") - blurry).max() <= REBLUR_TOL
        # The saved path reproduces the kernel: level n is the centred n sub-frames of the stored path.
        offsets = np.load(Path(r.sharp).parents[1] / "trajectories" / f"{r.group}.npy").astype(np.float64)
        mid = offsets.shape[0] // 2
        centred = offsets[mid - r.n // 2 : mid + r.n // 2 + 1]
        np.testing.assert_allclose(offsets_to_kernel(centred, 15), kernel, atol=1e-6)


def test_synth_deterministic_and_resumable(synth_set, tmp_path):
    images, out, _ = synth_set
    again = tmp_path / "again"
    synthesize_trajectory_set(images, again, frames=(5, 7, 9), seed=4, kernel_size=15, trajectories_per_image=2)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    victim = again / "photo1" / "blur_n07" / "photo1_01.png"
    victim.unlink()
    report = synthesize_trajectory_set(images, again, frames=(5, 7, 9), seed=4, kernel_size=15, trajectories_per_image=2)
    assert report.written > 0 and report.skipped_existing > 0
    assert victim.read_bytes() == (out / "photo1" / "blur_n07" / "photo1_01.png").read_bytes()
    with pytest.raises(ValueError, match="seed"):
        synthesize_trajectory_set(images, again, frames=(5, 7, 9), seed=5, kernel_size=15, trajectories_per_image=2)


def test_synth_python_api_with_arrays(tmp_path):
    report = synthesize_trajectory_set([photo(0), photo(1) / 255.0], tmp_path, frames=(3, 5, 7), seed=0, kernel_size=11)
    assert sorted({r.scene for r in report.rows}) == ["image_0000", "image_0001"]
    assert (tmp_path / "image_0001" / "kernels_n07" / "image_0001_00.npy").is_file()


@pytest.fixture
def cli_main(monkeypatch):
    # This branch may not have every sub-command module yet; register the ones that exist.
    available = [m for m in cli.COMMAND_MODULES if importlib.util.find_spec(m) is not None]
    assert "fidediff_pipeline.commands.data" in available
    monkeypatch.setattr(cli, "COMMAND_MODULES", available)
    return cli.main


def test_cli_synth(synth_set, tmp_path, cli_main, capsys):
    images, _, _ = synth_set
    out = tmp_path / "cli"
    argv = ["data", "synth", "--images", str(images), "--out", str(out), "--frames", "3", "5", "7",
            "--seed", "1", "--kernel-size", "13", "--noise-std", "0.01", "--quiet"]  # fmt: skip
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "Avg. Frames" in printed and "manifest:" in printed
    rows = read_manifest(out / "manifest.csv", check_files=True)
    assert len(rows) == 6 and {r.n for r in rows} == {3, 5, 7}
    assert np.load(rows[0].kernel).shape == (13, 13)
    import json

    assert json.loads((out / "fidediff_data.json").read_text())["trajectory"]["accel_std"] == 0.05  # handheld
    strong = tmp_path / "cli_strong"
    assert cli_main([*argv[:5], str(strong), *argv[6:], "--shake", "strong"]) == 0
    assert json.loads((strong / "fidediff_data.json").read_text())["trajectory"]["jerk_prob"] == 0.05


def test_cli_errors_are_one_line(tmp_path, cli_main, capsys):
    assert cli_main(["data", "synth", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert cli_main(["data", "gopro", "--frames-root", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "frames root does not exist" in capsys.readouterr().err
    (tmp_path / "imgs").mkdir()
    Image.fromarray(photo()).save(tmp_path / "imgs" / "a.png")
    assert cli_main(["data", "synth", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o2"), "--frames", "7", "11"]) == 2
    assert "at least 3 blur levels" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- one image loader (issue 13)
def _png_with_claimed_size(path, width, height):
    """A small PNG whose header claims ``width x height`` (a decompression bomb as far as the header goes)."""
    import struct
    import zlib

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_cli_synth_pixel_bomb_is_one_line_before_decoding(tmp_path, cli_main, capsys):
    (tmp_path / "imgs").mkdir()
    _png_with_claimed_size(tmp_path / "imgs" / "bomb.png", 7000, 7000)
    assert cli_main(["data", "synth", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bomb.png has 7000x7000 = 49,000,000 pixels, over the limit" in err and "Traceback" not in err


def test_cli_synth_skips_and_counts_an_unreadable_photo(tmp_path, cli_main, capsys):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(photo()).save(tmp_path / "imgs" / "good.png")
    (tmp_path / "imgs" / "garbage.png").write_bytes(b"not a png at all")
    argv = ["data", "synth", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"), "--frames", "3", "5", "7",
            "--kernel-size", "11", "--quiet"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "1 skipped: a source image could not be read (first: garbage:" in out
    rows = read_manifest(tmp_path / "o" / "manifest.csv", check_files=True)
    assert {r.scene for r in rows} == {"good"} and len(rows) == 3


def test_synth_reads_16_bit_grey_without_clipping(tmp_path):
    (tmp_path / "imgs").mkdir()
    grey = (photo().mean(axis=2) * 257).astype(np.uint16)  # 8-bit photo as 16-bit (values up to 65535)
    Image.fromarray(grey).save(tmp_path / "imgs" / "deep.png")
    report = synthesize_trajectory_set(tmp_path / "imgs", tmp_path / "out", frames=(3, 5, 7), seed=0, kernel_size=11)
    sharp = np.asarray(Image.open(report.rows[0].sharp))
    assert (sharp == 255).mean() < 0.05  # was 99.8 % white
    assert sharp.mean() == pytest.approx(grey.mean() / 257, abs=20)  # the crop is the photo's, roughly
