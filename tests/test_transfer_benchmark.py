"""benchmarks.transfer's orchestration: which commands it runs, with which budgets (nothing is run here)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import transfer
from medgmae_plans import cpu_recipe as recipe
from medgmae_plans.runtime import UserError


def steps_for(tmp_path: Path, *extra: str) -> dict[str, list[str]]:
    args = transfer.parse_args(["--root", str(tmp_path), *extra])
    return {s.name: s.argv for s in transfer.build_steps(args, tmp_path / "report")}  # each step's first command


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_default_budget_runs_every_init_and_replicate(tmp_path):
    steps = steps_for(tmp_path)
    unetr = ("scratch", "voxelmae", "medgmae")
    assert [n for n in steps if n.startswith("finetune")] == [  # the longest (nnU-Net's CNN) first
        *(f"finetune nnunet f0.1 r{r}" for r in range(3)),      # the anchor row: fractions below 1 only
        *(f"finetune {init} f0.1 r{r}" for r in range(3) for init in unetr),  # three replicates at 0.1
        *(f"finetune {init} f1 r0" for init in unetr)]                        # one at 1.0
    assert [n for n in steps if n.startswith("pretrain")] == [
        f"pretrain {decoder} s{seed}" for decoder in ("voxel", "gaussian") for seed in (41, 42, 43)]
    for decoder in ("voxel", "gaussian"):  # the same steps and seeds for both decoders, the main job's recipe
        for seed in (41, 42, 43):
            argv = steps[f"pretrain {decoder} s{seed}"]
            assert flag(argv, "--steps") == str(recipe.PRETRAIN_STEPS) and flag(argv, "--seed") == str(seed)
            assert flag(argv, "-c") == "3d_lowres" and flag(argv, "--threads") == "1"
            assert flag(argv, "--crop-centres") == "body"  # label-free: the table claims a label fraction
            assert flag(argv, "--out") == str(transfer.pretrain_folder(tmp_path.resolve(), decoder, seed))
    for r in range(3):  # replicate r: trainer tagged r<r>, pretraining and fine-tuning seed 41 + r for every init
        medgmae = steps[f"finetune medgmae f0.1 r{r}"]
        assert flag(medgmae, "--trainer") == f"MedGMAETrainer_medgmae_f10_r{r}"
        assert flag(medgmae, "--pretrained") == str(
            transfer.pretrain_folder(tmp_path.resolve(), "gaussian", 41 + r) / "checkpoint_final.pt")
        scratch = steps[f"finetune scratch f0.1 r{r}"]
        assert flag(scratch, "--init") == "scratch" and flag(scratch, "--trainer") == f"MedGMAETrainer_scratch_f10_r{r}"
        assert "--pretrained" not in scratch
        for run in (medgmae, scratch):  # replicate r also labels its own subset of cases
            assert flag(run, "--fraction-seed") == str(12345 + r)
        nnunet = steps[f"finetune nnunet f0.1 r{r}"]
        assert flag(nnunet, "--init") == "nnunet" and "--lr" not in nnunet  # nnU-Net keeps its own SGD lr
        for argv in (medgmae, scratch, nnunet):
            assert flag(argv, "--seed") == str(41 + r)
            assert argv[1:3] == ["Phantom", "3d_lowres"]
            assert flag(argv, "--epochs") == "9" and flag(argv, "--iters-per-epoch") == "50"  # same iterations
        assert flag(medgmae, "--lr") == flag(scratch, "--lr") == "0.003"
    ceiling = steps["finetune voxelmae f1 r0"]
    assert flag(ceiling, "--trainer") == "MedGMAETrainer_voxelmae_f100_r0"
    assert flag(ceiling, "--pretrained").endswith("voxel_tiny_body_s41/checkpoint_final.pt")
    assert flag(steps["phantom"], "--test") == "10"  # the table is scored on 10 held-out cases
    assert "--test" in steps["evaluate"] and "--no-nsd" in steps["evaluate"] and list(steps)[-1] == "evaluate"


def test_every_run_is_scored_on_the_test_cases(tmp_path):
    """Each fine-tuning step predicts and scores the test cases with its own run, in its lane."""
    args = transfer.parse_args(["--root", str(tmp_path)])
    for step in transfer.build_steps(args, tmp_path / "report"):
        if step.kind == "finetune":
            train, evaluate = step.commands
            assert Path(evaluate[0]).name == "medgmae_evaluate" and "--test" in evaluate
            assert Path(evaluate[1]).name == f"{flag(train, '--trainer')}__MedGMAEPlans__3d_lowres"


def test_trainer_tags_are_evaluate_replicates(tmp_path):
    """The benchmark's trainer names are read back by medgmae_evaluate as the replicates they are."""
    from evaluation.folders import Run

    argv = steps_for(tmp_path)["finetune medgmae f0.1 r2"]
    run = Run(tmp_path, {"trainer": flag(argv, "--trainer"), "dataset": "x", "init": "medgmae", "fraction": 0.1})
    assert run.replicate == "r2"


def test_replicates_option_and_quick_budget(tmp_path):
    steps = steps_for(tmp_path, "--replicates", "1", "--fractions", "0.1", "--inits", "scratch", "voxelmae", "medgmae")
    assert [n for n in steps if n.startswith(("finetune", "pretrain"))] == [
        "pretrain voxel s41", "pretrain gaussian s41", "finetune scratch f0.1 r0", "finetune voxelmae f0.1 r0",
        "finetune medgmae f0.1 r0"]
    quick = steps_for(tmp_path, "--quick")
    assert sum(n.startswith("finetune") for n in quick) == 4 * 2 + 3  # quick still checks two replicates
    with pytest.raises(UserError, match="--replicates must be at least 1"):
        transfer.parse_args(["--root", str(tmp_path), "--replicates", "0"])


def test_nsd_is_opt_in(tmp_path):
    assert "--no-nsd" not in steps_for(tmp_path, "--nsd")["evaluate"]


def test_bad_budgets_are_refused(tmp_path):
    with pytest.raises(UserError, match="--fractions"):
        transfer.parse_args(["--root", str(tmp_path), "--fractions", "0"])
    with pytest.raises(UserError, match="--cases must be at least 5"):
        transfer.parse_args(["--root", str(tmp_path), "--cases", "3"])


def test_timing_comparisons_are_per_run():
    def step(kind, init, seconds, existed=False):
        return transfer.Step(f"{kind} {init}", [[]], kind=kind, init=init, seconds=seconds, existed=existed)

    steps = [step("pretrain", "voxelmae", 100), step("pretrain", "voxelmae", 100), step("pretrain", "medgmae", 150),
             step("pretrain", "medgmae", 150), step("finetune", "scratch", 50), step("finetune", "scratch", 50),
             step("finetune", "medgmae", 60), step("finetune", "medgmae", 999, existed=True)]
    assert transfer.comparisons(steps) == [
        "pretraining: MedGMAE 150 s per run (2), voxel-MAE 100 s (2), ratio 1.50",
        "fine-tuning: medgmae 60 s per run (1), scratch 50 s (2), ratio 1.20"]  # a reused run is not a measurement


def test_runner_runs_stages_in_order_two_lanes_and_stops_at_a_failure(tmp_path):
    """Stages one after the other, each step's commands in order into its log; a failing step names
    itself, its last output line and its log, and no later stage starts."""
    import logging
    import sys

    def py(code: str) -> list[str]:
        return [sys.executable, "-c", code]

    stamp = "import pathlib, time; pathlib.Path({!r}).write_text(str(time.time()))"
    steps = [transfer.Step("data", [py(stamp.format(str(tmp_path / "data")))]),
             transfer.Step("pretrain a", [py(stamp.format(str(tmp_path / "a")))], kind="pretrain"),
             transfer.Step("pretrain b", [py("print('first'); import sys; sys.exit('no such checkpoint')"),
                                          py(stamp.format(str(tmp_path / "after")))], kind="pretrain"),
             transfer.Step("finetune", [py(stamp.format(str(tmp_path / "finetune")))], kind="finetune")]
    saved = []
    runner = transfer.Runner(steps, dict(os.environ), tmp_path, tmp_path / "logs", logging.getLogger("t"),
                             saved.append)
    with pytest.raises(UserError) as err:
        runner.run()
    assert "step 'pretrain b' failed (no such checkpoint" in str(err.value)
    assert str(tmp_path / "logs" / "pretrain_b.log") in str(err.value)
    assert (tmp_path / "a").is_file() and float((tmp_path / "data").read_text()) < float((tmp_path / "a").read_text())
    assert not (tmp_path / "after").exists() and not (tmp_path / "finetune").exists()
    assert "first" in (tmp_path / "logs" / "pretrain_b.log").read_text() and saved[-1].startswith("failed")
