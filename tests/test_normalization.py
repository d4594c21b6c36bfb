"""ReductionGroupNorm: the same result as nn.GroupNorm where it takes its own path, nn.GroupNorm's own path elsewhere,
and use_reduction_group_norm swaps modules without touching the weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fidediff_pipeline.models.normalization import ReductionGroupNorm, use_reduction_group_norm


def forced(norm: ReductionGroupNorm) -> ReductionGroupNorm:
    """The reduction path on the CPU for any group size (its defaults keep it to large groups on CUDA)."""
    norm.devices, norm.min_group_elements, norm.dtypes = ("cpu",), 0, (torch.float32, torch.bfloat16)
    return norm


@pytest.mark.parametrize("shape, groups, offset", [((2, 64, 24, 20), 32, 0.0), ((1, 32, 50), 8, 0.0),
                                                   ((3, 16, 9, 9, 2), 4, 0.0), ((1, 64, 32, 32), 32, 20.0)])
def test_reduction_path_equals_group_norm(shape, groups, offset):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator) + offset  # offset: E[x^2] - E[x]^2 with a mean 20x the spread
    norm = forced(ReductionGroupNorm(groups, shape[1], eps=1e-6))
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[1], generator=generator) + 0.5)
        norm.bias.copy_(torch.randn(shape[1], generator=generator))
    reference = F.group_norm(x, groups, norm.weight, norm.bias, 1e-6)
    assert (norm(x) - reference).abs().max() < (5e-4 if offset else 2e-5)


def test_reduction_path_in_bfloat16_and_without_affine():
    x = torch.randn(1, 64, 40, 40, generator=torch.Generator().manual_seed(1)).bfloat16()
    norm = forced(ReductionGroupNorm(32, 64, affine=False))
    out = norm(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - F.group_norm(x.float(), 32, eps=norm.eps)).abs().max() < 0.05


@pytest.mark.parametrize("offset", [0.0, 20.0])
def test_bfloat16_error_no_larger_than_group_norms_own(offset):
    """Against a float64 reference, the reduction path on a bf16 input (mean up to 20x the spread) is within 1.2x of
    what nn.GroupNorm itself gets in bf16 (a bf16 scale and shift were 15x worse at offset 20)."""
    generator = torch.Generator().manual_seed(4)
    x = (torch.randn(2, 64, 48, 48, generator=generator) + offset).bfloat16()
    norm = forced(ReductionGroupNorm(32, 64, eps=1e-6))
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64, generator=generator) + 0.5)
        norm.bias.copy_(torch.randn(64, generator=generator))
        reference = F.group_norm(x.double(), 32, norm.weight.double(), norm.bias.double(), 1e-6)
        own = F.group_norm(x, 32, norm.weight.bfloat16(), norm.bias.bfloat16(), 1e-6)  # the VAE run in bf16
        out = norm(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    rms = lambda y: (y.double() - reference).pow(2).mean().sqrt().item()  # noqa: E731
    assert rms(out) <= 1.2 * rms(own)
    assert (out.double() - reference).abs().max() <= 1.2 * (own.double() - reference).abs().max()


def test_gradients_take_nn_group_norms_path():
    """batch_norm in inference mode does not differentiate through the statistics: autograd gets nn.GroupNorm."""
    x = torch.randn(1, 32, 16, 16, generator=torch.Generator().manual_seed(5)).bfloat16().requires_grad_()
    norm = forced(ReductionGroupNorm(8, 32))
    plain = nn.GroupNorm(8, 32)
    plain.load_state_dict(norm.state_dict())
    norm(x).float().square().sum().backward()
    grad = x.grad.clone()
    x.grad = None
    plain(x).float().square().sum().backward()
    assert torch.equal(grad, x.grad)
    assert not norm._takes(x)
    with torch.no_grad():  # without autograd, the reduction path
        assert norm._takes(x) and (norm(x).float() - plain(x).float()).abs().max() < 0.02


def test_nn_group_norm_path_where_the_reduction_path_does_not_apply():
    x = torch.randn(2, 64, 16, 16, generator=torch.Generator().manual_seed(2))
    norm = ReductionGroupNorm(32, 64)
    plain = nn.GroupNorm(32, 64)
    plain.load_state_dict(norm.state_dict())
    assert torch.equal(norm(x), plain(x))  # on the CPU by default
    big = forced(ReductionGroupNorm(32, 64))
    big.min_group_elements = 10**9
    assert torch.equal(big(x), plain(x))  # small groups
    float32 = ReductionGroupNorm(32, 64)
    float32.devices, float32.min_group_elements = ("cpu",), 0
    assert torch.equal(float32(x), plain(x))  # float32: only 16-bit inputs take the reduction path
    assert torch.equal(forced(norm)(x.contiguous(memory_format=torch.channels_last)),
                       plain(x.contiguous(memory_format=torch.channels_last)))  # not contiguous in NCHW


def test_use_reduction_group_norm_swaps_every_group_norm_and_keeps_the_weights(small_kl_vae):
    vae = small_kl_vae()
    before = {k: v.data_ptr() for k, v in vae.state_dict().items()}
    expected = sum(type(m) is nn.GroupNorm for m in vae.modules())
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        reference = vae.decode(vae.encode(x).latent_dist.mode()).sample
    assert use_reduction_group_norm(vae) == expected > 0
    assert not any(type(m) is nn.GroupNorm for m in vae.modules())
    assert {k: v.data_ptr() for k, v in vae.state_dict().items()} == before
    assert all(not m.training for m in vae.modules())
    with torch.no_grad():
        assert torch.equal(vae.decode(vae.encode(x).latent_dist.mode()).sample, reference)  # CPU: nn.GroupNorm's path
        for module in vae.modules():
            if isinstance(module, ReductionGroupNorm):
                forced(module)
        out = vae.decode(vae.encode(x).latent_dist.mode()).sample
    assert (out - reference).abs().max() < 1e-4

