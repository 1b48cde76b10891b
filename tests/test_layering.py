"""The package layering in pyproject.toml ([tool.importlinter]) holds: no import runs upward."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_every_top_level_package_is_in_the_layering():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == set(CONFIG["root_packages"]), "a top-level package outside the import-linter contract"
    top = next(c for c in CONFIG["contracts"] if "containers" not in c)
    layered = {name.strip() for layer in top["layers"] for name in layer.split("|")}
    assert layered == packages


def test_lint_imports_keeps_every_contract():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    out = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
