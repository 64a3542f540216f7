"""Strided BLAS GEMM for the Numba kernels, and the split of a big GEMM over threads.

np.dot inside @njit wants whole contiguous operands and a contiguous output.
The parallel kernels (parallel.py) need more: each thread computes one block
of rows of the output, e.g. dW_ih[g0:g1] = dG[:, g0:g1]^T @ x, whose
operand is a column slice.  `gemm` calls the same BLAS Numba's np.dot calls
(SciPy's, through Numba's own `numba_xxgemm` helper, so compiled code stays
cacheable: the symbol is resolved by name when a cached kernel is loaded)
with explicit leading dimensions.

Operands are 2-D row-major views whose last axis is contiguous (stride one
element) and whose row stride is a whole number of elements: any slice
[r0:r1, c0:c1] of a C-contiguous array.  Callers in this package pass only
such views; nothing here checks it (the Python wrappers validate shapes).
"""
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .common import inner

_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char,             # kind, transa, transb
    types.intp, types.intp, types.intp,             # m, n, k
    types.voidptr, types.voidptr, types.intp,       # alpha, a, lda
    types.voidptr, types.intp,                      # b, ldb
    types.voidptr, types.voidptr, types.intp))      # beta, c, ldc


@intrinsic
def _data(typingctx, arr):
    """The address of arr's first element, as void* (arr may be a view)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.bitcast(ary.data, cgutils.voidptr_t)
    return types.voidptr(arr), codegen


@inner
def _ld(a):
    """Leading dimension (row stride in elements) of a row-major 2-D view."""
    return max(a.strides[0] // a.itemsize, a.shape[1], 1)


@inner
def gemm(A, trans_a, B, trans_b, C, beta):
    """C = op(A) @ op(B) + beta * C for row-major 2-D views (see module
    docstring); op(X) = X.T when trans_x.  C is (M, N); op(A) (M, K);
    op(B) (K, N).  beta is 0 (C is overwritten, may hold NaN) or 1."""
    M, N = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:
        if beta == 0:
            C[:, :] = 0
        return
    # Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: BLAS
    # sees each row-major view as its transpose, so the operands swap.
    ab = np.empty(2, C.dtype)
    ab[0] = 1
    ab[1] = beta
    kind = np.int8(115) if C.itemsize == 4 else np.int8(100)     # 's' / 'd'
    ta = np.int8(116) if trans_a else np.int8(110)               # 't' / 'n'
    tb = np.int8(116) if trans_b else np.int8(110)
    _xxgemm(kind, tb, ta, N, M, K, _data(ab[0:1]), _data(B), _ld(B), _data(A), _ld(A),
            _data(ab[1:2]), _data(C), _ld(C))


@inner
def split(n, parts, i, align):
    """Bounds [lo, hi) of part i of range(n) cut into `parts` near-equal
    pieces whose inner bounds are multiples of `align` (when n allows)."""
    lo = (n * i // parts) // align * align
    hi = n if i == parts - 1 else (n * (i + 1) // parts) // align * align
    return lo, max(lo, hi)
