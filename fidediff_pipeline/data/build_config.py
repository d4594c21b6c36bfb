"""A small record of the settings that define a data folder's outputs, so a resumed run cannot silently
mix files made with different settings (e.g. a ``gamma2.2`` folder resumed with ``--crf linear``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic_io import atomic_path
from .manifest import count_pairs_by_frames, format_frames_table

BUILD_CONFIG_NAME = "fidediff_data.json"


def check_or_write_build_config(out_dir: str | os.PathLike, settings: dict) -> Path:
    """Write ``settings`` to ``<out_dir>/fidediff_data.json``, or, if the file exists, check it matches.

    Raises ``ValueError`` naming the differing settings; the fix is a fresh ``--out`` folder.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / BUILD_CONFIG_NAME
    settings = json.loads(json.dumps(settings))  # normalise tuples to lists, as stored
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        differing = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        if differing:
            details = "; ".join(f"{k}: folder has {stored.get(k)!r}, run asks {settings.get(k)!r}" for k in differing)
            raise ValueError(
                f"{out_dir} was built with other settings ({details}); resume with the same settings or use a new --out"
            )
        return path
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


@dataclass
class BuildReport:
    """What a builder did: the manifest it wrote, its rows and counts."""

    manifest_path: Path
    rows: list
    written: int = 0  # image files written by this run
    skipped_existing: int = 0  # image files already present (resume)
    dropped_groups: int = 0  # sharp frames with fewer than min_levels levels
    dropped_levels: int = 0  # (centre, n) pairs lost to the border rule
    skipped_bad: int = 0  # groups skipped because a source image could not be read (corrupt, too large, ...)
    bad_files: list = field(default_factory=list)  # their one-line reasons
    extra: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict[int, int]:
        return count_pairs_by_frames(self.rows)

    @property
    def num_groups(self) -> int:
        return len({r.group for r in self.rows})

    def table(self, label: str = "Pairs") -> str:
        lines = [format_frames_table(self.counts, label=label) if self.rows else "no pairs"]
        lines.append(
            f"{self.num_groups} trajectory groups; {self.written} files written, {self.skipped_existing} already "
            f"present; {self.dropped_levels} levels dropped at borders, {self.dropped_groups} sharp frames skipped "
            f"(too few levels)"
        )
        if self.skipped_bad:
            lines.append(f"{self.skipped_bad} skipped: a source image could not be read (first: {self.bad_files[0]})")
        return "\n".join(lines)
