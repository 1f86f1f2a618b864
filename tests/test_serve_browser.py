"""The web page of ``imgclass serve`` in a real (headless) Chromium, against a real uvicorn server.

A ``smallcnn`` bundle (1 epoch, 32 px) is served with an API key on a free loopback port. The page
asks for the key, takes an image through its file input, shows the top-k classes as bars whose
labels and percentages match the API's answer for the same image, and overlays the Grad-CAM heatmap
when toggled. Every request the page makes goes to the server itself.

Needs Debian's Chromium at /usr/bin/chromium and the ``playwright`` Python package (its own browser
downloads are not used); skipped when either is missing.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, sync_playwright_or_skip, write_colour_dataset
from PIL import Image

import imgclass

pytestmark = pytest.mark.browser

KEY = "page-test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app):
    """uvicorn serving ``app`` in a background thread on a free loopback port; yields the base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def pct(p: float) -> str:
    """The page's percentage text (JavaScript's Math.round, not Python's banker's rounding)."""
    return "<1%" if 0 < p < 0.005 else f"{math.floor(p * 100 + 0.5)}%"


BARS_JS = """() => Array.from(document.querySelectorAll('#bars .bar')).map(li => ({
    label: li.dataset.label, probability: parseFloat(li.dataset.probability),
    text: li.querySelector('.name').textContent, pct: li.querySelector('.pct').firstChild.textContent,
    width: li.querySelector('.fill').getBoundingClientRect().width,
    track: li.querySelector('.track').getBoundingClientRect().width}))"""


def test_page_predicts_and_overlays_gradcam(tmp_path):
    sync_playwright = sync_playwright_or_skip()
    from imgclass.serve import create_app

    data = write_colour_dataset(tmp_path / "colours", seed=3)
    model = imgclass.train(data, method="smallcnn", img_size=32, n_jobs=1, seed=0,
                           train_config={"epochs": 1, "batch_size": 16})
    model.save(tmp_path / "model")
    rng = np.random.default_rng(5)
    query = tmp_path / "query.png"
    Image.fromarray(np.clip(np.asarray((200, 40, 40))[None, None] + rng.normal(0, 25, (48, 48, 3)), 0, 255)
                    .astype(np.uint8)).save(query)

    requested: list[str] = []
    with running_server(create_app(tmp_path / "model", api_key=KEY)) as url:
        api = httpx.post(url + "v1/predict?top_k=5", files={"file": ("query.png", query.read_bytes(), "image/png")},
                         headers={"X-API-Key": KEY}, timeout=30).json()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                page.on("request", lambda req: requested.append(req.url))
                page.goto(url, wait_until="load", timeout=30_000)
                # the server wants a key: the page asks for it, then loads the model info
                page.wait_for_selector("#key-box:not([hidden])", timeout=10_000)
                page.fill("#api-key", KEY)
                page.click("#key-save")
                # a selector wait, not wait_for_function: that one evals a string, which the page's CSP forbids
                page.wait_for_selector("#model-name:has-text('smallcnn')", timeout=10_000)
                info = page.inner_text("#model-info")
                assert "blue, green, red" in info and "gradcam" in info

                page.set_input_files("#file", str(query))
                page.wait_for_selector("body[data-state=predicted] #bars .bar", timeout=20_000)
                bars = page.evaluate(BARS_JS)
                assert [b["label"] for b in bars] == [t["label"] for t in api["top"]]
                assert [b["text"] for b in bars] == [t["label"] for t in api["top"]]
                np.testing.assert_allclose([b["probability"] for b in bars], [t["probability"] for t in api["top"]],
                                           atol=1e-6)
                assert [b["pct"] for b in bars] == [pct(t["probability"]) for t in api["top"]]
                for b in bars:  # bar length follows the probability
                    assert b["width"] == pytest.approx(b["probability"] * b["track"], abs=1.5)
                summary = page.inner_text("#summary")
                assert summary == " · ".join(f"{t['label']} {pct(t['probability'])}" for t in api["top"])
                assert page.evaluate("document.querySelector('#preview').naturalWidth") == 48

                # Grad-CAM overlay on, off, on again (cached)
                page.check("#cam-toggle")
                page.wait_for_selector("body[data-overlay=shown] #overlay:not([hidden])", timeout=30_000)
                assert page.evaluate("document.querySelector('#overlay').naturalWidth") == 32
                assert "gradcam" in page.inner_text("#cam-status")
                page.screenshot(path=str(tmp_path / "serve-page.png"), full_page=True)
                page.uncheck("#cam-toggle")
                assert page.is_hidden("#overlay")
                page.check("#cam-toggle")
                assert page.is_visible("#overlay")
            finally:
                browser.close()
    shot = tmp_path / "serve-page.png"
    assert shot.read_bytes().startswith(b"\x89PNG") and Image.open(shot).size[0] == 1200
    assert requested and all(u.startswith(url) or u.startswith(("blob:", "data:")) for u in requested), requested
    assert any(u.endswith("/v1/explain") for u in requested)


def test_docs_page_renders_offline_from_shipped_files(tmp_path):
    """``/docs`` draws the API's operations with the Swagger UI files the server ships: no CDN request,
    no script error, and with a key the page itself needs it."""
    sync_playwright = sync_playwright_or_skip()
    from imgclass.serve import create_app

    data = write_colour_dataset(tmp_path / "colours", n_per_class=6, size=12, seed=2)
    imgclass.train(data, method="color_hist+logreg", n_jobs=1, seed=0).save(tmp_path / "model")
    requested: list[str] = []
    errors: list[str] = []
    with running_server(create_app(tmp_path / "model", warmup=False)) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
            try:
                page = browser.new_page()
                page.on("request", lambda req: requested.append(req.url))
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(url + "docs", wait_until="load", timeout=30_000)
                page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
                ops = page.inner_text(".swagger-ui")
                assert "/v1/predict" in ops and "/v1/explain" in ops
            finally:
                browser.close()
    assert not errors, errors
    assert all(u.startswith(url) or u.startswith(("blob:", "data:")) for u in requested), requested
    assert any(u.endswith("/openapi.json") for u in requested)
    with running_server(create_app(tmp_path / "model", api_key=KEY, warmup=False)) as url:
        assert httpx.get(url + "docs", timeout=30).status_code == 401
        assert httpx.get(url + "docs", headers={"X-API-Key": KEY}, timeout=30).status_code == 200
