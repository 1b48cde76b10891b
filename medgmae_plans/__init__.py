"""Planning: the tables every part agrees on, the planner, and the command runtime. Torch-free.

    configurations.py  the plans' configurations (3d_fullres, 3d_lowres): one table of geometry
    constants.py       HU window, normalisation, inits, the fine-tuning record's name, ViT-B sizes
    datasets.py        dataset ids, names and aliases
    cpu_recipe.py      the CPU recipe shared by the main job and benchmarks.transfer
    planner.py         fingerprint and MedGMAEPlanner (nnU-Net's ExperimentPlanner)
    runtime/           the command runtime (errors, CLI entry, logs, signals, atomic files, nnU-Net folders)

This is the lowest layer: it imports no other package of the toolkit (`lint-imports` checks it).
"""
