"""Tiled inference on the bundled tiny checkpoint: same quality as untiled, and no visible seams."""

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from skimage.metrics import peak_signal_noise_ratio

from fidediff_pipeline import DEFAULT_MODEL, FideDiffPipeline
from fidediff_pipeline.data import blur_image_along_trajectory
from fidediff_pipeline.tiling import balanced_tiles

pytestmark = pytest.mark.skipif(not Path(DEFAULT_MODEL).is_dir(), reason="the bundled tiny checkpoint is not built")


@pytest.fixture(scope="module")
def tiled_and_untiled():
    pipe = FideDiffPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    sharp = skimage.data.coffee()[:, :512].astype(np.float32) / 255.0  # held out from training
    sharp = np.concatenate([sharp, sharp[::-1][:112]], axis=0)  # 512 x 512
    blurry = blur_image_along_trajectory(sharp, frames=(11,), rng=np.random.default_rng(3))[11][0]
    blurry = (np.clip(blurry, 0, 1) * 255).round().astype(np.uint8)
    kwargs = dict(timestep=200, upscale_factor=2, output_type="np")
    untiled = pipe(blurry, tiling=False, **kwargs).images[0]
    tile = pipe._default_tile_size()
    tiled = pipe(blurry, tiling=True, **kwargs).images[0]
    return pipe, (sharp * 255).round().astype(np.uint8), untiled, tiled, tile


def test_tiled_quality_matches_untiled_within_half_a_db(tiled_and_untiled):
    _, sharp, untiled, tiled, _ = tiled_and_untiled
    to_uint8 = lambda x: (x * 255).round().astype(np.uint8)  # noqa: E731
    psnr_untiled = peak_signal_noise_ratio(sharp, to_uint8(untiled), data_range=255)
    psnr_tiled = peak_signal_noise_ratio(sharp, to_uint8(tiled), data_range=255)
    assert abs(psnr_tiled - psnr_untiled) < 0.5, (psnr_tiled, psnr_untiled)
    assert peak_signal_noise_ratio(to_uint8(untiled), to_uint8(tiled), data_range=255) > 30


def test_no_seams_at_tile_borders(tiled_and_untiled):
    """The tiled-minus-untiled difference is no larger at tile borders than inside the tiles."""
    pipe, _, untiled, tiled, tile = tiled_and_untiled
    pixels_per_latent = pipe.vae_scale_factor // 2
    latent = 512 * 2 // pipe.vae_scale_factor
    size, starts = balanced_tiles(latent, tile, pipe._default_tile_overlap(tile))
    assert len(starts) > 1, "the test image must span several tiles"
    borders = sorted({(s + size) * pixels_per_latent for s in starts[:-1]} | {s * pixels_per_latent for s in starts[1:]})
    diff = np.abs(tiled - untiled).mean(axis=2)
    column_error = diff.mean(axis=0)
    at_borders = np.mean([column_error[max(b - 1, 0):b + 1].mean() for b in borders])
    # Measured 1.05x with the crossfade; the Gaussian bump it replaced (14% of its peak left at a tile's edge)
    # gave 1.23x with the same tiles.
    assert at_borders < 1.15 * column_error.mean() + 1e-3
    # and the tiled output has no jump in its own gradient at the borders
    gradient = np.abs(np.diff(tiled.mean(axis=2), axis=1)).mean(axis=0)
    assert np.mean([gradient[b - 1] for b in borders]) < 2.0 * gradient.mean()


def test_blend_weights_crossfade_to_zero_at_shared_edges_and_stay_flat_at_the_grid_border():
    import torch

    from fidediff_pipeline.tiling import blend_weights, iterate_tiles

    grid, tile, overlap = (100, 130), 48, 12
    boxes = list(iterate_tiles(*grid, tile, overlap, multiple=1))
    total = torch.zeros(1, 1, *grid)
    for box in boxes:
        total[..., box[0]:box[1], box[2]:box[3]] += blend_weights(box, grid, overlap)
    for y0, y1, x0, x1 in boxes:
        share = blend_weights((y0, y1, x0, x1), grid, overlap)[0, 0] / total[0, 0, y0:y1, x0:x1]
        # a tile's share at a side it shares is almost nothing (no step where its padding shows) ...
        if x0 > 0:
            assert share[:, 0].max() < 0.05
        if x1 < grid[1]:
            assert share[:, -1].max() < 0.05
        # ... and all of it where no other tile reaches (the grid's corners)
    assert blend_weights(boxes[0], grid, overlap)[0, 0, 0, 0] == 1.0 and total[0, 0, 0, 0] == 1.0
    assert blend_weights(boxes[-1], grid, overlap)[0, 0, -1, -1] == 1.0


def test_balanced_tiles_cover_with_the_overlap_and_fewer_pixels():
    from fidediff_pipeline.tiling import tile_starts

    for length in range(1, 700, 13):
        for tile, overlap in ((256, 64), (128, 32), (64, 16), (24, 8), (16, 0)):
            size, starts = balanced_tiles(length, tile, overlap)
            assert size <= tile and starts[0] == 0 and starts[-1] + size == length
            assert len(starts) == len(tile_starts(length, tile, overlap))  # as many tiles (UNet calls) as before
            assert all(a + size - b >= overlap for a, b in zip(starts, starts[1:]))
            assert len(starts) * size <= len(starts) * min(tile, length)
    assert balanced_tiles(512, 256, 64) == (216, [0, 148, 296])  # full-size tiles: 3 x 256 = 768 pixels per axis


def test_the_tiny_vae_in_tiles_equals_the_whole_image_pass():
    import torch

    import fidediff_pipeline.pipelines.pipeline_fidediff as module

    pipe = FideDiffPipeline.from_pretrained(DEFAULT_MODEL)
    windows = []
    original = module.tiled_map

    def counting(fn, *args, **kwargs):
        return original(lambda part: windows.append(part.shape) or fn(part), *args, **kwargs)

    image = torch.from_numpy(skimage.data.coffee()[:, :496]).permute(2, 0, 1)[None].float() / 127.5 - 1  # 400 x 496
    with torch.no_grad():
        whole = pipe._vae_encode(image, False, 64)
        module.tiled_map = counting
        try:
            tiled = pipe._vae_encode(image, True, 64)
            decoded_tiled = pipe._vae_decode(whole, True, 64)
        finally:
            module.tiled_map = original
        decoded_whole = pipe._vae_decode(whole, False, 64)
    assert len(windows) == 2 * 6  # 2 x 3 windows of at most 128 latents, once for each direction
    assert whole.shape == tiled.shape == (1, 12, 200, 248) and decoded_tiled.shape == (1, 3, 400, 496)
    # The windows drop the margins where their padding differs, so the result is the whole pass's.
    assert (tiled - whole).abs().max() < 1e-4 and (decoded_tiled - decoded_whole).abs().max() < 1e-4


def test_tiled_map_drops_each_windows_padded_margins():
    import torch

    from fidediff_pipeline.tiling import tiled_map

    x = torch.rand(1, 2, 70, 45)
    blur = lambda t: torch.nn.functional.avg_pool2d(t, 9, stride=1, padding=4)  # noqa: E731  receptive field 4 px
    assert torch.allclose(tiled_map(blur, x, (70, 45), 24, 10), blur(x), atol=1e-6)  # drops 5 > 4
    assert not torch.allclose(tiled_map(blur, x, (70, 45), 24, 4), blur(x), atol=1e-3)  # drops 2 < 4: seams
    up = tiled_map(lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2), x, (70, 45), 24, 8, out_scale=2)
    assert up.shape == (1, 2, 140, 90) and torch.equal(up[..., ::2, ::2], x)


def test_on_the_cpu_a_large_image_goes_through_the_tiny_vae_in_windows_with_the_same_result(monkeypatch):
    import torch

    import fidediff_pipeline.pipelines.pipeline_fidediff as module
    from fidediff_pipeline.restoration import vae_encode_mode

    pipe = FideDiffPipeline.from_pretrained(DEFAULT_MODEL)
    monkeypatch.setattr(module, "TINY_VAE_CPU_WINDOW", 256)  # the mechanism on a small image (the default is 512)
    windows = []
    original = module.tiled_map

    def counting(fn, *args, **kwargs):
        return original(lambda part: windows.append(part.shape) or fn(part), *args, **kwargs)

    image = torch.rand(1, 3, 600, 560) * 2 - 1  # 300 x 280 latents: above that window
    with torch.no_grad():
        module.tiled_map = counting
        try:
            latents = pipe._vae_encode(image, False, 256)  # no tiling asked for
            decoded = pipe._vae_decode(latents / pipe.vae.config.scaling_factor, False, 256)
        finally:
            module.tiled_map = original
        whole = vae_encode_mode(pipe.vae, image) * pipe.vae.config.scaling_factor
        whole_decoded = pipe.vae.decode(whole / pipe.vae.config.scaling_factor).sample
    assert len(windows) == 2 * 4 and max(max(w[-2:]) for w in windows[4:]) <= module.TINY_VAE_CPU_WINDOW
    assert (latents - whole).abs().max() < 1e-4 and (decoded - whole_decoded).abs().max() < 1e-4
    assert pipe._tiny_vae_windows((256, 200), False, 256) is None  # one window's worth: the whole pass


def test_the_tiled_path_runs_the_kernel_estimator_once_per_tile_and_again_only_beyond_its_budget(monkeypatch):
    import fidediff_pipeline.pipelines.pipeline_fidediff as module
    from fidediff_pipeline.tiling import iterate_tiles

    pipe = FideDiffPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    blurry = skimage.data.coffee()[:256, :320]
    calls = []
    pipe.kernel_controlnet.kernel_estimator.register_forward_hook(lambda *_: calls.append(1))
    kwargs = dict(tiling=True, tile_size=64, tile_overlap=16, output_type="np", return_kernels=True)
    once = pipe(blurry, **kwargs)
    tiles = len(list(iterate_tiles(128, 160, 64, 16)))  # the tiny model's latents: half the pixels
    assert tiles > 1 and len(calls) == tiles
    calls.clear()
    monkeypatch.setattr(module, "TILE_KERNEL_BUDGET_BYTES", 0)  # nothing kept: every tile's kernels estimated again
    twice = pipe(blurry, **kwargs)
    assert len(calls) == 2 * tiles
    # Same crops, same kernels: keeping them changes nothing.
    assert np.array_equal(once.images[0], twice.images[0]) and once.timesteps == twice.timesteps
    assert np.allclose(once.kernels[0], twice.kernels[0])


def test_diffusers_vae_tiling_switch_is_honoured_without_its_tiny_vae_code():
    """`pipe.vae.enable_tiling()`, diffusers' documented switch: its AutoencoderTiny tiling assumes TAESD's 4 latent
    channels and factor 8 and crashed on the tiny model's 12 channels and factor 2. The pipeline now tiles that VAE
    with its own windows (the same result as one pass) and leaves the user's setting as it was."""
    rng = np.random.default_rng(0)
    image = (rng.random((300, 340, 3)) * 255).astype(np.uint8)  # 150 x 170 latents: above the 128-latent window
    pipe = FideDiffPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(image, timestep=200, output_type="np").images[0]
    pipe.vae.enable_tiling()
    assert pipe._tiny_vae_windows((150, 170), False, 64) == (128, 32)  # the user's switch asks for windows
    tiled = pipe(image, timestep=200, output_type="np").images[0]
    assert pipe.vae.use_tiling  # still the user's setting after the call
    assert np.abs(tiled - plain).max() < 1e-3
    pipe.vae.disable_tiling()
    assert pipe._tiny_vae_windows((150, 170), False, 64) is None
