"""A generated sentiment dataset and a config-initialised tiny BERT (examples/transformers): nothing is
downloaded, so the example runs offline."""
