"""GoPro-style frame averaging: a tiny 240 fps "video" with a known motion, built and checked end to end."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fidediff_pipeline.data.gopro import (
    average_frames_linear,
    build_gopro_trajectory_set,
    discover_frame_sequences,
    plan_gopro_centres,
)
from fidediff_pipeline.data.manifest import read_manifest

H, W, NUM_FRAMES = 48, 64, 25
FRAMES = (3, 5, 7, 9)
STRIDE, OFFSET = 6, 3  # centres at frame numbers 4, 10, 16, 22


def textured_canvas(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blocks of random colour (hard edges, so any averaging error shows) plus fine noise."""
    blocks = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3))
    canvas = np.kron(blocks, np.ones((4, 4, 1)))[:height, :width]
    return np.clip(canvas + rng.integers(-20, 21, size=canvas.shape), 0, 255).astype(np.uint8)


def camera_path(k: int) -> tuple[int, int]:
    """Known integer path: steady 2 px/frame to the right, a vertical wobble."""
    return int(round(3 * np.sin(k / 3.0))) + 4, 2 * k


def write_video(root: Path, scene: str, skip: tuple[int, ...] = ()) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(7)
    canvas = textured_canvas(rng, H + 8, W + 2 * NUM_FRAMES + 2)
    frames = {}
    (root / scene).mkdir(parents=True, exist_ok=True)
    for k in range(NUM_FRAMES):
        dy, dx = camera_path(k)
        frame = canvas[dy : dy + H, dx : dx + W]
        number = k + 1
        frames[number] = frame
        if number not in skip:
            Image.fromarray(frame).save(root / scene / f"{number:06d}.png")
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    root = tmp_path_factory.mktemp("GOPRO_Large_all")
    frames = write_video(root, "GOPR0001_11_00")
    gap_frames = write_video(root, "GOPR0002_11_00", skip=(13,))  # a missing frame mid-sequence
    return root, frames, gap_frames


@pytest.fixture(scope="module")
def built(video, tmp_path_factory):
    root, _, _ = video
    out = tmp_path_factory.mktemp("gopro_out")
    report = build_gopro_trajectory_set(root, out, frames=FRAMES, stride=STRIDE, offset=OFFSET)
    return out, report


def reference_blur(frames: dict[int, np.ndarray], centre: int, n: int, crf: str) -> np.ndarray:
    """Independent re-implementation: mean of the n frames centred on ``centre`` in linear light."""
    window = [frames[centre + d].astype(np.float64) / 255.0 for d in range(-(n // 2), n // 2 + 1)]
    assert len(window) == n
    if crf == "gamma2.2":
        mean = np.mean([w**2.2 for w in window], axis=0) ** (1 / 2.2)
    else:
        mean = np.mean(window, axis=0)
    return mean * 255.0


def load(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64)


def test_timesteps_levels_and_border_rule(built):
    out, report = built
    rows = read_manifest(out / "manifest.csv")
    assert {r.t for r in rows if r.n == 3} == {40} and {r.t for r in rows if r.n == 9} == {160}
    assert all(r.t == (r.n - 1) * 20 for r in rows)
    levels = {}
    for r in rows:
        levels.setdefault(r.group, []).append(r.n)
    # Full scene: centres 4 and 22 lose n=9 at the sequence borders (would need frames 0 and 26).
    assert sorted(levels["GOPR0001_11_00/000004"]) == [3, 5, 7]
    assert sorted(levels["GOPR0001_11_00/000010"]) == [3, 5, 7, 9]
    assert sorted(levels["GOPR0001_11_00/000016"]) == [3, 5, 7, 9]
    assert sorted(levels["GOPR0001_11_00/000022"]) == [3, 5, 7]
    # Gap scene: frame 13 is missing, so centres 10 and 16 keep only n=3, 5 (< 3 levels) and are skipped.
    assert sorted(g for g in levels if g.startswith("GOPR0002")) == ["GOPR0002_11_00/000004", "GOPR0002_11_00/000022"]
    assert report.dropped_groups == 2
    assert report.counts == {3: 6, 5: 6, 7: 6, 9: 2}
    table = report.table()
    assert "Avg. Frames" in table and "Total" in table and "20" in table.splitlines()[1]


def test_blurry_is_linear_light_mean_of_centred_frames(video, built):
    _, frames, _ = video
    out, _ = built
    rows = [r for r in read_manifest(out) if r.scene == "GOPR0001_11_00"]
    assert rows
    for r in rows:
        centre = int(Path(r.sharp).stem)
        blurry = load(r.blurry)
        expected = reference_blur(frames, centre, r.n, "gamma2.2")
        assert np.abs(blurry - expected).max() <= 0.5 + 1e-3, (r.blurry, np.abs(blurry - expected).max())
        # The check has teeth: the next-larger window, or a linear mean, would not pass it.
        if centre + r.n // 2 + 1 <= NUM_FRAMES and centre - r.n // 2 - 1 >= 1:
            assert np.abs(blurry - reference_blur(frames, centre, r.n + 2, "gamma2.2")).max() > 10
        assert np.abs(blurry - reference_blur(frames, centre, r.n, "linear")).max() > 5
        np.testing.assert_array_equal(load(r.sharp), frames[centre])


def test_linear_crf_option(video, tmp_path):
    root, frames, _ = video
    build_gopro_trajectory_set(root, tmp_path, frames=FRAMES, stride=STRIDE, offset=OFFSET, crf="linear", scenes=["GOPR0001_11_00"])
    rows = read_manifest(tmp_path)
    assert len({r.group for r in rows}) == 4
    for r in rows:
        expected = reference_blur(frames, int(Path(r.sharp).stem), r.n, "linear")
        assert np.abs(load(r.blurry) - expected).max() <= 0.5 + 1e-3


def test_manifest_paths_are_relative(built):
    out, report = built
    text = (out / "manifest.csv").read_text()
    assert text.splitlines()[0] == "sharp,blurry,n,t,group,scene,kernel"
    assert str(out) not in text
    assert "GOPR0001_11_00/blur_n07/000010.png" in text
    rows = read_manifest(out / "manifest.csv", check_files=True)
    assert len(rows) == len(report.rows) == 20
    assert all(Path(r.blurry).is_absolute() and r.kernel is None for r in rows)


def test_deterministic_and_resumable(video, built, tmp_path):
    root, _, _ = video
    out, _ = built
    again = tmp_path / "again"
    build_gopro_trajectory_set(root, again, frames=FRAMES, stride=STRIDE, offset=OFFSET)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert filecmp.cmp(out / rel, again / rel, shallow=False), rel

    # Resume: a deleted output is rebuilt identically; existing outputs are not recomputed.
    victim = again / "GOPR0001_11_00" / "blur_n07" / "000010.png"
    reference = victim.read_bytes()
    victim.unlink()
    marker = again / "GOPR0001_11_00" / "blur_n05" / "000010.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(marker)
    report = build_gopro_trajectory_set(root, again, frames=FRAMES, stride=STRIDE, offset=OFFSET)
    assert report.written == 1
    assert victim.read_bytes() == reference
    assert load(marker).max() == 0  # skipped, not overwritten
    assert (again / "manifest.csv").read_bytes() == (out / "manifest.csv").read_bytes()

    with pytest.raises(ValueError, match="crf"):
        build_gopro_trajectory_set(root, again, frames=FRAMES, stride=STRIDE, offset=OFFSET, crf="linear")


def test_bad_inputs(video, tmp_path):
    root, _, _ = video
    with pytest.raises(ValueError, match="at least 3 blur levels"):
        build_gopro_trajectory_set(root, tmp_path / "a", frames=(7, 11))
    with pytest.raises(ValueError, match="odd"):
        build_gopro_trajectory_set(root, tmp_path / "b", frames=(6, 8, 10))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_gopro_trajectory_set(tmp_path / "nope", tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no scene folders"):
        build_gopro_trajectory_set(tmp_path / "empty", tmp_path / "d")


def test_discovery_sorts_numerically_and_accepts_split_folders(tmp_path):
    scene = tmp_path / "train" / "GOPR0384_11_01"
    scene.mkdir(parents=True)
    for number in (1, 2, 3, 10, 9, 11):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(scene / f"{number}.png")
    (scene / "notes.png").write_bytes(b"not a frame")  # non-numeric names are ignored
    seqs = discover_frame_sequences(tmp_path)
    assert list(seqs) == ["train/GOPR0384_11_01"]
    assert [n for n, _ in seqs["train/GOPR0384_11_01"]] == [1, 2, 3, 9, 10, 11]
    # Frames 4..8 are missing: 3 and 9 cannot centre a 3-frame window, nor can the sequence ends.
    plans = plan_gopro_centres(seqs["train/GOPR0384_11_01"], "s", (1, 3), stride=1, offset=0)
    assert [(p.number, p.levels) for p in plans] == [(1, (1,)), (2, (1, 3)), (3, (1,)), (9, (1,)), (10, (1, 3)), (11, (1,))]


def test_average_frames_linear_known_values():
    black, white = np.zeros((1, 1, 3), np.uint8), np.full((1, 1, 3), 255, np.uint8)
    assert average_frames_linear([black, white], "linear")[0, 0, 0] == 128
    # Light averages: half the light of white is 0.5 ** (1 / 2.2) = 0.73 of full scale, not 0.5.
    assert average_frames_linear([black, white], "gamma2.2")[0, 0, 0] == round(255 * 0.5 ** (1 / 2.2))


# ---------------------------------------------------------------------------------------- one image loader (issue 13)
def test_a_bad_frame_skips_its_groups_with_a_count_and_the_build_goes_on(tmp_path, caplog):
    root = tmp_path / "frames"
    write_video(root, "GOPR0001_11_00")
    (root / "GOPR0001_11_00" / "000016.png").write_bytes(b"not a png")  # the centre of one group
    with caplog.at_level("WARNING", logger="fidediff.data"):
        report = build_gopro_trajectory_set(root, tmp_path / "out", frames=FRAMES, stride=STRIDE, offset=OFFSET)
    assert report.skipped_bad >= 1 and "000016.png: not an image file" in caplog.text
    groups = {row.group for row in read_manifest(report.manifest_path)}
    assert "GOPR0001_11_00/000016" not in groups and "GOPR0001_11_00/000004" in groups
    assert "skipped: a source image could not be read" in report.table()


def test_16_bit_frames_are_rounded_not_clipped(tmp_path):
    root = tmp_path / "frames"
    frames = write_video(root, "GOPR0001_11_00")
    for number, frame in frames.items():  # the same video as grey 16-bit PNGs
        grey = (frame.mean(axis=2) * 257).astype(np.uint16)
        Image.fromarray(grey).save(root / "GOPR0001_11_00" / f"{number:06d}.png")
    report = build_gopro_trajectory_set(root, tmp_path / "out", frames=FRAMES, stride=STRIDE, offset=OFFSET)
    sharp = np.asarray(Image.open(report.rows[0].sharp))
    expected = (frames[4].mean(axis=2) * 257).astype(np.uint16)  # the 16-bit file's values
    assert sharp.shape == (H, W, 3) and (sharp == 255).mean() < 0.05
    np.testing.assert_allclose(sharp[..., 0], np.rint(expected / 257.0), atol=1)
