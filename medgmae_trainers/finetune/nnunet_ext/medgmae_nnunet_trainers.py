"""nnU-Net's external-trainer entry: point `nnUNet_extTrainer` at this folder.

nnU-Net imports every module in the folders of `nnUNet_extTrainer` and takes the class whose name
it was given. This module re-exports the MedGMAE trainers (their code lives in
`medgmae_trainers.finetune.trainers`), including the module `__getattr__` that makes any
`MedGMAETrainer_<init>_f<pct>[_<tag>]` class on demand.
"""
from medgmae_trainers.finetune.trainers import *  # noqa: F401,F403
from medgmae_trainers.finetune.trainers import __getattr__  # noqa: F401
