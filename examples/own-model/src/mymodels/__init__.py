"""Models of the own-model example: `mymodels.residual:build` is the pipeline's model.entrypoint."""
