"""Shared fixtures: isolated nnU-Net folders per test, and the GPU marker's skip rule."""
from __future__ import annotations

import pytest


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """Point nnU-Net's three folder variables at fresh folders under tmp_path."""
    folders = {}
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        folder = tmp_path / var
        folder.mkdir()
        monkeypatch.setenv(var, str(folder))
        folders[var] = folder
    return folders


def _cuda_available() -> bool:
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with CuPy (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
