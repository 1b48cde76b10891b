"""Dataset names on the command line: ids, full names, aliases; ambiguous and missing ones."""
from __future__ import annotations

import pytest

from medgmae_plans.datasets import resolve_dataset
from preprocessing.plan_and_preprocess import main
from medgmae_plans.runtime import UserError

RAW = ["Dataset218_AMOS2022_postChallenge_task1", "Dataset022_FLARE22", "Dataset990_AbdomenPhantom",
       "Dataset017_BTCV"]


@pytest.fixture
def datasets(nnunet_env):
    for name in RAW:
        (nnunet_env["nnUNet_raw"] / name).mkdir()
    (nnunet_env["nnUNet_raw"] / "not_a_dataset").mkdir()
    return nnunet_env


@pytest.mark.parametrize("text, expected", [
    ("218", "Dataset218_AMOS2022_postChallenge_task1"),
    ("22", "Dataset022_FLARE22"),
    ("dataset990_abdomenphantom", "Dataset990_AbdomenPhantom"),
    ("AbdomenPhantom", "Dataset990_AbdomenPhantom"),
    ("AMOS", "Dataset218_AMOS2022_postChallenge_task1"),
    ("flare22", "Dataset022_FLARE22"),
    ("Phantom", "Dataset990_AbdomenPhantom"),
    ("btcv", "Dataset017_BTCV"),
])
def test_resolves_ids_names_and_aliases(datasets, text, expected):
    assert resolve_dataset(text) == expected


def test_phantom_aliases_tell_the_two_phantoms_apart(datasets):
    (datasets["nnUNet_raw"] / "Dataset991_PhantomFindings").mkdir()
    assert resolve_dataset("Phantom") == "Dataset990_AbdomenPhantom"
    assert resolve_dataset("phantomfindings") == "Dataset991_PhantomFindings"


def test_ambiguous_alias_lists_the_matches(datasets):
    (datasets["nnUNet_raw"] / "Dataset219_AMOS2022_postChallenge_task2").mkdir()
    with pytest.raises(UserError, match="ambiguous") as err:
        resolve_dataset("amos")
    assert "Dataset218_AMOS2022_postChallenge_task1" in str(err.value)
    assert "Dataset219_AMOS2022_postChallenge_task2" in str(err.value)
    assert resolve_dataset("219") == "Dataset219_AMOS2022_postChallenge_task2"


def test_missing_dataset_lists_what_exists(datasets):
    with pytest.raises(UserError) as err:
        resolve_dataset("SegTHOR")
    message = str(err.value)
    assert "no dataset matches 'SegTHOR'" in message
    assert all(name in message for name in RAW) and "not_a_dataset" not in message
    with pytest.raises(UserError):
        resolve_dataset("991")


def test_preprocessed_only_datasets_resolve(nnunet_env):
    (nnunet_env["nnUNet_preprocessed"] / "Dataset055_SegTHOR").mkdir()
    assert resolve_dataset("segthor") == "Dataset055_SegTHOR"


def test_cli_reports_unknown_dataset_in_one_line(datasets, capsys):
    assert main(["-d", "LiTS", "--no-pbar"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no dataset matches 'LiTS'" in err[0] and "Dataset017_BTCV" in err[0]
