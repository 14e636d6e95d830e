"""Pure functions: the GRAPES factor, the loss's output error, weight initialisation and the
spiking unit's step. No state, no backends: what the layers above wire together."""
