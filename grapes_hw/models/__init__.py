"""Networks whose layers hold weight backends: the MLP (``mlp``), spiking units (``snu``)
and convolutional nets (``cnn``). Forward and error wiring only; the learning rules that
train them are in ``grapes_hw.rules``."""
