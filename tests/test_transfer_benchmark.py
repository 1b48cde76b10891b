"""benchmarks.transfer's orchestration: which commands it runs, with which budgets (nothing is run here)."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import transfer
from medgmae_plans.runtime import UserError


def steps_for(tmp_path: Path, *extra: str) -> dict[str, list[str]]:
    args = transfer.parse_args(["--root", str(tmp_path), *extra])
    return {s.name: s.argv for s in transfer.build_steps(args, tmp_path / "report")}


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_default_budget_runs_every_init_and_replicate(tmp_path):
    steps = steps_for(tmp_path)
    inits = ("scratch", "voxelmae", "medgmae")
    assert [n for n in steps if n.startswith("finetune")] == [  # three replicates at 0.1, one at 1.0
        *(f"finetune {init} f0.1 r{r}" for r in range(3) for init in inits),
        *(f"finetune {init} f1 r0" for init in inits)]
    assert [n for n in steps if n.startswith("pretrain")] == [
        f"pretrain {decoder} s{seed}" for decoder in ("voxel", "gaussian") for seed in (41, 42, 43)]
    for decoder in ("voxel", "gaussian"):  # the same steps and seeds for both decoders
        for seed in (41, 42, 43):
            argv = steps[f"pretrain {decoder} s{seed}"]
            assert flag(argv, "--steps") == "3600" and flag(argv, "--seed") == str(seed)
            assert flag(argv, "--out") == str(transfer.pretrain_folder(tmp_path.resolve(), decoder, seed))
    for r in range(3):  # replicate r: the trainer tagged r<r>, fine-tuned from pretraining seed 41 + r
        medgmae = steps[f"finetune medgmae f0.1 r{r}"]
        assert flag(medgmae, "--trainer") == f"MedGMAETrainer_medgmae_f10_r{r}"
        assert flag(medgmae, "--pretrained") == str(
            transfer.pretrain_folder(tmp_path.resolve(), "gaussian", 41 + r) / "checkpoint_final.pt")
        scratch = steps[f"finetune scratch f0.1 r{r}"]
        assert flag(scratch, "--init") == "scratch" and flag(scratch, "--trainer") == f"MedGMAETrainer_scratch_f10_r{r}"
        assert "--pretrained" not in scratch
    ceiling = steps["finetune voxelmae f1 r0"]
    assert flag(ceiling, "--trainer") == "MedGMAETrainer_voxelmae_f100_r0"
    assert flag(ceiling, "--pretrained").endswith("voxel_tiny_s41/checkpoint_final.pt")
    assert flag(steps["finetune medgmae f0.1 r0"], "--epochs") == "15"
    assert "--no-nsd" in steps["evaluate"] and list(steps)[-1] == "evaluate"


def test_trainer_tags_are_evaluate_replicates(tmp_path):
    """The benchmark's trainer names are read back by medgmae_evaluate as the replicates they are."""
    from evaluation.folders import Run

    argv = steps_for(tmp_path)["finetune medgmae f0.1 r2"]
    run = Run(tmp_path, {"trainer": flag(argv, "--trainer"), "dataset": "x", "init": "medgmae", "fraction": 0.1})
    assert run.replicate == "r2"


def test_replicates_option_and_quick_budget(tmp_path):
    steps = steps_for(tmp_path, "--replicates", "1", "--fractions", "0.1")
    assert [n for n in steps if n.startswith(("finetune", "pretrain"))] == [
        "pretrain voxel s41", "pretrain gaussian s41", "finetune scratch f0.1 r0", "finetune voxelmae f0.1 r0",
        "finetune medgmae f0.1 r0"]
    quick = steps_for(tmp_path, "--quick")
    assert sum(n.startswith("finetune") for n in quick) == 3 * 2 + 3  # quick still checks two replicates
    with pytest.raises(UserError, match="--replicates must be at least 1"):
        transfer.parse_args(["--root", str(tmp_path), "--replicates", "0"])


def test_nsd_is_opt_in(tmp_path):
    assert "--no-nsd" not in steps_for(tmp_path, "--nsd")["evaluate"]


def test_bad_budgets_are_refused(tmp_path):
    with pytest.raises(UserError, match="--fractions"):
        transfer.parse_args(["--root", str(tmp_path), "--fractions", "0"])
    with pytest.raises(UserError, match="--cases must be at least 5"):
        transfer.parse_args(["--root", str(tmp_path), "--cases", "3"])


def test_timing_comparisons_sum_the_replicates():
    def step(kind, init, seconds, existed=False):
        return transfer.Step(f"{kind} {init}", [], kind=kind, init=init, seconds=seconds, existed=existed)

    steps = [step("pretrain", "voxelmae", 100), step("pretrain", "voxelmae", 100), step("pretrain", "medgmae", 150),
             step("pretrain", "medgmae", 150), step("finetune", "scratch", 50), step("finetune", "scratch", 50),
             step("finetune", "medgmae", 60), step("finetune", "medgmae", 999, existed=True)]
    assert transfer.comparisons(steps) == [
        "pretraining: MedGMAE 300 s, voxel-MAE 200 s, ratio 1.50",
        "fine-tuning: medgmae 60 s, scratch 100 s, ratio 0.60"]  # a reused run's time is not a measurement
