"""The per-step recurrent GEMM for the Numba kernels: out = A @ Bt.T.

Why not BLAS.  Inside the time loop the GEMM is small in one dimension (the
batch, 1-64 rows) and the same weight matrix is used at every step.  OpenBLAS
packs both operands on every call, W_hh again at every step (perf, LSTM
forward+BPTT at S3: packing ~20 % and thread hand-off ~15 % of the time),
and (8x128)@(128x512) runs at ~25 GFLOP/s on this machine.  The weights are already laid out the way a
dot-product kernel wants them (W_hh rows for the forward, W_hh^T rows for
BPTT), so no packing is needed at all:

    out[m, n] = sum_k A[m, k] * Bt[n, k]      A (M, K), Bt (N, K), C rows

A 4x3 register block (4 rows of A against 3 rows of Bt, 12 accumulators)
vectorised by LLVM along k: 7 loads per 12 FMAs, so the loop is bound by
FMA throughput, not by loads; 'reassoc' lets LLVM split each sum into
vector partial sums.  One thread: measured on the 2-core dev VM
(benchmarks/bench_gemm.py), (8x128)@(128x512) takes 16-22 us against
OpenBLAS's 41-59 us, and bigger products go to OpenBLAS (see OWN_MAX_*).

Threads: this kernel itself is serial.  The threaded loops (parallel.py) give
each Numba thread one block of columns (_cols with n0, n1); there, with
OpenBLAS held at one thread so that none of its idle workers spins on the
cores, (64x512)@(512x2048) split in two ran at 137 GFLOP/s against
OpenBLAS's 37-92 GFLOP/s on both cores (measured, 2-core dev VM).  Without
holding OpenBLAS, the split lost: its workers spin for tens of ms after
every multi-threaded call and took the second core (S2 forward 5.3 -> 8.0 ms).

Summation order differs from BLAS, so results agree to float rounding (the
kernel tests hold them to the float64 oracle).
"""
import numpy as np
from numba import njit
from numba.extending import register_jitable

from .common import JIT, inner, transpose_into  # noqa: F401 (transpose_into: the backend calls it as gemm.transpose_into)

# Where this kernel beats OpenBLAS in the one-thread loops (measured,
# benchmarks/bench_gemm.py): up to 16 rows at any size (OpenBLAS's packing of
# W_hh per call dominates), and small products of any shape.  Above that
# OpenBLAS's blocking and its second thread win (e.g. (64x512)@(512x2048):
# 1.4-2.1 ms against 2.7 ms).  The threaded loops always use this kernel.
OWN_MAX_ROWS = 16
OWN_MAX_MACS = 1 << 22


@inner
def _cols_thin(A, Bt, out, n0, n1):
    """out[:, n0:n1] = A @ Bt[n0:n1].T one row of A at a time against 6 rows of
    Bt (7 loads per 6 FMAs): for 1-3 rows, where a 4-row block cannot form
    (a 1x3 form was load-bound, 1.6x slower at B=1), and _cols's remainders."""
    M, K = A.shape
    z = A.dtype.type(0)
    n = n0
    while n + 6 <= n1:
        b0 = Bt[n]
        b1 = Bt[n + 1]
        b2 = Bt[n + 2]
        b3 = Bt[n + 3]
        b4 = Bt[n + 4]
        b5 = Bt[n + 5]
        for m in range(M):
            a0 = A[m]
            s0 = z
            s1 = z
            s2 = z
            s3 = z
            s4 = z
            s5 = z
            for k in range(K):
                v = a0[k]
                s0 += v * b0[k]
                s1 += v * b1[k]
                s2 += v * b2[k]
                s3 += v * b3[k]
                s4 += v * b4[k]
                s5 += v * b5[k]
            out[m, n] = s0
            out[m, n + 1] = s1
            out[m, n + 2] = s2
            out[m, n + 3] = s3
            out[m, n + 4] = s4
            out[m, n + 5] = s5
        n += 6
    while n < n1:
        b0 = Bt[n]
        for m in range(M):
            a0 = A[m]
            s0 = z
            for k in range(K):
                s0 += a0[k] * b0[k]
            out[m, n] = s0
        n += 1


@inner
def _cols(A, Bt, out, n0, n1):
    """out[:, n0:n1] = A @ Bt[n0:n1].T: 4x3 blocks over the first M - M % 4
    rows; the remaining rows and columns go to _cols_thin."""
    M, K = A.shape
    z = A.dtype.type(0)
    m4 = M - M % 4
    # n0 is a literal 0 for some callers: as an int64 both calls of
    # _cols_thin share one compiled form (a literal made a second one,
    # ~0.7 s of a cold first call)
    n = np.int64(n0)
    if m4 < M:
        _cols_thin(A[m4:], Bt, out[m4:], n, n1)
    if m4 == 0:
        return
    while n + 3 <= n1:
        b0 = Bt[n]
        b1 = Bt[n + 1]
        b2 = Bt[n + 2]
        for m in range(0, m4, 4):
            a0 = A[m]
            a1 = A[m + 1]
            a2 = A[m + 2]
            a3 = A[m + 3]
            s00 = z
            s01 = z
            s02 = z
            s10 = z
            s11 = z
            s12 = z
            s20 = z
            s21 = z
            s22 = z
            s30 = z
            s31 = z
            s32 = z
            for k in range(K):
                w0 = b0[k]
                w1 = b1[k]
                w2 = b2[k]
                v = a0[k]
                s00 += v * w0
                s01 += v * w1
                s02 += v * w2
                v = a1[k]
                s10 += v * w0
                s11 += v * w1
                s12 += v * w2
                v = a2[k]
                s20 += v * w0
                s21 += v * w1
                s22 += v * w2
                v = a3[k]
                s30 += v * w0
                s31 += v * w1
                s32 += v * w2
            out[m, n] = s00
            out[m, n + 1] = s01
            out[m, n + 2] = s02
            out[m + 1, n] = s10
            out[m + 1, n + 1] = s11
            out[m + 1, n + 2] = s12
            out[m + 2, n] = s20
            out[m + 2, n + 1] = s21
            out[m + 2, n + 2] = s22
            out[m + 3, n] = s30
            out[m + 3, n + 1] = s31
            out[m + 3, n + 2] = s32
        n += 3
    if n < n1:      # 1-2 columns left: one column at a time
        _cols_thin(A[:m4], Bt, out[:m4], n, n1)


# One or two rows (batch 1-2, e.g. typing-time inference): the dot form above
# ends every output element with a horizontal sum of its vector partial sums,
# and at these sizes those sums cost as much as the products (the 1x6 form is
# also load-bound: 7 loads per 6 FMAs).  With W^T's rows instead (BT (K, N),
# the weights' other copy the loops keep for BPTT), each k adds a[k] * BT[k]
# to the output row: no horizontal sums, the row stays in L1.  Measured
# (one thread, 2-core dev VM, float32, (M, K, N) = (1, 64, 256) / (1, 128,
# 512) / (2, 128, 512)): 0.62 / 2.4 / 2.8 us against _cols's 0.82 / 3.7 /
# 5.7.  Only while W^T is small enough to stay in cache: whole batch-1
# inference calls, one thread, alternating with the dot form in one
# process, ran 1.14-1.18x as fast at 100 steps with 16-64 KB of W_hh, but
# 0.99-1.14x with 256 KB and 0.69-0.77x from 1 MB up (the transpose the call
# builds included; at 256 KB the per-step products alone were level).  At
# 3 rows _cols's 1x6 form is as fast, at 4 its 4x3 blocks win.
AXPY_MAX_ROWS = 2
AXPY_MAX_BYTES = 1 << 17
# An inference call builds W_hh^T only for this: below this many steps the
# copy (a strided transpose) costs more than the faster steps save
# (measured, 64 KB of W_hh: 16 steps 0.99-1.00x, 32 steps 0.94-1.09x).
AXPY_MIN_STEPS = 32


@inner
def _axpy(A, BT, out):
    """out = A @ BT for A (M, K), BT (K, N): rows in pairs (each BT row read
    once for both, k unrolled by 4), a last odd row on its own (k by 8).
    For M <= AXPY_MAX_ROWS (mm_nt)."""
    M, K = A.shape
    N = BT.shape[1]
    k4 = K - K % 4
    k8 = K - K % 8
    m = 0
    while m + 2 <= M:
        a = A[m]
        c = A[m + 1]
        o = out[m]
        p = out[m + 1]
        for j in range(N):
            o[j] = 0
            p[j] = 0
        for k in range(0, k4, 4):
            a0 = a[k]
            a1 = a[k + 1]
            a2 = a[k + 2]
            a3 = a[k + 3]
            c0 = c[k]
            c1 = c[k + 1]
            c2 = c[k + 2]
            c3 = c[k + 3]
            b0 = BT[k]
            b1 = BT[k + 1]
            b2 = BT[k + 2]
            b3 = BT[k + 3]
            for j in range(N):
                v0 = b0[j]
                v1 = b1[j]
                v2 = b2[j]
                v3 = b3[j]
                o[j] += (a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3)
                p[j] += (c0 * v0 + c1 * v1) + (c2 * v2 + c3 * v3)
        for k in range(k4, K):
            a0 = a[k]
            c0 = c[k]
            b0 = BT[k]
            for j in range(N):
                o[j] += a0 * b0[j]
                p[j] += c0 * b0[j]
        m += 2
    if m < M:
        a = A[m]
        o = out[m]
        for j in range(N):
            o[j] = 0
        for k in range(0, k8, 8):
            a0 = a[k]
            a1 = a[k + 1]
            a2 = a[k + 2]
            a3 = a[k + 3]
            a4 = a[k + 4]
            a5 = a[k + 5]
            a6 = a[k + 6]
            a7 = a[k + 7]
            b0 = BT[k]
            b1 = BT[k + 1]
            b2 = BT[k + 2]
            b3 = BT[k + 3]
            b4 = BT[k + 4]
            b5 = BT[k + 5]
            b6 = BT[k + 6]
            b7 = BT[k + 7]
            for j in range(N):
                o[j] += ((a0 * b0[j] + a1 * b1[j]) + (a2 * b2[j] + a3 * b3[j])) + \
                        ((a4 * b4[j] + a5 * b5[j]) + (a6 * b6[j] + a7 * b7[j]))
        for k in range(k8, K):
            a0 = a[k]
            b0 = BT[k]
            for j in range(N):
                o[j] += a0 * b0[j]


@register_jitable
def axpy_fits(rows, nbytes):
    """Whether a product of `rows` rows against `nbytes` of weights takes the
    axpy form (given W^T): the one rule for step_operands, uses_axpy and
    benchmarks/bench_gemm.py."""
    return rows <= AXPY_MAX_ROWS and nbytes <= AXPY_MAX_BYTES


def uses_axpy(rows, steps, nbytes):
    """Whether an inference call with `rows` batch rows, `steps` time steps
    and a W_hh of `nbytes` should build W_hh^T for _axpy (training calls
    always have it; step_operands then picks the axpy form where the
    sizes allow)."""
    return steps >= AXPY_MIN_STEPS and axpy_fits(rows, nbytes)


def uses_blas(max_rows, N, K):
    """Whether mm_nt with up to max_rows rows of A ever calls BLAS (and so reads
    W^T); the callers skip building the transpose when it does not."""
    return max_rows > OWN_MAX_ROWS and max_rows * N * K > OWN_MAX_MACS


def step_operands(max_rows, W, WT):
    """mm_nt's operands (Bt, axpyT, blasT) for a time loop whose steps have at
    most max_rows rows of A against Bt = W (N, K), given WT, its transpose,
    C-contiguous (None or an empty array where the caller did not build it):
    (None, WT, None) where every step takes the axpy form, (W, None, WT)
    where steps may go to BLAS, else (W, None, None), the dot form."""
    built = WT is not None and WT.size > 0
    if built and axpy_fits(max_rows, W.nbytes):
        return None, WT, None
    if built and uses_blas(max_rows, W.shape[0], W.shape[1]):
        return W, None, WT
    return W, None, None


@njit(**dict(JIT, inline="always"))
def mm_nt(A, Bt, out, axpyT, blasT):
    """out = A @ Bt.T for C-contiguous A (M, K), Bt (N, K), out (M, N).

    The form is the caller's, for the whole loop (step_operands): the axpy
    form with axpyT (Bt's transpose, C-contiguous; Bt is then None), which
    the caller gives only where every step has at most AXPY_MAX_ROWS rows of
    a product of at most AXPY_MAX_BYTES; with blasT (the same transpose) BLAS
    for the steps with more than OWN_MAX_ROWS rows and OWN_MAX_MACS
    multiply-adds; else the dot form (_cols).  Numba prunes an `is None`
    test on an argument that is None at compile time, and compiles only the
    branches left: so the arguments that are None leave out the forms a
    loop never takes (with Bt None, everything but the axpy form; with
    axpyT None, the axpy form; with blasT None, BLAS).  Measured, a cold
    first LSTM fwd+bwd at a tiny size (the axpy form), trees taking turns:
    7.7-10.7 s (median 8.7) against 10.2-15.4 s (medians 12.3 and 13.0)
    when every form was compiled into every loop.  Inlined into the loops
    (inline="always", as common.inner_inline): a call of its own took and
    dropped references on its arrays every step (LSTM S1 one-thread
    kernels, alternating in one process: forward 150.8 against 154.6 and
    165.5 against 169.3 us, BPTT 212.7 against 215.6 and 184.4 against
    187.0)."""
    M = A.shape[0]
    if M == 0:
        return
    if Bt is None:
        if axpyT is not None:
            _axpy(A, axpyT, out)
    else:
        N, K = Bt.shape
        if blasT is not None:
            if M > OWN_MAX_ROWS and M * N * K > OWN_MAX_MACS:
                np.dot(A, blasT, out)
            else:
                _cols(A, Bt, out, 0, N)
        else:
            _cols(A, Bt, out, 0, N)
