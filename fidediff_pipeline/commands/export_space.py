"""``fidediff export-space --out DIR``: write a Hugging Face Space folder, ready to upload.

The folder holds ``app.py``, ``requirements.txt``, ``README.md`` (the Space's front matter, from
``space/README.md``), ``assets/`` (the examples), the ``fidediff_pipeline`` source and, unless the model is a Hub
repo id, the model folder (``model/``, with its remote-code files). ``space_config.json`` tells ``app.py`` which
model to load. Upload it with ``hf upload <user>/<space> DIR --repo-type space`` and choose ZeroGPU in the Space's
settings.

It needs a source checkout of the repository (``app.py`` and ``space/`` sit beside the package there).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import fidediff_pipeline

from ..atomic_io import temporary_name
from . import prepare_output_dir

PACKAGE_DIR = Path(fidediff_pipeline.__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent
SPACE_FILES = ("app.py", "requirements.txt")
# Large Space repos are slow to build and clone; a model this big is better pushed on its own (`fidediff push`).
LARGE_MODEL_BYTES = 1_000_000_000
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".DS_Store")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-space", help="write a Hugging Face Space folder (app, requirements, README, package, model)",
        description="Write a Gradio Space folder for ZeroGPU, ready to upload with `hf upload --repo-type space`.",
    )
    parser.add_argument("--out", required=True, help="output folder (must be empty or new, unless --force)")
    parser.add_argument("--model", default=None,
                        help="folder or Hub repo id (default: $FIDEDIFF_MODEL, else the bundled tiny checkpoint); "
                             "a folder is copied into the Space, a Hub id is referenced")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder, replacing what it writes")
    parser.set_defaults(func=run)


def _is_hub_id(model: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(model).is_absolute() or model.startswith((".", "~")) or model.count("/") != 1:
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def _check_sources() -> None:
    missing = [name for name in (*SPACE_FILES, "space/README.md", "assets") if not (SOURCE_ROOT / name).exists()]
    if missing:
        raise ValueError(
            f"export-space needs a source checkout of the repository; {', '.join(missing)} not found in {SOURCE_ROOT} "
            "(an installed wheel has the package only)"
        )


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _write_readme(out: Path, hub_model: str | None) -> None:
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(SOURCE_ROOT / "space" / "README.md")
    if hub_model:
        card.data.models = [hub_model]  # links the Space and the model page on the Hub
    card.save(out / "README.md")


def _publish(staging: Path, out: Path, remove_model: bool) -> None:
    """Rename each entry of ``staging`` into ``out`` (an entry already there is moved aside, then deleted).

    With a Hub model, a ``model/`` folder left by an earlier export is removed, as before.
    """
    out.mkdir(exist_ok=True)
    if remove_model and (out / "model").exists():
        shutil.rmtree(out / "model")
    for entry in sorted(staging.iterdir()):
        target = out / entry.name
        if target.exists():
            aside = temporary_name(target)
            os.replace(target, aside)
            os.replace(entry, target)
            shutil.rmtree(aside) if aside.is_dir() else aside.unlink()
        else:
            os.replace(entry, target)


def export_space(out: str | Path, model: str | None = None, force: bool = False) -> dict:
    """Write the Space folder; returns ``{"out", "model", "model_in_space", "files", "bytes"}``.

    Example:
        >>> export_space("space_out", model="me/fidediff")  # doctest: +SKIP
        {'out': 'space_out', 'model': 'me/fidediff', 'model_in_space': False, ...}
    """
    from ..hub.loading import default_model

    _check_sources()
    out = Path(out)
    model = model or default_model()
    model_folder = Path(model).expanduser()
    if model_folder.is_dir():
        if not (model_folder / "model_index.json").is_file():
            raise ValueError(f"{model_folder} has no model_index.json; pass a folder made by FideDiffPipeline.save_pretrained")
        hub_model = None
    elif _is_hub_id(model):
        hub_model = model
    else:
        raise ValueError(f"{model}: no such model folder, and not a Hub repo id ('owner/name')")
    prepare_output_dir(out, "--out", create=False)  # (created below, through a staging folder)
    if out.exists() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} is not empty; choose a new folder or pass --force to write into it")
    resolved = out.resolve()
    if resolved in (SOURCE_ROOT, *SOURCE_ROOT.parents) or any(resolved.is_relative_to(SOURCE_ROOT / d) for d in ("fidediff_pipeline", "assets")):
        raise ValueError(f"{out} would overwrite or contain the sources it copies; choose a folder outside {SOURCE_ROOT}")
    out.parent.mkdir(parents=True, exist_ok=True)

    # Everything is written into a sibling staging folder, then each entry is renamed into place: a crash
    # leaves the old entries or the new ones, never a half-copied model or package.
    staging = temporary_name(out)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name in SPACE_FILES:
            shutil.copyfile(SOURCE_ROOT / name, staging / name)
        _write_readme(staging, hub_model)
        for folder, ignore in (("assets", _IGNORE), ("fidediff_pipeline", shutil.ignore_patterns("__pycache__", "*.pyc", "checkpoints"))):
            source = SOURCE_ROOT / folder if folder == "assets" else PACKAGE_DIR
            shutil.copytree(source, staging / folder, ignore=ignore)
        if hub_model is None:
            shutil.copytree(model_folder, staging / "model", ignore=_IGNORE)
            # The model travels with its code (loadable on its own with trust_remote_code) and its card.
            from ..hub.remote_code import write_remote_code

            write_remote_code(staging / "model")
            if not (staging / "model" / "README.md").is_file():
                from ..hub.push import write_model_card

                write_model_card(staging / "model", repo_id=model_folder.resolve().name)
            if _folder_size(staging / "model") > LARGE_MODEL_BYTES:
                print(f"note: the model is {_folder_size(staging / 'model') / 1e9:.1f} GB; consider `fidediff push` and "
                      "`export-space --model <repo id>` instead of copying it into the Space")
        config = {"model": hub_model or "model", "exported_by": f"fidediff export-space {fidediff_pipeline.__version__}"}
        (staging / "space_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        _publish(staging, out, remove_model=hub_model is not None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = [p for p in out.rglob("*") if p.is_file()]
    return {"out": str(out), "model": hub_model or str(model_folder), "model_in_space": hub_model is None,
            "files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def run(args) -> int:
    result = export_space(args.out, args.model, args.force)
    where = "copied into model/" if result["model_in_space"] else "loaded from the Hub"
    print(f"wrote {result['files']} files ({result['bytes'] / 1e6:.1f} MB) to {result['out']}; model {result['model']} "
          f"{where}. Upload: hf upload <user>/<space> {result['out']} --repo-type space (then pick ZeroGPU in settings)")
    return 0
