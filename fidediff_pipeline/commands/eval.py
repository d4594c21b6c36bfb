"""``fidediff eval``: measure a FideDiff model on GoPro, HIDE, RealBlur-J/R or a paired folder.

Examples::

    fidediff eval --model my-org/fidediff --dataset gopro --root /data/GOPRO_Large --output eval/gopro
    fidediff eval --model ./fidediff --dataset realblur_j --root /data/RealBlur --output eval/rbj --save-images
    fidediff eval --model ./fidediff --dataset gopro --root /data/GOPRO_Large --output eval/fig7 \\
        --sweep-timesteps 80 120 160 200 240 280

Writes ``per_image.csv`` (each image's metrics, and the blurry input's PSNR/SSIM against the same ground truth),
``summary.json``, ``summary.md`` (means, the blurry input's, the gain) and ``paper_comparison.md`` (or, with
``--sweep-timesteps``, one such folder per timestep plus ``sweep.json``, ``sweep.md`` and ``sweep.png``).
A second run with the same ``--output`` resumes: images already measured are not restored again.
Under ``accelerate launch`` with several processes (GPUs), the images are split across the processes and the
main process writes the same files from the merged rows.

Protocols: GoPro/HIDE/paired report PSNR and the MATLAB-style 3-D SSIM (``ssim_matlab3d``, what the
GoPro/HIDE script computes; ``ssim_skimage`` is in the CSV too); RealBlur reports the RealBlur authors'
ECC-aligned PSNR/SSIM. Default timestep: 200 for GoPro/HIDE, ``auto`` (t-prediction) for RealBlur and
paired folders, as in the paper. LPIPS/DISTS weights are read from local files; a missing one makes that
metric "unavailable" (with the reason) and the rest still run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..evaluation import runner
from ..atomic_io import write_text_atomic
from ..evaluation.eval_sets import DATASETS, load_eval_set
from . import prepare_output_dir
from .deblur import add_model_arguments


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {number}")
    return number


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` parser to the ``fidediff`` command line."""
    parser = subparsers.add_parser(
        "eval",
        help="measure PSNR/SSIM/LPIPS/DISTS on a test set, beside the paper's figures",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="test-set layout under --root")
    parser.add_argument("--root", required=True, help="folder of the test set (layouts: fidediff_pipeline/evaluation/eval_sets.py)")
    parser.add_argument("--output", required=True, help="folder for the CSV, JSON and Markdown (resumable)")
    # --model, --device, --dtype, --timestep, --upscale-factor, --tile-size: shared with `fidediff deblur`.
    # eval's timestep default depends on the dataset (paper Sec. 5.1), so it is None here and resolved later.
    add_model_arguments(parser, timestep_default=None, timestep_help=(
        "'auto' (t-prediction) or an int in [0, 999]; default: the paper's, 200 for gopro/hide, auto otherwise"))
    parser.add_argument("--save-images", action="store_true", help="write restored images to <output>/images/")
    parser.add_argument("--limit", type=_positive_int, default=None, help="only the first N pairs (a subset)")
    parser.add_argument("--batch-size", type=_positive_int, default=1, help="images per pipeline call")
    parser.add_argument(
        "--lpips-net", choices=("alex", "vgg"), default="alex", help="LPIPS backbone (the paper does not say; alex is the default)"
    )
    parser.add_argument("--dists-weights", default=None, help="DISTS alpha/beta file (the DISTS authors' weights.pt)")
    parser.add_argument("--no-dists", action="store_true", help="skip DISTS")
    parser.add_argument(
        "--sweep-timesteps",
        type=int,
        nargs="+",
        default=None,
        metavar="T",
        help="evaluate at each of these timesteps (paper Figure 7) instead of one run",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def _main_process_first(state):
    """Distributed run: the main process loads first, so that a Hub model or metric weights are downloaded once and
    then read from the cache by the others. A plain run: no-op."""
    return contextlib.nullcontext() if state is None else state.main_process_first()


def run(args: argparse.Namespace) -> int:
    """Run ``fidediff eval``; returns the exit code. Errors are ValueError / FileNotFoundError with clear text."""
    from ..distributed import process_device, process_state
    from ..hub.loading import default_model, resolve_device
    from ..evaluation.metrics import build_perceptual_metrics

    # None for a plain run; under `accelerate launch` with several processes, accelerate's PartialState.
    state = process_state()
    is_main = state is None or state.is_main_process
    # Cheap checks first: a wrong root or output fails before any model or metric network is loaded.
    pairs = load_eval_set(args.dataset, args.root)
    if is_main:
        prepare_output_dir(args.output, "--output")
    device = str(resolve_device(args.device) if state is None else process_device(state, args.device))
    with _main_process_first(state):
        perceptual, unavailable = build_perceptual_metrics(
            lpips_net=args.lpips_net, dists=not args.no_dists, device=device, dists_weights=args.dists_weights
        )
    if is_main:
        for name, reason in unavailable.items():
            print(f"warning: {name.upper()} unavailable: {reason}", file=sys.stderr)

    model = args.model or default_model()
    with _main_process_first(state):
        pipe = runner.load_pipeline(model, device, args.dtype)
    if state is not None and is_main:
        print(f"evaluating on {state.num_processes} processes", file=sys.stderr)

    settings = {
        "model": model,
        "root": str(Path(args.root).resolve()),
        "dtype": args.dtype,
        "lpips_net": args.lpips_net,
        "device": device,
    }
    common = dict(
        # None: the model's own factor (saved in model_index.json), recorded as the number actually used.
        upscale_factor=args.upscale_factor or int(pipe.config.get("default_upscale_factor", 2) or 2),
        batch_size=args.batch_size,
        perceptual=perceptual,
        unavailable=unavailable,
        save_images=args.save_images,
        limit=args.limit,
        settings=settings,
        progress=not args.no_progress,
        pipeline_kwargs={"tile_size": args.tile_size} if args.tile_size else None,
        state=state,
    )
    output = Path(args.output)
    if args.sweep_timesteps:
        sweep = runner.sweep_timesteps(pipe, pairs, output, args.sweep_timesteps, dataset=args.dataset, **common)
        if not is_main:
            return 0
        print(runner.sweep_markdown(sweep))
        print(f"wrote {output / 'sweep.md'}, {output / 'sweep.json'}" + (f", {output / sweep['plot']}" if sweep["plot"] else ""))
        return 0

    summary = runner.evaluate(pipe, pairs, output, dataset=args.dataset, timestep=args.timestep, **common)
    if not is_main:
        return 0  # the main process writes the comparison and prints the report
    if args.dataset in runner.PAPER_TABLE2:
        write_text_atomic(output / "paper_comparison.md", runner.paper_comparison_table([summary]))
    print(runner.summary_markdown(summary))
    print(f"wrote {output / runner.CSV_NAME}, {output / runner.SUMMARY_JSON}, {output / runner.SUMMARY_MD}")
    return 0
