"""One writer per run or output folder (and one planning run per raw dataset): an advisory lock.

Two `medgmae_pretrain` with the same `--out`, or `medgmae_train --continue` while the first run still
trains, would interleave their metrics and replace each other's checkpoints. Every command that writes
a run or output folder therefore holds a `flock` on that folder while it works; a second writer gets one
line naming the folder and the holder's pid (from `/proc/locks`: nothing is written to take the lock,
and the kernel releases it when the holder dies, so a killed run never blocks the next).

`hold_folder` takes the lock for the rest of the command: `runtime.cli_entry` releases every held lock
when the command returns (and removes a folder the lock made that is still empty, so a run refused after
it took the lock leaves no new folder behind).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .command import UserError

_HELD: list[tuple[int, Path, bool]] = []  # (fd, folder, made by the lock)


def holder_pid(folder: str | os.PathLike) -> int | None:
    """The pid holding a flock on `folder`, from /proc/locks (None where that cannot be told)."""
    try:
        st = os.stat(folder)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    wanted = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == wanted:
                return int(fields[4])
        except ValueError:
            continue
    return None


def _acquire(folder: Path, what: str) -> tuple[int, bool]:
    import fcntl

    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = holder_pid(folder)
        raise UserError(f"{folder}: another {what} is writing here ({f'pid {pid}' if pid else 'another process'}); "
                        "wait for it to finish, or choose another folder") from None
    return fd, made


def _release(fd: int, folder: Path, made: bool) -> None:
    os.close(fd)  # releases the lock
    if made:
        with contextlib.suppress(OSError):  # only an empty folder: what the lock itself made
            folder.rmdir()


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike, what: str = "run"):
    """Hold the folder's lock for the block (made if missing, and removed again if still empty)."""
    fd, made = _acquire(Path(folder), what)
    try:
        yield Path(folder)
    finally:
        _release(fd, Path(folder), made)


def hold_folder(folder: str | os.PathLike, what: str = "run") -> Path:
    """Take the folder's lock until the command ends (`release_held`, called by `cli_entry`)."""
    folder = Path(folder)
    if any(held == folder for _, held, _ in _HELD):
        return folder
    fd, made = _acquire(folder, what)
    _HELD.append((fd, folder, made))
    return folder


def held_folders() -> list[Path]:
    """The run and output folders the current command holds (to name them where an error does not)."""
    return [folder for _, folder, _ in _HELD]


def release_held(failed: bool = False) -> None:
    """Release every lock `hold_folder` took (the command has ended). After a failed command, a folder
    the lock made that holds nothing but the command's own log is removed too: a refusal leaves no new
    folder behind (a run that wrote anything else keeps it, e.g. a failed fine-tuning's record)."""
    while _HELD:
        fd, folder, made = _HELD.pop()
        if failed and made:
            with contextlib.suppress(OSError):
                entries = list(folder.iterdir())
                if entries and all(p.is_file() and p.suffix == ".log" for p in entries):
                    for entry in entries:
                        entry.unlink()
        _release(fd, folder, made)


def remove_unheld(paths) -> list[Path]:
    """Remove the folders among `paths` that no live process holds (`lock_folder` on a work folder):
    what a killed writer left behind, while a writer still at work keeps its own."""
    import shutil

    removed = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            continue
        try:
            with lock_folder(path, "writer"):
                shutil.rmtree(path, ignore_errors=True)
        except UserError:
            continue  # held: its writer is alive
        removed.append(path)
    return removed
