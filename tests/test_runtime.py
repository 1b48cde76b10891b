"""The shared runtime pieces every command relies on, and the environment nnU-Net's commands need."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medgmae_plans.runtime.atomic import _umask, atomic_directory, atomic_path, write_json_atomic
from medgmae_plans.runtime.paths import nnunet_folder
from medgmae_plans.runtime import UserError, add_common_flags, cli_entry, write_run_json


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "plan.json"
    write_json_atomic(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"version": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_atomic_path_keeps_the_suffix_writers_choose_formats_by(tmp_path):
    with atomic_path(tmp_path / "case.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "case.nii.gz").read_bytes() == b"x"
    assert (tmp_path / "case.nii.gz").stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    with pytest.raises(ValueError):
        with atomic_directory(tmp_path / "ds") as tmp:
            (tmp / "half.txt").write_text("x")
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(tmp_path / "ds") as tmp:
        (tmp / "whole.txt").write_text("x")
    assert (tmp_path / "ds" / "whole.txt").exists() and len(list(tmp_path.iterdir())) == 1


def test_cli_entry_turns_user_errors_into_one_line_and_exit_2(capsys):
    @cli_entry
    def main(argv):
        import argparse

        args = add_common_flags(argparse.ArgumentParser()).parse_args(argv)
        raise UserError("case_001.nii.gz: image and label geometry differ")

    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("error: case_001.nii.gz: image and label geometry differ")
    with pytest.raises(UserError):  # --verbose shows the traceback instead
        main(["--verbose"])


def test_user_errors_are_value_errors_but_only_they_become_one_line(capsys):
    assert issubclass(UserError, ValueError)

    @cli_entry
    def main(argv):
        raise ValueError("a bug, not bad input")

    with pytest.raises(ValueError, match="a bug"):
        main([])


def test_unset_nnunet_folder_defaults_under_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_results", raising=False)
    monkeypatch.chdir(tmp_path)
    assert nnunet_folder("nnUNet_results") == tmp_path / "nnUNet_results"
    assert os.environ["nnUNet_results"] == str(tmp_path / "nnUNet_results")


def test_run_json_records_settings_and_results(tmp_path):
    path = write_run_json(tmp_path, "medgmae_x", {"lr": 1e-4, "out": tmp_path}, {"loss": 0.5})
    payload = json.loads(path.read_text())
    assert payload["settings"]["lr"] == 1e-4 and payload["results"] == {"loss": 0.5}


def test_nnunet_trainer_lookup_imports_every_trainer():
    """nnUNetv2_train/_predict find trainers by importing all of nnU-Net's trainer modules
    (Primus -> timm -> torchvision): this fails with a torch whose torchvision cannot load."""
    code = (
        "import nnunetv2, os\n"
        "from nnunetv2.utilities.find_class_by_name import recursive_find_python_class\n"
        "cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], 'training', 'nnUNetTrainer'),"
        " 'nnUNetTrainer', 'nnunetv2.training.nnUNetTrainer')\n"
        "import torchvision.ops\n"
        "print(cls.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("nnUNetTrainer")
