"""Downstream multi-label classification (the paper's CT-RATE task): data, model, training, metrics, CLI.

`medgmae_classify {train,predict,evaluate,convert}` is the command (`cli.main`).
"""
