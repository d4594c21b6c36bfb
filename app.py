"""FideDiff one-step motion deblurring: the Gradio demo.

Runs as a Hugging Face Space on ZeroGPU, and unchanged on a laptop (``python app.py``, CPU or CUDA).

Settings (environment variables):
    FIDEDIFF_MODEL       Hub repo id or folder of a saved `FideDiffPipeline`. Default: the ``model`` entry of
                         ``space_config.json`` beside this file (written by ``fidediff export-space``), else the
                         bundled ``fidediff-tiny`` checkpoint, so the demo works offline out of the box.
    FIDEDIFF_MAX_PIXELS  the largest accepted image, in pixels (default 4,000,000: 4 MP).
    FIDEDIFF_DTYPE       float32, float16 or bfloat16 (default: float16 on CUDA, float32 on the CPU).
"""

# `spaces` first: on ZeroGPU it patches torch's CUDA functions, which must happen before anything initialises CUDA.
import spaces  # isort: skip

import json
import logging
import math
import os
import tempfile
import time
import uuid
from pathlib import Path

import gradio as gr
import PIL.Image
import PIL.ImageOps
import torch

from fidediff_pipeline import DEFAULT_MODEL
from fidediff_pipeline.image_processing import load_image
from fidediff_pipeline.kernel_visualization import draw_kernel_grid, grid_shape, sample_kernels
from fidediff_pipeline.loading import default_model, load_pipeline

logger = logging.getLogger("fidediff.app")

APP_DIR = Path(__file__).resolve().parent
ASSETS_DIR = APP_DIR / "assets"
SPACE_CONFIG = APP_DIR / "space_config.json"

MAX_PIXELS = int(os.environ.get("FIDEDIFF_MAX_PIXELS", 4_000_000))
# Room for an uncompressed RGBA file of the largest accepted size (4 bytes a pixel), at least 25 MB; the server
# answers HTTP 413 beyond it, before the app sees the upload.
MAX_FILE_BYTES = max(25_000_000, 4 * MAX_PIXELS)
QUEUE_MAX_SIZE = 16

# ZeroGPU reservation per call: a fixed part (moving the weights to the lent GPU, CUDA set-up, the kernel grid) plus a
# part per megapixel (d = 4 runs the VAE and UNet on 4x the pixels of d = 8). Measured with the sd21-base shapes in
# float16 on an H100 (torch 2.11): about 2.1 s per MP at d = 4 and 0.75 s per MP at d = 8, warm (1.8 s and 0.5 s
# for 1280x720, 8.3 s and 3.1 s for 2000x2000). A ZeroGPU slice (an H200 MIG 3g, 60 SMs against the H100's 132) is
# taken as 2.2x slower, with 30 % margin; a call that overruns its reservation is killed, a shorter one queues sooner.
GPU_SECONDS_BASE = 10
GPU_SECONDS_PER_MEGAPIXEL = {2: 6.0, 1: 2.5}
GPU_SECONDS_MAX = 120

AUTO, MANUAL = "auto (predicted by the model)", "manual"
FRAMES_PER_TIMESTEP = 20  # t = (n - 1) * 20 for n averaged 240 fps frames (paper Sec. 3.4)


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


MODEL = resolve_model()
# On ZeroGPU `torch.cuda.is_available()` is True at import (patched by `spaces`) and `.to("cuda")` is recorded there,
# then carried out on the GPU lent to each `@spaces.GPU` call; on a laptop this is the plain device choice.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pipe = start_pipeline(MODEL, DEVICE)


def detail_choices(vae_scale_factor: int) -> list[tuple[str, int]]:
    """Radio choices (label, upscale_factor). d = VAE factor / upscale: SD's factor-8 VAE gives the paper's d = 4
    (2x upsampling) and d = 8; the tiny model's factor-2 VAE gives d = 1 and d = 2."""
    return [
        (f"d = {vae_scale_factor // 2}: input upsampled 2x, more detail", 2),
        (f"d = {vae_scale_factor}: no upsampling, faster", 1),
    ]


DETAIL_CHOICES = detail_choices(pipe.vae_scale_factor)
# The upscale factor the model was trained with (saved in model_index.json): 2 for SD-based models, 1 for tiny.
DEFAULT_UPSCALE = int(pipe.config.get("default_upscale_factor", 2) or 2)
HAS_KERNELS = pipe.kernel_controlnet is not None


# ---------------------------------------------------------------------------------------------------- inference
def gpu_duration(image: PIL.Image.Image, timestep: int | str, upscale_factor: int) -> int:
    """Seconds of GPU that ZeroGPU reserves for one `restore` call; spaces calls it with `restore`'s arguments.

    Example:
        >>> gpu_duration(PIL.Image.new("RGB", (2000, 2000)), "auto", 2)  # the 4 MP limit at d = 4
        34
    """
    megapixels = image.width * image.height / 1e6
    seconds = GPU_SECONDS_BASE + GPU_SECONDS_PER_MEGAPIXEL[int(upscale_factor)] * megapixels
    return int(min(GPU_SECONDS_MAX, math.ceil(seconds)))


@spaces.GPU(duration=gpu_duration)
def restore(image: PIL.Image.Image, timestep: int | str, upscale_factor: int) -> dict:
    """The GPU part: deblur one image and sample its blur kernels.

    Arguments and result are plain picklable values (PIL images, numbers, numpy arrays): on ZeroGPU this
    function runs in another process.
    """
    start = time.perf_counter()
    out = pipe(image, timestep=timestep, upscale_factor=upscale_factor, max_pixels=MAX_PIXELS)
    # Not `return_kernels=True`: the full map is m*m floats per pixel (1.3 GB for 1280x720 at m = 19) and gathering
    # it took 3 s of the 4.8 s of a 1280x720 call on an H100; the estimator on 48 small crops takes a fraction of that.
    kernels = sample_kernels(pipe, image, grid_shape(image.height, image.width)) if HAS_KERNELS else None
    return {
        "image": out.images[0],
        "timestep": int(out.timesteps[0]),
        "source": out.timestep_sources[0],
        "predicted": None if out.predicted_timesteps is None else float(out.predicted_timesteps[0]),
        "kernels": kernels,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------------- page logic
def _image_size(path: str) -> tuple[int, int] | None:
    """Width and height from the file header (no decoding), or None when Pillow cannot open it."""
    try:
        with PIL.Image.open(path) as image:
            return image.size
    except Exception:  # load_image below gives the readable reason
        return None


def read_upload(path: str) -> PIL.Image.Image:
    """Open an uploaded file as RGB, or raise `gr.Error` with a message for the page (never a traceback)."""
    name = Path(path).name
    size = _image_size(path)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        width, height = size
        raise gr.Error(
            f"{name} is {width} x {height} = {width * height / 1e6:.1f} megapixels; this demo accepts up to "
            f"{MAX_PIXELS / 1e6:g} MP. Downscale or crop it, or run FideDiff on your own machine, where the "
            "pipeline tiles images of any size.",
            title="Image too large", print_exception=False,
        )
    try:
        image = load_image(path, max_pixels=MAX_PIXELS)
    except (ValueError, OSError) as err:
        # The upload's temporary path means nothing to the visitor: name the file as they know it.
        raise gr.Error(str(err).replace(str(path), name), title="Cannot read this image", print_exception=False) from None
    return PIL.ImageOps.exif_transpose(image)  # phone photos: show and restore them the way they were taken


def describe(result: dict, upscale_factor: int, size: tuple[int, int]) -> str:
    """The blur level as text: the t used, where it came from, and the equivalent number of averaged frames."""
    t = result["timestep"]
    frames = t / FRAMES_PER_TIMESTEP + 1
    origin = {
        "predicted": "predicted by the model's t-regressor",
        "given": "set by you",
        "default": "the default, GoPro's blur level: this model has no Kernel ControlNet to estimate it",
    }[result["source"]]
    lines = [f"**Blur level: t = {t}** ({origin}), about **n = {frames:.1f}** averaged 240 fps frames (n = t/20 + 1)."]
    if result["source"] == "given" and result["predicted"] is not None:
        estimate = result["predicted"]
        lines.append(f"The model's own estimate: t = {estimate:.0f} (n = {estimate / FRAMES_PER_TIMESTEP + 1:.1f}).")
    d = pipe.vae_scale_factor // int(upscale_factor)
    lines.append(f"d = {d} · {size[0]} x {size[1]} px · {result['seconds']:.1f} s on {DEVICE}")
    return "\n\n".join(lines)


DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "fidediff-demo-downloads"
DOWNLOAD_MAX_AGE_S = 3600


def save_for_download(image: PIL.Image.Image, source_path: str) -> str:
    """Write the full-resolution result as a lossless PNG named after the upload; drop files older than an hour."""
    DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in DOWNLOAD_DIR.glob("*/*.png"):
        if now - old.stat().st_mtime > DOWNLOAD_MAX_AGE_S:
            old.unlink(missing_ok=True)
            old.parent.rmdir() if not any(old.parent.iterdir()) else None
    folder = DOWNLOAD_DIR / uuid.uuid4().hex  # one folder per result keeps the visitor's file name
    folder.mkdir()
    path = folder / f"{Path(source_path).stem}_fidediff.png"
    image.save(path, format="PNG")
    return str(path)


def deblur(image_path: str | None, blur_mode: str, timestep: float, upscale_factor: int):
    """Gradio handler: upload path and settings -> (before/after pair, kernel picture, blur-level text, PNG file)."""
    if not image_path:
        raise gr.Error("Upload or paste a blurry image first.", title="No image", print_exception=False)
    image = read_upload(image_path)
    timestep_arg = int(timestep) if blur_mode == MANUAL else "auto"
    upscale_factor = int(upscale_factor)
    try:
        result = restore(image, timestep_arg, upscale_factor)
    except gr.Error:
        raise
    except ValueError as err:  # the pipeline's own checks: already one readable sentence
        raise gr.Error(str(err), title="Cannot deblur this image", print_exception=False) from None
    except Exception as err:
        logger.exception("restore failed")
        raise gr.Error(
            f"Deblurring failed ({type(err).__name__}). Try a smaller image or d = {pipe.vae_scale_factor}; if it keeps failing, please "
            "report it in the Community tab.",
            title="Something went wrong",
        ) from None
    kernel_picture = draw_kernel_grid(image, result["kernels"]) if result["kernels"] is not None else None
    text = describe(result, upscale_factor, image.size)
    return (image, result["image"]), kernel_picture, text, save_for_download(result["image"], image_path)


def pass_unreadable_uploads(component: gr.Image) -> gr.Image:
    """Let `component` hand the raw upload path to `deblur` even when Pillow cannot open the file.

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


# ---------------------------------------------------------------------------------------------------- the page
EXAMPLES = [
    [str(ASSETS_DIR / "clock_motion.png"), AUTO, 200, 2],
    [str(ASSETS_DIR / "chelsea_linear13_20deg.png"), AUTO, 200, 2],
    [str(ASSETS_DIR / "coffee_linear17_-60deg.png"), MANUAL, 240, 1],
]
EXAMPLE_LABELS = [
    "Real camera shake (scikit-image's clock)",
    "Synthetic: 13 px straight blur at 20°",
    "Synthetic: 17 px blur at -60°, manual t, d = 8",
]

DESCRIPTION = f"""
# FideDiff: one-step motion deblurring

Upload or paste a motion-blurred photo. FideDiff treats the blur level as a diffusion timestep
(t = 20 (n - 1) for n averaged frames of a 240 fps video) and restores the sharp image in **one** UNet step;
its Kernel ControlNet estimates a blur kernel at every pixel and the blur level t.

Images up to **{MAX_PIXELS / 1e6:g} megapixels** (larger ones are refused; the pipeline tiles large images, so run
it on your own GPU for more). Model: `{Path(MODEL).name if _looks_like_path(MODEL) else MODEL}`.
"""


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="FideDiff motion deblurring", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(DESCRIPTION)
        with gr.Row():
            with gr.Column():
                image = pass_unreadable_uploads(gr.Image(
                    label="Blurry image", type="filepath", image_mode=None, sources=["upload", "clipboard"], height=360,
                ))
                blur_mode = gr.Radio([AUTO, MANUAL], value=AUTO, label="Blur level")
                timestep = gr.Slider(
                    0, 400, value=200, step=10, label="t (manual blur level)", interactive=False,
                    info="t = 20 (n - 1) for n averaged frames; GoPro's test blur is t = 200 (n = 11)",
                )
                detail = gr.Radio(DETAIL_CHOICES, value=DEFAULT_UPSCALE, label="Latent resolution")
                run = gr.Button("Deblur", variant="primary")
            with gr.Column():
                slider = gr.ImageSlider(label="Before / after", format="png", type="pil", max_height=480)
                info = gr.Markdown(elem_id="blur-level")
                kernels = gr.Image(
                    label="Estimated blur kernels (a grid of samples; each scaled to its own peak)",
                    format="png", type="pil", interactive=False,
                )
                download = gr.File(label="Full-resolution result (PNG)")
        inputs, outputs = [image, blur_mode, timestep, detail], [slider, kernels, info, download]
        gr.Examples(
            EXAMPLES, inputs=inputs, outputs=outputs, fn=deblur, example_labels=EXAMPLE_LABELS,
            cache_examples=True, cache_mode="lazy",
        )
        blur_mode.change(lambda mode: gr.Slider(interactive=mode == MANUAL), blur_mode, timestep, api_visibility="private")
        run.click(deblur, inputs, outputs, api_name="deblur")
    # One inference at a time per worker (a GPU slice or a laptop); a bounded queue refuses instead of piling up.
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1)
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_FILE_BYTES, allowed_paths=[str(ASSETS_DIR)])
