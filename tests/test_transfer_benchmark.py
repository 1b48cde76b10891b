"""benchmarks.transfer's orchestration: which commands it runs, with which budgets (nothing is run here)."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import transfer
from medgmae_plans.runtime import UserError


def steps_for(tmp_path: Path, *extra: str) -> dict[str, list[str]]:
    args = transfer.parse_args(["--root", str(tmp_path), *extra])
    return {s.name: s.argv for s in transfer.build_steps(args, tmp_path / "report")}


def test_default_budget_runs_every_init_at_both_fractions(tmp_path):
    steps = steps_for(tmp_path)
    assert [n for n in steps if n.startswith("finetune")] == [
        f"finetune {init} f{f}" for f in ("0.1", "1") for init in ("scratch", "voxelmae", "medgmae")]
    for decoder in ("voxel", "gaussian"):  # same steps and seed for both pretrainings
        argv = steps[f"pretrain {decoder}"]
        assert argv[argv.index("--steps") + 1] == "3600" and argv[argv.index("--seed") + 1] == "41"
    scratch, medgmae = steps["finetune scratch f0.1"], steps["finetune medgmae f0.1"]
    assert scratch[scratch.index("--init") + 1] == "scratch"
    assert medgmae[medgmae.index("--pretrained") + 1] == str(
        transfer.pretrain_folder(tmp_path.resolve(), "gaussian") / "checkpoint_final.pt")
    assert medgmae[medgmae.index("--epochs") + 1] == "15"
    assert "--no-nsd" in steps["evaluate"]


def test_nsd_is_opt_in(tmp_path):
    assert "--no-nsd" not in steps_for(tmp_path, "--nsd")["evaluate"]


def test_bad_budgets_are_refused(tmp_path):
    with pytest.raises(UserError, match="--fractions"):
        transfer.parse_args(["--root", str(tmp_path), "--fractions", "0"])
    with pytest.raises(UserError, match="--cases must be at least 5"):
        transfer.parse_args(["--root", str(tmp_path), "--cases", "3"])
