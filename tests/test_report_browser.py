"""A training run's ``report.html`` opened in a real (headless) Chromium: every inlined image decodes,
the page asks for nothing over the network, and it renders to a screenshot.

Needs Debian's Chromium at /usr/bin/chromium and the ``playwright`` Python package (its own browser
downloads are not used); skipped when either is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, sync_playwright_or_skip, write_colour_dataset
from PIL import Image

import imgclass

pytestmark = pytest.mark.browser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: close colours, so the tiny model makes some mistakes and the top-losses gallery has real losses
NEAR_COLOURS = {"red": (170, 70, 60), "orange": (175, 95, 50), "blue": (50, 60, 190)}

#: what the page reports about each <img>, after the load event
IMAGES_JS = """() => Array.from(document.images).map(img => ({
    alt: img.getAttribute('alt') || '', cls: img.className, complete: img.complete,
    width: img.naturalWidth, height: img.naturalHeight, src: img.currentSrc.slice(0, 32)}))"""


def open_report(report: Path, screenshot: Path) -> tuple[list[dict], list[str]]:
    """Load ``report`` in headless Chromium, save a full-page PNG to ``screenshot``; return the
    page's images (as ``IMAGES_JS`` describes them) and every URL the page requested.

    Anything other than ``file:`` / ``data:`` is recorded and aborted, never fetched."""
    requested: list[str] = []

    def route(r):
        requested.append(r.request.url)
        if r.request.url.startswith(("file:", "data:")):
            r.continue_()
        else:
            r.abort()

    with sync_playwright_or_skip()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.route("**/*", route)
            page.on("request", lambda req: requested.append(req.url))
            page.goto(report.resolve().as_uri(), wait_until="load", timeout=30_000)
            images = page.evaluate(IMAGES_JS)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return images, requested


def check_report_in_browser(report: Path, screenshot: Path) -> list[dict]:
    """All the browser-side assertions on one report file (also used on corrupted copies by hand)."""
    images, requested = open_report(report, screenshot)
    assert images, "the report has no <img> at all"

    confusion = [im for im in images if im["alt"] == "confusion matrix"]
    gallery = [im for im in images if "thumb" in im["cls"].split()]
    assert len(confusion) == 2, f"expected the counts and normalised confusion matrices, got {confusion}"
    assert all(im["width"] > 0 and im["height"] > 0 for im in confusion), f"confusion matrix not decoded: {confusion}"
    assert any(im["width"] > 0 for im in gallery), f"no gallery thumbnail decoded: {gallery}"
    broken = [im for im in images if not (im["complete"] and im["width"] > 0 and im["height"] > 0)]
    assert not broken, f"images that did not load: {broken}"

    # self-contained: nothing but the file itself and inlined data: URIs
    external = [u for u in requested if not u.startswith(("file:", "data:"))]
    assert not external, f"the report requested {external}"
    assert all(im["src"].startswith("data:image/") for im in images)

    data = screenshot.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    with Image.open(screenshot) as shot:
        shot.load()
        assert shot.format == "PNG" and shot.width == 1280 and shot.height >= 800
    return images


@pytest.mark.slow
def test_training_report_images_load_in_chromium(tmp_path):
    sync_playwright_or_skip()  # skip before training when the browser or playwright is missing
    data = write_colour_dataset(tmp_path / "data", n_per_class=12, size=20, seed=5, classes=NEAR_COLOURS)
    model = imgclass.train(data, method="hog+logreg", out=tmp_path / "run", n_jobs=1, seed=0)
    report = Path(model.run_dir) / "report.html"
    assert report.is_file()

    images = check_report_in_browser(report, tmp_path / "report.png")
    gallery = [im for im in images if "thumb" in im["cls"].split()]
    assert len(gallery) >= 1 and all(im["width"] <= 112 and im["height"] <= 112 for im in gallery)
