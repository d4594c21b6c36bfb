"""PyTorch datasets over trajectory manifests, for consistency training and the reblur loss.

- :class:`TrajectoryGroupDataset`: one item = one trajectory group: the sharp crop and ``k`` blurry crops
  of the SAME group at the SAME crop window (and flips), with their timesteps.
- :func:`collate_trajectory_groups`: flattens ``B`` groups into ``B * k`` training samples, each with its
  sharp target, ``t`` and group index, so one batch holds several levels of each trajectory.
- :class:`PairDataset`: one item = one (sharp, blurry, t) pair, optionally with the blur kernel as a
  per-pixel map ``[m*m, h, w]`` for the reblur loss.
- :class:`InMemoryTrajectoryGroupDataset`: groups synthesised on the fly from arrays (no files).

Randomness (level choice, crop, flips, and for the in-memory set the trajectory and noise) comes from a
generator seeded with ``(seed, epoch, index)``: the same item is identical in any worker, process or run,
and changes from epoch to epoch only through :meth:`set_epoch`.

Flips act on the kernels too: flipping an image left-right flips its kernel left-right, so
``apply_per_pixel_kernels(sharp, kernel)`` still reproduces ``blurry`` after augmentation.

Example:
    >>> ds = TrajectoryGroupDataset("data/synth/manifest.csv", crop_size=256, levels_per_group=3, seed=0)  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_trajectory_groups)  # doctest: +SKIP
    >>> batch = next(iter(loader))  # doctest: +SKIP
    >>> batch["blurry"].shape, batch["sharp"].shape, batch["timesteps"].shape  # doctest: +SKIP
    (torch.Size([12, 3, 256, 256]), torch.Size([12, 3, 256, 256]), torch.Size([12]))
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from fidediff_pipeline.kernel_ops import global_kernel_to_map

from .camera_response import DEFAULT_CRF
from .image_io import load_kernel, load_rgb_uint8, quantize_uint8, to_float01
from .manifest import ManifestRow, check_manifest_files, group_manifest_rows, read_manifest, timestep_from_frames
from .trajectories import DEFAULT_KERNEL_SIZE, TrajectoryConfig, blur_image_along_trajectory, fit_to_kernel, sample_camera_shake


def _crop_hw(crop_size) -> tuple[int, int] | None:
    if crop_size is None:
        return None
    if isinstance(crop_size, int):
        return (crop_size, crop_size)
    h, w = crop_size
    return (int(h), int(w))


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item: depends on ``(seed, epoch, index)`` only (worker- and order-independent)."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def _choose_window(rng: np.random.Generator, height: int, width: int, crop) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop; the whole image when ``crop`` is None."""
    if crop is None:
        return 0, 0, height, width
    ch, cw = crop
    if ch > height or cw > width:
        raise ValueError(f"crop {ch}x{cw} is larger than the image {height}x{width}; use a smaller crop_size")
    top = int(rng.integers(0, height - ch + 1))
    left = int(rng.integers(0, width - cw + 1))
    return top, left, ch, cw


def _choose_flips(rng: np.random.Generator, flip: bool) -> tuple[bool, bool]:
    # Always draw, so the rest of an item's random stream does not depend on ``flip``.
    draws = rng.random(2)
    return (bool(draws[0] < 0.5) and flip, bool(draws[1] < 0.5) and flip)


def _flip_image(image: np.ndarray, hflip: bool, vflip: bool) -> np.ndarray:
    """``[..., H, W, C]`` flips."""
    if hflip:
        image = image[..., :, ::-1, :]
    if vflip:
        image = image[..., ::-1, :, :]
    return image


def flip_kernel(kernel: np.ndarray, hflip: bool, vflip: bool) -> np.ndarray:
    """The kernel of a flipped image: a left-right flip of the image flips ``k[i, j]`` to ``k[i, m-1-j]``."""
    if hflip:
        kernel = kernel[..., :, ::-1]
    if vflip:
        kernel = kernel[..., ::-1, :]
    return kernel


def _to_chw_tensor(image_uint8_or_float: np.ndarray) -> torch.Tensor:
    """``[..., H, W, 3]`` uint8 or float in [0, 1] -> float32 tensor ``[..., 3, H, W]`` in [0, 1]."""
    arr = np.ascontiguousarray(image_uint8_or_float)
    tensor = torch.from_numpy(arr)
    tensor = tensor.float() / 255.0 if arr.dtype == np.uint8 else tensor.float()
    return tensor.movedim(-1, -3).contiguous()


def _load_rows(manifest) -> tuple[list[ManifestRow], str]:
    if isinstance(manifest, (str, os.PathLike)):
        return read_manifest(manifest), str(manifest)
    rows = list(manifest)
    if rows and not isinstance(rows[0], ManifestRow):
        raise ValueError("manifest must be a path or a list of ManifestRow")
    return rows, "manifest rows"


class TrajectoryGroupDataset(Dataset):
    """Trajectory groups from a manifest: a sharp crop and ``k`` blurry crops of one group, same window.

    Args:
        manifest: path to ``manifest.csv`` (or its folder), or a list of :class:`ManifestRow`.
        crop_size: ``int`` or ``(h, w)``; ``None`` keeps whole images (then all must share a size to batch).
        levels_per_group: ``k`` levels drawn per item without replacement (sorted by ``t``).  Groups with
            fewer levels are left out with a warning.
        seed: base seed; see :meth:`set_epoch`.
        flip: random left-right and up-down flips (same for the whole group).
        with_kernels: also return ``kernels`` ``[k, m, m]`` (needs kernel files in the manifest).
        check_files: check at construction that every referenced file exists (``FileNotFoundError``).

    Items: ``sharp`` ``[3, h, w]``, ``blurry`` ``[k, 3, h, w]`` (float32 in [0, 1]), ``timesteps`` and
    ``frames`` ``LongTensor [k]``, ``group`` (str), ``index`` (int), and ``kernels`` if asked.

    Example:
        >>> ds = TrajectoryGroupDataset("data/synth", crop_size=128, levels_per_group=3)  # doctest: +SKIP
        >>> item = ds[0]; item["blurry"].shape, item["timesteps"]  # doctest: +SKIP
        (torch.Size([3, 3, 128, 128]), tensor([120, 200, 280]))
    """

    def __init__(
        self,
        manifest,
        crop_size=256,
        levels_per_group: int = 3,
        seed: int = 0,
        flip: bool = True,
        with_kernels: bool = False,
        check_files: bool = True,
    ):
        rows, source = _load_rows(manifest)
        if not rows:
            raise ValueError(f"{source} has no rows")
        if levels_per_group < 1:
            raise ValueError(f"levels_per_group must be >= 1; got {levels_per_group}")
        if check_files:
            check_manifest_files(rows, source=source)
        groups = group_manifest_rows(rows)
        kept = [(g, members) for g, members in groups.items() if len(members) >= levels_per_group]
        if not kept:
            most = max(len(m) for m in groups.values())
            raise ValueError(
                f"no trajectory group in {source} has {levels_per_group} levels (the most is {most}); "
                f"lower levels_per_group or build more levels"
            )
        if len(kept) < len(groups):
            warnings.warn(
                f"{len(groups) - len(kept)} of {len(groups)} groups have fewer than {levels_per_group} levels and are left out"
            )
        if with_kernels and any(r.kernel is None for _, members in kept for r in members):
            raise ValueError(f"with_kernels=True but some rows of {source} have no kernel (real frame averaging has none)")
        self.groups = kept
        self.crop = _crop_hw(crop_size)
        self.levels_per_group = levels_per_group
        self.seed = int(seed)
        self.epoch = 0
        self.flip = flip
        self.with_kernels = with_kernels

    def set_epoch(self, epoch: int) -> None:
        """Draw new crops, flips and levels for every item (call once per epoch, before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict:
        group, members = self.groups[index]
        rng = item_rng(self.seed, self.epoch, index)
        chosen = np.sort(rng.choice(len(members), size=self.levels_per_group, replace=False))
        rows = [members[i] for i in chosen]
        sharp = load_rgb_uint8(rows[0].sharp)
        blurry = [load_rgb_uint8(r.blurry) for r in rows]
        for r, b in zip(rows, blurry):
            if b.shape != sharp.shape:
                raise ValueError(f"{r.blurry} is {b.shape[:2]} but its sharp frame {r.sharp} is {sharp.shape[:2]}")
        top, left, h, w = _choose_window(rng, sharp.shape[0], sharp.shape[1], self.crop)
        hflip, vflip = _choose_flips(rng, self.flip)
        window = (slice(top, top + h), slice(left, left + w))
        sharp_crop = _flip_image(sharp[window], hflip, vflip)
        blurry_crops = _flip_image(np.stack([b[window] for b in blurry]), hflip, vflip)
        item = {
            "sharp": _to_chw_tensor(sharp_crop),
            "blurry": _to_chw_tensor(blurry_crops),
            "timesteps": torch.tensor([r.t for r in rows], dtype=torch.long),
            "frames": torch.tensor([r.n for r in rows], dtype=torch.long),
            "group": group,
            "index": index,
        }
        if self.with_kernels:
            kernels = np.stack([flip_kernel(load_kernel(r.kernel), hflip, vflip) for r in rows])
            item["kernels"] = torch.from_numpy(np.ascontiguousarray(kernels))
        return item


def collate_trajectory_groups(items: list[dict]) -> dict:
    """Flatten ``B`` group items into one batch of ``B * k`` samples.

    Returns ``blurry`` ``[B*k, 3, h, w]``, ``sharp`` ``[B*k, 3, h, w]`` (each sample's own target, repeated
    within a group), ``timesteps`` / ``frames`` ``[B*k]``, ``group_index`` ``[B*k]`` (0..B-1: which group a
    sample belongs to), ``sharp_per_group`` ``[B, 3, h, w]`` (to encode each target once), ``groups``
    (list of B ids), and ``kernels`` ``[B*k, m, m]`` when the items have them.  Samples of one group are
    consecutive and sorted by ``t``.
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    ks = {item["blurry"].shape[0] for item in items}
    if len(ks) != 1:
        raise ValueError(f"all items of a batch need the same number of levels; got {sorted(ks)}")
    k = ks.pop()
    sharp_per_group = torch.stack([item["sharp"] for item in items])
    batch = {
        "blurry": torch.cat([item["blurry"] for item in items]),
        "sharp": sharp_per_group.repeat_interleave(k, dim=0),
        "timesteps": torch.cat([item["timesteps"] for item in items]),
        "frames": torch.cat([item["frames"] for item in items]),
        "group_index": torch.arange(len(items)).repeat_interleave(k),
        "sharp_per_group": sharp_per_group,
        "groups": [item["group"] for item in items],
    }
    if all("kernels" in item for item in items):
        batch["kernels"] = torch.cat([item["kernels"] for item in items])
    return batch


class PairDataset(Dataset):
    """One (sharp, blurry, t) pair per item, for training without grouping and for evaluation.

    Args:
        manifest: path or list of :class:`ManifestRow`.
        crop_size: ``int``, ``(h, w)`` or ``None`` (whole image).
        seed, flip, check_files: as in :class:`TrajectoryGroupDataset`.
        with_kernel: add ``kernel``: ``"map"`` gives the per-pixel map ``[m*m, h, w]`` that
            :func:`fidediff_pipeline.kernel_ops.apply_per_pixel_kernels` takes (memory: ``m*m*h*w`` floats,
            e.g. 63 MB for m=31 at 128x128), ``"global"`` gives the ``[m, m]`` kernel (broadcast it on the
            device with ``global_kernel_to_map``); ``None`` (default) gives none.

    Items: ``sharp``, ``blurry`` ``[3, h, w]``, ``timestep`` and ``frames`` (0-d LongTensor), ``group``,
    ``index``, and ``kernel`` if asked.
    """

    def __init__(self, manifest, crop_size=256, seed: int = 0, flip: bool = True, with_kernel: str | None = None, check_files: bool = True):
        rows, source = _load_rows(manifest)
        if not rows:
            raise ValueError(f"{source} has no rows")
        if with_kernel not in (None, "map", "global"):
            raise ValueError(f"with_kernel must be None, 'map' or 'global'; got {with_kernel!r}")
        if with_kernel and any(r.kernel is None for r in rows):
            raise ValueError(f"with_kernel={with_kernel!r} but some rows of {source} have no kernel")
        if check_files:
            check_manifest_files(rows, source=source)
        self.rows = sorted(rows, key=lambda r: (r.group, r.n))
        self.crop = _crop_hw(crop_size)
        self.seed = int(seed)
        self.epoch = 0
        self.flip = flip
        self.with_kernel = with_kernel

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        rng = item_rng(self.seed, self.epoch, index)
        sharp = load_rgb_uint8(row.sharp)
        blurry = load_rgb_uint8(row.blurry)
        if blurry.shape != sharp.shape:
            raise ValueError(f"{row.blurry} is {blurry.shape[:2]} but its sharp frame {row.sharp} is {sharp.shape[:2]}")
        top, left, h, w = _choose_window(rng, sharp.shape[0], sharp.shape[1], self.crop)
        hflip, vflip = _choose_flips(rng, self.flip)
        window = (slice(top, top + h), slice(left, left + w))
        item = {
            "sharp": _to_chw_tensor(_flip_image(sharp[window], hflip, vflip)),
            "blurry": _to_chw_tensor(_flip_image(blurry[window], hflip, vflip)),
            "timestep": torch.tensor(row.t, dtype=torch.long),
            "frames": torch.tensor(row.n, dtype=torch.long),
            "group": row.group,
            "index": index,
        }
        if self.with_kernel:
            kernel = torch.from_numpy(np.ascontiguousarray(flip_kernel(load_kernel(row.kernel), hflip, vflip)))
            item["kernel"] = kernel if self.with_kernel == "global" else global_kernel_to_map(kernel, h, w)[0]
        return item


class InMemoryTrajectoryGroupDataset(Dataset):
    """Trajectory groups synthesised on the fly from sharp arrays (no files): same items as
    :class:`TrajectoryGroupDataset` plus ``kernels`` ``[k, m, m]``.

    Item ``i`` uses image ``i % len(images)`` and a fresh camera-shake path drawn from
    ``(seed, epoch, i)``.  Only the crop plus a margin of ``m // 2`` is blurred (cheap), which gives
    exactly the pixels a whole-image blur would.

    Args:
        images: list of ``[H, W, 3]`` arrays (uint8 or float in [0, 1]), e.g. ``skimage.data.astronaut()``.
        frames: the trajectory's levels; each item draws ``levels_per_group`` of them.
        crop_size: ``int`` or ``(h, w)`` (``None``: whole images).
        num_groups: dataset length (default ``len(images)``).
        kernel_size, crf, noise_std, config: as in
            :func:`fidediff_pipeline.data.trajectories.blur_image_along_trajectory`.

    Example:
        >>> import skimage.data
        >>> ds = InMemoryTrajectoryGroupDataset([skimage.data.astronaut()], frames=(7, 11, 15), crop_size=64)
        >>> ds[0]["blurry"].shape, ds[0]["timesteps"].tolist()
        (torch.Size([3, 3, 64, 64]), [120, 200, 280])
    """

    def __init__(
        self,
        images,
        frames=(7, 11, 15),
        crop_size=256,
        levels_per_group: int = 3,
        num_groups: int | None = None,
        seed: int = 0,
        flip: bool = True,
        kernel_size: int = DEFAULT_KERNEL_SIZE,
        crf: str = DEFAULT_CRF,
        noise_std: float = 0.0,
        config: TrajectoryConfig | None = None,
    ):
        # Stored as 8-bit, like file data, so the sharp target and the blur input are the same pixels.
        self.images = [quantize_uint8(to_float01(img)) for img in images]
        if not self.images:
            raise ValueError("no images given")
        self.frames = tuple(sorted(int(n) for n in frames))
        if levels_per_group < 1 or levels_per_group > len(self.frames):
            raise ValueError(f"levels_per_group must be between 1 and {len(self.frames)} (the levels in frames); got {levels_per_group}")
        self.crop = _crop_hw(crop_size)
        self.levels_per_group = levels_per_group
        self.num_groups = len(self.images) if num_groups is None else int(num_groups)
        self.seed = int(seed)
        self.epoch = 0
        self.flip = flip
        self.kernel_size = kernel_size
        self.crf = crf
        self.noise_std = noise_std
        self.config = config or TrajectoryConfig()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_groups

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_groups:
            raise IndexError(index)
        image = self.images[index % len(self.images)]
        rng = item_rng(self.seed, self.epoch, index)
        chosen = tuple(np.sort(rng.choice(self.frames, size=self.levels_per_group, replace=False)).tolist())
        top, left, h, w = _choose_window(rng, image.shape[0], image.shape[1], self.crop)
        hflip, vflip = _choose_flips(rng, self.flip)
        # The trajectory is drawn (and fitted) for ALL levels, so a level's kernel does not depend on which
        # subset this item happened to choose.
        trajectory = fit_to_kernel(sample_camera_shake(max(self.frames), rng, self.config), self.kernel_size, max(self.frames))
        r = self.kernel_size // 2
        y0, y1 = max(top - r, 0), min(top + h + r, image.shape[0])
        x0, x1 = max(left - r, 0), min(left + w + r, image.shape[1])
        region = image[y0:y1, x0:x1].astype(np.float64) / 255.0
        levels = blur_image_along_trajectory(
            region, frames=chosen, rng=rng, kernel_size=self.kernel_size, crf=self.crf,
            noise_std=self.noise_std, trajectory=trajectory,
        )  # fmt: skip
        inner = (slice(top - y0, top - y0 + h), slice(left - x0, left - x0 + w))
        sharp_crop = region[inner]
        blurry = np.stack([levels[n][0][inner] for n in chosen])
        kernels = np.stack([flip_kernel(levels[n][1], hflip, vflip) for n in chosen])
        return {
            "sharp": _to_chw_tensor(_flip_image(sharp_crop, hflip, vflip)),
            "blurry": _to_chw_tensor(_flip_image(blurry, hflip, vflip)),
            "timesteps": torch.tensor([timestep_from_frames(n) for n in chosen], dtype=torch.long),
            "frames": torch.tensor(chosen, dtype=torch.long),
            "group": f"mem_{index:06d}",
            "index": index,
            "kernels": torch.from_numpy(np.ascontiguousarray(kernels)),
        }
