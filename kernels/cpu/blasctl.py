"""Holding SciPy's OpenBLAS at one thread from compiled code.

fastrnn/_threads.py holds the OpenBLAS that the kernels call at one thread
while a call's kernels run (see its docstring for why).  Through ctypes
that is three foreign calls on entry (Numba's thread count, OpenBLAS's
thread count, and setting it to one), and after a torch.nn call, whose
work has pushed ctypes' and libffi's code and data out of the caches,
they took 12 us, and restoring the count through ctypes 1.5-6 us:
twice per forward+backward, ~4 % of an LSTM at S1.  `_hold` makes the
same three calls as one compiled function, and `_restore` the last, by
name: the two OpenBLAS functions are registered with LLVM under the names
below (`install`, given their addresses), and Numba registers
`get_num_threads` when it starts its threads (done here), so the cached
code finds them in a new process too.

Until `install`, the two names stand for harmless stand-ins (the count is
1, setting it does nothing): compiled code whose symbol is missing is not
refused, it crashes the process when called.  `install` must come before
the first call of either function (code is linked to the symbols it
finds when it is compiled or loaded); numba_cpu installs once, when it
first imports the kernels.
"""
import ctypes

import llvmlite.binding as llvm
from numba import njit, types
from numba.np.ufunc import parallel

_GET = "fastrnn_openblas_get_num_threads"
_SET = "fastrnn_openblas_set_num_threads"
_installed = None       # the addresses registered, kept for a second install's check

# the stand-ins (ctypes callbacks: they take the GIL themselves)
_STAND_INS = (ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 1), ctypes.CFUNCTYPE(None, ctypes.c_int)(lambda n: None))
llvm.add_symbol(_GET, ctypes.cast(_STAND_INS[0], ctypes.c_void_p).value)
llvm.add_symbol(_SET, ctypes.cast(_STAND_INS[1], ctypes.c_void_p).value)

parallel._launch_threads()      # registers get_num_threads (as numba.get_num_threads does)

_blas_get = types.ExternalFunction(_GET, types.intc())
_blas_set = types.ExternalFunction(_SET, types.void(types.intc))
_numba_get = types.ExternalFunction("get_num_threads", types.intc())


def install(get_fn, set_fn):
    """Register OpenBLAS's openblas_get_num_threads and
    openblas_set_num_threads (ctypes function objects, int(void) and
    void(int)) and return (`hold`, `restore`).  A second call must name
    the same functions."""
    global _installed
    addrs = (ctypes.cast(get_fn, ctypes.c_void_p).value, ctypes.cast(set_fn, ctypes.c_void_p).value)
    if _installed is None:
        if not all(addrs):
            raise ValueError("blasctl.install: a null function address")
        if _hold.overloads or _restore.overloads:
            raise RuntimeError("blasctl.install: _hold or _restore already ran, linked to the stand-ins")
        llvm.add_symbol(_GET, addrs[0])
        llvm.add_symbol(_SET, addrs[1])
        _installed = addrs
    elif _installed != addrs:
        raise RuntimeError("blasctl.install: already installed with other functions")
    return _hold, _restore


@njit(cache=True)
def _hold():
    """hold() -> (n, saved): Numba's thread count for the calling thread
    and, where it is 2 or more, OpenBLAS's thread count before the call,
    which has set it to 1 (saved 0 where n < 2: nothing changed).  The
    caller restores `saved` (unless it was 1) when its kernels are done."""
    n = _numba_get()
    if n < 2:
        return n, 0
    saved = _blas_get()
    if saved != 1:
        _blas_set(1)
    return n, saved


@njit(cache=True)
def _restore(saved):
    """OpenBLAS's thread count back to `saved`."""
    _blas_set(saved)
