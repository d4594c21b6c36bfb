"""Metrics against their reference implementations, RealBlur alignment, offline weight handling."""

import warnings

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fidediff_pipeline.evaluation import metrics
from fidediff_pipeline.evaluation.metrics import (
    DISTSMetric,
    LPIPSMetric,
    MetricUnavailable,
    as_uint8_rgb,
    build_perceptual_metrics,
    psnr,
    ssim_matlab3d,
    ssim_skimage,
)


def _crop(size=64, y=100, x=180):
    return data.astronaut()[y : y + size, x : x + size].copy()


def _noisy(image, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def pair():
    sharp = _crop()
    return _noisy(sharp, 12), sharp


# ---------------------------------------------------------------------------------------------- pixels


def test_psnr_matches_skimage(pair):
    restored, sharp = pair
    assert psnr(restored, sharp) == pytest.approx(peak_signal_noise_ratio(sharp, restored, data_range=255), abs=1e-10)
    other = _noisy(sharp, 40, seed=1)
    assert psnr(other, sharp) == pytest.approx(peak_signal_noise_ratio(sharp, other, data_range=255), abs=1e-10)
    assert psnr(sharp, sharp) == float("inf")


def test_ssim_skimage_matches_skimage_settings(pair):
    restored, sharp = pair
    expected = structural_similarity(
        restored, sharp, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim_skimage(restored, sharp) == pytest.approx(expected, abs=1e-12)
    # and it is not skimage's default (uniform 7x7 window): the settings matter
    default = structural_similarity(restored, sharp, channel_axis=-1, data_range=255)
    assert abs(ssim_skimage(restored, sharp) - default) > 1e-3


def _ssim3d_conv3d_reference(a, b):
    """Independent port of NAFNet's _ssim_3d: one Conv3d with an 11x11x11 Gaussian, replicate padding."""
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    kernel = (g[:, None, None] * g[None, :, None] * g[None, None, :])[None, None]

    def blur(v):
        v = torch.nn.functional.pad(v[None, None], (5,) * 6, mode="replicate")
        return torch.nn.functional.conv3d(v, kernel)[0, 0]

    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(ssim_map.mean())


def test_ssim_matlab3d_properties_and_reference(pair):
    restored, sharp = pair
    value = ssim_matlab3d(restored, sharp)
    assert ssim_matlab3d(sharp, sharp) == pytest.approx(1.0, abs=1e-12)
    assert ssim_matlab3d(sharp, restored) == pytest.approx(value, abs=1e-12)  # symmetric
    levels = [ssim_matlab3d(_noisy(sharp, s), sharp) for s in (4, 12, 30)]
    assert levels[0] > levels[1] > levels[2]
    # close to, but not the same as, scikit-image's per-channel SSIM on a blur-like error (the 3-D window
    # also averages across channels, so it scores higher; on per-channel noise the gap is larger)
    from skimage.filters import gaussian

    blurred = np.round(gaussian(sharp, sigma=1.0, channel_axis=-1, preserve_range=True)).astype(np.uint8)
    gap = ssim_matlab3d(blurred, sharp) - ssim_skimage(blurred, sharp)
    assert 0.01 < gap < 0.1
    assert value == pytest.approx(_ssim3d_conv3d_reference(restored, sharp), abs=1e-9)


def test_as_uint8_rgb_rounds_floats_like_a_png_writer():
    floats = np.array([[[0.0, 0.5, 1.2]]], dtype=np.float32)
    assert as_uint8_rgb(floats).tolist() == [[[0, 128, 255]]]
    with pytest.raises(ValueError, match="differ in size"):
        psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))


# ------------------------------------------------------------------------------------------- RealBlur


def test_realblur_alignment_undoes_a_known_shift():
    cv2 = pytest.importorskip("cv2")
    from fidediff_pipeline.evaluation.realblur import realblur_align, realblur_psnr_ssim

    sharp = _crop(96)
    shift = np.float32([[1, 0, 1.5], [0, 1, -1.0]])
    shifted = cv2.warpAffine(sharp, shift, (96, 96), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    unaligned = psnr(shifted, sharp)
    score = realblur_psnr_ssim(shifted, sharp)
    assert score.converged
    assert score.psnr > unaligned + 10
    assert score.ssim > 0.97
    assert score.warp[0, 2] == pytest.approx(1.5, abs=0.3) and score.warp[1, 2] == pytest.approx(-1.0, abs=0.3)
    _, _, mask, _, _ = realblur_align(shifted, sharp)
    assert 0 < mask.sum() < mask.size  # the warped-in border is excluded

    # a gain difference is matched away before alignment
    darker = np.round(shifted * 0.8).astype(np.uint8)
    assert realblur_psnr_ssim(darker, sharp).psnr > psnr(darker, sharp) + 15

    same = realblur_psnr_ssim(sharp, sharp)
    assert same.psnr > 100 and same.ssim == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------ LPIPS / DISTS, offline weights


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_lpips_without_backbone_is_unavailable_with_reason(empty_torch_home):
    with pytest.raises(MetricUnavailable) as info:
        LPIPSMetric("alex", allow_download=False)
    reason = str(info.value)
    assert "alexnet-owt-7be5be79.pth" in reason and str(empty_torch_home) in reason
    assert not empty_torch_home.exists() or not any(empty_torch_home.iterdir())  # nothing was downloaded


def _write_fake_alexnet_cache(checkpoints, seed=0):
    """A features-only alexnet checkpoint with random weights, named as torchvision caches it."""
    import lpips

    torch.manual_seed(seed)
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    state = {}
    for i in range(1, reference.net.N_slices + 1):
        for index, module in getattr(reference.net, f"slice{i}").named_children():
            for name, param in module.named_parameters(recurse=False):
                state[f"features.{index}.{name}"] = param.detach().clone()
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, checkpoints / "alexnet-owt-7be5be79.pth")
    return reference


def test_lpips_loads_cached_backbone_and_scales_to_minus_one_one(empty_torch_home, pair):
    restored, sharp = pair
    reference = _write_fake_alexnet_cache(empty_torch_home)
    metric = LPIPSMetric("alex", allow_download=False)

    def to_tensor(img):
        return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1.0

    with torch.no_grad():
        expected = float(reference(to_tensor(restored), to_tensor(sharp)).item())
    assert metric(restored, sharp) == pytest.approx(expected, rel=1e-5)
    assert metric(sharp, sharp) == pytest.approx(0.0, abs=1e-6)
    assert metric(restored, sharp) > 0


def test_dists_unavailable_names_missing_files(empty_torch_home):
    with pytest.raises(MetricUnavailable) as info:
        DISTSMetric(allow_download=False)
    reason = str(info.value)
    assert "DISTS_weights.pt" in reason and "vgg16-397923af.pth" in reason


def test_dists_runs_with_local_weights(empty_torch_home, tmp_path, pair):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["D"])
    empty_torch_home.mkdir(parents=True, exist_ok=True)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, empty_torch_home / "vgg16-397923af.pth")
    weights = tmp_path / "dists_alpha_beta.pt"
    torch.save({"alpha": torch.full((1, 1475, 1, 1), 0.1), "beta": torch.full((1, 1475, 1, 1), 0.2)}, weights)

    metric = DISTSMetric(weights_path=weights, allow_download=False)
    restored, sharp = pair
    assert metric(sharp, sharp) == pytest.approx(0.0, abs=1e-5)
    assert metric(restored, sharp) > 1e-3
    # the VGG weights were really loaded (a fresh random VGG gives another value)
    loaded = metric.model.stages[0][0].weight
    assert torch.equal(loaded, features[0].weight)

    torch.save({"alpha": torch.ones(1, 10, 1, 1), "beta": torch.ones(1, 10, 1, 1)}, weights)
    with pytest.raises(MetricUnavailable, match="1475"):
        DISTSMetric(weights_path=weights, allow_download=False)


def test_build_perceptual_metrics_degrades_per_metric(empty_torch_home):
    _write_fake_alexnet_cache(empty_torch_home)
    available, unavailable = build_perceptual_metrics("alex", dists=True, allow_download=False)
    assert list(available) == ["lpips"]
    assert "DISTS" in unavailable["dists"]
    available, unavailable = build_perceptual_metrics("alex", dists=False, allow_download=False)
    assert "disabled" in unavailable["dists"]


def test_downloads_allowed_follows_offline_flags(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FIDEDIFF_OFFLINE", raising=False)
    assert metrics.downloads_allowed()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not metrics.downloads_allowed()
