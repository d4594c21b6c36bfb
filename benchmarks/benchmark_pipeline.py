"""Time FideDiff per call, and its parts, across sizes and batch sizes; profile it; write JSON.

Random weights (timing needs no trained weights); the full ``sd21-base`` shapes by default, or ``--preset tiny``
(random), or a saved pipeline folder (its own weights, e.g. the bundled tiny checkpoint).

    python benchmarks/benchmark_pipeline.py --preset sd21-base --device cuda --dtypes bfloat16 float16 float32 \
        --sizes 1280x720 512x512 --output benchmarks/results/h100.json

    # one CPU run with every figure of issue 15 (sizes, batches, per-module/per-op profile, tiling overhead, RSS)
    python benchmarks/benchmark_pipeline.py --preset fidediff_pipeline/checkpoints/fidediff-tiny --device cpu \
        --kcn on --timestep auto --upscale-factors default --sizes 256x256 512x512 1024x1024 2048x2048 \
        --batch-sizes 1 4 8 --batch-sizes-at 256x256 --tiling compare --tiling-compare-at 1024x1024 \
        --profile --isolate --warmup 1 --repeats 3 --output benchmarks/results/cpu_tiny_issue15.json
    python benchmarks/benchmark_pipeline.py --summarize benchmarks/results/cpu_tiny_issue15.json

For each configuration (size, batch size B, upscale factor d, with/without Kernel ControlNet, dtype,
optimisations) it records: warm-up runs, then the median/min/max/std of ``--repeats`` timed pipeline calls (one
call restores B same-sized images, batched into one UNet evaluation), images per second, seconds per megapixel,
the peak memory (CUDA max allocated; on CPU the peak RSS, of a fresh child process per configuration with
``--isolate``), and the median time of the bare component calls on the same shapes and batch (kernel estimator M,
t-regressor T, filter F, ControlNet C, UNet, VAE encode, VAE decode), so the pipeline's own overhead shows as
``pipeline - sum(components)`` and ``pipeline / sum(components)``. ``--profile`` adds one profiled call
(torch.profiler, after the warm-up): the top aten ops by self time and each module's time inside that call.
``--tiling compare`` times the same image tiled (forced) and untiled in one record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # torch.profiler's start/stop chatter on stderr

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fidediff_pipeline import FideDiffPipeline  # noqa: E402
from fidediff_pipeline.atomic_io import write_text_atomic  # noqa: E402
from fidediff_pipeline.cpu_memory import peak_rss_gib  # noqa: E402
from fidediff_pipeline.hub.loading import resolve_dtype  # noqa: E402
from fidediff_pipeline.presets import PRESETS, build_pipeline  # noqa: E402
from fidediff_pipeline.restoration import (  # noqa: E402
    low_frequency_transfer, resize_from_vae, upsample_for_vae, vae_encode_mode,
)

# Bare components in pipeline order, with the names used in tables. Their medians add up to components_sum_s.
COMPONENTS = {
    "vae_encode": "VAE enc",
    "kernel_estimator": "M",
    "timestep_regressor": "T",
    "kernel_filter": "F",
    "controlnet": "C",
    "unet": "UNet",
    "vae_decode": "VAE dec",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    warmup_times = []  # the first includes one-time costs (cuDNN autotuning of new shapes, allocator growth)
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        _sync(device)
        warmup_times.append(time.perf_counter() - start)
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "median_s": statistics.median(times),
        "cpu_median_s": statistics.median(cpu_times),  # CPU seconds of all this process's threads per call
        "min_s": min(times),
        "max_s": max(times),
        "std_s": statistics.pstdev(times),
        "repeats": repeats,
        "warmup_s": warmup_times,
    }


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 1280x720; got {text!r}") from None
    return width, height


def parse_device(text: str) -> torch.device:
    """``--device``: a device torch knows; CUDA on a machine without it is refused in one line (torch would raise
    from deep inside the first model moved there)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("this machine has no CUDA device PyTorch can use (--device cpu rehearses)")
    return device


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
    models = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    if any(p.dtype != dtype for m in models for p in m.parameters()):
        pipe = pipe.to(dtype=dtype)  # (diffusers warns on every cast, so only when there is one)
    pipe = pipe.to(device=device)
    if not kcn:
        pipe = FideDiffPipeline(**{**pipe.components, "kernel_controlnet": None})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def apply_optimisations(pipe: FideDiffPipeline, compile_model, channels_last: bool, attention: str,
                        reuse_cpu_memory: bool = True, cudnn_benchmark: bool = False, group_norm: str = "native") -> None:
    # "wide-head": the pipeline's own processors (WideHeadAttnProcessor on an AutoencoderKL's VAE attention, SDPA
    # elsewhere); "sdpa": diffusers' SDPA processor everywhere (the pipeline's default before 2026-12-04);
    # "eager": diffusers' classic processor (materialises the attention matrix).
    if attention in ("eager", "sdpa"):
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        processor = AttnProcessor if attention == "eager" else AttnProcessor2_0
        for model in (pipe.unet, pipe.vae):
            if hasattr(model, "set_attn_processor") and model.attn_processors:  # AutoencoderTiny has no attention
                model.set_attn_processor(processor())
    # Process-wide: cuDNN times its convolution algorithms on each new input shape and keeps the fastest.
    torch.backends.cudnn.benchmark = cudnn_benchmark
    # "reduction": the opt-in ReductionGroupNorm in every model (large 16-bit groups on CUDA; nn.GroupNorm's path
    # elsewhere); "native": nn.GroupNorm's path everywhere, also in a pipeline a previous group switched over.
    from fidediff_pipeline.models.normalization import ReductionGroupNorm, use_reduction_group_norm

    for model in (pipe.vae, pipe.unet, pipe.kernel_controlnet):
        if model is not None and group_norm == "reduction":
            use_reduction_group_norm(model)
        for module in model.modules() if model is not None else ():
            if isinstance(module, ReductionGroupNorm):
                module.devices = ReductionGroupNorm.devices if group_norm == "reduction" else ()
    # On the CPU the pipeline runs its models on channels-last inputs by default (pipe.channels_last_on_cpu);
    # "off" turns that off, so both layouts can be timed in one run. On CUDA "on" converts the models' weights.
    pipe.channels_last_on_cpu = channels_last
    # glibc keeps freed blocks for reuse once the pipeline runs on the CPU (cpu_memory.keep_freed_cpu_memory);
    # process-wide, so "default" (glibc's own thresholds) needs a process of its own (--isolate).
    pipe.reuse_cpu_memory = reuse_cpu_memory
    if channels_last and pipe._execution_device.type != "cpu":
        for module in (pipe.unet, pipe.vae, pipe.kernel_controlnet):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if compile_model:  # True: every model; "unet": the UNet and the ControlNet (the VAE at d = 4 compiles for minutes)
        pipe.unet = torch.compile(pipe.unet, fullgraph=False)
        if compile_model != "unet":
            pipe.vae.decoder = torch.compile(pipe.vae.decoder, fullgraph=False)
            pipe.vae.encoder = torch.compile(pipe.vae.encoder, fullgraph=False)
        if pipe.kernel_controlnet is not None:
            pipe.kernel_controlnet.controlnet = torch.compile(pipe.kernel_controlnet.controlnet, fullgraph=False)


@torch.no_grad()
def time_components(pipe: FideDiffPipeline, width: int, height: int, upscale: int, batch: int, repeats: int,
                    generator: torch.Generator, overhead_parts: bool = False) -> tuple[dict, dict]:
    """Median seconds of each bare component call on the shapes the pipeline uses (untiled), for ``batch`` images.

    The Kernel ControlNet is split as in the paper: M (``kernel_estimator``), T (``timestep_regressor``), F
    (``kernel_filter``, with the ControlNet ``conv_in`` whose output it filters; the pipeline computes that
    once for F) and C (the inner ControlNet, with F's residual as its conditioning). With ``overhead_parts``,
    also the pipeline's own tensor work outside the models (2x bicubic upsampling, the resize back, the colour
    fix), which is part of ``pipeline - sum(components)``.
    """
    device, dtype = pipe._execution_device, pipe.unet.dtype
    multiple = pipe.vae_scale_factor // upscale
    ph, pw = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    x = (torch.rand(batch, 3, ph, pw, generator=generator) * 2 - 1).to(device, dtype)
    x = pipe._in_model_layout(x)  # the layout the pipeline's models get (channels-last on the CPU)
    x_up = upsample_for_vae(x, upscale)
    c = pipe.prompt_embedding(batch).to(device, dtype)
    t = torch.full((batch,), 200, device=device, dtype=torch.long)
    components = {}
    z = vae_encode_mode(pipe.vae, x_up)
    components["vae_encode"] = time_call(lambda: vae_encode_mode(pipe.vae, x_up), device, 1, repeats)["median_s"]
    residuals = {}
    kcn = pipe.kernel_controlnet
    if kcn is not None:
        kernels = kcn.kernel_estimator(x)
        components["kernel_estimator"] = time_call(lambda: kcn.kernel_estimator(x), device, 1, repeats)["median_s"]
        components["timestep_regressor"] = time_call(lambda: kcn.timestep_regressor(kernels, x), device, 1,
                                                     repeats)["median_s"]

        def filter_call():
            return kcn.kernel_filter(kcn.controlnet.conv_in(z), kernels.to(z.dtype))

        cond = filter_call()
        components["kernel_filter"] = time_call(filter_call, device, 1, repeats)["median_s"]

        def controlnet_call():
            return kcn.controlnet(z, t, encoder_hidden_states=c, controlnet_cond=cond, return_dict=False)

        down_res, mid_res = controlnet_call()
        residuals = dict(down_block_additional_residuals=down_res, mid_block_additional_residual=mid_res)
        components["controlnet"] = time_call(controlnet_call, device, 1, repeats)["median_s"]
    components["unet"] = time_call(lambda: pipe.unet(z, t, encoder_hidden_states=c, **residuals), device, 1,
                                   repeats)["median_s"]
    components["vae_decode"] = time_call(lambda: pipe.vae.decode(z), device, 1, repeats)["median_s"]

    parts = {}
    if overhead_parts:
        if upscale > 1:
            parts["upsample_for_vae"] = time_call(lambda: upsample_for_vae(x, upscale), device, 1, repeats)["median_s"]
            parts["resize_from_vae"] = time_call(lambda: resize_from_vae(x_up, (ph, pw), upscale), device, 1,
                                                 repeats)["median_s"]
        sigma = getattr(pipe.config, "color_fix_sigma", None)
        if sigma:
            xf = x.float()
            parts["color_fix"] = time_call(lambda: low_frequency_transfer(xf, xf, float(sigma)), device, 1,
                                           repeats)["median_s"]
    return components, parts


class _ModuleTimer:
    """Forward hooks that wrap named modules in ``torch.profiler.record_function`` labels (``fidediff::<name>``),
    so a profiled pipeline call reports each module's time inside the real call (tiles and all)."""

    def __init__(self, pipe: FideDiffPipeline):
        kcn = pipe.kernel_controlnet
        self.modules = {"vae_encode": pipe.vae.encoder, "unet": pipe.unet, "vae_decode": pipe.vae.decoder}
        if kcn is not None:
            self.modules.update(kernel_estimator=kcn.kernel_estimator, timestep_regressor=kcn.timestep_regressor,
                                kernel_filter=kcn.kernel_filter, controlnet=kcn.controlnet)
        self.handles, self.open = [], {}

    def __enter__(self):
        from torch.profiler import record_function

        for name, module in self.modules.items():
            def pre(_module, _args, name=name):
                label = record_function(f"fidediff::{name}")
                label.__enter__()
                self.open.setdefault(name, []).append(label)

            def post(_module, _args, _output, name=name):
                self.open[name].pop().__exit__(None, None, None)

            self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def profile_call(pipe: FideDiffPipeline, call, top: int) -> dict:
    """One profiled call (after the caller's warm-up): top aten ops by self time, and each module's time in it."""
    from torch.profiler import ProfilerActivity, profile

    device = pipe._execution_device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with _ModuleTimer(pipe), profile(activities=activities) as prof:
        start = time.perf_counter()
        call()
        _sync(device)
        wall = time.perf_counter() - start
    averages = prof.key_averages()
    on_gpu = device.type == "cuda"
    sort_key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    ops = sorted((e for e in averages if e.key.startswith("aten::")), key=lambda e: getattr(e, sort_key), reverse=True)
    top_ops = []
    for e in ops[:top]:
        row = {"op": e.key, "calls": e.count, "self_cpu_s": e.self_cpu_time_total / 1e6,
               "self_cpu_share": e.self_cpu_time_total / 1e6 / wall, "cpu_total_s": e.cpu_time_total / 1e6}
        if on_gpu:
            row["self_device_s"] = e.self_device_time_total / 1e6
        top_ops.append(row)
    modules = {e.key.split("::", 1)[1]: e.cpu_time_total / 1e6 for e in averages if e.key.startswith("fidediff::")}
    calls = {e.key.split("::", 1)[1]: e.count for e in averages if e.key.startswith("fidediff::")}
    return {
        "call_s": wall,
        "top_ops_sorted_by": sort_key,
        "top_ops": top_ops,
        "aten_ops_self_cpu_s": sum(e.self_cpu_time_total for e in ops) / 1e6,
        "in_call_modules_s": {name: modules[name] for name in COMPONENTS if name in modules},
        "in_call_module_calls": {name: calls[name] for name in COMPONENTS if name in calls},
        **({"in_call_modules_note": "host time: CUDA kernels run asynchronously, see top_ops' self_device_s"}
           if on_gpu else {}),
    }


@torch.no_grad()
def benchmark_config(pipe: FideDiffPipeline, width: int, height: int, upscale: int, tiling, warmup: int,
                     repeats: int, timestep, batch: int = 1, profile: bool = False, profile_top: int = 15,
                     compare_tiling: bool = False, tile_size: int | None = None,
                     tile_overlap: int | None = None) -> dict:
    device = pipe._execution_device
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, height, width, generator=generator) for _ in range(batch)]
    image = images[0] if batch == 1 else images  # a list of B same-sized images: one batched UNet call

    def run(tiled):
        return pipe(image, timestep=timestep, upscale_factor=upscale, tiling=tiled, tile_size=tile_size,
                    tile_overlap=tile_overlap, output_type="pt", max_pixels=None)

    main_tiling = False if compare_tiling else tiling
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pipeline_stats = time_call(lambda: run(main_tiling), device, warmup, repeats)
    peak_cuda = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    rss = peak_rss_gib() if device.type == "cpu" else None  # before anything else runs in this process

    result = {"pipeline": pipeline_stats}
    if compare_tiling:
        tile = int(tile_size or pipe._default_tile_size())
        overlap = int(tile_overlap if tile_overlap is not None else pipe._default_tile_overlap(tile))
        tiled = time_call(lambda: run(True), device, warmup, repeats)
        result["tiling_compare"] = {
            "tiled": tiled,
            "untiled_median_s": pipeline_stats["median_s"],
            "tiled_over_untiled": tiled["median_s"] / pipeline_stats["median_s"],
            "tile_size": tile, "tile_overlap": overlap,
            "tiles": pipe._tiles_per_image(height, width, upscale, True, tile, overlap),
        }
    if profile:
        result["profile"] = profile_call(pipe, lambda: run(main_tiling), profile_top)

    components, parts = time_components(pipe, width, height, upscale, batch, repeats, generator, overhead_parts=profile)
    total = sum(components.values())
    multiple = pipe.vae_scale_factor // upscale
    ph, pw = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    median = pipeline_stats["median_s"]
    result.update({
        "images_per_s": batch / median,
        "s_per_image": median / batch,
        "s_per_megapixel": median / (batch * width * height / 1e6),
        "components_median_s": components,
        "components_sum_s": total,
        "pipeline_overhead_s": median - total,
        "pipeline_over_components": median / total if total else None,
        "latent_size": [ph * upscale // pipe.vae_scale_factor, pw * upscale // pipe.vae_scale_factor],
        "peak_cuda_allocated_gib": peak_cuda / 2**30 if peak_cuda is not None else None,
    })
    if parts:
        result["profile"]["overhead_parts_median_s"] = parts
    if rss is not None:
        result["peak_rss_gib"] = rss
    return result


def run_group(args, preset, device, dtype_name, kcn, compile_model, channels_last, attention,
              reuse_cpu_memory=True, cudnn_benchmark=False, group_norm="native") -> list[dict]:
    dtype = resolve_dtype(dtype_name)
    pipe = build(preset, device, dtype, kcn)
    apply_optimisations(pipe, compile_model, channels_last, attention, reuse_cpu_memory, cudnn_benchmark, group_norm)
    records = []
    for width, height in args.sizes:
        for batch in batches_for(args, (width, height)):
            for upscale in args.upscale_factors:
                if upscale == "default":
                    upscale = int(getattr(pipe.config, "default_upscale_factor", 2) or 2)
                compare = args.tiling == "compare" and (width, height) in tiling_compare_sizes(args) and batch == 1
                record = {
                    "preset": preset, "device": str(device), "dtype": dtype_name, "kernel_controlnet": kcn,
                    "width": width, "height": height, "batch_size": batch, "upscale_factor": upscale,
                    "d": pipe.vae_scale_factor // upscale,
                    "tiling": "off" if args.tiling == "compare" else args.tiling, "compile": compile_model,
                    "channels_last": channels_last, "attention": attention, "timestep": args.timestep,
                }
                if device.type == "cuda":  # (files before 2026-12-05 have a group_norm field only if not native)
                    record["cudnn_benchmark"], record["group_norm"] = cudnn_benchmark, group_norm
                if device.type == "cpu":
                    record["cpu_memory"] = "reuse" if reuse_cpu_memory else "default"
                if hasattr(os, "getloadavg"):
                    record["load_average_1min_at_start"] = os.getloadavg()[0]
                start = time.perf_counter()
                try:
                    record.update(benchmark_config(
                        pipe, width, height, upscale, _tiling_value(args.tiling), args.warmup, args.repeats,
                        args.timestep, batch=batch, profile=args.profile, profile_top=args.profile_top,
                        compare_tiling=compare, tile_size=args.tile_size, tile_overlap=args.tile_overlap))
                except torch.OutOfMemoryError as err:
                    record["error"] = f"out of memory: {str(err).splitlines()[0]}"
                    torch.cuda.empty_cache()
                except Exception as err:  # one failing configuration must not lose the others' rows
                    import traceback

                    traceback.print_exc()
                    record["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                record["record_wall_s"] = time.perf_counter() - start
                if device.type == "cpu":
                    record["peak_rss_scope"] = "config (own process)" if args.child else "process so far"
                    record.setdefault("peak_rss_gib", peak_rss_gib())
                print(summary_line(record), flush=True)
                records.append(record)
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


def _tiling_value(text: str):
    return {"auto": "auto", "on": True, "off": False, "compare": False}[text]


def batches_for(args, size) -> list[int]:
    at = args.batch_sizes_at
    return list(args.batch_sizes) if at is None or tuple(size) in at else [1]


def tiling_compare_sizes(args) -> list[tuple[int, int]]:
    return args.tiling_compare_at if args.tiling_compare_at is not None else list(args.sizes)


def _fmt_size(size) -> str:
    return f"{size[0]}x{size[1]}"


def child_argv(args, preset, dtype, kcn, comp, cl, attn, mem, size, batch, upscale, output) -> list[str]:
    """The command line of an ``--isolate`` child: one configuration (size, batch, upscale factor)."""
    argv = [sys.executable, __file__, "--child", "--preset", preset, "--device", "cpu", "--dtypes", dtype,
            "--sizes", _fmt_size(size), "--batch-sizes", str(batch), "--upscale-factors", str(upscale),
            "--kcn", "on" if kcn else "off", "--compile", _on_off(comp),
            "--channels-last", "on" if cl else "off", "--attention", attn, "--cpu-memory", mem,
            "--tiling", args.tiling,
            "--timestep", str(args.timestep), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
            "--output", output]
    if args.tiling == "compare":
        argv += ["--tiling-compare-at", *map(_fmt_size, tiling_compare_sizes(args))]
    if args.tile_size is not None:
        argv += ["--tile-size", str(args.tile_size)]
    if args.tile_overlap is not None:
        argv += ["--tile-overlap", str(args.tile_overlap)]
    if args.profile:
        argv += ["--profile", "--profile-top", str(args.profile_top)]
    return argv


# ------------------------------------------------------------------ derived figures and tables
def _config_key(r: dict, *drop: str) -> tuple:
    fields = ("preset", "device", "dtype", "kernel_controlnet", "upscale_factor", "timestep", "tiling", "compile",
              "channels_last", "attention", "cpu_memory", "cudnn_benchmark", "group_norm", "batch_size", "width", "height")
    return tuple(r.get(f, 1 if f == "batch_size" else None) for f in fields if f not in drop)


def add_derived(records: list[dict]) -> list[dict]:
    """Per record: seconds per megapixel and its ratio to the smallest size of the same configuration and batch
    (``per_pixel_vs_smallest``), and images per second relative to batch 1 of the same size (``throughput_vs_batch1``).
    Works on older result files too (no batch size means 1)."""
    ok = [r for r in records if "error" not in r and "pipeline" in r]
    for r in ok:
        r.setdefault("batch_size", 1)
        r.setdefault("s_per_megapixel", r["pipeline"]["median_s"] / (r["batch_size"] * r["width"] * r["height"] / 1e6))
        r.setdefault("images_per_s", r["batch_size"] / r["pipeline"]["median_s"])
    smallest: dict[tuple, dict] = {}
    for r in ok:
        key = _config_key(r, "width", "height")
        if key not in smallest or r["width"] * r["height"] < smallest[key]["width"] * smallest[key]["height"]:
            smallest[key] = r
    batch1 = {_config_key(r, "batch_size"): r for r in ok if r["batch_size"] == 1}
    for r in ok:
        base = smallest[_config_key(r, "width", "height")]
        r["per_pixel_vs_smallest"] = r["s_per_megapixel"] / base["s_per_megapixel"]
        r["per_pixel_smallest_size"] = [base["width"], base["height"]]
        one = batch1.get(_config_key(r, "batch_size"))
        r["throughput_vs_batch1"] = r["images_per_s"] / one["images_per_s"] if one else None
    return records


def _short(preset: str) -> str:
    return Path(preset).name if preset not in PRESETS else preset


def summary_line(r: dict) -> str:
    head = f"{_short(r['preset'])} {r['width']}x{r['height']} B={r.get('batch_size', 1)} d={r['d']} kcn={int(r['kernel_controlnet'])} {r['dtype']}"
    if "error" in r:
        return f"{head}: {r['error']}"
    mem = r.get("peak_cuda_allocated_gib") or r.get("peak_rss_gib")
    line = (f"{head} compile={_on_off(r['compile'])} cl={int(r['channels_last'])} attn={r['attention']} "
            f"cpu_memory={r.get('cpu_memory', '-')} cudnn_benchmark={int(r.get('cudnn_benchmark', False))} "
            f"group_norm={r.get('group_norm', 'native')} "
            f"median {r['pipeline']['median_s']:.4f}s (min {r['pipeline']['min_s']:.4f}, max {r['pipeline']['max_s']:.4f}) "
            f"{r.get('images_per_s', 0):.2f} img/s  mem {mem:.2f} GiB  overhead x{r['pipeline_over_components']:.2f}  "
            + " ".join(f"{k}={v:.4f}" for k, v in r["components_median_s"].items()))
    if "tiling_compare" in r:
        tc = r["tiling_compare"]
        line += f"  tiled {tc['tiled']['median_s']:.4f}s ({tc['tiles']} tiles) = x{tc['tiled_over_untiled']:.2f}"
    if "profile" in r:
        line += "  top ops: " + ", ".join(f"{o['op']} {o['self_cpu_share']:.0%}" for o in r["profile"]["top_ops"][:3])
    return line


def _on_off(value) -> str:
    """A record's switch as the command line spells it: True / False as on / off, other values (compile "unet")
    as they are."""
    return {True: "on", False: "off"}.get(value, str(value))


def _head(r: dict) -> str:
    return (f"| {_short(r['preset'])} | {r['width']}x{r['height']} | {r.get('batch_size', 1)} | {r['d']} | "
            f"{'yes' if r['kernel_controlnet'] else 'no'} | {r['dtype']} | {r.get('timestep', 200)} |")


def markdown_table(records: list[dict]) -> str:
    lines = ["| preset | size | B | d | KCN | dtype | t | tiling | compile | channels-last | attention | CPU memory | cuDNN benchmark | group norm | median s/call | min-max | images/s | s/MPx | per px vs smallest | peak mem GiB | pipeline / components |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        cudnn = _on_off(r["cudnn_benchmark"]) if "cudnn_benchmark" in r else ""  # CUDA records only
        head = (f"{_head(r)} {r.get('tiling', 'off')} | {_on_off(r['compile'])} | "
                f"{'on' if r['channels_last'] else 'off'} | {r['attention']} | {r.get('cpu_memory', '')} | {cudnn} | "
                f"{r.get('group_norm', 'native')} |")
        if "error" in r:
            lines.append(f"{head} {r['error'].split('. ')[0]} | | | | | | |")
            continue
        mem = r.get("peak_cuda_allocated_gib") or r.get("peak_rss_gib")
        p = r["pipeline"]
        ratio = r.get("per_pixel_vs_smallest")
        lines.append(f"{head} {p['median_s']:.3f} | {p['min_s']:.3f}-{p['max_s']:.3f} | {r['images_per_s']:.2f} | "
                     f"{r['s_per_megapixel']:.3f} | {'' if ratio is None else f'{ratio:.2f}'} | {mem:.2f} | "
                     f"{r['pipeline_over_components']:.2f} |")
    return "\n".join(lines)


def batch_table(records: list[dict]) -> str | None:
    rows = [r for r in records if "error" not in r and "pipeline" in r]
    if not any(r.get("batch_size", 1) > 1 for r in rows):
        return None
    batched = {_config_key(r, "batch_size") for r in rows if r.get("batch_size", 1) > 1}
    lines = ["| preset | size | B | d | KCN | dtype | t | s/call | images/s | s/image | images/s vs B = 1 | components sum s | pipeline / components |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if _config_key(r, "batch_size") not in batched:
            continue
        vs = r.get("throughput_vs_batch1")
        lines.append(f"{_head(r)} {r['pipeline']['median_s']:.3f} | {r['images_per_s']:.2f} | "
                     f"{r['pipeline']['median_s'] / r['batch_size']:.3f} | {'' if vs is None else f'{vs:.2f}'} | "
                     f"{r['components_sum_s']:.3f} | {r['pipeline_over_components']:.2f} |")
    return "\n".join(lines)


def module_table(records: list[dict]) -> str | None:
    """Two rows per profiled record: the bare component medians (as a share of the pipeline median), and the
    same modules inside the one profiled call (as a share of that call; consistent within itself, so less
    exposed to a busy machine, but with the profiler's own overhead)."""
    rows = [r for r in records if "error" not in r and "unet" in r.get("components_median_s", {})
            and "kcn_estimate" not in r["components_median_s"]]  # files before the M/T/F/C split: no such table
    if not rows:
        return None
    names = [n for n in COMPONENTS if any(n in r["components_median_s"] for r in rows)]
    lines = ["| preset | size | B | d | KCN | dtype | t | measured as | " + " | ".join(COMPONENTS[n] for n in names)
             + " | pipeline overhead | pipeline s/call |",
             "|---|---|---|---|---|---|---|---|" + "---|" * (len(names) + 2)]

    def row(r, source, times, total):
        cells = [f"{times[n]:.3f} ({times[n] / total:.0%})" if n in times else "" for n in names]
        overhead = total - sum(times.values())
        return f"{_head(r)} {source} | " + " | ".join(cells) + f" | {overhead:.3f} ({overhead / total:.0%}) | {total:.3f} |"

    for r in rows:
        lines.append(row(r, "bare calls, median", r["components_median_s"], r["pipeline"]["median_s"]))
        if "profile" in r and r["profile"].get("in_call_modules_s"):
            lines.append(row(r, "in the profiled call", r["profile"]["in_call_modules_s"], r["profile"]["call_s"]))
    return "\n".join(lines)


def ops_table(records: list[dict], per_record: int = 10) -> str | None:
    rows = [r for r in records if "profile" in r and "top_ops" in r["profile"]]
    if not rows:
        return None
    presets = {r["preset"] for r in rows}

    def label(r):
        name = f"{r['width']}x{r['height']}" + (f" B={r['batch_size']}" if r.get("batch_size", 1) > 1 else "")
        return f"{_short(r['preset'])} {name}" if len(presets) > 1 else name

    share = [{o["op"]: o["self_cpu_share"] for o in r["profile"]["top_ops"]} for r in rows]
    ops: list[str] = []
    for r in rows:
        ops += [o["op"] for o in r["profile"]["top_ops"][:per_record] if o["op"] not in ops]
    ops.sort(key=lambda op: -max(s.get(op, 0.0) for s in share))
    lines = ["| aten op (self CPU time, share of the profiled call) | " + " | ".join(label(r) for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for op in ops:
        lines.append(f"| `{op}` | " + " | ".join(f"{s[op]:.1%}" if op in s else "" for s in share) + " |")
    lines.append("| profiled call, s | " + " | ".join(f"{r['profile']['call_s']:.3f}" for r in rows) + " |")
    return "\n".join(lines)


def tiling_table(records: list[dict]) -> str | None:
    rows = [r for r in records if "tiling_compare" in r]
    if not rows:
        return None
    lines = ["| preset | size | B | d | KCN | dtype | t | tile / overlap (latents) | tiles | untiled s | tiled s | tiled / untiled |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tc = r["tiling_compare"]
        lines.append(f"{_head(r)} {tc['tile_size']} / {tc['tile_overlap']} | {tc['tiles']} | "
                     f"{tc['untiled_median_s']:.3f} | {tc['tiled']['median_s']:.3f} | {tc['tiled_over_untiled']:.2f} |")
    return "\n".join(lines)


def summary_tables(records: list[dict]) -> str:
    records = add_derived(records)
    parts = [("", markdown_table(records)),
             ("Batches (one call restores B same-sized images in one UNet evaluation)", batch_table(records)),
             ("Per module (bare component calls at the same shapes and batch, share of the pipeline median; and the same "
              "modules inside the profiled call, share of that call)",
              module_table(records)),
             ("Top aten ops by self CPU time (one profiled call after warm-up)", ops_table(records)),
             ("Tiling overhead (same image, tiling=True forced vs tiling=False)", tiling_table(records))]
    return "\n\n".join((f"{title}:\n\n{table}" if title else table) for title, table in parts if table)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and clock as Linux reports them (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        fields = dict(line.split(":", 1) for line in cpuinfo.read_text().splitlines() if ":" in line)
    except OSError:
        return platform.processor()
    name = fields.get("model name\t", "").strip() or platform.processor()
    mhz = fields.get("cpu MHz\t\t", "").strip()
    return f"{name}, {mhz} MHz" if mhz else name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["sd21-base"], type=preset_or_model,
                        help="sd21-base / tiny (random weights) or a saved pipeline folder (its own weights)")
    parser.add_argument("--device", type=parse_device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: bfloat16 float16 float32 on CUDA, float32 on CPU")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(1280, 720), (512, 512)])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1],
                        help="images per pipeline call (a list of B same-sized images, batched into one UNet call)")
    parser.add_argument("--batch-sizes-at", nargs="+", type=parse_size, default=None, metavar="WxH",
                        help="sizes that get every --batch-sizes; the other --sizes run at batch 1 (default: all)")
    parser.add_argument("--upscale-factors", nargs="+", type=lambda v: v if v == "default" else int(v), default=[1, 2],
                        help="1 = d=8, 2 = d=4 (paper) with SD's VAE; 'default': the model's own default_upscale_factor")
    parser.add_argument("--kcn", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--tiling", default="off", choices=["auto", "on", "off", "compare"],
                        help="compare: time each image untiled and with forced tiling (at --tiling-compare-at sizes)")
    parser.add_argument("--tiling-compare-at", nargs="+", type=parse_size, default=None, metavar="WxH",
                        help="with --tiling compare: the sizes to compare at, batch 1 (default: all --sizes)")
    parser.add_argument("--tile-size", type=int, default=None, help="latent tile size (default: the pipeline's)")
    parser.add_argument("--tile-overlap", type=int, default=None, help="latent tile overlap (default: the pipeline's)")
    parser.add_argument("--timestep", default=200, type=lambda v: v if v == "auto" else int(v))
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["on", "off", "unet"],
                        help="torch.compile: every model (on), the UNet and the ControlNet only (unet), or none")
    parser.add_argument("--channels-last", nargs="+", default=None, choices=["on", "off"],
                        help="default: on for the CPU (the pipeline's own CPU default), off for CUDA")
    parser.add_argument("--attention", nargs="+", default=["wide-head"], choices=["wide-head", "sdpa", "eager"],
                        help="wide-head: the pipeline's own (WideHeadAttnProcessor on SD's VAE attention, SDPA elsewhere); "
                             "sdpa: diffusers' SDPA processor everywhere; eager: diffusers' classic processor")
    parser.add_argument("--group-norm", nargs="+", default=["native"], choices=["native", "reduction"],
                        help="CUDA: native: nn.GroupNorm (the pipeline's default); reduction: the opt-in "
                             "ReductionGroupNorm in every model (large 16-bit groups). The CPU always takes "
                             "nn.GroupNorm's path")
    parser.add_argument("--cudnn-benchmark", nargs="+", default=["off"], choices=["on", "off"],
                        help="CUDA: torch.backends.cudnn.benchmark (autotune convolutions per new input shape)")
    parser.add_argument("--cpu-memory", nargs="+", default=["reuse"], choices=["reuse", "default"],
                        help="CPU: 'reuse' (the pipeline's default: glibc keeps freed blocks, "
                             "cpu_memory.keep_freed_cpu_memory) or glibc's 'default' thresholds; both need --isolate")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true",
                        help="one torch.profiler call per configuration: top aten ops, module times in the call")
    parser.add_argument("--profile-top", type=int, default=15, help="aten ops kept per profiled call")
    parser.add_argument("--isolate", action="store_true",
                        help="CPU: one child process per configuration (size, batch), for a true peak RSS")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", default="benchmarks/results/benchmark.json")
    parser.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                        help="print the Markdown tables of earlier result files and exit")
    args = parser.parse_args(argv)
    if args.summarize:
        records = []
        for path in args.summarize:
            data = json.loads(Path(path).read_text())
            rows = data.get("results") if isinstance(data, dict) else None
            if not isinstance(rows, list) or not all(isinstance(r, dict) and "preset" in r for r in rows):
                print(f"skipped {path}: not a benchmark_pipeline.py result file", file=sys.stderr)
                continue
            records.extend(rows)
        print(summary_tables(records))
        return 0
    if args.batch_sizes_at is not None:
        args.batch_sizes_at = [tuple(s) for s in args.batch_sizes_at]
    if args.tiling_compare_at is not None:
        args.tiling_compare_at = [tuple(s) for s in args.tiling_compare_at]
    if any(b < 1 for b in args.batch_sizes):
        parser.error("--batch-sizes must be positive")
    device = args.device
    if args.channels_last is None:
        args.channels_last = ["on"] if device.type == "cpu" else ["off"]
    dtypes = args.dtypes or (["bfloat16", "float16", "float32"] if device.type == "cuda" else ["float32"])
    if len(set(args.cpu_memory)) > 1 and not (args.isolate and device.type == "cpu"):
        parser.error("--cpu-memory reuse default needs --isolate on the CPU: the setting is process-wide")

    run_start = time.perf_counter()
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    compile_values = {"on": True, "off": False, "unet": "unet"}
    groups = [(preset, dt, kcn == "on", compile_values[comp], cl == "on", attn, mem, cudnn == "on", gn)
              for preset in args.preset for dt in dtypes for kcn in args.kcn for comp in args.compile
              for cl in args.channels_last for attn in args.attention for mem in args.cpu_memory
              for cudnn in (args.cudnn_benchmark if device.type == "cuda" else ["off"])
              for gn in (args.group_norm if device.type == "cuda" else ["native"])]  # CPU: nn.GroupNorm's path
    records: list[dict] = []
    for preset, dt, kcn, comp, cl, attn, mem, cudnn, gn in groups:
        if args.isolate and device.type == "cpu":
            part = args.output + ".part"
            for size in args.sizes:
                for batch in batches_for(args, size):
                    for upscale in args.upscale_factors:
                        subprocess.run(child_argv(args, preset, dt, kcn, comp, cl, attn, mem, size, batch, upscale,
                                                  part), check=True)
                        records.extend(json.loads(Path(part).read_text())["results"])
                        Path(part).unlink()
        else:
            records.extend(run_group(args, preset, device, dt, kcn, comp, cl, attn, mem == "reuse", cudnn, gn))
    if not args.child:
        add_derived(records)

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),  # hosts behind the same name differ: CPU figures compare only with the same model
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.argv[0]).as_posix()] + (sys.argv[1:] if argv is None else list(argv))),
        "run_wall_s": time.perf_counter() - run_start,
    }
    if load_at_start is not None:
        env["load_average_1_5_15_at_start"] = load_at_start
        env["load_average_1_5_15_at_end"] = list(os.getloadavg())
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, json.dumps({"environment": env, "results": records}, indent=2) + "\n")
    if not args.child:
        print(summary_tables(records))
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
