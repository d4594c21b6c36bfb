"""Dead-leaves training images: deterministic, covered, photo-like statistics."""

import numpy as np
import pytest

from fidediff_pipeline.data.dead_leaves import dead_leaves_image


def test_dead_leaves_is_deterministic_given_the_generator():
    a = dead_leaves_image(48, np.random.default_rng(3))
    b = dead_leaves_image(48, np.random.default_rng(3))
    c = dead_leaves_image(48, np.random.default_rng(4))
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_dead_leaves_has_edges_flat_regions_and_a_falling_spectrum():
    image = dead_leaves_image((96, 128), np.random.default_rng(0)).astype(np.float64) / 255.0
    assert image.shape == (96, 128, 3)
    grey = image.mean(axis=-1)
    grad = np.hypot(*np.gradient(grey))
    assert (grad < 0.01).mean() > 0.2  # flat leaf interiors
    assert (grad > 0.1).mean() > 0.01  # occlusion edges
    assert len(np.unique((image * 255).round().reshape(-1, 3), axis=0)) > 200  # many leaves, shading
    # Natural-image statistics: power falls with frequency (about 1/f^2); compare low and high frequency bands.
    power = np.abs(np.fft.fftshift(np.fft.fft2(grey - grey.mean()))) ** 2
    fy, fx = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(96)), np.fft.fftshift(np.fft.fftfreq(128)), indexing="ij")
    radius = np.hypot(fy, fx)
    low, high = power[(radius > 0.02) & (radius < 0.06)].mean(), power[(radius > 0.2) & (radius < 0.4)].mean()
    assert low > 20 * high, (low, high)


def test_dead_leaves_rejects_a_tiny_size():
    with pytest.raises(ValueError, match="at least 4x4 pixels; got 2x8"):
        dead_leaves_image((2, 8), np.random.default_rng(0))
