#!/usr/bin/env python
"""Which of several trained pipelines restores held-out photos best? A larger validation than the training's.

    python train/compare_pipelines.py runs/make_tiny/base/best_pipeline runs/make_tiny/base/pipeline
    python train/compare_pipelines.py runs/make_tiny/kcn/best_pipeline runs/make_tiny/kcn/pipeline --timestep auto

Each stage of ``train/make_tiny.py`` validates on 18 crops of the held-out photos and keeps its best pipeline;
with so few crops the best is partly luck: in round 3 of the bundled checkpoint the stage-1 pipeline that won on
them (step 900 of 2400) was 0.28 dB worse than the final one on 36 whole images drawn here. This script scores
whole held-out photos (``make_tiny.HELDOUT_PHOTOS``: coffee, chelsea, china; never trained on) blurred by the
project's builder with a fresh draw (``--seed``, ``--trajectories`` per photo, levels n = 7, 11, 15), at the true
t (stage-1 pipelines) or with t-prediction (``--timestep auto``), and prints the PSNR gain over the blurry input
per level. The evaluation draw of ``train/evaluate_tiny.py`` (seed 2024) is refused: choosing on it would tune
on the test.

``--photos train`` scores make_tiny's training photos instead (whole images, a fresh draw of trajectories): where
a pipeline errs the same way on the photos it was trained on, the cause is the model or the data, not a gap between
training and held-out content. Never choose on that draw either: it tells nothing of unseen photos.
``--kernels`` adds, with ``--photos train``, the straight-blur kernel table of ``train/evaluate_tiny.py`` (9, 15,
21 px at 0, 45, 90, 135 degrees) on those photos: on the held-out photos that table has no random draw, so it would
be the evaluation's own, and a choice made on it would tune on the test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EVALUATION_SEED = 2024  # train/evaluate_tiny.py's default --seed


def compare(pipelines: list[str], seed: int, trajectories: int, timestep, photos=None,
            opencv_examples: Path | None = None, kernels: bool = False, short_side: int | None = 256) -> dict:
    """``{pipeline: {"gain": {n: dB}, "mean_gain": dB}}`` on one draw of the held-out photos (or of ``photos``),
    plus ``"t_mae"`` and ``"t_mean_predicted"`` ``{n: t}`` where the pipeline predicted t, and with ``kernels``
    (``photos`` only) ``"kernels"``: ``evaluate_tiny.kernel_direction_scores``'s rows on the sharp ``photos``.
    ``short_side``: the photos' short side in px before blurring (``None``: as they ship)."""
    import torch  # noqa: F401  (threads are set by the caller)

    from fidediff_pipeline import FideDiffPipeline
    from train.evaluate_tiny import LEVELS, input_scores, kernel_direction_scores, photo_pairs, run_variant
    from train.make_tiny import HELDOUT_PHOTOS, OPENCV_EXAMPLES, load_photo

    if kernels and photos is None:
        raise ValueError("kernels=True needs training photos: on the held-out ones the table is the evaluation's")

    with tempfile.TemporaryDirectory() as folder:
        pairs = photo_pairs(HELDOUT_PHOTOS if photos is None else photos, seed, trajectories, Path(folder),
                            opencv_examples or OPENCV_EXAMPLES, short_side)
    inputs = input_scores(pairs)
    results = {}
    for path in pipelines:
        pipe = FideDiffPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        scores = run_variant(pipe, pairs, timestep)
        gain = {n: scores[n]["psnr"] - inputs[n]["psnr"] for n in LEVELS}
        results[path] = {"gain": gain, "mean_gain": float(np.mean(list(gain.values())))}
        if all("t_mae" in scores[n] for n in LEVELS):
            results[path]["t_mae"] = {n: scores[n]["t_mae"] for n in LEVELS}
            results[path]["t_mean_predicted"] = {n: scores[n]["t_mean_predicted"] for n in LEVELS}
        if kernels:
            sharp = [load_photo(name, opencv_examples or OPENCV_EXAMPLES) for name in photos]
            results[path]["kernels"] = kernel_direction_scores(pipe, sharp)
    return results


def parse_timestep(value: str):
    if value in ("true", "auto"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--timestep takes 'true', 'auto' or an integer; got {value!r}") from None


def parse_short_side(value: str):
    if value == "native":
        return None
    try:
        side = int(value)
    except ValueError:
        side = 0
    if side < 64:
        raise argparse.ArgumentTypeError(f"--short_side takes a size in px (at least 64) or 'native'; got {value!r}")
    return side


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("pipelines", nargs="+", help="saved pipeline folders (with model_index.json)")
    p.add_argument("--seed", type=int, default=3000, help="trajectory seed of the draw (not 2024: the evaluation's)")
    p.add_argument("--trajectories", type=int, default=4, help="trajectories per held-out photo (x 3 photos x 3 levels)")
    p.add_argument("--timestep", type=parse_timestep, default="true",
                   help="'true' (each image's own t), 'auto' (the Kernel ControlNet's t-prediction) or an integer")
    p.add_argument("--photos", choices=["heldout", "train"], default="heldout",
                   help="heldout: coffee, chelsea, china (choose on these); train: make_tiny's training photos "
                        "(is an error the model's or the content's?)")
    p.add_argument("--opencv_examples", type=str, default=None,
                   help="with --photos train: Debian opencv-doc's examples folder, to add OpenCV's sample photos")
    p.add_argument("--short_side", type=parse_short_side, default=256,
                   help="the photos' short side in px before blurring (default 256, as in training and the "
                        "evaluation), or 'native': each photo at the size it ships in (finer detail per pixel)")
    p.add_argument("--kernels", action="store_true",
                   help="with --photos train: also the straight-blur kernel table (direction and length errors)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.opencv_examples and args.photos != "train":
        p.error("--opencv_examples goes with --photos train")
    if args.kernels and args.photos != "train":
        p.error("--kernels needs --photos train: on the held-out photos the straight-blur table is the evaluation's "
                "own (no random draw), and choosing on it would tune on the test")
    if args.seed == EVALUATION_SEED and args.photos == "heldout":
        p.error(f"--seed {EVALUATION_SEED} is train/evaluate_tiny.py's evaluation draw: choosing a pipeline on it "
                "would tune on the test; take another seed")
    if args.trajectories < 1:
        p.error(f"--trajectories must be at least 1; got {args.trajectories}")
    missing = [path for path in args.pipelines if not Path(path, "model_index.json").is_file()]
    if missing:
        p.error(f"not a saved pipeline folder (no model_index.json): {', '.join(missing)}")
    import torch

    torch.set_num_threads(args.threads)
    photos = None
    if args.photos == "train":
        from train.make_tiny import OPENCV_PHOTOS, TRAIN_PHOTOS

        examples = Path(args.opencv_examples) if args.opencv_examples else None
        if examples is not None:
            missing = [name for _, name in OPENCV_PHOTOS if not (examples / name).is_file()]
            if missing:
                p.error(f"--opencv_examples {args.opencv_examples}: {len(missing)} of {len(OPENCV_PHOTOS)} of "
                        f"OpenCV's sample photos missing, e.g. {missing[0]}")
        photos = TRAIN_PHOTOS + (OPENCV_PHOTOS if examples is not None else ())
    results = compare(args.pipelines, args.seed, args.trajectories, args.timestep, photos,
                      Path(args.opencv_examples) if args.opencv_examples else None, args.kernels, args.short_side)
    what = "held-out" if photos is None else f"TRAINING ({len(photos)})"
    size = "as shipped" if args.short_side is None else f"short side {args.short_side} px"
    print(f"PSNR gain over the blurry input (dB), whole {what} photos ({size}), seed {args.seed}, "
          f"{args.trajectories} trajectories per photo, timestep {args.timestep}:")
    for path, row in results.items():
        per_level = " ".join(f"n={n}: {g:+.3f}" for n, g in row["gain"].items())
        t_mae = " ".join(f"{row['t_mae'][n]:.0f}" for n in row["t_mae"]) if "t_mae" in row else ""
        t_mean = " ".join(f"{row['t_mean_predicted'][n]:.0f}" for n in row["t_mae"]) if "t_mae" in row else ""
        print(f"  {path}: {per_level}  mean {row['mean_gain']:+.3f}"
              + (f"  t-MAE {t_mae}  mean predicted t {t_mean}" if t_mae else ""))
        for length in sorted({r["length"] for r in row.get("kernels", [])}):
            rows = [r for r in row["kernels"] if r["length"] == length]
            print(f"    straight {length} px blurs at " + "/".join(str(r["angle"]) for r in rows) + " deg: length "
                  + " ".join(f"{r['estimated_length'] - r['true_length']:+.1f} px ({r['length_error']:.0%})" for r in rows)
                  + ", direction off " + " ".join(f"{r['angle_error']:.1f}" for r in rows) + " deg")
    if args.out:
        from fidediff_pipeline.atomic_io import write_text_atomic

        write_text_atomic(args.out, json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "out"},
                                                "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
