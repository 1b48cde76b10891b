"""Dataset conversion (real datasets, the synthetic phantom) and pretraining crop sampling."""
