"""The data plane: data preparation, training, evaluation, ensembles and serving, run for real."""
