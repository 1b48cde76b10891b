"""The on-disk layouts of the downstream tasks' datasets: what the converters write and the tasks read.

    classification.py   classification_labels.csv (+ classification_sources.csv) in an nnU-Net raw folder
    registration.py     Registration_<name>/ with dataset_registration.json, images/, labels/, flows/

Segmentation's layout is nnU-Net's own raw format (`preprocessing.convert.common`).
"""
