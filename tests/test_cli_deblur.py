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
