# Copyright 2026 HuggingFace Inc. Licensed under the Apache License, Version 2.0 (the "License"); you may not use
# this file except in compliance with the License. You may obtain a copy of the License at
# http://www.apache.org/licenses/LICENSE-2.0. Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The helpers of diffusers' ``tests/testing_utils.py`` that ``common.py`` and ``training.py`` import, copied from
it (same commit as the package's README says), minus the device dispatch for accelerators other than CUDA: this
project's tests run on the CPU (and CUDA where there is one). diffusers' own file imports optional libraries and
helpers of its development tree that a released diffusers does not have, so it is not copied whole."""

import os

import pytest
import torch

if "DIFFUSERS_TEST_DEVICE" in os.environ:
    torch_device = os.environ["DIFFUSERS_TEST_DEVICE"]
else:
    torch_device = "cuda" if torch.cuda.is_available() else "cpu"


def torch_all_close(a, b, *args, **kwargs):
    if not torch.allclose(a, b, *args, **kwargs):
        assert False, f"Max diff is absolute {(a - b).abs().max()}. Diff tensor is {(a - b).abs()}."
    return True


def assert_tensors_close(
    actual: "torch.Tensor",
    expected: "torch.Tensor",
    atol: float = 1e-5,
    rtol: float = 1e-5,
    msg: str = "",
) -> None:
    """Assert that two tensors are close within tolerance (torch.allclose's formula), with a concise message."""
    if isinstance(actual, (list, tuple)) or isinstance(expected, (list, tuple)):
        if not (isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple))):
            raise AssertionError(f"{msg} Type mismatch: actual {type(actual)} vs expected {type(expected)}")
        if len(actual) != len(expected):
            raise AssertionError(f"{msg} Length mismatch: actual {len(actual)} vs expected {len(expected)}")
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_tensors_close(a, e, atol=atol, rtol=rtol, msg=f"{msg} [element {i}]")
        return

    if actual.shape != expected.shape:
        raise AssertionError(f"{msg} Shape mismatch: actual {actual.shape} vs expected {expected.shape}")

    if not torch.allclose(actual, expected, atol=atol, rtol=rtol):
        abs_diff = (actual - expected).abs()
        max_diff = abs_diff.max().item()

        flat_idx = abs_diff.argmax().item()
        max_idx = tuple(idx.item() for idx in torch.unravel_index(torch.tensor(flat_idx), actual.shape))

        threshold = atol + rtol * expected.abs()
        mismatched = (abs_diff > threshold).sum().item()
        total = actual.numel()

        raise AssertionError(
            f"{msg}\n"
            f"Tensors not close! Mismatched elements: {mismatched}/{total} ({100 * mismatched / total:.1f}%)\n"
            f"  Max diff: {max_diff:.6e} at index {max_idx}\n"
            f"  Actual:   {actual.flatten()[flat_idx].item():.6e}\n"
            f"  Expected: {expected.flatten()[flat_idx].item():.6e}\n"
            f"  atol: {atol:.6e}, rtol: {rtol:.6e}"
        )


def is_training(test_case):
    """Decorator marking a test as a training test (``pytest -m "not training"`` skips them)."""
    return pytest.mark.training(test_case)


def require_accelerator(test_case):
    """Skip where there is no hardware accelerator."""
    return pytest.mark.skipif(torch_device == "cpu", reason="test requires a hardware accelerator")(test_case)


def require_torch_multi_accelerator(test_case):
    """Skip without several accelerators."""
    return pytest.mark.skipif(torch.cuda.device_count() <= 1, reason="test requires multiple hardware accelerators")(
        test_case
    )


def require_torch_accelerator_with_training(test_case):
    """Skip on a device that cannot train (diffusers: every device but MPS)."""
    return pytest.mark.skipif(torch_device == "mps", reason="test requires accelerator with training support")(
        test_case
    )


def backend_empty_cache(device: str):
    if device == "cuda":
        torch.cuda.empty_cache()
