"""FideDiff one-step motion deblurring: the Gradio demo.

Runs as a Hugging Face Space on ZeroGPU, and unchanged on a laptop (``python app.py``, CPU or CUDA).

Settings (environment variables):
    FIDEDIFF_MODEL       Hub repo id or folder of a saved `FideDiffPipeline`. Default: the ``model`` entry of
                         ``space_config.json`` beside this file (written by ``fidediff export-space``), else the
                         bundled ``fidediff-tiny`` checkpoint, so the demo works offline out of the box.
    FIDEDIFF_MAX_PIXELS  the largest accepted image, in pixels (default 4,000,000: 4 MP).
    FIDEDIFF_DTYPE       float32, float16 or bfloat16 (default: float16 on CUDA, float32 on the CPU).
    FIDEDIFF_CONCURRENCY     deblurs run at once (default 1: one per GPU, or one on a CPU).
    FIDEDIFF_QUEUE_WAIT_S    how long the last one in a full queue should wait before its run starts (default 120);
                             the queue holds as many waiting deblurs as this allows at the measured speed.
    FIDEDIFF_QUEUE_MAX_SIZE  the number of waiting deblurs, set directly (overrides FIDEDIFF_QUEUE_WAIT_S).
"""

# `spaces` first: on ZeroGPU it patches torch's CUDA functions, which must happen before anything initialises CUDA.
import spaces  # isort: skip

import hashlib
import html
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import torch

from fidediff_pipeline import DEFAULT_MODEL
from fidediff_pipeline.atomic_io import save_image_atomic
from fidediff_pipeline.hub.loading import default_model, load_pipeline
from fidediff_pipeline.image_processing import (exif_orientation, read_alpha, read_icc_profile, read_image,
                                                 with_alpha)
from fidediff_pipeline.kernel_visualization import draw_kernel_grid, grid_shape, kernel_lengths, sample_kernels

logger = logging.getLogger("fidediff.app")

APP_DIR = Path(__file__).resolve().parent
ASSETS_DIR = APP_DIR / "assets"
SPACE_CONFIG = APP_DIR / "space_config.json"

MAX_PIXELS = int(os.environ.get("FIDEDIFF_MAX_PIXELS", 4_000_000))
# Room for an uncompressed RGBA file of the largest accepted size (4 bytes a pixel), at least 25 MB; the server
# answers HTTP 413 beyond it, before the app sees the upload.
MAX_FILE_BYTES = max(25_000_000, 4 * MAX_PIXELS)

# ZeroGPU reservation per call: a fixed part (moving the weights to the lent GPU, CUDA set-up, the kernel grid) plus a
# part per megapixel (d = 4 runs the VAE and UNet on 4x the pixels of d = 8). Measured with the sd21-base shapes in
# float16 on an H100 (torch 2.11): about 2.1 s per MP at d = 4 and 0.75 s per MP at d = 8, warm (1.8 s and 0.5 s
# for 1280x720, 8.3 s and 3.1 s for 2000x2000). A ZeroGPU slice (an H200 MIG 3g, 60 SMs against the H100's 132) is
# taken as 2.2x slower, with 30 % margin; a call that overruns its reservation is killed, a shorter one queues sooner.
GPU_SECONDS_BASE = 10
GPU_SECONDS_PER_MEGAPIXEL = {2: 6.0, 1: 2.5}
GPU_SECONDS_MAX = 120
# The same H100 figures without the margin, for the time estimate shown before a run on ZeroGPU (where nothing can
# be measured at start-up: the GPU is lent only inside a call).
ZEROGPU_SLICE_SLOWDOWN = 2.2
H100_SECONDS_PER_MEGAPIXEL = {2: 2.1, 1: 0.75}

AUTO, MANUAL = "auto", "manual"
BLUR_MODES = [("Estimate it from the photo", AUTO), ("Set it myself", MANUAL)]
T_MIN, T_MAX, T_STEP = 0, 400, 10  # the slider: n = 1 (sharp) to 21 averaged 240 fps frames
FRAMES_PER_TIMESTEP = 20  # t = (n - 1) * 20 for n averaged 240 fps frames (paper Sec. 3.4)
FPS = 240
MORE_DETAIL, FASTER = "More detail (slower)", "Faster"
# Where the blur level varies this much over the photo (t, 10th to 90th percentile: 4 frames), the page says the
# model is unsure rather than quoting one number.
UNSURE_T_SPREAD = 80


def user_error(title: str, message: str, **kwargs) -> gr.Error:
    """A `gr.Error` whose title reaches the page.

    Gradio 6.31's front end heads every error toast "Error" (it reads a ``_title`` field the server never sends),
    so the title also starts the message, in bold; API clients get it as ``AppError.title`` too.
    """
    return gr.Error(f"<strong>{html.escape(title)}.</strong> {html.escape(message)}", title=title,
                    print_exception=False, **kwargs)


# ---------------------------------------------------------------------------------------------------- the model
def resolve_model() -> str:
    """``FIDEDIFF_MODEL``, else ``space_config.json``'s ``model`` (a folder relative to this file, or a Hub id),
    else the bundled tiny checkpoint."""
    if not os.environ.get("FIDEDIFF_MODEL") and SPACE_CONFIG.is_file():
        model = json.loads(SPACE_CONFIG.read_text(encoding="utf-8")).get("model")
        if model:
            return str(APP_DIR / model) if (APP_DIR / model).is_dir() else model
    return default_model()


def _looks_like_path(name: str) -> bool:
    """A folder, not a Hub id (``owner/name``): absolute, relative with ``./`` or ``~``, or more than one ``/``."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1


def start_pipeline(model: str, device: str):
    """Load the model once at start-up; exit with one readable line when it cannot be found."""
    # float16 on CUDA halves memory and time; on the CPU half precision is much slower, so float32 there.
    dtype = os.environ.get("FIDEDIFF_DTYPE") or ("float16" if device == "cuda" else "float32")
    # (A missing bundled checkpoint gets loading's own message, which says how to build it.)
    if model != DEFAULT_MODEL and _looks_like_path(model) and not Path(model).expanduser().is_dir():
        raise SystemExit(
            f"FideDiff demo: the model folder {model} does not exist. Set FIDEDIFF_MODEL to a folder made by "
            "FideDiffPipeline.save_pretrained or to a Hub repo id (e.g. FIDEDIFF_MODEL=user/fidediff)."
        )
    try:
        return load_pipeline(model, device=device, dtype=dtype)
    except ValueError as err:
        raise SystemExit(f"FideDiff demo: {err}") from None


def model_folder(model: str) -> Path | None:
    """The folder the model was loaded from: the folder itself, or a Hub id's snapshot in the local cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "model_index.json")
    except Exception:  # not a valid repo id, no cache: no folder
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def is_demo_model(model: str, folder: Path | None) -> bool:
    """The bundled tiny checkpoint, or a model whose card (README.md) has the tag ``tiny`` or says it is a demo."""
    if folder is not None and Path(DEFAULT_MODEL).is_dir() and folder.resolve() == Path(DEFAULT_MODEL).resolve():
        return True
    card_path = folder / "README.md" if folder is not None else None
    if card_path is None or not card_path.is_file():
        return False
    card = card_path.read_text(encoding="utf-8", errors="replace")
    tags: list[str] = []
    if card.startswith("---"):
        try:
            import yaml

            meta = yaml.safe_load(card.split("---", 2)[1]) or {}
            tags = [str(tag).lower() for tag in (meta.get("tags") or [])] if isinstance(meta, dict) else []
        except Exception:  # a broken front matter is no tag
            tags = []
    text = card.lower()
    return "tiny" in tags or "demo" in tags or "demo model" in text or "not the paper's" in text


def model_cache_key(folder: Path | None, model: str) -> str:
    """A short hash that changes whenever the model does: every file's path and size, the whole content of small
    files (configs, model card) and the first and last MiB of large ones (weights: their header and tensors)."""
    digest = hashlib.sha256(model.encode())
    if folder is None:
        return digest.hexdigest()[:16]
    chunk = 1 << 20
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= 2 * chunk:
                digest.update(handle.read())
            else:
                digest.update(handle.read(chunk))
                handle.seek(-chunk, os.SEEK_END)
                digest.update(handle.read(chunk))
    return digest.hexdigest()[:16]


MODEL = resolve_model()
# On ZeroGPU `torch.cuda.is_available()` is True at import (patched by `spaces`) and `.to("cuda")` is recorded there,
# then carried out on the GPU lent to each `@spaces.GPU` call; on a laptop this is the plain device choice.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_ZEROGPU = bool(getattr(getattr(spaces, "config", None), "Config", None) and spaces.config.Config.zero_gpu)
pipe = start_pipeline(MODEL, DEVICE)
MODEL_FOLDER = model_folder(MODEL)
MODEL_NAME = Path(MODEL).name if _looks_like_path(MODEL) or MODEL == DEFAULT_MODEL else MODEL
DEMO_MODEL = is_demo_model(MODEL, MODEL_FOLDER)
MODEL_KEY = model_cache_key(MODEL_FOLDER, MODEL)


def detail_choices(vae_scale_factor: int) -> list[tuple[str, int]]:
    """Radio choices (label, upscale_factor) the model supports: 2 enlarges the photo 2x before the VAE (more
    detail, about 4x the work), 1 works at the photo's size. Both must divide the VAE factor (SD's 8 gives the
    paper's d = 4 and d = 8; the tiny model's 2 gives d = 1 and d = 2)."""
    choices = [(MORE_DETAIL, 2), (FASTER, 1)]
    return [(label, factor) for label, factor in choices if vae_scale_factor % factor == 0]


DETAIL_CHOICES = detail_choices(pipe.vae_scale_factor)
DETAIL_LABELS = {factor: label for label, factor in DETAIL_CHOICES}
# The upscale factor the model was trained with (saved in model_index.json): 2 for SD-based models, 1 for tiny.
DEFAULT_UPSCALE = int(pipe.config.get("default_upscale_factor", 2) or 2)
if DEFAULT_UPSCALE not in DETAIL_LABELS:
    DEFAULT_UPSCALE = DETAIL_CHOICES[-1][1]
HAS_KERNELS = pipe.kernel_controlnet is not None


def d_of(upscale_factor: int) -> int:
    """The paper's d (latent downsampling of the input) for an upscale factor."""
    return pipe.vae_scale_factor // int(upscale_factor)


# ---------------------------------------------------------------------------------------------------- inference
def _size(image) -> tuple[int, int]:
    """(width, height) of a PIL image or an ``HxWx3`` array."""
    return image.size if isinstance(image, PIL.Image.Image) else (image.shape[1], image.shape[0])


def gpu_duration(image, timestep: int | str, upscale_factor: int) -> int:
    """Seconds of GPU that ZeroGPU reserves for one `restore` call; spaces calls it with `restore`'s arguments.

    Example:
        >>> gpu_duration(PIL.Image.new("RGB", (2000, 2000)), "auto", 2)  # the 4 MP limit at d = 4
        34
    """
    width, height = _size(image)
    seconds = GPU_SECONDS_BASE + GPU_SECONDS_PER_MEGAPIXEL[int(upscale_factor)] * width * height / 1e6
    return int(min(GPU_SECONDS_MAX, math.ceil(seconds)))


def tile_count(width: int, height: int, upscale_factor: int) -> int:
    """How many latent tiles (UNet calls) the pipeline uses for an image: its own "auto" tiling rule."""
    tile = pipe._default_tile_size()
    return max(pipe._tiles_per_image(height, width, int(upscale_factor), "auto", tile, pipe._default_tile_overlap(tile)), 1)


# Progress through the tiles: a forward hook on the UNet counts its calls (one per tile) and reports them to the
# gr.Progress of the handler running in this thread. Off ZeroGPU `restore` runs in the handler's thread; on ZeroGPU it
# runs in another process, where no progress callback is set and the hook does nothing.
_progress = threading.local()


def _count_unet_call(module, args, output) -> None:
    report = getattr(_progress, "report", None)
    if report is not None:
        report()


pipe.unet.register_forward_hook(_count_unet_call)


@spaces.GPU(duration=gpu_duration)
def restore(image, timestep: int | str, upscale_factor: int) -> dict:
    """The GPU part: deblur one image and sample its blur kernels.

    ``image`` is a PIL image (8-bit files) or an ``HxWx3`` float32 array in ``[0, 1]`` (16-bit files, restored in
    float: the result is then a float array too). Arguments and result are plain picklable values: on ZeroGPU this
    function runs in another process.
    """
    start = time.perf_counter()
    deep = not isinstance(image, PIL.Image.Image)
    out = pipe(image, timestep=timestep, upscale_factor=upscale_factor, max_pixels=MAX_PIXELS,
               output_type="np" if deep else "pil")
    # Not `return_kernels=True`: the full map is m*m floats per pixel (1.3 GB for 1280x720 at m = 19) and gathering
    # it took 3 s of the 4.8 s of a 1280x720 call on an H100; the estimator on 48 small crops takes a fraction of that.
    kernels = grid_t = None
    if HAS_KERNELS:
        source = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1) if deep else image
        width, height = _size(image)
        kernels, grid_t = sample_kernels(pipe, source, grid_shape(height, width), return_timesteps=True)
    return {
        "image": out.images[0],
        "timestep": int(out.timesteps[0]),
        "source": out.timestep_sources[0],
        "predicted": None if out.predicted_timesteps is None else float(out.predicted_timesteps[0]),
        "kernels": kernels,
        "grid_timesteps": grid_t,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------------- time estimate
class SpeedModel:
    """Seconds for an image: ``base + per_megapixel[factor] * MP``, measured on this hardware.

    At start-up two small runs (after a warm-up) give the fixed part and the cost per pixel; the factor-2 path
    works on 4x the pixels of the factor-1 path. Each real run then corrects the estimate (a running ratio of
    measured to estimated time), so it follows the machine's real load.
    """

    def __init__(self, base: float, per_megapixel: dict[int, float], source: str):
        self.base, self.per_megapixel, self.source = base, dict(per_megapixel), source
        self.correction = 1.0
        self._lock = threading.Lock()

    def estimate(self, width: int, height: int, upscale_factor: int) -> float:
        seconds = self.base + self.per_megapixel[int(upscale_factor)] * width * height / 1e6
        return max(0.1, seconds * self.correction)

    def record(self, width: int, height: int, upscale_factor: int, seconds: float) -> None:
        with self._lock:
            expected = self.estimate(width, height, upscale_factor) / self.correction
            ratio = min(10.0, max(0.1, seconds / max(expected, 1e-3)))
            self.correction = 0.7 * self.correction + 0.3 * ratio

    @classmethod
    def measure(cls) -> "SpeedModel":
        if ON_ZEROGPU:  # no GPU at start-up: the benchmark figures of the sd21-base shapes on a ZeroGPU slice
            per = {f: H100_SECONDS_PER_MEGAPIXEL[f] * ZEROGPU_SLICE_SLOWDOWN for f in DETAIL_LABELS}
            return cls(4.0, per, "ZeroGPU benchmark figures")
        rng = np.random.default_rng(0)
        factor = min(DETAIL_LABELS)  # the cheaper path; the other is scaled by its pixel count

        def seconds(fn, side: int, repeats: int = 2) -> float:
            """The fastest of ``repeats`` runs: on a shared machine another process's burst of work would otherwise
            inflate the slope below (a 1 s pause in the 192 px run reads as 36 s more per megapixel), and with it
            every estimate and the queue's size."""
            image = PIL.Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8))
            best = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                fn(image)
                best = min(best, time.perf_counter() - start)
            return best

        try:
            run = lambda image: pipe(image, timestep="auto", upscale_factor=factor)  # noqa: E731
            seconds(run, 64, repeats=1)  # warm-up (allocations, kernel selection): not used
            small, large = (96, seconds(run, 96)), (192, seconds(run, 192))
            # The kernel grid: a fixed number of crops of at most 96 px, so a constant for photos of that size.
            grid = seconds(lambda image: sample_kernels(pipe, image), 192) if HAS_KERNELS else 0.0
        except Exception:  # never stop the demo for its estimate
            logger.exception("speed measurement failed")
            return cls(2.0, {f: 10.0 * f * f for f in DETAIL_LABELS}, "a rough guess")
        per_mp = max((large[1] - small[1]) / ((large[0] ** 2 - small[0] ** 2) / 1e6), 0.01)
        base = max(small[1] - per_mp * small[0] ** 2 / 1e6, 0.0) + grid
        per = {f: per_mp * (f / factor) ** 2 for f in DETAIL_LABELS}
        return cls(base, per, f"measured on this {'GPU' if DEVICE == 'cuda' else 'CPU'} at start-up")


SPEED = SpeedModel.measure()
logger.info("speed: %.2f s + %s s per MP (%s)", SPEED.base, SPEED.per_megapixel, SPEED.source)


# ---------------------------------------------------------------------------------------------------- the queue
# Why these limits:
# - One deblur at a time (FIDEDIFF_CONCURRENCY, default 1). On ZeroGPU each call gets one GPU slice, and two jobs
#   on one GPU only slow each other down (and double the peak memory: 11.5 GiB for 1280x720 at d = 4). On a CPU
#   Space (2 cores on the free tier) torch already spreads one image over every core, so a second job at once
#   would halve the speed of both and finish neither sooner.
# - A bounded queue: a visitor who would wait longer than they are willing to is told at once that the Space is
#   busy (Gradio's "Queue is full" / "This application is currently busy") instead of waiting for many minutes.
#   The queue holds as many waiting deblurs as the last in line can wait for: max_size = target wait
#   (FIDEDIFF_QUEUE_WAIT_S, default 120 s) x concurrency / seconds per deblur of a 1280x720 photo (a GoPro frame,
#   about 1 MP) at the default detail setting. The seconds come from SPEED: measured at start-up on a CPU or a
#   local GPU (the bundled tiny model on this project's 2-core CPU: 19 s when the machine was quiet, so 6 places;
#   80-240 s while other jobs shared its cores, so 1; see benchmarks/README.md); on ZeroGPU, where nothing can be
#   measured before a call, from the H100 benchmark (0.9 s for the pipeline, 1.8 s with the kernel grid) x 2.2 for
#   the slice + 4 s of set-up: about 8 s, so 14 places. Gradio bounds the queue by count, not by work: larger
#   photos take longer than the reference, so the bound holds for typical photos, not for a queue of 4 MP ones.
# - At most 50 places whatever the speed (uploads wait on the server's disk while queued), at least 1.
QUEUE_REFERENCE_SIZE = (1280, 720)
QUEUE_TARGET_WAIT_S = 120.0
QUEUE_MAX_SIZE_LIMITS = (1, 50)


def _env_number(env, name: str, default, kind=int, minimum=1):
    value = env.get(name)
    if value is None or not str(value).strip():
        return default
    try:
        number = kind(str(value).strip())
    except ValueError:
        number = None
    if number is None or not number >= minimum:  # also refuses NaN
        raise SystemExit(f"FideDiff demo: {name} must be a number >= {minimum}; got {value!r}.")
    return number


def queue_settings(seconds_per_deblur: float, env=None) -> dict:
    """The queue limits for a deblur of ``seconds_per_deblur`` (the reference photo), from the environment.

    Example:
        >>> queue_settings(8.3, env={})["max_size"]  # ZeroGPU: about 8 s per 1280x720 photo
        14
        >>> queue_settings(20.0, env={"FIDEDIFF_QUEUE_WAIT_S": "300"})["max_size"]
        15
        >>> queue_settings(20.0, env={"FIDEDIFF_QUEUE_MAX_SIZE": "4"})["max_size"]
        4
    """
    env = os.environ if env is None else env
    concurrency = _env_number(env, "FIDEDIFF_CONCURRENCY", 1)
    target = _env_number(env, "FIDEDIFF_QUEUE_WAIT_S", QUEUE_TARGET_WAIT_S, kind=float, minimum=0)
    seconds = max(float(seconds_per_deblur), 1e-3)
    explicit = _env_number(env, "FIDEDIFF_QUEUE_MAX_SIZE", None)
    if explicit is not None:
        max_size, source = explicit, "FIDEDIFF_QUEUE_MAX_SIZE"
    else:
        low, high = QUEUE_MAX_SIZE_LIMITS
        max_size = min(high, max(low, math.floor(target * concurrency / seconds)))
        width, height = QUEUE_REFERENCE_SIZE
        source = f"{target:g} s target wait / {seconds:.1f} s per {width}x{height} photo"
    return {
        "concurrency": concurrency,
        "max_size": max_size,
        "target_wait_s": target,
        "seconds_per_deblur": round(seconds, 2),
        "reference_size": list(QUEUE_REFERENCE_SIZE),
        # The last in a full queue has the running deblurs and the other waiting ones ahead of it: its own run
        # starts after this long at most (with reference photos).
        "last_in_line_wait_s": round(math.ceil((concurrency + max_size - 1) / concurrency) * seconds, 1),
        "source": source,
    }


QUEUE = {**queue_settings(SPEED.estimate(*QUEUE_REFERENCE_SIZE, DEFAULT_UPSCALE)), "speed_source": SPEED.source}
# One line in the Space's log (benchmarks/space_load.py reads it): what the queue was set to and why.
print("FideDiff queue settings: " + json.dumps({**QUEUE, "upscale_factor": DEFAULT_UPSCALE, "device": DEVICE,
                                                 "zerogpu": ON_ZEROGPU, "torch_threads": torch.get_num_threads()}),
      flush=True)


def _duration(seconds: float) -> str:
    if seconds < 1.5:
        return "about a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    return f"about {seconds / 60:.0f} min"


def estimate_text(size: tuple[int, int], upscale_factor: int) -> str:
    """What the page says before a run: the expected time for this image and setting (and the other setting)."""
    width, height = size
    seconds = SPEED.estimate(width, height, upscale_factor)
    text = (f"**Estimated time: {_duration(seconds)}** for this {width} x {height} photo with "
            f"\"{DETAIL_LABELS[int(upscale_factor)]}\" ({SPEED.source}).")
    others = [f for f in DETAIL_LABELS if f != int(upscale_factor)]
    if others:
        other = others[0]
        text += f" \"{DETAIL_LABELS[other]}\": {_duration(SPEED.estimate(width, height, other))}."
    if tile_count(width, height, upscale_factor) > 1:
        text += f" Large photo: it is processed in {tile_count(width, height, upscale_factor)} tiles."
    return text


# ---------------------------------------------------------------------------------------------------- reading uploads
def _header(path: str) -> dict | None:
    """Size, frame count and EXIF orientation from the file header (no decoding), or None if Pillow cannot open it."""
    try:
        with PIL.Image.open(path) as image:
            return {"size": image.size, "frames": int(getattr(image, "n_frames", 1) or 1),
                    "format": image.format or "", "orientation": exif_orientation(image)}
    except Exception:  # read_image below gives the readable reason
        return None


def read_upload(path: str) -> tuple[object, list[str]]:
    """Open an uploaded file, or raise a `gr.Error` with a titled message for the page (never a traceback).

    Returns the image and notes for the visitor. 8-bit files come back as an RGB PIL image; 16-bit PNG/TIFF as an
    ``HxWx3`` float32 array in ``[0, 1]`` (all 16 bits, processed in float). Animated GIFs and multi-page TIFFs:
    the first frame, with a note that says so. The EXIF orientation is applied (phone photos; by `read_image`).
    """
    name = Path(path).name
    header = _header(path)
    if header is not None and header["size"][0] * header["size"][1] > MAX_PIXELS:
        width, height = header["size"]
        raise user_error(
            "Image too large",
            f"{name} is {width} x {height} = {width * height / 1e6:.1f} megapixels; this demo accepts up to "
            f"{MAX_PIXELS / 1e6:g} MP. Downscale or crop it, or run FideDiff on your own machine, where the "
            "pipeline tiles images of any size.",
        )
    try:
        data = read_image(path, max_pixels=MAX_PIXELS)
    except (ValueError, OSError) as err:
        # The upload's temporary path means nothing to the visitor: name the file as they know it.
        raise user_error("Cannot read this image", str(err).replace(str(path), name)) from None
    notes = []
    if header is not None and header["frames"] > 1:
        kind = "an animated GIF" if header["format"] == "GIF" else f"a {header['frames']}-page {header['format'] or 'file'}"
        notes.append(f"{name} is {kind} with {header['frames']} frames: FideDiff deblurs the first frame only.")
    if data.dtype == np.uint8:
        return PIL.Image.fromarray(data), notes
    notes.append(f"{name} has more than 8 bits per channel: it is processed in full precision and the download "
                 "is a 16-bit PNG.")
    return data.astype(np.float32), notes


def preview(image) -> PIL.Image.Image:
    """An 8-bit PIL image to show (16-bit data rounded to the nearest 8-bit level)."""
    if isinstance(image, PIL.Image.Image):
        return image
    return PIL.Image.fromarray(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------------- page logic
def _frames(t: float) -> float:
    return t / FRAMES_PER_TIMESTEP + 1


def describe(result: dict, upscale_factor: int, size: tuple[int, int], notes: list[str] = ()) -> str:
    """The blur level in words a photographer reads: frames at 240 fps, milliseconds, pixels, and how sure."""
    t = result["timestep"]
    frames = _frames(t)
    origin = {
        "predicted": "estimated from the photo",
        "given": "set by you",
        "default": "a fixed default (GoPro's test blur): this model cannot estimate it",
    }[result["source"]]
    lines = [f"**Blur: about {frames:.0f} frames at {FPS} fps** (≈ {frames / FPS * 1000:.0f} ms of motion; "
             f"blur level t = {t}, {origin})."]
    grid_t = result.get("grid_timesteps")
    if grid_t is not None and np.size(grid_t) > 1:
        low, high = (float(v) for v in np.percentile(grid_t, [10, 90]))
        spread = (f"Across the photo the estimate ranges from {_frames(low):.0f} to {_frames(high):.0f} frames "
                  f"(t = {low:.0f} to {high:.0f})")
        if high - low > UNSURE_T_SPREAD:
            lines.append(f"**The model is unsure:** {spread[0].lower() + spread[1:]}.")
        else:
            lines.append(f"{spread}: a consistent estimate.")
    if result["source"] == "given" and result["predicted"] is not None:
        estimate = result["predicted"]
        lines.append(f"The model's own estimate: about {_frames(estimate):.0f} frames (t = {estimate:.0f}).")
    if result.get("kernels") is not None:
        lengths = kernel_lengths(result["kernels"]).ravel()
        low, mid, high = (float(v) for v in np.percentile(lengths, [10, 50, 90]))
        if high < 1.5:
            lines.append("**Blur length: under 2 px.** The kernels below are dots: the model sees little or no "
                         "motion in this photo.")
        else:
            lines.append(f"**Blur length: about {mid:.0f} px** ({low:.0f} to {high:.0f} px across the photo), "
                         "from the blur kernels below.")
    lines.extend(notes)
    width, height = size
    lines.append(f"{DETAIL_LABELS[int(upscale_factor)]} (d = {d_of(upscale_factor)}) · {width} x {height} px · "
                 f"{result['seconds']:.1f} s on {DEVICE}")
    return "\n\n".join(lines)


DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "fidediff-demo-downloads"
DOWNLOAD_MAX_AGE_S = 3600


def save_for_download(image, source_path: str) -> str:
    """Write the full-resolution result as a lossless PNG named after the upload (16-bit for a float result, as
    for 16-bit uploads; with the upload's transparency and colour profile); drop files older than an hour."""
    DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in DOWNLOAD_DIR.glob("*/*.png"):
        if now - old.stat().st_mtime > DOWNLOAD_MAX_AGE_S:
            old.unlink(missing_ok=True)
            old.parent.rmdir() if not any(old.parent.iterdir()) else None
    folder = DOWNLOAD_DIR / uuid.uuid4().hex  # one folder per result keeps the visitor's file name
    folder.mkdir()
    path = folder / f"{Path(source_path).stem}_fidediff.png"
    # PIL image -> PNG, float array (a 16-bit upload's result) -> 16-bit PNG; with the upload's alpha and colour profile
    save_image_atomic(with_alpha(image, read_alpha(source_path)), path, icc_profile=read_icc_profile(source_path))
    return str(path)


def check_timestep(value) -> float:
    """The typed blur level, or a titled error with the accepted range (never silently clamped)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (T_MIN <= number <= T_MAX):  # also refuses NaN
        raise user_error("Blur level out of range",
                         f"t must be between {T_MIN} and {T_MAX} ({_frames(T_MIN):.0f} to {_frames(T_MAX):.0f} "
                         f"frames at {FPS} fps); you entered {value}.")
    return number


def check_upload(image_path: str | None, upscale_factor: int):
    """On upload: read the file at once, so a bad one is reported now (not at Deblur), and show the time estimate."""
    if not image_path:
        return ""
    image, notes = read_upload(image_path)
    for note in notes:
        gr.Info(note)
    return "\n\n".join([estimate_text(_size(image), upscale_factor), *notes])


def update_estimate(image_path: str | None, upscale_factor: int):
    """The estimate again for another detail setting (silent when the upload is unreadable: it was reported)."""
    header = _header(image_path) if image_path else None
    if header is None:
        return gr.skip() if image_path else ""
    size = header["size"][::-1] if header["orientation"] in (5, 6, 7, 8) else header["size"]
    return estimate_text(size, upscale_factor)


def deblur(image_path: str | None, blur_mode: str, timestep: float, upscale_factor: int, progress=gr.Progress()):
    """Deblur a motion-blurred photo in one diffusion step; also estimates the blur level and the blur kernels.

    Parameters:
        image_path: the blurry photo (PNG, JPEG, WebP, BMP, TIFF; 16-bit PNG/TIFF kept at 16 bits).
        blur_mode: "auto" to estimate the blur level from the photo, "manual" to use timestep.
        timestep: the blur level t when blur_mode is "manual": 0 to 400, t = 20 (n - 1) for n averaged 240 fps frames (200 = GoPro's test blur).
        upscale_factor: 2 = "More detail (slower)": the photo is enlarged 2x inside the model; 1 = "Faster".
    Returns:
        before/after pair, blur kernel picture with legend, blur level text, full-resolution PNG.
    """
    if not image_path:
        raise user_error("No image", "Upload or paste a blurry image first.")
    if blur_mode not in (AUTO, MANUAL):
        raise user_error("Unknown blur mode", f"blur_mode must be {AUTO!r} or {MANUAL!r}; got {blur_mode!r}.")
    upscale_factor = int(upscale_factor)
    timestep_arg = int(round(check_timestep(timestep))) if blur_mode == MANUAL else "auto"
    image, notes = read_upload(image_path)
    width, height = _size(image)
    tiles = tile_count(width, height, upscale_factor)
    done = [0]

    def report():
        done[0] += 1
        progress((min(done[0], tiles), tiles), desc="Deblurring", unit="tiles")

    progress(0, desc="Deblurring")
    _progress.report = report
    try:
        result = restore(image, timestep_arg, upscale_factor)
    except gr.Error:
        raise
    except ValueError as err:  # the pipeline's own checks: already one readable sentence
        raise user_error("Cannot deblur this image", str(err)) from None
    except Exception as err:
        logger.exception("restore failed")
        raise gr.Error(
            f"<strong>Something went wrong.</strong> Deblurring failed ({type(err).__name__}). Try a smaller image or "
            f"\"{FASTER}\"; if it keeps failing, please report it in the Community tab.",
            title="Something went wrong",
        ) from None
    finally:
        _progress.report = None
    SPEED.record(width, height, upscale_factor, result["seconds"])
    progress(1.0, desc="Drawing the blur kernels")
    shown, restored = preview(image), preview(result["image"])
    kernel_picture = draw_kernel_grid(shown, result["kernels"], legend=True) if result["kernels"] is not None else None
    text = describe(result, upscale_factor, (width, height), notes)
    return (shown, restored), kernel_picture, text, save_for_download(result["image"], image_path)


def pass_unreadable_uploads(component: gr.Image) -> gr.Image:
    """Let `component` hand the raw upload path to the app even when Pillow cannot open the file.

    `gr.Image` opens the file while preprocessing, so a corrupt or non-image upload fails there, before the app
    runs, with a bare "Error" in the page; this way `read_upload` explains instead. (A per-instance wrapper, not a
    subclass: Gradio writes a ``.pyi`` stub next to the file of every component subclass.)
    """
    strict = component.preprocess

    def preprocess(payload):
        try:
            return strict(payload)
        except Exception:
            return None if payload is None or payload.path is None else str(payload.path)

    component.preprocess = preprocess
    return component


def document(component, description: str, **schema):
    """Per-instance API documentation for `view_api` (and a schema override where Gradio's is wrong; a key given
    as None is removed)."""
    api_info = component.api_info

    def documented():
        info = {key: value for key, value in {**api_info(), **schema}.items() if value is not None}
        info["additional_description"] = description
        return info

    component.api_info = documented
    return component


def integer_radio(component: gr.Radio) -> gr.Radio:
    """A Radio over int values that the API describes as ints (Gradio says "string") and that accepts "2" too."""
    strict = component.preprocess

    def preprocess(payload):
        if isinstance(payload, str) and payload.strip().lstrip("-").isdigit():
            payload = int(payload)
        return strict(payload)

    component.preprocess = preprocess
    return component


def range_checked(component: gr.Slider) -> gr.Slider:
    """A Slider whose out-of-range values (typed in its box or sent by a client) get `check_timestep`'s titled
    error with the range, instead of Gradio's generic one."""
    strict = component.preprocess

    def preprocess(payload):
        if payload is not None:
            check_timestep(payload)
        return strict(payload)

    component.preprocess = preprocess
    return component


# ---------------------------------------------------------------------------------------------------- the page
def _example_label(what: str, upscale_factor: int, manual_t: int | None = None) -> str:
    """"what · detail setting", with the radio's own words; short: Gradio cuts example labels at 60 characters."""
    blur = f", t = {manual_t}" if manual_t is not None else ""
    return f"{what}{blur} · {DETAIL_LABELS[upscale_factor]}"


_OTHER_UPSCALE = next((f for f in DETAIL_LABELS if f != DEFAULT_UPSCALE), DEFAULT_UPSCALE)
EXAMPLES = [
    [str(ASSETS_DIR / "clock_motion.png"), AUTO, 200, DEFAULT_UPSCALE],
    [str(ASSETS_DIR / "chelsea_linear13_20deg.png"), AUTO, 200, DEFAULT_UPSCALE],
    [str(ASSETS_DIR / "coffee_linear17_-60deg.png"), MANUAL, 240, _OTHER_UPSCALE],
]
EXAMPLE_LABELS = [
    _example_label("Real camera shake (clock)", DEFAULT_UPSCALE),
    _example_label("Cat, 13 px straight blur", DEFAULT_UPSCALE),
    _example_label("Coffee, 17 px blur", _OTHER_UPSCALE, 240),
]

DEMO_NOTICE = (
    f"**This page runs a small CPU demo model** (`{MODEL_NAME}`, its model card says so): expect at most modest "
    "sharpening on mild blur, not the quality of the FideDiff paper. To run the full model, "
    "start the demo with `FIDEDIFF_MODEL=<folder or Hub id> python app.py`."
)

DESCRIPTION = f"""
# Sharpen a motion-blurred photo

Upload or paste a photo blurred by camera shake or a moving subject. You get a sharper version to compare with
the original (drag the slider) and to download at full size, plus how much the picture moved: in frames of a
240 fps video and in pixels, with a map of the blur over the photo.

Photos up to **{MAX_PIXELS / 1e6:g} megapixels**. Model: `{MODEL_NAME}`.
"""

HOW_IT_WORKS = f"""
FideDiff ("Efficient Diffusion Model for High-Fidelity Image Motion Deblurring") treats motion blur like the noise of a diffusion model:
a photo blurred over *n* frames of a 240 fps video is the sharp photo at diffusion "time" t = 20 (n - 1).
A fine-tuned Stable Diffusion UNet then removes the blur in **one** step instead of many.

- **Blur level:** the model's Kernel ControlNet estimates a blur kernel (the path the picture moved along) at every
  pixel, and from those the blur level t. You can also set t yourself.
- **More detail (slower)** enlarges the photo 2x inside the model before encoding it (the paper's d = 4 for a
  Stable Diffusion VAE; d = {d_of(2) if 2 in DETAIL_LABELS else "-"} for this model); **Faster** works at the photo's own size
  (d = {d_of(1)}), about 4x less work.
- **The blur map** shows a sample of the estimated kernels, each drawn where it was estimated: a dot is no
  blur, a line a straight motion, a curve shaky motion; the scale bar is in pixels of your photo.
- Large photos are processed in overlapping tiles, blended without seams.
"""


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="FideDiff motion deblurring", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(DESCRIPTION)
        if DEMO_MODEL:
            gr.Markdown(DEMO_NOTICE, elem_id="demo-notice")
        with gr.Accordion("How it works", open=False):
            gr.Markdown(HOW_IT_WORKS)
        with gr.Row():
            with gr.Column():
                image = document(pass_unreadable_uploads(gr.Image(
                    label="Blurry photo", type="filepath", image_mode=None, sources=["upload", "clipboard"], height=360,
                )), "the blurry photo: PNG, JPEG, WebP, BMP or TIFF (16-bit PNG/TIFF kept at 16 bits), "
                    f"up to {MAX_PIXELS / 1e6:g} megapixels")
                estimate = gr.Markdown(elem_id="estimate")
                blur_mode = document(gr.Radio(BLUR_MODES, value=AUTO, label="Blur level"),
                                     '"auto": estimated from the photo; "manual": the value of timestep')
                timestep = document(range_checked(gr.Slider(
                    T_MIN, T_MAX, value=200, step=T_STEP, label="Blur level t (when set by you)", interactive=False,
                    info=f"{T_MIN} = sharp; every 20 is one more frame at {FPS} fps (≈ 4 ms); 200 = 11 frames, "
                         "the blur of the GoPro benchmark",
                )), f"blur level t for blur_mode 'manual', {T_MIN} to {T_MAX}: t = 20 (n - 1) for n averaged "
                    f"{FPS} fps frames (200 = GoPro's test blur)")
                detail = document(integer_radio(gr.Radio(
                    DETAIL_CHOICES, value=DEFAULT_UPSCALE, label="Detail",
                    info=f"{MORE_DETAIL}: the photo is enlarged 2x inside the model (about 4x the work)",
                # An int, not gradio_client's Literal['2', '1'] (it quotes every enum value; the server wants ints).
                )), "one of " + ", ".join(f"{f} ({label})" for label, f in DETAIL_CHOICES), type="integer", enum=None)
                run = gr.Button("Deblur", variant="primary")
            with gr.Column():
                slider = gr.ImageSlider(label="Before / after", format="png", type="pil", max_height=480)
                info = gr.Markdown(label="Blur level", elem_id="blur-level")
                kernels = gr.Image(label="Blur kernels", format="png", type="pil", interactive=False)
                download = gr.File(label="Deblurred photo (full-resolution PNG)")
        inputs, outputs = [image, blur_mode, timestep, detail], [slider, kernels, info, download]
        gr.Examples(
            EXAMPLES, inputs=inputs, outputs=outputs, fn=deblur, example_labels=EXAMPLE_LABELS,
            cache_examples=True, cache_mode="lazy",
        )
        # Checks run beside a deblur in progress (they are cheap), not queued behind it.
        image.change(check_upload, [image, detail], estimate, api_visibility="private", concurrency_limit=None,
                     show_progress="hidden")
        detail.change(update_estimate, [image, detail], estimate, api_visibility="private", concurrency_limit=None,
                      show_progress="hidden")
        blur_mode.change(lambda mode: gr.Slider(interactive=mode == MANUAL), blur_mode, timestep, api_visibility="private")
        run.click(deblur, inputs, outputs, api_name="deblur", concurrency_limit=QUEUE["concurrency"])
    # The limits and why: see QUEUE above. (A lazily cached example runs `deblur` once, in its own queue: sharing the
    # deblur queue would make every later visitor of a cached example wait behind the deblurs for a stored result.)
    demo.queue(max_size=QUEUE["max_size"], default_concurrency_limit=QUEUE["concurrency"])
    return demo


def examples_cache_folder() -> Path:
    """Gradio's example cache, one sub-folder per model version: a retrained or replaced model never serves the
    results cached for the old one (Gradio keys the cache by component id only)."""
    base = Path(os.environ.get("GRADIO_EXAMPLES_CACHE") or ".gradio/cached_examples")
    name = f"{MODEL_NAME.replace('/', '--')}-{MODEL_KEY}"
    return base if base.name == name else base / name  # importing the app twice (tests) does not nest it


# Gradio reads this when gr.Examples is built.
os.environ["GRADIO_EXAMPLES_CACHE"] = str(examples_cache_folder())
demo = build_demo()

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_FILE_BYTES, allowed_paths=[str(ASSETS_DIR)])
