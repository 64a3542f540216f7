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

from .common import JIT, inner

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


def uses_blas(max_rows, N, K):
    """Whether mm_nt with up to max_rows rows of A ever calls BLAS (and so reads
    BtT); the callers skip building the transpose when it does not."""
    return max_rows > OWN_MAX_ROWS and max_rows * N * K > OWN_MAX_MACS


@njit(**JIT)
def mm_nt(A, Bt, out, BtT):
    """out = A @ Bt.T for C-contiguous A (M, K), Bt (N, K), out (M, N);
    BtT (K, N) is Bt's transpose, C-contiguous, for when BLAS wins (it is
    not read, and may be any 2-D array, when uses_blas(M, N, K) is False)."""
    M, K = A.shape
    N = Bt.shape[0]
    if M == 0:
        return
    if M <= OWN_MAX_ROWS or M * N * K <= OWN_MAX_MACS:
        _cols(A, Bt, out, 0, N)
    else:
        np.dot(A, BtT, out)
