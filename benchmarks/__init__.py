"""Timing scripts: each prints our time, a baseline measured in the same run, and the ratio."""

from medgmae_plans.runtime.threads import use_sleeping_waiters

use_sleeping_waiters()  # `python -m benchmarks.X` starts here: before any benchmark loads torch
