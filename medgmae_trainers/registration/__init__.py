"""Downstream deformable registration (paper section 4.2, table 3): `medgmae_register`.

TransMorph-style network around the pretrained ViT3D encoder (`network.py`), MONAI's VoxelMorph as
the baseline, NCC + diffusion (+ Dice) losses, warping by MONAI's `Warp`, the phantom pair dataset
(`phantom_pairs.py`), converters for OASIS and IXI, and train / predict / evaluate.
"""
