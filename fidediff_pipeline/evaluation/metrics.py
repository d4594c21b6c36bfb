"""Full-reference image metrics, computed the way the motion-deblurring literature computes them.

All pixel metrics take two RGB images as ``uint8`` arrays ``[H, W, 3]`` in ``[0, 255]`` (float arrays in
``[0, 1]`` and PIL images are converted by rounding, exactly as saving a PNG would). There is no border
crop and no Y-channel conversion: the GoPro / HIDE / RealBlur tables are computed on RGB.

* :func:`psnr`: MATLAB ``psnr`` / ``skimage.metrics.peak_signal_noise_ratio`` with ``data_range=255``.
* Two SSIM variants, which give *different* numbers on the same pair:

  - :func:`ssim_matlab3d`: MATLAB ``ssim(A, ref)`` on an RGB array, which treats the image as a 3-D volume
    filtered by an 11x11x11 Gaussian (sigma 1.5, replicate padding) and averages the whole SSIM map.
    This is what the widely copied GoPro/HIDE script (``evaluate_gopro_hide.m``) reports, and NAFNet's
    python port of it is ``_ssim_3d``. **The paper comparison uses this variant for GoPro and HIDE.**
  - :func:`ssim_skimage`: ``skimage.metrics.structural_similarity(channel_axis=-1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=255)``: per-channel 2-D SSIM, mean over channels,
    borders of 5 px dropped. This is what python-only evaluations usually report.

* RealBlur's protocol (ECC alignment before PSNR/SSIM) lives in :mod:`fidediff_pipeline.evaluation.realblur`.
* :class:`LPIPSMetric` (the ``lpips`` package, AlexNet by default, inputs scaled to ``[-1, 1]``) and
  :class:`DISTSMetric` (Ding et al. 2020, VGG16 + learned alpha/beta, inputs in ``[0, 1]``). Their weights
  are read from local files only (or, for the torchvision backbones, downloaded by torchvision when
  downloads are allowed); where a file is missing they raise :class:`MetricUnavailable` whose message
  names the file and where to put it, so an evaluation can go on without them.

Example:
    >>> import numpy as np
    >>> from fidediff_pipeline.evaluation.metrics import psnr, ssim_matlab3d, ssim_skimage
    >>> a = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    >>> b = np.clip(a.astype(int) + 5, 0, 255).astype(np.uint8)
    >>> round(psnr(a, b), 2) > 30, ssim_matlab3d(a, a)
    (True, 1.0)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

# Names of the metric columns, as written in CSV / JSON files.
SSIM_VARIANT_DESCRIPTIONS = {
    "ssim_matlab3d": (
        "MATLAB ssim on the RGB array as a 3-D volume (11x11x11 Gaussian, sigma 1.5, replicate padding, "
        "mean of the full map); the GoPro/HIDE evaluate_gopro_hide.m script, NAFNet's _ssim_3d"
    ),
    "ssim_skimage": (
        "skimage.metrics.structural_similarity(channel_axis=-1, gaussian_weights=True, sigma=1.5, "
        "use_sample_covariance=False, data_range=255): per-channel 2-D SSIM, 5 px border excluded"
    ),
}
PSNR_DESCRIPTION = "PSNR on uint8 RGB, data_range 255, no crop, no Y channel (MATLAB psnr / skimage)"


# --------------------------------------------------------------------------------------------------------
# Pixel metrics
# --------------------------------------------------------------------------------------------------------


def as_uint8_rgb(image) -> np.ndarray:
    """Return ``image`` as a ``uint8`` ``[H, W, 3]`` array.

    Accepts a ``uint8`` array, a float array in ``[0, 1]`` (clipped, then rounded as a PNG writer would),
    a PIL image, or a ``[3, H, W]`` / ``[1, 3, H, W]`` torch tensor in ``[0, 1]``.

    Example:
        >>> as_uint8_rgb(np.full((2, 2, 3), 0.5, dtype=np.float32))[0, 0].tolist()
        [128, 128, 128]
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if hasattr(image, "detach"):  # torch tensor, channels first
        tensor = image.detach().float().cpu()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        image = tensor.permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB image [H, W, 3]; got an array of shape {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"expected uint8 in [0, 255] or float in [0, 1]; got dtype {array.dtype}")


def _check_pair(img1, img2) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_uint8_rgb(img1), as_uint8_rgb(img2)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    return a, b


def psnr(img1, img2, data_range: float = 255.0) -> float:
    """PSNR in dB of two uint8 RGB images over all pixels and channels; ``inf`` for identical images.

    Equal to ``skimage.metrics.peak_signal_noise_ratio(a, b, data_range=255)`` and MATLAB's ``psnr``.

    Example:
        >>> a = np.zeros((4, 4, 3), np.uint8); b = a.copy(); b[0, 0, 0] = 255
        >>> round(psnr(a, b), 3)
        16.812
    """
    a, b = _check_pair(img1, img2)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim_skimage(img1, img2) -> float:
    """scikit-image's SSIM with the settings the deblurring literature's python scripts use.

    ``structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255)`` on uint8 RGB: 2-D SSIM per channel, averaged.

    Example:
        >>> a = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        >>> ssim_skimage(a, a)
        1.0
    """
    from skimage.metrics import structural_similarity

    a, b = _check_pair(img1, img2)
    return float(
        structural_similarity(
            a,
            b,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        )
    )


def gaussian_window_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian (same taps as ``cv2.getGaussianKernel(11, 1.5)`` and MATLAB's ``fspecial``)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    window = np.exp(-(x**2) / (2.0 * sigma**2))
    return window / window.sum()


def _gaussian_filter_3d(volume: np.ndarray, window: np.ndarray) -> np.ndarray:
    # The 11x11x11 Gaussian is separable, so three 1-D passes equal one 3-D convolution. mode="nearest"
    # is replicate padding (MATLAB imgaussfilt3 'replicate', NAFNet's Conv3d padding_mode='replicate');
    # along the 3-sample channel axis the 11 taps therefore mostly see the edge channels repeated.
    from scipy.ndimage import correlate1d

    out = volume
    for axis in range(volume.ndim):
        out = correlate1d(out, window, axis=axis, mode="nearest")
    return out


def ssim_matlab3d(img1, img2, data_range: float = 255.0) -> float:
    """SSIM as MATLAB's ``ssim(A, ref)`` computes it on RGB arrays: a 3-D volume SSIM.

    MATLAB treats an ``M x N x 3`` array as a volume: local statistics come from an 11x11x11 Gaussian
    (sigma 1.5) with replicate padding over (H, W, C), and the result is the mean of the whole SSIM map
    (no border dropped). ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``L = 255``. This is the SSIM of the
    GoPro/HIDE tables (Restormer's ``evaluate_gopro_hide.m``); NAFNet ports it as ``_ssim_3d`` (float32 on
    GPU; here float64, as MATLAB computes in double).

    Example:
        >>> a = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        >>> ssim_matlab3d(a, a)
        1.0
    """
    a, b = _check_pair(img1, img2)
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    window = gaussian_window_1d(11, 1.5)

    mu_x = _gaussian_filter_3d(x, window)
    mu_y = _gaussian_filter_3d(y, window)
    sigma_xx = _gaussian_filter_3d(x * x, window) - mu_x**2
    sigma_yy = _gaussian_filter_3d(y * y, window) - mu_y**2
    sigma_xy = _gaussian_filter_3d(x * y, window) - mu_x * mu_y

    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (sigma_xx + sigma_yy + c2)
    )
    return float(ssim_map.mean())


# --------------------------------------------------------------------------------------------------------
# Perceptual metrics (LPIPS, DISTS): weights from local files, clear "unavailable" reasons otherwise
# --------------------------------------------------------------------------------------------------------


class MetricUnavailable(RuntimeError):
    """A metric cannot run here; ``str(err)`` says why and how to fix it (e.g. which file to put where)."""


def downloads_allowed() -> bool:
    """False when the environment asks for offline operation (``HF_HUB_OFFLINE`` / ``FIDEDIFF_OFFLINE``)."""
    for name in ("HF_HUB_OFFLINE", "FIDEDIFF_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    return True


def torch_hub_checkpoint_dir() -> Path:
    """Where torchvision caches backbone weights: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_weights_url(arch: str) -> str:
    import torchvision

    weights = {
        "alexnet": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
        "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
    }[arch]
    return weights.url


def load_torchvision_backbone(arch: str, allow_download: bool | None = None) -> dict:
    """Return the ImageNet state dict of torchvision's ``alexnet`` or ``vgg16``, from the local torch cache.

    The file is the one torchvision itself caches (e.g. ``alexnet-owt-7be5be79.pth`` under
    :func:`torch_hub_checkpoint_dir`); it is read with ``torch.load(weights_only=True)``. When it is missing
    it is downloaded by torch only if ``allow_download`` (default: :func:`downloads_allowed`); otherwise, or if
    the download fails, :class:`MetricUnavailable` names the missing file, where to put it and where to get it.
    """
    import torch

    try:
        url = _torchvision_weights_url(arch)
    except ImportError as err:  # torchvision missing or broken (see DESIGN: CPU torch vs registry torchvision)
        raise MetricUnavailable(f"torchvision cannot be imported ({err}); install torchvision matching torch") from err
    filename = url.rsplit("/", 1)[-1]
    path = torch_hub_checkpoint_dir() / filename
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt / truncated download
            raise MetricUnavailable(f"{arch} backbone weights at {path} cannot be read ({err}); delete and re-fetch") from err
    if allow_download is None:
        allow_download = downloads_allowed()
    where = f"missing {arch} backbone weights: {path} does not exist; put {filename} (from {url}) there"
    if not allow_download:
        raise MetricUnavailable(f"{where} (downloads are off: HF_HUB_OFFLINE/FIDEDIFF_OFFLINE is set)")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True, progress=True)
    except Exception as err:
        raise MetricUnavailable(f"{where}; the download failed: {type(err).__name__}: {err}") from err


def _load_feature_slices(slices: Iterable, state_dict: dict, arch: str) -> None:
    """Copy ``features.<i>.*`` weights of a torchvision backbone into modules named ``"<i>"`` in ``slices``.

    ``lpips`` and DISTS both split ``torchvision.models.<arch>().features`` into stages whose child modules
    keep their original index as their name; that index maps them back to the torchvision keys.
    """
    import torch

    copied = 0
    expected = 0
    with torch.no_grad():
        for stage in slices:
            for index, module in stage.named_children():
                for name, param in list(module.named_parameters(recurse=False)):
                    expected += 1
                    key = f"features.{index}.{name}"
                    if key not in state_dict or state_dict[key].shape != param.shape:
                        raise MetricUnavailable(
                            f"{arch} backbone weights do not match torchvision's {arch}: {key} missing or misshapen"
                        )
                    param.copy_(state_dict[key].to(param.dtype))
                    copied += 1
    if copied == 0 or copied != expected:
        raise MetricUnavailable(f"{arch} backbone weights: copied {copied} of {expected} tensors")


def _to_batch(image, device, dtype) -> "torch.Tensor":
    import torch

    array = as_uint8_rgb(image)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
    return tensor.to(device=device, dtype=dtype) / 255.0


class LPIPSMetric:
    """LPIPS (Zhang et al. 2018) from the ``lpips`` package, on uint8 RGB scaled to ``[-1, 1]``.

    The paper does not say which LPIPS network it used; AlexNet (``net="alex"``) is the package's and the
    field's default, ``net="vgg"`` is offered. The package ships only its linear heads; the backbone comes
    from torchvision's cache (see :func:`load_torchvision_backbone`), so nothing is downloaded when offline.

    Example:
        >>> metric = LPIPSMetric(net="alex")          # doctest: +SKIP
        >>> metric(restored_uint8, sharp_uint8)       # doctest: +SKIP
        0.0831
    """

    def __init__(self, net: str = "alex", device: str = "cpu", allow_download: bool | None = None):
        if net not in ("alex", "vgg"):
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg'; got {net!r}")
        try:
            import lpips
        except Exception as err:  # ImportError, or torchvision's operator error on a mismatched torch
            raise MetricUnavailable(f"the lpips package cannot be imported ({err}); pip install lpips") from err
        import torch

        arch = {"alex": "alexnet", "vgg": "vgg16"}[net]
        state = load_torchvision_backbone(arch, allow_download=allow_download)
        # pnet_rand=True: build the backbone without torchvision's download, then load the cached weights.
        with warnings.catch_warnings():  # lpips still calls torchvision with the deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        _load_feature_slices([getattr(model.net, f"slice{i}") for i in range(1, model.net.N_slices + 1)], state, arch)
        self.net = net
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.description = f"LPIPS v0.1 ({'AlexNet' if net == 'alex' else 'VGG16'}, lpips package), inputs in [-1, 1]"

    def __call__(self, img1, img2) -> float:
        import torch

        a, b = _check_pair(img1, img2)
        x = _to_batch(a, self.device, torch.float32) * 2.0 - 1.0
        y = _to_batch(b, self.device, torch.float32) * 2.0 - 1.0
        with torch.no_grad():
            return float(self.model(x, y).mean().item())


def _dists_weight_candidates(explicit: str | os.PathLike | None) -> list[Path]:
    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get("FIDEDIFF_DISTS_WEIGHTS"):
        candidates.append(Path(os.environ["FIDEDIFF_DISTS_WEIGHTS"]))
    hub = torch_hub_checkpoint_dir()
    # piq's download name, and a plain name for a copy of DISTS_pytorch/weights.pt.
    candidates += [hub / "DISTS_weights.pt", hub / "dists_weights.pt"]
    try:  # the authors' pip package (DISTS_pytorch) ships weights.pt next to its module
        import importlib.util

        spec = importlib.util.find_spec("DISTS_pytorch")
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin).parent / "weights.pt")
    except (ImportError, ValueError):
        pass
    return candidates


def load_dists_alpha_beta(path: str | os.PathLike | None = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Find and read DISTS's learned ``alpha`` / ``beta`` (each ``[1, 1475, 1, 1]``) from local files only.

    Looks at ``path``, ``$FIDEDIFF_DISTS_WEIGHTS``, ``<torch hub>/checkpoints/DISTS_weights.pt`` or
    ``dists_weights.pt``, and the ``DISTS_pytorch`` package's ``weights.pt``. ``.safetensors`` files are read
    with safetensors, others with ``torch.load(weights_only=True)``; either must hold ``alpha`` and ``beta``.
    """
    import torch

    candidates = _dists_weight_candidates(path)
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            if candidate.suffix == ".safetensors":
                from safetensors.torch import load_file

                weights = load_file(str(candidate))
            else:
                weights = torch.load(candidate, map_location="cpu", weights_only=True)
            alpha, beta = weights["alpha"].float(), weights["beta"].float()
        except Exception as err:
            raise MetricUnavailable(f"DISTS weights at {candidate} cannot be read as {{alpha, beta}}: {err}") from err
        if alpha.numel() != sum(_DISTS_CHANNELS) or beta.numel() != sum(_DISTS_CHANNELS):
            raise MetricUnavailable(
                f"DISTS weights at {candidate}: alpha/beta must have {sum(_DISTS_CHANNELS)} entries each"
            )
        return alpha.reshape(1, -1, 1, 1), beta.reshape(1, -1, 1, 1)
    looked = ", ".join(str(c) for c in candidates)
    raise MetricUnavailable(
        "missing DISTS alpha/beta weights (no package ships them offline); looked in: "
        f"{looked}. Put the DISTS authors' weights.pt (DISTS_pytorch/weights.pt) at "
        f"{torch_hub_checkpoint_dir() / 'DISTS_weights.pt'} or pass --dists-weights PATH"
    )


_DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
# Indices of the max-pool layers of torchvision's vgg16().features that DISTS replaces by L2 pooling.
_DISTS_POOL_INDICES = (4, 9, 16, 23)


def _build_dists_network(vgg_state: dict, alpha, beta):
    """DISTS (Ding et al. 2020, the authors' DISTS_pt.py): VGG16 stages with L2 pooling, alpha/beta weights."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torchvision.models.vgg import cfgs, make_layers

    class L2Pooling(nn.Module):
        # Hanning(5)[1:-1] outer product, normalised; stride 2, padding 1: the paper's L2 pooling.
        def __init__(self, channels: int):
            super().__init__()
            a = np.hanning(5)[1:-1]
            g = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
            self.register_buffer("filter", (g / g.sum())[None, None].repeat(channels, 1, 1, 1))

        def forward(self, x):
            out = F.conv2d(x**2, self.filter, stride=2, padding=1, groups=x.shape[1])
            return (out + 1e-12).sqrt()

    class DISTSNetwork(nn.Module):
        def __init__(self):
            super().__init__()
            # make_layers builds only vgg16's `features` (no 120M-parameter classifier to initialise).
            features = make_layers(cfgs["D"], batch_norm=False)
            bounds = [(0, 4), (5, 9), (10, 16), (17, 23), (24, 30)]
            pool_channels = [None, 64, 128, 256, 512]
            self.stages = nn.ModuleList()
            for (start, end), channels in zip(bounds, pool_channels):
                stage = nn.Sequential()
                if channels is not None:
                    stage.add_module(str(start - 1), L2Pooling(channels))
                for index in range(start, end):
                    stage.add_module(str(index), features[index])
                self.stages.append(stage)
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1))
            self.register_buffer("alpha", alpha.clone())
            self.register_buffer("beta", beta.clone())

        def features(self, x):
            feats = [x]
            h = (x - self.mean) / self.std
            for stage in self.stages:
                h = stage(h)
                feats.append(h)
            return feats

        def forward(self, x, y):
            c1 = c2 = 1e-6
            w_sum = self.alpha.sum() + self.beta.sum()
            alphas = torch.split(self.alpha / w_sum, list(_DISTS_CHANNELS), dim=1)
            betas = torch.split(self.beta / w_sum, list(_DISTS_CHANNELS), dim=1)
            dist1 = dist2 = 0.0
            for fx, fy, alpha_k, beta_k in zip(self.features(x), self.features(y), alphas, betas):
                x_mean = fx.mean([2, 3], keepdim=True)
                y_mean = fy.mean([2, 3], keepdim=True)
                s1 = (2 * x_mean * y_mean + c1) / (x_mean**2 + y_mean**2 + c1)
                dist1 = dist1 + (alpha_k * s1).sum(1, keepdim=True)
                x_var = ((fx - x_mean) ** 2).mean([2, 3], keepdim=True)
                y_var = ((fy - y_mean) ** 2).mean([2, 3], keepdim=True)
                xy_cov = (fx * fy).mean([2, 3], keepdim=True) - x_mean * y_mean
                s2 = (2 * xy_cov + c2) / (x_var + y_var + c2)
                dist2 = dist2 + (beta_k * s2).sum(1, keepdim=True)
            return 1 - (dist1 + dist2).flatten()

    network = DISTSNetwork()
    _load_feature_slices(network.stages, vgg_state, "vgg16")
    return network.eval().requires_grad_(False)


class DISTSMetric:
    """DISTS (Ding et al. 2020) on uint8 RGB scaled to ``[0, 1]``, full resolution (no resize).

    Re-implemented from the authors' ``DISTS_pt.py`` with torchvision's VGG16 layout; the VGG16 ImageNet
    weights come from the torch cache (:func:`load_torchvision_backbone`) and alpha/beta from a local file
    (:func:`load_dists_alpha_beta`). Raises :class:`MetricUnavailable` naming every missing file.

    Example:
        >>> metric = DISTSMetric(weights_path="weights.pt")   # doctest: +SKIP
        >>> metric(restored_uint8, sharp_uint8)               # doctest: +SKIP
        0.0525
    """

    def __init__(self, device: str = "cpu", weights_path=None, allow_download: bool | None = None):
        import torch

        problems = []
        alpha = beta = vgg_state = None
        try:
            alpha, beta = load_dists_alpha_beta(weights_path)
        except MetricUnavailable as err:
            problems.append(str(err))
        try:
            vgg_state = load_torchvision_backbone("vgg16", allow_download=allow_download)
        except MetricUnavailable as err:
            problems.append(str(err))
        if problems:
            raise MetricUnavailable("; ".join(problems))
        self.device = torch.device(device)
        self.model = _build_dists_network(vgg_state, alpha, beta).to(self.device)
        self.description = "DISTS (Ding et al. 2020; VGG16 + alpha/beta, inputs in [0, 1], full resolution)"

    def __call__(self, img1, img2) -> float:
        import torch

        a, b = _check_pair(img1, img2)
        with torch.no_grad():
            return float(self.model(_to_batch(a, self.device, torch.float32), _to_batch(b, self.device, torch.float32)).mean())


def build_perceptual_metrics(
    lpips_net: str = "alex",
    dists: bool = True,
    device: str = "cpu",
    dists_weights=None,
    allow_download: bool | None = None,
) -> tuple[dict[str, Callable], dict[str, str]]:
    """Build LPIPS and DISTS; return ``(available, unavailable)``: name -> metric, name -> reason.

    Example:
        >>> available, unavailable = build_perceptual_metrics(allow_download=False)   # doctest: +SKIP
        >>> unavailable                                                               # doctest: +SKIP
        {'dists': 'missing DISTS alpha/beta weights ...'}
    """
    available: dict[str, Callable] = {}
    unavailable: dict[str, str] = {}
    try:
        available["lpips"] = LPIPSMetric(lpips_net, device=device, allow_download=allow_download)
    except MetricUnavailable as err:
        unavailable["lpips"] = str(err)
    if dists:
        try:
            available["dists"] = DISTSMetric(device=device, weights_path=dists_weights, allow_download=allow_download)
        except MetricUnavailable as err:
            unavailable["dists"] = str(err)
    else:
        unavailable["dists"] = "disabled (--no-dists)"
    return available, unavailable
