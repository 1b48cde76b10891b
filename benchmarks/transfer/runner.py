"""Runs the experiment's steps stage by stage, two runs side by side, each into its own log."""
from __future__ import annotations

import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medgmae_plans.runtime import UserError

from .steps import Step

LANES = 2  # runs side by side, one thread each: the two cores
PARALLEL = ("pretrain", "quality", "probe", "finetune")  # the stages whose steps run LANES at a time


def _show(argv: list[str]) -> str:
    return " ".join([Path(argv[0]).name, *argv[1:]])


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", name)


class Runner:
    """Runs the steps stage by stage (data, pretraining, fine-tuning, evaluation): the steps of a
    stage `LANES` at a time, each into its own log file; the first failure stops new starts."""

    def __init__(self, steps: list[Step], env: dict[str, str], cwd: Path, logs: Path, log, save):
        self.steps, self.env, self.cwd, self.logs, self.log, self.save = steps, env, cwd, logs, log, save
        self.failed: list[Step] = []
        self.stage_seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def run(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for kind in dict.fromkeys(s.kind for s in self.steps):
            stage = [s for s in self.steps if s.kind == kind]
            t0 = time.time()
            with ThreadPoolExecutor(LANES if kind in PARALLEL else 1) as pool:
                list(pool.map(self._run_step, stage))
            self.stage_seconds[kind] = time.time() - t0
            if self.failed:
                step = self.failed[0]
                tail = step.log.read_text(errors="replace").strip().splitlines()[-1:] if step.log else []
                raise UserError(f"step '{step.name}' failed ({tail[0] if tail else 'no output'}; whole output in "
                                f"{step.log}); run the same command again to resume")
            self.log.info(f"stage {kind} done in {self.stage_seconds[kind]:.0f} s")

    def _run_step(self, step: Step) -> None:
        if self.failed:
            return
        i = self.steps.index(step) + 1
        step.existed = step.done()
        step.log = self.logs / f"{_slug(step.name)}.log"
        note = " (its output exists from a previous run)" if step.existed else ""
        self.log.info(f"[{i}/{len(self.steps)}] {step.name} started{note}; log {step.log}")
        t0 = time.time()
        with open(step.log, "a") as out:
            for argv in step.commands:
                out.write(f"$ {_show(argv)}\n")
                out.flush()
                if subprocess.run(argv, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT).returncode:
                    with self._lock:
                        self.failed.append(step)
                    break
        step.seconds = time.time() - t0
        with self._lock:
            self.log.info(f"[{i}/{len(self.steps)}] {step.name} {'FAILED' if step in self.failed else 'done'} "
                          f"in {step.seconds:.0f} s")
            self.save("running" if not self.failed else f"failed at step {step.name}")


