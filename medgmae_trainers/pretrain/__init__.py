"""MedGMAE pretraining: the model (`model.py`), the loop on the run core (`trainer.py`), its checkpoints
(`checkpoint.py`), the one pretrained-encoder loader every downstream task uses (`pretrained.py`),
DDP (`distributed.py`), plots, and `medgmae_pretrain` (`cli.py`). Importing this package imports nothing.
"""
