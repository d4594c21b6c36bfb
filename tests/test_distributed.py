"""``fidediff deblur`` and ``fidediff eval`` over several processes with Accelerate (issue 15).

The launches are real: ``accelerate launch --multi_gpu --num_processes 2`` with ``ACCELERATE_USE_CPU=1`` starts two
CPU processes joined by a gloo process group (accelerate 1.15's ``--cpu --num_processes 2`` would start one
process unless MPI is installed, see ``train/README.md``). The one-process reference runs in this process with one
thread, as the launched processes do (``OMP_NUM_THREADS=1``), so that outputs can be compared bit for bit.
"""

import contextlib
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage import data

from fidediff_pipeline import DEFAULT_MODEL, distributed
from fidediff_pipeline.evaluation import runner as evaluation
from fidediff_pipeline.cli import main
from fidediff_pipeline.evaluation.eval_sets import load_eval_set

REPO = Path(__file__).resolve().parents[1]
SIZE = 56
NUM_IMAGES = 5


def _crop(index: int) -> np.ndarray:
    """A small real photo crop (scikit-image's astronaut), different for each index."""
    y, x = 40 + 50 * index, 100 + 30 * index
    return data.astronaut()[y : y + SIZE, x : x + SIZE].copy()


def _blur(image: np.ndarray) -> np.ndarray:
    return np.round(gaussian_filter(image.astype(np.float64), sigma=(1.5, 1.5, 0))).astype(np.uint8)


@pytest.fixture
def photo_folder(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(NUM_IMAGES):
        folder = root / "sub" if i == 3 else root  # a nested file too: outputs keep the folder structure
        PIL.Image.fromarray(_blur(_crop(i))).save(folder / f"img{i}.png")
    return root


@pytest.fixture
def paired_folder(tmp_path):
    root = tmp_path / "pairs"
    for i in range(NUM_IMAGES):
        for kind, image in (("blurry", _blur(_crop(i))), ("sharp", _crop(i))):
            (root / kind).mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(image).save(root / kind / f"p{i}.png")
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: list[str], tmp_path: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """``accelerate launch`` the fidediff command line on ``processes`` CPU processes (gloo)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "fidediff_pipeline.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "1",
           # No user-wide `accelerate config` file changes how the test launches.
           "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if result.returncode != 0:  # the whole output, in the failure report's captured stdout (assert messages get cut)
        print(f"exit code {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")
    assert result.returncode == 0, "the launched command failed; its output is under 'Captured stdout call'"
    return result


@contextlib.contextmanager
def one_thread():
    """Run in this process with one intra-op thread, like the launched processes (bit-identical outputs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _report_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if " -> " in line]


DEBLUR_FLAGS = ["--model", DEFAULT_MODEL, "--device", "cpu"]


@pytest.mark.slow
def test_two_processes_deblur_like_one_and_resume(photo_folder, tmp_path, capsys):
    single, double = tmp_path / "single", tmp_path / "double"
    with one_thread():
        assert main(["deblur", str(photo_folder), "-o", str(single), *DEBLUR_FLAGS]) == 0
    single_report = _report_lines(capsys.readouterr().out)

    result = launch(["deblur", str(photo_folder), "-o", str(double), *DEBLUR_FLAGS], tmp_path)
    assert "deblurring 5 image(s) on 2 processes" in result.stdout
    # Same files, bit for bit: each process wrote its own share.
    expected = _outputs(single)
    assert sorted(expected) == ["img0.png", "img1.png", "img2.png", "img4.png", "sub/img3.png"]
    assert _outputs(double) == expected
    # One combined report by the main process: every file once, in input order, as one process reports it.
    report = _report_lines(result.stdout)
    assert report == [line.replace(str(single), str(double)) for line in single_report]
    assert f"wrote {NUM_IMAGES} image(s) to {double}" in result.stdout

    # Resumable: a truncated output (a kill before issue 13's atomic writes) is redone; finished ones are kept.
    # One image to do on two processes: process 1 is idle and still joins the report.
    (double / "img2.png").write_bytes(expected["img2.png"][:60])
    kept_stat = {name: (double / name).stat().st_mtime_ns for name in expected if name != "img2.png"}
    result = launch(["deblur", str(photo_folder), "-o", str(double), *DEBLUR_FLAGS], tmp_path)
    assert "kept 4 finished output(s)" in result.stdout and "deblurring 1 image(s) on 2 processes" in result.stdout
    assert len(_report_lines(result.stdout)) == 1 and "img2.png" in _report_lines(result.stdout)[0]
    assert _outputs(double) == expected
    assert {name: (double / name).stat().st_mtime_ns for name in kept_stat} == kept_stat
    # Everything finished: a rerun skips every file and loads no model.
    assert main(["deblur", str(photo_folder), "-o", str(double), "--model", "someone/missing-model"]) == 0
    assert f"nothing to do: all {NUM_IMAGES} output(s) exist" in capsys.readouterr().out


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_two_processes_eval_rows_equal_one_process(paired_folder, tmp_path, capsys):
    flags = ["--dataset", "paired", "--root", str(paired_folder), "--model", DEFAULT_MODEL, "--device", "cpu",
             "--no-dists", "--no-progress", "--save-images"]
    single, double = tmp_path / "single", tmp_path / "double"
    with one_thread():
        assert main(["eval", *flags, "--output", str(single)]) == 0
    capsys.readouterr()

    result = launch(["eval", *flags, "--output", str(double)], tmp_path)
    assert "evaluating on 2 processes" in result.stderr
    assert result.stdout.count("# FideDiff evaluation") == 1  # one report, by the main process
    # Same rows in the same order (times aside), no per-process shard left behind.
    rows = _csv_rows(double / evaluation.CSV_NAME)
    assert [row["name"] for row in rows] == [f"p{i}.png" for i in range(NUM_IMAGES)]
    assert rows == _csv_rows(single / evaluation.CSV_NAME)
    assert not list(double.glob(evaluation.SHARD_PATTERN))
    # Same aggregate numbers.
    a, b = (json.loads((folder / evaluation.SUMMARY_JSON).read_text()) for folder in (single, double))
    for key in ("metrics", "num_images", "timesteps", "unavailable"):
        assert a[key] == b[key], key
    assert {k: v for k, v in a["means"].items() if k != "seconds"} == {k: v for k, v in b["means"].items() if k != "seconds"}
    assert _outputs(single / evaluation.IMAGES_DIR) == _outputs(double / evaluation.IMAGES_DIR)


# ----------------------------------------------------------------------------------------------------------------
# Cheap checks without a launch
# ----------------------------------------------------------------------------------------------------------------


def test_a_plain_run_is_one_process_and_never_builds_a_process_group(monkeypatch):
    for name in distributed.WORLD_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_processes() == 1 and distributed.process_state() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.process_state() is None


def test_an_input_error_is_printed_once_by_the_main_process(tmp_path, monkeypatch, capsys):
    args = ["deblur", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]
    monkeypatch.setenv("RANK", "1")  # a second process of a launch: the main process prints the same error
    assert main(args) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or folder" in err


def test_an_error_of_one_process_share_names_the_process(monkeypatch):
    monkeypatch.setenv("RANK", "1")

    class State:
        process_index, num_processes = 1, 2

    with pytest.raises(OSError) as caught:
        with distributed.own_share(State()):
            raise OSError("disk full")
    assert distributed.should_print_error(caught.value)
    assert distributed.error_prefix(caught.value) == "process 1 of 2: "


class _FakeRestorer:
    """Pipeline stand-in (identity) that records which images it restored."""

    def __init__(self):
        self.seen = []

    def __call__(self, images, timestep="auto", upscale_factor=2, output_type="np"):
        self.seen += [image.shape for image in images]
        return np.stack([np.asarray(image, np.float32) / 255.0 for image in images])


def test_eval_resumes_from_the_shards_of_an_interrupted_distributed_run(paired_folder, tmp_path):
    pairs = load_eval_set("paired", paired_folder)
    out = tmp_path / "eval"
    first = evaluation.evaluate(_FakeRestorer(), pairs, out, dataset="paired", progress=False)
    rows = evaluation.read_rows(out / evaluation.CSV_NAME)
    # As a killed two-process run leaves it: two rows in the CSV, the others in per-process shards (one cut short).
    columns = evaluation.csv_columns("standard")
    evaluation._write_rows(out / evaluation.CSV_NAME, columns, [rows["p0.png"], rows["p1.png"]])
    evaluation._write_rows(evaluation.shard_path(out, 0), columns, [rows["p2.png"]])
    evaluation._write_rows(evaluation.shard_path(out, 1), columns, [rows["p3.png"]])
    with evaluation.shard_path(out, 1).open("a") as handle:
        handle.write("p4.png,200,given,12.")  # killed mid-row: not a finished row
    restorer = _FakeRestorer()
    again = evaluation.evaluate(restorer, pairs, out, dataset="paired", progress=False)
    assert len(restorer.seen) == 1  # only p4 was restored again
    assert not list(out.glob(evaluation.SHARD_PATTERN))
    assert [row["name"] for row in evaluation.read_rows(out / evaluation.CSV_NAME).values()] == [p.name for p in pairs]
    assert again["metrics"] == first["metrics"]
