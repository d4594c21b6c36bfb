"""A saved folder's model_index.json entries, and the code files that let it load without this package.

By default `FideDiffPipeline.save_pretrained` writes weights and configs only: ``model_index.json`` names the
installed package's modules as diffusers itself writes them for a library it does not know,
``"kernel_controlnet": ["fidediff_pipeline.models.modeling_kernel_controlnet", "KernelControlNetModel"]`` (diffusers'
loader imports that module; it looks for ``ModelMixin`` there too, so the package's top level would not do), and
``pipeline.py`` is a one-line stub importing the installed pipeline class (diffusers finds a pipeline class that is
not its own only through a file in the folder). So ``FideDiffPipeline.from_pretrained(folder)`` and
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` load the package's classes.

For a folder that must load where the package is not installed (``fidediff push``, ``fidediff export-space``,
``save_pretrained(..., remote_code=True)``), `write_remote_code` copies the code: ``pipeline.py`` (the pipeline
module) and each custom component's module (``kernel_controlnet/modeling_kernel_controlnet.py``), each with every
package module it imports relatively, flattened into one folder: ``from ..models.modeling_kernel_controlnet
import X`` becomes ``from .modeling_kernel_controlnet import X``, as diffusers' remote-code loader expects.
``DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)`` then imports those copies.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from pathlib import Path

PACKAGE_NAME = "fidediff_pipeline"
PIPELINE_FILE = "pipeline.py"
MODEL_INDEX = "model_index.json"
STUB = (
    "# Weights and configs only: the code is the installed fidediff_pipeline package (pip install fidediff-pipeline).\n"
    "# `fidediff push`, `fidediff export-space` and `save_pretrained(..., remote_code=True)` write the pipeline's own\n"
    "# code here instead, for loading with trust_remote_code where the package is not installed.\n"
    f"from {PACKAGE_NAME} import FideDiffPipeline  # noqa: F401\n"
)

# ``from .x import``, ``from ..a.b import``, ``from . import`` (at any indentation, as diffusers' loader reads them).
_RELATIVE_IMPORT = re.compile(r"^(?P<indent>[ \t]*)from[ \t]+(?P<dots>\.+)(?P<module>[\w.]*)[ \t]+import\b", re.MULTILINE)


def _imported_file(path: Path, dots: str, module: str) -> Path:
    base = path.parent
    for _ in range(len(dots) - 1):
        base = base.parent
    if module:
        target = base.joinpath(*module.split(".")).with_suffix(".py")
        if target.is_file():
            return target
    raise ValueError(
        f"{path} imports `from {dots}{module} import ...`, which is not a module file: code that travels as remote "
        "code must import modules (e.g. `from ..models.modeling_kernel_controlnet import KernelControlNetModel`)"
    )


def flat_closure(entry_file: str | os.PathLike, entry_name: str | None = None) -> dict[str, str]:
    """``entry_file`` and every module it imports relatively (recursively), as ``{file name: source}`` for one folder.

    The entry is named ``entry_name`` (default: its own name), the others by their file names; package-relative
    imports are rewritten to sibling imports of those names. Two different modules with one file name are refused.
    """
    entry_file = Path(entry_file).resolve()
    names: dict[Path, str] = {entry_file: entry_name or entry_file.name}
    pending = [entry_file]
    while pending:
        path = pending.pop()
        for match in _RELATIVE_IMPORT.finditer(path.read_text(encoding="utf-8")):
            imported = _imported_file(path, match["dots"], match["module"]).resolve()
            if imported not in names:
                names[imported] = imported.name
                pending.append(imported)
    taken: dict[str, Path] = {}
    for path, name in names.items():
        if name in taken:
            raise ValueError(f"{path} and {taken[name]} would both be {name} in a flat remote-code folder; rename one")
        taken[name] = path

    files = {}
    for path, name in names.items():
        def flatten(match, path=path):
            target = names[_imported_file(path, match["dots"], match["module"]).resolve()]
            return f"{match['indent']}from .{Path(target).stem} import"

        files[name] = _RELATIVE_IMPORT.sub(flatten, path.read_text(encoding="utf-8"))
    return dict(sorted(files.items()))


def _package_classes():
    from ..pipelines.pipeline_fidediff import _COMPONENT_CLASSES, FideDiffPipeline

    return FideDiffPipeline, _COMPONENT_CLASSES


def _read_index(save_directory: Path) -> dict:
    index_path = save_directory / MODEL_INDEX
    if not index_path.is_file():
        raise ValueError(f"{save_directory} has no {MODEL_INDEX}; pass a folder made by FideDiffPipeline.save_pretrained")
    return json.loads(index_path.read_text(encoding="utf-8"))


def _dump(index: dict) -> str:
    return json.dumps(index, indent=2, sort_keys=True) + "\n"


def package_model_index(save_directory: str | os.PathLike) -> dict[str, str]:
    """The weights-and-configs form: ``{relative path: text}`` of ``model_index.json`` and the ``pipeline.py`` stub.

    Custom components are named ``[module, class]`` of the installed package (absent ones ``[None, None]``), as
    diffusers' own ``save_pretrained`` names them; ``_class_name`` is
    ``["pipeline", "FideDiffPipeline"]``, the stub, for `DiffusionPipeline.from_pretrained`.
    """
    save_directory = Path(save_directory)
    pipeline_class, component_classes = _package_classes()
    index = _read_index(save_directory)
    index["_class_name"] = [Path(PIPELINE_FILE).stem, pipeline_class.__name__]
    for name, component_class in component_classes.items():
        entry = index.get(name)
        present = isinstance(entry, (list, tuple)) and entry[0] is not None
        index[name] = [component_class.__module__, component_class.__name__] if present else [None, None]
    return {MODEL_INDEX: _dump(index), PIPELINE_FILE: STUB}


def remote_code_files(save_directory: str | os.PathLike) -> dict[str, str]:
    """The remote-code form of a saved folder: ``{relative path: text}`` of its code files and ``model_index.json``.

    Nothing is written; `write_remote_code` writes them, `push_pipeline_to_hub` uploads them beside the weights.
    """
    save_directory = Path(save_directory)
    pipeline_class, component_classes = _package_classes()
    index = _read_index(save_directory)
    files = dict(flat_closure(inspect.getfile(pipeline_class), PIPELINE_FILE))
    index["_class_name"] = [Path(PIPELINE_FILE).stem, pipeline_class.__name__]
    for name, component_class in component_classes.items():
        entry = index.get(name)
        if not (isinstance(entry, (list, tuple)) and entry[0] is not None):
            index[name] = [None, None]
            continue
        component_file = Path(inspect.getfile(component_class))
        for file_name, text in flat_closure(component_file).items():
            files[f"{name}/{file_name}"] = text
        index[name] = [component_file.stem, component_class.__name__]
    files[MODEL_INDEX] = _dump(index)
    return files


def _write(save_directory: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        target = save_directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def write_package_index(save_directory: str | os.PathLike) -> None:
    """Point a saved folder at the installed package (see `package_model_index`); remote-code copies are removed."""
    save_directory = Path(save_directory)
    for stale in remote_code_file_names():
        (save_directory / stale).unlink(missing_ok=True)
    _write(save_directory, package_model_index(save_directory))


def remote_code_file_names() -> list[str]:
    """Every code file `write_remote_code` may write (relative paths), present components or not."""
    pipeline_class, component_classes = _package_classes()
    names = list(flat_closure(inspect.getfile(pipeline_class), PIPELINE_FILE))
    for name, component_class in component_classes.items():
        names += [f"{name}/{file_name}" for file_name in flat_closure(inspect.getfile(component_class))]
    return names


def write_remote_code(save_directory: str | os.PathLike) -> None:
    """Write the code files into a saved folder and point ``model_index.json`` at them (see `remote_code_files`)."""
    save_directory = Path(save_directory)
    _write(save_directory, remote_code_files(save_directory))
