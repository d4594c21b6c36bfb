"""WideHeadAttnProcessor: the chunked attention of SD's VAE equals SDPA, takes only the cases it is meant for, and
FideDiffPipeline sets it on an AutoencoderKL (keeping a processor a caller chose)."""

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import fidediff_pipeline.models.attention_processor as attention_processor
from fidediff_pipeline.models.attention_processor import WideHeadAttnProcessor, chunked_attention


@pytest.fixture
def count_chunked(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return chunked_attention(*args, **kwargs)

    monkeypatch.setattr(attention_processor, "chunked_attention", spy)
    return calls


@pytest.mark.parametrize("max_scores", [10**9, 1000, 200])  # one chunk; uneven chunks; a chunk of few queries
def test_chunked_attention_equals_sdpa(max_scores):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 150, 40, generator=generator) for _ in range(3))
    reference = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(chunked_attention(q, k, v, max_scores), reference, atol=1e-5, rtol=1e-5)


def test_chunked_attention_fp16_scores_stay_finite():
    # Unscaled q . k over 512 channels would reach ~1.3e5, past fp16's 65504; scaled first they stay in range.
    q = torch.full((1, 1, 8, 512), 16.0)
    k = torch.full((1, 1, 8, 512), 16.0)
    v = torch.randn(1, 1, 8, 512)
    out = chunked_attention(q.half(), k.half(), v.half(), max_scores=16)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.float(), F.scaled_dot_product_attention(q, k, v), atol=2e-2)


def test_processor_equals_sdpa_on_a_vae_when_forced_onto_the_cpu(count_chunked, small_kl_vae):
    vae = small_kl_vae()
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        reference = vae.decode(vae.encode(x).latent_dist.mode()).sample
        vae.set_attn_processor(WideHeadAttnProcessor(max_scores=100, devices=("cpu",), wide_head_dim=0))
        out = vae.decode(vae.encode(x).latent_dist.mode()).sample
    assert len(count_chunked) == 2  # the encoder's and the decoder's mid-block attention
    assert (out - reference).abs().max() < 1e-4


def test_processor_falls_back_to_sdpa_where_the_chunked_path_does_not_apply(count_chunked, small_kl_vae):
    vae = small_kl_vae()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        reference = vae.decode(vae.encode(x).latent_dist.mode()).sample
    checks = [
        (WideHeadAttnProcessor(), torch.no_grad),  # default: CUDA only, and a 64-wide head is not wide
        (WideHeadAttnProcessor(devices=("cpu",)), torch.no_grad),  # on the CPU, but the head is narrow
        (WideHeadAttnProcessor(devices=("cpu",), wide_head_dim=0), torch.enable_grad),  # under autograd
    ]
    for processor, mode in checks:
        vae.set_attn_processor(processor)
        with mode():
            out = vae.decode(vae.encode(x).latent_dist.mode()).sample
        assert torch.equal(out.detach(), reference)
    assert count_chunked == []


def test_processor_refuses_a_non_positive_score_budget():
    with pytest.raises(ValueError, match="max_scores must be a positive number"):
        WideHeadAttnProcessor(max_scores=0)


def test_pipeline_sets_it_on_an_autoencoder_kl_and_keeps_a_processor_the_caller_chose(pipeline_with_kl_vae):
    pipe = pipeline_with_kl_vae()
    processors = pipe.vae.attn_processors
    assert len(processors) == 2 and all(isinstance(p, WideHeadAttnProcessor) for p in processors.values())

    chosen = pipeline_with_kl_vae.new_vae()
    chosen.set_attn_processor(AttnProcessor())
    pipe = pipeline_with_kl_vae(chosen)
    assert all(type(p) is AttnProcessor for p in pipe.vae.attn_processors.values())
    # and diffusers' default comes back on request
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    assert all(type(p) is AttnProcessor2_0 for p in pipe.vae.attn_processors.values())
