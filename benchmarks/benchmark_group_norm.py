"""Time and check SD 2.1-base's GroupNorms alone: nn.GroupNorm against ReductionGroupNorm, at the shapes one pipeline
call gives the VAE and the UNet (found by running them on the meta device), with each one's error against a float64
reference on the same input. Writes a JSON file.

    python benchmarks/benchmark_group_norm.py --device cuda --dtype bfloat16 --size 1280x720 --upscale 2 \\
        --output benchmarks/results/h200_group_norm_ops.json
    # a CPU rehearsal (the reduction path forced on the CPU, where the pipeline never takes it):
    python benchmarks/benchmark_group_norm.py --device cpu --size 32x32 --output /tmp/gn.json

Every shape is timed on both paths (ReductionGroupNorm's own threshold, ``min_group_elements``, lifted) so the
threshold can be read off the rows. The inputs are random with a mean per channel up to 3x its spread, as
activations have (E[x^2] - E[x]^2 loses digits as the mean grows); a model's total is each shape's median time
times how often the model meets that shape.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark_pipeline import parse_device, parse_size, time_call  # noqa: E402

from fidediff_pipeline.atomic_io import write_text_atomic  # noqa: E402
from fidediff_pipeline.models.normalization import ReductionGroupNorm  # noqa: E402
from fidediff_pipeline.presets import build_unet, build_vae  # noqa: E402


def group_norm_shapes(width: int, height: int) -> Counter:
    """(model, input shape, groups) of every GroupNorm call in one VAE encode and decode of a width x height image
    and one UNet call on its latent, SD 2.1-base's shapes (the Kernel ControlNet's ControlNet repeats the UNet's
    down and middle blocks' shapes)."""
    with torch.device("meta"):
        vae, unet = build_vae("sd21-base"), build_unet("sd21-base")
    seen: Counter = Counter()
    hooks = [module.register_forward_pre_hook(
                 lambda m, args, name=name: seen.update([(name, tuple(args[0].shape), m.num_groups)]))
             for name, model in (("vae", vae), ("unet", unet)) for module in model.modules()
             if isinstance(module, nn.GroupNorm)]
    with torch.no_grad():
        latent = vae.encode(torch.empty(1, 3, height, width, device="meta")).latent_dist.mode()
        vae.decode(latent)
        context = torch.empty(1, 77, unet.config.cross_attention_dim, device="meta")
        unet(latent, torch.tensor([200], device="meta"), encoder_hidden_states=context)
    for hook in hooks:
        hook.remove()
    return seen


def measure_shape(shape, groups, device, dtype, repeats, generator) -> dict:
    channels = shape[1]
    spread = torch.rand(1, channels, *(1,) * (len(shape) - 2), generator=generator, device=device) + 0.5
    mean = (torch.rand(spread.shape, generator=generator, device=device) * 6 - 3) * spread
    x = (torch.randn(shape, generator=generator, device=device) * spread + mean).to(dtype)
    reduction = ReductionGroupNorm(groups, channels).to(device=device, dtype=dtype)
    default_path = reduction._takes(x)
    reduction.devices, reduction.min_group_elements = (device.type,), 0  # timed on every shape, for the threshold
    native = nn.GroupNorm(groups, channels).to(device=device, dtype=dtype)
    with torch.no_grad():
        reduction.weight.copy_(torch.rand(channels, generator=generator, device=device) + 0.5)
        reduction.bias.copy_(torch.randn(channels, generator=generator, device=device))
        native.load_state_dict(reduction.state_dict())
        row = {"shape": list(shape), "groups": groups, "reduction_path_by_default": default_path}
        reference = F.group_norm(x.double(), groups, reduction.weight.double(), reduction.bias.double(),
                                 reduction.eps)
        for name, module in (("native", native), ("reduction", reduction)):
            out = module(x)
            error = out.double() - reference
            row[name] = {"median_s": time_call(lambda: module(x), device, warmup=1, repeats=repeats)["median_s"],
                         "max_abs_error": error.abs().max().item(), "rms_error": error.pow(2).mean().sqrt().item()}
            del out, error
        del reference, x
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default="1280x720", help="the image, WIDTHxHEIGHT, before --upscale")
    parser.add_argument("--upscale", type=int, default=2, help="the pipeline's upscale factor (2 = d 4 on SD's VAE)")
    parser.add_argument("--device", type=parse_device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    width, height = (v * args.upscale for v in args.size)
    if args.repeats < 1:
        parser.error(f"--repeats takes a positive number; got {args.repeats}")
    device, dtype = args.device, getattr(torch, args.dtype)
    generator = torch.Generator(device).manual_seed(0)  # inputs made where they are used (the largest: 472M values)
    rows = []
    for (model, shape, groups), count in sorted(group_norm_shapes(width, height).items(),
                                                key=lambda item: (item[0][0], -math.prod(item[0][1]))):
        row = {"model": model, **measure_shape(shape, groups, device, dtype, args.repeats, generator), "calls": count}
        rows.append(row)
        print(f"{model} {shape} x{count}: native {row['native']['median_s'] * 1e3:.2f} ms "
              f"(rms {row['native']['rms_error']:.2e}), reduction {row['reduction']['median_s'] * 1e3:.2f} ms "
              f"(rms {row['reduction']['rms_error']:.2e})"
              f"{'' if row['reduction_path_by_default'] else ' [below min_group_elements]'}",
              flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    totals = {}
    for model in ("vae", "unet"):
        own = [r for r in rows if r["model"] == model]
        totals[model] = {name: sum(r[name]["median_s"] * r["calls"] for r in own) for name in ("native", "reduction")}
        totals[model]["reduction_above_min_group_elements"] = sum(
            r["reduction" if r["reduction_path_by_default"] else "native"]["median_s"] * r["calls"] for r in own)
        print(f"{model}, one call: " + ", ".join(f"{name} {value:.4f} s" for name, value in totals[model].items()))
    report = {"environment": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "command": " ".join(sys.argv)},
              "preset": "sd21-base", "vae_input": [width, height], "dtype": args.dtype,
              "total_s": totals, "results": rows}
    write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
