"""``fidediff deblur INPUT... -o OUT``: deblur files and folders (recursively)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def parse_timestep(value: str):
    if value == "auto":
        return "auto"
    try:
        t = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"timestep must be 'auto' or an int in [0, 999]; got {value!r}") from None
    if not 0 <= t <= 999:
        raise argparse.ArgumentTypeError(f"timestep {t} is outside [0, 999]")
    return t


TIMESTEP_HELP = "'auto' (predicted blur level) or an int in [0, 999]; t = (frames - 1) * 20"


def add_model_arguments(parser: argparse.ArgumentParser, timestep_default="auto", timestep_help: str = TIMESTEP_HELP) -> None:
    """Flags shared by every command that runs the pipeline."""
    parser.add_argument("--model", default=None, help="folder or Hub id (default: $FIDEDIFF_MODEL, else the bundled tiny model)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weights' dtype")
    parser.add_argument("--timestep", type=parse_timestep, default=timestep_default, help=timestep_help)
    parser.add_argument("--upscale-factor", type=int, default=None, choices=[1, 2],
                        help="2: upsample 2x before the VAE (paper's d=4 with SD's VAE); 1: no upsampling (d=8), "
                             "faster; default: the model's own (2 for SD-based models, 1 for the tiny one)")
    parser.add_argument("--tile-size", type=int, default=None, help="latent tile size for large images (default: automatic)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("deblur", help="deblur image files and folders",
                                   description="Deblur image files and folders (recursively); outputs are PNG.")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("-o", "--output", required=True, help="output folder (created; inputs are never overwritten)")
    add_model_arguments(parser)
    parser.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (default: 40 million)")
    parser.set_defaults(func=run)


def collect_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """``(file, path relative to the output folder)`` for every image under the inputs, in a stable order."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
                found.append((file, file.relative_to(path).with_suffix(".png")))
        elif path.is_file():
            found.append((path, Path(path.name).with_suffix(".png")))
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return found


def output_path_for(relative: Path, output_dir: Path, input_files: set[Path]) -> Path:
    target = output_dir / relative
    if target.resolve() in input_files:  # never overwrite an input, e.g. when -o is the input folder
        target = target.with_name(f"{target.stem}_deblurred.png")
    return target


def run(args) -> int:
    from tqdm import tqdm

    from ..image_processing import DEFAULT_MAX_PIXELS, load_image
    from ..loading import load_pipeline

    files = collect_inputs(args.inputs)
    if not files:
        raise ValueError(f"no images found in {', '.join(args.inputs)} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    output_dir = Path(args.output)
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    input_files = {f.resolve() for f, _ in files}
    failures = 0
    for file, relative in tqdm(files, desc="deblurring", unit="img", disable=len(files) < 2):
        try:
            image = load_image(file, max_pixels=max_pixels)
            result = pipe(image, timestep=args.timestep, upscale_factor=args.upscale_factor, tile_size=args.tile_size,
                          max_pixels=max_pixels)
        except ValueError as err:
            failures += 1
            print(f"skipped {file}: {err}", file=sys.stderr)
            continue
        target = output_path_for(relative, output_dir, input_files)
        target.parent.mkdir(parents=True, exist_ok=True)
        result.images[0].save(target)
        tqdm.write(f"{file} -> {target} (t={result.timesteps[0]}, {result.timestep_sources[0]})")
    written = len(files) - failures
    print(f"wrote {written} image(s) to {output_dir}" + (f"; skipped {failures} (see above)" if failures else ""))
    return 1 if failures else 0
