"""GPU seconds per demo call, to size the Space's ZeroGPU reservation (``app.gpu_duration``).

Runs the app's own GPU function (``app.restore``: pipeline + kernel grid) on CUDA with random ``sd21-base``
weights (timing needs no trained weights), at GoPro size and at the demo's 4 MP limit, for d = 4 and d = 8; and
checks that the app's CUDA path (float16 by default) gives the same picture as float32 on the tiny preset.

    python benchmarks/space_gpu_budget.py --out budget.json

Without gradio/spaces installed it times the same steps without importing app.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fidediff_pipeline.kernel_visualization import grid_shape, sample_kernels  # noqa: E402
from fidediff_pipeline.presets import build_pipeline  # noqa: E402


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.random((max(height // 16, 2), max(width // 16, 2), 3))
    return Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)


def _restore_without_app(pipe, image, timestep, upscale_factor):
    """What app.restore does on the GPU: the pipeline, then the kernel grid on crops."""
    out = pipe(image, timestep=timestep, upscale_factor=upscale_factor, max_pixels=None)
    return {"image": out.images[0], "kernels": sample_kernels(pipe, image, grid_shape(image.height, image.width))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--sizes", nargs="+", default=["1280x720", "2000x2000"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": []}

    # 1. The app itself on CUDA with a saved tiny pipeline; compare its float16 output with float32.
    tmp = Path(tempfile.mkdtemp())
    tiny = build_pipeline("tiny", seed=0)
    tiny.save_pretrained(tmp / "tiny")
    os.environ.update(FIDEDIFF_MODEL=str(tmp / "tiny"), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    try:
        import app

        restore = app.restore
        report["app"] = {"device": app.DEVICE, "dtype": str(app.pipe.unet.dtype)}
        picture = _image(320, 240)
        fp16 = np.asarray(restore(picture, 200, 2)["image"], dtype=np.float32)
        fp32 = np.asarray(tiny.to("cuda")(picture, timestep=200, upscale_factor=2).images[0], dtype=np.float32)
        report["app"]["fp16_vs_fp32_mean_abs_diff_uint8"] = float(np.abs(fp16 - fp32).mean())
        report["app"]["fp16_vs_fp32_max_abs_diff_uint8"] = float(np.abs(fp16 - fp32).max())
        tiny.to("cpu")
    except ImportError as err:  # no gradio/spaces here: time the same steps directly
        report["app"] = {"skipped": f"app.py not importable ({err})"}
        app, restore = None, None
    print(json.dumps(report["app"]), flush=True)

    # 2. sd21-base shapes, float16, as the Space runs them.
    start = time.perf_counter()
    pipe = build_pipeline("sd21-base", seed=0).to("cuda", torch.float16)
    report["build_seconds"] = time.perf_counter() - start
    if app is not None:
        app.pipe, app.HAS_KERNELS = pipe, True
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        image = _image(width, height)
        for upscale in (2, 1):
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(1 + args.repeats):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                if restore is not None:
                    result = restore(image, 200, upscale)
                else:
                    result = _restore_without_app(pipe, image, 200, upscale)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            assert result["image"].size == (width, height)
            run = {"size": size, "megapixels": width * height / 1e6, "d": 8 // upscale, "first_s": times[0],
                   "warm_median_s": statistics.median(times[1:]), "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
            if app is not None:
                run["gpu_duration_s"] = app.gpu_duration(image, 200, upscale)
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
