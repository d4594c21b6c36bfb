"""Gradient checkpointing of what training backpropagates through besides the UNet and the ControlNet: the stage-1
discriminator (a copy of the UNet encoder) and the frozen VAE decoder, one layer at a time. Same gradients as
without; fewer tensors kept (the discriminator) or one layer recomputed at a time (the decoder)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from training_saved_activations import SavedTensorCounter  # noqa: E402

from fidediff_pipeline.presets import build_unet  # noqa: E402
from fidediff_pipeline.training_utils import LatentDiscriminator, enable_vae_decoder_checkpointing  # noqa: E402


def saved_bytes(fn):
    """``fn()``'s result and the bytes of the distinct storages autograd keeps for the backward pass while it runs
    (the counter of benchmarks/training_saved_activations.py)."""
    counter = SavedTensorCounter()
    out = counter.record(fn)
    return out, sum(counter.bytes.values())


def test_discriminator_checkpointing_keeps_the_gradients_and_saves_far_fewer_tensors():
    torch.manual_seed(0)
    discriminator = LatentDiscriminator(build_unet("tiny"))
    latents = torch.randn(2, discriminator.conv_in.in_channels, 32, 32)

    def gradients():
        x = latents.clone().requires_grad_()
        logits, kept = saved_bytes(lambda: discriminator(x))
        logits.square().mean().backward()
        grads = [x.grad] + [p.grad.clone() for p in discriminator.parameters()]
        discriminator.zero_grad(set_to_none=True)
        return grads, kept

    assert not discriminator.is_gradient_checkpointing
    plain, kept_plain = gradients()
    discriminator.enable_gradient_checkpointing()
    assert discriminator.is_gradient_checkpointing
    checkpointed, kept_checkpointed = gradients()
    assert len(plain) == len(checkpointed)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert kept_checkpointed < 0.5 * kept_plain


def _decoder_events(vae, checkpointing):
    """Gradient of a decoded image's loss with respect to the latent, and the order in which the last up block's
    ResNet layers started a forward pass (f, a recomputation) and ran backward (b) during the backward pass."""
    if checkpointing == "diffusers":
        vae.enable_gradient_checkpointing()
    elif checkpointing == "by layer":
        enable_vae_decoder_checkpointing(vae)
    events, in_backward = [], [False]
    resnets = vae.decoder.up_blocks[-1].resnets
    handles = []
    for index, resnet in enumerate(resnets):
        handles.append(resnet.register_forward_pre_hook(  # (PyTorch stops a recomputation once it has what the
            lambda m, a, i=index: events.append(f"f{i}") if in_backward[0] else None))  # backward needs: pre-hooks
        handles.append(resnet.register_full_backward_hook(lambda m, gi, go, i=index: events.append(f"b{i}")))
    latent = torch.randn(1, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    latent.requires_grad_()
    image = vae.decode(latent).sample
    in_backward[0] = True
    image.square().mean().backward()
    for handle in handles:
        handle.remove()
    return latent.grad, events


def test_vae_decoder_checkpointing_by_layer_keeps_gradients_and_recomputes_one_layer_at_a_time(small_kl_vae):
    plain, events = _decoder_events(small_kl_vae(seed=3).requires_grad_(False), None)
    assert [e for e in events if e.startswith("f")] == []  # nothing recomputed
    block, block_events = _decoder_events(small_kl_vae(seed=3).requires_grad_(False), "diffusers")
    by_layer, layer_events = _decoder_events(small_kl_vae(seed=3).requires_grad_(False), "by layer")
    torch.testing.assert_close(block, plain, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(by_layer, plain, rtol=1e-5, atol=1e-7)
    last = len(small_kl_vae().decoder.up_blocks[-1].resnets) - 1
    assert last >= 1
    # diffusers recomputes the block from its first layer on before any of its layers' backward; by layer, each
    # layer is recomputed just before its own backward
    assert block_events[:last + 2] == [f"f{i}" for i in range(last + 1)] + [f"b{last}"]
    assert layer_events == [e for i in range(last, -1, -1) for e in (f"f{i}", f"b{i}")]


def test_vae_decoder_checkpointing_on_autoencoder_tiny_keeps_diffusers_own():
    from fidediff_pipeline.presets import build_vae

    torch.manual_seed(0)
    vae = build_vae("tiny").requires_grad_(False)
    latent = torch.randn(1, vae.config.latent_channels, 8, 8, requires_grad=True)
    vae.decode(latent).sample.mean().backward()
    plain = latent.grad.clone()
    latent.grad = None
    enable_vae_decoder_checkpointing(vae)
    assert vae.decoder.gradient_checkpointing
    vae.decode(latent).sample.mean().backward()
    torch.testing.assert_close(latent.grad, plain, rtol=1e-5, atol=1e-7)
