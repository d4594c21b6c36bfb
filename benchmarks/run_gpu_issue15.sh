#!/usr/bin/env bash
# The GPU figures of issue 15 still to measure, in one run on one GPU, in order of importance, each phase skipped
# once too little of the time budget is left (a lent GPU comes for minutes): full SD 2.1-base shapes, random
# weights, bf16. What the 2026-12-04 H200 run measured (VAE attention SDPA vs WideHeadAttnProcessor, cuDNN
# autotuning, channels-last, batches, the kernel stage, checkpointing off) is in results/h200_sd21_*.json, each
# file's exact command in its environment.command.
#   0 gn_ops    every GroupNorm shape of the VAE and UNet at 1280x720, d = 4, alone: nn.GroupNorm vs
#               ReductionGroupNorm, time and error against float64 (benchmark_group_norm.py)
#   1 floor     1280x720, d = 4, Kernel ControlNet, t = 200: nn.GroupNorm vs the opt-in ReductionGroupNorm
#               (GroupNorm was 49% of the GPU time), one profiled call each; if it wins, make it the pipeline's
#               default on CUDA (as _use_wide_head_attention does for the VAE attention) and set its
#               min_group_elements from gn_ops
#   1b paths    the same image in float32 (old paths) and bf16 with each attention x group norm: PSNR between them
#   2 tiling    the faster of (1), 1280x720 untiled and with tiling forced (issue 15: at most 1.3x)
#   3 training  stages 1 and 3 (base, kcn), 512 px crops, gradient checkpointing on, batch 4 and 2 (batch 4 ran out
#               of memory with it on and off on 2026-12-04; batch 1 without it took 87-93 GiB; since then the
#               discriminator is checkpointed and the VAE decoder one layer at a time, train/README.md)
#   4 compile   the faster of (1) with the UNet and the ControlNet compiled (torch.compile; ZeroGPU has none)
#   5 batches   the faster of (1) at t = auto: batch 1, 4, 8 at 1280x720 and 512x512
# Writes <gpu>_*.json and run.log under RESULTS (default benchmarks/results/gpu_run).
#
#   RESULTS=$OUT DEADLINE_S=540 bash benchmarks/run_gpu_issue15.sh
#   # a CPU rehearsal of every command on the tiny preset (gn_ops and paths on SD 2.1-base's shapes at 32x32):
#   DEVICE=cpu PRESET=tiny BIG=128x128 SMALL=64x64 TRAIN_RES=64 TRAIN_BATCHES=1 GN_SIZE=32x32 \
#       bash benchmarks/run_gpu_issue15.sh
set -u
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results/gpu_run}
DEADLINE_S=${DEADLINE_S:-540}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-sd21-base}
BIG=${BIG:-1280x720}
SMALL=${SMALL:-512x512}
TRAIN_RES=${TRAIN_RES:-512}
TRAIN_BATCHES=${TRAIN_BATCHES:-"4 2"}
GN_SIZE=${GN_SIZE:-$BIG}
DTYPE=$([ "$DEVICE" = cuda ] && echo bfloat16 || echo float32)
PRECISION=$([ "$DEVICE" = cuda ] && echo bf16 || echo no)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ! python3 -c "import diffusers, lpips, peft, accelerate" 2>/dev/null; then
    echo "run_gpu_issue15.sh needs diffusers, lpips, peft and accelerate importable by python3 (a GPU machine's own" >&2
    echo "image may lack some: pip install -r requirements-dev.txt, or install their wheels, then run again)" >&2
    exit 2
fi
mkdir -p "$RESULTS"
LOG=$RESULTS/run.log
start=$SECONDS
GPU=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).split()[1].lower() if torch.cuda.is_available() else 'cpu')")
BENCH="python3 benchmarks/benchmark_pipeline.py --preset $PRESET --device $DEVICE --dtypes $DTYPE --kcn on --upscale-factors 2"
TRAIN="python3 benchmarks/benchmark_training.py --preset $PRESET --resolution $TRAIN_RES --mixed-precision $PRECISION --steps 5"

left() { echo $((DEADLINE_S - (SECONDS - start))); }
phase() {  # name, seconds it needs, then the command: skipped when less time is left; stopped at what is left
    local name=$1 need=$2
    shift 2
    if [ "$(left)" -lt "$need" ]; then
        echo "=== SKIP $name: $(left) s left, needs $need" | tee -a "$LOG"
        return
    fi
    echo "=== $name ($(left) s left): $*" | tee -a "$LOG"
    timeout "$(left)" "$@" 2>&1 | tee -a "$LOG" | grep -v "^|" | tail -n 25
    echo "=== $name done at $((SECONDS - start)) s" | tee -a "$LOG"
}
fastest_group_norm() {  # "native" or "reduction": the group norm of the fastest row of the floor file
    python3 - "$RESULTS/${GPU}_group_norm.json" <<'PY'
import json, sys
try:
    rows = [r for r in json.load(open(sys.argv[1]))["results"] if "pipeline" in r]
    print(min(rows, key=lambda r: r["pipeline"]["median_s"]).get("group_norm", "native"))
except (OSError, ValueError, KeyError):
    print("native")
PY
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"; } | tee -a "$LOG"

phase gn_ops 40 python3 benchmarks/benchmark_group_norm.py --device "$DEVICE" --size "$GN_SIZE" --upscale 2 \
    --output "$RESULTS/${GPU}_group_norm_ops.json"
phase floor 60 $BENCH --sizes $BIG --timestep 200 --group-norm native reduction --profile --warmup 2 --repeats 5 \
    --output "$RESULTS/${GPU}_group_norm.json"
GROUP_NORM=$(fastest_group_norm)
echo "fastest: group norm $GROUP_NORM" | tee -a "$LOG"
phase paths 40 python3 benchmarks/compare_gpu_paths.py --device "$DEVICE" --size "$GN_SIZE" \
    --output "$RESULTS/${GPU}_paths.json"
phase tiling 40 $BENCH --sizes $BIG --timestep 200 --group-norm "$GROUP_NORM" --tiling compare \
    --warmup 1 --repeats 3 --output "$RESULTS/${GPU}_tiling.json"
# shellcheck disable=SC2086  # TRAIN_BATCHES is a list
phase training 100 $TRAIN --stages base kcn --train-batch-sizes $TRAIN_BATCHES --gradient-checkpointing on \
    --timeout-per-config 80 --output "$RESULTS/${GPU}_training_checkpointing.json"
phase compile 100 $BENCH --sizes $BIG --timestep 200 --group-norm "$GROUP_NORM" --compile unet \
    --warmup 2 --repeats 5 --output "$RESULTS/${GPU}_compile_unet.json"
phase batches 60 $BENCH --sizes $BIG $SMALL --timestep auto --group-norm "$GROUP_NORM" --batch-sizes 1 4 8 \
    --warmup 1 --repeats 3 --output "$RESULTS/${GPU}_batches_group_norm.json"
echo "=== all done at $((SECONDS - start)) s" | tee -a "$LOG"
