"""The command runtime: what every console command shares, torch-free.

    command.py  UserError and its one-line exit, `cli_entry`, the common flags, range and folder checks,
                progress bars, run logs and JSON, `StopSignals` / `Interrupted` (exit 128 + signal)
    atomic.py   files and folders written under a temporary name, then renamed into place
    paths.py    nnU-Net's three folder variables and their defaults
    threads.py  OpenMP's wait policy, which each console command sets before it imports torch

A command module starts with `use_sleeping_waiters()` (before torch loads), builds its parser with
`add_common_flags`, and wraps its `main` in `cli_entry`. The names below are the runtime's API.
"""
from .command import (EXIT_USER_ERROR, Interrupted, StopSignals, UserError, add_common_flags, check_range,
                      check_writable, cli_entry, os_error_line, progress, setup_run_log,
                      write_run_json)

__all__ = ["EXIT_USER_ERROR", "Interrupted", "StopSignals", "UserError", "add_common_flags", "check_range",
           "check_writable", "cli_entry", "os_error_line", "progress", "setup_run_log",
           "write_run_json"]
