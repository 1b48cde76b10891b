"""`python -m benchmarks.transfer --quick` end to end: every stage (data, pretraining with a kept step,
quality, the probes, paired fine-tuning, the comparison, the analysis) on a tiny budget, and a second
run that resumes everything without retraining. Slow: 704 s for the first run on two idle cores
(2026-12-07; nine fine-tuning runs of about 80 s each, mostly nnU-Net's start, final validation and
the test-case prediction), hence its own timeout above the suite's 900 s. The default suite checks
the steps (test_transfer_benchmark) and the analysis on fabricated outputs (test_transfer_analysis)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_quick_benchmark_runs_end_to_end_and_resumes(tmp_path):
    root = tmp_path / "transfer"
    command = [sys.executable, "-m", "benchmarks.transfer", "--quick", "--root", str(root)]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    record = json.loads((root / "report" / "transfer.json").read_text())
    assert record["results"]["status"] == "finished"
    assert list(record["results"]["stages_s"]) == ["data", "pretrain", "quality", "probe", "finetune", "evaluate",
                                                   "analysis"]
    experiment = json.loads((root / "report" / "experiment.json").read_text())
    assert set(experiment["verdicts"]) == {"probe", "fine-tuning"}
    assert len(experiment["probe"]["MedGMAE - voxel-MAE"]["by_seed"]) == 2  # --quick: two seeds
    assert len(experiment["finetune"]["MedGMAE - scratch"]["by_seed"]) == 2
    assert (root / "report" / "learning_curves.png").is_file() and "**Verdict:" in first.stdout
    table = (root / "report" / "table1.md").read_text()
    for row in ("Scratch", "voxel-MAE", "MedGMAE", "nnU-Net (PlainConvUNet)"):
        assert row in table

    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    timings = json.loads((root / "report" / "transfer.json").read_text())["results"]["timings"]
    assert all(t["output_existed"] for t in timings if t["step"].startswith(("pretrain", "probe", "finetune")))
