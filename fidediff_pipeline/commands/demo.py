"""``fidediff demo``: the offline demo on the bundled tiny checkpoint, written to a folder.

It deblurs (1) scikit-image's ``clock_motion.png``, a real motion-blurred photo (no ground truth), and (2) a photo
held out from the tiny model's training (``coffee``), blurred here along a camera-shake trajectory with the
project's own builder at n = 7, 11 and 15 averaged frames, for which it reports PSNR before and after.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DEMO_FRAMES = (7, 11, 15)


def register(subparsers) -> None:
    from .deblur import add_model_arguments

    parser = subparsers.add_parser("demo", help="deblur the demo photos with the bundled model (offline)",
                                   description=__doc__)
    parser.add_argument("-o", "--output", default="demo_output", help="folder for the before/after images")
    add_model_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo's blur trajectory")
    parser.set_defaults(func=run)


def side_by_side(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    gap = np.full((before.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([before, gap, after], axis=1)


def run(args) -> int:
    import PIL.Image
    import skimage.data
    from skimage.metrics import peak_signal_noise_ratio

    from ..atomic_io import save_image_atomic, write_text_atomic
    from ..data import blur_image_along_trajectory
    from ..image_processing import load_image
    from ..hub.loading import load_pipeline
    from . import prepare_output_dir

    out_dir = Path(args.output)
    prepare_output_dir(out_dir, "-o")  # a file in its place or a read-only parent: one line, before the model loads
    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    report: dict = {"model": str(pipe.config.get("_name_or_path", args.model)), "synthetic": {}}

    clock_path = Path(skimage.data.__file__).parent / "clock_motion.png"
    clock = np.asarray(load_image(clock_path))
    result = pipe(clock, timestep=args.timestep, upscale_factor=args.upscale_factor, tile_size=args.tile_size)
    save_image_atomic(PIL.Image.fromarray(side_by_side(clock, np.asarray(result.images[0]))), out_dir / "clock_motion_before_after.png")
    report["clock_motion"] = {"timestep": result.timesteps[0], "source": result.timestep_sources[0]}
    print(f"clock_motion.png (real blur): t={result.timesteps[0]} ({result.timestep_sources[0]}) "
          f"-> {out_dir / 'clock_motion_before_after.png'}")

    sharp = skimage.data.coffee()
    levels = blur_image_along_trajectory(sharp.astype(np.float32) / 255.0, frames=DEMO_FRAMES,
                                         rng=np.random.default_rng(args.seed))
    for n in DEMO_FRAMES:
        blurry = (np.clip(levels[n][0], 0, 1) * 255).round().astype(np.uint8)
        restored = pipe(blurry, timestep=args.timestep, upscale_factor=args.upscale_factor, tile_size=args.tile_size)
        restored_np = np.asarray(restored.images[0])
        psnr_in = peak_signal_noise_ratio(sharp, blurry, data_range=255)
        psnr_out = peak_signal_noise_ratio(sharp, restored_np, data_range=255)
        name = f"coffee_n{n}_before_after.png"
        save_image_atomic(PIL.Image.fromarray(side_by_side(blurry, restored_np)), out_dir / name)
        report["synthetic"][f"n={n}"] = {"true_timestep": (n - 1) * 20, "timestep": restored.timesteps[0],
                                         "psnr_blurry": round(psnr_in, 2), "psnr_restored": round(psnr_out, 2)}
        print(f"coffee blurred with {n} frames (true t={(n - 1) * 20}): t={restored.timesteps[0]} "
              f"({restored.timestep_sources[0]}), PSNR {psnr_in:.2f} dB -> {psnr_out:.2f} dB  -> {out_dir / name}")
    write_text_atomic(out_dir / "demo_report.json", json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_dir}/ (before | after images and demo_report.json)")
    return 0
