"""Helpers for the fine-tuning tests: small fake pretraining checkpoints and minimal plans."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import blosc2
import numpy as np
import torch

from medgmae_plans.constants import NORMALISATION
from medgmae_trainers.networks import build_networks, network_config
from medgmae_trainers.pretrain.checkpoint import FORMAT

DATASET = "Dataset990_AbdomenPhantom"


def fake_checkpoint(path: Path, *, decoder: str = "gaussian", patch: int = 16, crop: int = 96, embed: int = 48,
                    depth: int = 3, heads: int = 3, preset: str = "tiny", seed: int = 0) -> dict:
    """A checkpoint_final.pt as medgmae_pretrain writes it, with a small random encoder; returns it."""
    cfg = network_config(preset, patch_size=patch, crop_size=crop, num_gaussians=8)
    cfg["encoder"].update(embed_dim=embed, depth=depth, num_heads=heads)
    cfg["decoder"].update(dim=24, depth=1, num_heads=3)
    torch.manual_seed(seed)
    encoder, dec = build_networks(cfg, decoder)
    model = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
             **{f"decoder.{k}": v for k, v in dec.state_dict().items()}}
    meta = {"preset": preset, "decoder_type": decoder, "patch_size": patch, "crop_size": [crop] * 3,
            "spacing": [1.5, 1.5, 1.5], "normalisation": dict(NORMALISATION), "network_config": cfg,
            "encoder_config": encoder.config, "step": 1}
    ckpt = {"format": FORMAT, "metadata": meta, "model": model, "encoder": encoder.state_dict(), "step": 1}
    torch.save(ckpt, path)
    return ckpt


def labels_json(n_labels: int = 3) -> dict:
    labels = {"background": 0, **{f"organ{i}": i for i in range(1, n_labels + 1)}}
    return {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 5, "file_ending": ".nii.gz"}


def minimal_preprocessed(preprocessed: Path, patch=(32, 32, 32), n_labels: int = 3) -> dict:
    """MedGMAE plans + dataset.json + an (empty, blosc2-looking) data folder: enough to build a trainer."""
    from medgmae_plans.planner import build_plans

    folder = preprocessed / DATASET
    plans = build_plans(DATASET, [[1.5, 1.5, 1.5]] * 5, [[40, 40, 40]] * 5)
    config = plans["configurations"]["3d_fullres"]
    config["patch_size"] = list(patch)
    config["architecture"]["arch_kwargs"]["img_size"] = list(patch)
    data = folder / config["data_identifier"]
    data.mkdir(parents=True, exist_ok=True)
    # one tiny but readable case: medgmae_train opens every case before nnU-Net starts
    for name, dtype in (("placeholder.b2nd", np.float32), ("placeholder_seg.b2nd", np.int16)):
        blosc2.asarray(np.zeros((1, 4, 4, 4), dtype), urlpath=str(data / name), mode="w")
    (data / "placeholder.pkl").write_bytes(pickle.dumps({"spacing": [1.5, 1.5, 1.5]}))
    (folder / "MedGMAEPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(labels_json(n_labels)))
    return plans


def small_trainer(results: Path, name: str, plans: dict, **settings_changes):
    """The MedGMAE trainer `name` as nnU-Net builds it, on `plans` (`minimal_preprocessed`'s), with a
    run record for a small UNETR (48 wide, 3 layers, decoder width 4); returns (trainer, fold folder)."""
    from medgmae_trainers.finetune.encoder_loading import unetr_arch_kwargs
    from medgmae_trainers.finetune.run_record import Settings, fold_folder, write_record
    from medgmae_trainers.finetune.trainers import parse_trainer_name, trainer_class

    init, fraction, _ = parse_trainer_name(name)
    encoder = dict(img_size=32, patch_size=16, embed_dim=48, depth=3, num_heads=3, mlp_ratio=4.0)
    settings = Settings(dataset=DATASET, trainer=name, init=init, fraction=fraction, fold=0, epochs=2,
                        iterations_per_epoch=5, arch_kwargs=unetr_arch_kwargs(encoder, [32] * 3, 4),
                        **settings_changes)
    folder = fold_folder(results, DATASET, name, "MedGMAEPlans", "3d_fullres", 0)
    write_record(folder, settings)
    plans = {**plans, "continue_training": False}
    return trainer_class(name)(plans, "3d_fullres", 0, labels_json(), torch.device("cpu")), folder
