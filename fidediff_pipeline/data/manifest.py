"""Manifests of blur-trajectory pairs: one CSV row per (sharp, blurry) pair.

Format (``manifest.csv``, UTF-8, comma separated, one header line)::

    sharp,blurry,n,t,group,scene,kernel
    GOPR0372_07_00/sharp/000047.png,GOPR0372_07_00/blur_n07/000047.png,7,120,GOPR0372_07_00/000047,GOPR0372_07_00,
    astronaut/sharp/astronaut_00.png,astronaut/blur_n11/astronaut_00.png,11,200,astronaut_00,astronaut,astronaut/kernels_n11/astronaut_00.npy

- ``sharp``, ``blurry``, ``kernel``: paths relative to the folder that holds the manifest, with ``/``
  separators, so a data folder can be moved or copied as a whole.  ``kernel`` is empty when the blur has
  no single known kernel (real frame averaging); otherwise it is a float32 ``.npy`` of shape ``[m, m]``
  in the correlation convention of :mod:`fidediff_pipeline.kernel_ops` (load with ``allow_pickle=False``).
- ``n``: number of 240 fps frames averaged (odd: the window is centred on the sharp frame).
- ``t``: the diffusion timestep, always ``(n - 1) * 20`` (checked on read).
- ``group``: the trajectory id.  All rows of one group share the same sharp frame and lie on one blur
  trajectory (nested, centred windows), which is what consistency training needs.
- ``scene``: the source sequence or image, for splitting train/validation by scene.

Rows read back carry absolute paths, so datasets never depend on the working directory.

Example:
    >>> rows = [ManifestRow(sharp="/d/s/a.png", blurry="/d/b/a.png", n=11, t=200, group="a", scene="a")]
    >>> write_manifest(rows, "/d/manifest.csv")  # doctest: +SKIP
    >>> read_manifest("/d/manifest.csv")[0].blurry  # doctest: +SKIP
    '/d/b/a.png'
"""

from __future__ import annotations

import csv
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..atomic_io import atomic_path

MANIFEST_COLUMNS = ("sharp", "blurry", "n", "t", "group", "scene", "kernel")
DEFAULT_MANIFEST_NAME = "manifest.csv"

# FideDiff's map from frames averaged to timestep: g(n) = (n - 1) * 20, so g(1) = 0 (the sharp frame).
TIMESTEP_PER_FRAME = 20


def timestep_from_frames(n: int) -> int:
    """Diffusion timestep of a blur made by averaging ``n`` 240 fps frames: ``t = (n - 1) * 20``.

    Example:
        >>> timestep_from_frames(11)
        200
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"the number of averaged frames must be >= 1; got {n}")
    return (n - 1) * TIMESTEP_PER_FRAME


def frames_from_timestep(t: int) -> int:
    """Inverse of :func:`timestep_from_frames` (``t`` must be a multiple of 20)."""
    t = int(t)
    if t < 0 or t % TIMESTEP_PER_FRAME:
        raise ValueError(f"timestep {t} is not (n - 1) * {TIMESTEP_PER_FRAME} for a whole n >= 1")
    return t // TIMESTEP_PER_FRAME + 1


def validate_frame_levels(frames, min_levels: int = 3) -> tuple[int, ...]:
    """Check and sort the requested blur levels (numbers of averaged frames).

    Levels must be odd (a window centred on the sharp frame) and distinct.  Consistency training needs
    several points per trajectory: fewer than ``min_levels`` levels is an error.
    """
    levels = tuple(sorted({int(n) for n in frames}))
    if not levels:
        raise ValueError("no blur levels given (e.g. --frames 5 7 9 11 13 15)")
    bad = [n for n in levels if n < 1 or n % 2 == 0]
    if bad:
        raise ValueError(f"blur levels must be odd numbers of frames >= 1 (centred windows); got {bad}")
    if len(frames) != len(levels):
        raise ValueError(f"blur levels must be distinct; got {list(frames)}")
    if len(levels) < min_levels:
        raise ValueError(
            f"consistency training needs at least {min_levels} blur levels per sharp frame; got {list(levels)} "
            f"(ask for more levels, or lower min_levels / --min-levels to build anyway)"
        )
    return levels


@dataclass(frozen=True)
class ManifestRow:
    """One (sharp, blurry) pair on a blur trajectory.  Paths are absolute once read from a manifest."""

    sharp: str
    blurry: str
    n: int
    t: int
    group: str
    scene: str
    kernel: str | None = None

    def __post_init__(self):
        if int(self.t) != timestep_from_frames(self.n):
            raise ValueError(f"row for {self.blurry}: t={self.t} but n={self.n} gives t={timestep_from_frames(self.n)}")


def _relative_posix(path: str | os.PathLike, root: Path) -> str:
    rel = os.path.relpath(os.path.abspath(path), root)
    if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
        # read_manifest refuses such rows, so a manifest that could not be read back is never written.
        raise ValueError(f"{path} is outside {root}; a manifest's files must lie in its folder or below")
    return Path(rel).as_posix()


def resolve_inside(root: Path, relative: str, where: str) -> str:
    """``root / relative`` as an absolute path, refused when it leaves ``root`` (``../``, an absolute path): a
    manifest row must never make a loader open arbitrary files. The check is lexical, so a symlink a user put
    inside the data folder on purpose still works."""
    path = root / relative
    normal = Path(os.path.normpath(path))
    if normal != root and root not in normal.parents:
        raise ValueError(f"{where}: {relative!r} points outside {root}; paths must stay inside the manifest's folder")
    return str(path)


def write_manifest(rows, manifest_path: str | os.PathLike) -> Path:
    """Write ``rows`` to ``manifest_path`` (CSV), storing paths relative to the manifest's folder.

    Rows are written sorted by (scene, group, n) so the same data always gives the same file.  The file is
    written to a temporary name first and renamed, so an interrupted run never leaves half a manifest.
    """
    manifest_path = Path(manifest_path)
    root = manifest_path.parent.resolve()
    root.mkdir(parents=True, exist_ok=True)
    ordered = sorted(rows, key=lambda r: (r.scene, r.group, r.n, r.blurry))
    with atomic_path(manifest_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for row in ordered:
            writer.writerow(
                [
                    _relative_posix(row.sharp, root),
                    _relative_posix(row.blurry, root),
                    int(row.n),
                    int(row.t),
                    row.group,
                    row.scene,
                    _relative_posix(row.kernel, root) if row.kernel else "",
                ]
            )
    return manifest_path


def read_manifest(manifest_path: str | os.PathLike, check_files: bool = False) -> list[ManifestRow]:
    """Read a manifest written by :func:`write_manifest`; returned paths are absolute.

    Args:
        manifest_path: the CSV file, or a folder holding ``manifest.csv``.
        check_files: also raise ``FileNotFoundError`` if any referenced file is missing.
    """
    manifest_path = Path(manifest_path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / DEFAULT_MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest_path}")
    root = manifest_path.parent.resolve()
    rows = []
    with open(manifest_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing_cols = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing_cols:
            raise ValueError(f"{manifest_path}: missing columns {missing_cols}; expected header {','.join(MANIFEST_COLUMNS)}")
        for line_no, rec in enumerate(reader, start=2):
            try:
                where = f"{manifest_path}, line {line_no}"
                rows.append(
                    ManifestRow(
                        sharp=resolve_inside(root, rec["sharp"], where),
                        blurry=resolve_inside(root, rec["blurry"], where),
                        n=int(rec["n"]),
                        t=int(rec["t"]),
                        group=rec["group"],
                        scene=rec["scene"],
                        kernel=resolve_inside(root, rec["kernel"], where) if rec["kernel"] else None,
                    )
                )
            except (TypeError, ValueError) as err:
                raise ValueError(f"{manifest_path}, line {line_no}: {err}") from err
    if check_files:
        check_manifest_files(rows, source=str(manifest_path))
    return rows


def check_manifest_files(rows, source: str = "manifest") -> None:
    """Raise ``FileNotFoundError`` naming the missing files (first few) if any row points at nothing."""
    missing = []
    seen = set()
    for row in rows:
        for path in (row.sharp, row.blurry, row.kernel):
            if path and path not in seen:
                seen.add(path)
                if not os.path.isfile(path):
                    missing.append(path)
    if missing:
        shown = ", ".join(missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{source}: {len(missing)} referenced file(s) missing: {shown}{more}")


def group_manifest_rows(rows) -> "OrderedDict[str, list[ManifestRow]]":
    """Group rows by trajectory id, each group sorted by ``n``; checks a group has one sharp frame."""
    groups: OrderedDict[str, list[ManifestRow]] = OrderedDict()
    for row in sorted(rows, key=lambda r: (r.group, r.n)):
        groups.setdefault(row.group, []).append(row)
    for group, members in groups.items():
        sharps = {r.sharp for r in members}
        if len(sharps) != 1:
            raise ValueError(f"trajectory group {group!r} mixes sharp frames {sorted(sharps)}")
        levels = [r.n for r in members]
        if len(set(levels)) != len(levels):
            raise ValueError(f"trajectory group {group!r} has repeated levels n={levels}")
    return groups


def count_pairs_by_frames(rows) -> dict[int, int]:
    """Number of pairs per blur level ``n`` (the paper's Table 1)."""
    counts: dict[int, int] = {}
    for row in rows:
        counts[row.n] = counts.get(row.n, 0) + 1
    return dict(sorted(counts.items()))


def format_frames_table(counts: dict[int, int], label: str = "Pairs") -> str:
    """A text table of pair counts per number of averaged frames, laid out like the paper's Table 1.

    Example:
        >>> print(format_frames_table({7: 175, 11: 1818, 13: 110}, label="GoPro"))
        Avg. Frames |     7 |    11 |    13 | Total
        GoPro       |   175 |  1818 |   110 |  2103
    """
    levels = sorted(counts)
    width = max([5] + [len(str(counts[n])) for n in levels] + [len(str(sum(counts.values())))])
    name_w = max(len("Avg. Frames"), len(label))
    head = "Avg. Frames".ljust(name_w) + " | " + " | ".join(str(n).rjust(width) for n in levels) + " | Total"
    body = label.ljust(name_w) + " | " + " | ".join(str(counts[n]).rjust(width) for n in levels)
    body += " | " + str(sum(counts.values())).rjust(len("Total"))
    return head + "\n" + body

