"""Atomic writes: a temporary name in the same folder, then `os.replace`.

A run killed at any point leaves either the old file or the new one, never a truncated file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    For writers that insist on a file name (SimpleITK, torch.save, matplotlib). The temporary name
    keeps the final suffix (e.g. `.nii.gz`) because some writers choose the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    except OSError as err:
        # a write into an open file reports no file name (or the temporary one): name the file being
        # written, so that a full disk says where (runtime.cli_entry makes it one line); `path` is untouched
        if err.errno in (errno.ENOSPC, errno.EDQUOT) and err.filename in (None, str(tmp_path)):
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    except RuntimeError as err:
        raise disk_full_error(path, err) or err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# Below this much free space a writer's failure is taken for a full disk (see disk_full_error).
DISK_FULL_MARGIN = 16 << 20


def disk_full_error(path: str | os.PathLike, err: BaseException) -> OSError | None:
    """The ENOSPC OSError that `err` really is, or None.

    SimpleITK and blosc2 report a full disk as a bare RuntimeError ("Error while creating the
    NDArray"), which would read as a fault of the image being written; when the device holding
    `path` is (all but) full at that moment, that is the cause to report.
    """
    if not isinstance(err, RuntimeError):
        return None
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return None
    if free >= DISK_FULL_MARGIN:
        return None
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    full.__cause__ = err
    return full


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    import torch

    # through a Python file: given a name, torch's own writer reports a full disk as
    # "unexpected pos N vs M"; through a file object the write raises the OSError (ENOSPC) it is
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a whole folder under a temporary name beside `path`, then move it into place.

    Without `replace`, `path` must not exist yet (the caller decides what to do with an existing
    one); with it, an existing `path` is swapped out only once the new folder is complete. On error
    the temporary folder is removed, so nothing half-written is left where users look.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        old = None
        if replace and path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replaced_directory(path: str | os.PathLike):
    """`atomic_directory` that replaces an existing folder (preprocessed data being redone)."""
    return atomic_directory(path, replace=True)


# `.<name>.` + tempfile's 8 random characters + `.tmp` (then the final suffix) or `.old`
_LEFTOVER = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|old)")


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove what this module's writes leave in `folder` when the process is killed mid-write.

    `atomic_path` and `atomic_directory` work under `.<name>.<random>.tmp*` (and `.old`) names that
    only a killed writer leaves behind; a run calls this when it starts again in its own folder, where
    no other writer of ours is running (a second run of the same folder is refused elsewhere).
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if _LEFTOVER.match(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
