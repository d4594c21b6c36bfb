"""What a training step keeps for its backward pass, by component: one stage script (``train/train_base.py``,
``train_kernel.py`` or ``train_kcn.py``) runs three ``--time_steps_only`` steps, and on the third generator forward
every tensor autograd saves is counted once (distinct storages) under the innermost labelled module whose forward
saved it: the UNet (and each of its down / mid / up blocks), the Kernel ControlNet and its kernel estimator M, the
VAE decoder (and each up block's ResNet layers), the discriminator, the EA-LPIPS loss, other (the losses' own
arithmetic). With checkpointing the tensors inside a checkpointed layer are not kept but recomputed in the backward
pass, so the largest checkpointed unit's count (from a run without checkpointing) is what the backward pass adds on
top at its peak. Bytes are those of the run's dtype (float32 on the CPU); in bf16 mixed precision most activations
take half as many (GroupNorm's stay float32 under autocast). Writes a JSON file.

    python benchmarks/training_saved_activations.py --output benchmarks/results/cpu_sd21_saved_base.json \
        train/train_base.py --preset sd21-base --resolution 128 --upscale_factor 2 --mixed_precision no \
        --levels_per_group 3 --gradient_checkpointing
"""

from __future__ import annotations

import argparse
import collections
import json
import runpy
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmark_training import make_init_pipeline, make_photos  # noqa: E402

from fidediff_pipeline.atomic_io import write_text_atomic  # noqa: E402

RECORDED_CALL = 3  # the third generator forward: after the two warm-up steps benchmark_training also skips


class SavedTensorCounter:
    """Bytes of distinct storages autograd saves, under the innermost labelled module running when it saves them."""

    def __init__(self):
        self.stack, self.bytes, self.seen = ["other"], collections.Counter(), set()

    def label(self, module, name: str) -> None:
        module.register_forward_pre_hook(lambda m, args: self.stack.append(name))
        module.register_forward_hook(lambda m, args, out: self._pop())

    def _pop(self) -> None:
        self.stack.pop()  # (returns None: a forward hook's result would replace the module's output)

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in self.seen:
            self.seen.add(key)
            self.bytes[self.stack[-1]] += key[1]
        return tensor

    def record(self, fn, *args):
        # a fresh stack: a checkpointed layer recomputed in an earlier backward pass ran its pre-hook but, stopped
        # early by PyTorch once it had what the backward needed, not its forward hook
        self.stack = ["other"]
        self.bytes.clear()
        self.seen.clear()
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            return fn(*args)


def label_stage(counter: SavedTensorCounter, model) -> None:
    parts = {**getattr(model, "_frozen", {}), **{k: v for k, v in model.__dict__.items() if k.startswith("_")
                                                    and isinstance(v, torch.nn.Module)}}
    unet = getattr(model, "unet", None) or parts.get("unet")
    vae = parts.get("_vae") or parts.get("vae")
    kernel_controlnet = getattr(model, "kernel_controlnet", None)
    named = {"unet": unet, "kernel_controlnet": kernel_controlnet,
             "kernel_estimator": getattr(model, "kernel_estimator", None) or getattr(kernel_controlnet,
                                                                                  "kernel_estimator", None),
             "vae.decoder": getattr(vae, "decoder", None), "discriminator": parts.get("_discriminator"),
             "ea_lpips": parts.get("_ea_loss") or parts.get("ea")}
    for name, module in named.items():
        if module is not None:
            counter.label(module, name)
    for group in ("down_blocks", "up_blocks"):
        for index, block in enumerate(getattr(unet, group, ())):
            counter.label(block, f"unet.{group}.{index}")
    if getattr(unet, "mid_block", None) is not None:
        counter.label(unet.mid_block, "unet.mid_block")
    decoder = getattr(vae, "decoder", None)
    for index, block in enumerate(getattr(decoder, "up_blocks", ())):
        counter.label(block, f"vae.decoder.up_blocks.{index}")
        for layer, resnet in enumerate(getattr(block, "resnets", ())):
            counter.label(resnet, f"vae.decoder.up_blocks.{index}.resnets.{layer}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--groups", type=int, default=1, help="trajectory groups per step (--train_batch_size)")
    parser.add_argument("script", choices=["train/train_base.py", "train/train_kernel.py", "train/train_kcn.py"])
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="the stage script's own flags")
    args = parser.parse_args(argv)
    from train import common

    counter, recorded = SavedTensorCounter(), collections.Counter()
    run_training = common.run_training

    def run_training_counting(train_args, accelerator, stage, **kwargs):
        label_stage(counter, stage.model)
        forward, calls = stage.model.forward, [0]

        def counted_forward(batch):
            calls[0] += 1
            if calls[0] != RECORDED_CALL:
                return forward(batch)
            out = counter.record(forward, batch)
            recorded.update(counter.bytes)
            return out

        stage.model.forward = counted_forward
        return run_training(train_args, accelerator, stage, **kwargs)

    common.run_training = run_training_counting
    with tempfile.TemporaryDirectory(prefix="fidediff_saved_") as work:
        photos = Path(work, "photos")
        resolution = int(args.script_args[args.script_args.index("--resolution") + 1]) \
            if "--resolution" in args.script_args else 512
        make_photos(photos, count=8, size=resolution + resolution // 4)
        init = []
        if args.script != "train/train_base.py" and "--init_from" not in args.script_args:
            # (as benchmark_training: stages 2 and 3 start from a saved pipeline, here one with random weights)
            preset = args.script_args[args.script_args.index("--preset") + 1] if "--preset" in args.script_args \
                else "sd21-base"
            make_init_pipeline(preset, Path(work, "init"))
            init = ["--init_from", str(Path(work, "init"))]
        script_argv = [args.script, *init, "--train_images", str(photos), "--train_batch_size", str(args.groups),
                       "--max_train_steps", str(RECORDED_CALL), "--output_dir", str(Path(work, "out")),
                       "--report_to", "none", "--time_steps_only", *args.script_args]
        if args.script != "train/train_kernel.py":  # (stage 2 has no image losses)
            script_argv.append("--lpips_random_backbone")
        saved_argv, sys.argv = sys.argv, script_argv
        try:
            runpy.run_path(str(REPO / args.script), run_name="__main__")
        finally:
            sys.argv, common.run_training = saved_argv, run_training
    if not recorded:
        raise SystemExit("no generator forward was recorded: the stage ran fewer than three steps")
    gib = {name: value / 2**30 for name, value in recorded.most_common()}
    command = " ".join(["benchmarks/training_saved_activations.py", *(argv if argv is not None else sys.argv[1:])])
    report = {"environment": {"torch": torch.__version__, "command": command},
              "script": args.script, "script_args": args.script_args, "groups": args.groups,
              "saved_gib_total": sum(gib.values()), "saved_gib_by_component": gib}
    write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")
    print(f"saved for backward: {report['saved_gib_total']:.3f} GiB; " +
          ", ".join(f"{k} {v:.3f}" for k, v in list(gib.items())[:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
