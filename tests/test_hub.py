"""Model card, evaluation table, push guards and the remote-code folder (loaded where the package is absent)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fidediff_pipeline.hub import push as hub
from fidediff_pipeline.presets import SD21_BASE_REPO, sd21_base_unet_config, sd21_base_vae_config

GOPRO_FULL = {
    "dataset": "gopro", "dataset_label": "GoPro", "num_images": 1111, "full_test_set_size": 1111,
    "metrics": {"PSNR": 28.5012, "SSIM": 0.91234, "LPIPS": 0.0851, "DISTS": 0.0533},
    "metric_variants": {"SSIM": "ssim_matlab3d: MATLAB's ssim on the RGB volume"},
    "timesteps": {"requested": 200}, "upscale_factor": 2,
}
HIDE_SUBSET = {"dataset": "hide", "num_images": 20, "metrics": {"PSNR": 26.0, "SSIM": 0.86, "LPIPS": None}}


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    assert match, "the card must start with YAML front matter"
    return yaml.safe_load(match.group(1))


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_card_metadata_table_and_model_index(tiny_pipeline_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_folder, folder)
    summaries = [_write_json(tmp_path / "gopro.json", GOPRO_FULL), _write_json(tmp_path / "hide.json", HIDE_SUBSET)]
    card_path = hub.write_model_card(folder, "someone/fidediff-tiny", summaries)
    text = card_path.read_text()
    meta = _front_matter(text)

    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "image-to-image"
    assert {"motion-deblurring", "fidediff", "diffusers", "image-restoration"} <= set(meta["tags"])
    assert meta["license"] == "apache-2.0" and "base_model" not in meta  # the tiny preset has no base model
    # model-index: the complete GoPro run only (a 20-image HIDE subset is not the model's HIDE result).
    (entry,) = meta["model-index"]
    (result,) = entry["results"]
    assert result["dataset"]["name"] == "GoPro" and result["task"]["type"] == "image-to-image"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"psnr": 28.5012, "ssim": 0.9123, "lpips": 0.0851, "dists": 0.0533}
    # The table: both rows, paper-style decimals, n/a for what was not measured, the subset marked.
    assert "| Dataset | Images | PSNR ↑ | SSIM ↑ | LPIPS ↓ | DISTS ↓ |" in text
    assert "| GoPro | 1111 | 28.50 | 0.9123 | 0.0851 | 0.0533 |" in text
    assert "| HIDE | 20 of 2025 (subset) | 26.00 | 0.8600 | n/a | n/a |" in text
    assert "ssim_matlab3d" in text and "This is a tiny model" in text
    assert 'DiffusionPipeline.from_pretrained("someone/fidediff-tiny", trust_remote_code=True)' in text


def test_sd21_shapes_give_base_model_and_its_licence(tmp_path):
    folder = tmp_path / "sd21"
    for name, config in (("unet", sd21_base_unet_config()), ("vae", sd21_base_vae_config())):
        (folder / name).mkdir(parents=True)
        (folder / name / "config.json").write_text(json.dumps(config))
    (folder / "model_index.json").write_text("{}")
    assert hub.detect_base_model(sd21_base_unet_config()) == SD21_BASE_REPO
    meta = _front_matter(hub.build_model_card(folder, "someone/fidediff").content)
    assert meta["base_model"] == SD21_BASE_REPO and meta["license"] == "openrail++"
    assert "no evaluation results" in hub.build_model_card(folder, "someone/fidediff").content.lower()


def test_read_eval_summary_is_tolerant(tmp_path):
    lower = {"dataset": "realblur_j", "count": 980, "metrics": {"psnr": {"mean": 28.9, "std": 3.1}, "ssim": 0.87}}
    flat = {"name": "my photos", "psnr": 30.0, "lpips": 0.1, "n": 12}
    (tmp_path / "run").mkdir()
    _write_json(tmp_path / "run" / "summary.json", GOPRO_FULL)
    rows = (hub.read_eval_summary(lower) + hub.read_eval_summary(flat) + hub.read_eval_summary(tmp_path / "run")
            + hub.read_eval_summary(_write_json(tmp_path / "many.json", {"summaries": [HIDE_SUBSET, flat]})))
    assert [r.label for r in rows] == ["RealBlur-J", "my photos", "GoPro", "HIDE", "my photos"]
    assert rows[0].metrics == {"PSNR": 28.9, "SSIM": 0.87} and rows[0].num_images == 980
    assert rows[1].metrics == {"PSNR": 30.0, "LPIPS": 0.1} and rows[1].num_images == 12
    assert "LPIPS" not in rows[3].metrics  # null means not measured

    table = hub.evaluation_table_markdown([lower, flat])
    assert "| RealBlur-J | 980 | 28.90 | 0.8700 | n/a |" in table and "| my photos | 12 | 30.00 | n/a | 0.1000 |" in table

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        hub.read_eval_summary(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="no metric values"):
        hub.read_eval_summary({"dataset": "gopro", "metrics": {}})
    with pytest.raises(ValueError, match="no such evaluation summary"):
        hub.read_eval_summary(tmp_path / "missing.json")


class _Recorder:
    """Stands in for the Hub API and for saving: records any call, so a test can assert that none happened."""

    def __init__(self, monkeypatch):
        from huggingface_hub import HfApi

        self.calls = []
        for name in ("create_repo", "create_commit", "upload_folder", "upload_file"):
            monkeypatch.setattr(HfApi, name, self._record(name))

    def _record(self, name):
        def method(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name == "create_repo":
                from huggingface_hub import RepoUrl

                return RepoUrl("https://huggingface.co/someone/fidediff-tiny")
            return None

        return method


def test_push_offline_fails_before_any_work(tiny_pipeline, tiny_pipeline_folder, monkeypatch, capsys):
    from huggingface_hub import constants

    from fidediff_pipeline.cli import main

    recorder = _Recorder(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    saved = []
    monkeypatch.setattr(type(tiny_pipeline), "save_pretrained", lambda self, *a, **k: saved.append(a))
    with pytest.raises(hub.HubError, match="offline mode is on"):
        hub.push_pipeline_to_hub(tiny_pipeline, "someone/fidediff-tiny", eval_results=[GOPRO_FULL], token="hf_x")
    assert main(["push", "--model", str(tiny_pipeline_folder), "--repo-id", "someone/fidediff-tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HF_HUB_OFFLINE=1" in err
    assert recorder.calls == [] and saved == [] and not (tiny_pipeline_folder / "README.md").exists()


def test_push_without_token_fails_before_any_work(tiny_pipeline_folder, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    recorder = _Recorder(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(hub.HubError, match="no token"):
        hub.push_pipeline_to_hub(tiny_pipeline_folder, "someone/fidediff-tiny")
    assert recorder.calls == []


def test_push_uploads_weights_code_and_card_in_one_commit(tiny_pipeline_folder, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from huggingface_hub import HfApi

    recorder = _Recorder(monkeypatch)
    recorded_commit, sent = HfApi.create_commit, {}

    def create_commit(self, *args, operations, **kwargs):  # read the code and index files while they exist
        sent.update({o.path_in_repo: Path(o.path_or_fileobj).read_text() for o in operations
                     if o.path_in_repo.endswith((".py", ".json"))})
        return recorded_commit(self, *args, operations=operations, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(hub.HubError, match="not a valid Hub repo id"):
        hub.push_pipeline_to_hub(tiny_pipeline_folder, "bad id!", token="hf_x")
    url = hub.push_pipeline_to_hub(tiny_pipeline_folder, "someone/fidediff-tiny", eval_results=[GOPRO_FULL],
                                   token="hf_x", private=True)
    assert url == "https://huggingface.co/someone/fidediff-tiny"
    (create, commit) = recorder.calls
    assert create[0] == "create_repo" and create[2]["private"] is True
    paths = {op.path_in_repo for op in commit[2]["operations"]}
    assert {"README.md", "model_index.json", "pipeline.py", "kernel_controlnet/modeling_kernel_controlnet.py",
            "unet/diffusion_pytorch_model.safetensors"} <= paths
    # The saved folder holds weights and configs only; the push writes the code beside them.
    assert not (Path(tiny_pipeline_folder) / "kernel_controlnet" / "modeling_kernel_controlnet.py").exists()
    assert "class FideDiffPipeline(" in sent["pipeline.py"]
    index = json.loads(sent["model_index.json"])
    assert index["kernel_controlnet"] == ["modeling_kernel_controlnet", "KernelControlNetModel"]
    assert not any(p.endswith(".bin") or "__pycache__" in p for p in paths)


def test_the_folders_own_card_is_never_replaced(tiny_pipeline_folder, monkeypatch, tmp_path, capsys):
    """A README.md in the folder is its card (hand-written, or generated by --dry-run and edited): the dry run
    keeps it, the push uploads it byte for byte, and eval results that would not appear in it are refused first."""
    from huggingface_hub import HfApi, constants

    from fidediff_pipeline.cli import main

    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_folder, folder)
    assert main(["push", "--model", str(folder), "--repo-id", "someone/fidediff-tiny", "--dry-run"]) == 0
    generated = (folder / "README.md").read_text()
    assert "wrote" in capsys.readouterr().out and "someone/fidediff-tiny" in generated
    mine = generated + "\nEdited by hand: trained on my own photos.\n"
    (folder / "README.md").write_text(mine)
    assert main(["push", "--model", str(folder), "--repo-id", "someone/fidediff-tiny", "--dry-run"]) == 0
    assert "is the card (kept as it is)" in capsys.readouterr().out
    assert (folder / "README.md").read_text() == mine
    with pytest.raises(hub.HubError, match="exists and is kept"):
        hub.write_model_card(folder, "someone/fidediff-tiny")

    recorder = _Recorder(monkeypatch)
    recorded_commit, sent = HfApi.create_commit, {}

    def create_commit(self, *args, operations, **kwargs):
        sent.update({o.path_in_repo: Path(o.path_or_fileobj).read_text() for o in operations
                     if o.path_in_repo == "README.md"})
        return recorded_commit(self, *args, operations=operations, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(hub.HubError, match="would not appear in it"):
        hub.push_pipeline_to_hub(folder, "someone/fidediff-tiny", eval_results=[GOPRO_FULL], token="hf_x")
    assert recorder.calls == []
    hub.push_pipeline_to_hub(folder, "someone/fidediff-tiny", token="hf_x")
    assert sent["README.md"] == mine and (folder / "README.md").read_text() == mine
    ops = [o.path_in_repo for o in recorder.calls[-1][2]["operations"]]
    assert ops.count("README.md") == 1


# The card's usage snippet, run in a fresh interpreter where fidediff_pipeline cannot be imported.
_RUNNER = """
import sys
sys.modules["fidediff_pipeline"] = None  # as on a machine without the package (it may be installed in this venv)
try:
    import fidediff_pipeline
    sys.exit("the package must not be importable here")
except ImportError:
    pass
exec(open("snippet.py").read())
import numpy as np
np.save("restored.npy", np.asarray(out.images[0]))
print("loaded", type(pipe).__module__, "t =", out.timesteps[0])
"""


def test_exported_folder_loads_with_remote_code_and_the_card_snippet_works(tiny_pipeline, tiny_pipeline_folder, tmp_path):
    from fidediff_pipeline.hub.remote_code import write_remote_code

    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_folder, folder)
    write_remote_code(folder)  # what `fidediff push` uploads with a weights-and-configs folder
    card = hub.write_model_card(folder, "someone/fidediff-tiny").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, flags=re.S).group(1)
    assert '"someone/fidediff-tiny"' in snippet
    work = tmp_path / "work"
    work.mkdir()
    (work / "snippet.py").write_text(snippet.replace('"someone/fidediff-tiny"', repr(str(folder))))
    (work / "runner.py").write_text(_RUNNER)
    rng = np.random.default_rng(0)
    blurry = Image.fromarray((rng.random((32, 40, 3)) * 255).astype(np.uint8))
    blurry.save(work / "blurry.png")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    run = subprocess.run([sys.executable, "runner.py"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "loaded" in run.stdout and "fidediff_pipeline" not in run.stdout.split("loaded")[1].split("t =")[0]

    remote = np.load(work / "restored.npy")
    assert (work / "sharp.png").is_file()
    expected = np.asarray(tiny_pipeline(blurry, timestep="auto", upscale_factor=2).images[0])
    assert remote.shape == expected.shape == (32, 40, 3)
    assert np.abs(remote.astype(int) - expected.astype(int)).max() <= 1


def test_push_connection_error_is_one_line_and_local_paths_stay_local(tiny_pipeline_folder, monkeypatch, tmp_path,
                                                                      capsys):
    """Issue 13 (7): a raw httpx traceback; and model_index.json carried this machine's _name_or_path."""
    import shutil

    import httpx
    from huggingface_hub import HfApi, constants

    from fidediff_pipeline.cli import main

    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_name_or_path": "/home/me/secret/run"}))
    _Recorder(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    sent = {}

    def create_commit(self, repo_id, operations, **kwargs):  # read what would be uploaded, while it exists
        sent.update({o.path_in_repo: open(o.path_or_fileobj, "rb").read() for o in operations if o.path_in_repo.endswith(".json")})

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    hub.push_pipeline_to_hub(folder, "someone/fidediff-tiny", token="hf_x")
    uploaded = json.loads(sent["model_index.json"])
    assert "_name_or_path" not in uploaded and uploaded["_class_name"] == index["_class_name"]

    def offline(*args, **kwargs):
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    code = main(["push", "--model", str(folder), "--repo-id", "someone/fidediff-tiny", "--token", "hf_x"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Hugging Face Hub" in err and err.count("\n") == 1
    assert "hf_x" not in err
