"""Shared fixtures: tiny generated image datasets, bad files and one trained model bundle.

Every image is generated here with numpy/Pillow inside pytest's tmp folders; nothing is read from
disk outside them and nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: three visually separable classes: red-, green- and blue-dominant noisy squares
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


#: Debian's Chromium and the flags every browser test launches it with (Playwright's own downloads are not used)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
CHROMIUM_INSTALL_HINT = "apt-get install -y chromium; pip install playwright"


def run_cli(argv):
    """``imgclass`` ``main(argv)`` in this process with stdout/stderr captured: (exit code, stdout, stderr)."""
    from imgclass.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_error(rc, out, err, *needles) -> str:
    """A user error from the CLI: exit code 2, no traceback, one line on stderr naming each of ``needles``."""
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("imgclass: error:"), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def sync_playwright_or_skip():
    """Playwright's sync API, or a skip saying how to install what is missing."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} ({CHROMIUM_INSTALL_HINT})")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"playwright is not importable ({CHROMIUM_INSTALL_HINT})")
    return sync_playwright


@contextlib.contextmanager
def quiet_env(base: Path, **extra: str):
    """What the autouse fixture below sets, for module-scoped fixtures (which run before it); ``extra``
    sets more environment variables."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLASS_JOBS", "1")
        mp.setenv("IMGCLASS_PROGRESS", "0")
        mp.setenv("IMGCLASS_CACHE", str(base / "imgclass-cache"))
        for k, v in extra.items():
            mp.setenv(k, v)
        yield


def colour_array(rgb, rng: np.random.Generator, size: int = 20, noise: float = 25.0) -> np.ndarray:
    base = np.asarray(rgb, dtype=np.float64)[None, None, :]
    return np.clip(base + rng.normal(0.0, noise, (size, size, 3)), 0, 255).astype(np.uint8)


def write_colour_dataset(root, n_per_class: int = 12, size: int = 20, seed: int = 0,
                         classes: dict | None = None, ext: str = "png") -> Path:
    """``root/<class>/<i>.<ext>``: a folder per class of noisy colour-dominant images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for name, rgb in (classes or COLOURS).items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(colour_array(rgb, rng, size)).save(d / f"{name}_{i:02d}.{ext}")
    return root


def noise_bytes(fmt: str, size: int = 32, seed: int = 1) -> bytes:
    """A valid encoded noise image (noise so that cutting the file in half really truncates pixel data)."""
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def write_bad_files(folder, bomb_side: int = 100) -> dict[str, Path]:
    """One file of each bad kind in ``folder``; returns ``{kind: path}``.

    The "bomb" is a real ``bomb_side`` x ``bomb_side`` PNG: it is only bad under a small ``max_pixels``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {
        "zero": folder / "zero.png",
        "truncated_jpeg": folder / "truncated.jpg",
        "truncated_png": folder / "truncated.png",
        "corrupt": folder / "corrupt.jpg",
        "not_image": folder / "notes.png",
        "bomb": folder / "bomb.png",
    }
    out["zero"].write_bytes(b"")
    jpg = noise_bytes("JPEG")
    out["truncated_jpeg"].write_bytes(jpg[: len(jpg) // 2])
    png = noise_bytes("PNG")
    out["truncated_png"].write_bytes(png[: len(png) // 2])
    out["corrupt"].write_bytes(np.random.default_rng(7).integers(0, 256, 600, dtype=np.uint8).tobytes())
    out["not_image"].write_text("this is a text file, not a PNG\n", encoding="utf-8")
    Image.new("RGB", (bomb_side, bomb_side), (200, 40, 40)).save(out["bomb"])
    return out


@pytest.fixture(autouse=True)
def _single_process(monkeypatch, tmp_path_factory):
    """No worker processes unless a test asks for them; no progress bars in captured output; the
    model/embedding cache in a temporary folder shared by the session (never ~/.cache)."""
    monkeypatch.setenv("IMGCLASS_JOBS", "1")
    monkeypatch.setenv("IMGCLASS_PROGRESS", "0")
    monkeypatch.setenv("IMGCLASS_CACHE", str(tmp_path_factory.getbasetemp() / "imgclass-cache"))


@pytest.fixture
def colour_folder(tmp_path) -> Path:
    """3 classes (red, green, blue) x 12 images of 20x20 pixels."""
    return write_colour_dataset(tmp_path / "colours")


@pytest.fixture(scope="session")
def make_colour_dataset():
    return write_colour_dataset


@pytest.fixture(scope="session")
def make_bad_files():
    return write_bad_files


@pytest.fixture(scope="session")
def encoded_noise():
    return noise_bytes


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One ``pixels+logreg`` run on the colour dataset, shared read-only by many tests.

    Returns a dict with ``data`` (folder), ``run`` (run dir), ``bundle`` (model folder) and ``model``.
    Tests that modify a bundle must copy it first.
    """
    import imgclass

    base = tmp_path_factory.mktemp("trained")
    data = write_colour_dataset(base / "colours", seed=3)
    model = imgclass.train(data, method="pixels+logreg", out=base / "run", n_jobs=1, seed=0)
    return {"data": data, "run": Path(model.run_dir), "bundle": Path(model.run_dir) / "model", "model": model}
