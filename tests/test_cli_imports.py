"""The CLI is thin: its modules import from imgclass only the public API, the errors, the limits leaf
(option defaults without numpy), the package version and the CLI's own modules."""

from __future__ import annotations

import ast
from pathlib import Path

import imgclass.cli

CLI = Path(imgclass.cli.__file__).parent
ALLOWED = {"imgclass.api", "imgclass.errors", "imgclass.limits"}


def _imports(source: str) -> list[tuple[int, str, list[str]]]:
    """``(line, absolute module, names)`` of every imgclass import in ``source``, a module of ``imgclass.cli``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(["imgclass", "cli"][: max(0, 3 - node.level)] + ([module] if module else []))
            if module.split(".")[0] == "imgclass":
                found.append((node.lineno, module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "imgclass"]
    return found


def _not_allowed(module: str, names: list[str]) -> bool:
    if module == "imgclass.cli" or module.startswith("imgclass.cli."):
        return False
    if module == "imgclass":  # the package root: its version, or the api and errors modules themselves
        return any(n not in ("__version__", "api", "errors") for n in names)
    return module not in ALLOWED


def test_cli_modules_import_only_the_api_errors_and_themselves():
    files = sorted(CLI.glob("*.py"))
    assert {"__init__.py", "app.py", "_output.py", "cmd_train.py"} <= {p.name for p in files}
    bad = [f"{p.name}:{line}: {module} {names}" for p in files
           for line, module, names in _imports(p.read_text(encoding="utf-8")) if _not_allowed(module, names)]
    assert bad == []


def test_the_check_catches_imports_from_the_layers():
    src = ("from ..training import RunDir\nfrom .. import api\nfrom ..models.spec import x\nimport imgclass.data\n"
           "from ._output import err\nfrom ..errors import ConfigError\nfrom .. import __version__\n")
    assert [m for _, m, names in _imports(src) if _not_allowed(m, names)] == [
        "imgclass.training", "imgclass.models.spec", "imgclass.data"]
