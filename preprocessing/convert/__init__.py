"""`medgmae_convert`: the paper's datasets, from their published layouts to nnU-Net raw datasets.

One module per dataset (`amos`, `flare22`, `btcv`, `segthor`, `abdomenatlas`), each with
`DATASET_ID`, `DATASET_NAME` and `find(source) -> Conversion`; `common.write_raw_dataset` writes the
result. Organs that AMOS also labels get AMOS's names (`preprocessing.labels.AMOS_LABELS`).
"""
