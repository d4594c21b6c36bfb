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

from fidediff_pipeline.atomic_io import save_image_atomic

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


def _screenshot(page, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _png16(path: Path, size=(120, 80)) -> Path:
    """The cat example as a 16-bit RGB PNG, with values between the 8-bit levels."""
    with Image.open(REPO_ROOT / "assets" / "chelsea_linear13_20deg.png") as image:
        rgb = np.asarray(image.convert("RGB").resize(size, Image.Resampling.LANCZOS), np.float64) / 255.0
    rgb = (rgb * 0.98 + 0.01 + np.random.default_rng(0).random(rgb.shape) / 300).clip(0, 1)
    save_image_atomic(rgb, path)  # a float array: written as a 16-bit RGB PNG
    return path


def test_upload_deblur_and_see_the_result(server, page, tmp_path):
    page.goto(server["url"], wait_until="networkidle")
    assert page.get_by_text("Photos up to 1 megapixels", exact=False).count() >= 1  # the stated pixel limit
    _upload(page, _photo(tmp_path / "cat.png"))
    # Before any run: the time estimate for this photo and the chosen setting.
    estimate = page.locator("#estimate")
    estimate.get_by_text("Estimated time:").wait_for(timeout=60_000)
    assert "120 x 80" in estimate.inner_text() and '"Faster"' in estimate.inner_text()
    page.get_by_role("button", name="Deblur").click()

    blur_level = page.locator("#blur-level")
    blur_level.get_by_text("Blur: about").wait_for(timeout=180_000)
    text = blur_level.inner_text()
    assert "frames at 240 fps" in text and " ms of motion" in text and "Blur length:" in text

    # The before/after slider shows two loaded images; the kernel picture and the PNG download are there. Wait for
    # the three full-resolution images themselves (waiting for any three let the kernel picture count, a race).
    page.wait_for_function(
        "() => [...document.querySelectorAll('img')].filter("
        "i => i.complete && i.naturalWidth === 120 && i.naturalHeight === 80).length >= 3",
        timeout=30_000,
    )
    sizes = page.evaluate("() => [...document.querySelectorAll('img')].map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes.count([120, 80]) >= 3  # the input preview and both sides of the slider, at full resolution
    page.get_by_text("cat_fidediff", exact=False).first.wait_for(timeout=30_000)  # the full-resolution PNG
    _screenshot(page, "app_browser.png")


def test_corrupt_upload_error_title_at_upload_time(server, page, tmp_path):
    page.goto(server["url"], wait_until="networkidle")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    _upload(page, broken)  # no Deblur click: the upload itself is checked
    page.get_by_text("Cannot read this image.", exact=False).first.wait_for(timeout=60_000)
    assert page.get_by_text("not an image file that can be read", exact=False).count() >= 1
    assert page.get_by_text("broken.png", exact=False).count() >= 1
    assert page.get_by_text("Traceback").count() == 0
    page.wait_for_timeout(1000)  # let the toast finish fading in before the screenshot
    _screenshot(page, "app_browser_bad_upload.png", full_page=False)  # the viewport: the toast is fixed there


def test_16bit_png_round_trip(server, page, tmp_path):
    page.goto(server["url"], wait_until="networkidle")
    _upload(page, _png16(tmp_path / "deep.png"))
    page.locator("#estimate").get_by_text("16-bit PNG", exact=False).wait_for(timeout=60_000)
    page.get_by_role("button", name="Deblur").click()
    page.locator("#blur-level").get_by_text("Blur: about").wait_for(timeout=180_000)
    page.get_by_text("deep_fidediff", exact=False).first.wait_for(timeout=30_000)
    link = page.locator("a[href*='deep_fidediff']").first
    response = page.request.get(link.get_attribute("href"))
    data = response.body()
    assert response.ok and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[24] == 16 and data[25] == 2  # 16 bits per channel, RGB
    _screenshot(page, "app_browser_16bit.png")


def test_demo_notice_and_examples_match_the_controls(server, page):
    page.goto(server["url"], wait_until="networkidle")
    notice = page.locator("#demo-notice")
    assert notice.is_visible()
    text = notice.inner_text()
    assert "small CPU demo model" in text and "modest sharpening on mild blur" in text
    assert "FIDEDIFF_MODEL=<folder or Hub id> python app.py" in text
    # The method is one click away, not in the way.
    assert page.get_by_role("button", name="How it works").count() >= 1
    assert not page.get_by_text("Kernel ControlNet estimates a blur kernel", exact=False).first.is_visible()

    radio_labels = {"More detail (slower)", "Faster"}
    for label in radio_labels:
        assert page.get_by_label(label, exact=True).count() == 1, label
    # The example buttons (their labels are "what · blur · detail setting").
    examples = page.get_by_role("button").filter(has_text=" · ")
    cells = [examples.nth(i).inner_text().strip() for i in range(examples.count())]
    assert len(cells) == 3, cells
    for cell in cells:
        assert cell.rsplit(" · ", 1)[-1] in radio_labels, cell  # each example names a choice the radio offers
        assert "d = " not in cell
    # Clicking an example sets the very option its label names.
    for index in (2, 0):
        examples.nth(index).click()
        wanted = cells[index].rsplit(" · ", 1)[-1]
        page.wait_for_function(
            "(label) => { const l = document.querySelector(`[data-testid='${label}-radio-label'] input`);"
            " return l !== null && l.checked; }", arg=wanted, timeout=30_000,
        )
    _screenshot(page, "app_browser_notice_examples.png")
