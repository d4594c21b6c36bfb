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


def test_16_bit_png_is_read_at_full_precision_and_never_clipped(tmp_path):
    """Issue 13: a 16-bit grey PNG was refused here and clipped to white by the data loaders."""
    from fidediff_pipeline.data.image_io import load_rgb_uint8
    from fidediff_pipeline.image_processing import read_image

    path = tmp_path / "deep.png"
    values = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    PIL.Image.fromarray(values).save(path)
    full = read_image(path)
    assert full.dtype == np.float32 and full.shape == (16, 16, 3)
    np.testing.assert_allclose(full[..., 1], values / 65535.0, atol=1e-7)
    expected8 = np.rint(values / 65535.0 * 255).astype(np.uint8)
    for image in (np.asarray(load_image(path)), load_rgb_uint8(path)):  # CLI / app and data loaders agree
        assert np.array_equal(image[..., 0], expected8)
        assert (image == 255).mean() < 0.01  # not 99.8 % white


def test_16_bit_colour_png_keeps_its_low_byte_where_opencv_is_installed(tmp_path):
    cv2 = pytest.importorskip("cv2")
    from fidediff_pipeline.image_processing import read_image

    rgb = (np.arange(16 * 16 * 3).reshape(16, 16, 3) * 85).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])
    assert np.array_equal(np.rint(read_image(tmp_path / "c.png") * 65535).astype(np.uint16), rgb)


def test_data_loaders_share_the_pixel_limit_and_the_one_line_errors(tmp_path):
    from fidediff_pipeline.evaluation import runner as evaluation
    from fidediff_pipeline.data.image_io import load_rgb_uint8

    PIL.Image.new("RGB", (200, 100)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="20,000 pixels, over the limit"):
        load_rgb_uint8(tmp_path / "big.png", max_pixels=10_000)
    (tmp_path / "junk.png").write_bytes(b"garbage")
    for loader in (load_rgb_uint8, evaluation.load_rgb):
        with pytest.raises(ValueError, match="junk.png: not an image file"):
            loader(tmp_path / "junk.png")


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


@pytest.mark.parametrize(
    "image, message",
    [
        (torch.zeros(0, 3, 16, 16), "empty batch"),
        (np.zeros((3, 32, 32), np.uint8), "looks channels-first.*transpose\\(1, 2, 0\\)"),
        (torch.rand(32, 32, 3), "looks channels-last.*permute\\(2, 0, 1\\)"),
        (torch.rand(1, 32, 32, 3), "looks channels-last.*permute\\(0, 3, 1, 2\\)"),
    ],
)
def test_layout_mistakes_and_empty_batches_are_named(image, message):
    """Issue 13 (7): these gave 'RuntimeError: min()' or 'the image is 32x3 pixels'."""
    from fidediff_pipeline.image_processing import prepare_images

    with pytest.raises(ValueError, match=message):
        prepare_images(image)


def test_unreadable_file_is_a_permission_error_not_corrupt(tmp_path):
    import os

    path = tmp_path / "locked.png"
    PIL.Image.new("RGB", (16, 16)).save(path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(ValueError, match="permission denied"):
            load_image(path)
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reader_turns_photos_as_pillows_exif_transpose_does(tmp_path, orientation):
    """Every EXIF orientation (phone photos), checked against Pillow's own ``ImageOps.exif_transpose``: the shared
    reader, the PIL reader the CLI used, and a file path given to the pipeline's input conversion."""
    import PIL.ImageOps

    from fidediff_pipeline.image_processing import prepare_images, read_image

    stored = (np.random.default_rng(orientation).random((10, 20, 3)) * 255).astype(np.uint8)  # not symmetric
    image = PIL.Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.png"  # lossless, so the pixels can be compared exactly
    image.save(path, exif=exif.tobytes())
    with PIL.Image.open(path) as opened:
        expected = np.asarray(PIL.ImageOps.exif_transpose(opened).convert("RGB"))
    assert expected.shape[:2] == ((20, 10) if orientation >= 5 else (10, 20))
    np.testing.assert_array_equal(read_image(path), expected)
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected)
    tensor = prepare_images(str(path))[0]
    np.testing.assert_allclose(tensor.permute(1, 2, 0).numpy(), expected / 255.0, atol=1e-6)


def test_reader_turns_16_bit_grey_and_survives_a_broken_exif_block(tmp_path):
    from fidediff_pipeline.image_processing import read_image

    stored = np.arange(8 * 12, dtype=np.uint16).reshape(8, 12) * 600
    image = PIL.Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "deep.png", exif=exif.tobytes())
    data = read_image(tmp_path / "deep.png")
    assert data.dtype == np.float32 and data.shape == (12, 8, 3)
    np.testing.assert_allclose(data[..., 0], np.rot90(stored, -1) / 65535.0, atol=1e-6)
    PIL.Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "odd.jpg", exif=b"Exif\x00\x00garbage")
    assert read_image(tmp_path / "odd.jpg").shape == (10, 20, 3)  # read upright, not refused


def test_deep_pil_images_are_taken_as_their_files_are(tmp_path):
    """A 16-bit grey PIL image (what ``Image.open`` gives for a 16-bit grey PNG) is read at all 16 bits, as the file
    path is; 32-bit integer and out-of-range float images are refused with the reason."""
    from fidediff_pipeline.image_processing import prepare_images

    values = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 331)
    PIL.Image.fromarray(values).save(tmp_path / "grey16.png")
    with PIL.Image.open(tmp_path / "grey16.png") as opened:
        from_pil = prepare_images(opened)[0]
    from_path = prepare_images(str(tmp_path / "grey16.png"))[0]
    assert from_pil.shape == (3, 12, 16)
    np.testing.assert_allclose(from_pil.numpy(), from_path.numpy(), atol=0)
    np.testing.assert_allclose(from_pil[0].numpy(), values / 65535.0, atol=1e-6)
    with pytest.raises(ValueError, match="32-bit integer images are not supported"):
        prepare_images(PIL.Image.fromarray(np.zeros((12, 16), np.int32)))
    with pytest.raises(ValueError, match=r"finite values in \[0, 1\]"):
        prepare_images(PIL.Image.fromarray(np.full((12, 16), 3.0, np.float32)))


def test_a_heic_photo_is_named_with_what_to_do(tmp_path):
    from fidediff_pipeline.image_processing import read_image

    (tmp_path / "IMG_0001.HEIC").write_bytes(b"ftypheic, not readable without a plug-in")
    with pytest.raises(ValueError, match=r"IMG_0001\.HEIC: HEIC files cannot be read here .*convert it to JPEG or PNG"):
        read_image(tmp_path / "IMG_0001.HEIC")


def test_importing_the_package_does_not_import_torch_until_a_model_is_used():
    """`fidediff --help` and every command start without torch and diffusers (4 s on this CPU): the package's
    public names are imported on first use."""
    import subprocess
    import sys

    check = ("import sys, fidediff_pipeline as f; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules; "
             "f.FideDiffPipeline; assert 'diffusers' in sys.modules; print(f.DEFAULT_TIMESTEP, 'FideDiffPipeline' in dir(f))")
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["200", "True"]
