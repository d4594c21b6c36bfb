"""Find the (blurry, sharp) pairs of the standard motion-deblurring test sets on disk.

Each loader returns a list of :class:`EvalPair` ``(name, blurry, sharp)`` in a stable (sorted) order;
``name`` is unique within the set and is used for the CSV rows and the saved restored images.

Layouts accepted (``root`` is the folder given with ``--root``):

* ``gopro``: ``<root>/test/<scene>/blur/*.png`` with ``<root>/test/<scene>/sharp/`` (the GOPRO_Large
  release), or ``<root>/<scene>/blur`` directly. The ``blur`` folder is used, not ``blur_gamma``: the field
  trains and tests on ``blur``. Names are ``<scene>/<file>`` (file names repeat across scenes).
* ``hide``: ``<root>/test/**/*.png`` with ``<root>/GT/<same file name>`` (the HIDE_dataset release, whose
  test images sit in ``test-close-ups`` and ``test-long-shot``); if ``<root>/test.txt`` exists, only the
  files it lists are used.
* ``realblur_j`` / ``realblur_r``: ``<root>/RealBlur_J_test_list.txt`` (or ``RealBlur_R_test_list.txt``),
  lines ``"<gt path> <blur path>"`` relative to ``root``. Names are ``<scene>/<blur file>``.
* ``paired``: ``<root>/blurry/`` and ``<root>/sharp/`` holding files of the same names.
* For gopro / hide / realblur_* also Restormer's prepared test folders ``<root>/input`` + ``<root>/target``
  (same file names), e.g. ``Datasets/test/GoPro``.

Every loader checks that both images of each pair exist and have the same size (reading image headers
only), and raises ``FileNotFoundError`` / ``ValueError`` naming the path and the expected layout.

Example:
    >>> from fidediff_pipeline.evaluation.eval_sets import load_eval_set
    >>> pairs = load_eval_set("gopro", "/data/GOPRO_Large")       # doctest: +SKIP
    >>> pairs[0].name, pairs[0].blurry.name                      # doctest: +SKIP
    ('GOPR0384_11_00/000001.png', '000001.png')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

DATASETS = ("gopro", "hide", "realblur_j", "realblur_r", "paired")

LAYOUTS = {
    "gopro": "<root>/test/<scene>/blur/*.png + <root>/test/<scene>/sharp/*.png (or <root>/<scene>/blur, "
    "or <root>/input + <root>/target)",
    "hide": "<root>/test/**/*.png + <root>/GT/*.png, optional <root>/test.txt (or <root>/input + <root>/target)",
    "realblur_j": "<root>/RealBlur_J_test_list.txt with lines '<gt path> <blur path>' relative to <root> "
    "(or <root>/input + <root>/target)",
    "realblur_r": "<root>/RealBlur_R_test_list.txt with lines '<gt path> <blur path>' relative to <root> "
    "(or <root>/input + <root>/target)",
    "paired": "<root>/blurry/* + <root>/sharp/* with the same file names",
}


class EvalPair(NamedTuple):
    """One test image: a unique ``name``, the ``blurry`` input and the ``sharp`` ground truth."""

    name: str
    blurry: Path
    sharp: Path


def inside_root(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refused (``ValueError`` naming ``where``) when it resolves outside ``root``.

    A list row such as ``../../etc/passwd`` (or an absolute path) must neither be read nor make the evaluation
    write restored images outside its output folder.
    """
    path = Path(root) / relative
    base = Path(os.path.abspath(root))
    normal = Path(os.path.normpath(os.path.abspath(path)))  # lexical: a symlink put inside the root still works
    if normal != base and base not in normal.parents:
        raise ValueError(f"{where}: {relative!r} points outside {root}; paths in the list must stay inside the root")
    return path


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _require_dir(root: Path, dataset: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} root {root} is not a folder; expected layout: {LAYOUTS[dataset]}")
    return root


def _same_name_pairs(blurry_dir: Path, sharp_dir: Path, dataset: str, prefix: str = "") -> list[EvalPair]:
    """Pair files of the same name in two folders; every file must have its partner."""
    blurry = {p.name: p for p in _images_in(blurry_dir)}
    sharp = {p.name: p for p in _images_in(sharp_dir)}
    if not blurry:
        raise FileNotFoundError(f"no images in {blurry_dir}; expected layout for {dataset}: {LAYOUTS[dataset]}")
    only_blurry = sorted(set(blurry) - set(sharp))
    only_sharp = sorted(set(sharp) - set(blurry))
    if only_blurry or only_sharp:
        details = []
        if only_blurry:
            details.append(f"{len(only_blurry)} in {blurry_dir} have no partner in {sharp_dir} (e.g. {only_blurry[0]})")
        if only_sharp:
            details.append(f"{len(only_sharp)} in {sharp_dir} have no partner in {blurry_dir} (e.g. {only_sharp[0]})")
        raise ValueError(f"unpaired images for {dataset}: " + "; ".join(details))
    return [EvalPair(prefix + name, blurry[name], sharp[name]) for name in sorted(blurry)]


def _input_target_layout(root: Path, dataset: str) -> list[EvalPair] | None:
    if (root / "input").is_dir() and (root / "target").is_dir():
        return _same_name_pairs(root / "input", root / "target", dataset)
    return None


def check_pair_sizes(pairs: list[EvalPair]) -> None:
    """Raise ``ValueError`` naming the first pair whose blurry and sharp images differ in size.

    Reads only the image headers (PIL opens lazily), so this is fast even for 2,025 HIDE pairs.
    """
    from PIL import Image

    for pair in pairs:
        with Image.open(pair.blurry) as blurry, Image.open(pair.sharp) as sharp:
            if blurry.size != sharp.size:
                raise ValueError(
                    f"size mismatch for {pair.name}: blurry {pair.blurry} is {blurry.size[0]}x{blurry.size[1]}, "
                    f"sharp {pair.sharp} is {sharp.size[0]}x{sharp.size[1]} (width x height)"
                )


def gopro_pairs(root) -> list[EvalPair]:
    """GoPro test pairs (1,111 in the official release); see the module docstring for layouts."""
    root = _require_dir(root, "gopro")
    prepared = _input_target_layout(root, "gopro")
    if prepared is not None:
        return prepared
    scenes_root = root / "test" if (root / "test").is_dir() else root
    scenes = sorted(p for p in scenes_root.iterdir() if p.is_dir() and (p / "blur").is_dir())
    if not scenes:
        raise FileNotFoundError(
            f"no GoPro scene folders with a 'blur' sub-folder under {scenes_root}; expected layout: {LAYOUTS['gopro']}"
        )
    pairs = []
    for scene in scenes:
        if not (scene / "sharp").is_dir():
            raise FileNotFoundError(f"GoPro scene {scene} has 'blur' but no 'sharp' folder")
        pairs += _same_name_pairs(scene / "blur", scene / "sharp", "gopro", prefix=f"{scene.name}/")
    return pairs


def hide_pairs(root) -> list[EvalPair]:
    """HIDE test pairs (2,025 in the official release); see the module docstring for layouts."""
    root = _require_dir(root, "hide")
    prepared = _input_target_layout(root, "hide")
    if prepared is not None:
        return prepared
    test_dir, gt_dir = root / "test", root / "GT"
    if not test_dir.is_dir() or not gt_dir.is_dir():
        raise FileNotFoundError(f"HIDE root {root} lacks 'test' or 'GT'; expected layout: {LAYOUTS['hide']}")
    blurry = {}
    for path in _images_in(test_dir, recursive=True):
        if path.name in blurry:
            raise ValueError(f"HIDE file name {path.name} occurs twice under {test_dir}: {blurry[path.name]}, {path}")
        blurry[path.name] = path
    names = sorted(blurry)
    test_list = root / "test.txt"
    if test_list.is_file():
        # The list's entries may be bare names or paths such as test-close-ups/xxx.png: match on the name.
        listed = [Path(line.split()[0]).name for line in test_list.read_text().splitlines() if line.strip()]
        missing = [n for n in listed if n not in blurry]
        if missing:
            raise FileNotFoundError(f"{len(missing)} files listed in {test_list} are not under {test_dir} (e.g. {missing[0]})")
        names = listed
    if not names:
        raise FileNotFoundError(f"no images under {test_dir}; expected layout: {LAYOUTS['hide']}")
    missing_gt = [n for n in names if not (gt_dir / n).is_file()]
    if missing_gt:
        raise ValueError(f"unpaired images for hide: {len(missing_gt)} have no ground truth in {gt_dir} (e.g. {missing_gt[0]})")
    return [EvalPair(n, blurry[n], gt_dir / n) for n in names]


def realblur_pairs(root, variant: str = "J") -> list[EvalPair]:
    """RealBlur-J or -R test pairs (980 each) from the official test list; see the module docstring."""
    variant = variant.upper()
    if variant not in ("J", "R"):
        raise ValueError(f"RealBlur variant must be 'J' or 'R'; got {variant!r}")
    dataset = f"realblur_{variant.lower()}"
    root = _require_dir(root, dataset)
    list_file = root / f"RealBlur_{variant}_test_list.txt"
    if not list_file.is_file():
        prepared = _input_target_layout(root, dataset)
        if prepared is not None:
            return prepared
        raise FileNotFoundError(f"{list_file} not found; expected layout: {LAYOUTS[dataset]}")
    pairs = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ValueError(f"{list_file} line {number}: expected '<gt path> <blur path>', got {line!r}")
        sharp, blurry = inside_root(root, fields[0], f"{list_file} line {number}"), inside_root(
            root, fields[1], f"{list_file} line {number}")
        for path in (sharp, blurry):
            if not path.is_file():
                raise FileNotFoundError(f"{list_file} line {number} names {path}, which does not exist")
        parts = Path(fields[1]).parts
        # <top>/<scene>/blur/blur_1.png -> "<scene>/blur_1.png"; file names repeat across scenes.
        name = f"{parts[-3]}/{parts[-1]}" if len(parts) >= 3 else fields[1]
        pairs.append(EvalPair(name, blurry, sharp))
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):  # unusual lists: fall back to the full relative path
        pairs = [EvalPair(str(p.blurry.relative_to(root)), p.blurry, p.sharp) for p in pairs]
    if not pairs:
        raise ValueError(f"{list_file} lists no pairs")
    return pairs


def paired_pairs(root) -> list[EvalPair]:
    """Any folder ``<root>/blurry`` + ``<root>/sharp`` with the same file names."""
    root = _require_dir(root, "paired")
    if not (root / "blurry").is_dir() or not (root / "sharp").is_dir():
        raise FileNotFoundError(f"{root} lacks 'blurry' or 'sharp'; expected layout: {LAYOUTS['paired']}")
    return _same_name_pairs(root / "blurry", root / "sharp", "paired")


def load_eval_set(dataset: str, root, check_sizes: bool = True) -> list[EvalPair]:
    """Return the pairs of ``dataset`` (one of :data:`DATASETS`) under ``root``, sizes checked."""
    loaders = {
        "gopro": gopro_pairs,
        "hide": hide_pairs,
        "realblur_j": lambda r: realblur_pairs(r, "J"),
        "realblur_r": lambda r: realblur_pairs(r, "R"),
        "paired": paired_pairs,
    }
    if dataset not in loaders:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    pairs = loaders[dataset](root)
    if check_sizes:
        check_pair_sizes(pairs)
    return pairs
