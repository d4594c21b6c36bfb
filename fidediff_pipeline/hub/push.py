"""Model cards and uploads to the Hugging Face Hub.

`push_pipeline_to_hub` uploads a pipeline folder made by `FideDiffPipeline.save_pretrained` (weights as safetensors)
plus the pipeline's code files (`fidediff_pipeline.hub.remote_code`, written for the upload: a saved folder holds
weights and configs only), so ``DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`` works without
this package, with a generated model card (or the folder's own README.md, never replaced). `write_model_card`
writes the same card into a folder without uploading.
Evaluation results come from ``fidediff eval``'s ``summary.json`` files (`read_eval_summary` also reads older or
hand-written variants of that format).

Example:
    >>> from fidediff_pipeline.hub.push import evaluation_table_markdown
    >>> print(evaluation_table_markdown([{"dataset": "gopro", "num_images": 1111,
    ...        "metrics": {"PSNR": 28.79, "SSIM": 0.9148, "LPIPS": 0.0831, "DISTS": 0.0525}}]))
    | Dataset | Images | PSNR ↑ | SSIM ↑ | LPIPS ↓ | DISTS ↓ |
    |---|---|---|---|---|---|
    | GoPro | 1111 | 28.79 | 0.9148 | 0.0831 | 0.0525 |
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..atomic_io import atomic_path, is_temporary
from ..evaluation.runner import DATASET_LABELS, FULL_TEST_SIZES, HEADLINE_METRICS, LOWER_IS_BETTER, format_metric
from ..presets import SD21_BASE_REPO, sd21_base_unet_config
from .remote_code import remote_code_files

LICENSE = "apache-2.0"
# Weights fine-tuned from Stable Diffusion 2.1 stay under its licence (CreativeML Open RAIL++-M).
SD21_LICENSE = "openrail++"
TAGS = ["motion-deblurring", "fidediff", "diffusers", "image-restoration", "image-to-image", "deblurring"]
PAPER_TITLE = "FideDiff: Efficient Diffusion Model for High-Fidelity Image Motion Deblurring"
# Lower-case spellings accepted for the four headline metrics in hand-written summaries.
_METRIC_ALIASES = {
    "psnr": "PSNR", "ssim": "SSIM", "ssim_matlab3d": "SSIM", "lpips": "LPIPS", "dists": "DISTS",
}
_COUNT_KEYS = ("num_images", "count", "n", "images", "num_samples")
_DATASET_KEYS = ("dataset", "dataset_name", "benchmark", "name")


class HubError(ValueError):
    """A Hub operation cannot start (offline, no token, bad repo id); raised before any work is done."""


# ---------------------------------------------------------------------------------------------------- eval results
@dataclass
class EvalSummary:
    """One row of the evaluation table: a dataset, its metric means and how many images they cover."""

    dataset: str
    metrics: dict[str, float]
    num_images: int | None = None
    full_test_set_size: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return DATASET_LABELS.get(self.dataset, self.dataset)


def _number(value) -> float | None:
    """A metric value: a number, or a dict with a mean (``{"mean": 28.7, "std": ...}``); None otherwise."""
    if isinstance(value, Mapping):
        for key in ("mean", "value", "avg", "average"):
            if key in value:
                return _number(value[key])
        return None
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN means "not measured"


def _metric_name(key: str) -> str:
    return _METRIC_ALIASES.get(key.lower(), key.upper() if key.lower() in ("psnr", "ssim", "lpips", "dists") else key)


def _summary_from_mapping(data: Mapping[str, Any], fallback_name: str) -> EvalSummary:
    dataset = next((data[k] for k in _DATASET_KEYS if isinstance(data.get(k), str) and data[k]), fallback_name)
    raw_metrics = next((data[k] for k in ("metrics", "means", "mean", "results") if isinstance(data.get(k), Mapping)), None)
    if raw_metrics is None:  # metrics at the top level: {"dataset": "gopro", "psnr": 28.7, ...}
        raw_metrics = {k: v for k, v in data.items() if k.lower() in _METRIC_ALIASES}
    metrics: dict[str, float] = {}
    for key, value in raw_metrics.items():
        number = _number(value)
        name = _metric_name(str(key))
        if number is not None and name not in metrics:
            metrics[name] = number
    count = next((int(data[k]) for k in _COUNT_KEYS if isinstance(data.get(k), (int, float)) and not isinstance(data.get(k), bool)), None)
    full = data.get("full_test_set_size") or FULL_TEST_SIZES.get(dataset)
    notes = []
    variants = data.get("metric_variants")
    if isinstance(variants, Mapping) and isinstance(variants.get("SSIM"), str):
        notes.append(f"SSIM: {variants['SSIM'].split(':')[0]}")
    timesteps = data.get("timesteps")
    if isinstance(timesteps, Mapping) and timesteps.get("requested") is not None:
        notes.append(f"t = {timesteps['requested']}")
    elif isinstance(data.get("timestep"), (int, str)):
        notes.append(f"t = {data['timestep']}")
    if isinstance(data.get("upscale_factor"), int) and data["upscale_factor"] > 0:
        notes.append(f"d = {8 // data['upscale_factor']}")
    return EvalSummary(str(dataset), metrics, count, int(full) if full else None, notes)


def read_eval_summary(source: str | os.PathLike | Mapping | EvalSummary) -> list[EvalSummary]:
    """Read ``fidediff eval`` results: a ``summary.json`` (or the folder that holds it), a dict, or a JSON list.

    Tolerant of variants: metric names in any case (``PSNR`` / ``psnr``), values as numbers or ``{"mean": ...}``,
    metrics under ``metrics``/``means`` or at the top level, the image count as ``num_images``/``count``/``n``.
    A file holding a list (or ``{"summaries": [...]}``) gives several rows.

    Raises:
        ValueError: the file is missing, not JSON, or has no metric at all (with the file named).
    """
    if isinstance(source, EvalSummary):
        return [source]
    name = "results"
    if isinstance(source, Mapping):
        data: Any = source
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "summary.json"
        if not path.is_file():
            raise ValueError(f"{path}: no such evaluation summary (pass the summary.json written by `fidediff eval`)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        name = path.parent.name if path.name == "summary.json" else path.stem
    items = data.get("summaries") if isinstance(data, Mapping) and isinstance(data.get("summaries"), list) else data
    items = items if isinstance(items, list) else [items]
    summaries = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ValueError(f"{name}: expected a JSON object with a dataset and metrics; got {type(item).__name__}")
        summary = _summary_from_mapping(item, name)
        if not summary.metrics:
            raise ValueError(f"{name}: no metric values found (expected e.g. \"metrics\": {{\"PSNR\": 28.8, ...}})")
        summaries.append(summary)
    return summaries


def _read_all(eval_results: Iterable | None) -> list[EvalSummary]:
    if eval_results is None:
        return []
    if isinstance(eval_results, (str, os.PathLike, Mapping, EvalSummary)):
        eval_results = [eval_results]
    return [summary for item in eval_results for summary in read_eval_summary(item)]


def evaluation_table_markdown(summaries) -> str:
    """A Markdown table of the evaluation results, one row per dataset, the headline metrics first.

    ``summaries``: `EvalSummary` objects, dicts or paths (anything `read_eval_summary` reads). Metrics missing for a
    dataset show as "n/a"; a run on part of a test set says so in the Images column.
    """
    rows = _read_all(summaries)
    if not rows:
        return ""
    extra = sorted({m for r in rows for m in r.metrics} - set(HEADLINE_METRICS))
    columns = [m for m in HEADLINE_METRICS if any(m in r.metrics for r in rows)] + extra
    header = ["Dataset", "Images"] + [f"{m} {'↓' if m in LOWER_IS_BETTER else '↑'}" if m in HEADLINE_METRICS else m for m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        images = "?" if row.num_images is None else str(row.num_images)
        if row.num_images is not None and row.full_test_set_size and row.num_images != row.full_test_set_size:
            images += f" of {row.full_test_set_size} (subset)"
        values = [format_metric(m, row.metrics[m]) if m in row.metrics else "n/a" for m in columns]
        lines.append("| " + " | ".join([row.label, images] + values) + " |")
    notes = sorted({note for r in rows for note in r.notes})
    if notes:
        lines.append("")
        lines.append("Settings: " + "; ".join(notes) + ".")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "dataset"


def eval_results_for_model_index(summaries: list[EvalSummary]):
    """`huggingface_hub.EvalResult` entries (the ``model-index`` of the card) for the headline metrics.

    Runs on part of a known test set are left out: the Hub shows model-index figures as the model's results on
    the benchmark, and a subset's figures are not comparable (they stay in the card's table, marked as a subset).
    """
    from huggingface_hub import EvalResult

    results = []
    for summary in summaries:
        if summary.num_images is not None and summary.full_test_set_size and summary.num_images != summary.full_test_set_size:
            continue
        for metric in HEADLINE_METRICS:
            if metric in summary.metrics:
                results.append(EvalResult(
                    task_type="image-to-image", task_name="Motion deblurring",
                    dataset_type=_slug(summary.dataset), dataset_name=summary.label, dataset_split="test",
                    metric_type=metric.lower(), metric_name=metric, metric_value=round(summary.metrics[metric], 4),
                ))
    return results


# ---------------------------------------------------------------------------------------------------- model card
def _model_config(pipe_or_folder) -> dict:
    """The pieces of the model's configuration the card describes, from a pipeline object or a saved folder."""
    if isinstance(pipe_or_folder, (str, os.PathLike)):
        folder = Path(pipe_or_folder)

        def read(component: str) -> dict | None:
            path = folder / component / "config.json"
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

        unet, vae, kcn = read("unet"), read("vae"), read("kernel_controlnet")
    else:
        pipe = pipe_or_folder
        unet, vae = dict(pipe.unet.config), dict(pipe.vae.config)
        kcn = dict(pipe.kernel_controlnet.config) if pipe.kernel_controlnet is not None else None
    if unet is None or vae is None:
        raise ValueError(f"{pipe_or_folder}: no unet/ or vae/ config; pass a folder made by FideDiffPipeline.save_pretrained")
    return {"unet": unet, "vae": vae, "kernel_controlnet": kcn}


def detect_base_model(unet_config: Mapping) -> str | None:
    """``stabilityai/stable-diffusion-2-1-base`` when the UNet has its exact shapes, else None (e.g. the tiny preset)."""
    reference = sd21_base_unet_config()
    keys = ("block_out_channels", "cross_attention_dim", "layers_per_block", "down_block_types", "in_channels")
    same = all(list(unet_config.get(k) or []) == list(reference[k]) if isinstance(reference[k], tuple)
               else unet_config.get(k) == reference[k] for k in keys)
    return SD21_BASE_REPO if same else None


def usage_snippet(repo_id: str, image_path: str = "blurry.png") -> str:
    """The Python usage example of the card (tested by running it against a local folder)."""
    return f'''import torch
from diffusers import DiffusionPipeline
from diffusers.utils import load_image

# trust_remote_code: the pipeline's code ships with the weights (no extra package needed).
pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)
pipe = pipe.to("cuda" if torch.cuda.is_available() else "cpu")

blurry = load_image("{image_path}")  # RGB, turned as its EXIF says (phone photos)
out = pipe(blurry, timestep="auto", upscale_factor=2, return_kernels=False)
out.images[0].save("sharp.png")
print("blur level t =", out.timesteps[0], f"(about {{out.timesteps[0] / 20 + 1:.0f}} averaged frames)")'''


def _parameter_count(pipe_or_folder) -> int | None:
    try:
        if isinstance(pipe_or_folder, (str, os.PathLike)):
            from safetensors import safe_open

            total = 0
            for path in Path(pipe_or_folder).glob("*/*.safetensors"):
                with safe_open(str(path), framework="pt") as f:
                    for key in f.keys():
                        shape = f.get_slice(key).get_shape()
                        count = 1
                        for dim in shape:
                            count *= dim
                        total += count
            return total or None
        pipe = pipe_or_folder
        return sum(p.numel() for name in ("vae", "unet", "prompt_embedding", "kernel_controlnet")
                   if getattr(pipe, name, None) is not None for p in getattr(pipe, name).parameters())
    except Exception:  # the count is a nicety of the card, never a reason to fail
        return None


def _model_details(config: dict, base_model: str | None, parameters: int | None) -> str:
    unet, vae, kcn = config["unet"], config["vae"], config["kernel_controlnet"]
    vae_factor = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    lines = [
        f"- **Base model:** {f'[{base_model}](https://huggingface.co/{base_model})' if base_model else 'none (a small model of the same architecture, trained from scratch)'}",
        f"- **UNet:** block channels {list(unet.get('block_out_channels', []))}, cross-attention dim "
        f"{unet.get('cross_attention_dim')}; epsilon prediction, one step.",
        f"- **VAE:** downsampling factor {vae_factor}, {vae.get('latent_channels')} latent channels.",
        (f"- **Kernel ControlNet:** {kcn.get('kernel_size')}x{kcn.get('kernel_size')} per-pixel kernels and t-prediction."
         if kcn else "- **Kernel ControlNet:** none (base model: `timestep=\"auto\"` uses t = 200)."),
    ]
    if parameters:
        lines.append(f"- **Parameters:** {parameters / 1e6:.1f} M in total.")
    return "\n".join(lines)


LIMITATIONS = """\
- FideDiff restores **motion blur** (camera shake, moving objects) of the kind in GoPro-style data: blur levels
  around t = 80 to 280 (5 to 15 averaged 240 fps frames). Defocus blur, heavy noise, compression artefacts and
  very long blur trails are outside what it was trained for.
- It is a generative model: with one step it favours fidelity, but on severe blur it can still invent texture
  (text and faces in particular). Do not use the output as evidence.
- `timestep="auto"` relies on the t-regressor; when it misjudges the blur level, pass `timestep=` yourself
  (`t = 20 (n - 1)` for `n` averaged frames; GoPro's test blur is t = 200).
- `upscale_factor=2` (d = 4) gives more detail than `upscale_factor=1` (d = 8) at about 4x the cost. Large images
  are tiled in latent space with blended overlaps; memory stays bounded, time grows with the pixel count.
- Inputs above 40 MP are refused by default (a guard against decompression bombs; `max_pixels=` changes it).
"""
TINY_LIMITATION = """\
- **This is a tiny model** (a few million parameters, no pretrained prior) trained on a handful of photos on a
  CPU. It exists to exercise the code path end to end (tests, the offline demo); its restorations are weak. Use
  a model built on Stable Diffusion 2.1-base for real images.
"""


def build_model_card(
    pipe_or_folder,
    repo_id: str,
    eval_results=None,
    license: str | None = None,
    base_model: str | None | bool = True,
    model_name: str | None = None,
):
    """The model card (a `huggingface_hub.ModelCard`) for a FideDiff pipeline object or saved folder.

    Args:
        pipe_or_folder: a `FideDiffPipeline` or a folder made by its ``save_pretrained``.
        repo_id: the Hub repo the card describes (used in the usage snippet).
        eval_results: ``fidediff eval`` summaries (paths to ``summary.json``, dicts, `EvalSummary`), or None.
        license: the model's licence identifier; by default ``openrail++`` for weights built on SD 2.1 (they stay
            under its CreativeML Open RAIL++-M licence) and ``apache-2.0`` (the code's licence) otherwise.
        base_model: True detects it from the UNet's shapes; a repo id or None sets it.
        model_name: the card's title (default: the repo name).

    Example:
        >>> from fidediff_pipeline.presets import build_pipeline
        >>> card = build_model_card(build_pipeline("tiny"), "user/fidediff-tiny")
        >>> card.data.library_name, card.data.pipeline_tag, card.data.base_model
        ('diffusers', 'image-to-image', None)
    """
    from huggingface_hub import ModelCard, ModelCardData

    config = _model_config(pipe_or_folder)
    if base_model is True:
        base_model = detect_base_model(config["unet"])
    license = license or (SD21_LICENSE if base_model == SD21_BASE_REPO else LICENSE)
    summaries = _read_all(eval_results)
    model_name = model_name or repo_id.rstrip("/").split("/")[-1]
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="image-to-image",
        license=license,
        tags=list(TAGS),
        base_model=base_model or None,
        model_name=model_name,
        eval_results=eval_results_for_model_index(summaries) or None,
        metrics=sorted({m.lower() for s in summaries for m in s.metrics if m in HEADLINE_METRICS}) or None,
    )
    table = evaluation_table_markdown(summaries)
    evaluation = table if table else "No evaluation results were attached to this upload (see `fidediff eval`)."
    limitations = (LIMITATIONS + TINY_LIMITATION) if base_model is None else LIMITATIONS
    body = f"""
# {model_name}

One-step motion deblurring with **FideDiff** ({PAPER_TITLE}), as a 🧨 diffusers pipeline. The blur level is
treated as a diffusion timestep (t = 20 (n - 1) for n averaged frames of a 240 fps video); a consistency-trained
UNet restores the sharp image in a single step, and a Kernel ControlNet estimates a blur kernel at every pixel
and the blur level itself.

## Model details

{_model_details(config, base_model, _parameter_count(pipe_or_folder))}

## Usage

```python
{usage_snippet(repo_id)}
```

With the `fidediff-pipeline` package installed, `FideDiffPipeline.from_pretrained("{repo_id}")` loads the same
weights, and the command line deblurs files and folders: `fidediff deblur --model {repo_id} blurry.png -o out/`.
`pipe(..., return_kernels=True)` also returns the estimated per-pixel kernels.

## Evaluation

{evaluation}

The paper's figures for FideDiff (d = 4, Kernel ControlNet) on GoPro are PSNR 28.79, SSIM 0.9148, LPIPS 0.0831,
DISTS 0.0525 (SSIM as MATLAB's 3-D SSIM on RGB, the usual GoPro/HIDE script).

## Limitations

{limitations}
## Citation

{PAPER_TITLE}. The method is described in the FideDiff paper; this implementation is independent of the
authors' code.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None, eval_results=None, **card_kwargs) -> Path:
    """Write ``README.md`` (the model card) into a saved pipeline folder; returns its path. No network.

    A README.md already there is the folder's own card (written by hand, or generated and then edited): it is
    never replaced, and :class:`HubError` says so. ``repo_id`` defaults to the folder's name; see
    `build_model_card` for the other arguments.
    """
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} has no model_index.json; pass a folder made by FideDiffPipeline.save_pretrained")
    path = folder / "README.md"
    if path.exists():
        raise HubError(f"{path} exists and is kept (it is the card a push uploads); move it away to write a new one")
    card = build_model_card(folder, repo_id or folder.resolve().name, eval_results, **card_kwargs)
    with atomic_path(path) as tmp:
        card.save(tmp)
    return path


def own_model_card(folder: str | os.PathLike, eval_results=None) -> Path | None:
    """The folder's own README.md, which a push uploads as the card as it is (as diffusers keeps an existing
    card), or None when it has none (a card is generated). With ``eval_results`` and a card of its own,
    :class:`HubError`: the results would silently not appear on the Hub."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return None
    if eval_results:
        raise HubError(f"{path} is this folder's model card and is uploaded as it is, so the evaluation results "
                       "would not appear in it: add them to it, or move it away to upload a generated card with them")
    return path


# ---------------------------------------------------------------------------------------------------- upload
def check_hub_access(token: str | None = None) -> str:
    """Fail fast with a clear message when an upload cannot work: offline mode, or no token. Returns the token."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise HubError(
            "cannot push to the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE=1). Unset it on a machine "
            "with internet access, or write the model card only with `fidediff push --dry-run`."
        )
    token = token or get_token()
    if not token:
        raise HubError(
            "cannot push to the Hugging Face Hub: no token. Log in with `hf auth login` (or `huggingface-cli login`), "
            "set HF_TOKEN, or pass token=... / --token."
        )
    return token


def check_repo_id(repo_id: str) -> None:
    """Raise `HubError` unless ``repo_id`` is ``name`` or ``owner/name`` as the Hub spells them."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", repo_id or "") or "--" in repo_id or ".." in repo_id:
        raise HubError(f"{repo_id!r} is not a valid Hub repo id; use 'name' or 'owner/name' (letters, digits, - _ .)")


def _without_local_paths(path: Path, clean_copy: Path) -> Path:
    """``path``, or for a JSON config holding ``_name_or_path`` (a folder on this machine) a copy without it."""
    if path.suffix != ".json" or path.name not in ("model_index.json", "config.json", "scheduler_config.json"):
        return path
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return path
    if not isinstance(data, dict) or "_name_or_path" not in data:
        return path
    data.pop("_name_or_path")
    clean_copy.parent.mkdir(parents=True, exist_ok=True)
    clean_copy.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return clean_copy


def upload_plan(folder: str | os.PathLike, scratch: str | os.PathLike) -> dict[str, Path]:
    """What a push uploads besides README.md: ``{path in repo: local file}``, sorted.

    The folder's files (no caches or temporary files; configs without ``_name_or_path``), with the remote-code files
    and their ``model_index.json`` (`remote_code_files`) written under ``scratch`` in place of the folder's own.
    """
    folder, scratch = Path(folder), Path(scratch)
    plan = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and "__pycache__" not in path.parts and relative != "README.md" and not is_temporary(path):
            plan[relative] = path
    for relative, text in remote_code_files(folder).items():
        target = scratch / "code" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        plan[relative] = target
    return {relative: _without_local_paths(path, scratch / "clean" / relative) for relative, path in sorted(plan.items())}


@contextlib.contextmanager
def _network_errors_as_hub_errors(repo_id: str):
    """A connection failure (httpx / requests) is one line naming the repo, not a transport traceback."""
    transport: tuple = ()
    with contextlib.suppress(ImportError):
        import httpx

        transport += (httpx.TransportError,)
    with contextlib.suppress(ImportError):
        import requests

        transport += (requests.ConnectionError, requests.Timeout)
    try:
        yield
    except transport as err:
        raise HubError(f"cannot reach the Hugging Face Hub to push {repo_id}: {type(err).__name__}: {err}. "
                       "Check the network connection (or a proxy) and try again; nothing was committed.") from None


def push_pipeline_to_hub(
    pipe_or_folder,
    repo_id: str,
    eval_results=None,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload FideDiff pipeline",
    license: str | None = None,
    base_model: str | None | bool = True,
    create_pr: bool = False,
) -> str:
    """Upload a FideDiff pipeline with its model card; returns the repo's URL.

    Offline mode, a missing token, a bad repo id or unreadable evaluation files raise `HubError` / `ValueError`
    before anything is saved or uploaded.

    Args:
        pipe_or_folder: a `FideDiffPipeline` (saved to a temporary folder first) or a folder made by its
            ``save_pretrained`` (uploaded as is; its own README.md is the card, else one is generated).
        repo_id: ``"owner/name"`` (or ``"name"`` under your account).
        eval_results: ``fidediff eval`` summaries for the card's evaluation table (paths or dicts).

    Example:
        >>> push_pipeline_to_hub("fidediff-sd21", "me/fidediff", eval_results=["eval/gopro/summary.json"])  # doctest: +SKIP
        'https://huggingface.co/me/fidediff'
    """
    token = check_hub_access(token)
    check_repo_id(repo_id)
    summaries = _read_all(eval_results)  # a bad JSON fails here, before the upload
    own_card = None
    if isinstance(pipe_or_folder, (str, os.PathLike)):
        folder = Path(pipe_or_folder)
        if not (folder / "model_index.json").is_file():
            raise ValueError(f"{folder} has no model_index.json; pass a folder made by FideDiffPipeline.save_pretrained")
        own_card = own_model_card(folder, summaries)

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    staging = None
    try:
        if isinstance(pipe_or_folder, (str, os.PathLike)):
            folder = Path(pipe_or_folder)
            card = None if own_card else build_model_card(folder, repo_id, summaries, license=license,
                                                          base_model=base_model)
        else:
            staging = Path(tempfile.mkdtemp(prefix="fidediff-push-"))
            pipe_or_folder.save_pretrained(staging)
            folder = staging
            card = build_model_card(pipe_or_folder, repo_id, summaries, license=license, base_model=base_model)
        with _network_errors_as_hub_errors(repo_id):
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        full_id = repo_url.repo_id
        with tempfile.TemporaryDirectory(prefix="fidediff-card-") as card_dir:
            card_path = own_card or Path(card_dir) / "README.md"
            if card is not None:
                card.save(card_path)
            # The card goes in the same commit as the weights: the folder's own README.md, else the generated one.
            from huggingface_hub import CommitOperationAdd

            operations = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card_path))]
            for relative, source in upload_plan(folder, Path(card_dir) / "upload").items():
                operations.append(CommitOperationAdd(path_in_repo=relative, path_or_fileobj=str(source)))
            with _network_errors_as_hub_errors(repo_id):
                api.create_commit(full_id, operations=operations, commit_message=commit_message, create_pr=create_pr,
                                  repo_type="model")
        return str(repo_url)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
