"""End to end in a real headless Chromium: upload an image, deblur it, see the result; a screenshot is saved.

Needs Debian's ``chromium`` (``apt-get install chromium chromium-driver fonts-dejavu-core``) and Python
``playwright`` (pip; no browser download: it drives the system Chromium). Skipped, with the reason, where either
is missing. Screenshots go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_server import REPO_ROOT, get_app_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM = next((p for p in CHROMIUM_CANDIDATES if os.access(p, os.X_OK)), None) or shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"

if CHROMIUM is None:
    pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver fonts-dejavu-core)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Python playwright is not installed (pip install playwright)")


@pytest.fixture(scope="module")
def server(tiny_pipeline_folder, tmp_path_factory):
    return get_app_server(tiny_pipeline_folder, tmp_path_factory.mktemp("app_server"))


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        # A fresh profile folder per test: no state from an earlier run, nothing written to the home folder.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1100},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def _photo(path: Path) -> Path:
    """A blurry-looking test picture: the clock example, downscaled so the CPU run stays short."""
    with Image.open(REPO_ROOT / "assets" / "chelsea_linear13_20deg.png") as image:
        image.convert("RGB").resize((120, 80), Image.Resampling.LANCZOS).save(path)
    return path


def _upload(page, path: Path) -> None:
    page.locator("input[type=file]").first.set_input_files(str(path))


def test_upload_deblur_and_see_the_result(server, page, tmp_path):
    page.goto(server["url"], wait_until="networkidle")
    assert page.get_by_text("images up to 1 megapixels", exact=False).count() >= 1  # the stated pixel limit
    _upload(page, _photo(tmp_path / "cat.png"))
    page.get_by_role("button", name="Deblur").click()

    blur_level = page.locator("#blur-level")
    blur_level.get_by_text("Blur level: t =").wait_for(timeout=180_000)
    assert "averaged 240 fps frames" in blur_level.inner_text()

    # The before/after slider shows two loaded images; the kernel picture and the PNG download are there.
    page.wait_for_function(
        "() => [...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0).length >= 3",
        timeout=30_000,
    )
    sizes = page.evaluate("() => [...document.querySelectorAll('img')].map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes.count([120, 80]) >= 3  # the input preview and both sides of the slider, at full resolution
    page.get_by_text("cat_fidediff", exact=False).first.wait_for(timeout=30_000)  # the full-resolution PNG

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_browser.png"), full_page=True)


def test_bad_upload_shows_a_readable_error(server, page, tmp_path):
    page.goto(server["url"], wait_until="networkidle")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    _upload(page, broken)
    page.get_by_role("button", name="Deblur").click()
    toast = page.get_by_text("not an image file that can be read", exact=False)
    toast.first.wait_for(timeout=60_000)
    assert page.get_by_text("Traceback").count() == 0
    page.wait_for_timeout(1000)  # let the toast finish fading in before the screenshot
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_browser_bad_upload.png"))  # the viewport: the toast is fixed there
