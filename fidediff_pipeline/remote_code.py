"""Ship the pipeline's code inside a saved folder, so it loads without this package installed.

``DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)`` reads ``model_index.json``; an entry
``["pipeline", "FideDiffPipeline"]`` makes diffusers import ``pipeline.py`` from the folder, and
``"kernel_controlnet": ["modeling_kernel_controlnet", "KernelControlNetModel"]`` imports
``kernel_controlnet/modeling_kernel_controlnet.py``. Sibling files a code file imports relatively are copied too.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
from pathlib import Path

_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import", flags=re.MULTILINE)
PIPELINE_FILE = "pipeline.py"


def relative_import_closure(source_file: Path) -> list[Path]:
    """``source_file`` and every sibling module it imports relatively, recursively (sorted, no duplicates)."""
    seen: dict[str, Path] = {}
    pending = [Path(source_file)]
    while pending:
        path = pending.pop()
        if path.name in seen:
            continue
        seen[path.name] = path
        for module in _RELATIVE_IMPORT.findall(path.read_text(encoding="utf-8")):
            sibling = path.parent / f"{module}.py"
            if not sibling.is_file():
                raise FileNotFoundError(f"{path} imports .{module}, but {sibling} does not exist")
            pending.append(sibling)
    return [seen[name] for name in sorted(seen)]


def _copy_with_closure(entry_file: Path, target_dir: Path, entry_name: str) -> None:
    target_dir.mkdir(parents=True, exist_ok=True)
    for path in relative_import_closure(entry_file):
        name = entry_name if path == entry_file else path.name
        if (target_dir / name).resolve() != path.resolve():
            shutil.copyfile(path, target_dir / name)


def write_remote_code(pipeline, save_directory: str | os.PathLike, custom_components: tuple[str, ...]) -> None:
    """Copy code files into ``save_directory`` and point ``model_index.json`` at them."""
    save_directory = Path(save_directory)
    pipeline_file = Path(inspect.getfile(type(pipeline)))
    _copy_with_closure(pipeline_file, save_directory, PIPELINE_FILE)

    index_path = save_directory / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index["_class_name"] = [Path(PIPELINE_FILE).stem, type(pipeline).__name__]
    for name in custom_components:
        component = getattr(pipeline, name, None)
        if component is None:
            index[name] = [None, None]
            continue
        component_file = Path(inspect.getfile(type(component)))
        _copy_with_closure(component_file, save_directory / name, component_file.name)
        index[name] = [component_file.stem, type(component).__name__]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
