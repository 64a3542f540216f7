"""fastrnn: fused recurrent-network kernels (Numba on the CPU, CuPy CUDA on NVIDIA GPUs).

Public API:
    rnn_forward, rnn_backward   the functional contract (see fastrnn.functional)
    backends()                  every backend, whether it is available here, and why not
    MODES                       ("rnn_tanh", "rnn_relu", "gru", "lstm")
"""
from .cells import MODES
from .dispatch import backends
from .functional import Saved, rnn_backward, rnn_forward

__version__ = "0.1.0"
__all__ = ["rnn_forward", "rnn_backward", "backends", "Saved", "MODES", "__version__"]
