"""`metrics.jsonl`: one JSON row per logged step (or epoch), appended as the run goes."""
from __future__ import annotations

import json
from pathlib import Path

from medgmae_plans.runtime.atomic import write_text_atomic


class MetricsLog:
    """The rows of a run, numbered by `key` ("step" or "epoch").

    Opened at `start` (the checkpoint's step), it drops the rows numbered after it: a run that died
    after its last checkpoint had logged them, and the resumed run logs them again. A fresh run
    starts at 0, so it drops what a run that never saved had left.
    """

    def __init__(self, path, start: int, key: str = "step"):
        self.path, self.key = Path(path), key
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)[key] <= start]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
