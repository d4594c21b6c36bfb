"""Blur-trajectory data for FideDiff's consistency training.

Each sharp frame comes with several blurry versions along ONE blur trajectory (nested windows of
240 fps frames centred on it), each with its timestep ``t = (n - 1) * 20``.

- :mod:`.manifest`: the CSV manifest (one row per pair) and its read/write functions.
- :mod:`.gopro`: re-synthesis from GoPro's raw 240 fps frames (``fidediff data gopro``).
- :mod:`.trajectories`: random camera-shake trajectories and nested blur levels (``fidediff data synth``).
- :mod:`.datasets`: PyTorch datasets of trajectory groups and pairs, and the group collate function.
- :mod:`.camera_response`: the ``gamma2.2`` / ``linear`` camera response used when averaging light.

Example:
    >>> import numpy as np, skimage.data
    >>> from fidediff_pipeline.data import blur_image_along_trajectory
    >>> levels = blur_image_along_trajectory(skimage.data.chelsea(), frames=(7, 11, 15), rng=0)
    >>> sorted(levels)
    [7, 11, 15]
"""

from .build_config import BuildReport
from .camera_response import CRF_CHOICES, DEFAULT_CRF, from_linear, reblur_in_linear_light, to_linear
from .datasets import (
    InMemoryTrajectoryGroupDataset,
    PairDataset,
    TrajectoryGroupDataset,
    collate_trajectory_groups,
    flip_kernel,
)
from .gopro import GOPRO_DEFAULT_FRAMES, GOPRO_DEFAULT_STRIDE, build_gopro_trajectory_set, discover_frame_sequences
from .image_io import load_kernel
from .manifest import (
    MANIFEST_COLUMNS,
    ManifestRow,
    check_manifest_files,
    count_pairs_by_frames,
    format_frames_table,
    frames_from_timestep,
    group_manifest_rows,
    read_manifest,
    timestep_from_frames,
    write_manifest,
)
from .trajectories import (
    DEFAULT_KERNEL_SIZE,
    SYNTH_DEFAULT_FRAMES,
    BlurTrajectory,
    TrajectoryConfig,
    blur_image_along_trajectory,
    blur_with_kernel,
    correlate_global_kernel,
    fit_to_kernel,
    offsets_to_kernel,
    sample_camera_shake,
    synthesize_trajectory_set,
)

__all__ = [
    "BlurTrajectory",
    "BuildReport",
    "CRF_CHOICES",
    "DEFAULT_CRF",
    "DEFAULT_KERNEL_SIZE",
    "GOPRO_DEFAULT_FRAMES",
    "GOPRO_DEFAULT_STRIDE",
    "InMemoryTrajectoryGroupDataset",
    "MANIFEST_COLUMNS",
    "ManifestRow",
    "PairDataset",
    "SYNTH_DEFAULT_FRAMES",
    "TrajectoryConfig",
    "TrajectoryGroupDataset",
    "blur_image_along_trajectory",
    "blur_with_kernel",
    "build_gopro_trajectory_set",
    "check_manifest_files",
    "collate_trajectory_groups",
    "correlate_global_kernel",
    "count_pairs_by_frames",
    "discover_frame_sequences",
    "fit_to_kernel",
    "flip_kernel",
    "format_frames_table",
    "frames_from_timestep",
    "from_linear",
    "group_manifest_rows",
    "load_kernel",
    "offsets_to_kernel",
    "read_manifest",
    "reblur_in_linear_light",
    "sample_camera_shake",
    "synthesize_trajectory_set",
    "timestep_from_frames",
    "to_linear",
    "write_manifest",
]
