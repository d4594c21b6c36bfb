"""Sub-commands of the ``fidediff`` command line; each module exposes ``register(subparsers)``."""

from __future__ import annotations

import os
from pathlib import Path


def prepare_output_dir(output_dir: str | os.PathLike, flag: str, create: bool = True) -> None:
    """Create a command's output folder (``flag``: how the command line names it) now, so that a file in its place
    or a read-only parent fails in one line before any model loads or any work starts. ``create=False`` only
    refuses a file in its place (for a command whose own checks of its inputs come later: a failed run leaves no
    empty folder)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{flag} {output_dir} is a file; it must be a folder (created if missing)")
    if not create:
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{flag} {output_dir}: cannot create the output folder ({err.strerror or err})") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {output_dir}: the output folder is not writable")
