"""Networks, pretraining and fine-tuning. Importing this package (and `networks`) needs torch alone."""
