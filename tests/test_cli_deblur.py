import numpy as np
import PIL.Image
import pytest

from fidediff_pipeline.cli import main


@pytest.fixture
def image_tree(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "inputs"
    (root / "sub").mkdir(parents=True)
    PIL.Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(root / "a.png")
    PIL.Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(root / "sub" / "b.jpg")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def test_deblur_folder_recursively_skips_bad_files(image_tree, tiny_pipeline_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["deblur", str(image_tree), "-o", str(out), "--model", str(tiny_pipeline_folder), "--timestep", "200",
                 "--upscale-factor", "1", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1  # one file failed
    assert "broken.png" in captured.err and "not an image file" in captured.err
    assert PIL.Image.open(out / "a.png").size == (32, 24)
    assert PIL.Image.open(out / "sub" / "b.png").size == (20, 20)
    assert "wrote 2 image(s)" in captured.out


def test_outputs_never_overwrite_inputs(image_tree, tiny_pipeline_folder):
    before = (image_tree / "a.png").read_bytes()
    main(["deblur", str(image_tree / "a.png"), "-o", str(image_tree), "--model", str(tiny_pipeline_folder),
          "--device", "cpu"])
    assert (image_tree / "a.png").read_bytes() == before
    assert (image_tree / "a_deblurred.png").is_file()


def test_bad_timestep_flag_is_explained(capsys):
    with pytest.raises(SystemExit):
        main(["deblur", "x.png", "-o", "out", "--timestep", "1200"])
    assert "outside [0, 999]" in capsys.readouterr().err


def test_missing_input_is_one_readable_line(tmp_path, capsys):
    code = main(["deblur", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "no such file or folder" in err and "Traceback" not in err


def test_unavailable_hub_model_is_one_readable_line(image_tree, tmp_path, capsys):
    code = main(["deblur", str(image_tree / "a.png"), "-o", str(tmp_path / "o"), "--model", "someone/missing-model"])
    err = capsys.readouterr().err
    assert code == 2 and "someone/missing-model" in err and "Traceback" not in err


def test_16_bit_input_gives_a_16_bit_output_and_phone_photos_stay_upright(tmp_path, tiny_pipeline_folder, capsys):
    from fidediff_pipeline.atomic_io import save_image_atomic

    ramp = np.linspace(0.2, 0.8, 40 * 32 * 3).reshape(32, 40, 3)  # values between the 8-bit levels
    save_image_atomic(ramp, tmp_path / "deep.png")
    phone = PIL.Image.fromarray((np.random.default_rng(1).random((24, 40, 3)) * 255).astype(np.uint8))
    exif = phone.getexif()
    exif[0x0112] = 6  # stored sideways; shown 24 wide and 40 high
    phone.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert _deblur([tmp_path / "deep.png", tmp_path / "phone.jpg"], tmp_path / "out", tiny_pipeline_folder) == 0
    data = (tmp_path / "out" / "deep.png").read_bytes()
    assert data[24:26] == bytes([16, 2])  # IHDR: 16 bits per channel, RGB
    cv2 = pytest.importorskip("cv2")
    restored = cv2.imread(str(tmp_path / "out" / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert restored.shape == (32, 40, 3) and np.any(restored % 257)  # not 8-bit levels stretched to 16
    assert PIL.Image.open(tmp_path / "out" / "phone.png").size == (24, 40)


def test_outputs_keep_the_inputs_colour_profile(tmp_path, tiny_pipeline_folder):
    """A Display P3 / Adobe RGB photo's values are restored as they are: the output must say which colour space
    they are in, or viewers take them for sRGB (8-bit PNG through Pillow, 16-bit PNG through our own writer)."""
    from PIL import ImageCms

    from fidediff_pipeline.atomic_io import save_image_atomic

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # an RGB profile, as P3's
    assert profile[16:20] == b"RGB "  # (the header's data colour space)
    picture = (np.random.default_rng(2).random((24, 32, 3)) * 255).astype(np.uint8)
    PIL.Image.fromarray(picture).save(tmp_path / "wide.jpg", icc_profile=profile)
    save_image_atomic(picture / 255.0 * 0.9 + 0.05, tmp_path / "deep.png", icc_profile=profile)
    PIL.Image.fromarray(picture).save(tmp_path / "plain.png")
    # a CMYK photo's profile describes CMYK values, not the RGB output: not carried (PNG allows RGB ones only)
    cmyk_profile = profile[:16] + b"CMYK" + profile[20:]
    PIL.Image.fromarray(picture).convert("CMYK").save(tmp_path / "print.jpg", icc_profile=cmyk_profile)
    assert _deblur([tmp_path / "wide.jpg", tmp_path / "deep.png", tmp_path / "plain.png", tmp_path / "print.jpg"],
                   tmp_path / "out", tiny_pipeline_folder) == 0
    for name in ("wide", "deep"):
        with PIL.Image.open(tmp_path / "out" / f"{name}.png") as output:
            assert output.info.get("icc_profile") == profile, name
            assert output.size == (32, 24)
    for name in ("plain", "print"):
        with PIL.Image.open(tmp_path / "out" / f"{name}.png") as output:
            assert "icc_profile" not in output.info, name


# ---------------------------------------------------------------------------------------- nothing is lost (issue 13)
def _deblur(inputs, out, model, *extra):
    return main(["deblur", *map(str, inputs), "-o", str(out), "--model", str(model), "--timestep", "200",
                 "--upscale-factor", "1", "--device", "cpu", *extra])


def _png(path, seed=0, size=(16, 16)):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_output_folder_equal_to_an_input_folder_is_refused_before_any_work(tmp_path, capsys):
    s = tmp_path / "s"
    _png(s / "a.png"), _png(s / "a_deblurred.png", seed=1)
    before = {p.name: p.read_bytes() for p in s.iterdir()}
    code = main(["deblur", str(s), "-o", str(s), "--model", "someone/missing-model"])
    err = capsys.readouterr().err
    assert code == 2 and "is the input folder" in err and "missing-model" not in err
    assert {p.name: p.read_bytes() for p in s.iterdir()} == before


def test_output_folder_inside_the_inputs_is_never_read_again(tmp_path, tiny_pipeline_folder, capsys):
    root = tmp_path / "in"
    _png(root / "a.png")
    out = root / "out"
    assert _deblur([root], out, tiny_pipeline_folder) == 0
    assert _deblur([root], out, tiny_pipeline_folder, "--no-skip-existing") == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a.png"]
    assert "wrote 1 image(s)" in capsys.readouterr().out


def test_same_stem_different_extension_gets_distinct_outputs(tmp_path, tiny_pipeline_folder, capsys):
    root = tmp_path / "in"
    _png(root / "a.png")
    PIL.Image.open(_png(root / "x.png", seed=1)).save(root / "a.jpg")
    (root / "x.png").unlink()
    out = tmp_path / "out"
    assert _deblur([root], out, tiny_pipeline_folder) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_jpg.png", "a_png.png"]
    assert "wrote 2 image(s)" in capsys.readouterr().out


def test_unresolvable_collision_is_an_error_before_the_model_loads(tmp_path, capsys):
    a, b = _png(tmp_path / "x" / "a.png"), _png(tmp_path / "y" / "a.png", seed=1)
    code = main(["deblur", str(a), str(b), "-o", str(tmp_path / "out"), "--model", "someone/missing-model"])
    err = capsys.readouterr().err
    assert code == 2 and "would both be written to" in err and "missing-model" not in err
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_fails_before_the_model_loads(tmp_path, capsys):
    a = _png(tmp_path / "a.png")
    (tmp_path / "out").write_text("not a folder")
    code = main(["deblur", str(a), "-o", str(tmp_path / "out"), "--model", "someone/missing-model"])
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and "missing-model" not in err and "Traceback" not in err


@pytest.mark.parametrize("command", [
    ["demo", "--model", "someone/missing-model", "-o"],
    ["export-space", "--model", "someone/missing-model", "--out"],
    ["eval", "--dataset", "paired", "--root", "{set}", "--model", "someone/missing-model", "--output"],
    ["data", "synth", "--images", "{set}/sharp", "--out"],
])
def test_an_output_folder_that_is_a_file_is_one_line_before_any_work(tmp_path, capsys, command):
    for side in ("blurry", "sharp"):
        _png(tmp_path / "set" / side / "a.png")
    (tmp_path / "out").write_text("not a folder")
    code = main([arg.format(set=tmp_path / "set") for arg in command] + [str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and "must be a folder" in err and "Errno" not in err
    assert (tmp_path / "out").read_text() == "not a folder"


def test_skip_existing_keeps_finished_outputs_and_redoes_truncated_ones(tmp_path, tiny_pipeline_folder, capsys):
    root = tmp_path / "in"
    _png(root / "a.png"), _png(root / "b.png", seed=1)
    out = tmp_path / "out"
    assert _deblur([root], out, tiny_pipeline_folder) == 0
    finished = (out / "a.png").read_bytes()
    (out / "b.png").write_bytes((out / "b.png").read_bytes()[:40])  # what a kill left before issue 13
    (out / "b.png.partial-123").write_bytes(b"junk")  # a temporary file of a killed run: never counts
    capsys.readouterr()
    assert _deblur([root], out, tiny_pipeline_folder) == 0
    text = capsys.readouterr().out
    assert "kept 1 finished output(s)" in text and "wrote 1 image(s)" in text
    assert (out / "a.png").read_bytes() == finished
    PIL.Image.open(out / "b.png").load()
    # Everything finished: nothing to do, the model is not even loaded.
    assert main(["deblur", str(root), "-o", str(out), "--model", "someone/missing-model"]) == 0
    assert "nothing to do" in capsys.readouterr().out


KILL_DURING_SAVE = """
import os, signal, sys
import PIL.Image
from fidediff_pipeline.cli import main
real_save = PIL.Image.Image.save
count = [0]
def save(self, fp, *a, **k):
    count[0] += 1
    if count[0] == 2:  # the second output: write a few bytes, then die as with SIGKILL
        with open(fp, "wb") as handle:
            handle.write(b"\\x89PNG\\r\\n")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(self, fp, *a, **k)
PIL.Image.Image.save = save
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_a_save_leaves_no_partial_output_and_a_rerun_resumes(tmp_path, tiny_pipeline_folder, capsys):
    import os
    import subprocess
    import sys

    root = tmp_path / "in"
    for i in range(3):
        _png(root / f"{i}.png", seed=i)
    out = tmp_path / "out"
    args = ["deblur", str(root), "-o", str(out), "--model", str(tiny_pipeline_folder), "--timestep", "200",
            "--upscale-factor", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *args], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".png") == ["0.png"]  # never a partial 1.png
    first = (out / "0.png").read_bytes()
    assert main(args) == 0
    assert "kept 1 finished output(s)" in capsys.readouterr().out
    assert (out / "0.png").read_bytes() == first
    for i in range(3):
        PIL.Image.open(out / f"{i}.png").load()


@pytest.mark.parametrize("flag, value", [("--tile-size", "0"), ("--max-pixels", "-5"), ("--tile-size", "big")])
def test_out_of_range_flags_are_refused_before_any_work(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit):
        main(["deblur", str(tmp_path), "-o", str(tmp_path / "out"), flag, value])
    err = capsys.readouterr().err
    assert flag in err and ("must be at least" in err or "expected an integer" in err)
    assert not (tmp_path / "out").exists()


def test_photos_in_formats_not_read_are_named_not_left_out_in_silence(tmp_path, tiny_pipeline_folder, capsys):
    _png(tmp_path / "photos" / "a.png")
    (tmp_path / "photos" / "IMG_0001.HEIC").write_bytes(b"an iPhone photo")
    (tmp_path / "photos" / "notes.txt").write_text("not a photo: not worth a note")
    assert _deblur([tmp_path / "photos"], tmp_path / "out", tiny_pipeline_folder) == 0
    err = capsys.readouterr().err
    assert "left out 1 file(s) in formats not read here (.heic)" in err and "IMG_0001.HEIC" in err
    assert "notes.txt" not in err
    (tmp_path / "photos" / "a.png").unlink()
    assert main(["deblur", str(tmp_path / "photos"), "-o", str(tmp_path / "out2")]) == 2
    assert "no images to read: found only 1 file(s) in formats not read here" in capsys.readouterr().err


def test_outputs_keep_the_inputs_transparency_turned_with_it(tmp_path, tiny_pipeline_folder):
    """A logo on a transparent background stays on one: the alpha channel is carried over unchanged (8-bit and
    16-bit outputs), turned by the EXIF orientation as the colours are."""
    from fidediff_pipeline.atomic_io import save_image_atomic

    rng = np.random.default_rng(3)
    rgb = (rng.random((24, 40, 3)) * 255).astype(np.uint8)
    alpha = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (24, 1))  # see-through on the left
    PIL.Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "logo.png")
    phone = PIL.Image.fromarray(np.dstack([rgb, alpha]))
    exif = phone.getexif()
    exif[0x0112] = 6
    phone.save(tmp_path / "turned.png", exif=exif.tobytes())
    save_image_atomic(np.dstack([rgb, alpha]).astype(np.float32) / 255.0, tmp_path / "deep.png")
    assert _deblur([tmp_path / "logo.png", tmp_path / "turned.png", tmp_path / "deep.png"], tmp_path / "out",
                   tiny_pipeline_folder) == 0
    for name, expected in (("logo", alpha), ("turned", np.rot90(alpha, -1)), ("deep", alpha)):
        with PIL.Image.open(tmp_path / "out" / f"{name}.png") as output:
            assert output.mode == "RGBA", name
            np.testing.assert_array_equal(np.asarray(output)[..., 3], expected, err_msg=name)
    assert (tmp_path / "out" / "deep.png").read_bytes()[24:26] == bytes([16, 6])  # 16-bit RGBA


@pytest.mark.parametrize("device, message", [
    ("tpu", "unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"),
    ("mps", "no Apple GPU (MPS) is available here"),
    ("cuda:7", "CUDA GPU"),
])
def test_a_device_this_machine_lacks_is_one_line(tmp_path, capsys, device, message):
    import torch

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    code = main(["deblur", str(_png(tmp_path / "a.png")), "-o", str(tmp_path / "out"), "--device", device])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and "RuntimeError" not in err


def test_a_data_build_that_fails_on_its_inputs_leaves_no_empty_output_folder(tmp_path, capsys):
    code = main(["data", "gopro", "--frames-root", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert code == 2 and "frames root does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
