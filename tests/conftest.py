import os

# Tests never touch the network: set before huggingface_hub is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_pipeline():
    from fidediff_pipeline.presets import build_pipeline

    pipe = build_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipeline_folder(tiny_pipeline, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_pipeline")
    tiny_pipeline.save_pretrained(folder)
    return folder


@pytest.fixture
def rgb_image():
    rng = np.random.default_rng(0)
    return (rng.random((37, 53, 3)) * 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
