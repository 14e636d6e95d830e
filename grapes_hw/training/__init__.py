"""Training runs: ``TrainConfig``, the one driver and epoch loop every model uses, the
builders per model, plateau fits, drift evaluation and continual learning."""
