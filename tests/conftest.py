"""Shared fixtures: isolated nnU-Net folders per test, the hostile-input catalogues' phantom (built once a
session for both catalogue files), and the GPU marker's skip rule."""
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


# ---- the catalogues' shared data (tests/test_bad_input*.py), built once a session ----------------

@pytest.fixture(scope="session")
def phantom_source(tmp_path_factory):
    from bad_input_support import build_phantom

    return build_phantom(tmp_path_factory.mktemp("bad_input_phantom"))


@pytest.fixture(scope="session")
def preprocessed_source(tmp_path_factory, phantom_source):
    import shutil

    from bad_input_support import build_preprocessed

    root = tmp_path_factory.mktemp("bad_input_preprocessed")
    shutil.copytree(phantom_source.parent, root / "nnUNet_raw")
    return build_preprocessed(root)


@pytest.fixture
def raw(nnunet_env, phantom_source):
    """This test's own copy of the 2-case phantom raw dataset."""
    from bad_input_support import copy_into

    return copy_into(phantom_source, nnunet_env["nnUNet_raw"])


@pytest.fixture
def preprocessed(nnunet_env, preprocessed_source):
    """This test's own copy of the phantom, raw and preprocessed; returns the nnU-Net folders."""
    from bad_input_support import DATASET, copy_into

    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        copy_into(preprocessed_source[var] / DATASET, nnunet_env[var])
    return nnunet_env
