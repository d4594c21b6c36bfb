"""``fidediff data``: build blur-trajectory training data.

Usage::

    # GoPro (Enlarged): several nested blur levels per sharp frame from the raw 240 fps frames
    fidediff data gopro --frames-root GOPRO_Large_all --out data/gopro_traj --frames 5 7 9 11 13 15

    # Synthetic camera shake on your own sharp photos
    fidediff data synth --images photos/ --out data/synth --frames 7 11 15 --seed 0

Both write ``<out>/manifest.csv`` (see :mod:`fidediff_pipeline.data.manifest`), print the pair counts per
number of averaged frames (the paper's Table 1), and resume when run again on the same ``--out``.
"""

from __future__ import annotations

import argparse

from fidediff_pipeline.data.camera_response import CRF_CHOICES, DEFAULT_CRF
from fidediff_pipeline.data.gopro import GOPRO_DEFAULT_FRAMES, GOPRO_DEFAULT_STRIDE

from . import prepare_output_dir


def _add_common(parser: argparse.ArgumentParser, default_frames) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; an existing one is resumed)")
    parser.add_argument(
        "--frames", type=int, nargs="+", default=list(default_frames),
        help=f"odd numbers of 240 fps frames to average, one blur level each, t = (n-1)*20 (default: {' '.join(map(str, default_frames))})",
    )  # fmt: skip
    parser.add_argument(
        "--crf", choices=CRF_CHOICES, default=DEFAULT_CRF,
        help="camera response to undo before averaging: gamma2.2 (physical, GoPro's blur_gamma) or linear "
        "(average stored values, GoPro's blur folder) (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--min-levels", type=int, default=3,
        help="consistency training needs this many levels per sharp frame (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_gopro(args: argparse.Namespace) -> int:
    prepare_output_dir(args.out, "--out", create=False)
    from fidediff_pipeline.data.gopro import build_gopro_trajectory_set

    report = build_gopro_trajectory_set(
        args.frames_root,
        args.out,
        frames=args.frames,
        stride=args.stride,
        offset=args.offset,
        crf=args.crf,
        min_levels=args.min_levels,
        scenes=args.scenes,
        progress=not args.quiet,
    )
    print(report.table(label="Pairs"))
    print(f"manifest: {report.manifest_path}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    prepare_output_dir(args.out, "--out", create=False)
    from fidediff_pipeline.data.trajectories import TrajectoryConfig, synthesize_trajectory_set

    config = TrajectoryConfig.preset(args.shake, speed_range=tuple(args.speed_range),
                                     samples_per_frame=args.samples_per_frame)
    report = synthesize_trajectory_set(
        args.images,
        args.out,
        frames=args.frames,
        seed=args.seed,
        kernel_size=args.kernel_size,
        crf=args.crf,
        noise_std=args.noise_std,
        trajectories_per_image=args.trajectories_per_image,
        config=config,
        min_levels=args.min_levels,
        progress=not args.quiet,
    )
    print(report.table(label="Pairs"))
    print(f"manifest: {report.manifest_path}")
    return 0


def register(subparsers) -> None:
    """Add ``fidediff data {gopro,synth}`` to the top-level parser's sub-commands."""
    from fidediff_pipeline.data.trajectories import DEFAULT_KERNEL_SIZE, SHAKE_PRESETS, SYNTH_DEFAULT_FRAMES, TrajectoryConfig

    data = subparsers.add_parser("data", help="build blur-trajectory training data (GoPro frames or synthetic shake)")
    data_sub = data.add_subparsers(dest="data_command", metavar="{gopro,synth}")
    data_sub.required = True

    gopro = data_sub.add_parser(
        "gopro", help="average GoPro 240 fps frames into nested blur levels per sharp frame",
        description="Re-synthesise GoPro blur at several levels per sharp frame from GOPRO_Large_all.",
    )  # fmt: skip
    gopro.add_argument("--frames-root", required=True, help="GOPRO_Large_all: <root>/<scene>/<number>.png")
    _add_common(gopro, GOPRO_DEFAULT_FRAMES)
    gopro.add_argument(
        "--stride", type=int, default=GOPRO_DEFAULT_STRIDE,
        help="every stride-th frame of a sequence is a sharp centre (default: %(default)s, 20 per second of video)",
    )  # fmt: skip
    gopro.add_argument(
        "--offset", type=int, default=None,
        help="first sharp centre = lowest frame number + offset (default: max(--frames) // 2)",
    )  # fmt: skip
    gopro.add_argument("--scenes", nargs="+", default=None, help="only these scenes (names as found under the root)")
    gopro.set_defaults(func=run_gopro)

    synth = data_sub.add_parser(
        "synth", help="blur sharp photos along random camera-shake trajectories (kernels saved)",
        description="Blur sharp photos at nested levels of one random camera-shake path each; saves kernels.",
    )  # fmt: skip
    synth.add_argument("--images", required=True, help="folder of sharp images")
    _add_common(synth, SYNTH_DEFAULT_FRAMES)
    synth.add_argument("--seed", type=int, default=0, help="base seed (default: %(default)s)")
    synth.add_argument(
        "--noise-std", type=float, default=0.0,
        help="std of Gaussian noise added to blurry images, on a 0-1 scale (default: %(default)s)",
    )  # fmt: skip
    synth.add_argument(
        "--kernel-size", type=int, default=DEFAULT_KERNEL_SIZE,
        help="odd size m of the saved m x m kernels (default: %(default)s)",
    )  # fmt: skip
    synth.add_argument(
        "--trajectories-per-image", type=int, default=1,
        help="independent trajectories (groups) per image (default: %(default)s)",
    )  # fmt: skip
    synth.add_argument(
        "--speed-range", type=float, nargs=2, default=list(TrajectoryConfig().speed_range), metavar=("MIN", "MAX"),
        help="base camera speed in pixels per 240 fps frame (default: %(default)s)",
    )  # fmt: skip
    synth.add_argument(
        "--shake", choices=sorted(SHAKE_PRESETS), default="handheld",
        help="camera model: handheld (smooth over one exposure, the default) or strong (the pre-2026-12 default: "
             "tremor and jerks; its blur is off-centre from the sharp frame) (default: %(default)s)",
    )  # fmt: skip
    synth.add_argument(
        "--samples-per-frame", type=int, default=TrajectoryConfig().samples_per_frame,
        help="path samples per 240 fps frame's exposure (default: %(default)s)",
    )  # fmt: skip
    synth.set_defaults(func=run_synth)
