"""fastrnn: fused recurrent-network kernels (Numba on the CPU, CuPy CUDA on NVIDIA GPUs).

Public API:
    rnn_forward, rnn_backward   the functional contract (see fastrnn.functional)
    backends()                  every backend, whether it is available here, and why not
    MODES                       ("rnn_tanh", "rnn_relu", "gru", "lstm")
    release_cached_buffers()    free the CPU backend's cached big arrays now
                                (see fastrnn/_backends/bufpool.py)
"""
from .cells import MODES
from .dispatch import backends
from .functional import Saved, rnn_backward, rnn_forward

__version__ = "0.1.0"
__all__ = ["rnn_forward", "rnn_backward", "backends", "Saved", "MODES", "release_cached_buffers",
           "__version__"]


def release_cached_buffers():
    """Drop the big arrays the Numba backend keeps for reuse that no array in
    use refers to (memory in use is never touched); returns the bytes freed.
    The cache's cap on idle memory is FASTRNN_BUFFER_CACHE_MB (default 1024,
    0: no cache)."""
    from ._backends.bufpool import CACHE
    return CACHE.release()
