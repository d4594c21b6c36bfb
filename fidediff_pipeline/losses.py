"""Training losses of FideDiff (paper Sec. 4.3): EA-LPIPS, the GAN losses, reblur and time regression.

EA-LPIPS (edge-aware LPIPS). The paper names it without giving the operator; here it is

    EA-LPIPS(x, y) = LPIPS(x, y) + edge_weight * L1(sobel(x), sobel(y))

where ``sobel`` is the per-channel Sobel gradient magnitude ``sqrt(gx^2 + gy^2 + 1e-6)`` of images in [-1, 1]
(3x3 Sobel, replicate padding). An L1 on edge maps (rather than LPIPS on edge maps) was chosen because it needs
no pretrained network, so the edge term also works where the LPIPS backbone cannot be downloaded (``lpips_weight
0``), and because it directly rewards sharp, well-placed edges, which is what deblurring needs.

LPIPS comes from the ``lpips`` package. Its linear heads ship with the package; the backbone (VGG16 or AlexNet)
is torchvision's ImageNet checkpoint, downloaded to the torch hub cache. :func:`check_lpips_backbone` says, before
any training, which file is missing and where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .kernel_ops import (apply_block_kernels_at_centres, apply_per_pixel_kernels, block_centre_indices,
                         kernel_map_stride)

# torchvision's ImageNet checkpoints that lpips' backbones load (torchvision.models.vgg16 / alexnet).
LPIPS_BACKBONE_FILES = {
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
}


def lpips_backbone_path(net: str = "vgg") -> Path:
    """Where torchvision looks for the LPIPS backbone: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    if net not in LPIPS_BACKBONE_FILES:
        raise ValueError(f"lpips net must be one of {sorted(LPIPS_BACKBONE_FILES)}; got {net!r}")
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net][0]


def check_lpips_backbone(net: str = "vgg") -> None:
    """Raise a clear ``FileNotFoundError`` when the LPIPS backbone is not cached and the machine is offline.

    Called before training starts, so a run never dies after its first step on a failed download.
    """
    path = lpips_backbone_path(net)
    if path.is_file():
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or os.environ.get(
        "FIDEDIFF_OFFLINE", "0"
    ) not in ("0", "")
    url = LPIPS_BACKBONE_FILES[net][1]
    if offline or not _can_reach("download.pytorch.org"):
        raise FileNotFoundError(
            f"the LPIPS {net} backbone is not cached: {path} is missing and this machine is offline. Download "
            f"{url} on a connected machine and copy it to {path} (the torch hub cache, $TORCH_HOME/hub/checkpoints), "
            f"or train without LPIPS: --lpips_weight 0."
        )


def _can_reach(host: str, timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def sobel_edges(image: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude of ``[B, C, H, W]`` images (replicate padding), same shape."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=image.device, dtype=image.dtype)
    weight = torch.stack([kx, kx.t()])[:, None]  # [2, 1, 3, 3]
    c = image.shape[1]
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    grads = F.conv2d(padded.reshape(-1, 1, *padded.shape[-2:]), weight)  # [B*C, 2, H, W]
    magnitude = (grads.pow(2).sum(dim=1) + 1e-6).sqrt()
    return magnitude.view(image.shape[0], c, *image.shape[-2:])


class EALPIPSLoss(nn.Module):
    """EA-LPIPS: ``LPIPS(x, y) + edge_weight * L1(sobel(x), sobel(y))`` for images in [-1, 1] (see module doc).

    Args:
        net: LPIPS backbone, ``"vgg"`` (default, as most restoration papers) or ``"alex"``; ``None`` for the edge
            term only.
        edge_weight: weight of the Sobel-edge L1 term.
        random_backbone: FOR TESTS ONLY: an LPIPS with a randomly initialised backbone (``pnet_rand=True``; the
            linear heads are the real ones). Its values are not a perceptual metric.
    """

    def __init__(self, net: str | None = "vgg", edge_weight: float = 1.0, random_backbone: bool = False):
        super().__init__()
        self.edge_weight = float(edge_weight)
        self.lpips = None
        if net is not None:
            if not random_backbone:
                check_lpips_backbone(net)
            import lpips

            self.lpips = lpips.LPIPS(net=net, pnet_rand=random_backbone, verbose=False)
            self.lpips.requires_grad_(False).eval()

    def lpips_term(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS (0 when no LPIPS network was loaded)."""
        if self.lpips is None:
            return prediction.new_zeros((), dtype=torch.float32)
        return self.lpips(prediction.float(), target.float()).mean()

    @staticmethod
    def edge_term(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 between Sobel-magnitude edge maps."""
        return F.l1_loss(sobel_edges(prediction.float()), sobel_edges(target.float()))

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lpips_term(prediction, target) + self.edge_weight * self.edge_term(prediction, target)


# ------------------------------------------------------------------------------------------------------- GAN
GAN_LOSSES = ("non_saturating", "hinge")


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: str = "non_saturating") -> torch.Tensor:
    """``L_G``. ``non_saturating`` is the paper's eq. 10, ``-log D(z0_hat)`` = ``softplus(-logit)``;
    ``hinge`` is ``-D(z0_hat)``."""
    if kind == "non_saturating":
        return F.softplus(-fake_logits.float()).mean()
    if kind == "hinge":
        return -fake_logits.float().mean()
    raise ValueError(f"gan loss must be one of {GAN_LOSSES}; got {kind!r}")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "non_saturating") -> torch.Tensor:
    """``L_D``. ``non_saturating``: the paper's eq. 11, ``-log D(z_HQ) - log(1 - D(z0_hat))``;
    ``hinge``: ``relu(1 - D(z_HQ)) + relu(1 + D(z0_hat))``."""
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "non_saturating":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    raise ValueError(f"gan loss must be one of {GAN_LOSSES}; got {kind!r}")


# ---------------------------------------------------------------------------------------- reblur and time
def reblur_loss(sharp: torch.Tensor, blurry: torch.Tensor, kernels: torch.Tensor, space: str = "linear") -> torch.Tensor:
    """Paper eq. 12: ``L1(k (*) I_HQ, I_LQ)`` with each pixel's own kernel (images in [0, 1]).

    ``space="linear"`` reblurs in linear light (gamma 2.2), which is how the project's data builders average
    frames; ``"srgb"`` convolves the stored values directly (the paper's plain formula).
    """
    if space not in ("linear", "srgb"):
        raise ValueError(f"reblur space must be 'linear' or 'srgb'; got {space!r}")
    height, width = sharp.shape[-2:]
    apply, target = apply_per_pixel_kernels, blurry.float()
    if kernel_map_stride(height, width, *kernels.shape[-2:]) > 1:
        # A coarse map (kernel_stride > 1): the loss at each block's centre pixel, blurred with the block's
        # kernel. An even subsample of the per-pixel loss at ~1/s^2 of its cost (spreading the map to every
        # pixel was 85% of a kernel-stage training step of the tiny preset).
        rows = block_centre_indices(height, kernels.shape[-2]).to(sharp.device)
        cols = block_centre_indices(width, kernels.shape[-1]).to(sharp.device)
        apply, target = apply_block_kernels_at_centres, target[..., rows, :][..., cols]
    if space == "linear":
        from .data.camera_response import reblur_in_linear_light

        reblurred = reblur_in_linear_light(sharp.float(), kernels.float(), crf="gamma2.2", apply=apply)
    else:
        reblurred = apply(sharp.float(), kernels.float())
    return F.l1_loss(reblurred, target)


TIME_LOSS_NORMS = ("l2", "l1")


def time_regression_loss(predicted: torch.Tensor, target: torch.Tensor, num_train_timesteps: int = 1000,
                         norm: str = "l2") -> torch.Tensor:
    """``L_time``: L2 (the paper's) or L1 between predicted and true ``t``, both divided by ``num_train_timesteps``.

    Where one blur fits several levels, L2 teaches the mean of those levels and L1 their median: the median is what
    minimises the mean absolute error, and at the ends of the training range it is pulled inward less than the mean.
    """
    if norm not in TIME_LOSS_NORMS:
        raise ValueError(f"norm must be one of {TIME_LOSS_NORMS}; got {norm!r}")
    predicted, target = predicted.float() / num_train_timesteps, target.float() / num_train_timesteps
    return F.mse_loss(predicted, target) if norm == "l2" else F.l1_loss(predicted, target)


def frequency_l1_loss(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the 2-D spectra (``rfft2``, orthonormal) of two image batches ``[B, C, H, W]``.

    Not in the FideDiff paper: the frequency-domain term of deblurring networks (MIMO-UNet's FFT loss, also used by
    NAFNet-style recipes). Blur removes high frequencies; a pixel L1 weighs them by their small energy, this term
    weighs every frequency's error equally. Orthonormal scaling keeps it on the scale of a pixel L1.
    """
    a = torch.fft.rfft2(restored.float(), norm="ortho")
    b = torch.fft.rfft2(target.float(), norm="ortho")
    return (a - b).abs().mean()


def _true_kernel_taps(true_kernels: torch.Tensor, m: int) -> torch.Tensor:
    """The builder's true kernels ``[B, M, M]`` as ``[B, m*m, 1, 1]`` taps for an ``m x m`` prediction: centre-cropped
    and renormalised (tails beyond the window cannot be represented anyway)."""
    big = true_kernels.shape[-1]
    if big < m:
        raise ValueError(f"true kernels ({big}x{big}) are smaller than the predicted ones ({m}x{m})")
    start = (big - m) // 2
    crop = true_kernels[:, start: start + m, start: start + m].float()
    crop = crop / crop.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
    return crop.reshape(crop.shape[0], m * m, 1, 1)


def _kernel_moments(kernels: torch.Tensor, m: int) -> torch.Tensor:
    """Centroid and second central moments ``[B, 5, H, W]`` (mean y, mean x, var y, var x, cov xy; in pixels) of
    kernel maps ``[B, m*m, H, W]`` in `kernel_ops`' tap layout."""
    r = m // 2
    offsets = torch.arange(m, device=kernels.device, dtype=torch.float32) - r
    dy = offsets.repeat_interleave(m).view(1, m * m, 1, 1)
    dx = offsets.repeat(m).view(1, m * m, 1, 1)
    k = kernels.float()
    my, mx = (k * dy).sum(1, keepdim=True), (k * dx).sum(1, keepdim=True)
    vy = (k * (dy - my) ** 2).sum(1, keepdim=True)
    vx = (k * (dx - mx) ** 2).sum(1, keepdim=True)
    cxy = (k * (dy - my) * (dx - mx)).sum(1, keepdim=True)
    return torch.cat([my, mx, vy, vx, cxy], dim=1)


def kernel_moment_loss(predicted: torch.Tensor, true_kernels: torch.Tensor) -> torch.Tensor:
    """L1 between the centroid and second moments of every pixel's predicted kernel and its sample's true kernel
    (cropped to ``m`` as in `kernel_supervision_loss`), divided by ``m // 2``.

    Not in the paper. The tap-wise L1 of `kernel_supervision_loss` gives no gradient towards a thin line that
    misses the true one by a pixel, so an estimator trained on it alone settles on one average kernel for every
    blur; the moments (the blur's offset, length and direction) change smoothly as a kernel turns or grows.
    """
    m = int(round(predicted.shape[1] ** 0.5))
    target = _kernel_moments(_true_kernel_taps(true_kernels, m).to(predicted.device), m)
    return (_kernel_moments(predicted, m) - target).abs().sum(dim=1).mean() / max(m // 2, 1)


def kernel_supervision_loss(predicted: torch.Tensor, true_kernels: torch.Tensor) -> torch.Tensor:
    """L1 between every pixel's predicted kernel ``[B, m*m, H, W]`` and its sample's true kernel ``[B, M, M]``.

    Not in the paper (which trains M by reblurring only): with synthetic data the builder knows the true kernel,
    and direct supervision makes M's kernels follow the blur's direction and length. A true kernel larger than
    ``m`` is centre-cropped and renormalised (its tails beyond the window cannot be represented anyway).
    """
    m = int(round(predicted.shape[1] ** 0.5))
    target = _true_kernel_taps(true_kernels, m).to(predicted.device)
    # Summed over taps (a per-pixel L1 distance between distributions, in [0, 2]), averaged over pixels.
    return (predicted.float() - target).abs().sum(dim=1).mean()
