"""Start-up cost: the CLI's ``--help`` must not import the heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "sklearn", "skimage", "cv2", "matplotlib")

SCRIPT = """
import json, sys
import imgclass.cli.app
from imgclass.cli import main
codes = [main(argv) for argv in [{argvs}]]
print(json.dumps({{"codes": codes, "loaded": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def _run(argvs):
    code = SCRIPT.format(argvs=", ".join(repr(a) for a in argvs), heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_does_not_import_torch_or_sklearn():
    res = _run([["--help"]])
    assert res["codes"] == [0]
    assert res["loaded"] == []


def test_command_help_does_not_import_heavy_libraries():
    res = _run([["train", "--help"], ["predict", "--help"], ["data", "check", "--help"], ["--version"]])
    assert res["codes"] == [0, 0, 0, 0]
    assert res["loaded"] == []


@pytest.mark.subprocess
def test_import_imgclass_is_lazy():
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys, imgclass; print(sorted(m for m in ('torch', 'sklearn', 'PIL', 'numpy', 'imgclass.api') "
         "if m in sys.modules))"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
