"""The synthetic abdominal CT phantom: the toolkit's embedded default data.

`generate_dataset` writes it in nnU-Net v2 raw format; `medgmae_make_phantom` is its command.
"""
from .dataset import DATASET_NAME, DEFAULT_DATASET_ID, case_spec, generate_dataset

__all__ = ["generate_dataset", "case_spec", "DATASET_NAME", "DEFAULT_DATASET_ID"]
