"""The bundled fidediff-tiny checkpoint (trained by train/make_tiny.py) really deblurs held-out photos.

Crops of coffee and chelsea (never used in training) are blurred here with the project's own camera-shake builder
at n = 7, 11, 15; the default pipeline call (the checkpoint's own upscale factor and colour fix, t-prediction)
must raise PSNR on average and at every level. Fast: three 96 px crops per level.
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


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(b, a, data_range=255))


@pytest.fixture(scope="module")
def crops():
    from fidediff_pipeline.data import TrajectoryConfig, blur_image_along_trajectory
    from train.make_tiny import DATA_KERNEL_SIZE, SPEED_RANGE, load_photo

    out = []
    for i, (name, top, left) in enumerate([("coffee", 60, 150), ("chelsea", 40, 150), ("coffee", 140, 40)]):
        sharp = load_photo(name)[top: top + 96, left: left + 96]
        levels = blur_image_along_trajectory(sharp, frames=(7, 11, 15), rng=100 + i, kernel_size=DATA_KERNEL_SIZE,
                                             config=TrajectoryConfig(speed_range=SPEED_RANGE))
        for n, (blurry, _) in levels.items():
            out.append((n, sharp, (blurry * 255).round().astype(np.uint8)))
    return out


def test_bundled_checkpoint_deblurs_held_out_crops(crops):
    pipe = FideDiffPipeline.from_pretrained(DEFAULT_MODEL)
    assert pipe.kernel_controlnet is not None
    gains = {7: [], 11: [], 15: []}
    for n, sharp, blurry in crops:
        out = pipe(blurry, output_type="np")  # defaults: t-prediction, the checkpoint's upscale factor and colour fix
        restored = (out.images[0] * 255).round().clip(0, 255).astype(np.uint8)
        gains[n].append(_psnr(restored, sharp) - _psnr(blurry, sharp))
    mean_gain = float(np.mean([g for v in gains.values() for g in v]))
    assert mean_gain > 0.5, gains
    for n, values in gains.items():
        assert np.mean(values) > 0, (n, values)
