"""Datasets over trajectory manifests: same group and window across levels, collate, determinism, errors."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fidediff_pipeline.data.camera_response import from_linear, reblur_in_linear_light, to_linear
from fidediff_pipeline.data.image_io import quantize_uint8
from fidediff_pipeline.data.datasets import (
    InMemoryTrajectoryGroupDataset,
    PairDataset,
    TrajectoryGroupDataset,
    collate_trajectory_groups,
)
from fidediff_pipeline.data.manifest import (
    ManifestRow,
    frames_from_timestep,
    read_manifest,
    timestep_from_frames,
    write_manifest,
)
from fidediff_pipeline.data.trajectories import correlate_global_kernel, synthesize_trajectory_set
from fidediff_pipeline.kernel_ops import global_kernel_to_map

FRAMES = (3, 5, 7, 9)
M = 15
R = M // 2


def photo(seed: int, height: int = 36, width: int = 44) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3))
    noise = rng.integers(-15, 16, size=(height, width, 3))
    return np.clip(np.kron(blocks, np.ones((4, 4, 1)))[:height, :width] + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize_trajectory_set([photo(0), photo(1), photo(2)], out, frames=FRAMES, seed=0, kernel_size=M)
    return out


def locate(crop: np.ndarray, full: np.ndarray):
    """Find (top, left, hflip, vflip) such that the flipped window of ``full`` equals ``crop`` exactly."""
    h, w = crop.shape[:2]
    found = []
    for hflip in (False, True):
        for vflip in (False, True):
            c = crop[:, ::-1] if hflip else crop
            c = c[::-1] if vflip else c
            for top in range(full.shape[0] - h + 1):
                for left in range(full.shape[1] - w + 1):
                    if np.array_equal(full[top : top + h, left : left + w], c):
                        found.append((top, left, hflip, vflip))
    assert len(found) == 1, found
    return found[0]


def window(full: np.ndarray, top, left, hflip, vflip, h, w) -> np.ndarray:
    out = full[top : top + h, left : left + w]
    out = out[:, ::-1] if hflip else out
    return out[::-1] if vflip else out


def to_uint8_hwc(t: torch.Tensor) -> np.ndarray:
    return np.rint(t.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def test_group_item_is_one_group_at_one_window(data_dir):
    ds = TrajectoryGroupDataset(data_dir, crop_size=(20, 24), levels_per_group=3, seed=1)
    assert len(ds) == 3
    rows = {(r.group, r.n): r for r in read_manifest(data_dir)}
    saw_flip = False
    for index in range(len(ds)):
        item = ds[index]
        assert item["sharp"].shape == (3, 20, 24) and item["blurry"].shape == (3, 3, 20, 24)
        assert item["timesteps"].dtype == torch.long and item["sharp"].dtype == torch.float32
        frames = item["frames"].tolist()
        assert frames == sorted(set(frames)) and set(frames) <= set(FRAMES)
        assert item["timesteps"].tolist() == [(n - 1) * 20 for n in frames]
        group = item["group"]
        sharp_full = np.asarray(Image.open(rows[(group, frames[0])].sharp))
        top, left, hflip, vflip = locate(to_uint8_hwc(item["sharp"]), sharp_full)
        saw_flip |= hflip or vflip
        for level, n in enumerate(frames):
            blurry_full = np.asarray(Image.open(rows[(group, n)].blurry))
            expected = window(blurry_full, top, left, hflip, vflip, 20, 24)
            np.testing.assert_array_equal(to_uint8_hwc(item["blurry"][level]), expected)
    assert saw_flip  # seed 1 flips at least one of the three items


def test_kernels_follow_crop_and_flips(data_dir):
    ds = TrajectoryGroupDataset(data_dir, crop_size=32, levels_per_group=4, seed=3, with_kernels=True)
    for index in range(len(ds)):
        item = ds[index]
        assert item["kernels"].shape == (4, M, M)
        sharp = item["sharp"][None].expand(4, -1, -1, -1)
        reblurred = reblur_in_linear_light(sharp.double(), global_kernel_to_map(item["kernels"].double(), 32, 32))
        inner = (slice(None), slice(None), slice(R, -R), slice(R, -R))  # away from the crop's borders
        assert (reblurred[inner] - item["blurry"][inner].double()).abs().max() <= 0.5 / 255 + 1e-5


def test_collate_flattens_groups(data_dir):
    ds = TrajectoryGroupDataset(data_dir, crop_size=16, levels_per_group=3, seed=0, with_kernels=True)
    loader = DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate_trajectory_groups)
    batch = next(iter(loader))
    assert batch["blurry"].shape == (6, 3, 16, 16) and batch["sharp"].shape == (6, 3, 16, 16)
    assert batch["group_index"].tolist() == [0, 0, 0, 1, 1, 1]
    assert batch["sharp_per_group"].shape == (2, 3, 16, 16) and batch["kernels"].shape == (6, M, M)
    assert batch["groups"] == [ds[0]["group"], ds[1]["group"]] and batch["groups"][0] != batch["groups"][1]
    for i in range(6):
        g = batch["group_index"][i]
        assert torch.equal(batch["sharp"][i], batch["sharp_per_group"][g])
        assert torch.equal(batch["blurry"][i], ds[g]["blurry"][i % 3])
    # Several levels of one group in the batch, each with its own t.
    assert len(set(batch["timesteps"][:3].tolist())) == 3


def test_determinism_per_index_and_epoch(data_dir):
    a = TrajectoryGroupDataset(data_dir, crop_size=16, levels_per_group=2, seed=5)
    b = TrajectoryGroupDataset(data_dir, crop_size=16, levels_per_group=2, seed=5)
    forward = [a[i] for i in range(len(a))]
    backward = [b[i] for i in reversed(range(len(b)))][::-1]  # order-independent, hence worker-safe
    for x, y in zip(forward, backward):
        assert torch.equal(x["blurry"], y["blurry"]) and torch.equal(x["timesteps"], y["timesteps"])
    a.set_epoch(1)
    assert any(not torch.equal(a[i]["blurry"], forward[i]["blurry"]) for i in range(len(a)))
    c = TrajectoryGroupDataset(data_dir, crop_size=16, levels_per_group=2, seed=6)
    assert any(not torch.equal(c[i]["blurry"], forward[i]["blurry"]) for i in range(len(c)))


def test_pair_dataset_with_kernel_map(data_dir):
    ds = PairDataset(data_dir, crop_size=24, seed=0, with_kernel="map")
    assert len(ds) == 3 * len(FRAMES)
    item = ds[5]
    assert item["kernel"].shape == (M * M, 24, 24) and item["timestep"].item() == (item["frames"].item() - 1) * 20
    reblurred = reblur_in_linear_light(item["sharp"][None].double(), item["kernel"][None].double())[0]
    assert (reblurred[:, R:-R, R:-R] - item["blurry"][:, R:-R, R:-R].double()).abs().max() <= 0.5 / 255 + 1e-5
    whole = PairDataset(data_dir, crop_size=None, flip=False)[0]
    assert whole["sharp"].shape == (3, 36, 44)
    assert PairDataset(data_dir, crop_size=8, with_kernel="global")[0]["kernel"].shape == (M, M)


def test_in_memory_groups(data_dir):
    ds = InMemoryTrajectoryGroupDataset([photo(0), photo(1)], frames=FRAMES, crop_size=20, levels_per_group=3, num_groups=4, seed=2, kernel_size=M)
    assert len(ds) == 4
    item = ds[3]
    assert item["blurry"].shape == (3, 3, 20, 20) and item["kernels"].shape == (3, M, M)
    again = InMemoryTrajectoryGroupDataset([photo(0), photo(1)], frames=FRAMES, crop_size=20, levels_per_group=3, num_groups=4, seed=2, kernel_size=M)[3]
    assert torch.equal(item["blurry"], again["blurry"]) and torch.equal(item["kernels"], again["kernels"])
    # Crop-with-margin blurring gives exactly the pixels of a whole-image blur: check by reblurring.
    sharp = item["sharp"][None].expand(3, -1, -1, -1).double()
    reblurred = reblur_in_linear_light(sharp, global_kernel_to_map(item["kernels"].double(), 20, 20))
    assert (reblurred[..., R:-R, R:-R] - item["blurry"][..., R:-R, R:-R].double()).abs().max() <= 0.5 / 255 + 1e-5
    # ... and the whole crop, borders included, equals the same window of a whole-image blur.
    full = photo(1)  # item 3 uses image 3 % 2
    top, left, hflip, vflip = locate(to_uint8_hwc(item["sharp"]), full)
    for level in range(3):
        kernel = item["kernels"][level].numpy()
        kernel = kernel[:, ::-1] if hflip else kernel  # back to the unflipped image's kernel
        kernel = kernel[::-1] if vflip else kernel
        blurred = from_linear(correlate_global_kernel(to_linear(full / 255.0), kernel))
        expected = window(quantize_uint8(blurred), top, left, hflip, vflip, 20, 20)
        np.testing.assert_array_equal(to_uint8_hwc(item["blurry"][level]), expected)
    batch = collate_trajectory_groups([ds[0], ds[1]])
    assert batch["blurry"].shape == (6, 3, 20, 20) and batch["group_index"].tolist() == [0, 0, 0, 1, 1, 1]


def test_missing_files_and_bad_configs(data_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    victim = next(copy.glob("*/blur_n05/*.png"))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match="blur_n05"):
        TrajectoryGroupDataset(copy, crop_size=16)
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        PairDataset(tmp_path / "nothing_here", crop_size=16)
    with pytest.raises(ValueError, match="larger than the image"):
        TrajectoryGroupDataset(data_dir, crop_size=64)[0]
    with pytest.raises(ValueError, match="has 5 levels"):
        TrajectoryGroupDataset(data_dir, crop_size=16, levels_per_group=5)
    # Groups with too few levels are left out, with a warning.
    rows = read_manifest(data_dir)
    short = [r for r in rows if not (r.scene == "image_0000" and r.n > 3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = TrajectoryGroupDataset(short, crop_size=16, levels_per_group=2)
    assert len(ds) == 2 and any("fewer than 2 levels" in str(w.message) for w in caught)


def test_manifest_round_trip_and_checks(tmp_path):
    rows = [
        ManifestRow(sharp=str(tmp_path / "s" / "a.png"), blurry=str(tmp_path / "b" / "a.png"), n=11, t=200, group="a", scene="x"),
        ManifestRow(sharp=str(tmp_path / "s" / "a.png"), blurry=str(tmp_path / "c" / "a.png"), n=7, t=120, group="a", scene="x",
                    kernel=str(tmp_path / "k" / "a.npy")),
    ]  # fmt: skip
    path = write_manifest(rows, tmp_path / "manifest.csv")
    text = path.read_text().splitlines()
    assert text[1] == "s/a.png,c/a.png,7,120,a,x,k/a.npy"  # sorted by n, relative paths
    back = read_manifest(tmp_path)
    assert sorted(back, key=lambda r: r.n) == sorted(rows, key=lambda r: r.n)
    path.write_text(path.read_text().replace(",7,120,", ",7,140,"))
    with pytest.raises(ValueError, match="line 2"):
        read_manifest(path)
    with pytest.raises(ValueError, match="t=100"):
        ManifestRow(sharp="a", blurry="b", n=7, t=100, group="g", scene="s")
    assert timestep_from_frames(1) == 0 and timestep_from_frames(15) == 280 and frames_from_timestep(200) == 11


@pytest.mark.parametrize("column, value", [("blurry", "../../../../etc/passwd"), ("sharp", "/etc/passwd"),
                                           ("kernel", "k/../../outside.npy")])
def test_manifest_rows_that_escape_their_folder_are_refused_with_their_line(tmp_path, column, value):
    row = {"sharp": "s/a.png", "blurry": "b/a.png", "n": "11", "t": "200", "group": "a", "scene": "x", "kernel": ""}
    bad = {**row, column: value}
    lines = ["sharp,blurry,n,t,group,scene,kernel", ",".join(row.values()), ",".join(bad.values())]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 3: .*points outside"):
        read_manifest(tmp_path)


def test_manifest_refuses_to_write_a_row_it_could_not_read_back(tmp_path):
    row = ManifestRow(sharp=str(tmp_path / "elsewhere.png"), blurry=str(tmp_path / "d" / "b.png"), n=11, t=200,
                      group="a", scene="x")
    with pytest.raises(ValueError, match="outside"):
        write_manifest([row], tmp_path / "d" / "manifest.csv")
    assert not (tmp_path / "d" / "manifest.csv").exists()
