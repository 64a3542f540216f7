"""Shared settings for the Numba kernels.

JIT options, used by every kernel:
  * fastmath without 'nnan'/'ninf', so LLVM may reassociate and contract
    (vectorise) but NaN and inf still propagate as IEEE says;
  * error_model='numpy': float division never raises, which is what lets
    LLVM vectorise the rational tanh (with the default 'python' model the
    zero-division check blocks it: 4.8 -> 0.6 ns/element measured here);
  * cache=True: compiled code is kept on disk beside the sources (or in
    NUMBA_CACHE_DIR), so a second process does not recompile.
"""
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT = dict(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
# the kernels that fork Numba threads (prange; see parallel.py)
JIT_PAR = dict(JIT, parallel=True)
# Helpers only compiled code calls: no CPython or C wrapper to generate,
# optimise and emit for them (~2 s of a mode's cold compile).  Declared with
# @inner / @inner_par below, so that a call from Python raises TypeError;
# tests go through an @njit shim.
INNER = dict(JIT, no_cpython_wrapper=True, no_cfunc_wrapper=True)
INNER_PAR = dict(INNER, parallel=True)

import numpy as np
from numba import njit
from numba.core.registry import CPUDispatcher


class InnerDispatcher(CPUDispatcher):
    """A helper compiled without a CPython wrapper (INNER).  Numba calls
    such a function from Python through a null pointer and the process
    dies (numba/numba#2541); this raises instead.  Compiled callers do not
    go through __call__, so nothing else changes."""

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{self.py_func.__module__}.{self.py_func.__qualname__} is an inner kernel "
                        "helper compiled without a Python wrapper: only compiled kernels can call it "
                        "(from Python, call it through an @njit function)")


def _guarded(options):
    """A decorator: @njit(**options), callable from compiled code only (see
    InnerDispatcher)."""
    def decorate(fn):
        d = njit(**options)(fn)
        d.__class__ = InnerDispatcher
        return d
    return decorate


inner = _guarded(INNER)
inner_par = _guarded(INNER_PAR)
# The forward cells the time loops call once a step (and a part): inlined
# into their callers by Numba.  Called as a function of its own, a helper
# that LLVM does not inline (too big) takes a reference on each array
# argument and drops it again, and where its control flow defeats Numba's
# reference-count pruning those are ~20 calls into the runtime per call:
# the LSTM's training cell at one row and H = 64 took 0.45 us a call as a
# function and 0.30 inlined.  Not the BPTT cells: inlined into the BPTT
# parts by rows they ran slower (LSTM part (100, 8, 128, 128) 1160-1290
# against 980-1106 us, S3 4912-5166 against 4516-4696; GRU 1109 against
# 939), level in the one-thread loops.
INNER_INLINE = dict(INNER, inline="always")
inner_inline = _guarded(INNER_INLINE)


@inner
def finished_rows(t, n, k0, k1, perm, training, y, Hs):
    """Units [k0, k1) of the sorted rows [n, len(perm)) that no longer run at
    step t: y = 0 and, when training, Hs = 0 (read by the dW_hh GEMM against
    dG = 0: keep it finite).  Every mode's forward pointwise pass ends
    with it."""
    for j in range(n, perm.shape[0]):
        b = perm[j]
        yr = y[t, b]
        for k in range(k0, k1):
            yr[k] = 0
        if training:
            sh = Hs[t, b]
            for k in range(k0, k1):
                sh[k] = 0


@inner
def colsum(a, out, c0=0, c1=-1):
    """out[c0:c1] = a[:, c0:c1].sum(axis=0) for a C-contiguous (R, C) array,
    four rows per pass over out; c1 = -1 means all columns.

    Row views from c0 (not out[k] += a[r, k] over range(c0, c1)): with
    those LLVM could not tell out from a apart and left the loop scalar.
    Measured (2048 x 512 of a 2048 x 1024 float32 array, one thread): 0.09
    against 1.04 ms; at S3 the LSTM's two bias sums were 10 % of the GEMMs
    after its BPTT loop."""
    if c1 < 0:
        c1 = a.shape[1]
    R = a.shape[0]
    m = c1 - c0
    o = out[c0:]
    if m <= 0:
        return      # also lets LLVM drop the negative-index wraparound below
    for k in range(m):
        o[k] = 0
    r4 = R - R % 4
    for r in range(0, r4, 4):
        a0 = a[r, c0:]
        a1 = a[r + 1, c0:]
        a2 = a[r + 2, c0:]
        a3 = a[r + 3, c0:]
        for k in range(m):
            o[k] += (a0[k] + a1[k]) + (a2[k] + a3[k])
    for r in range(r4, R):
        a0 = a[r, c0:]
        for k in range(m):
            o[k] += a0[k]


@njit(**JIT)
def transpose_into(src, dst):
    """dst = src.T for C-contiguous src (R, C) and dst (C, R), in 8x8 tiles
    with constant trip counts (LLVM unrolls them).  np.ascontiguousarray(w.T)
    walks the source column by column: 31 ms for a 4096 x 1024 float32 W_hh
    (the LSTM's at H = 1024), against 4.3 ms here (0.65 against 3.9 ms at
    2048 x 512), measured on the 2-core dev VM; the forward of every training
    call builds this copy for BPTT."""
    R, C = src.shape
    R8 = R - R % 8
    C8 = C - C % 8
    for r0 in range(0, R8, 8):
        for c0 in range(0, C8, 8):
            for c in range(8):
                d = dst[c0 + c, r0:r0 + 8]
                for r in range(8):
                    d[r] = src[r0 + r, c0 + c]
    for r in range(R8):
        for c in range(C8, C):
            dst[c, r] = src[r, c]
    for r in range(R8, R):
        for c in range(C):
            dst[c, r] = src[r, c]


@inner
def after_loop_grads(dG2, dGh2, x2, Hs2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh):
    """The big GEMMs after the BPTT loop, over all T*B rows at once:
    dx = dG @ w_ih, dW_ih = dG^T x, dW_hh = dGh^T h_prev, and the bias
    gradients as column sums.  dG2, dGh2 (T*B, G*H); x2 (T*B, I); Hs2 (T*B, H)."""
    np.dot(dG2, w_ih, dx2)
    np.dot(dG2.T, x2, dw_ih)
    np.dot(dGh2.T, Hs2, dw_hh)
    colsum(dG2, db_ih)
    colsum(dGh2, db_hh)
