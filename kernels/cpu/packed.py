"""The per-step product on packed weights: out = A @ Bt.T with Bt's rows
(the output columns) packed once per call into panels of PANEL columns,
and a register-blocked outer-product kernel written in LLVM IR.

Why.  gemm._cols is a dot-product kernel: its 4x3 block keeps 12 vector
accumulators along k and, after the k loop, reduces each on its own (8
instructions a zmm).  Those horizontal sums cost a third as many
instructions as the FMAs at K = 384 and as many at K = 128, and _cols ran
at 75-95 GFLOP/s on one Zen 4 core against OpenBLAS's 100-108.  An
outer-product kernel keeps a block of *output columns* in each vector
(C[m, n:n+16] += A[m, k] * P[k, n:n+16]) and needs no horizontal sums,
but its accumulators must stay in registers across the whole k loop,
which Numba's Python cannot say (a generated kernel with scalar
accumulators was not vectorised, see docs/performance.md).  So the block
(4 rows x 64 columns: 16 vector accumulators, per k 4 broadcasts, 4 vector
loads and 16 FMAs) is emitted directly as LLVM IR by a Numba intrinsic,
and the call's loops around it stay Python.

Packing.  The kernel reads, for one panel p, the K x PANEL block
Pp[p] = Bt[p*PANEL:(p+1)*PANEL, :].T contiguously: one stream instead of
PANEL rows K floats apart (4 KB-strided rows thrash the L1 and L2 sets).
The weights are the same at every step, so the backend packs them once
per call (pack_rows from W's rows, pack_cols from W^T's columns), like
the W_hh^T copy it already makes.

Remainders: rows past the last block of 4 go through a one-row block;
columns past the last full panel through _cols.  float64 (and an empty
Pp) take _cols for everything.

Safety.  The intrinsic reads and writes through raw pointers, so
step_product checks every shape and stride it relies on and otherwise
runs _cols: a wrong argument can only cost speed, never memory.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .common import JIT, inner, transpose_into
from .gemm import _cols

PANEL = 64          # output columns per panel: 4 zmm vectors of float32
_LANES = 16
_VECS = PANEL // _LANES


def _block_intrinsic(rows):
    """An intrinsic block(a, lda, p, c, ldc, K) computing, for float32
    pointers a (rows x K, row stride lda elements), p (K x PANEL,
    contiguous) and c (rows x PANEL, row stride ldc):
    c = a @ p, accumulating in rows * _VECS vector registers."""

    @intrinsic
    def block(typingctx, a_ptr, lda, p_ptr, c_ptr, ldc, K):
        sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            a_i, lda_i, p_i, c_i, ldc_i, k_n = args
            f32 = ir.FloatType()
            vt = ir.VectorType(f32, _LANES)
            intp = a_i.type
            mod = builder.module
            name = "llvm.fma.v%df32" % _LANES
            fma = mod.globals.get(name)
            if fma is None:
                fma = ir.Function(mod, ir.FunctionType(vt, [vt, vt, vt]), name=name)
            a_base = builder.inttoptr(a_i, f32.as_pointer())
            p_base = builder.inttoptr(p_i, f32.as_pointer())
            c_base = builder.inttoptr(c_i, f32.as_pointer())
            zero = ir.Constant(vt, [0.0] * _LANES)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), _LANES), [0] * _LANES)
            undef = ir.Constant(vt, ir.Undefined)

            def const(v):
                return ir.Constant(intp, v)

            entry = builder.block
            fn = builder.function
            head = fn.append_basic_block("pk_head")
            body = fn.append_basic_block("pk_body")
            done = fn.append_basic_block("pk_done")
            builder.branch(head)

            builder.position_at_end(head)
            k = builder.phi(intp)
            accs = [builder.phi(vt) for _ in range(rows * _VECS)]
            k.add_incoming(const(0), entry)
            for acc in accs:
                acc.add_incoming(zero, entry)
            builder.cbranch(builder.icmp_signed("<", k, k_n), body, done)

            builder.position_at_end(body)
            prow = builder.gep(p_base, [builder.mul(k, const(PANEL))])
            bvec = [builder.load(builder.bitcast(builder.gep(prow, [const(v * _LANES)]), vt.as_pointer()),
                                 align=4) for v in range(_VECS)]
            new = []
            for r in range(rows):
                a = builder.load(builder.gep(a_base, [builder.add(builder.mul(const(r), lda_i), k)]))
                av = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(ir.IntType(32), 0)),
                                            undef, splat)
                for v in range(_VECS):
                    new.append(builder.call(fma, [av, bvec[v], accs[r * _VECS + v]]))
            tail = builder.block
            k.add_incoming(builder.add(k, const(1)), tail)
            for acc, val in zip(accs, new):
                acc.add_incoming(val, tail)
            builder.branch(head)

            builder.position_at_end(done)
            for r in range(rows):
                crow = builder.gep(c_base, [builder.mul(const(r), ldc_i)])
                for v in range(_VECS):
                    builder.store(accs[r * _VECS + v],
                                  builder.bitcast(builder.gep(crow, [const(v * _LANES)]), vt.as_pointer()),
                                  align=4)
            return context.get_dummy_value()

        return sig, codegen

    return block


_block4 = _block_intrinsic(4)
_block1 = _block_intrinsic(1)


@inner
def step_product(A, Pp, Bt, out):
    """out = A @ Bt.T for A (M, K), Bt (N, K), out (M, N), with Pp =
    pack_rows(Bt) (or an empty (0, K, PANEL) array: _cols alone)."""
    M, K = A.shape
    N = Bt.shape[0]
    P = Pp.shape[0]
    if M == 0:
        return
    # everything the raw-pointer blocks rely on, else the dot form
    if (P == 0 or A.itemsize != 4 or Pp.itemsize != 4 or out.itemsize != 4
            or Pp.shape[1] != K or Pp.shape[2] != PANEL or P * PANEL > N
            or out.shape[0] < M or out.shape[1] < N
            or A.strides[1] != 4 or out.strides[1] != 4
            or Pp.strides[2] != 4 or Pp.strides[1] != 4 * PANEL or Pp.strides[0] != 4 * PANEL * K):
        _cols(A, Bt, out, 0, N)
        return
    a0 = A.ctypes.data
    p0 = Pp.ctypes.data
    c0 = out.ctypes.data
    lda = A.strides[0] // 4
    ldc = out.strides[0] // 4
    m4 = M - M % 4
    for p in range(P):
        pp = p0 + 4 * p * K * PANEL
        for m in range(0, m4, 4):
            _block4(a0 + 4 * m * lda, lda, pp, c0 + 4 * (m * ldc + p * PANEL), ldc, K)
        for m in range(m4, M):
            _block1(a0 + 4 * m * lda, lda, pp, c0 + 4 * (m * ldc + p * PANEL), ldc, K)
    if P * PANEL < N:
        _cols(A, Bt, out, P * PANEL, N)


@njit(**JIT)
def pack_rows(Bt, Pp):
    """Pp[p, k, j] = Bt[p * PANEL + j, k] for the full panels of Bt (N, K)
    (Pp (N // PANEL, K, PANEL)), C-contiguous Bt: each panel is the
    transpose of PANEL of Bt's rows (common.transpose_into, 8x8 tiles)."""
    for p in range(Pp.shape[0]):
        transpose_into(Bt[p * PANEL:(p + 1) * PANEL], Pp[p])


@njit(**JIT)
def pack_cols(BtT, Pp):
    """Pp[p, k, j] = BtT[k, p * PANEL + j] for BtT = Bt.T (K, N): from W^T's
    rows, chunk copies."""
    P, K, W = Pp.shape
    for p in range(P):
        for k in range(K):
            src = BtT[k]
            dst = Pp[p, k]
            for j in range(W):
                dst[j] = src[p * W + j]


def panels(N, K, dtype):
    """An uninitialised panel array for Bt (N, K): (N // PANEL, K, PANEL)
    for float32, else empty (the dot form)."""
    P = N // PANEL if np.dtype(dtype) == np.float32 else 0
    return np.empty((P, K, PANEL), dtype)
