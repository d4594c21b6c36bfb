"""Synthetic blur trajectories: random camera shake, sampled as 240 fps sub-frames, blurred at nested levels.

The model (our own, in the spirit of Boracchi & Foi 2012 as used by DeblurGAN, written for numpy 2):

- The camera moves as a global 2-D translation ``p(tau)`` (pixels; ``tau`` in units of 240 fps frames).
- Inertia: the path is driven by a velocity ``v`` that persists from step to step.  It starts with a
  uniformly random direction and a base speed ``s0 ~ U(speed_range)`` px per sub-frame.
- Random acceleration (hand tremor): each step adds Gaussian noise to ``v``; over one sub-frame its
  standard deviation is ``accel_std * s0``, so direction and speed both drift (speed is not constant,
  unlike DeblurGAN's port which renormalises it every step).
- Centripetal pull ``-centripetal * p`` (Boracchi & Foi's term): the hand tends back to where it was.
- Jerks (Boracchi & Foi's "big shakes", milder here): with probability ``jerk_prob`` per sub-frame the
  velocity turns by up to +-90 degrees and its speed is scaled by U(0.5, 1.5).
- ``|v|`` is capped at ``max_speed_factor * s0``.
- Each sub-frame integrates its 1/240 s exposure: it is ``samples_per_frame`` path points at times
  ``j + (q + 0.5) / S``, so kernels are continuous strokes, not rows of dots.

The sharp image is the scene at the middle of the middle sub-frame.  Level ``n`` is the ``n`` centred
sub-frames around it (so level ``n``'s sub-frames are exactly the centred subset of level ``n + 2``'s: one
trajectory, GoPro-style nested windows; DeblurGAN's prefixes of one path are not centred).  Offsets are
stored relative to the sharp moment, as *sampling offsets*: sub-frame image ``(y, x)`` sees the sharp
image at ``(y + dy, x + dx)``.  That makes each level's kernel the histogram of its offsets (bilinear
splatting) in the correlation convention of :mod:`fidediff_pipeline.kernel_ops`, placed at index
``(r + dy, r + dx)``, ``r = m // 2``; it sums to 1 and is non-negative.

The blurry image is the sharp image in linear light (see :mod:`.camera_response`) correlated with that
kernel (reflect padding, exactly :func:`fidediff_pipeline.kernel_ops.apply_per_pixel_kernels` with the
kernel broadcast to every pixel), re-encoded, plus optional Gaussian noise (``noise_std``, on stored
values), then rounded to 8 bits.

Default camera model (``TrajectoryConfig()``, the ``"handheld"`` preset) and where it comes from: one blurry
frame averages n = 7-15 frames at 240 fps, i.e. an exposure of 29-63 ms.  Physiological hand tremor has its power
at 8-12 Hz (periods of 83-125 ms), so within one exposure a hand-held camera sweeps a smooth, nearly straight or
gently curved arc; sudden jerks belong to the slower, larger motions between exposures.  Hence small random
acceleration (``accel_std = 0.05`` of the speed per sub-frame) and no jerks.  Measured over 1000 seeds: base
speed ``U(1.0, 1.6)`` px per sub-frame gives path lengths (5th-50th-95th percentile) of 5.5-7.6-10.2 px at
``n = 7``, 8.7-11.9-15.8 px at ``n = 11`` and 11.9-15.9-21.0 px at ``n = 15``; the blur's centroid lies
0.12 / 0.27 / 0.48 px (mean) from the sharp moment, so a blind model can locate the target frame.  The old default
is the ``"strong"`` preset (``accel_std = 0.25``, ``jerk_prob = 0.05``; ``TrajectoryConfig.preset("strong")``,
``fidediff data synth --shake strong``): lengths 3.7-8.5-13.3 / 6.7-13.4-20.3 / 10.5-18.5-27.1 px and centroids
0.43 / 0.84 / 1.32 px away, which caps what a blind deblurrer can reach (``docs/data_learnability.md``).
The default kernel size is ``m = 31``; a path whose longest requested level would not fit within ``r - 1 = 14`` px
of the centre is shrunk as a whole (all levels by one factor, so nesting holds): none of 1000 handheld paths at
``n = 15``, about 2% of strong ones.

Example:
    >>> import numpy as np, skimage.data
    >>> sharp = skimage.data.astronaut() / 255.0
    >>> levels = blur_image_along_trajectory(sharp, frames=(7, 11, 15), rng=np.random.default_rng(0))
    >>> blurry, kernel = levels[11]
    >>> blurry.shape, kernel.shape, round(float(kernel.sum()), 5)
    ((512, 512, 3), (31, 31), 1.0)
"""

from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .build_config import BuildReport, check_or_write_build_config
from .camera_response import DEFAULT_CRF, check_crf, from_linear, to_linear
from .image_io import IMAGE_EXTENSIONS, load_rgb_uint8, quantize_uint8, save_npy_atomic, save_png_atomic, to_float01
from .manifest import DEFAULT_MANIFEST_NAME, ManifestRow, timestep_from_frames, validate_frame_levels, write_manifest

DEFAULT_KERNEL_SIZE = 31
SYNTH_DEFAULT_FRAMES = (5, 7, 9, 11, 13, 15)
# Named camera models (see the module docstring). "strong" was the default before 2026-12: its blur's centroid
# sits 0.45 / 0.88 / 1.39 px from the sharp moment at n = 7 / 11 / 15 (handheld: 0.12 / 0.27 / 0.48 px), which
# a blind deblurrer cannot see, so it caps what any model can learn from it (docs/data_learnability.md).
SHAKE_PRESETS = {
    "handheld": dict(accel_std=0.05, jerk_prob=0.0),
    "strong": dict(accel_std=0.25, jerk_prob=0.05),
}


@dataclass(frozen=True)
class TrajectoryConfig:
    """Parameters of the camera-shake model (see the module docstring). Units: pixels, 240 fps sub-frames."""

    speed_range: tuple[float, float] = (1.0, 1.6)
    accel_std: float = 0.05
    centripetal: float = 0.005
    jerk_prob: float = 0.0
    max_speed_factor: float = 1.5
    samples_per_frame: int = 7

    @classmethod
    def preset(cls, name: str, **overrides) -> "TrajectoryConfig":
        """A named camera model: ``"handheld"`` (the default, smooth over 29-63 ms) or ``"strong"`` (the old default:
        tremor 0.25 of the speed per sub-frame and jerks, whose blur is off-centre from the sharp moment)."""
        if name not in SHAKE_PRESETS:
            raise ValueError(f"unknown shake preset {name!r}; choose one of {', '.join(SHAKE_PRESETS)}")
        return cls(**{**SHAKE_PRESETS[name], **overrides})

    def __post_init__(self):
        lo, hi = self.speed_range
        if not (0 <= lo <= hi):
            raise ValueError(f"speed_range must be 0 <= min <= max; got {self.speed_range}")
        if self.samples_per_frame < 1:
            raise ValueError(f"samples_per_frame must be >= 1; got {self.samples_per_frame}")
        if self.accel_std < 0 or self.centripetal < 0 or not (0 <= self.jerk_prob <= 1):
            raise ValueError("accel_std and centripetal must be >= 0 and jerk_prob in [0, 1]")


@dataclass
class BlurTrajectory:
    """A camera-shake path sampled as sub-frames.

    ``offsets`` is ``[num_subframes, samples_per_frame, 2]`` float64 ``(dy, dx)`` sampling offsets relative
    to the sharp moment (the middle of the middle sub-frame); ``num_subframes`` is odd.
    """

    offsets: np.ndarray
    scale: float = 1.0  # factor applied by fit_to_kernel (1.0: path unchanged)

    def __post_init__(self):
        if self.offsets.ndim != 3 or self.offsets.shape[-1] != 2 or self.offsets.shape[0] % 2 == 0:
            raise ValueError(f"offsets must be [odd num_subframes, samples, 2]; got {self.offsets.shape}")

    @property
    def num_subframes(self) -> int:
        return self.offsets.shape[0]

    def subframe_indices(self, n: int) -> np.ndarray:
        """Indices of the ``n`` sub-frames centred on the middle one (level ``n`` of the trajectory)."""
        if n % 2 == 0 or n < 1 or n > self.num_subframes:
            raise ValueError(f"level n={n} must be odd and <= {self.num_subframes} (the path's sub-frames)")
        mid = self.num_subframes // 2
        return np.arange(mid - n // 2, mid + n // 2 + 1)

    def level_offsets(self, n: int) -> np.ndarray:
        """``[n, samples_per_frame, 2]`` offsets of level ``n``."""
        return self.offsets[self.subframe_indices(n)]

    def kernel(self, n: int, kernel_size: int = DEFAULT_KERNEL_SIZE) -> np.ndarray:
        """The ``[m, m]`` float32 blur kernel of level ``n`` (sum 1, non-negative)."""
        return offsets_to_kernel(self.level_offsets(n), kernel_size)

    def extent(self, n: int) -> float:
        """Largest ``|dy|`` or ``|dx|`` of level ``n``: the kernel needs ``m // 2`` at least this big."""
        return float(np.abs(self.level_offsets(n)).max())


def sample_camera_shake(num_subframes: int, rng: np.random.Generator, config: TrajectoryConfig | None = None) -> BlurTrajectory:
    """Draw one random camera-shake path of ``num_subframes`` (odd) 240 fps sub-frames.

    Example:
        >>> traj = sample_camera_shake(15, np.random.default_rng(0))
        >>> traj.offsets.shape
        (15, 7, 2)
    """
    config = config or TrajectoryConfig()
    if num_subframes < 1 or num_subframes % 2 == 0:
        raise ValueError(f"num_subframes must be odd and >= 1; got {num_subframes}")
    S = config.samples_per_frame
    steps = num_subframes * S
    dt = 1.0 / S  # time between path samples, in sub-frames

    s0 = rng.uniform(*config.speed_range)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    v = s0 * np.array([np.sin(angle), np.cos(angle)])
    max_speed = config.max_speed_factor * s0
    # Draw every random number up front, in a fixed order, so a path depends only on the generator state.
    tremor = rng.standard_normal((steps, 2)) * (config.accel_std * s0 * np.sqrt(dt))
    jerk_happens = rng.uniform(size=steps) < config.jerk_prob * dt
    jerk_turn = rng.uniform(-0.5 * np.pi, 0.5 * np.pi, size=steps)
    jerk_gain = rng.uniform(0.5, 1.5, size=steps)

    positions = np.empty((steps, 2))
    # The first sample is half a step into the first sub-frame's exposure.
    p = 0.5 * dt * v
    for k in range(steps):
        positions[k] = p
        if jerk_happens[k]:
            c, s = np.cos(jerk_turn[k]), np.sin(jerk_turn[k])
            v = jerk_gain[k] * np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])
        v = v + tremor[k] - config.centripetal * p * dt
        speed = np.hypot(v[0], v[1])
        if speed > max_speed:
            v = v * (max_speed / speed)
        p = p + v * dt

    # Re-reference to the sharp moment tau = num_subframes / 2: the middle sample when steps is odd, else
    # the midpoint of the two middle samples (the path is straight between samples).
    sharp_position = 0.5 * (positions[(steps - 1) // 2] + positions[steps // 2])
    offsets = (positions - sharp_position).reshape(num_subframes, S, 2)
    return BlurTrajectory(offsets=offsets)


def fit_to_kernel(trajectory: BlurTrajectory, kernel_size: int, n_max: int) -> BlurTrajectory:
    """Shrink the whole path (if needed) so level ``n_max`` fits an ``m x m`` kernel with a 1 px margin.

    One factor for the whole path keeps the levels nested.
    """
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 3; got {kernel_size}")
    limit = kernel_size // 2 - 1  # bilinear splatting touches floor(x) + 1, so stay within r - 1
    extent = trajectory.extent(n_max)
    if extent <= limit:
        return trajectory
    factor = limit / extent
    return BlurTrajectory(offsets=trajectory.offsets * factor, scale=trajectory.scale * factor)


def offsets_to_kernel(offsets: np.ndarray, kernel_size: int = DEFAULT_KERNEL_SIZE) -> np.ndarray:
    """Histogram of sampling offsets ``[..., 2]`` on an ``m x m`` grid with bilinear splatting.

    Entry ``(r + dy, r + dx)`` weights the pixel at offset ``(dy, dx)`` (the ``kernel_ops`` convention).
    Returns float32, non-negative, summing to 1.

    Example:
        >>> k = offsets_to_kernel(np.array([[0.0, 0.0], [0.0, 1.5]]), 5)
        >>> k[2, 2:].tolist()
        [0.5, 0.25, 0.25]
    """
    m = int(kernel_size)
    if m < 1 or m % 2 == 0:
        raise ValueError(f"kernel_size must be odd; got {kernel_size}")
    r = m // 2
    pts = np.asarray(offsets, dtype=np.float64).reshape(-1, 2) + r
    if pts.size == 0:
        raise ValueError("no offsets to build a kernel from")
    if pts.min() < 0 or pts.max() > m - 1:
        raise ValueError(f"offsets reach {np.abs(pts - r).max():.2f} px but a {m}x{m} kernel holds {r} px; use fit_to_kernel")
    y0 = np.minimum(np.floor(pts[:, 0]).astype(int), m - 2 if m > 1 else 0)
    x0 = np.minimum(np.floor(pts[:, 1]).astype(int), m - 2 if m > 1 else 0)
    fy = pts[:, 0] - y0
    fx = pts[:, 1] - x0
    kernel = np.zeros((m, m), dtype=np.float64)
    np.add.at(kernel, (y0, x0), (1 - fy) * (1 - fx))
    if m > 1:
        np.add.at(kernel, (y0 + 1, x0), fy * (1 - fx))
        np.add.at(kernel, (y0, x0 + 1), (1 - fy) * fx)
        np.add.at(kernel, (y0 + 1, x0 + 1), fy * fx)
    kernel = kernel / kernel.sum()
    return kernel.astype(np.float32)


def correlate_global_kernel(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Blur ``image`` ``[H, W, C]`` with one ``[m, m]`` kernel, same convention and borders as
    :func:`fidediff_pipeline.kernel_ops.apply_per_pixel_kernels` (correlation, reflect padding, or replicate
    for images no larger than ``m // 2``).  float64; loops over the kernel's non-zero taps only, which is
    much cheaper than a dense ``m x m`` filter for a thin motion stroke.
    """
    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    m = kernel.shape[0]
    r = m // 2
    h, w = image.shape[:2]
    mode = "reflect" if (h > r and w > r) else "edge"  # torch "replicate" == numpy "edge"
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode=mode)
    out = np.zeros_like(image)
    for i, j in zip(*np.nonzero(kernel)):
        out += kernel[i, j] * padded[i : i + h, j : j + w]
    return out


def blur_with_kernel(sharp: np.ndarray, kernel: np.ndarray, crf: str = DEFAULT_CRF, *, linear_input: bool = False) -> np.ndarray:
    """Blur ``sharp`` ``[H, W, 3]`` (float in [0, 1] or uint8) with one ``[m, m]`` kernel the way the builder does:
    in linear light (``crf``), correlation with reflect padding; returns float64 stored values in [0, 1] (not
    rounded). ``linear_input``: ``sharp`` is already linear (the builder converts once for several levels).

    Example:
        >>> from fidediff_pipeline.kernel_ops import linear_motion_kernel
        >>> float(blur_with_kernel(np.full((8, 8, 3), 0.5), linear_motion_kernel(3, 0)).round(6).max())
        0.5
    """
    linear = sharp if linear_input else to_linear(to_float01(sharp), crf)
    return from_linear(correlate_global_kernel(linear, kernel), crf)


def blur_image_along_trajectory(
    sharp: np.ndarray,
    frames=(7, 11, 15),
    rng: np.random.Generator | int | None = None,
    *,
    kernel_size: int = DEFAULT_KERNEL_SIZE,
    crf: str = DEFAULT_CRF,
    noise_std: float = 0.0,
    quantize: bool = True,
    config: TrajectoryConfig | None = None,
    trajectory: BlurTrajectory | None = None,
    min_levels: int = 1,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Blur one sharp image at several nested levels of ONE random camera-shake trajectory (in memory).

    Args:
        sharp: ``[H, W, 3]`` float in [0, 1] (or ``uint8``).
        frames: odd blur levels (numbers of 240 fps sub-frames); ``t = (n - 1) * 20``.
        rng: a ``np.random.Generator`` or a seed.
        kernel_size: ``m`` of the returned kernels (odd).
        crf: camera response, ``"gamma2.2"`` or ``"linear"``.
        noise_std: std of Gaussian noise added to the blurry images (stored values, 0-1 scale).
        quantize: round the blurry images to 8-bit levels (still returned as float in [0, 1]).
        config: trajectory model parameters.
        trajectory: use this path instead of sampling one (it needs at least ``max(frames)`` sub-frames).

    Returns:
        ``{n: (blurry [H, W, 3] float64 in [0, 1], kernel [m, m] float32)}``.  Without noise and
        rounding, ``blurry == from_linear(correlate(to_linear(sharp), kernel))`` exactly.

    Example:
        >>> out = blur_image_along_trajectory(np.random.rand(64, 64, 3), frames=(7, 11, 15), rng=0)
        >>> sorted(out), out[15][1].shape
        ([7, 11, 15], (31, 31))
    """
    levels = validate_frame_levels(frames, min_levels=min_levels)
    check_crf(crf)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    sharp = to_float01(sharp)
    if trajectory is None:
        trajectory = sample_camera_shake(max(levels), rng, config)
    trajectory = fit_to_kernel(trajectory, kernel_size, max(levels))
    linear = to_linear(sharp, crf)
    out = {}
    for n in levels:
        kernel = trajectory.kernel(n, kernel_size)
        blurry = blur_with_kernel(linear, kernel, crf, linear_input=True)
        if noise_std > 0:
            blurry = blurry + rng.normal(0.0, noise_std, size=blurry.shape)
        blurry = np.clip(blurry, 0.0, 1.0)
        if quantize:
            blurry = quantize_uint8(blurry).astype(np.float64) / 255.0
        out[n] = (blurry, kernel)
    return out


def _stable_seed(*parts) -> int:
    """A seed from names, stable across runs and machines (Python's ``hash`` is salted per process)."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8"))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (sorted), with clear errors for a bad folder."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder does not exist: {folder}")
    if not folder.is_dir():
        raise ValueError(f"not a folder: {folder}")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return images


@dataclass
class _SynthSource:
    name: str
    path: Path | None = None
    array: np.ndarray | None = None

    def load(self) -> np.ndarray:
        if self.array is not None:
            return quantize_uint8(to_float01(self.array))
        return load_rgb_uint8(self.path)


def _as_sources(images) -> list[_SynthSource]:
    if isinstance(images, (str, os.PathLike)):
        images = list_images(images)
    sources = []
    for i, item in enumerate(images):
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            sources.append(_SynthSource(name=path.stem, path=path))
        else:
            sources.append(_SynthSource(name=f"image_{i:04d}", array=np.asarray(item)))
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two images share the name(s) {dupes}; output files are named after the image stem")
    return sources


def synthesize_trajectory_set(
    images,
    out_dir: str | os.PathLike,
    frames=SYNTH_DEFAULT_FRAMES,
    seed: int = 0,
    *,
    kernel_size: int = DEFAULT_KERNEL_SIZE,
    crf: str = DEFAULT_CRF,
    noise_std: float = 0.0,
    trajectories_per_image: int = 1,
    config: TrajectoryConfig | None = None,
    min_levels: int = 3,
    manifest_name: str = DEFAULT_MANIFEST_NAME,
    progress: bool = False,
) -> BuildReport:
    """Write a trajectory data set from sharp photos: per image and trajectory, the sharp PNG, one blurry PNG
    and one ``[m, m]`` float32 kernel ``.npy`` per level, the path's offsets, and ``manifest.csv``.

    Layout: ``<out>/<image>/sharp/<group>.png``, ``<out>/<image>/blur_nNN/<group>.png``,
    ``<out>/<image>/kernels_nNN/<group>.npy``, ``<out>/<image>/trajectories/<group>.npy`` (offsets
    ``[N, S, 2]`` after fitting), where ``group = <image>_<k>`` for the ``k``-th trajectory of an image.

    Each group's random numbers come from ``(seed, group name)`` only, so results do not depend on the
    order or number of images, and an interrupted run resumes (complete groups are skipped).

    Args:
        images: a folder, or a list of image paths and/or ``[H, W, 3]`` arrays (named ``image_0000``, ...).
        out_dir: output folder.
        frames: odd blur levels; at least ``min_levels`` of them.
        seed: base seed.
        kernel_size, crf, noise_std, config: as in :func:`blur_image_along_trajectory`.
        trajectories_per_image: how many independent trajectories (groups) to draw per image.

    Example:
        >>> import skimage.data
        >>> report = synthesize_trajectory_set([skimage.data.astronaut(), skimage.data.chelsea()],
        ...                                    "data/synth", frames=(7, 11, 15), seed=0)  # doctest: +SKIP
        >>> report.manifest_path  # doctest: +SKIP
        PosixPath('data/synth/manifest.csv')
    """
    levels = validate_frame_levels(frames, min_levels=min_levels)
    check_crf(crf)
    if trajectories_per_image < 1:
        raise ValueError(f"trajectories_per_image must be >= 1; got {trajectories_per_image}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0; got {noise_std}")
    config = config or TrajectoryConfig()
    sources = _as_sources(images)
    out_dir = Path(out_dir)
    # Everything that changes the pixels of a group is recorded; max(frames) sets the path's length and fit.
    check_or_write_build_config(
        out_dir,
        {
            "builder": "synth",
            "seed": int(seed),
            "crf": crf,
            "kernel_size": int(kernel_size),
            "noise_std": float(noise_std),
            "max_frames": int(max(levels)),
            "trajectory": asdict(config),
        },
    )
    report = BuildReport(manifest_path=out_dir / manifest_name, rows=[])
    jobs = [(src, k) for src in sources for k in range(trajectories_per_image)]
    if progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="trajectories", unit="group")
    for src, k in jobs:
        group = f"{src.name}_{k:02d}"
        scene_dir = out_dir / src.name
        sharp_out = scene_dir / "sharp" / f"{group}.png"
        traj_out = scene_dir / "trajectories" / f"{group}.npy"
        level_paths = {
            n: (scene_dir / f"blur_n{n:02d}" / f"{group}.png", scene_dir / f"kernels_n{n:02d}" / f"{group}.npy")
            for n in levels
        }
        for n, (blurry_out, kernel_out) in level_paths.items():
            report.rows.append(
                ManifestRow(
                    sharp=str(sharp_out),
                    blurry=str(blurry_out),
                    n=n,
                    t=timestep_from_frames(n),
                    group=group,
                    scene=src.name,
                    kernel=str(kernel_out),
                )
            )
        needed = [sharp_out, traj_out] + [p for pair in level_paths.values() for p in pair]
        if all(p.is_file() for p in needed):
            report.skipped_existing += len(needed)
            continue
        try:
            sharp_uint8 = src.load()
        except ValueError as err:  # the reader's one-line reason (corrupt, too large, not an image, ...)
            # A bad photo is skipped and counted, not fatal: its rows leave the manifest.
            report.skipped_bad += 1
            report.bad_files.append(f"{src.name}: {err}")
            report.rows = [r for r in report.rows if r.group != group]
            continue
        rng = np.random.default_rng([int(seed), _stable_seed(group)])
        trajectory = fit_to_kernel(sample_camera_shake(max(levels), rng, config), kernel_size, max(levels))
        blurred = blur_image_along_trajectory(
            sharp_uint8,
            frames=levels,
            rng=rng,
            kernel_size=kernel_size,
            crf=crf,
            noise_std=noise_std,
            trajectory=trajectory,
        )
        save_png_atomic(sharp_uint8, sharp_out)
        save_npy_atomic(trajectory.offsets.astype(np.float32), traj_out)
        for n, (blurry_out, kernel_out) in level_paths.items():
            blurry, kernel = blurred[n]
            save_npy_atomic(kernel, kernel_out)
            save_png_atomic(quantize_uint8(blurry), blurry_out)
        report.written += len(needed)
    if report.skipped_bad and not report.rows:
        raise ValueError(f"no image could be read ({report.skipped_bad} tried); first: {report.bad_files[0]}")
    write_manifest(report.rows, report.manifest_path)
    return report
