import numpy as np
import PIL.Image
import pytest
import torch

from fidediff_pipeline.image_processing import load_image


@pytest.mark.parametrize(
    "timestep, message",
    [(-1, "outside \\[0, 999\\]"), (1000, "outside \\[0, 999\\]"), ("fast", "'auto' or an int"), (True, "'auto' or an int"),
     (12.5, "'auto' or an int"), ([100], "got 1 timesteps for 2 images")],
)
def test_bad_timesteps(tiny_pipeline, timestep, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline([np.zeros((16, 16, 3), np.uint8)] * 2, timestep=timestep)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((16, 16, 5), np.uint8), "5 channels"),
        (np.zeros((16, 16, 3), np.uint16), "16-bit"),
        (np.full((16, 16, 3), 2.0, np.float32), "must be in \\[0, 1\\]"),
        (np.zeros((4, 4, 3), np.uint8), "smallest accepted size"),
        (torch.rand(2, 6, 16, 16), "6 channels"),
        ("not-a-file.png", "no such file"),
        (object(), "expected PIL images"),
        ([], "no image given"),
    ],
)
def test_bad_images(tiny_pipeline, image, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        tiny_pipeline(image)


def test_pixel_limit_guards_against_decompression_bombs(tiny_pipeline):
    with pytest.raises(ValueError, match="over the limit of 1,000"):
        tiny_pipeline(np.zeros((40, 40, 3), np.uint8), max_pixels=1000)


def test_corrupt_and_non_image_files(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(ValueError, match="not an image file"):
        load_image(tmp_path / "notes.png")
    good = tmp_path / "good.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_image(tmp_path / "truncated.png")


def test_16_bit_png_is_refused(tmp_path):
    path = tmp_path / "deep.png"
    PIL.Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(path)
    with pytest.raises(ValueError, match="16-bit"):
        load_image(path)


def test_pixel_limit_on_files_is_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    PIL.Image.new("RGB", (200, 100)).save(path)
    with pytest.raises(ValueError, match="20,000 pixels, over the limit"):
        load_image(path, max_pixels=10_000)


def test_other_bad_arguments(tiny_pipeline):
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="upscale_factor"):
        tiny_pipeline(image, upscale_factor=3)
    with pytest.raises(ValueError, match="output_type"):
        tiny_pipeline(image, output_type="jpeg")
    with pytest.raises(ValueError, match="tiling"):
        tiny_pipeline(image, tiling="yes")
