"""Time FideDiff per image, and its parts, at GoPro size (1280x720) and 512x512; write JSON.

Random weights (timing needs no trained weights); the full ``sd21-base`` shapes by default.

    python benchmarks/benchmark_pipeline.py --preset sd21-base --device cuda --dtypes bfloat16 float16 float32 \
        --sizes 1280x720 512x512 --output benchmarks/results/h100.json

For each configuration (size, upscale factor d, with/without Kernel ControlNet, dtype, optimisations) it records:
warm-up runs, then the median/min/max/std of ``--repeats`` timed pipeline calls, the peak memory (CUDA max
allocated; on CPU the peak RSS of a fresh child process per configuration), and the median time of the bare
component calls (KCN estimator, VAE encode, KCN ControlNet, UNet, VAE decode) so the pipeline's own overhead
shows as ``pipeline / sum(components)``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fidediff_pipeline import FideDiffPipeline  # noqa: E402
from fidediff_pipeline.loading import resolve_dtype  # noqa: E402
from fidediff_pipeline.presets import PRESETS, build_pipeline  # noqa: E402
from fidediff_pipeline.training_utils import vae_encode_mode  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "std_s": statistics.pstdev(times),
        "repeats": repeats,
    }


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 1280x720; got {text!r}") from None
    return width, height


def preset_or_model(text: str) -> str:
    """A preset name (random weights) or a saved pipeline folder (its own weights and sizes, e.g. the bundled
    tiny checkpoint, whose Kernel ControlNet kernel size differs from the preset's)."""
    if text in PRESETS or Path(text, "model_index.json").is_file():
        return text
    raise argparse.ArgumentTypeError(f"--preset takes {' or '.join(PRESETS)} or a saved pipeline folder; got {text!r}")


def build(preset: str, device: torch.device, dtype: torch.dtype, kcn: bool, seed: int = 0) -> FideDiffPipeline:
    with torch.device(device) if device.type == "cuda" else torch.device("cpu"):
        if preset in PRESETS:
            pipe = build_pipeline(preset, with_kernel_controlnet=True, seed=seed)
        else:
            pipe = FideDiffPipeline.from_pretrained(preset)
            if pipe.kernel_controlnet is None and kcn:
                raise SystemExit(f"{preset} has no Kernel ControlNet: pass --kcn off")
    pipe = pipe.to(device=device, dtype=dtype)
    if not kcn:
        pipe = FideDiffPipeline(**{**pipe.components, "kernel_controlnet": None})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def apply_optimisations(pipe: FideDiffPipeline, compile_model: bool, channels_last: bool, attention: str) -> None:
    if attention == "eager":
        from diffusers.models.attention_processor import AttnProcessor

        pipe.unet.set_attn_processor(AttnProcessor())
        pipe.vae.set_attn_processor(AttnProcessor())
    if channels_last:
        for module in (pipe.unet, pipe.vae, pipe.kernel_controlnet):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if compile_model:
        pipe.unet = torch.compile(pipe.unet, fullgraph=False)
        pipe.vae.decoder = torch.compile(pipe.vae.decoder, fullgraph=False)
        pipe.vae.encoder = torch.compile(pipe.vae.encoder, fullgraph=False)
        if pipe.kernel_controlnet is not None:
            pipe.kernel_controlnet.controlnet = torch.compile(pipe.kernel_controlnet.controlnet, fullgraph=False)


@torch.no_grad()
def benchmark_config(pipe: FideDiffPipeline, width: int, height: int, upscale: int, tiling, warmup: int,
                     repeats: int, timestep) -> dict:
    device = pipe._execution_device
    dtype = pipe.unet.dtype
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, height, width, generator=generator)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pipeline_stats = time_call(
        lambda: pipe(image, timestep=timestep, upscale_factor=upscale, tiling=tiling, output_type="pt", max_pixels=None),
        device, warmup, repeats,
    )
    peak_cuda = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    # Bare component calls on the same shapes (no tiling), to show where the time goes.
    multiple = pipe.vae_scale_factor // upscale
    ph, pw = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    x = (torch.rand(1, 3, ph, pw, generator=generator) * 2 - 1).to(device, dtype)
    x_up = F.interpolate(x, scale_factor=upscale, mode="bicubic") if upscale > 1 else x
    c = pipe.prompt_embedding(1).to(device, dtype)
    t = torch.tensor([200], device=device)
    components = {}
    z = vae_encode_mode(pipe.vae, x_up)
    components["vae_encode"] = time_call(lambda: vae_encode_mode(pipe.vae, x_up), device, 1, repeats)["median_s"]
    residuals = {}
    if pipe.kernel_controlnet is not None:
        kcn = pipe.kernel_controlnet
        kernels = kcn(image=x).kernels
        components["kcn_estimate"] = time_call(lambda: kcn(image=x), device, 1, repeats)["median_s"]
        out = kcn(sample=z, timestep=t, encoder_hidden_states=c, kernels=kernels)
        residuals = dict(down_block_additional_residuals=out.down_block_res_samples,
                         mid_block_additional_residual=out.mid_block_res_sample)
        components["kcn_controlnet"] = time_call(
            lambda: kcn(sample=z, timestep=t, encoder_hidden_states=c, kernels=kernels), device, 1, repeats)["median_s"]
    components["unet"] = time_call(lambda: pipe.unet(z, t, encoder_hidden_states=c, **residuals), device, 1, repeats)["median_s"]
    components["vae_decode"] = time_call(lambda: pipe.vae.decode(z), device, 1, repeats)["median_s"]
    total = sum(components.values())
    return {
        "pipeline": pipeline_stats,
        "components_median_s": components,
        "components_sum_s": total,
        "pipeline_over_components": pipeline_stats["median_s"] / total if total else None,
        "latent_size": [ph * upscale // pipe.vae_scale_factor, pw * upscale // pipe.vae_scale_factor],
        "peak_cuda_allocated_gib": peak_cuda / 2**30 if peak_cuda is not None else None,
    }


def run_group(args, preset, device, dtype_name, kcn, compile_model, channels_last, attention) -> list[dict]:
    dtype = resolve_dtype(dtype_name)
    pipe = build(preset, device, dtype, kcn)
    apply_optimisations(pipe, compile_model, channels_last, attention)
    records = []
    for width, height in args.sizes:
        for upscale in args.upscale_factors:
            record = {
                "preset": preset, "device": str(device), "dtype": dtype_name, "kernel_controlnet": kcn,
                "width": width, "height": height, "upscale_factor": upscale, "d": pipe.vae_scale_factor // upscale,
                "tiling": args.tiling, "compile": compile_model, "channels_last": channels_last, "attention": attention,
                "timestep": args.timestep,
            }
            try:
                record.update(benchmark_config(pipe, width, height, upscale, _tiling_value(args.tiling), args.warmup,
                                               args.repeats, args.timestep))
            except torch.OutOfMemoryError as err:
                record["error"] = f"out of memory: {str(err).splitlines()[0]}"
                torch.cuda.empty_cache()
            if device.type == "cpu":
                record["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(summary_line(record), flush=True)
            records.append(record)
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


def _tiling_value(text: str):
    return {"auto": "auto", "on": True, "off": False}[text]


def summary_line(r: dict) -> str:
    if "error" in r:
        return f"{r['preset']} {r['width']}x{r['height']} d={r['d']} kcn={r['kernel_controlnet']} {r['dtype']}: {r['error']}"
    mem = r.get("peak_cuda_allocated_gib") or r.get("peak_rss_gib")
    return (f"{r['preset']:9s} {r['width']}x{r['height']} d={r['d']} kcn={int(r['kernel_controlnet'])} {r['dtype']:8s} "
            f"compile={int(r['compile'])} cl={int(r['channels_last'])} attn={r['attention']:5s} "
            f"median {r['pipeline']['median_s']:.4f}s (min {r['pipeline']['min_s']:.4f}, max {r['pipeline']['max_s']:.4f}) "
            f"mem {mem:.2f} GiB  overhead x{r['pipeline_over_components']:.2f}  "
            + " ".join(f"{k}={v:.4f}" for k, v in r["components_median_s"].items()))


def markdown_table(records: list[dict]) -> str:
    lines = ["| preset | size | d | KCN | dtype | t | tiling | compile | channels-last | attention | median s/img | min-max | peak mem GiB | pipeline / components |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        head = (f"| {r['preset']} | {r['width']}x{r['height']} | {r['d']} | {'yes' if r['kernel_controlnet'] else 'no'} | "
                f"{r['dtype']} | {r.get('timestep', 200)} | {r.get('tiling', 'off')} | {'on' if r['compile'] else 'off'} | "
                f"{'on' if r['channels_last'] else 'off'} | {r['attention']} |")
        if "error" in r:
            lines.append(f"{head} {r['error'].split('. ')[0]} | | | |")
            continue
        mem = r.get("peak_cuda_allocated_gib") or r.get("peak_rss_gib")
        p = r["pipeline"]
        lines.append(f"{head} {p['median_s']:.3f} | {p['min_s']:.3f}-{p['max_s']:.3f} | {mem:.2f} | {r['pipeline_over_components']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["sd21-base"], type=preset_or_model,
                        help="sd21-base / tiny (random weights) or a saved pipeline folder (its own weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: bfloat16 float16 float32 on CUDA, float32 on CPU")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(1280, 720), (512, 512)])
    parser.add_argument("--upscale-factors", nargs="+", type=int, default=[1, 2], help="1 = d=8, 2 = d=4 (paper)")
    parser.add_argument("--kcn", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--tiling", default="off", choices=["auto", "on", "off"])
    parser.add_argument("--timestep", default=200, type=lambda v: v if v == "auto" else int(v))
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["on", "off"])
    parser.add_argument("--channels-last", nargs="+", default=["off"], choices=["on", "off"])
    parser.add_argument("--attention", nargs="+", default=["sdpa"], choices=["sdpa", "eager"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--isolate", action="store_true", help="CPU: one child process per group, for a true peak RSS")
    parser.add_argument("--output", default="benchmarks/results/benchmark.json")
    parser.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                        help="print one Markdown table of earlier result files and exit")
    args = parser.parse_args(argv)
    if args.summarize:
        records = [r for path in args.summarize for r in json.loads(Path(path).read_text())["results"]]
        print(markdown_table(records))
        return 0
    device = torch.device(args.device)
    dtypes = args.dtypes or (["bfloat16", "float16", "float32"] if device.type == "cuda" else ["float32"])

    groups = [(preset, dt, kcn == "on", comp == "on", cl == "on", attn)
              for preset in args.preset for dt in dtypes for kcn in args.kcn for comp in args.compile
              for cl in args.channels_last for attn in args.attention]
    records: list[dict] = []
    for preset, dt, kcn, comp, cl, attn in groups:
        if args.isolate and device.type == "cpu":
            child = [sys.executable, __file__, "--preset", preset, "--device", "cpu", "--dtypes", dt,
                     "--sizes", *[f"{w}x{h}" for w, h in args.sizes], "--upscale-factors", *map(str, args.upscale_factors),
                     "--kcn", "on" if kcn else "off", "--compile", "on" if comp else "off",
                     "--channels-last", "on" if cl else "off", "--attention", attn, "--tiling", args.tiling,
                     "--timestep", str(args.timestep), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
                     "--output", args.output + ".part"]
            subprocess.run(child, check=True)
            records.extend(json.loads(Path(args.output + ".part").read_text())["results"])
            Path(args.output + ".part").unlink()
        else:
            records.extend(run_group(args, preset, device, dt, kcn, comp, cl, attn))

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"environment": env, "results": records}, indent=2) + "\n")
    print(markdown_table(records))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
