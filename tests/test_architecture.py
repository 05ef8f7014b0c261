"""The layering holds: import-linter's contracts (pyproject.toml), no module over 400 lines, fedleak
imported at module top (an import inside a function is for an optional dependency only)."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "fedleak"
MAX_LINES = 400
MAX_FUNCTION_IMPORTS = 20


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter is not installed (the test extra has it)")
def test_the_import_contracts_are_kept():
    done = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in modules() if (n := p.read_text().count("\n")) > MAX_LINES}
    assert long == {}


def function_level_imports() -> list[str]:
    found = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    names = ([inner.module or ""] if isinstance(inner, ast.ImportFrom)
                             else [a.name for a in inner.names] if isinstance(inner, ast.Import) else [])
                    if any(n == "fedleak" or n.startswith("fedleak.") for n in names):
                        found.append(f"{path.relative_to(SRC)}:{inner.lineno}")
    return sorted(set(found))


def test_fedleak_is_imported_at_module_top():
    found = function_level_imports()
    assert len(found) <= MAX_FUNCTION_IMPORTS, found
