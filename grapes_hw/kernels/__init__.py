"""numba kernels, compiled on first call (``cache=True``), never at import time: the
fixed-point round-and-write and the fused max pooling of the CNN."""
