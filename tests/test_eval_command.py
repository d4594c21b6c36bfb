"""The evaluation loop, test-set loaders, paper comparison, timestep sweep and the ``eval`` command.

A fake restorer with the pipeline's call contract stands in for FideDiffPipeline (dependency injection).
"""

import argparse
import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage import data

from fidediff_pipeline.evaluation import runner as evaluation
from fidediff_pipeline.evaluation.eval_sets import EvalPair, load_eval_set
from fidediff_pipeline.evaluation import evaluate, paper_comparison_table, sweep_timesteps
from fidediff_pipeline.evaluation.metrics import as_uint8_rgb, psnr, ssim_matlab3d, ssim_skimage

SIZE = 40


def _sharp(index):
    y, x = 60 + 37 * index, 150 + 23 * index
    return data.astronaut()[y : y + SIZE, x : x + SIZE].copy()


def _blur(image, sigma=1.5):
    return np.round(gaussian_filter(image.astype(np.float64), sigma=(sigma, sigma, 0))).astype(np.uint8)


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_paired(root, n=3):
    for i in range(n):
        _save(root / "blurry" / f"img{i}.png", _blur(_sharp(i)))
        _save(root / "sharp" / f"img{i}.png", _sharp(i))
    return root


class FakeRestorer:
    """Pipeline stand-in: an unsharp mask whose strength depends on the timestep; counts its calls."""

    def __init__(self, predicted=137):
        self.calls = []
        self.predicted = predicted

    def __call__(self, images, timestep="auto", upscale_factor=2, output_type="np"):
        assert output_type == "np"
        self.calls.append({"n": len(images), "timestep": timestep, "upscale_factor": upscale_factor})
        t = self.predicted if timestep == "auto" else int(timestep)
        outs = []
        for image in images:
            x = np.asarray(image, dtype=np.float32) / 255.0
            soft = gaussian_filter(x, sigma=(1.0, 1.0, 0))
            outs.append(np.clip(x + (t / 200.0) * (x - soft), 0.0, 1.0))
        return SimpleNamespace(
            images=np.stack(outs).astype(np.float32),
            timesteps=[t] * len(images),
            timestep_sources=["predicted" if timestep == "auto" else "given"] * len(images),
        )

    @property
    def images_restored(self):
        return sum(c["n"] for c in self.calls)


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------- evaluation


def test_evaluate_writes_figures_equal_to_direct_computation(tmp_path):
    root = make_paired(tmp_path / "set")
    pairs = load_eval_set("paired", root)
    restorer = FakeRestorer()
    fake_lpips = lambda a, b: float(np.mean(np.abs(a.astype(float) - b.astype(float))) / 255.0)  # noqa: E731
    out = tmp_path / "out"
    summary = evaluate(
        restorer, pairs, out, dataset="paired", batch_size=2, perceptual={"lpips": fake_lpips},
        unavailable={"dists": "no weights here"}, progress=False,
    )

    # the paper's default for a folder of unknown blur is t-prediction
    assert [c["timestep"] for c in restorer.calls] == ["auto", "auto"]
    assert [c["n"] for c in restorer.calls] == [2, 1]

    direct = {}
    for pair in pairs:
        blurry = np.asarray(Image.open(pair.blurry).convert("RGB"))
        sharp = np.asarray(Image.open(pair.sharp).convert("RGB"))
        restored = as_uint8_rgb(FakeRestorer()([blurry]).images[0])
        direct[pair.name] = {
            "psnr": psnr(restored, sharp),
            "ssim_matlab3d": ssim_matlab3d(restored, sharp),
            "ssim_skimage": ssim_skimage(restored, sharp),
            "lpips": fake_lpips(restored, sharp),
            "input_psnr": psnr(blurry, sharp),  # what the restorer gained is measured against this
            "input_ssim_matlab3d": ssim_matlab3d(blurry, sharp),
        }

    rows = _read_csv(out / "per_image.csv")
    assert [r["name"] for r in rows] == ["img0.png", "img1.png", "img2.png"]
    for row in rows:
        for column, value in direct[row["name"]].items():
            assert float(row[column]) == pytest.approx(value, abs=1e-12), column
        assert row["dists"] == ""
        assert row["timestep"] == "137" and row["timestep_source"] == "predicted"

    saved = json.loads((out / "summary.json").read_text())
    means = {c: np.mean([d[c] for d in direct.values()]) for c in ("psnr", "ssim_matlab3d", "lpips")}
    assert saved["metrics"]["PSNR"] == pytest.approx(means["psnr"], abs=1e-10)
    assert saved["metrics"]["SSIM"] == pytest.approx(means["ssim_matlab3d"], abs=1e-10)  # the MATLAB variant
    assert saved["metrics"]["LPIPS"] == pytest.approx(means["lpips"], abs=1e-10)
    assert saved["metrics"]["DISTS"] is None
    assert saved["unavailable"] == {"dists": "no weights here"}
    assert saved["num_images"] == 3 and saved["timesteps"]["sources"] == {"predicted": 3}
    assert "3-D volume" in saved["metric_variants"]["SSIM"]
    assert saved == json.loads(json.dumps(summary))

    input_psnr = np.mean([d["input_psnr"] for d in direct.values()])
    assert saved["blurry_input"]["num_images"] == 3
    assert saved["blurry_input"]["input"]["PSNR"] == pytest.approx(input_psnr, abs=1e-10)
    assert saved["blurry_input"]["restored"]["PSNR"] == pytest.approx(means["psnr"], abs=1e-10)

    markdown = (out / "summary.md").read_text()
    assert f"{means['psnr']:.2f}" in markdown and f"{means['ssim_matlab3d']:.4f}" in markdown
    assert "DISTS: no weights here" in markdown
    assert f"| blurry input (3 images) | {input_psnr:.2f} |" in markdown
    assert f"Gain over the blurry input (same 3 images): PSNR {means['psnr'] - input_psnr:+.2f} dB" in markdown


def test_resuming_a_folder_of_an_older_version_keeps_its_rows_aligned(tmp_path):
    """A per_image.csv written before the blurry-input columns existed: its rows are kept (not restored again),
    new rows line up with the new header, and the input figures cover only the rows that have them."""
    pairs = load_eval_set("paired", make_paired(tmp_path / "set"))
    out = tmp_path / "out"
    evaluate(FakeRestorer(), pairs[:2], out, dataset="paired", progress=False)
    old_columns = [c for c in evaluation.csv_columns("standard") if not c.startswith("input_")]
    rows = _read_csv(out / "per_image.csv")
    with (out / "per_image.csv").open("w", newline="") as handle:  # as the older version wrote it
        writer = csv.DictWriter(handle, fieldnames=old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    restorer = FakeRestorer()
    summary = evaluate(restorer, pairs, out, dataset="paired", progress=False)
    assert restorer.images_restored == 1
    rows = _read_csv(out / "per_image.csv")
    assert [r["input_psnr"] != "" for r in rows] == [False, False, True]
    assert all(float(r["psnr"]) > 20 and r["timestep"] == "137" for r in rows)  # no cell shifted into another
    assert summary["blurry_input"]["num_images"] == 1


def test_evaluate_resumes_without_restoring_finished_images(tmp_path):
    pairs = load_eval_set("paired", make_paired(tmp_path / "set"))
    out = tmp_path / "out"
    first = FakeRestorer()
    evaluate(first, pairs, out, dataset="paired", limit=2, progress=False)
    assert first.images_restored == 2
    assert json.loads((out / "summary.json").read_text())["limit"] == 2

    second = FakeRestorer()
    summary = evaluate(second, pairs, out, dataset="paired", progress=False)
    assert second.images_restored == 1  # only img2
    assert summary["num_images"] == 3

    third = FakeRestorer()
    evaluate(third, pairs, out, dataset="paired", progress=False)
    assert third.calls == []
    assert [r["name"] for r in _read_csv(out / "per_image.csv")] == ["img0.png", "img1.png", "img2.png"]

    # an available metric missing from finished rows makes them run again
    fourth = FakeRestorer()
    evaluate(fourth, pairs, out, dataset="paired", perceptual={"lpips": lambda a, b: 0.5}, progress=False)
    assert fourth.images_restored == 3
    assert {r["lpips"] for r in _read_csv(out / "per_image.csv")} == {"0.5"}


def test_resume_refuses_other_settings(tmp_path):
    pairs = load_eval_set("paired", make_paired(tmp_path / "set", n=1))
    out = tmp_path / "out"
    evaluate(FakeRestorer(), pairs, out, dataset="paired", timestep=200, progress=False)
    with pytest.raises(ValueError, match="other settings.*timestep"):
        evaluate(FakeRestorer(), pairs, out, dataset="paired", timestep=120, progress=False)


def test_save_images_uses_input_names(tmp_path):
    root = tmp_path / "set"
    _save(root / "blurry" / "scene.jpg", _blur(_sharp(0)))
    _save(root / "sharp" / "scene.jpg", _sharp(0))
    pairs = load_eval_set("paired", root)
    restorer = FakeRestorer()
    evaluate(restorer, pairs, tmp_path / "out", dataset="paired", timestep=200, save_images=True, progress=False)
    saved = np.asarray(Image.open(tmp_path / "out" / "images" / "scene.png"))
    expected = as_uint8_rgb(FakeRestorer()([np.asarray(Image.open(pairs[0].blurry))], timestep=200).images[0])
    assert np.array_equal(saved, expected)


def test_missing_lpips_backbone_is_reported_and_other_metrics_run(tmp_path, monkeypatch):
    from fidediff_pipeline.evaluation.metrics import build_perceptual_metrics

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    perceptual, unavailable = build_perceptual_metrics("alex", dists=False, allow_download=False)
    assert perceptual == {}
    pairs = load_eval_set("paired", make_paired(tmp_path / "set", n=1))
    summary = evaluate(
        FakeRestorer(), pairs, tmp_path / "out", dataset="paired", perceptual=perceptual, unavailable=unavailable, progress=False
    )
    assert "alexnet-owt-7be5be79.pth" in summary["unavailable"]["lpips"]
    assert summary["metrics"]["LPIPS"] is None and summary["metrics"]["PSNR"] > 20
    assert "alexnet-owt-7be5be79.pth" in (tmp_path / "out" / "summary.md").read_text()


def test_restorer_output_of_wrong_size_is_a_clear_error(tmp_path):
    pairs = load_eval_set("paired", make_paired(tmp_path / "set", n=1))

    def cropping_restorer(images, **kwargs):
        return SimpleNamespace(images=[np.asarray(images[0])[:-2] / 255.0])

    with pytest.raises(ValueError, match="img0.png.*ground truth"):
        evaluate(cropping_restorer, pairs, tmp_path / "out", dataset="paired", progress=False)


def test_realblur_protocol_headline_is_ecc_aligned(tmp_path):
    pytest.importorskip("cv2")
    root = tmp_path / "RealBlur"
    lines = []
    for i in range(2):
        base = f"RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene{i:03d}"
        _save(root / base / "gt" / "gt_1.png", _sharp(i))
        _save(root / base / "blur" / "blur_1.png", _blur(_sharp(i)))
        lines.append(f"{base}/gt/gt_1.png {base}/blur/blur_1.png")
    (root / "RealBlur_J_test_list.txt").write_text("\n".join(lines) + "\n")
    pairs = load_eval_set("realblur_j", root)
    assert [p.name for p in pairs] == ["scene000/blur_1.png", "scene001/blur_1.png"]

    restorer = FakeRestorer()
    summary = evaluate(restorer, pairs, tmp_path / "out", dataset="realblur_j", progress=False)
    assert restorer.calls[0]["timestep"] == "auto"  # paper: t-prediction on RealBlur
    rows = _read_csv(tmp_path / "out" / "per_image.csv")
    assert summary["metrics"]["PSNR"] == pytest.approx(np.mean([float(r["psnr_realblur"]) for r in rows]))
    assert summary["metrics"]["SSIM"] == pytest.approx(np.mean([float(r["ssim_realblur"]) for r in rows]))
    assert summary["metrics"]["PSNR"] != pytest.approx(summary["means"]["psnr"])
    assert summary["full_test_set_size"] == 980 and not summary["complete_test_set"]


def test_gopro_default_timestep_is_200(tmp_path):
    root = tmp_path / "GOPRO_Large"
    _save(root / "test" / "GOPR0001_11_00" / "blur" / "000001.png", _blur(_sharp(0)))
    _save(root / "test" / "GOPR0001_11_00" / "sharp" / "000001.png", _sharp(0))
    restorer = FakeRestorer()
    summary = evaluate(restorer, load_eval_set("gopro", root), tmp_path / "out", dataset="gopro", progress=False)
    assert restorer.calls[0]["timestep"] == 200
    assert summary["timesteps"]["sources"] == {"given": 1}
    assert "a subset" in (tmp_path / "out" / "summary.md").read_text()


# ---------------------------------------------------------------------------------------- test sets


def test_gopro_layouts(tmp_path):
    for scene in ("GOPR0384_11_00", "GOPR0385_11_01"):
        for i in (1, 2):
            _save(tmp_path / "a" / "test" / scene / "blur" / f"{i:06d}.png", _sharp(0))
            _save(tmp_path / "a" / "test" / scene / "sharp" / f"{i:06d}.png", _sharp(0))
            _save(tmp_path / "a" / "test" / scene / "blur_gamma" / f"{i:06d}.png", _sharp(1))
    pairs = load_eval_set("gopro", tmp_path / "a")
    assert [p.name for p in pairs][:3] == ["GOPR0384_11_00/000001.png", "GOPR0384_11_00/000002.png", "GOPR0385_11_01/000001.png"]
    assert all(p.blurry.parent.name == "blur" and p.sharp.parent.name == "sharp" for p in pairs)
    assert len(load_eval_set("gopro", tmp_path / "a" / "test")) == 4  # <root>/<scene>/blur also works


def test_hide_layout_with_test_list(tmp_path):
    root = tmp_path / "HIDE_dataset"
    for sub, name in (("test-close-ups", "a.png"), ("test-long-shot", "b.png"), ("test-long-shot", "c.png")):
        _save(root / "test" / sub / name, _sharp(0))
        _save(root / "GT" / name, _sharp(0))
    assert [p.name for p in load_eval_set("hide", root)] == ["a.png", "b.png", "c.png"]
    (root / "test.txt").write_text("test-long-shot/c.png\na.png\n")
    assert [p.name for p in load_eval_set("hide", root)] == ["c.png", "a.png"]


def test_restormer_input_target_layout(tmp_path):
    _save(tmp_path / "input" / "x.png", _sharp(0))
    _save(tmp_path / "target" / "x.png", _sharp(0))
    assert load_eval_set("realblur_r", tmp_path) == [EvalPair("x.png", tmp_path / "input" / "x.png", tmp_path / "target" / "x.png")]


def test_loader_errors_name_the_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*blurry.*sharp"):
        load_eval_set("paired", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="RealBlur_J_test_list.txt"):
        load_eval_set("realblur_j", tmp_path)
    with pytest.raises(FileNotFoundError, match="blur"):
        load_eval_set("gopro", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_eval_set("set5", tmp_path)

    root = make_paired(tmp_path / "unpaired", n=2)
    (root / "sharp" / "img1.png").rename(root / "sharp" / "other.png")
    with pytest.raises(ValueError, match=r"unpaired.*img1.png"):
        load_eval_set("paired", root)

    root = make_paired(tmp_path / "sizes", n=1)
    _save(root / "sharp" / "img0.png", np.zeros((SIZE, SIZE + 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"size mismatch for img0.png.*40x40.*42x40"):
        load_eval_set("paired", root)


# ------------------------------------------------------------------------------- paper comparison


def test_paper_comparison_table(tmp_path):
    empty = paper_comparison_table([])
    for figure in ("28.79", "0.9148", "0.0831", "0.0525", "27.28", "0.8775", "0.1068", "0.0647",
                   "28.96", "0.8695", "0.1142", "0.0800", "36.01", "0.9424", "0.0584", "0.0862"):
        assert f"| {figure} |" in empty
    assert "| GoPro | PSNR ↑ | 28.79 |  |  |  |" in empty

    gopro = {
        "dataset": "gopro", "num_images": 1111, "full_test_set_size": 1111, "upscale_factor": 2,
        "metrics": {"PSNR": 27.5, "SSIM": 0.9, "LPIPS": 0.1, "DISTS": None},
        "headline_columns": {"SSIM": "ssim_matlab3d"}, "metric_variants": {}, "timesteps": {"requested": 200},
        "unavailable": {"dists": "missing weights"},
    }
    path = tmp_path / "gopro" / "summary.json"
    path.parent.mkdir()
    path.write_text(json.dumps(gopro))
    paired = dict(gopro, dataset="paired")
    table = paper_comparison_table([paired, str(path.parent)])
    assert "| GoPro | PSNR ↑ | 28.79 | 27.50 | -1.29 | 1111/1111 |" in table
    assert "| GoPro | SSIM ↑ | 0.9148 | 0.9000 | -0.0148 | 1111/1111 |" in table
    assert "| GoPro | DISTS ↓ | 0.0525 |  |  | 1111/1111 |" in table
    assert "| HIDE | PSNR ↑ | 27.28 |  |  |  |" in table
    assert "SSIM = ssim_matlab3d" in table and "not measured: DISTS (unavailable" in table
    assert "paired" not in table

    subset = paper_comparison_table(dict(gopro, num_images=10))
    assert "10/1111" in subset and "a subset" in subset


# ------------------------------------------------------------------------------------------- sweep


def test_sweep_timesteps_writes_table_and_plot(tmp_path):
    pairs = load_eval_set("paired", make_paired(tmp_path / "set", n=2))
    restorer = FakeRestorer()
    sweep = sweep_timesteps(restorer, pairs, tmp_path / "sweep", [200, 80], dataset="paired", progress=False)
    assert [r["timestep"] for r in sweep["rows"]] == [80, 200]
    assert sorted({c["timestep"] for c in restorer.calls}) == [80, 200]
    # a stronger unsharp mask (larger t) gives another PSNR: each row is its own run
    assert sweep["rows"][0]["PSNR"] != pytest.approx(sweep["rows"][1]["PSNR"])
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["rows"][1]["PSNR"] == pytest.approx(sweep["rows"][1]["PSNR"])
    markdown = (tmp_path / "sweep" / "sweep.md").read_text()
    assert f"| 80 | {sweep['rows'][0]['PSNR']:.2f} |" in markdown
    assert (tmp_path / "sweep" / "t080" / "per_image.csv").is_file()
    pytest.importorskip("matplotlib")
    png = tmp_path / "sweep" / "sweep.png"
    assert sweep["plot"] == "sweep.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------- CLI


def _parser():
    from fidediff_pipeline.commands import eval as eval_command

    parser = argparse.ArgumentParser(prog="fidediff")
    eval_command.register(parser.add_subparsers(dest="command"))
    return parser


def test_eval_command_runs_with_injected_pipeline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    restorer = FakeRestorer()
    loaded = {}

    def fake_load(model, device, dtype):
        loaded.update(model=model, device=device, dtype=dtype)
        return restorer

    monkeypatch.setattr(evaluation, "load_pipeline", fake_load)
    root = tmp_path / "GOPRO_Large"
    _save(root / "test" / "GOPR0001_11_00" / "blur" / "000001.png", _blur(_sharp(0)))
    _save(root / "test" / "GOPR0001_11_00" / "sharp" / "000001.png", _sharp(0))
    out = tmp_path / "out"
    args = _parser().parse_args(
        ["eval", "--model", "some/model", "--dataset", "gopro", "--root", str(root), "--output", str(out),
         "--device", "cpu", "--no-dists", "--no-progress", "--upscale-factor", "1", "--save-images"]
    )
    assert args.func(args) == 0
    assert loaded == {"model": "some/model", "device": "cpu", "dtype": "float32"}
    assert restorer.calls == [{"n": 1, "timestep": 200, "upscale_factor": 1}]
    assert (out / "images" / "GOPR0001_11_00" / "000001.png").is_file()
    comparison = (out / "paper_comparison.md").read_text()
    assert "| GoPro | PSNR ↑ | 28.79 |" in comparison and "1/1111" in comparison
    summary = json.loads((out / "summary.json").read_text())
    assert "lpips" in summary["unavailable"] and summary["settings"]["model"] == "some/model"
    assert "LPIPS unavailable" in capsys.readouterr().err


def test_eval_command_argument_errors(tmp_path):
    parser = _parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--dataset", "gopro", "--root", "r", "--output", "o", "--timestep", "1200"])
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--dataset", "div2k", "--root", "r", "--output", "o"])
    args = parser.parse_args(["eval", "--dataset", "gopro", "--root", str(tmp_path / "missing"), "--output", "o"])
    assert args.timestep is None and args.lpips_net == "alex" and args.upscale_factor is None  # the model's own
    with pytest.raises(FileNotFoundError, match="missing"):
        args.func(args)


def test_cli_main_eval_end_to_end_on_tiny_pipeline(tiny_pipeline_folder, tmp_path, monkeypatch, capsys):
    """`fidediff eval` through the real entry point and a saved tiny random FideDiffPipeline."""
    from fidediff_pipeline import cli

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no LPIPS backbone: reported, not fatal
    root = tmp_path / "set"
    for i in range(2):
        _save(root / "blurry" / f"img{i}.png", _blur(_sharp(i))[:32, :24])
        _save(root / "sharp" / f"img{i}.png", _sharp(i)[:32, :24])
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_pipeline_folder), "--dataset", "paired", "--root", str(root),
            "--output", str(out), "--device", "cpu", "--upscale-factor", "1", "--no-dists", "--no-progress",
            "--save-images", "--batch-size", "2"]
    assert cli.main(argv) == 0
    rows = _read_csv(out / "per_image.csv")
    assert [r["name"] for r in rows] == ["img0.png", "img1.png"]
    for row in rows:
        restored = np.asarray(Image.open(out / "images" / row["name"]))
        sharp = np.asarray(Image.open(root / "sharp" / row["name"]))
        assert restored.shape == (32, 24, 3)
        assert float(row["psnr"]) == pytest.approx(psnr(restored, sharp), abs=1e-12)
        assert row["timestep_source"] == "predicted" and 0 <= int(row["timestep"]) <= 999
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timesteps"]["requested"] == "auto" and summary["num_images"] == 2
    assert "alexnet" in summary["unavailable"]["lpips"]

    assert cli.main(argv) == 0  # resumed: nothing left to do, same figures
    assert json.loads((out / "summary.json").read_text())["metrics"] == summary["metrics"]

    capsys.readouterr()
    assert cli.main(["eval", "--dataset", "hide", "--root", str(tmp_path / "nope"), "--output", str(out)]) == 2
    assert "nope" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- nothing is lost (issue 13)
def test_save_images_writes_the_image_before_its_csv_row(tmp_path, monkeypatch):
    pairs = load_eval_set("paired", make_paired(tmp_path / "set"))
    out = tmp_path / "out"
    real_save = evaluation._save_png
    saved = []

    def crash_on_second(image, path):
        if len(saved) == 1:
            raise KeyboardInterrupt  # a kill while the second image is written
        real_save(image, path)
        saved.append(path)

    monkeypatch.setattr(evaluation, "_save_png", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        evaluate(FakeRestorer(), pairs, out, dataset="paired", timestep=200, save_images=True, progress=False)
    assert [r["name"] for r in _read_csv(out / "per_image.csv")] == ["img0.png"]  # no row without its image
    assert sorted(p.name for p in (out / "images").iterdir()) == ["img0.png"]  # no partial image left

    monkeypatch.setattr(evaluation, "_save_png", real_save)
    again = FakeRestorer()
    evaluate(again, pairs, out, dataset="paired", timestep=200, save_images=True, progress=False)
    assert again.images_restored == 2
    assert sorted(p.name for p in (out / "images").iterdir()) == ["img0.png", "img1.png", "img2.png"]


def test_resume_with_save_images_redoes_rows_whose_image_is_missing(tmp_path):
    pairs = load_eval_set("paired", make_paired(tmp_path / "set", n=2))
    out = tmp_path / "out"
    evaluate(FakeRestorer(), pairs, out, dataset="paired", timestep=200, save_images=True, progress=False)
    (out / "images" / "img1.png").unlink()
    again = FakeRestorer()
    evaluate(again, pairs, out, dataset="paired", timestep=200, save_images=True, progress=False)
    assert again.images_restored == 1 and (out / "images" / "img1.png").is_file()


def test_a_csv_row_cut_short_by_a_kill_is_measured_again(tmp_path):
    pairs = load_eval_set("paired", make_paired(tmp_path / "set", n=2))
    out = tmp_path / "out"
    evaluate(FakeRestorer(), pairs, out, dataset="paired", timestep=200, progress=False)
    text = (out / "per_image.csv").read_text()
    (out / "per_image.csv").write_text(text[: text.rindex("img1.png") + 20])  # torn last row
    again = FakeRestorer()
    evaluate(again, pairs, out, dataset="paired", timestep=200, progress=False)
    assert again.images_restored == 1
    assert [r["name"] for r in _read_csv(out / "per_image.csv")] == ["img0.png", "img1.png"]


@pytest.mark.parametrize("row", ["../outside/gt.png scene/blur/blur_1.png", "scene/gt/gt_1.png ../../../../etc/passwd"])
def test_realblur_list_rows_that_escape_the_root_are_refused(tmp_path, row):
    root = tmp_path / "RealBlur"
    _save(root / "scene" / "gt" / "gt_1.png", _sharp(0))
    _save(root / "scene" / "blur" / "blur_1.png", _blur(_sharp(0)))
    _save(tmp_path / "outside" / "gt.png", _sharp(0))
    (root / "RealBlur_J_test_list.txt").write_text("scene/gt/gt_1.png scene/blur/blur_1.png\n" + row + "\n")
    with pytest.raises(ValueError, match="line 2: .* points outside"):
        load_eval_set("realblur_j", root)


def test_restored_image_names_cannot_leave_the_images_folder(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        evaluation.restored_image_path(tmp_path, "../../escape.png")
