"""What every command shares: one-line errors, common flags, progress bars, run logs and JSON.

A command's `main(argv)` builds its parser with `add_common_flags`, and is wrapped by `cli_entry`
so that bad input (a `UserError`) prints one line naming the file, exits non-zero, and shows a
traceback only with `--verbose`; so do a full disk and a folder that may not be written
(`os_error_line`); a run stopped by a signal (`Interrupted`) exits 128 + the signal.
"""
from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .atomic import write_json_atomic

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """Bad input or a refused request: reported as one line, exit code 2, by `cli_entry`.

    A `ValueError`, so that code calling the toolkit as a library catches it with the family it
    expects for bad arguments; `cli_entry` catches only this subclass, so any other ValueError (a
    bug) still ends in a traceback.
    """


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS)


def os_error_line(err: OSError) -> str | None:
    """The one line for an OSError the user can fix (a full disk, a folder they may not write), or
    None for any other (a bug, kept as a traceback)."""
    where = err.filename
    if where is None:  # a write through a file object or a library: name the folders the command writes
        from medgmae_plans.runtime.locks import held_folders

        where = " or ".join(f"in {folder}" for folder in held_folders()) or "(a file the error did not name)"
    if err.errno in _NO_SPACE:
        return f"no space left on device writing {where}; free space there and rerun (files written before are kept)"
    if err.errno in _NOT_ALLOWED:
        return f"{where}: {err.strerror.lower() if err.strerror else 'not allowed'}"
    return None


def check_range(flag: str, value, low=None, high=None, *, low_open: bool = False, high_open: bool = False) -> None:
    """Refuse (`UserError`) a flag's value outside [low, high] (an `_open` bound excluded), NaN or infinite.

    For the numeric flags every command checks before any work; the rule in the message is the one
    its `--help` states. None (a flag not given) passes.
    """
    if value is None:
        return
    ok = math.isfinite(value)  # NaN is in no range, and infinity is no value to train or measure with
    if low is not None:
        ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if ok:
        return
    if low is not None and high is not None:
        rule = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        rule = f"{'>' if low_open else '>='} {low:g}"
    else:
        rule = f"{'<' if high_open else '<='} {high:g}"
    infinite = value == value and not math.isfinite(value)
    raise UserError(f"{flag} {value:g}: must be {'finite and ' if infinite else ''}{rule}")


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse (`UserError`) a folder that cannot be written or created, before any work; creates nothing.

    The nearest existing folder on the way to `folder` must let us write, or the run would fail
    after its work with a `PermissionError` traceback.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{folder}: {what} cannot be made ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{folder}: {what} is not writable" + ("" if existing == folder else
                                                              f" ({existing} is not writable)"))
    return folder


def add_common_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--no-pbar", action="store_true", help="disable progress bars")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug logging")

    def one_line_error(message: str):
        # argparse prints its whole usage block first; the toolkit's contract is one line naming
        # the argument (exit 2, as argparse's own)
        parser.exit(EXIT_USER_ERROR, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")

    parser.error = one_line_error
    return parser


def cli_entry(main: Callable[[Sequence[str] | None], Any]) -> Callable[[Sequence[str] | None], int]:
    """Wrap `main(argv)` into a console-script entry point with the toolkit's error contract."""

    @functools.wraps(main)
    def entry(argv: Sequence[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        verbose = "--verbose" in args
        prog = Path(sys.argv[0]).name if argv is None else main.__module__
        failed = True
        try:
            result = main(args)
            failed = False
        except UserError as err:
            if verbose:
                raise
            print(f"{prog}: error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR
        except Interrupted as stop:
            print(f"{prog}: {stop}", file=sys.stderr)
            return stop.code
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 128 + signal.SIGINT
        except OSError as err:
            line = os_error_line(err)
            if line is None or verbose:
                raise
            print(f"{prog}: error: {line}", file=sys.stderr)
            return EXIT_USER_ERROR
        finally:
            from medgmae_plans.runtime.locks import release_held

            release_held(failed)  # the run and output folders this command held (`locks.hold_folder`)
        return int(result or 0)

    return entry


def progress(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs):
    """A tqdm bar, off when `enabled` is False or stderr is not a terminal."""
    from tqdm.auto import tqdm

    disable = (not enabled) or not sys.stderr.isatty()
    return tqdm(iterable, disable=disable, dynamic_ncols=True, **kwargs)


def setup_run_log(out_dir: str | Path, name: str, verbose: bool = False) -> logging.Logger:
    """Log to the console and to `<out_dir>/<name>.log` (appended, so a resumed run keeps its history)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"medgmae.{name}")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    file_handler = logging.FileHandler(out_dir / f"{name}.log")
    file_handler.setFormatter(fmt)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(file_handler)
    logger.addHandler(console)
    return logger


def write_run_json(out_dir: str | Path, name: str, settings: dict, results: dict | None = None) -> Path:
    """Write `<out_dir>/<name>.json` with the run's settings, results and environment."""
    path = Path(out_dir) / f"{name}.json"
    payload = {
        "command": name,
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "python": platform.python_version(),
        "settings": _jsonable(settings),
        "results": _jsonable(results or {}),
    }
    write_json_atomic(path, payload)
    return path


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class Interrupted(Exception):
    """A run stopped by SIGINT/SIGTERM, after saving what lets it resume. `cli_entry` exits with
    `code`, 128 + the signal number as a shell reports a process killed by it (130 Ctrl-C, 143 SIGTERM)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.code = 128 + signum


class StopSignals:
    """Within the block, SIGINT/SIGTERM only set `signum`, which a training loop checks after each
    step so that it saves its checkpoint before leaving (then raises `Interrupted`); the previous
    handlers come back after."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

