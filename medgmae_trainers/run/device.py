"""The device a command runs on, from its `--device` flag: the one reading of that flag."""
from __future__ import annotations

import torch

from medgmae_plans.runtime import UserError

# Device types whose presence torch can be asked about, and the words a refusal uses for them.
_CHECKED = {"cuda": ("CUDA", lambda: torch.cuda.is_available()),
            "mps": ("Apple MPS", lambda: torch.backends.mps.is_available())}


# The --help of a command's --device flag (default "auto"), as `resolve_device` reads it.
DEVICE_HELP = "cpu, cuda, cuda:N, or auto: cuda when available (default auto)"


def resolve_device(name: str | None, flag: str = "--device") -> torch.device:
    """`name` as a torch device: "auto" or None is cuda when a GPU is visible, else cpu.

    A name that is not a torch device, or a device this machine lacks (`cuda` without a GPU), is a
    one-line `UserError` naming `flag`, before any data is read or a file written.
    """
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{flag} {name!r}: not a torch device (cpu, cuda, cuda:N or auto)") from None
    words, available = _CHECKED.get(device.type, (None, lambda: True))
    if not available():
        raise UserError(f"{flag} {name}: no {words} device is available")
    return device
