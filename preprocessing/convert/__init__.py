"""`medgmae_convert`: the paper's datasets, from their published layouts to nnU-Net raw datasets.

One module per dataset (`amos`, `flare22`, `btcv`, `segthor`, `abdomenatlas`), each with
`DATASET_ID`, `DATASET_NAME` and `find(source) -> Conversion`; `common.write_raw_dataset` writes the
result. Organs that AMOS also labels get AMOS's names (`preprocessing.labels.AMOS_LABELS`).

The downstream tasks' datasets are converted here too, each into the layout its task reads, by
its own command: CT-RATE (`ctrate`, `medgmae_classify convert`) into a classification dataset,
OASIS and IXI (`oasis`, `ixi`, `medgmae_register convert`) into the registration layout, which
`registration_common` writes.
"""
