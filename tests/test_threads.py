"""Every command makes OpenMP's idle threads sleep, and does so before torch loads its OpenMP library."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]

# Records OMP_WAIT_POLICY at the moment `torch` is first imported (None: never imported).
WATCH = """
import importlib, importlib.abc, os, sys
seen = {}
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and "policy" not in seen:
            seen["policy"] = os.environ.get("OMP_WAIT_POLICY", "unset")
        return None
sys.meta_path.insert(0, Watch())
importlib.import_module(sys.argv[1])
print(seen.get("policy", "torch-not-imported"))
"""


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_wait_policy_is_set_before_torch_is_imported(script):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    module = SCRIPTS[script].split(":")[0]
    out = subprocess.run([sys.executable, "-c", WATCH, module], env=env, cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-1] in ("PASSIVE", "torch-not-imported"), f"{script} ({module}) imports torch with OMP_WAIT_POLICY {out[-1]}"


def test_a_policy_the_user_set_is_kept():
    env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}
    code = ("import os; from medgmae_plans.runtime.threads import use_sleeping_waiters; use_sleeping_waiters(); "
            "print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_importing_the_toolkit_changes_no_environment():
    """The policy is a console command's act, not an import's side effect (a library user keeps their own)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, medgmae_plans, medgmae_plans.runtime, preprocessing; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_command_sets_the_policy_first(script):
    """A command that loads torch lazily (inside main) must still set the policy: as its first act."""
    module = SCRIPTS[script].split(":")[0]
    text = (REPO / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
    first_import = text.index("\nimport ") if "\nimport " in text else len(text)
    call = text.find("\nuse_sleeping_waiters()")
    assert 0 <= call < first_import, f"{script} ({module}): use_sleeping_waiters() must come before any other import"
