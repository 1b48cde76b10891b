"""`python -m benchmarks.transfer --quick` end to end: every init, fraction and replicate trained, each
scored on the held-out test cases, the table with the nnU-Net row and the paired intervals, and a
second run that resumes everything without retraining. Slow: about 15 minutes on two cores, more beside
other jobs, hence its own timeout above the suite's 900 s."""
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
    assert [s for s in record["results"]["stages_s"]] == ["data", "pretrain", "finetune", "evaluate"]
    table = (root / "report" / "table1.md").read_text()
    for row in ("Scratch", "voxel-MAE", "MedGMAE", "nnU-Net (PlainConvUNet)"):
        assert row in table
    replicates = (root / "report" / "replicates.csv").read_text()
    assert replicates.count(",nnU-Net (PlainConvUNet),") == 2 and replicates.count(",MedGMAE,") == 3  # 2 at 0.1, 1 at 1.0
    versus = [line.split(",")[1:3] for line in (root / "report" / "versus_scratch.csv").read_text().splitlines()[1:]]
    assert versus == [["0.1", "voxel-MAE"], ["0.1", "MedGMAE"], ["0.1", "nnU-Net (PlainConvUNet)"],
                      ["1.0", "voxel-MAE"], ["1.0", "MedGMAE"]]  # every other init against scratch, per fraction

    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    timings = json.loads((root / "report" / "transfer.json").read_text())["results"]["timings"]
    assert all(t["output_existed"] for t in timings if t["step"].startswith(("pretrain", "finetune")))
