"""The one safe reader of pickled files: checkpoints (`torch.load`) and pickles (`.pkl`) from paths a user gives.

A pickle can call any function while it is read, so a checkpoint or a case's `.pkl` shared by another
lab could run code before any check of ours sees it. Every such file is therefore read by an
unpickler that builds only plain data: python's containers and scalars, torch tensors (torch's
`weights_only=True`), and numpy arrays, scalars and dtypes (the one allow-list, `NUMPY_GLOBALS`:
nnU-Net's checkpoints and properties files hold numpy scalars and arrays, and checkpoints of ours
written before the RNG states were saved as plain lists hold numpy's). Anything else (a class, a
function) is refused with one line naming the file, before it is called.

Torch-free at import (torch is imported by `load_torch` only), so the preprocessing readers use it too.
"""
from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

from .command import UserError

# (module, name) pairs an unpickler may look up: numpy's array, scalar and dtype reconstruction. They
# build data only (an object array's items come through the same restricted unpickler).
_NUMPY_NAMES = (("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"))
# python's own containers, as plain pickles of dictionaries and sets name them
_PLAIN_NAMES = (("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                ("builtins", "slice"), ("builtins", "complex"), ("builtins", "bytearray"))


def _numpy_globals() -> list:
    import importlib

    found = []
    for module, name in _NUMPY_NAMES:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue  # numpy 1.x has no numpy._core, numpy 2.x's numpy.core is a deprecated alias
    import numpy as np

    found += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUVOMm"]  # numpy >= 1.25 pickles dtype classes
    return found


class UnsafePickle(UserError):
    """A pickle that asks for something other than plain data."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_NAMES or (module, name) in _PLAIN_NAMES \
                or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, which is not plain data")


def load_pickle(path) -> object:
    """The plain data pickled in the file at `path`; `UserError` naming it for anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _PlainUnpickler(io.BufferedReader(f)).load()
    except pickle.UnpicklingError as err:
        if "not plain data" in str(err):
            raise UnsafePickle(f"{path}: refused to unpickle: {err} (only plain data is read)") from None
        raise UserError(f"{path}: cannot be unpickled (UnpicklingError: {err})") from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as err:
        raise UserError(f"{path}: cannot be unpickled ({type(err).__name__}: {err})") from None


def load_torch(path, what: str = "torch checkpoint") -> object:
    """`torch.load(path, weights_only=True)` with numpy's arrays, scalars and dtypes allowed, on the CPU.

    A file that asks for anything else is refused (one line naming it) without running it; a file that
    is not a torch file at all, or is cut, is one line too.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        culprit = re.search(r"GLOBAL ([\w.]+)", text)
        if culprit:
            raise UnsafePickle(f"{path}: refused to load: the {what} asks for {culprit.group(1)}, which is not plain "
                               "data (only tensors and plain data are read)") from None
        detail = [line for line in text.splitlines() if line.strip() and "Weights only" not in line
                  and "weights_only" not in line and "documentation" not in line]
        first = detail[0] if detail else text[:80]
        raise UserError(f"{path}: not a readable torch checkpoint (UnpicklingError: {first})") from None
    except Exception as err:  # a truncated or foreign file raises many kinds (zip, EOF, runtime)
        first = str(err).splitlines()[0] if str(err) else ""
        raise UserError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {first})") from None
