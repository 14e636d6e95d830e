"""numba kernels, compiled on first call (``cache=True``), never at import time: the
fixed-point round-and-write (``fixed``), the CNN's fused max pooling (``pool``) and the
float step bundle (``step``: softmax error, activation gradient, row L1 sums)."""
