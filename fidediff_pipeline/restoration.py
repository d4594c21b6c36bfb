"""FideDiff's one-step restoration maths, shared by the pipeline (inference) and the training scripts.

The pipeline's one-step restoration and training use exactly these functions, so training optimises the model
that inference runs:

    x in [-1, 1] --(upsample_for_vae)--> encode: z_t = mode(q(z|x)) * scaling_factor
    eps = unet(z_t, t, c [+ Kernel ControlNet residuals])
    z0 = (z_t - sqrt(1 - a_t) * eps) / sqrt(a_t)                    (predict_original_latents, paper eq. 8)
    decode(z0 / scaling_factor) --(resize_from_vae)--> restored image in [-1, 1]

Training-only pieces (the GAN discriminator) are in :mod:`fidediff_pipeline.training_utils`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def upsample_for_vae(x: torch.Tensor, upscale_factor: int) -> torch.Tensor:
    """The ``d = 8 / upscale_factor`` trick: bicubic upsampling before the VAE (``x`` in [-1, 1])."""
    if upscale_factor > 1:
        return F.interpolate(x, scale_factor=upscale_factor, mode="bicubic", align_corners=False).clamp(-1, 1)
    return x


def resize_from_vae(decoded: torch.Tensor, size: tuple[int, int], upscale_factor: int) -> torch.Tensor:
    """Back to the input size after decoding (antialiased bicubic); identity when nothing was upsampled."""
    if upscale_factor > 1:
        return F.interpolate(decoded.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    return decoded


def gaussian_lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` (reflect padding, or replicate for tiny images)."""
    radius = max(int(round(3 * sigma)), 1)
    coords = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-(coords**2) / (2 * sigma * sigma))
    kernel = (kernel / kernel.sum()).to(x.dtype)
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def low_frequency_transfer(output: torch.Tensor, reference: torch.Tensor, sigma: float) -> torch.Tensor:
    """Colour fix: keep ``output``'s detail, take the lowest frequencies from ``reference`` (the blurry input).

    ``output - lowpass(output) + lowpass(reference)`` with a Gaussian of ``sigma`` pixels. Motion blur (a
    normalised kernel) leaves an image's mean and its lowest frequencies almost unchanged, so the blurry input
    is a faithful source of colour and brightness; this removes a VAE's colour drift, like the wavelet colour
    fix of StableSR / OSEDiff. ``sigma`` should be well above the blur length so that the band taken from the
    input is not blurred itself.
    """
    # The low-pass is linear: one blur of the difference instead of two (same result to float rounding).
    return output + gaussian_lowpass(reference.to(output.dtype) - output, sigma)


def vae_encode_mode(vae, x: torch.Tensor) -> torch.Tensor:
    """Unscaled latents of ``x`` (in [-1, 1]): the posterior mode of an ``AutoencoderKL``, or the deterministic
    latents of an ``AutoencoderTiny`` (which has no posterior)."""
    encoded = vae.encode(x)
    return encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents


def encode_latents(vae, x: torch.Tensor, upscale_factor: int = 1) -> torch.Tensor:
    """``z = mode(q(z | upsample(x))) * scaling_factor``: deterministic, as at inference."""
    return vae_encode_mode(vae, upsample_for_vae(x, upscale_factor)) * vae.config.scaling_factor


def decode_latents(vae, z0: torch.Tensor, size: tuple[int, int], upscale_factor: int = 1) -> torch.Tensor:
    """Decode ``z0`` (scaled latents) to an image in (about) [-1, 1] of ``size``."""
    decoded = vae.decode(z0 / vae.config.scaling_factor).sample
    return resize_from_vae(decoded, size, upscale_factor)


def predict_original_latents(
    z_t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor | int
) -> torch.Tensor:
    """Paper eq. 8 solved for ``z0``: ``(z_t - sqrt(1 - a_t) * eps) / sqrt(a_t)``, in float32.

    ``timesteps`` is an int (one ``t`` for the batch) or a ``[B]`` tensor (one per sample).
    """
    alphas_cumprod = alphas_cumprod.to(device=z_t.device, dtype=torch.float32)
    if isinstance(timesteps, torch.Tensor) and timesteps.ndim > 0:
        alpha = alphas_cumprod[timesteps.to(z_t.device).long()].view(-1, *([1] * (z_t.ndim - 1)))
    else:
        alpha = alphas_cumprod[int(timesteps)]
    return (z_t.float() - (1 - alpha).sqrt() * eps.float()) / alpha.sqrt()


@dataclass
class RestoreOutput:
    """What :func:`restore` returns: the restored image, the latents it went through, and the KCN outputs."""

    image: torch.Tensor  # [B, 3, H, W], (about) [-1, 1]
    z_t: torch.Tensor
    z0: torch.Tensor
    eps: torch.Tensor
    kernels: torch.Tensor | None = None
    predicted_timestep: torch.Tensor | None = None


def restore(
    vae,
    unet,
    alphas_cumprod: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    upscale_factor: int = 1,
    kernel_controlnet=None,
    conditioning_scale: float = 1.0,
    z_t: torch.Tensor | None = None,
    color_fix_sigma: float | None = None,
    kernels: torch.Tensor | None = None,
) -> RestoreOutput:
    """FideDiff's one-step restoration of a batch, differentiable (the training forward pass).

    Args:
        x: blurry images ``[B, 3, H, W]`` in [-1, 1]; ``H * upscale_factor`` and ``W * upscale_factor`` must be
            multiples of the VAE factor (training crops are chosen so).
        timesteps: ``[B]`` long, the blur level of each sample (``t = (n - 1) * 20``).
        encoder_hidden_states: the learned embedding, ``[B, tokens, dim]``.
        kernel_controlnet: optional; its kernels come from ``x`` (image space, not upsampled) as in the pipeline.
        z_t: precomputed ``encode_latents(vae, x, upscale_factor)`` (e.g. under ``no_grad`` with a frozen VAE).
        color_fix_sigma: apply :func:`low_frequency_transfer` from ``x`` (as the pipeline does when its config
            sets ``color_fix_sigma``).
        kernels: the Kernel ControlNet's kernels for ``x``, already estimated (e.g. to pick the UNet's t from their
            t-regressor first); then ``predicted_timestep`` of the output is ``None``.
    """
    if z_t is None:
        z_t = encode_latents(vae, x, upscale_factor)
    down_res = mid_res = predicted = None  # not `kernels`: given ones are used as they are
    if kernel_controlnet is not None:
        kout = kernel_controlnet(
            image=x, sample=z_t, timestep=timesteps, encoder_hidden_states=encoder_hidden_states,
            kernels=kernels, conditioning_scale=conditioning_scale,
        )  # fmt: skip
        down_res, mid_res = kout.down_block_res_samples, kout.mid_block_res_sample
        kernels, predicted = kout.kernels, kout.predicted_timestep
    eps = unet(
        z_t, timesteps, encoder_hidden_states=encoder_hidden_states,
        down_block_additional_residuals=down_res, mid_block_additional_residual=mid_res,
    ).sample  # fmt: skip
    z0 = predict_original_latents(z_t, eps, alphas_cumprod, timesteps)
    image = decode_latents(vae, z0.to(z_t.dtype), tuple(x.shape[-2:]), upscale_factor)
    if color_fix_sigma:
        image = low_frequency_transfer(image.float(), x.float(), color_fix_sigma)
    return RestoreOutput(image=image, z_t=z_t, z0=z0, eps=eps, kernels=kernels, predicted_timestep=predicted)
