"""Downstream deformable registration (paper section 4.2, table 3): `medgmae_register`.

TransMorph-style network around the pretrained ViT3D encoder (`network.py`), MONAI's VoxelMorph as
the baseline, NCC + diffusion (+ Dice) losses, warping by MONAI's `Warp`, the phantom pair dataset
(`phantom_pairs.py`), and train / predict / evaluate. The OASIS and IXI converters are in
`preprocessing.convert` (`oasis`, `ixi`), beside the other datasets'.
"""
