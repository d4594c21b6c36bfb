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


def _predict(client, image_path, mode="auto (predicted by the model)", timestep=200, upscale_factor=2):
    return client.predict(handle_file(str(image_path)), mode, timestep, upscale_factor, api_name="/deblur")


def test_deblur_returns_same_size_image_kernels_and_blur_level(client, tmp_path):
    image_path = _blurry_image(tmp_path / "blurry photo.png", size=(64, 48))
    (before, after), kernel_picture, text, download = _predict(client, image_path)

    assert Image.open(before).size == (64, 48)
    with Image.open(after) as restored:
        assert restored.size == (64, 48) and restored.format == "PNG"
    assert re.search(r"Blur level: t = \d+\*\* \(predicted by the model's t-regressor\)", text), text
    assert re.search(r"n = \d+\.\d", text) and "d = 1" in text  # tiny VAE factor 2, upsampled 2x
    # The download is the full-resolution result, lossless, named after the upload.
    assert Path(download).name == "blurry photo_fidediff.png"
    assert np.array_equal(np.asarray(Image.open(download)), np.asarray(Image.open(after).convert("RGB")))
    assert Image.open(kernel_picture).size[0] >= 64  # drawn over an enlarged, faded copy of the image


def test_manual_timestep_and_d8(client, tmp_path):
    image_path = _blurry_image(tmp_path / "b.png", size=(40, 32), seed=1)
    (_, after), _, text, _ = _predict(client, image_path, mode="manual", timestep=120, upscale_factor=1)
    assert Image.open(after).size == (40, 32)
    assert "t = 120** (set by you)" in text and "n = 7.0" in text and "d = 2" in text  # tiny VAE factor 2
    assert "The model's own estimate: t = " in text


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("notes.png", b"these are notes, not pixels", "not an image file that can be read"),
        ("truncated.png", None, "corrupt or truncated"),
        ("huge.png", "huge", f"accepts up to {TEST_MAX_PIXELS / 1e6:g} MP"),
    ],
)
def test_bad_upload_gives_a_readable_message(client, tmp_path, name, content, expected):
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
                 "model/README.md"):
        assert (out / name).is_file(), name
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
