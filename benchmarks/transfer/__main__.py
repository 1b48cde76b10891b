"""`python -m benchmarks.transfer`: run (or resume) the experiment, then analyse it (see the package docstring)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from medgmae_plans.runtime import cli_entry, setup_run_log, write_run_json

from . import report as write_report
from .analysis import analyse
from .runner import Runner
from .settings import FINETUNE_BUDGET_NOTE, parse_args, settings_of
from .steps import benchmark_env, build_steps, comparisons, timings_of


def earlier_wall(record: Path) -> float:
    """Seconds the stopped runs before this one spent (their `transfer.json`), 0 after a finished run: a
    killed or stopped experiment's wall time is the sum over the runs that completed it."""
    try:
        results = json.loads(record.read_text())["results"]
    except (OSError, ValueError, KeyError):
        return 0.0
    if results.get("status") == "finished":
        return 0.0
    return float(results.get("wall_s_before", 0.0)) + float(results.get("wall_s", 0.0))


def _main(argv) -> int:
    args = parse_args(argv)
    report = args.root / "report"
    report.mkdir(parents=True, exist_ok=True)
    log = setup_run_log(report, "transfer", args.verbose)
    steps = build_steps(args, report)
    log.info(f"experiment in {args.root}: {len(steps)} steps, settings {json.dumps(settings_of(args), default=str)}")
    log.info(f"fine-tuning budget: {FINETUNE_BUDGET_NOTE}")
    start, before = time.time(), earlier_wall(report / "transfer.json")
    runner = None

    def save(status: str, verdicts: dict | None = None) -> None:
        wall = round(time.time() - start, 1)
        write_run_json(report, "transfer", settings_of(args),
                       {"status": status, "timings": timings_of(steps), "comparisons": comparisons(steps),
                        "stages_s": runner.stage_seconds if runner else {}, "wall_s": wall,
                        "wall_s_before": before, "total_wall_s": round(before + wall, 1), "verdicts": verdicts})

    runner = Runner(steps, benchmark_env(args.root), args.root, report / "logs", log, save)
    runner.run()
    t0 = time.time()
    result = analyse(args)
    files = write_report.write(result, args, report, before + time.time() - start)
    runner.stage_seconds["analysis"] = time.time() - t0
    save("finished", result["verdicts"])
    print("\n" + files["md"].read_text(), flush=True)
    width = max(len(s.name) for s in steps)
    log.info("wall time per step (two runs side by side in the parallel stages):")
    for s in steps:
        log.info(f"  {s.name:<{width}} {s.seconds:8.0f} s{'  (output existed)' if s.existed else ''}")
    for kind, seconds in runner.stage_seconds.items():
        log.info(f"  {'stage ' + kind:<{width}} {seconds:8.0f} s")
    log.info(f"  {'wall time of this run':<{width}} {time.time() - start:8.0f} s")
    log.info(f"  {'with the stopped runs before it':<{width}} {before + time.time() - start:8.0f} s")
    for line in comparisons(steps):
        log.info(line)
    log.info(f"verdicts: {result['verdicts']}; {', '.join(str(f) for f in files.values())}")
    return 0


main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
