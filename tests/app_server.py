"""Start the demo (``python app.py``) on 127.0.0.1 in a subprocess, once per test run, for the app tests.

Both tests/test_app.py and tests/test_app_browser.py use the same server: starting Gradio, torch and the model
costs about 15 s on 2 CPU cores. The model is a random tiny pipeline saved in a temporary folder; the server gets a
copy with a model card tagged ``tiny``, as the bundled checkpoint has, so the page shows its demo-model notice.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# A small limit keeps the "too large" test cheap: a 1.2 MP solid-colour PNG is a few kilobytes.
TEST_MAX_PIXELS = 1_000_000
_SERVER: dict | None = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_env(model_folder: Path, work_dir: Path, **extra: str) -> dict:
    """Environment for the app: the model, no network, Gradio's caches in the test's folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADIO_", "FIDEDIFF_"))}
    env.update(
        FIDEDIFF_MODEL=str(model_folder),
        FIDEDIFF_MAX_PIXELS=str(TEST_MAX_PIXELS),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(work_dir / "gradio_tmp"),
        GRADIO_EXAMPLES_CACHE=str(work_dir / "examples_cache"),
        PYTHONPATH=str(REPO_ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def get_app_server(model_folder: Path, work_dir: Path, timeout: float = 180.0) -> dict:
    """``{"url", "process", "log"}`` of the running demo; started at the first call, stopped at exit."""
    global _SERVER
    if _SERVER is not None and _SERVER["process"].poll() is None:
        return _SERVER
    port = free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "app.log"
    served_model = work_dir / "model"
    shutil.copytree(model_folder, served_model, dirs_exist_ok=True)
    (served_model / "README.md").write_text("---\ntags: [fidediff, tiny]\n---\n# A random tiny test model\n")
    env = app_env(served_model, work_dir, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    atexit.register(_stop, process)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with code {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        _stop(process)
        raise RuntimeError(f"the app did not answer within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
    _SERVER = {"url": url, "process": process, "log": log_path}
    return _SERVER


def server_log() -> str:
    return _SERVER["log"].read_text() if _SERVER else ""
