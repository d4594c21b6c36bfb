"""The Space under load: how many deblurs its queue serves or refuses, and how long visitors wait.

Starts the demo (``python app.py``) on 127.0.0.1 in a subprocess, with the queue limits it chooses itself (see
``QUEUE`` in app.py; the ``FIDEDIFF_*`` variables of this environment are passed on, so other limits can be
measured too), then with ``gradio_client``, one client per simulated visitor:

1. ``reference``: one deblur of a 1280x720 photo alone, to check the seconds per deblur the queue was sized with;
2. ``8 concurrent``: 8 visitors press Deblur at the same moment;
3. ``20 queued``: 20 visitors press Deblur at the same moment.

The photo is a held-out one (scikit-image's ``coffee``, not in the tiny model's training set), centre-cropped to
``--size`` and blurred with an 11 px straight motion kernel in linear light. Per request: served or refused (and the
message), the latency from submission to result, the server's own processing time (from the result text).

    python benchmarks/space_load.py --size 256 --out benchmarks/results/space_load_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fidediff_pipeline.atomic_io import write_text_atomic  # noqa: E402
from fidediff_pipeline.data.trajectories import blur_with_kernel  # noqa: E402
from fidediff_pipeline.kernel_ops import linear_motion_kernel  # noqa: E402

SETTINGS_PREFIX = "FideDiff queue settings: "
BLUR_LENGTH, BLUR_ANGLE = 11, 30


def blurry_photo(path: Path, width: int, height: int) -> dict:
    """scikit-image's coffee (600x400, CC0), centre crop to the aspect of ``width x height``, resized, blurred."""
    import skimage.data

    sharp = Image.fromarray(skimage.data.coffee())
    scale = max(width / sharp.width, height / sharp.height)
    if scale > 1:  # larger than the photo: enlarge it first (timing only)
        sharp = sharp.resize((round(sharp.width * scale), round(sharp.height * scale)), Image.Resampling.BICUBIC)
    left, top = (sharp.width - width) // 2, (sharp.height - height) // 2
    sharp = np.asarray(sharp.crop((left, top, left + width, top + height)))
    blurry = blur_with_kernel(sharp, linear_motion_kernel(BLUR_LENGTH, BLUR_ANGLE))
    Image.fromarray(np.rint(np.clip(blurry, 0, 1) * 255).astype(np.uint8)).save(path)
    return {"source": "skimage.data.coffee (held out), centre crop" + (", enlarged" if scale > 1 else ""),
            "blur": f"{BLUR_LENGTH} px straight motion at {BLUR_ANGLE} degrees, in linear light (gamma 2.2)",
            "width": width, "height": height}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(work: Path, model: str | None, timeout: float) -> tuple[subprocess.Popen, str, dict, Path]:
    """``python app.py`` on a free port; returns the process, its URL, its queue settings line and its log."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIO_")}
    env.update(
        HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
        GRADIO_TEMP_DIR=str(work / "gradio_tmp"), GRADIO_EXAMPLES_CACHE=str(work / "examples_cache"),
        PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
    )
    if model:
        env["FIDEDIFF_MODEL"] = model
    log_path = work / "app.log"
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the app exited with code {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        process.terminate()
        raise SystemExit(f"the app did not answer within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
    lines = [line for line in log_path.read_text().splitlines() if line.startswith(SETTINGS_PREFIX)]
    if not lines:
        process.terminate()
        raise SystemExit(f"the app printed no queue settings:\n{log_path.read_text()[-3000:]}")
    return process, url, json.loads(lines[-1][len(SETTINGS_PREFIX):]), log_path


def one_request(client, photo: Path, upscale_factor: int, start: threading.Barrier | None, record: dict) -> None:
    from gradio_client import handle_file

    if start is not None:
        start.wait()
    record["submitted_s"] = time.perf_counter()
    try:
        job = client.submit(handle_file(str(photo)), "auto", 200, upscale_factor, api_name="/deblur")
        _, _, text, _ = job.result(timeout=3600)
    except Exception as err:  # noqa: BLE001  (every outcome is recorded)
        record["done_s"] = time.perf_counter()
        name = type(err).__name__
        record["outcome"] = "refused" if name == "QueueError" else "error"
        record["message"] = f"{name}: {err}"
        return
    record["done_s"] = time.perf_counter()
    record["outcome"] = "served"
    match = re.search(r"([\d.]+) s on (cpu|cuda)", text)
    record["processing_s"] = float(match.group(1)) if match else None


def scenario(name: str, url: str, photo: Path, upscale_factor: int, count: int) -> dict:
    """``count`` visitors (one client each, connected beforehand) press Deblur at the same moment."""
    from gradio_client import Client

    clients = [Client(url, verbose=False) for _ in range(count)]
    records = [{"index": i} for i in range(count)]
    start = threading.Barrier(count)
    threads = [threading.Thread(target=one_request, args=(c, photo, upscale_factor, start, r))
               for c, r in zip(clients, records)]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    for client in clients:
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass
    requests = []
    for record in records:
        requests.append({
            "index": record["index"], "outcome": record.get("outcome", "error"),
            "latency_s": round(record["done_s"] - record["submitted_s"], 3),
            "submitted_after_s": round(record["submitted_s"] - t0, 3),
            "processing_s": record.get("processing_s"), "message": record.get("message"),
        })
    served = [r["latency_s"] for r in requests if r["outcome"] == "served"]
    refused = [r for r in requests if r["outcome"] == "refused"]
    return {
        "name": name, "requests": count,
        "served": len(served), "refused": len(refused),
        "errors": sum(r["outcome"] == "error" for r in requests),
        "refusal_messages": sorted({r["message"] for r in refused}),
        "refused_after_s": ({"median": round(statistics.median(r["latency_s"] for r in refused), 3)}
                            if refused else None),
        "latency_s": {"median": round(statistics.median(served), 2), "worst": round(max(served), 2),
                      "best": round(min(served), 2)} if served else None,
        "processing_s_median": round(statistics.median(p for r in requests if (p := r["processing_s"]) is not None), 2)
        if served else None,
        "wall_s": round(wall, 1), "load_average_1min_before": round(load_before, 2),
        "per_request": requests,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="photo size: SIDE or WIDTH HEIGHT")
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--queued", type=int, default=20)
    parser.add_argument("--model", default=None, help="FIDEDIFF_MODEL for the app (default: the app's own choice)")
    parser.add_argument("--no-reference", action="store_true", help="skip the single 1280x720 deblur")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "space_load_cpu.json")
    args = parser.parse_args(argv)
    width, height = (args.size * 2)[:2]

    import gradio
    import gradio_client
    import torch

    work = Path(tempfile.mkdtemp(prefix="fidediff-space-load-"))
    photo = work / "coffee_blurry.png"
    image = blurry_photo(photo, width, height)
    process, url, settings, log_path = start_app(work, args.model, timeout=600)
    print(f"app on {url}; queue settings: {json.dumps(settings)}", flush=True)
    upscale = int(settings["upscale_factor"])
    report: dict = {
        "date": datetime.date.today().isoformat(),
        "environment": {
            "cpu_count": os.cpu_count(), "torch_threads": settings.get("torch_threads"),
            "device": settings.get("device"),
            "zerogpu": settings.get("zerogpu"), "torch": torch.__version__, "gradio": gradio.__version__,
            "gradio_client": gradio_client.__version__, "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "model": args.model or os.environ.get("FIDEDIFF_MODEL") or "the app's default (bundled fidediff-tiny)",
        "image": image, "upscale_factor": upscale, "queue": settings, "scenarios": [],
    }
    try:
        from gradio_client import Client

        warm = {"index": 0}
        one_request(Client(url, verbose=False), photo, upscale, None, warm)  # first call: lazy set-up, not counted
        report["warm_up_latency_s"] = round(warm["done_s"] - warm["submitted_s"], 2)
        if not args.no_reference:
            ref_photo = work / "coffee_blurry_1280x720.png"
            reference = blurry_photo(ref_photo, *settings["reference_size"])
            result = scenario("reference", url, ref_photo, upscale, 1)
            result["image"] = reference
            result["queue_sized_with_s"] = settings["seconds_per_deblur"]
            report["scenarios"].append(result)
            print(f"reference 1280x720: {result['latency_s']} (queue sized with {settings['seconds_per_deblur']} s)",
                  flush=True)
        for name, count in ((f"{args.concurrent} concurrent", args.concurrent), (f"{args.queued} queued", args.queued)):
            result = scenario(name, url, photo, upscale, count)
            report["scenarios"].append(result)
            print(f"{name}: served {result['served']}, refused {result['refused']}, errors {result['errors']}, "
                  f"latency {result['latency_s']}, messages {result['refusal_messages']}", flush=True)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    if "Traceback" in log_path.read_text():
        report["server_log_tail"] = log_path.read_text()[-3000:]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
