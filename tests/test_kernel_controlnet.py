import json

import pytest
import numpy as np
import torch
import torch.nn.functional as F

from fidediff_pipeline import FideDiffPipeline, KernelControlNetModel
from fidediff_pipeline.presets import build_unet


def test_kernels_are_nonnegative_and_sum_to_one():
    unet = build_unet("tiny")
    kcn = KernelControlNetModel.from_unet(unet, kernel_size=7)
    out = kcn(image=torch.rand(2, 3, 30, 42) * 2 - 1)
    assert out.kernels.shape == (2, 49, 30, 42)
    assert (out.kernels >= 0).all()
    assert torch.allclose(out.kernels.sum(dim=1), torch.ones(2, 30, 42), atol=1e-5)
    assert out.predicted_timestep.shape == (2,)
    assert ((out.predicted_timestep > 0) & (out.predicted_timestep < 1000)).all()


def test_controlnet_copies_the_unet_encoder():
    unet = build_unet("tiny")
    kcn = KernelControlNetModel.from_unet(unet, kernel_size=5)
    assert torch.equal(kcn.controlnet.conv_in.weight, unet.conv_in.weight)
    unet_down = unet.down_blocks.state_dict()
    for key, value in kcn.controlnet.down_blocks.state_dict().items():
        assert torch.equal(value, unet_down[key]), key


def test_filter_module_follows_the_paper_equations():
    unet = build_unet("tiny")
    kcn = KernelControlNetModel.from_unet(unet, kernel_size=5)
    f = kcn.kernel_filter
    c = f.zero_conv.in_channels
    with torch.no_grad():  # make Z the identity so that its input O is visible
        f.zero_conv.weight.copy_(torch.eye(c).view(c, c, 1, 1))
        f.zero_conv.bias.zero_()
    z_in1 = torch.randn(1, c, 8, 8)
    kernels = torch.softmax(torch.randn(1, 25, 32, 32), dim=1)
    k_in = f.embed_kernels(kernels, (8, 8))
    z_in2 = f.conv_z(z_in1)
    weight = f.conv_weight(torch.cat([k_in, z_in2], dim=1))
    assert torch.allclose(f(z_in1, kernels), weight * z_in2, atol=1e-6)


def test_fresh_kernel_controlnet_leaves_the_base_output_unchanged(tiny_pipeline, rgb_image):
    with_kcn = tiny_pipeline(rgb_image, timestep=200, output_type="np").images
    base = FideDiffPipeline(**{**tiny_pipeline.components, "kernel_controlnet": None})
    without = base(rgb_image, timestep=200, output_type="np").images
    np.testing.assert_allclose(with_kcn, without, atol=1e-6)


def test_trained_residuals_change_the_output(tiny_pipeline, rgb_image):
    kcn = KernelControlNetModel.from_config(tiny_pipeline.kernel_controlnet.config)
    kcn.load_state_dict(tiny_pipeline.kernel_controlnet.state_dict())
    with torch.no_grad():
        kcn.kernel_filter.zero_conv.weight.normal_(std=0.5)
        for block in kcn.controlnet.controlnet_down_blocks:
            block.weight.normal_(std=0.5)
    pipe = FideDiffPipeline(**{**tiny_pipeline.components, "kernel_controlnet": kcn})
    changed = pipe(rgb_image, timestep=200, output_type="np").images
    base = tiny_pipeline(rgb_image, timestep=200, output_type="np").images
    assert np.abs(changed - base).max() > 1e-3


def test_passed_in_kernels_skip_the_t_regressor():
    unet = build_unet("tiny")
    kcn = KernelControlNetModel.from_unet(unet, kernel_size=5)
    kernels = kcn(image=torch.rand(1, 3, 32, 32) * 2 - 1).kernels
    out = kcn(sample=torch.randn(1, unet.config.in_channels, 8, 8),
              timestep=torch.tensor([200]), encoder_hidden_states=torch.zeros(1, 4, unet.config.cross_attention_dim),
              kernels=kernels)
    assert out.predicted_timestep is None and out.down_block_res_samples is not None


def test_kernel_stride_estimates_one_kernel_per_block_and_the_pipeline_spreads_them(rgb_image):
    """The tiny preset's coarse kernel map (kernel_stride 4): M's output is ceil(H / 4) x ceil(W / 4), F and T take
    it as is, and the pipeline's return_kernels is still per pixel, tiled or not."""
    from fidediff_pipeline.presets import build_pipeline

    pipe = build_pipeline("tiny", seed=0, kernel_size=5)
    kcn = pipe.kernel_controlnet
    assert kcn.kernel_stride == 4
    out = kcn(image=torch.rand(1, 3, 30, 42) * 2 - 1)
    assert out.kernels.shape == (1, 25, 8, 11)
    assert torch.allclose(out.kernels.sum(dim=1), torch.ones(1, 8, 11), atol=1e-5)
    import PIL.Image

    image = PIL.Image.fromarray(rgb_image).resize((72, 56))
    whole = pipe(image, timestep=200, return_kernels=True, output_type="np")
    tiled = pipe(image, timestep=200, return_kernels=True, output_type="np", tiling=True, tile_size=16, tile_overlap=4)
    assert whole.kernels[0].shape == tiled.kernels[0].shape == (25, 56, 72)
    # Tiles see less context than the whole image (kernels differ a little), but each is a block's kernel.
    assert np.allclose(whole.kernels[0].sum(axis=0), 1.0, atol=1e-4)
    assert np.abs(whole.kernels[0] - tiled.kernels[0]).mean() < 0.05


def test_kernel_stride_is_checked_and_old_configs_default_to_per_pixel():
    unet = build_unet("tiny")
    with pytest.raises(ValueError, match="kernel_stride must be a power of 2 up to 4"):
        KernelControlNetModel.from_unet(unet, kernel_size=5, estimator_channels=(16, 32, 64), kernel_stride=3)
    with pytest.raises(ValueError, match="kernel_stride must be a power of 2 up to 4"):
        KernelControlNetModel.from_unet(unet, kernel_size=5, estimator_channels=(16, 32, 64), kernel_stride=8)
    paper = KernelControlNetModel.from_unet(unet, kernel_size=5, estimator_channels=(16, 32, 64))
    assert paper.kernel_stride == 1
    assert paper(image=torch.zeros(1, 3, 20, 24)).kernels.shape == (1, 25, 20, 24)


def _blur_along(image: torch.Tensor, length: int, vertical: bool) -> torch.Tensor:
    kernel = torch.full((1, 1, length, 1) if vertical else (1, 1, 1, length), 1.0 / length)
    return torch.nn.functional.conv2d(image, kernel.expand(3, 1, -1, -1).contiguous(), groups=3)


@pytest.mark.parametrize("vertical", [False, True])
def test_gradient_autocorrelation_has_its_ridge_along_the_blur(vertical):
    from fidediff_pipeline.models.modeling_kernel_controlnet import GradientAutocorrelation

    torch.manual_seed(0)
    blurry = _blur_along(torch.rand(1, 3, 80, 80) * 2 - 1, 9, vertical)  # white-noise texture, 9 px blur
    features = GradientAutocorrelation(radius=6, stride=4)
    out = features(blurry)
    h, w = blurry.shape[-2:]
    assert out.shape == (1, features.num_features, -(-h // 4), -(-w // 4))
    mean = out.mean(dim=(0, 2, 3))
    along = features.offsets.index((4, 0) if vertical else (0, 4))
    across = features.offsets.index((0, 4) if vertical else (4, 0))
    assert mean[along] > 0.3 and abs(float(mean[across])) < 0.1, (float(mean[along]), float(mean[across]))
    # A sharp (white) texture correlates with nothing 4 px away.
    assert features(torch.rand(1, 3, 64, 64)).mean(dim=(0, 2, 3)).abs()[along] < 0.05


def test_estimator_autocorrelation_is_off_in_the_paper_preset_and_checked():
    from fidediff_pipeline.presets import PRESET_SETTINGS

    assert PRESET_SETTINGS["sd21-base"]["estimator_autocorrelation_radius"] == 0
    unet = build_unet("tiny")
    paper = KernelControlNetModel.from_unet(unet, kernel_size=5, estimator_channels=(16, 32, 64))
    assert paper.kernel_estimator.autocorrelation is None
    with_features = KernelControlNetModel.from_unet(unet, kernel_size=5, estimator_channels=(16, 32, 64),
                                                    kernel_stride=4, estimator_autocorrelation_radius=8)
    kernels = with_features(image=torch.rand(1, 3, 30, 42)).kernels
    assert kernels.shape == (1, 25, 8, 11) and torch.allclose(kernels.sum(dim=1), torch.ones(1, 8, 11))
    with pytest.raises(ValueError, match="estimator_autocorrelation_radius must be 0 \\(off\\) or a positive int"):
        KernelControlNetModel.from_unet(unet, kernel_size=5, estimator_autocorrelation_radius=-1)
    with pytest.raises(ValueError, match="estimator_autocorrelation_window must be a positive int; got 0"):
        KernelControlNetModel.from_unet(unet, kernel_size=5, estimator_autocorrelation_radius=8,
                                        estimator_autocorrelation_window=0)


def test_a_wider_autocorrelation_window_gives_steadier_features(tmp_path):
    """The window (a config setting, 16 px when a saved config predates it) sets how many pixels each feature
    averages: on a blurred noise texture the features vary less from block to block in a wider one."""
    from fidediff_pipeline.models.modeling_kernel_controlnet import GradientAutocorrelation

    torch.manual_seed(0)
    blurry = _blur_along(torch.rand(1, 3, 100, 100) * 2 - 1, 9, vertical=False)
    narrow, wide = GradientAutocorrelation(8, 4, window=16), GradientAutocorrelation(8, 4, window=48)
    spread = lambda features: float(features(blurry)[..., 4:-4, 4:-4].std(dim=(2, 3)).mean())  # noqa: E731
    assert spread(wide) < 0.6 * spread(narrow), (spread(wide), spread(narrow))
    model = KernelControlNetModel.from_unet(build_unet("tiny"), kernel_size=5, estimator_channels=(16, 32, 64),
                                            kernel_stride=4, estimator_autocorrelation_radius=8,
                                            estimator_autocorrelation_window=48)
    model.save_pretrained(tmp_path)
    assert KernelControlNetModel.from_pretrained(tmp_path).kernel_estimator.autocorrelation.window == 48
    config = json.loads((tmp_path / "config.json").read_text())
    del config["estimator_autocorrelation_window"]  # a checkpoint saved before the setting existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert KernelControlNetModel.from_pretrained(tmp_path).kernel_estimator.autocorrelation.window == 16


def test_a_scaled_kernel_map_lets_the_filter_tell_kernels_apart_and_old_configs_keep_scale_one(tmp_path):
    """``kernel_input_scale = m**2``: at initialisation F's embedding tells a straight blur from a point, which it
    barely does for taps summing to 1 (the paper's scale, the default). Configs saved before the setting load with
    scale 1, so their outputs do not change."""
    from fidediff_pipeline.presets import build_kernel_controlnet

    m = 19
    torch.manual_seed(0)
    scaled = KernelControlNetModel.from_unet(build_unet("tiny"), kernel_size=m, estimator_channels=(16, 32, 64, 96),
                                             kernel_embedding_channels=16, kernel_stride=4,
                                             kernel_input_scale=float(m * m))
    point = torch.zeros(1, m * m, 8, 8)
    point[:, (m * m) // 2] = 1
    line = torch.zeros(1, m, m, 8, 8)
    line[:, m // 2] = 1 / m  # a horizontal blur over the whole window
    line = line.reshape(1, m * m, 8, 8)

    def contrast(model):
        a, b = (model.kernel_filter.embed_kernels(k, (8, 8)) for k in (point, line))
        return float((a - b).abs().mean() / b.abs().mean())

    with torch.no_grad():
        with_scale = contrast(scaled)
        scaled.save_pretrained(tmp_path)
        assert KernelControlNetModel.from_pretrained(tmp_path).kernel_filter.input_scale == m * m
        config = json.loads((tmp_path / "config.json").read_text())
        del config["kernel_input_scale"]  # a checkpoint saved before the setting existed
        (tmp_path / "config.json").write_text(json.dumps(config))
        old = KernelControlNetModel.from_pretrained(tmp_path)
        assert old.config.kernel_input_scale == 1.0 and old.kernel_filter.input_scale == 1.0
        without = contrast(old)  # the same weights, the kernel map as M gives it
    assert with_scale > 1.0 and without < 0.1, (with_scale, without)
    for preset in ("tiny", "sd21-base"):  # both keep the paper's scale
        assert build_kernel_controlnet(preset, build_unet("tiny")).config.kernel_input_scale == 1.0


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "361", True])
def test_kernel_input_scale_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="kernel_input_scale must be a positive number"):
        KernelControlNetModel.from_unet(build_unet("tiny"), kernel_size=5, kernel_input_scale=bad)


def test_the_whole_image_autocorrelations_are_the_ratios_of_the_whole_image_sums():
    """``GradientAutocorrelation(..., with_whole_image=True)``: for each offset, the sum over the image of the
    gradient products at that offset divided by the sum at offset 0 (pairs leaving the image count as zero)."""
    from fidediff_pipeline.models.modeling_kernel_controlnet import GradientAutocorrelation

    torch.manual_seed(0)
    image = torch.rand(1, 3, 23, 30, dtype=torch.float64)
    features = GradientAutocorrelation(radius=6, stride=4)
    local, whole = features(image, with_whole_image=True)
    assert torch.equal(local, features(image)) and whole.shape == (1, features.num_features)
    grey = image.mean(dim=1)[0].numpy()
    gx, gy = np.zeros_like(grey), np.zeros_like(grey)
    gx[:, :-1], gy[:-1, :] = np.diff(grey, axis=1), np.diff(grey, axis=0)

    def product_sum(dy, dx):
        h, w = grey.shape
        a = (slice(max(-dy, 0), h - max(dy, 0)), slice(max(-dx, 0), w - max(dx, 0)))
        b = (slice(max(dy, 0), h - max(-dy, 0)), slice(max(dx, 0), w - max(-dx, 0)))
        return float((gx[a] * gx[b] + gy[a] * gy[b]).sum())

    expected = [product_sum(dy, dx) / product_sum(0, 0) for dy, dx in features.offsets]
    np.testing.assert_allclose(whole[0].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_the_global_context_branch_starts_at_zero_reads_the_whole_image_and_round_trips(tmp_path):
    """``with_estimator_global_context``: same kernels as before until the branch is trained; once it has weights,
    a change far outside a position's local view changes that position's kernel (without it, hardly)."""
    torch.manual_seed(0)
    model = KernelControlNetModel.from_unet(build_unet("tiny"), kernel_size=5, estimator_channels=(16, 32, 64),
                                            kernel_stride=4, estimator_autocorrelation_radius=8)
    assert model.config.estimator_global_context is False and model.kernel_estimator.global_context_in is None
    with torch.no_grad():
        for p in model.kernel_estimator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    wide = model.with_estimator_global_context()
    assert wide.config.estimator_global_context is True and wide.with_estimator_global_context() is wide
    image = torch.rand(1, 3, 192, 192) * 2 - 1
    changed = image.clone()
    changed[..., 128:, 128:] = torch.rand(1, 3, 64, 64) * 2 - 1  # far from the top-left corner
    with torch.no_grad():
        assert torch.equal(model.kernel_estimator(image), wide.kernel_estimator(image))
        wide.kernel_estimator.global_context_in.weight.normal_(0, 20)
        corner = lambda m, x: m.kernel_estimator(x)[..., :4, :4]  # noqa: E731  (the top-left 16 x 16 px)
        # Only GroupNorm's statistics reach the corner from there without the branch: far less than the branch.
        local_change = (corner(model, image) - corner(model, changed)).abs().max()
        wide_change = (corner(wide, image) - corner(wide, changed)).abs().max()
        assert wide_change > 4 * local_change, (wide_change, local_change)  # measured: 6x
        wide.save_pretrained(tmp_path)
        loaded = KernelControlNetModel.from_pretrained(tmp_path)
        assert loaded.config.estimator_global_context is True
        torch.testing.assert_close(loaded.kernel_estimator(image), wide.kernel_estimator(image), rtol=0, atol=1e-6)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["estimator_global_context"]  # a checkpoint saved before the setting existed
    assert KernelControlNetModel.from_config(config).kernel_estimator.global_context_in is None


@pytest.mark.parametrize("radius, bad, message", [
    (0, True, "estimator_global_context reads the whole image's gradient autocorrelations: it needs "
              "estimator_autocorrelation_radius > 0"),
    (8, "yes", "estimator_global_context must be True or False; got 'yes'"),
])
def test_the_global_context_is_checked(radius, bad, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        KernelControlNetModel.from_unet(build_unet("tiny"), kernel_size=5, estimator_autocorrelation_radius=radius,
                                        estimator_global_context=bad)


def test_the_fft_whole_image_autocorrelations_match_the_direct_sums():
    """`whole_image_gradient_autocorrelation` (two FFTs) gives the direct sums' ratios, pairs leaving the image
    counting as zero, also at offsets nearly as long as the image (no wrap-around), for every image of a batch."""
    from fidediff_pipeline.models.modeling_kernel_controlnet import (GradientAutocorrelation, polar_offsets,
                                                                     whole_image_gradient_autocorrelation)

    torch.manual_seed(1)
    image = torch.rand(2, 3, 21, 34) * 2 - 1
    offsets = polar_offsets(range(1, 20), 16)
    assert len(offsets) == len(set(offsets)) and (0, 0) not in offsets
    assert not any((-dy, -dx) in offsets for dy, dx in offsets)
    ratios = whole_image_gradient_autocorrelation(image, offsets)
    assert ratios.shape == (2, len(offsets)) and ratios.dtype == torch.float32
    for b in range(2):
        grey = image[b].double().mean(dim=0).numpy()
        gx, gy = np.zeros_like(grey), np.zeros_like(grey)
        gx[:, :-1], gy[:-1, :] = np.diff(grey, axis=1), np.diff(grey, axis=0)
        h, w = grey.shape

        def product_sum(dy, dx):
            a = (slice(max(-dy, 0), h - max(dy, 0)), slice(max(-dx, 0), w - max(dx, 0)))
            c = (slice(max(dy, 0), h - max(-dy, 0)), slice(max(dx, 0), w - max(-dx, 0)))
            return float((gx[a] * gx[c] + gy[a] * gy[c]).sum())

        expected = [product_sum(dy, dx) / product_sum(0, 0) for dy, dx in offsets]
        np.testing.assert_allclose(ratios[b].numpy(), expected, rtol=1e-4, atol=1e-6)
    # The local features' whole-image ratios are the same quantity.
    features = GradientAutocorrelation(radius=6, stride=4)
    _, whole = features(image, with_whole_image=True)
    torch.testing.assert_close(whole_image_gradient_autocorrelation(image, features.offsets), whole,
                               rtol=1e-4, atol=1e-6)


def test_the_regressor_context_branch_starts_at_zero_reads_the_whole_image_and_round_trips(tmp_path):
    """``with_regressor_global_context``: the same t until the branch is trained; once it has weights, T's t
    depends on the image's blur (a longer blur, a different t) and on nothing else passed; saved and loaded with
    its radius; a config saved before the setting existed loads without the branch."""
    torch.manual_seed(0)
    model = KernelControlNetModel.from_unet(build_unet("tiny"), kernel_size=5, estimator_channels=(16, 32, 64),
                                            kernel_stride=4)
    assert model.config.regressor_global_context_radius == 0 and model.timestep_regressor.global_context_in is None
    wide = model.with_regressor_global_context(12)
    assert wide.config.regressor_global_context_radius == 12 and wide.with_regressor_global_context(12) is wide
    assert len(wide.timestep_regressor.global_context_offsets) > 12 * 8  # 16 directions, every distance to 12
    sharp = torch.rand(1, 1, 96, 96).repeat(1, 3, 1, 1) * 2 - 1
    blurred = F.avg_pool2d(F.pad(sharp, (5, 5, 0, 0), mode="replicate"), (1, 11), stride=1)  # 11 px horizontal
    with torch.no_grad():
        for x in (sharp, blurred):
            assert torch.equal(model(image=x).predicted_timestep, wide(image=x).predicted_timestep)
        for p in wide.timestep_regressor.global_context_in.parameters():
            p.normal_(0, 0.5)
        t_sharp, t_blurred = (float(wide(image=x).predicted_timestep) for x in (sharp, blurred))
        assert abs(t_sharp - t_blurred) > 1.0, (t_sharp, t_blurred)
        kernels = wide.kernel_estimator(sharp)
        # Same kernels, different image: only the branch can tell them apart.
        assert float(wide.timestep_regressor(kernels, blurred)) == pytest.approx(t_blurred, abs=0.5)
        with pytest.raises(ValueError, match="reads the whole image too .* pass the image the kernels were estimated"):
            wide.timestep_regressor(kernels)
        wide.save_pretrained(tmp_path)
        loaded = KernelControlNetModel.from_pretrained(tmp_path)
        assert loaded.config.regressor_global_context_radius == 12
        assert float(loaded(image=blurred).predicted_timestep) == pytest.approx(t_blurred, abs=1e-3)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["regressor_global_context_radius"]  # a checkpoint saved before the setting existed
    assert KernelControlNetModel.from_config(config).timestep_regressor.global_context_in is None


@pytest.mark.parametrize("bad", [-1, True, 2.5, "8"])
def test_the_regressor_context_radius_is_checked(bad):
    with pytest.raises(ValueError, match="regressor_global_context_radius must be 0 \\(off\\) or a positive int"):
        KernelControlNetModel.from_unet(build_unet("tiny"), kernel_size=5, regressor_global_context_radius=bad)
