#!/usr/bin/env python
"""Where does a photo show its blur level t? M's kernels against the whole image's gradient autocorrelations.

    python train/probe_timestep_cue.py            # ~10 min on 2 cores; writes docs/timestep_cue.json
    python train/probe_timestep_cue.py --samples 300 --out /tmp/cue.json   # a quick look

The t-regressor T of FideDiff reads M's kernel map. On whole held-out photos the bundled T read long blurs short
(t-MAE 70-81 at n = 15, round 7 of its training). This probe asks whether more of a blur's level is in the photo than in the kernels: it
draws ``--samples`` 256 px crops of the TRAINING content of ``train/make_tiny.py`` (its photos, OpenCV's where
installed, and its dead-leaves images), blurred by the project's builder at n = 5 ... 15 as in training, and
fits scikit-learn's gradient boosting (no deep learning in the way) to the true t from

- ``kernels``: T's own pooled features of M's kernels (the checkpoint's M and T, frozen);
- ``whole``: the gradient autocorrelations of the whole crop at every offset up to 32 px, 16 directions
  (`whole_image_gradient_autocorrelation`, what the t_context stage's T branch reads);
- ``both``: the two together;

then tests each on the whole held-out photos of ``train/compare_pipelines.py`` (seed 3000, 6 trajectories per
photo, n = 7, 11, 15), next to the checkpoint's own T. The t-MAE per level goes to the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.make_tiny import (  # noqa: E402
    DATA_KERNEL_SIZE, DEAD_LEAVES, OPENCV_EXAMPLES, OPENCV_PHOTOS, T_CONTEXT_RADIUS, TRAIN_FRAMES, TRAIN_PHOTOS,
    load_photo,
)

LEVELS = (7, 11, 15)


def features(kcn, image01: torch.Tensor, offsets) -> tuple[np.ndarray, np.ndarray, float]:
    """``image01`` ``[3, H, W]`` in [0, 1] -> (T's pooled kernel features, whole-image autocorrelations, T's t)."""
    from fidediff_pipeline.models.modeling_kernel_controlnet import whole_image_gradient_autocorrelation

    x = image01[None].float() * 2 - 1
    with torch.no_grad():
        kernels = kcn.kernel_estimator(x)
        regressor = kcn.timestep_regressor
        pooled = regressor.features(kernels).mean(dim=(-2, -1))
        t = float(regressor(kernels, x)[0])
        whole = whole_image_gradient_autocorrelation(x, offsets)
    return pooled[0].numpy(), whole[0].numpy(), t


def training_samples(kcn, count: int, seed: int, offsets, opencv_examples: Path):
    from fidediff_pipeline.data import InMemoryTrajectoryGroupDataset
    from fidediff_pipeline.data.dead_leaves import dead_leaves_image

    names = list(TRAIN_PHOTOS) + [n for n in OPENCV_PHOTOS if (opencv_examples / n[1]).is_file()]
    photos = [load_photo(name, opencv_examples) for name in names]
    photos += [dead_leaves_image(320, np.random.default_rng([seed, 4242, i])) for i in range(DEAD_LEAVES)]
    dataset = InMemoryTrajectoryGroupDataset(photos, frames=TRAIN_FRAMES, crop_size=256, levels_per_group=1,
                                             num_groups=count, seed=seed, kernel_size=DATA_KERNEL_SIZE)
    pooled, whole, t = [], [], []
    for i in range(count):
        item = dataset[i]
        p, w, _ = features(kcn, item["blurry"][0], offsets)
        pooled.append(p), whole.append(w), t.append(float(item["timesteps"][0]))
    return np.array(pooled), np.array(whole), np.array(t), len(names)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--checkpoint", type=str, default=str(REPO / "fidediff_pipeline" / "checkpoints" / "fidediff-tiny"))
    parser.add_argument("--samples", type=int, default=3000, help="training crops")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--opencv_examples", type=str, default=str(OPENCV_EXAMPLES))
    parser.add_argument("--out", type=str, default=str(REPO / "docs" / "timestep_cue.json"))
    args = parser.parse_args(argv)
    if args.samples < 10:
        parser.error(f"--samples must be >= 10; got {args.samples}")
    from sklearn.ensemble import HistGradientBoostingRegressor

    from fidediff_pipeline import FideDiffPipeline
    from fidediff_pipeline.atomic_io import write_text_atomic
    from fidediff_pipeline.models.modeling_kernel_controlnet import TimestepRegressor, polar_offsets
    from train.evaluate_tiny import heldout_pairs

    torch.manual_seed(0)
    kcn = FideDiffPipeline.from_pretrained(args.checkpoint).kernel_controlnet.eval()
    # The offsets of the t_context stage's T branch (TimestepRegressor with global_context_radius=T_CONTEXT_RADIUS).
    offsets = polar_offsets(range(1, T_CONTEXT_RADIUS + 1), TimestepRegressor.GLOBAL_CONTEXT_DIRECTIONS)
    start = time.time()
    pooled, whole, t, photo_count = training_samples(kcn, args.samples, args.seed, offsets, Path(args.opencv_examples))
    with tempfile.TemporaryDirectory() as folder:
        pairs = heldout_pairs(3000, 6, Path(folder))
    test = [features(kcn, torch.from_numpy(p["blurry"].copy()).permute(2, 0, 1).float() / 255, offsets) for p in pairs]
    test_pooled, test_whole, test_t_model = (np.array(v) for v in zip(*test))
    true_t, levels = np.array([p["t"] for p in pairs], dtype=float), np.array([p["n"] for p in pairs])

    def per_level(predicted):
        return {f"n{n}": {"t_mae": round(float(np.abs(predicted[levels == n] - true_t[levels == n]).mean()), 1),
                          "mean_predicted_t": round(float(predicted[levels == n].mean()), 1),
                          "true_t": int(true_t[levels == n][0])} for n in LEVELS}

    results = {"checkpoint_T": per_level(test_t_model)}
    for name, train_x, test_x in (("kernels", pooled, test_pooled), ("whole", whole, test_whole),
                                  ("both", np.hstack([pooled, whole]), np.hstack([test_pooled, test_whole]))):
        model = HistGradientBoostingRegressor(max_iter=300, random_state=0).fit(train_x, t)
        results[name] = per_level(model.predict(test_x))
    report = {"settings": {**vars(args), "training_photos": photo_count, "dead_leaves": DEAD_LEAVES,
                           "offsets": len(offsets), "heldout_images": len(pairs)},
              "seconds": round(time.time() - start, 1), "results": results}
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    for name, levels_result in results.items():
        print(f"{name:13s}", "  ".join(f"{k}: MAE {v['t_mae']:5.1f} (mean {v['mean_predicted_t']:5.1f} for "
                                       f"{v['true_t']})" for k, v in levels_result.items()))
    return report


if __name__ == "__main__":
    main()
