"""Make the demo's example images once: a real motion-blurred photo and two synthetic linear blurs.

    python scripts/make_examples.py            # writes assets/*.png (commit them; they are small)

The real one is scikit-image's ``clock_motion.png`` (a wall clock photographed while moving the camera
horizontally; public domain, by Stefan van der Walt). The synthetic ones blur scikit-image's ``chelsea`` and
``coffee`` photos (CC0) with a straight-line motion kernel through `fidediff_pipeline.kernel_ops`, in sRGB values
(a plain average, like GoPro's ``blur`` folder). See assets/README.md.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from fidediff_pipeline.kernel_ops import apply_per_pixel_kernels, global_kernel_to_map, linear_motion_kernel

ROOT = Path(__file__).resolve().parents[1]


def blur(image: PIL.Image.Image, kernel: np.ndarray) -> PIL.Image.Image:
    """Blur an RGB image with one kernel (the same at every pixel), with the project's reblur operator."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    k = global_kernel_to_map(torch.from_numpy(kernel), x.shape[-2], x.shape[-1])
    y = apply_per_pixel_kernels(x, k)[0].permute(1, 2, 0).clamp(0, 1).numpy()
    return PIL.Image.fromarray((y * 255).round().astype(np.uint8))


def skimage_data_file(name: str) -> Path:
    import skimage.data

    path = Path(skimage.data.__file__).parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in this scikit-image install")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "assets")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    shutil.copyfile(skimage_data_file("clock_motion.png"), args.out / "clock_motion.png")
    cat = PIL.Image.open(skimage_data_file("chelsea.png")).convert("RGB")  # 451 x 300
    blur(cat, linear_motion_kernel(13, 20)).save(args.out / "chelsea_linear13_20deg.png", optimize=True)
    coffee = PIL.Image.open(skimage_data_file("coffee.png")).convert("RGB").resize((480, 320), PIL.Image.Resampling.LANCZOS)
    blur(coffee, linear_motion_kernel(17, -60)).save(args.out / "coffee_linear17_-60deg.png", optimize=True)
    for path in sorted(args.out.glob("*.png")):
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}  {path.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
