"""diffusers' own ``ModelTesterMixin`` and ``TrainingTesterMixin`` (``tests/diffusers_testers``, copied from the
diffusers repository) run on the Kernel ControlNet, the model this project adds to diffusers: the checks diffusers
runs on each of its models, not ones written here. ``FideDiffPromptEmbedding`` has no input tensors (its forward
takes a batch size), so the mixins, built around a forward pass with ``return_dict``, do not apply to it."""

import functools

import pytest
import torch

from diffusers_testers.common import BaseModelTesterConfig, ModelTesterMixin
from diffusers_testers.testing_utils import torch_device
from diffusers_testers.training import TrainingTesterMixin

from fidediff_pipeline import KernelControlNetModel
from fidediff_pipeline.presets import build_pipeline

pytestmark = [
    pytest.mark.slow,
    # diffusers' class-scoped `base_model_output` fixture is an instance method, which pytest deprecates (its code)
    pytest.mark.filterwarnings("ignore:Class-scoped fixtures defined as instance methods"),
]


@functools.lru_cache(maxsize=1)
def _tiny():
    """The tiny preset's Kernel ControlNet config, the UNet's latent channels and text width (built once)."""
    pipe = build_pipeline("tiny", seed=0)
    return ({k: v for k, v in pipe.kernel_controlnet.config.items() if not k.startswith("_")},
            pipe.unet.config.in_channels, pipe.unet.config.cross_attention_dim)


class KernelControlNetTesterConfig(BaseModelTesterConfig):
    # the tiny preset's Kernel ControlNet (1.6 M parameters), on 32 x 32 images and their 16 x 16 latents
    @property
    def model_class(self):
        return KernelControlNetModel

    @property
    def main_input_name(self):
        return "image"

    @property
    def output_shape(self):
        # the first output: the per-pixel kernels, m * m values per stride x stride block of the 32 x 32 image
        config = _tiny()[0]
        return (config["kernel_size"] ** 2, 32 // config["kernel_stride"], 32 // config["kernel_stride"])

    def get_init_dict(self):
        return dict(_tiny()[0])

    def get_dummy_inputs(self):
        _, latent_channels, text_dim = _tiny()
        generator = torch.Generator().manual_seed(0)  # the same inputs at every call, as the mixins require
        return {
            "image": (torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1).to(torch_device),
            "sample": torch.randn(2, latent_channels, 16, 16, generator=generator).to(torch_device),
            "timestep": torch.tensor([120, 200], device=torch_device),
            "encoder_hidden_states": torch.randn(2, 4, text_dim, generator=generator).to(torch_device),
        }


class TestKernelControlNetModel(KernelControlNetTesterConfig, ModelTesterMixin):
    @torch.no_grad()
    def test_outputs_equivalence(self):
        # diffusers' recursive check expects nested outputs to be dicts, and a ControlNet's residuals are a list
        # (diffusers skips this test for its own ControlNets for that reason); here the same comparison, flattened
        model = self.model_class(**self.get_init_dict()).to(torch_device).eval()
        as_dict = model(**self.get_dummy_inputs())
        as_tuple = model(**self.get_dummy_inputs(), return_dict=False)

        def flat(values):
            for value in values:
                yield from flat(value) if isinstance(value, (list, tuple)) else (value,)

        dict_values, tuple_values = list(flat(as_dict.values())), list(flat(as_tuple))
        assert len(dict_values) == len(tuple_values) == 3 + len(as_dict.down_block_res_samples)
        for from_dict, from_tuple in zip(dict_values, tuple_values):
            torch.testing.assert_close(from_tuple, from_dict, atol=1e-5, rtol=0)


class TestKernelControlNetTraining(KernelControlNetTesterConfig, TrainingTesterMixin):
    def test_gradient_checkpointing_is_applied(self):
        # diffusers' blocks of the ControlNet, and the kernel estimator M's residual blocks (checkpointed by ours)
        super().test_gradient_checkpointing_is_applied(expected_set={
            "CrossAttnDownBlock2D", "DownBlock2D", "UNetMidBlock2D", "Transformer2DModel", "KernelEstimator"})
