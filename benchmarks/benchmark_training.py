"""Seconds per training step and peak memory of each FideDiff stage, so a GPU user can plan a run in GPU-hours.

Runs the project's own stage scripts (``train/train_base.py``, ``train_kernel.py``, ``train_kcn.py``) for a few
steps each with ``--time_steps_only`` (no validation, checkpoints or export), one process per configuration, on
random weights (``--preset``; timing needs no trained weights) and random photos blurred on the fly, and collects
their ``train_summary.json``: each step's seconds, the median after two warm-up steps, samples per step and the peak
memory (CUDA max allocated on a GPU; peak RSS on the CPU). LPIPS runs with a random VGG backbone
(``--lpips_random_backbone``: the same computation as the real one, no download). A configuration that runs out of
memory is recorded as such, so ``--train-batch-sizes 1 2 4 8`` also finds the largest batch that fits.

    # the issue-15 table on one GPU: full SD 2.1-base shapes, bf16, 512 px crops, checkpointing on and off
    python benchmarks/benchmark_training.py --preset sd21-base --resolution 512 --mixed-precision bf16 \\
        --train-batch-sizes 1 2 4 8 --gradient-checkpointing on off --output benchmarks/results/h200_training.json
    # a quick CPU check of the tool with the tiny preset
    python benchmarks/benchmark_training.py --preset tiny --resolution 128 --train-batch-sizes 1 --steps 4 \\
        --mixed-precision no --gradient-checkpointing off --output /tmp/cpu_tiny_training.json

``--train-batch-sizes`` counts trajectory groups; each gives ``--levels-per-group`` blurred samples (the consistency
batch), so samples per step = groups x levels (the table shows both).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fidediff_pipeline.atomic_io import write_text_atomic  # noqa: E402

STAGE_SCRIPTS = {"base": "train/train_base.py", "kernel": "train/train_kernel.py", "kcn": "train/train_kcn.py"}


def make_photos(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """Random RGB photos (timing does not depend on content), a little larger than the crops."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(folder / f"photo_{i}.png")


def make_init_pipeline(preset: str, folder: Path) -> None:
    """A random pipeline with a Kernel ControlNet: the ``--init_from`` of stages 2 and 3."""
    from fidediff_pipeline.presets import build_pipeline

    build_pipeline(preset, with_kernel_controlnet=True, seed=0).save_pretrained(folder)


def stage_argv(args, stage: str, groups: int, checkpointing: bool, photos: Path, init: Path, out: Path) -> list[str]:
    argv = [sys.executable, str(REPO / STAGE_SCRIPTS[stage]), "--preset", args.preset, "--train_images", str(photos),
            "--resolution", str(args.resolution), "--train_batch_size", str(groups),
            "--levels_per_group", str(args.levels_per_group), "--max_train_steps", str(args.steps),
            "--output_dir", str(out), "--report_to", "none", "--log_every", str(args.steps), "--time_steps_only",
            "--upscale_factor", str(args.upscale_factor)]
    if args.mixed_precision:
        argv += ["--mixed_precision", args.mixed_precision]
    if checkpointing:
        argv.append("--gradient_checkpointing")
    if stage in ("base", "kcn"):
        argv.append("--lpips_random_backbone")
    if stage != "base":
        argv += ["--init_from", str(init)]
    return argv


def run_config(args, stage, groups, checkpointing, photos, init, work: Path, timeout: float | None = None) -> dict:
    out = work / f"{stage}_b{groups}_gc{int(checkpointing)}"
    record = {"stage": stage, "train_batch_size": groups, "levels_per_group": args.levels_per_group,
              "samples_per_step": groups * args.levels_per_group, "gradient_checkpointing": checkpointing,
              "preset": args.preset, "resolution": args.resolution, "mixed_precision": args.mixed_precision or "no"}
    start = time.perf_counter()
    try:
        done = subprocess.run(stage_argv(args, stage, groups, checkpointing, photos, init, out), capture_output=True,
                              text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=timeout)
    except subprocess.TimeoutExpired:
        record["wall_s"] = round(time.perf_counter() - start, 1)
        record["error"] = f"not finished within --timeout-per-config {timeout:g} s"
        return record
    record["wall_s"] = round(time.perf_counter() - start, 1)
    summary = out / "train_summary.json"
    if done.returncode == 0 and summary.is_file():
        record.update(json.loads(summary.read_text()))
        record.pop("loss_history", None)
    else:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        oom = any("out of memory" in line.lower() for line in tail)
        record["error"] = "out of memory" if oom else " | ".join(tail)[-400:]
    return record


def markdown_table(records: list[dict]) -> str:
    lines = ["| stage | groups x levels = samples | resolution | precision | checkpointing | median s/step | "
             "samples/s | peak memory GiB |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        head = (f"| {r['stage']} | {r['train_batch_size']} x {r['levels_per_group']} = {r['samples_per_step']} | "
                f"{r['resolution']} | {r['mixed_precision']} | {'on' if r['gradient_checkpointing'] else 'off'} |")
        if "error" in r:
            lines.append(f"{head} {r['error']} | | |")
            continue
        memory = r.get("peak_cuda_allocated_gib", r.get("peak_rss_gib"))
        lines.append(f"{head} {r['median_step_s']:.3f} | {r['samples_per_step'] / r['median_step_s']:.2f} | "
                     f"{memory:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sd21-base", choices=["sd21-base", "tiny"])
    parser.add_argument("--stages", nargs="+", default=list(STAGE_SCRIPTS), choices=list(STAGE_SCRIPTS))
    parser.add_argument("--resolution", type=int, default=512, help="training crop size in pixels")
    parser.add_argument("--train-batch-sizes", nargs="+", type=int, default=[4],
                        help="trajectory groups per step (each gives --levels-per-group samples)")
    parser.add_argument("--levels-per-group", type=int, default=3, help="the recipe's consistency batch (3 levels)")
    parser.add_argument("--gradient-checkpointing", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--mixed-precision", default="bf16", choices=["no", "fp16", "bf16"])
    parser.add_argument("--upscale-factor", type=int, default=2, help="2: the paper's d = 4 with SD's VAE")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration (the first two are warm-up)")
    parser.add_argument("--timeout-per-config", type=float, default=None,
                        help="seconds one configuration may take (start-up included); a slower one is recorded as such")
    parser.add_argument("--output", default="benchmarks/results/training.json")
    args = parser.parse_args(argv)
    if args.steps < 1 or min(args.train_batch_sizes) < 1 or args.levels_per_group < 1:
        parser.error("--steps, --train-batch-sizes and --levels-per-group must be positive")
    if args.timeout_per_config is not None and args.timeout_per_config <= 0:
        parser.error(f"--timeout-per-config takes a positive number of seconds; got {args.timeout_per_config:g}")

    run_start = time.perf_counter()
    records = []
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fidediff_train_bench_") as tmp:
        work = Path(tmp)
        photos, init = work / "photos", work / "init"
        make_photos(photos, count=8, size=args.resolution + args.resolution // 4)
        if set(args.stages) - {"base"}:
            make_init_pipeline(args.preset, init)
        for stage in args.stages:
            for groups in args.train_batch_sizes:
                for checkpointing in args.gradient_checkpointing:
                    record = run_config(args, stage, groups, checkpointing == "on", photos, init, work,
                                        args.timeout_per_config)
                    print(markdown_table([record]).splitlines()[-1], flush=True)
                    records.append(record)
                    # after every configuration, so a run stopped part-way keeps what it measured
                    write_text_atomic(output, json.dumps({"environment": environment(args, argv, run_start),
                                                          "results": records}, indent=2) + "\n")
    print(markdown_table(records))
    print(f"wrote {output}")
    return 0


def environment(args, argv, run_start: float) -> dict:
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "command": " ".join([Path(sys.argv[0]).as_posix()] + (sys.argv[1:] if argv is None else list(argv))),
           "run_wall_s": round(time.perf_counter() - run_start, 1)}
    try:
        import torch

        env["torch"] = torch.__version__
        env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return env


if __name__ == "__main__":
    sys.exit(main())
