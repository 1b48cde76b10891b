"""benchmarks.transfer's orchestration: which commands it runs, with which budgets (nothing is run here)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import transfer
from medgmae_plans.runtime import UserError


def steps_for(tmp_path: Path, *extra: str) -> dict[str, list[str]]:
    args = transfer.parse_args(["--root", str(tmp_path), *extra])
    return {s.name: s.argv for s in transfer.build_steps(args, tmp_path / "report")}  # each step's first command


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_default_experiment_pretrains_five_seeds_along_a_learning_curve(tmp_path):
    steps = steps_for(tmp_path)
    assert [n for n in steps if n.startswith("pretrain")] == [
        f"pretrain {decoder} s{seed}" for seed in range(41, 46) for decoder in ("voxel", "gaussian")]
    for decoder in ("voxel", "gaussian"):  # seed k: the same init, crops and masks for both objectives
        for seed in range(41, 46):
            argv = steps[f"pretrain {decoder} s{seed}"]
            assert flag(argv, "--steps") == "12000" and flag(argv, "--seed") == str(seed)
            assert argv[argv.index("--keep-steps") + 1:argv.index("--keep-steps") + 3] == ["1000", "4000"]
            assert flag(argv, "-c") == "3d_lowres" and flag(argv, "--threads") == "1"
            assert flag(argv, "--crop-centres") == "body" and flag(argv, "--images") == "PhantomUnlabeled"
            assert flag(argv, "--out") == str(transfer.pretrain_folder(tmp_path.resolve(), decoder, seed))
            assert "--cpu-bf16" not in argv  # float32: bf16 measured no faster on this CPU
    assert flag(steps["phantom"], "--unlabeled") == "200" and flag(steps["phantom"], "--test") == "10"


def test_every_checkpoint_and_random_init_is_probed_at_both_fractions(tmp_path):
    steps = steps_for(tmp_path)
    root = tmp_path.resolve()
    for k, seed in enumerate(range(41, 46)):
        for name in ("voxel", "gaussian"):
            argv = steps[f"probe {name} s{seed}"]
            out = transfer.pretrain_folder(root, name, seed)
            assert argv[argv.index("--checkpoint") + 1:argv.index("--checkpoint") + 4] == [
                str(out / "checkpoint_step_0001000.pt"), str(out / "checkpoint_step_0004000.pt"),
                str(out / "checkpoint_final.pt")]
            assert "--random-init" not in argv
        random = steps[f"probe random s{seed}"]
        assert "--random-init" in random and flag(random, "--checkpoint").endswith(f"gaussian_tiny_body_s{seed}/checkpoint_final.pt")
        for argv in (random, steps[f"probe gaussian s{seed}"]):
            assert argv[argv.index("--fraction") + 1:argv.index("--fraction") + 3] == ["0.1", "1"]
            assert flag(argv, "--seed") == str(seed) and flag(argv, "--fraction-seed") == str(12345 + k)
            assert flag(argv, "--samples-per-class") == "1000" and flag(argv, "--threads") == "1"
        quality = steps[f"quality s{seed}"]
        assert sum(a.endswith(".pt") for a in quality) == 6 and flag(quality, "--json").endswith(f"s{seed}.json")


def test_fine_tuning_pairs_replicates_and_keeps_one_optimiser(tmp_path):
    steps = steps_for(tmp_path)
    unetr = ("scratch", "voxelmae", "medgmae")
    assert [n for n in steps if n.startswith("finetune")] == [
        "finetune nnunet f0.1 r0",                                             # the anchor, longest first
        *(f"finetune {init} f0.1 r{r}" for r in range(3) for init in unetr),  # three replicate pairs at 10 %
        *(f"finetune scratch f1 r{r}" for r in range(3))]                      # the ceiling and gate G2
    for r in range(3):  # replicate r: pretraining seed, fine-tuning seed 41 + r and labelled subset 12345 + r
        medgmae = steps[f"finetune medgmae f0.1 r{r}"]
        assert flag(medgmae, "--trainer") == f"MedGMAETrainer_medgmae_f10_r{r}"
        assert flag(medgmae, "--pretrained") == str(
            transfer.pretrain_folder(tmp_path.resolve(), "gaussian", 41 + r) / "checkpoint_final.pt")
        scratch = steps[f"finetune scratch f0.1 r{r}"]
        assert flag(scratch, "--init") == "scratch" and "--pretrained" not in scratch
        for argv in (medgmae, scratch, steps[f"finetune voxelmae f0.1 r{r}"], steps[f"finetune scratch f1 r{r}"]):
            assert flag(argv, "--fraction-seed") == str(12345 + r) and flag(argv, "--seed") == str(41 + r)
            assert flag(argv, "--epochs") == "15" and flag(argv, "--iters-per-epoch") == "50"
            assert flag(argv, "--lr") == "0.003" and argv[1:3] == ["Phantom", "3d_lowres"]
    nnunet = steps["finetune nnunet f0.1 r0"]
    assert flag(nnunet, "--init") == "nnunet" and "--lr" not in nnunet and flag(nnunet, "--epochs") == "15"
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


def test_quick_budget_still_checks_two_seeds_and_every_stage(tmp_path):
    quick = steps_for(tmp_path, "--quick")
    kinds = [n.split()[0] for n in quick]
    assert list(dict.fromkeys(kinds)) == ["phantom", "preprocess", "pretrain", "quality", "probe", "finetune",
                                         "evaluate"]
    assert sum(k == "finetune" for k in kinds) == 1 + 3 * 2 + 2 and sum(k == "probe" for k in kinds) == 3 * 2


def test_nsd_is_opt_in(tmp_path):
    assert "--no-nsd" not in steps_for(tmp_path, "--nsd")["evaluate"]


@pytest.mark.parametrize("extra,match", [(["--cases", "3"], "--cases must be at least 5"),
                                         (["--replicates", "0"], "--replicates must be at least 1"),
                                         (["--seeds", "2", "--replicates", "3"], "at most --seeds 2"),
                                         (["--nnunet-replicates", "4"], "--nnunet-replicates 4"),
                                         (["--keep-steps", "12000"], "--keep-steps"),
                                         (["--unlabeled", "-1"], "--unlabeled")])
def test_bad_budgets_are_refused(tmp_path, extra, match):
    with pytest.raises(UserError, match=match):
        transfer.parse_args(["--root", str(tmp_path), *extra])


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


def test_a_resumed_experiment_counts_the_stopped_runs_wall_time(tmp_path):
    from benchmarks.transfer.__main__ import earlier_wall

    record = tmp_path / "transfer.json"
    assert earlier_wall(record) == 0.0  # the first run
    record.write_text('{"results": {"status": "running", "wall_s": 100.0}}')  # written by the first code
    assert earlier_wall(record) == 100.0
    record.write_text('{"results": {"status": "failed at step x", "wall_s": 50.0, "wall_s_before": 100.0}}')
    assert earlier_wall(record) == 150.0
    record.write_text('{"results": {"status": "finished", "wall_s": 9.0, "wall_s_before": 150.0}}')
    assert earlier_wall(record) == 0.0  # a rerun of a finished experiment measures itself only
