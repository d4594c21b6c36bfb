"""The bundled fidediff-tiny checkpoint (trained by train/make_tiny.py) on held-out photos.

Crops of coffee, chelsea and china (never used in training) are blurred here with the project's own camera-shake
builder at n = 7, 11, 15 and restored with the default call (the checkpoint's own upscale factor and colour fix,
t-prediction). The gain thresholds sit below the measured figures (docs/tiny_results.md) but above zero and above
a pass-through, so they fail if the checkpoint stops deblurring.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fidediff_pipeline import DEFAULT_MODEL, FideDiffPipeline  # noqa: E402

pytestmark = pytest.mark.skipif(not Path(DEFAULT_MODEL, "model_index.json").is_file(),
                                reason="no bundled checkpoint (run train/make_tiny.py)")

# Regression guards, set below what the bundled checkpoint measures on these crops (mean +1.95 dB; per level
# +2.42 / +2.13 / +1.31 dB at n = 7 / 11 / 15; t-MAE 74 / 52 / 63: on 96 px crops light blurs read long, and T's
# whole-image branch, trained on 256 px crops, sees little; rounds 8 and 9: +1.74 and +2.00 dB, same t-MAE)
# and far above a pass-through (about -0.3 dB): they fail if the checkpoint stops deblurring. On the whole held-out
# images (docs/tiny_results.md) it gains +2.28 dB on average (the floor +1.5 is met there); its t-MAE
# 24 / 35 / 68 does NOT meet the floor of 40 at n = 15.
MEAN_GAIN_FLOOR = 1.5
LEVEL_GAIN_FLOOR = 1.0
T_MAE_LIMIT = 100

CROPS = [(("skimage", "coffee"), 60, 150), (("skimage", "chelsea"), 40, 150), (("sklearn", "china"), 80, 120),
         (("skimage", "coffee"), 140, 40)]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(b, a, data_range=255))


@pytest.fixture(scope="module")
def pipe():
    return FideDiffPipeline.from_pretrained(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def crops():
    from fidediff_pipeline.data import blur_image_along_trajectory
    from train.make_tiny import DATA_KERNEL_SIZE, load_photo

    out = []
    for i, (name, top, left) in enumerate(CROPS):
        sharp = load_photo(name)[top: top + 96, left: left + 96]
        levels = blur_image_along_trajectory(sharp, frames=(7, 11, 15), rng=100 + i, kernel_size=DATA_KERNEL_SIZE)
        for n, (blurry, _) in levels.items():
            out.append((n, sharp, (blurry * 255).round().astype(np.uint8)))
    return out


@pytest.fixture(scope="module")
def results(pipe, crops):
    gains, t_errors = {7: [], 11: [], 15: []}, {7: [], 11: [], 15: []}
    for n, sharp, blurry in crops:
        result = pipe(blurry, output_type="np")  # defaults: t-prediction, the checkpoint's upscale and colour fix
        restored = (result.images[0] * 255).round().clip(0, 255).astype(np.uint8)
        assert 0 <= result.timesteps[0] < 1000 and result.timestep_sources[0] == "predicted"
        gains[n].append(_psnr(restored, sharp) - _psnr(blurry, sharp))
        t_errors[n].append(abs(result.timesteps[0] - (n - 1) * 20))
    return gains, t_errors


def test_bundled_checkpoint_loads_with_its_saved_settings(pipe):
    assert pipe.kernel_controlnet is not None
    assert pipe.config.default_upscale_factor == 1 and pipe.config.color_fix_sigma == 12.0
    assert pipe.vae_scale_factor == 2


def test_bundled_checkpoint_deblurs_held_out_crops(results):
    gains, _ = results
    mean_gain = float(np.mean([g for v in gains.values() for g in v]))
    assert mean_gain > MEAN_GAIN_FLOOR, gains
    for n, values in gains.items():
        assert np.mean(values) > LEVEL_GAIN_FLOOR, (n, values)


def test_bundled_checkpoint_predicts_the_blur_level(results):
    _, t_errors = results
    for n, errors in t_errors.items():
        assert np.mean(errors) < T_MAE_LIMIT, (n, errors)


@pytest.fixture(scope="module")
def kernel_rows(pipe):
    from train.evaluate_tiny import kernel_direction_scores
    from train.make_tiny import load_photo

    photos = [load_photo(name)[top: top + 128, left: left + 128] for name, top, left in CROPS[:3]]
    return kernel_direction_scores(pipe, photos)


def test_estimated_kernels_follow_the_direction_of_straight_blurs(kernel_rows):
    # Measured: at most 5.2 degrees off over 9, 15, 21 px at 0, 45, 90, 135 degrees (an estimator without the
    # gradient-autocorrelation features gave one ~128-degree kernel for all of them).
    assert len(kernel_rows) == 12
    for row in kernel_rows:
        assert row["angle_error"] <= 20, row


def test_estimated_kernels_follow_the_length_of_straight_blurs(kernel_rows):
    # Measured on these crops: 9 px 6-19% long, 15 px within 11%, 21 px 17-33% short; the checkpoint refitted at the
    # builder's camera speeds read the 21 px blurs 24-40% short (docs/tiny_results.md; on the whole held-out photos
    # the 9 px blurs read 25-40% long).
    for row in kernel_rows:
        assert row["length_error"] <= 0.35, row
