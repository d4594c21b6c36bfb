"""Blur trajectories from GoPro's raw 240 fps frames (``GOPRO_Large_all``), the paper's "GoPro (Enlarged)".

GoPro itself pairs each sharp frame with ONE blur level (mostly 11 frames).  FideDiff's consistency
training needs each sharp frame with several levels of the same blur trajectory, so we re-synthesise
from every 240 fps frame: for a sharp (centre) frame ``c`` and each odd ``n`` in ``frames``, the blurry
image is the average of frames ``c - (n-1)/2 ... c + (n-1)/2`` in linear light, and ``t = (n - 1) * 20``.
Windows of one centre are nested (level ``n`` is the centred subset of level ``n + 2``): one trajectory.

Input layout: ``<frames_root>/<scene>/<number>.png`` (e.g. ``GOPR0372_07_00/000001.png``).  Any folder
below ``frames_root`` that holds PNGs with purely numeric names is a scene (so ``GOPRO_Large_all`` with or
without its ``train/`` / ``test/`` level works); its scene name is its path relative to the root.  Frame
numbers are read as integers; a number missing from a sequence is a missing frame.

Camera response (``crf``): ``"gamma2.2"`` (default) averages ``(img/255) ** 2.2`` and re-encodes with
``** (1/2.2)``, the curve GoPro's authors used for ``blur_gamma`` because averaging must happen on light,
not on gamma-encoded values; ``"linear"`` averages the 8-bit values directly, as GoPro's ``blur`` folder
(the one most papers test on) did.  See :mod:`fidediff_pipeline.data.camera_response`.

Which frames are sharp centres: frame numbers ``first + offset, first + offset + stride, ...`` of each
scene (``first`` = its lowest frame number; a centre whose own frame is missing is skipped).  ``stride`` defaults to 12 (a 240 fps video gives 20 sharp frames per second; with 11-frame blur,
neighbouring sharp frames share almost no frames, so near-duplicate pairs are avoided).  ``offset``
defaults to ``max(frames) // 2`` so the first centre can carry the longest window.

Border rule: a level whose window would need a frame that does not exist (sequence start/end, or a gap
in the numbering) is dropped for that centre only; a centre left with fewer than ``min_levels`` levels
(default 3, the paper's minimum) is skipped entirely and counted.

Outputs (``<out>/<scene>/sharp/<frame>.png``, ``<out>/<scene>/blur_nNN/<frame>.png``, ``<out>/manifest.csv``)
are skipped when they already exist, so an interrupted run resumes; the result does not depend on what
was there before (no randomness, files written atomically).

Example:
    >>> report = build_gopro_trajectory_set("GOPRO_Large_all", "data/gopro_traj", frames=(5, 7, 9, 11, 13, 15))  # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
"""

from __future__ import annotations

import logging

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic_io import atomic_path
from ..image_processing import _is_16bit_png
from .build_config import BuildReport, check_or_write_build_config
from .camera_response import DEFAULT_CRF, check_crf, from_linear, to_linear
from .image_io import load_rgb_uint8, quantize_uint8, save_png_atomic
from .manifest import (
    DEFAULT_MANIFEST_NAME,
    ManifestRow,
    timestep_from_frames,
    validate_frame_levels,
    write_manifest,
)

logger = logging.getLogger("fidediff.data")

GOPRO_DEFAULT_FRAMES = (5, 7, 9, 11, 13, 15)
GOPRO_DEFAULT_STRIDE = 12


def _numeric_pngs(folder: Path) -> list[tuple[int, Path]]:
    frames = []
    for entry in folder.iterdir():
        if entry.is_file() and entry.suffix.lower() == ".png" and entry.stem.isdigit():
            frames.append((int(entry.stem), entry))
    frames.sort(key=lambda item: item[0])
    numbers = [n for n, _ in frames]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"{folder}: two frame files have the same number (e.g. 1.png and 001.png)")
    return frames


def discover_frame_sequences(frames_root: str | os.PathLike) -> dict[str, list[tuple[int, Path]]]:
    """Find the scenes under ``frames_root``: ``{scene_name: [(frame_number, path), ...]}``, sorted.

    Example:
        >>> seqs = discover_frame_sequences("GOPRO_Large_all")  # doctest: +SKIP
        >>> seqs["GOPR0372_07_00"][:2]  # doctest: +SKIP
        [(1, PosixPath('GOPRO_Large_all/GOPR0372_07_00/000001.png')), (2, ...)]
    """
    root = Path(frames_root)
    if not root.exists():
        raise FileNotFoundError(f"frames root does not exist: {root}")
    if not root.is_dir():
        raise ValueError(f"frames root is not a folder: {root}")
    scenes = {}
    for folder, _dirs, _files in sorted(os.walk(root)):
        folder = Path(folder)
        frames = _numeric_pngs(folder)
        if frames:
            name = folder.relative_to(root).as_posix()
            scenes[name if name != "." else root.resolve().name] = frames
    if not scenes:
        raise ValueError(
            f"no scene folders with numbered PNG frames under {root} "
            f"(expected <root>/<scene>/000001.png, ... as in GOPRO_Large_all)"
        )
    return dict(sorted(scenes.items()))


@dataclass(frozen=True)
class CentrePlan:
    """One sharp frame and the levels its window can carry."""

    scene: str
    number: int  # frame number of the sharp centre
    path: Path
    levels: tuple[int, ...]
    dropped: tuple[int, ...]  # requested levels lost to the border rule


def plan_gopro_centres(
    frames: list[tuple[int, Path]],
    scene: str,
    levels: tuple[int, ...],
    stride: int = GOPRO_DEFAULT_STRIDE,
    offset: int | None = None,
) -> list[CentrePlan]:
    """Choose the sharp centres of one sequence and the levels each can carry (border rule applied)."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1; got {stride}")
    offset = max(levels) // 2 if offset is None else int(offset)
    if offset < 0:
        raise ValueError(f"offset must be >= 0; got {offset}")
    by_number = dict(frames)
    max_half = max(levels) // 2
    plans = []
    if not frames:
        return plans
    # Centres are regular in time (frame numbers), so a gap in the numbering does not shift later centres.
    first, last = frames[0][0], frames[-1][0]
    for number in range(first + offset, last + 1, stride):
        if number not in by_number:
            continue  # the sharp frame itself is missing
        path = by_number[number]
        # Largest half-width whose whole window exists: windows are nested, so one missing frame at
        # distance d removes every level with half-width >= d.
        half = 0
        while half < max_half and (number - half - 1) in by_number and (number + half + 1) in by_number:
            half += 1
        kept = tuple(n for n in levels if n // 2 <= half)
        dropped = tuple(n for n in levels if n // 2 > half)
        plans.append(CentrePlan(scene=scene, number=number, path=path, levels=kept, dropped=dropped))
    return plans


def average_frames_linear(frames_uint8: list[np.ndarray], crf: str = DEFAULT_CRF) -> np.ndarray:
    """Average 8-bit frames in linear light and return the 8-bit blurry image.

    Example:
        >>> a = np.zeros((1, 1, 3), np.uint8); b = np.full((1, 1, 3), 255, np.uint8)
        >>> int(average_frames_linear([a, b], "linear")[0, 0, 0]), int(average_frames_linear([a, b], "gamma2.2")[0, 0, 0])
        (128, 186)
    """
    check_crf(crf)
    acc = None
    for frame in frames_uint8:
        lin = to_linear(frame.astype(np.float64) / 255.0, crf)
        acc = lin if acc is None else acc + lin
    return quantize_uint8(from_linear(acc / len(frames_uint8), crf))


class _LinearFrameCache:
    """Decoded linear-light frames of one scene, evicting those behind the current window (bounded memory)."""

    def __init__(self, by_number: dict[int, Path], crf: str):
        self.by_number = by_number
        self.crf = crf
        self.frames: dict[int, np.ndarray] = {}

    def get(self, number: int) -> np.ndarray:
        if number not in self.frames:
            image = load_rgb_uint8(self.by_number[number])
            # float32 is plenty for a mean of <= a few dozen frames and halves the memory of 720p windows.
            self.frames[number] = to_linear(image.astype(np.float32) / 255.0, self.crf)
        return self.frames[number]

    def evict_before(self, number: int) -> None:
        for key in [k for k in self.frames if k < number]:
            del self.frames[key]


def _write_sharp(src: Path, dst: Path) -> None:
    """Copy an 8-bit RGB PNG byte for byte; convert anything else (grey, RGBA, 16-bit) to 8-bit RGB.

    The frame is decoded first with the project's reader, so a corrupt or oversized file is a ``ValueError``
    (the caller skips its group) rather than a copied bad file.
    """
    image = load_rgb_uint8(src)
    with Image.open(src) as img:
        plain = img.format == "PNG" and img.mode == "RGB" and not _is_16bit_png(img)
    if plain:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    else:
        save_png_atomic(image, dst)


def blurry_path_for(out_dir: Path, scene: str, n: int, frame_name: str) -> Path:
    return out_dir / scene / f"blur_n{n:02d}" / frame_name


def build_gopro_trajectory_set(
    frames_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    frames=GOPRO_DEFAULT_FRAMES,
    stride: int = GOPRO_DEFAULT_STRIDE,
    offset: int | None = None,
    crf: str = DEFAULT_CRF,
    min_levels: int = 3,
    scenes: list[str] | None = None,
    manifest_name: str = DEFAULT_MANIFEST_NAME,
    progress: bool = False,
) -> BuildReport:
    """Build multi-level blur trajectories from 240 fps frames and write ``<out_dir>/manifest.csv``.

    Args:
        frames_root: folder of scenes of numbered PNG frames (``GOPRO_Large_all``).
        out_dir: output folder (created; resumable).
        frames: odd numbers of frames to average (blur levels), at least ``min_levels`` of them.
        stride: take every ``stride``-th frame of a sequence as a sharp centre.
        offset: first centre = lowest frame number + ``offset`` (default ``max(frames) // 2``).
        crf: ``"gamma2.2"`` or ``"linear"`` (see the module docstring).
        min_levels: skip sharp frames that keep fewer levels after the border rule.
        scenes: only these scene names (default: all found).
        progress: show a tqdm bar over sharp frames.

    Returns:
        A :class:`BuildReport`; ``report.table()`` prints the counts by ``n`` like the paper's Table 1.
    """
    levels = validate_frame_levels(frames, min_levels=min_levels)
    check_crf(crf)
    sequences = discover_frame_sequences(frames_root)
    if scenes is not None:
        unknown = sorted(set(scenes) - set(sequences))
        if unknown:
            raise ValueError(f"scenes not found under {frames_root}: {unknown}")
        sequences = {k: v for k, v in sequences.items() if k in set(scenes)}
    out_dir = Path(out_dir)
    check_or_write_build_config(out_dir, {"builder": "gopro", "crf": crf})

    plans = []
    for scene, seq in sequences.items():
        plans.extend(plan_gopro_centres(seq, scene, levels, stride=stride, offset=offset))

    report = BuildReport(manifest_path=out_dir / manifest_name, rows=[])
    iterator = plans
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(plans, desc="sharp frames", unit="frame")

    caches: dict[str, _LinearFrameCache] = {}
    for plan in iterator:
        report.dropped_levels += len(plan.dropped)
        if len(plan.levels) < min_levels:
            report.dropped_groups += 1
            continue
        if plan.scene not in caches:
            caches.clear()  # scenes are processed one after another: drop the previous scene's frames
            caches[plan.scene] = _LinearFrameCache(dict(sequences[plan.scene]), crf)
        try:
            _build_group(plan, out_dir, crf, caches[plan.scene], report)
        except ValueError as err:  # a corrupt, unreadable or oversized frame: skip its group, count it, go on
            report.skipped_bad += 1
            report.bad_files.append(str(err))
            logger.warning("warning: skipped the trajectory of %s: %s", plan.path, err)

    write_manifest(report.rows, report.manifest_path)
    return report


def _build_group(plan, out_dir: Path, crf: str, cache: _LinearFrameCache, report: BuildReport) -> None:
    """Write one sharp frame and its blur levels (those not already there); its rows join the manifest only
    when every frame it needs could be read."""
    frame_name = plan.path.name
    sharp_out = out_dir / plan.scene / "sharp" / frame_name
    group = f"{plan.scene}/{plan.path.stem}"
    rows, todo, existing = [], [], 0
    for n in plan.levels:
        blurry_out = blurry_path_for(out_dir, plan.scene, n, frame_name)
        rows.append(
            ManifestRow(
                sharp=str(sharp_out), blurry=str(blurry_out), n=n, t=timestep_from_frames(n), group=group, scene=plan.scene
            )
        )
        if blurry_out.is_file():
            existing += 1
        else:
            todo.append((n, blurry_out))
    if sharp_out.is_file():
        existing += 1
    else:
        _write_sharp(plan.path, sharp_out)
        report.written += 1
    if todo:
        max_half = max(n for n, _ in todo) // 2
        cache.evict_before(plan.number - max_half)
        wanted = dict(todo)
        # Grow the window outwards one frame on each side; each odd width is one level of the trajectory.
        acc = cache.get(plan.number).astype(np.float64)
        for half in range(0, max_half + 1):
            if half > 0:
                acc += cache.get(plan.number - half) + cache.get(plan.number + half)
            n = 2 * half + 1
            if n in wanted:
                blurry = quantize_uint8(from_linear(acc / n, crf))
                save_png_atomic(blurry, wanted[n])
                report.written += 1
    report.skipped_existing += existing
    report.rows.extend(rows)
