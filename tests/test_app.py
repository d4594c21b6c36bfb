"""The Gradio demo (app.py) and its Space folder: driven over HTTP with gradio_client, plus its pure functions."""

from __future__ import annotations

import importlib
import json
import pickle
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_server import REPO_ROOT, TEST_MAX_PIXELS, app_env, get_app_server, server_log

pytestmark = pytest.mark.slow

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from fidediff_pipeline.atomic_io import save_image_atomic  # noqa: E402


def _blurry_image(path: Path, size=(64, 48), seed=0) -> Path:
    """A small smooth picture with some structure (stripes and noise), saved as PNG."""
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    image = 0.5 + 0.3 * np.sin(12 * x + 3 * y + np.array([0, 1, 2])) + 0.05 * rng.standard_normal((h, w, 3))
    Image.fromarray((image.clip(0, 1) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def server(tiny_pipeline_folder, tmp_path_factory):
    return get_app_server(tiny_pipeline_folder, tmp_path_factory.mktemp("app_server"))


@pytest.fixture(scope="module")
def client(server):
    return Client(server["url"], verbose=False)


@pytest.fixture(scope="module")
def app_module(tiny_pipeline_folder, tmp_path_factory):
    """app.py imported in this process (the model is loaded, nothing is launched)."""
    env = app_env(tiny_pipeline_folder, tmp_path_factory.mktemp("app_import"))
    patch = pytest.MonkeyPatch()
    for key in ("FIDEDIFF_MODEL", "FIDEDIFF_MAX_PIXELS", "GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE", "GRADIO_ANALYTICS_ENABLED"):
        patch.setenv(key, env[key])
    patch.syspath_prepend(str(REPO_ROOT))
    sys.modules.pop("app", None)
    module = importlib.import_module("app")
    yield module
    sys.modules.pop("app", None)
    patch.undo()


def _predict(client, image_path, mode="auto", timestep=200, upscale_factor=2):
    return client.predict(handle_file(str(image_path)), mode, timestep, upscale_factor, api_name="/deblur")


def test_deblur_returns_same_size_image_kernels_and_blur_level(client, tmp_path):
    image_path = _blurry_image(tmp_path / "blurry photo.png", size=(64, 48))
    (before, after), kernel_picture, text, download = _predict(client, image_path)

    assert Image.open(before).size == (64, 48)
    with Image.open(after) as restored:
        assert restored.size == (64, 48) and restored.format == "PNG"
    # In plain terms: frames at 240 fps, milliseconds, pixels; where the number came from; the setting in words.
    assert re.search(r"Blur: about \d+ frames at 240 fps\*\* \(≈ \d+ ms of motion; blur level t = \d+, "
                     r"estimated from the photo\)", text), text
    assert re.search(r"Across the photo the estimate ranges from \d+ to \d+ frames|The model is unsure", text), text
    assert re.search(r"Blur length: (about \d+ px|under 2 px)", text), text
    assert "More detail (slower) (d = 1)" in text  # tiny VAE factor 2, upsampled 2x
    # The download is the full-resolution result, lossless, named after the upload.
    assert Path(download).name == "blurry photo_fidediff.png"
    assert np.array_equal(np.asarray(Image.open(download)), np.asarray(Image.open(after).convert("RGB")))
    assert Image.open(kernel_picture).size[0] >= 64  # drawn over an enlarged, faded copy of the image


def test_manual_timestep_and_d8(client, tmp_path):
    image_path = _blurry_image(tmp_path / "b.png", size=(40, 32), seed=1)
    (_, after), _, text, _ = _predict(client, image_path, mode="manual", timestep=120, upscale_factor=1)
    assert Image.open(after).size == (40, 32)
    assert "about 7 frames at 240 fps** (≈ 29 ms of motion; blur level t = 120, set by you)" in text, text
    assert "Faster (d = 2)" in text  # tiny VAE factor 2
    assert "The model's own estimate: about " in text


@pytest.mark.parametrize(
    "name, content, title, expected",
    [
        ("notes.png", b"these are notes, not pixels", "Cannot read this image", "not an image file that can be read"),
        ("truncated.png", None, "Cannot read this image", "corrupt or truncated"),
        ("huge.png", "huge", "Image too large", f"accepts up to {TEST_MAX_PIXELS / 1e6:g} MP"),
    ],
)
def test_bad_upload_gives_a_readable_message(client, tmp_path, name, content, title, expected):
    path = tmp_path / name
    if content is None:
        _blurry_image(path)
        path.write_bytes(path.read_bytes()[:200])
    elif content == "huge":
        Image.new("RGB", (1200, 1000), "gray").save(path)  # 1.2 MP > the test server's 1 MP
    else:
        path.write_bytes(content)
    with pytest.raises(AppError) as info:
        _predict(client, path)
    message = str(info.value)
    assert expected in message, message
    assert name in message and "Traceback" not in message and "/tmp/" not in message
    # The title starts the message (Gradio 6.31's page heads every toast "Error") and is the error's title.
    assert message.startswith(f"<strong>{title}.</strong>") and info.value.title == title


def test_server_refuses_files_over_max_file_size(server, tmp_path):
    """``launch(max_file_size=...)`` is enforced by the server before the app sees anything (HTTP 413)."""
    boundary = "fidediffboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + b"\0" * (26 * 1024 * 1024) + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(server["url"] + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 413


def test_gpu_duration_function(app_module):
    """Off Spaces `spaces.GPU` never calls the duration function: test it directly."""
    duration = app_module.gpu_duration
    small, large = Image.new("RGB", (640, 480)), Image.new("RGB", (2000, 2000))
    assert isinstance(duration(small, "auto", 2), int)
    assert app_module.GPU_SECONDS_BASE <= duration(small, "auto", 1) <= duration(small, "auto", 2)
    assert duration(small, 200, 2) < duration(large, 200, 2) <= app_module.GPU_SECONDS_MAX
    assert duration(Image.new("RGB", (8000, 8000)), "auto", 2) == app_module.GPU_SECONDS_MAX
    # The largest accepted image at d = 4 gets more than its estimate's fixed part.
    assert duration(Image.new("RGB", (2000, 2000)), "auto", 2) > 2 * app_module.GPU_SECONDS_BASE


def test_gpu_function_arguments_and_results_pickle(app_module, tmp_path):
    """On ZeroGPU `restore` runs in another process: what goes in and out must pickle."""
    image = Image.open(_blurry_image(tmp_path / "x.png", size=(48, 40)))
    args = (image, "auto", 2)
    result = app_module.restore(*pickle.loads(pickle.dumps(args)))
    result = pickle.loads(pickle.dumps(result))
    assert result["image"].size == (48, 40)
    assert result["source"] == "predicted" and 0 <= result["timestep"] < 1000
    kernels = result["kernels"]
    m = app_module.pipe.kernel_controlnet.config.kernel_size
    assert kernels.shape == (6, 8, m, m)
    np.testing.assert_allclose(kernels.sum(axis=(2, 3)), 1.0, atol=1e-4)


def test_page_states_the_pixel_limit_and_examples_exist(app_module):
    assert f"{TEST_MAX_PIXELS / 1e6:g} megapixels" in app_module.DESCRIPTION
    from fidediff_pipeline.image_processing import load_image

    for path, *_ in app_module.EXAMPLES:
        assert load_image(path).size[0] >= 300
    licences = (REPO_ROOT / "assets" / "README.md").read_text()
    assert "public domain" in licences and "CC0" in licences


def test_requirements_keep_torch_within_zerogpu_and_gradio_matches_the_space():
    from packaging.requirements import Requirement

    requirements = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            requirements[requirement.name.lower()] = requirement.specifier
    torch = requirements["torch"]
    assert "2.8.0" in torch and "2.11.0" in torch and "2.12.0" not in torch
    front_matter = (REPO_ROOT / "space" / "README.md").read_text().split("---")[1]
    sdk_version = re.search(r"sdk_version:\s*(\S+)", front_matter).group(1)
    assert str(requirements["gradio"]) == f"=={sdk_version}"


def test_export_space_folder_runs_on_its_own(tiny_pipeline_folder, tmp_path):
    """The exported folder is a Space: app.py imports the package copied beside it and loads model/."""
    from fidediff_pipeline.cli import main

    out = tmp_path / "space"
    assert main(["export-space", "--out", str(out), "--model", str(tiny_pipeline_folder)]) == 0
    for name in ("app.py", "requirements.txt", "README.md", "space_config.json", "assets/clock_motion.png",
                 "fidediff_pipeline/__init__.py", "model/model_index.json", "model/unet/config.json",
                 "model/README.md", "model/pipeline.py", "model/kernel_controlnet/modeling_kernel_controlnet.py"):
        assert (out / name).is_file(), name
    # model/ carries its remote code (the saved folder has weights and configs only)
    assert "class FideDiffPipeline(" in (out / "model" / "pipeline.py").read_text()
    assert json.loads((out / "model" / "model_index.json").read_text())["kernel_controlnet"][0] == "modeling_kernel_controlnet"
    assert not list(out.rglob("__pycache__")) and not (out / "fidediff_pipeline" / "checkpoints").exists()
    import yaml

    meta = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["suggested_hardware"] == "zero-a10g"
    assert json.loads((out / "space_config.json").read_text())["model"] == "model"

    env = app_env(tiny_pipeline_folder, tmp_path, PYTHONPATH="")
    del env["FIDEDIFF_MODEL"]  # the Space's own space_config.json must be enough
    check = ("import app, fidediff_pipeline; print(json.dumps({'model': app.MODEL, "
             "'package': fidediff_pipeline.__file__, 'kernels': app.HAS_KERNELS}))")
    run = subprocess.run([sys.executable, "-c", "import json; " + check], cwd=out, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(info["model"]) == out / "model" and Path(info["package"]).is_relative_to(out) and info["kernels"]


def test_export_space_with_hub_model_and_errors(tmp_path, capsys):
    from fidediff_pipeline.cli import main

    out = tmp_path / "space"
    assert main(["export-space", "--out", str(out), "--model", "someone/fidediff-sd21"]) == 0
    assert "models:\n- someone/fidediff-sd21" in (out / "README.md").read_text()
    assert not (out / "model").exists()
    assert json.loads((out / "space_config.json").read_text())["model"] == "someone/fidediff-sd21"
    capsys.readouterr()
    assert main(["export-space", "--out", str(out), "--model", "someone/fidediff-sd21"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export-space", "--out", str(tmp_path / "x"), "--model", str(tmp_path / "missing")]) == 2
    assert "no such model folder" in capsys.readouterr().err


def test_server_log_has_no_traceback_for_user_errors(server):
    """Bad uploads are the visitor's mistake, not the server's: they must not fill the log with tracebacks."""
    assert "Traceback" not in server_log()


def test_kernels_sampled_on_crops_match_the_full_map(tiny_pipeline):
    """With crops as large as the image, crop sampling must pick exactly the full map's kernels (index math)."""
    import torch

    from fidediff_pipeline.kernel_visualization import draw_kernel_grid, grid_shape, sample_kernel_map, sample_kernels

    image = Image.fromarray((np.random.default_rng(3).random((36, 52, 3)) * 255).astype(np.uint8))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        full = tiny_pipeline.kernel_controlnet.kernel_estimator(x)[0].numpy()
    grid = grid_shape(36, 52)
    np.testing.assert_allclose(sample_kernels(tiny_pipeline, image, grid, crop=64), sample_kernel_map(full, grid), atol=1e-6)
    picture = draw_kernel_grid(image, sample_kernel_map(full, grid))
    assert max(picture.size) == 720 and picture.mode == "RGB"


def test_missing_model_is_one_readable_line(tmp_path):
    env = app_env(tmp_path / "no-such-model", tmp_path)
    run = subprocess.run([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "no-such-model does not exist" in run.stderr and "FIDEDIFF_MODEL" in run.stderr
    assert "Traceback" not in run.stderr


def test_kernels_sampled_on_small_crops_come_from_the_grid_points():
    """Crops smaller than the image: each sampled kernel is the estimator's output at its own grid point."""
    import types

    import torch

    from fidediff_pipeline.kernel_visualization import grid_centres, sample_kernels

    class PositionEstimator(torch.nn.Module):  # "kernel" = the pixel value of channel 0, on every tap
        def forward(self, x):
            return x[:, :1].expand(-1, 9, -1, -1)

    kcn = types.SimpleNamespace(kernel_estimator=PositionEstimator(), device=torch.device("cpu"), dtype=torch.float32,
                                config=types.SimpleNamespace(kernel_size=3))
    height, width = 90, 130
    ids = np.arange(height * width, dtype=np.float64).reshape(height, width) / (height * width)  # unique per pixel
    image = torch.from_numpy(np.stack([ids] * 3)).float()
    kernels = sample_kernels(types.SimpleNamespace(kernel_controlnet=kcn), image, (6, 8), crop=24)
    ys, xs = grid_centres(height, width, (6, 8))
    expected = (image[0, ys[:, None], xs[None, :]] * 2 - 1).numpy()
    np.testing.assert_allclose(kernels[:, :, 1, 1], expected, atol=1e-6)


def test_export_space_interrupted_keeps_the_previous_export_whole(tiny_pipeline_folder, tmp_path, monkeypatch):
    """Issue 13: the Space folder was written in place; a crash left a half-copied model/ or package."""
    from fidediff_pipeline.cli import main
    from fidediff_pipeline.commands import export_space

    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline_folder, model)
    out = tmp_path / "space"
    assert main(["export-space", "--out", str(out), "--model", str(model)]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (model / "model_index.json").write_text((model / "model_index.json").read_text() + "\n")  # a newer model

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after the model was copied, before anything is in place

    monkeypatch.setattr(export_space, "_folder_size", crash)
    assert main(["export-space", "--out", str(out), "--model", str(model), "--force"]) == 130
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the old export, whole; not a mix of old and new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "space"]  # no staging folder left behind


# ---------------------------------------------------------------------------------------------------- issue 14
def _png16(path: Path, size=(40, 32), seed=0, icc_profile=None) -> np.ndarray:
    """A 16-bit RGB PNG with values between the 8-bit levels; returns its uint16 data."""
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    data = (0.3 + 0.4 * x + 0.02 * np.arange(3) + 0.01 * rng.random((h, w, 3))).clip(0, 1)
    save_image_atomic(data, path, icc_profile=icc_profile)  # a float array: a 16-bit RGB PNG
    return np.rint(data * 65535).astype(np.uint16)


def _png_bit_depth(path) -> int:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return data[24]


def test_view_api_types_names_and_descriptions(client):
    """The API advertises what the server accepts: an int detail factor, "auto"/"manual", described parameters,
    readable output names."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/deblur"]
    params = {p["parameter_name"]: p for p in api["parameters"]}
    assert list(params) == ["image_path", "blur_mode", "timestep", "upscale_factor"]
    assert params["upscale_factor"]["type"]["type"] == "integer"
    assert params["upscale_factor"]["python_type"]["type"] == "int"
    assert "2 (More detail (slower)), 1 (Faster)" in params["upscale_factor"]["python_type"]["description"]
    assert params["blur_mode"]["python_type"]["type"] == "Literal['auto', 'manual']"
    for name, param in params.items():
        assert len(param["python_type"]["description"]) > 20, name
    labels = [r["label"] for r in api["returns"]]
    assert labels == ["Before / after", "Blur kernels", "Blur level", "Deblurred photo (full-resolution PNG)"]
    assert "Deblur a motion-blurred photo" in api["description"]


def test_detail_factor_as_int_or_digit_string(client, tmp_path):
    image_path = _blurry_image(tmp_path / "s.png", size=(24, 16))
    for factor in (1, "1"):
        (_, after), *_ = _predict(client, image_path, upscale_factor=factor)
        assert Image.open(after).size == (24, 16)


@pytest.mark.parametrize("t", [-50, 401, 1000])
def test_out_of_range_t_is_refused_with_its_range(client, tmp_path, t):
    image_path = _blurry_image(tmp_path / "t.png", size=(24, 16))
    with pytest.raises(AppError) as info:
        _predict(client, image_path, mode="manual", timestep=t)
    message = str(info.value)
    assert "Blur level out of range" in message and "between 0 and 400" in message and f"you entered {t}" in message


def test_16bit_png_round_trip_keeps_16_bits_and_the_colour_profile(client, tmp_path):
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # an RGB profile, carried over
    source = _png16(tmp_path / "deep.png", icc_profile=profile)
    (before, after), _, text, download = _predict(client, tmp_path / "deep.png", upscale_factor=1)
    assert "16-bit PNG" in text
    assert _png_bit_depth(download) == 16 and Path(download).name == "deep_fidediff.png"
    with Image.open(download) as result:
        assert result.info.get("icc_profile") == profile
    assert Image.open(after).size == (40, 32)
    cv2 = pytest.importorskip("cv2")
    restored = cv2.imread(download, cv2.IMREAD_UNCHANGED)
    assert restored.dtype == np.uint16 and restored.shape == source.shape
    assert len(np.unique(restored)) > 256 or np.any(restored % 257)  # not an 8-bit result stretched to 16


def test_the_download_keeps_the_uploads_transparency(client, tmp_path):
    rgb = (np.random.default_rng(4).random((16, 24, 3)) * 255).astype(np.uint8)
    alpha = np.tile(np.linspace(0, 255, 24).astype(np.uint8), (16, 1))
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "logo.png")
    *_, download = _predict(client, tmp_path / "logo.png", upscale_factor=1)
    with Image.open(download) as result:
        assert result.mode == "RGBA" and result.size == (24, 16)
        np.testing.assert_array_equal(np.asarray(result)[..., 3], alpha)


def test_16_bit_png_writer_reads_back_exactly(tmp_path):
    cv2 = pytest.importorskip("cv2")
    source = _png16(tmp_path / "x.png", size=(13, 9))
    back = cv2.imread(str(tmp_path / "x.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
    np.testing.assert_array_equal(back, source)
    from fidediff_pipeline.image_processing import read_image

    np.testing.assert_allclose(read_image(tmp_path / "x.png"), source / 65535.0, atol=1e-6)


def test_read_upload_first_frame_of_animations_and_16_bit_float(app_module, tmp_path):
    frames = [Image.new("RGB", (20, 12), colour) for colour in ("red", "blue", "green")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image, notes = app_module.read_upload(str(tmp_path / "anim.gif"))
    assert image.size == (20, 12) and image.getpixel((0, 0))[0] > 200  # the first (red) frame
    assert any("animated GIF with 3 frames" in n and "first frame" in n for n in notes), notes
    frames[0].save(tmp_path / "pages.tiff", save_all=True, append_images=frames[1:])
    _, notes = app_module.read_upload(str(tmp_path / "pages.tiff"))
    assert any("3 frames" in n and "first frame" in n for n in notes), notes
    source = _png16(tmp_path / "deep.png")
    image, notes = app_module.read_upload(str(tmp_path / "deep.png"))
    if importlib.util.find_spec("cv2"):  # the shared reader reads 16-bit colour through OpenCV
        assert image.dtype == np.float32 and np.abs(image - source / 65535.0).max() < 1e-6
    # The upload-time check: the estimate, and the notes shown with it.
    text = app_module.check_upload(str(tmp_path / "anim.gif"), 1)
    assert "Estimated time" in text and "first frame" in text
    phone = Image.new("RGB", (40, 24), "white")
    exif = phone.getexif()
    exif[0x0112] = 8  # stored sideways: shown 24 wide and 40 high
    phone.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    image, _ = app_module.read_upload(str(tmp_path / "phone.jpg"))
    assert image.size == (24, 40)  # upright once (the shared reader turns it; the page does not turn it again)


def test_upload_check_reports_unreadable_files_with_a_title(app_module, tmp_path):
    import gradio as gr

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(gr.Error) as info:
        app_module.check_upload(str(broken), 1)
    assert info.value.title == "Cannot read this image" and "broken.png" in info.value.message
    assert app_module.check_upload(None, 1) == ""


def test_demo_model_detection_from_the_card(app_module, tmp_path):
    from fidediff_pipeline import DEFAULT_MODEL

    detect = app_module.is_demo_model
    assert detect(DEFAULT_MODEL, Path(DEFAULT_MODEL)) or not Path(DEFAULT_MODEL).is_dir()
    cards = {
        "tagged": "---\ntags: [fidediff, tiny]\n---\n# x\n",
        "says": "# A model\nThis is a demo model for the code path.\n",
        "full": "---\ntags: [fidediff, motion-deblurring]\n---\n# FideDiff SD 2.1\nThe paper's model.\n",
    }
    for name, card in cards.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "README.md").write_text(card)
    assert detect("x", tmp_path / "tagged") and detect("x", tmp_path / "says")
    assert not detect("x", tmp_path / "full") and not detect("x", tmp_path) and not detect("user/model", None)
    assert "FIDEDIFF_MODEL=<folder or Hub id> python app.py" in app_module.DEMO_NOTICE
    assert "small CPU demo model" in app_module.DEMO_NOTICE


def test_example_cache_is_keyed_to_the_model(app_module, tiny_pipeline_folder, tmp_path):
    import os
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline_folder, model)
    key = app_module.model_cache_key(model, str(model))
    assert key == app_module.model_cache_key(model, str(model))  # stable
    weights = next(model.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # retrained: one byte of the weights differs
    weights.write_bytes(bytes(data))
    assert app_module.model_cache_key(model, str(model)) != key
    assert app_module.model_cache_key(None, "user/a") != app_module.model_cache_key(None, "user/b")
    folder = Path(os.environ.get("GRADIO_EXAMPLES_CACHE", ""))
    assert folder.name.endswith(app_module.MODEL_KEY) and app_module.examples_cache_folder() == folder


def test_controls_and_examples_use_the_same_words(app_module):
    labels = dict(app_module.DETAIL_CHOICES)
    assert list(labels) == ["More detail (slower)", "Faster"] and labels == {"More detail (slower)": 2, "Faster": 1}
    assert app_module.DEFAULT_UPSCALE in labels.values()
    modes = [value for _, value in app_module.BLUR_MODES]
    for (path, mode, t, factor), label in zip(app_module.EXAMPLES, app_module.EXAMPLE_LABELS):
        assert mode in modes and factor in labels.values()
        assert label.endswith(app_module.DETAIL_LABELS[factor]), label
        assert (f"t = {t}" in label) == (mode == "manual"), label
        assert len(label) <= 55, label  # the page cuts example labels at 60 characters
    # The first examples use the page's default setting; "d = " jargon stays out of the labels.
    assert [e[3] for e in app_module.EXAMPLES[:2]] == [app_module.DEFAULT_UPSCALE] * 2
    assert not any("d = " in label for label in app_module.EXAMPLE_LABELS)


def test_describe_in_plain_terms_with_a_range(app_module):
    m = 9
    kernels = np.zeros((2, 2, m, m), np.float32)
    kernels[..., 4, 1:8] = 1 / 7  # 7 px straight streaks
    result = {"timestep": 200, "source": "predicted", "predicted": 200.0, "kernels": kernels, "seconds": 1.0,
              "grid_timesteps": np.array([[100.0, 120.0], [300.0, 320.0]])}
    text = app_module.describe(result, 1, (64, 48))
    assert "about 11 frames at 240 fps" in text and "≈ 46 ms" in text
    assert "The model is unsure" in text and "Blur length: about 7 px" in text
    result["grid_timesteps"] = np.full((2, 2), 200.0)
    kernels[:] = 0
    kernels[..., 4, 4] = 1
    text = app_module.describe(result, 1, (64, 48))
    assert "a consistent estimate" in text and "Blur length: under 2 px" in text


def test_time_estimate_grows_with_size_and_detail(app_module):
    small = app_module.SPEED.estimate(100, 100, 1)
    assert 0 < small < app_module.SPEED.estimate(1000, 1000, 1) < app_module.SPEED.estimate(1000, 1000, 2)
    text = app_module.estimate_text((640, 480), 1)
    assert text.startswith("**Estimated time:") and "640 x 480" in text and '"Faster"' in text
    assert app_module.tile_count(64, 48, 1) == 1 and app_module.tile_count(2000, 2000, 2) > 1


def test_kernel_picture_has_a_legend():
    from fidediff_pipeline.kernel_visualization import draw_kernel_grid, kernel_lengths

    kernels = np.zeros((6, 8, 9, 9), np.float32)
    kernels[..., 4, 4] = 1
    image = Image.new("RGB", (64, 48), "gray")
    plain, legend = draw_kernel_grid(image, kernels), draw_kernel_grid(image, kernels, legend=True)
    assert legend.width == plain.width and legend.height > plain.height + 30
    assert np.array_equal(np.asarray(legend)[: plain.height], np.asarray(plain))
    line = np.zeros((9, 9), np.float32)
    line[2:7, 4] = 0.2
    assert float(kernel_lengths(line)) == pytest.approx(5.0) and float(kernel_lengths(kernels[0, 0])) == 1.0


def test_queue_limits_for_one_gpu_and_a_cpu(app_module):
    """One deblur at a time; the queue holds what the last in line can wait for (120 s by default) at the speed of
    this hardware, overridable by FIDEDIFF_* variables; the demo uses what `queue_settings` chose."""
    settings = app_module.queue_settings
    # ZeroGPU: the H100 benchmark figures x 2.2 for the slice + 4 s of set-up, for a 1280x720 photo at d = 4.
    zerogpu = app_module.SpeedModel(4.0, {2: 2.1 * 2.2, 1: 0.75 * 2.2}, "ZeroGPU benchmark figures")
    gpu = settings(zerogpu.estimate(1280, 720, 2), env={})
    assert gpu["concurrency"] == 1 and gpu["max_size"] == 14 and gpu["last_in_line_wait_s"] <= 120
    # A 2-core CPU Space: about 19 s per 1280x720 photo with the bundled tiny model.
    cpu = settings(19.1, env={})
    assert cpu["concurrency"] == 1 and cpu["max_size"] == 6 and cpu["last_in_line_wait_s"] <= 120
    assert settings(600.0, env={})["max_size"] == 1 and settings(0.01, env={})["max_size"] == 50  # the bounds
    # Overrides: a longer wait, two at once (several ZeroGPU slices), or the size itself.
    assert settings(19.1, env={"FIDEDIFF_QUEUE_WAIT_S": "300"})["max_size"] == 15
    assert settings(8.0, env={"FIDEDIFF_CONCURRENCY": "2"})["max_size"] == 30
    explicit = settings(19.1, env={"FIDEDIFF_QUEUE_MAX_SIZE": "3"})
    assert explicit["max_size"] == 3 and explicit["source"] == "FIDEDIFF_QUEUE_MAX_SIZE"
    bad = (("FIDEDIFF_CONCURRENCY", "0"), ("FIDEDIFF_QUEUE_MAX_SIZE", "many"), ("FIDEDIFF_QUEUE_WAIT_S", "-1"))
    for name, value in bad:
        with pytest.raises(SystemExit, match=name):
            settings(19.1, env={name: value})
    # The running demo: its queue and the deblur event use these limits; the cheap upload checks are not limited.
    queue, chosen = app_module.demo._queue, app_module.QUEUE
    assert queue.max_size == chosen["max_size"] and queue.default_concurrency_limit == chosen["concurrency"] == 1
    limits = {fn.name: fn.concurrency_limit for fn in app_module.demo.fns.values()}
    assert limits["deblur"] == 1 and limits["check_upload"] is None and limits["update_estimate"] is None
