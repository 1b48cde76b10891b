"""The frozen-encoder probe: what an encoder has learned, measured by a linear classifier of its features.

    cases.py     the cases a probe reads: the fold's preprocessed training and validation cases (the same
                 nested `--fraction` subsets as `medgmae_train`) and the raw test cases, preprocessed in memory
    features.py  representations as token-grid fields over a case: the encoder's UNETR skips plus its final
                 normed tokens over sliding windows, or raw intensities in token-sized patches (PCA); and the
                 trilinear sampling that takes a field to voxels
    linear.py    class-balanced voxel samples, the L2-regularised linear softmax and its segmentation

The command, which scores the probe with the toolkit's Dice, is `evaluation/probe.py` (`medgmae_probe`):
evaluation sits above the trainers, so the scoring cannot live here.
"""
