"""benchmarks.gpu_suite without a GPU: its argument checks, its refusal without CUDA, the step
runner's bookkeeping (failed / skipped / budget), and every step end to end at toy sizes on the CPU
(--smoke), which runs the same setup code as the GPU run."""
from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from benchmarks import gpu_suite


def _report(out):
    return json.loads((out / gpu_suite.JSON_NAME).read_text())


@pytest.mark.parametrize("argv, message", [
    ([], "--out"),
    (["--out", "x", "--only", "nonsense"], "invalid choice"),
    (["--out", "x", "--budget-s", "0"], "--budget-s must be positive"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_suite.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_out_must_be_a_folder(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(SystemExit):
        gpu_suite.parse_args(["--out", str(file)])
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_refuses_without_cuda(tmp_path, capsys):
    assert gpu_suite.main(["--out", str(tmp_path / "run")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_failed_and_skipped_steps_are_reported_and_the_rest_still_run(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("planted failure")

    def absent(ctx):
        raise gpu_suite.Skipped("planted reason")

    monkeypatch.setitem(gpu_suite.STEP_FUNCTIONS, "renderer", broken)
    monkeypatch.setitem(gpu_suite.STEP_FUNCTIONS, "unetr_step", absent)
    assert gpu_suite.main(["--out", str(tmp_path), "--smoke", "--only", "renderer", "unetr_step"]) == 1
    steps = _report(tmp_path)["steps"]
    assert steps["renderer"]["status"] == "failed" and "planted failure" in steps["renderer"]["error"]
    assert steps["unetr_step"]["status"] == "skipped" and steps["unetr_step"]["reason"] == "planted reason"
    assert _report(tmp_path)["failed"] == ["renderer"]
    assert "RuntimeError: planted failure" in (tmp_path / gpu_suite.LOG_NAME).read_text()


def test_spent_budget_skips_the_remaining_steps(tmp_path):
    assert gpu_suite.main(["--out", str(tmp_path), "--smoke", "--only", "renderer", "--budget-s", "1e-9"]) == 0
    assert "budget was spent" in _report(tmp_path)["steps"]["renderer"]["reason"]


def test_smoke_run_of_every_step(tmp_path):
    """All five steps at toy sizes on the CPU: the JSON carries each step's figures."""
    assert gpu_suite.main(["--out", str(tmp_path), "--smoke"]) == 0
    report = _report(tmp_path)
    steps = report["steps"]
    assert list(steps) == list(gpu_suite.STEPS) and report["failed"] == [] and report["smoke"]
    assert all(s["status"] in ("ok", "skipped") for s in steps.values())
    if steps["cupy_tests"]["status"] == "ok":
        assert steps["cupy_tests"]["passed"] > 0
    renderer = steps["renderer"]
    assert renderer["speedup_vs_torch"] > 0 and renderer["forward_rel_error"] <= gpu_suite.RENDER_TOLERANCE
    assert set(steps["pretrain_ratio"]["ms_per_step"]) == {"gaussian", "hierarchical", "voxel"}
    run = steps["pretrain_run"]
    assert run["steps"] == gpu_suite.SMOKE.train_steps and run["finite"] and run["falling"]
    if steps["unetr_step"]["status"] == "ok":
        assert len(steps["unetr_step"]["losses"]) == 1 + gpu_suite.SMOKE.unetr_steps
    log = (tmp_path / gpu_suite.LOG_NAME).read_text()
    assert all(f"== {name}" in log for name in gpu_suite.STEPS)


def test_gpu_sizes_are_the_papers_setting():
    assert gpu_suite.GPU.render == dict(batch=8, gaussians=512, size=96, mask_ratio=0.75, patch=16)
    assert gpu_suite.GPU.preset == "base" and gpu_suite.GPU.train_steps == gpu_suite.TRAIN_STEPS == 200
    assert gpu_suite.GPU.device == "cuda" and gpu_suite.GPU.render_backend == "cupy"


@pytest.mark.parametrize("judge_time, status", [(True, "failed"), (False, "ok")])
def test_the_step_time_ratio_is_judged_only_at_gpu_sizes(judge_time, status, monkeypatch):
    """A ratio over the target fails the GPU run; toy sizes time one cold step, so there it is only printed."""
    slow = {"gaussian": 10.0, "hierarchical": 10.0, "voxel": 1.0}
    monkeypatch.setattr(gpu_suite, "time_steps", lambda *a, **k: slow)
    ctx = gpu_suite.Context(dataclasses.replace(gpu_suite.SMOKE, judge_time=judge_time), logging.getLogger("test"))
    monkeypatch.setattr(gpu_suite.Context, "crops", lambda self, n: torch.zeros(n, 1, 16, 16, 16))
    result = gpu_suite.step_pretrain_ratio(ctx)
    assert result["status"] == status and result["gaussian_over_voxel"] == 10.0 and result["judged"] is judge_time
    assert gpu_suite.GPU.judge_time and not gpu_suite.SMOKE.judge_time
