"""``fidediff deblur INPUT... -o OUT``: deblur files and folders (recursively)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import PIL.features

from . import prepare_output_dir

# AVIF where this Pillow reads it (from 11.2, with its wheels' libavif); else it is named in the scan's note.
_AVIF = {".avif"} if PIL.features.check("avif") else set()
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} | _AVIF
# Photo formats a folder may hold that are not read here (phones' HEIC, cameras' raw files, animations): a folder
# scan names them instead of leaving them out in silence.
UNREAD_PHOTO_EXTENSIONS = {".heic", ".heif", ".jxl", ".gif", ".jp2", ".psd", ".dng", ".cr2", ".cr3", ".nef", ".arw",
                           ".raf", ".orf", ".rw2", ".avif"} - _AVIF


def parse_timestep(value: str):
    if value == "auto":
        return "auto"
    try:
        t = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"timestep must be 'auto' or an int in [0, 999]; got {value!r}") from None
    if not 0 <= t <= 999:
        raise argparse.ArgumentTypeError(f"timestep {t} is outside [0, 999]")
    return t


def int_at_least(minimum: int):
    """An argparse type: an int >= ``minimum``, checked before any work."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer; got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}; got {number}")
        return number

    return parse


TIMESTEP_HELP = "'auto' (predicted blur level) or an int in [0, 999]; t = (frames - 1) * 20"


def add_model_arguments(parser: argparse.ArgumentParser, timestep_default="auto", timestep_help: str = TIMESTEP_HELP) -> None:
    """Flags shared by every command that runs the pipeline."""
    parser.add_argument("--model", default=None, help="folder or Hub id (default: $FIDEDIFF_MODEL, else the bundled tiny model)")
    parser.add_argument("--device", default="auto",
                        help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weights' dtype")
    parser.add_argument("--timestep", type=parse_timestep, default=timestep_default, help=timestep_help)
    parser.add_argument("--upscale-factor", type=int, default=None, choices=[1, 2],
                        help="2: upsample 2x before the VAE (paper's d=4 with SD's VAE); 1: no upsampling (d=8), "
                             "faster; default: the model's own (2 for SD-based models, 1 for the tiny one)")
    parser.add_argument("--tile-size", type=int_at_least(8), default=None, help="latent tile size for large images (default: automatic)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("deblur", help="deblur image files and folders",
                                   description="Deblur image files and folders (recursively); outputs are PNG (16-bit for "
                                               "16-bit inputs) with the input's transparency and colour profile, "
                                               "turned as its EXIF says (phone photos). "
                                               "Under `accelerate launch` with several processes (GPUs), the files are "
                                               "split across them and the main process prints one combined report.")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder (created; inputs are never overwritten, and an output folder inside an "
                             "input folder is left out of the inputs)")
    add_model_arguments(parser)
    parser.add_argument("--max-pixels", type=int_at_least(1), default=None, help="refuse larger images (default: 40 million)")
    parser.add_argument("--skip-existing", action=argparse.BooleanOptionalAction, default=True,
                        help="keep outputs that already exist (resume a folder after an interruption; default: on); "
                             "--no-skip-existing deblurs them again")
    parser.set_defaults(func=run)


def _is_within(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies under it (both resolved)."""
    return path == folder or folder in path.parents


def collect_inputs(inputs: list[str], output_dir: Path | None = None) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """``(file, path relative to the output folder)`` for every image under the inputs, in a stable order, and the
    files of the input folders in photo formats a folder scan does not read (:data:`UNREAD_PHOTO_EXTENSIONS`;
    a file named on the command line is tried whatever its name), from one walk of each folder.

    Files under ``output_dir`` are left out when it lies inside an input folder: the outputs of an earlier
    run are never deblurred again. Leftover temporary files of an interrupted run never match (no image suffix).
    """
    out = output_dir.resolve() if output_dir is not None else None
    found: list[tuple[Path, Path]] = []
    unread: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if out is not None and path.resolve() == out:
                raise ValueError(
                    f"-o {output_dir} is the input folder {item}: outputs would be mixed with the inputs "
                    f"and read again by the next run; use another folder, e.g. {Path(item) / 'deblurred'} "
                    "(an output folder inside the inputs is left out of them)")
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                suffix = file.suffix.lower()
                if suffix in UNREAD_PHOTO_EXTENSIONS:
                    unread.append(file)
                if suffix not in IMAGE_EXTENSIONS or (out is not None and _is_within(file.resolve(), out)):
                    continue  # not an image read here, or an earlier run's output
                if file.resolve() not in seen:
                    seen.add(file.resolve())
                    found.append((file, file.relative_to(path).with_suffix(".png")))
        elif path.is_file():
            if path.resolve() not in seen:
                seen.add(path.resolve())
                found.append((path, Path(path.name).with_suffix(".png")))
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return found, unread


def unread_photos_note(unread: list[Path], lead: str = "left out") -> str:
    """One line naming the photos a folder scan left out (``lead``: what comes before their count), and what to do."""
    kinds = sorted({file.suffix.lower() for file in unread})
    names = ", ".join(str(file) for file in unread[:3]) + (" ..." if len(unread) > 3 else "")
    return (f"{lead} {len(unread)} file(s) in formats not read here ({', '.join(kinds)}): {names}; convert them to "
            f"JPEG, PNG or TIFF to deblur them (read: {', '.join(sorted(IMAGE_EXTENSIONS))})")


def output_path_for(relative: Path, output_dir: Path, input_files: set[Path]) -> Path:
    target = output_dir / relative
    if target.resolve() in input_files:  # never overwrite an input, e.g. when -o is the input file's folder
        target = target.with_name(f"{target.stem}_deblurred.png")
    return target


def plan_outputs(files: list[tuple[Path, Path]], output_dir: Path) -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs with distinct outputs that are never an input, decided before any work.

    Inputs that share a name up to the extension (``a.png`` and ``a.jpg``) keep their extension in the
    output name (``a_png.png``, ``a_jpg.png``). A clash that remains (e.g. ``x/a.png`` and ``y/a.png`` given
    as two files) is a ``ValueError`` naming both inputs.
    """
    input_files = {f.resolve() for f, _ in files}
    by_relative: dict[Path, list[Path]] = {}
    for file, relative in files:
        by_relative.setdefault(relative, []).append(file)
    planned: list[tuple[Path, Path]] = []
    owner: dict[Path, Path] = {}
    for file, relative in files:
        if len(by_relative[relative]) > 1 and len({f.suffix.lower() for f in by_relative[relative]}) > 1:
            relative = relative.with_name(f"{relative.stem}_{file.suffix.lower().lstrip('.')}.png")
        target = output_path_for(relative, output_dir, input_files)
        key = target.resolve()
        if key in input_files:
            raise ValueError(f"the output of {file} would be {target}, which is an input; use another -o folder")
        if key in owner:
            raise ValueError(f"{owner[key]} and {file} would both be written to {target}; "
                             "rename one, or deblur them into separate -o folders")
        owner[key] = file
        planned.append((file, target))
    return planned


def is_finished_output(path: Path) -> bool:
    """An output that exists completely: a PNG whose chunks are all there with good checksums (an old truncated
    file is redone). ``verify`` reads the file without decompressing it, so resuming a big folder stays fast."""
    import PIL.Image

    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with PIL.Image.open(path) as image:
            image.verify()
        return True
    except Exception:  # noqa: BLE001 - any decoding failure means "not finished"
        return False


def plan_work(args) -> tuple[Path, list[tuple[Path, Path]], list[tuple[Path, Path]], list[Path]]:
    """``(output folder, every (input, output) pair, the pairs still to do, the photos left out)``, decided before
    any work.

    Every process of a distributed run computes the same lists: the inputs are sorted and the outputs planned
    the same way, and it runs before any process writes an output.
    """
    output_dir = Path(args.output)
    prepare_output_dir(output_dir, "-o", create=False)
    files, unread = collect_inputs(args.inputs, output_dir)
    if not files:
        raise ValueError(unread_photos_note(unread, lead="no images to read: found only") if unread
                         else f"no images found in {', '.join(args.inputs)} "
                              f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    planned = plan_outputs(files, output_dir)
    todo = [(f, t) for f, t in planned if not (args.skip_existing and is_finished_output(t))]
    return output_dir, planned, todo, unread


def deblur_files(pipe, todo: list[tuple[Path, Path]], args, max_pixels: int, live: bool = True,
                 progress: bool = True) -> list[dict]:
    """Deblur each ``(input, output)`` pair and write its PNG; return one result dict per pair, in order.

    A result is ``{"input", "output", "timestep", "source"}``, or ``{"input", "output", "error"}`` for an image
    the pipeline refused (too large, unreadable). With ``live`` each line of the report is printed as its image
    finishes; a distributed run prints the combined report at the end instead (:func:`print_report`).
    """
    import numpy as np
    from tqdm import tqdm

    from ..atomic_io import save_image_atomic
    from ..image_processing import read_image_file, with_alpha

    results = []
    for file, target in tqdm(todo, desc="deblurring", unit="img", disable=len(todo) < 2 or not progress):
        try:
            source = read_image_file(file, max_pixels=max_pixels)  # uint8, or float32 for a 16-bit file (all 16 bits)
            deep = source.pixels.dtype != np.uint8
            # a 16-bit file's result stays in float and is written as a 16-bit PNG, not rounded to 8 bits
            result = pipe(source.pixels, timestep=args.timestep, upscale_factor=args.upscale_factor,
                          tile_size=args.tile_size, max_pixels=max_pixels, output_type="np" if deep else "pil")
        except ValueError as err:
            results.append({"input": str(file), "output": str(target), "error": str(err)})
            if live:
                print(report_line(results[-1]), file=sys.stderr)
            continue
        # Temporary name + rename: a kill leaves no partial PNG under the final name for a rerun to keep.
        # the input's transparency and colour profile, so the output shows as the input did
        save_image_atomic(with_alpha(result.images[0], source.alpha), target, icc_profile=source.icc_profile)
        results.append({"input": str(file), "output": str(target), "timestep": result.timesteps[0],
                        "source": result.timestep_sources[0]})
        if live:
            tqdm.write(report_line(results[-1]))
    return results


def report_line(result: dict) -> str:
    """The report's line for one image: ``in -> out (t=..., source)``, or ``skipped in: reason``."""
    if "error" in result:
        return f"skipped {result['input']}: {result['error']}"
    return f"{result['input']} -> {result['output']} (t={result['timestep']}, {result['source']})"


def print_report(results: list[dict]) -> None:
    """Print the per-image lines of a distributed run, in input order: results to stdout, skipped ones to stderr."""
    for result in results:
        print(report_line(result), file=sys.stderr if "error" in result else sys.stdout)


def deblur_share(state, todo: list[tuple[Path, Path]], args, max_pixels: int) -> list[dict]:
    """Distributed run: deblur this process's share of ``todo`` on its own device; return every process's results.

    An idle process (more processes than images) loads no model but still joins the gathering.
    """
    from ..distributed import gather_lists, own_share, process_device, share_of
    from ..hub.loading import load_pipeline

    device = process_device(state, args.device)
    share = share_of(state, todo)
    # The main process loads first: a Hub model is downloaded once, then read from the cache by the others.
    with state.main_process_first():
        pipe = load_pipeline(args.model, device, args.dtype) if share else None
    results = []
    if share:
        pipe.set_progress_bar_config(disable=True)
        with own_share(state):
            results = deblur_files(pipe, share, args, max_pixels, live=False, progress=state.is_main_process)
    return gather_lists(results)


def run(args) -> int:
    from ..distributed import process_state
    from ..image_processing import DEFAULT_MAX_PIXELS
    from ..hub.loading import load_pipeline

    # None for a plain run; under `accelerate launch` with several processes, accelerate's PartialState.
    state = process_state()
    is_main = state is None or state.is_main_process
    output_dir, planned, todo, unread = plan_work(args)
    if state is not None:
        state.wait_for_everyone()  # every process has listed the finished outputs before any of them writes one
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    if unread and is_main:
        print(f"note: {unread_photos_note(unread)}", file=sys.stderr)
    kept = len(planned) - len(todo)
    if kept and is_main:
        print(f"kept {kept} finished output(s) in {output_dir} (--no-skip-existing redoes them)")
    if not todo:
        if is_main:
            print(f"nothing to do: all {len(planned)} output(s) exist in {output_dir}")
        return 0
    prepare_output_dir(output_dir, "-o")
    if state is None:
        pipe = load_pipeline(args.model, args.device, args.dtype)
        pipe.set_progress_bar_config(disable=True)
        results = deblur_files(pipe, todo, args, max_pixels)
    else:
        if is_main:
            print(f"deblurring {len(todo)} image(s) on {state.num_processes} processes")
        results = deblur_share(state, todo, args, max_pixels)
        if is_main:
            print_report(results)
    failures = sum(1 for result in results if "error" in result)
    if is_main:
        print(f"wrote {len(results) - failures} image(s) to {output_dir}" + (f"; kept {kept} existing" if kept else "")
              + (f"; skipped {failures} (see above)" if failures else ""))
    return 1 if failures else 0
