"""Do the pipeline's CUDA-only paths change what it outputs? One image through the same random-weight pipeline:
in float32 with diffusers' SDPA attention and nn.GroupNorm (the reference), then in bf16 with each combination of
the VAE attention (WideHeadAttnProcessor / SDPA) and the GroupNorm (ReductionGroupNorm / nn.GroupNorm). Each bf16
output's PSNR and largest difference against the reference, so the new paths can be set beside bf16's own error.
Writes a JSON file.

    python benchmarks/compare_gpu_paths.py --output benchmarks/results/h200_paths.json
    # a CPU rehearsal (on the CPU both paths are the old ones, so the rows agree exactly):
    python benchmarks/compare_gpu_paths.py --device cpu --preset tiny --size 64x64 --output /tmp/paths.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark_pipeline import apply_optimisations, build, parse_device, parse_size  # noqa: E402

from fidediff_pipeline.atomic_io import write_text_atomic  # noqa: E402
from fidediff_pipeline.presets import PRESETS  # noqa: E402

# wide-head first: apply_optimisations switches to SDPA but not back
PATHS = [("wide-head", "reduction"), ("wide-head", "native"), ("sdpa", "reduction"), ("sdpa", "native")]


@torch.no_grad()
def restore(pipe, image, args) -> torch.Tensor:
    return pipe(image, timestep=args.timestep, upscale_factor=args.upscale, output_type="pt", max_pixels=None).images


def difference(out: torch.Tensor, reference: torch.Tensor) -> dict:
    error = out.double() - reference.double()
    mse = error.pow(2).mean().item()
    return {"psnr_db": 10 * math.log10(1 / mse) if mse > 0 else None, "max_abs": error.abs().max().item(),
            "finite": bool(torch.isfinite(out).all())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sd21-base", choices=PRESETS)
    parser.add_argument("--device", type=parse_device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=parse_size, default=(1280, 720))
    parser.add_argument("--upscale", type=int, default=2)
    parser.add_argument("--timestep", type=int, default=200)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    device = args.device
    width, height = args.size
    generator = torch.Generator().manual_seed(0)
    # a photo-like input: smooth at large scales, textured at small ones
    coarse = torch.rand(1, 3, height // 16 + 1, width // 16 + 1, generator=generator)
    image = (torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic")[0] * 0.8
             + 0.2 * torch.rand(3, height, width, generator=generator)).clamp(0, 1)

    pipe = build(args.preset, device, torch.float32, kcn=True)
    apply_optimisations(pipe, False, False, "sdpa", group_norm="native")
    reference = restore(pipe, image, args).cpu()
    pipe = build(args.preset, device, torch.bfloat16 if device.type == "cuda" else torch.float32, kcn=True)
    rows = []
    for attention, group_norm in PATHS:
        apply_optimisations(pipe, False, False, attention, group_norm=group_norm)
        out = restore(pipe, image, args).float().cpu()
        rows.append({"attention": attention, "group_norm": group_norm, **difference(out, reference)})
        print(f"{attention:9s} {group_norm:9s} PSNR vs float32 {rows[-1]['psnr_db'] or math.inf:.2f} dB, "
              f"max |diff| {rows[-1]['max_abs']:.4f}", flush=True)
    report = {"environment": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "command": " ".join(sys.argv)},
              "preset": args.preset, "size": [width, height], "upscale_factor": args.upscale,
              "timestep": args.timestep, "reference": "float32, SDPA, nn.GroupNorm", "results": rows}
    write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
