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
is emitted directly as LLVM IR by a Numba intrinsic, and the call's loops
around it stay Python: 4 rows x PANEL columns (two vector registers),
and with AVX-512 first blocks of 8 rows (WIDE_ROWS, one chain).
With AVX-512, PANEL = 32, each output summed in two interleaved chains
(k even, k odd), 16 zmm accumulators; per two values of k, 8 broadcasts,
4 vector loads and 16 FMAs.  With AVX2 (16 ymm registers), PANEL = 16 and
one chain, 8 accumulators (see CHAINS).  The k terms go in
pieces of KBLOCK, each piece's sums added to a running total in as many
more registers as the accumulators of one chain, stored once: one chain of K FMAs rounded visibly worse
than the dot form (docs/performance.md).
One Zen 4 core: 103-110 GFLOP/s against _cols's 78-100.

Packing.  The kernel reads, for one panel p, the K x PANEL block
Pp[p] = Bt[p*PANEL:(p+1)*PANEL, :].T contiguously: one stream instead of
PANEL rows K floats apart (4 KB-strided rows thrash the L1 and L2 sets).
The weights are the same at every step, so the backend packs them once
per call (pack_rows from W's rows, pack_cols from W^T's columns), like
the W_hh^T copy it already makes.

Remainders: rows past the last block of 4 go through a one-row block;
columns past the last full panel through _cols.  float64 (and an empty
Pp) take _cols for everything.

After BPTT.  gemm_nn (dx = dG @ W_ih) and gemm_tn (dW = dG^T @ x) run
the same block on unpacked operands (its A and B strides are arguments),
for small layers only (see the section below).

Safety.  The intrinsic reads and writes through raw pointers, so
step_product checks every shape and stride it relies on and otherwise
runs _cols (gemm_nn and gemm_tn: BLAS): a wrong argument can only cost
speed, never memory.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, register_jitable

from .blas import gemm, split
from .common import JIT, inner, transpose_into
from .gemm import _cols
from .spin import part_started


def _vector_lanes():
    """float32 lanes of the vector registers the compiled code has: 16
    where Numba's target has AVX-512 (32 zmm registers), 8 with AVX (16 ymm
    registers), else 4.  Read from the target Numba compiles for (its
    cache key, so a cache is never loaded on a machine whose width
    differs), not from the host directly: NUMBA_CPU_NAME/FEATURES apply."""
    from numba.core.registry import cpu_target
    features = set(cpu_target.target_context.codegen().magic_tuple()[2].split(","))
    return 16 if "+avx512f" in features else 8 if "+avx" in features else 4


_LANES = _vector_lanes()
_VECS = 2
PANEL = _LANES * _VECS      # output columns per panel: two vector registers


def _block_intrinsic(rows, chains, kblock):
    """An intrinsic block(a, lda, sk, p, ldp, c, ldc, K, add) computing, for
    float32 pointers a (rows x K: element (r, k) at a[r * lda + k * sk]),
    p (K x PANEL, rows ldp elements apart, each row contiguous) and c
    (rows x PANEL, row stride ldc): c = a @ p, or with `add` nonzero
    c += a @ p.  The K terms go in pieces of `kblock`; each piece's sums
    run in rows * _VECS * chains vector registers, in `chains` interleaved
    chains (k mod chains) added at the piece's end, and each piece's sum is
    added to a running total kept in rows * _VECS more registers (c's old
    values where `add`), stored to c once at the end.  The step product
    passes sk = 1 and packed panels (ldp = PANEL); the products after the
    BPTT loop (_mm_nn, _mm_tn) pass strided operands as they lie.

    Rounding: each output is ((piece_1 + c_or_0) + piece_2) + ..., each
    piece (chain_0 + chain_1): the sum the kernel made when each piece was
    a call of its own that added its sums to c in memory.  Those adds carry
    an explicit flag ('arcp'), so Numba's fastmath pass (which flags only
    unflagged float instructions) leaves them without 'reassoc' and LLVM
    keeps their order (with it, LLVM moved the total into chain 1's add
    and rounded 10-20 % worse)."""

    @intrinsic
    def block(typingctx, a_ptr, lda, sk, p_ptr, ldp, c_ptr, ldc, K, add):
        sig = types.void(*(types.intp,) * 9)

        def codegen(context, builder, signature, args):
            a_i, lda_i, sk_i, p_i, ldp_i, c_i, ldc_i, k_n, add_i = args
            f32 = ir.FloatType()
            vt = ir.VectorType(f32, _LANES)
            intp = a_i.type
            mod = builder.module
            # fmuladd, not fma: one FMA instruction where the target has
            # them, a multiply and an add where it has not (llvm.fma must
            # then round once and becomes a call to fmaf per element: an
            # x86-64 target without FMA ran the block at 1 GFLOP/s)
            name = "llvm.fmuladd.v%df32" % _LANES
            fma = mod.globals.get(name)
            if fma is None:
                fma = ir.Function(mod, ir.FunctionType(vt, [vt, vt, vt]), name=name)
            a_base = builder.inttoptr(a_i, f32.as_pointer())
            p_base = builder.inttoptr(p_i, f32.as_pointer())
            c_base = builder.inttoptr(c_i, f32.as_pointer())
            zero = ir.Constant(vt, [0.0] * _LANES)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), _LANES), [0] * _LANES)
            undef = ir.Constant(vt, ir.Undefined)
            n_acc = rows * _VECS
            keep_order = ("arcp",)

            def const(v):
                return ir.Constant(intp, v)

            def step(k, accs):
                """accs (rows * _VECS) after the FMAs of term k."""
                prow = builder.gep(p_base, [builder.mul(k, ldp_i)])
                bvec = [builder.load(builder.bitcast(builder.gep(prow, [const(v * _LANES)]), vt.as_pointer()),
                                     align=4) for v in range(_VECS)]
                out = []
                for r in range(rows):
                    a = builder.load(builder.gep(a_base, [builder.add(builder.mul(const(r), lda_i),
                                                                      builder.mul(k, sk_i))]))
                    av = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(ir.IntType(32), 0)),
                                                undef, splat)
                    for v in range(_VECS):
                        out.append(builder.call(fma, [av, bvec[v], accs[r * _VECS + v]]))
                return out

            fn = builder.function
            entry = builder.block
            cptrs = []
            for r in range(rows):
                crow = builder.gep(c_base, [builder.mul(const(r), ldc_i)])
                for v in range(_VECS):
                    cptrs.append(builder.bitcast(builder.gep(crow, [const(v * _LANES)]), vt.as_pointer()))
            # the running totals start at c's values where `add` (c is
            # never read otherwise), else at zero
            load_bb = fn.append_basic_block("pk_load")
            piece_head = fn.append_basic_block("pk_piece_head")
            builder.cbranch(builder.icmp_signed("!=", add_i, const(0)), load_bb, piece_head)
            builder.position_at_end(load_bb)
            old = [builder.load(cp, align=4) for cp in cptrs]
            builder.branch(piece_head)
            # one trip per piece of kblock terms: [k0, kend)
            builder.position_at_end(piece_head)
            k0 = builder.phi(intp)
            tot = [builder.phi(vt) for _ in range(n_acc)]
            k0.add_incoming(const(0), entry)
            k0.add_incoming(const(0), load_bb)
            for t, o in zip(tot, old):
                t.add_incoming(zero, entry)
                t.add_incoming(o, load_bb)
            piece = fn.append_basic_block("pk_piece")
            done = fn.append_basic_block("pk_done")
            builder.cbranch(builder.icmp_signed("<", k0, k_n), piece, done)
            builder.position_at_end(piece)
            kend = builder.add(k0, const(kblock))
            kend = builder.select(builder.icmp_signed("<", kend, k_n), kend, k_n)
            # main loop: k, k + 1, ... k + chains - 1 per trip, one set of
            # accumulators per chain
            k_main = builder.sub(kend, builder.srem(builder.sub(kend, k0), const(chains)))
            head = fn.append_basic_block("pk_head")
            body = fn.append_basic_block("pk_body")
            tail_bb = fn.append_basic_block("pk_tail")
            tail_body = fn.append_basic_block("pk_tail_body")
            piece_end = fn.append_basic_block("pk_piece_end")
            builder.branch(head)
            builder.position_at_end(head)
            k = builder.phi(intp)
            sets = [[builder.phi(vt) for _ in range(n_acc)] for _ in range(chains)]
            k.add_incoming(k0, piece)
            for accs in sets:
                for acc in accs:
                    acc.add_incoming(zero, piece)
            builder.cbranch(builder.icmp_signed("<", k, k_main), body, tail_bb)
            builder.position_at_end(body)
            new_sets = [step(builder.add(k, const(j)), sets[j]) for j in range(chains)]
            last = builder.block
            k.add_incoming(builder.add(k, const(chains)), last)
            for accs, vals in zip(sets, new_sets):
                for acc, val in zip(accs, vals):
                    acc.add_incoming(val, last)
            builder.branch(head)
            # the piece's last (kend - k0) % chains terms, one at a time into
            # the first set
            builder.position_at_end(tail_bb)
            kt = builder.phi(intp)
            tacc = [builder.phi(vt) for _ in range(n_acc)]
            kt.add_incoming(k, head)
            for acc, first in zip(tacc, sets[0]):
                acc.add_incoming(first, head)
            builder.cbranch(builder.icmp_signed("<", kt, kend), tail_body, piece_end)
            builder.position_at_end(tail_body)
            tvals = step(kt, tacc)
            tlast = builder.block
            kt.add_incoming(builder.add(kt, const(1)), tlast)
            for acc, val in zip(tacc, tvals):
                acc.add_incoming(val, tlast)
            builder.branch(tail_bb)
            # the piece's sum into the totals
            builder.position_at_end(piece_end)
            total = list(tacc)
            for accs in sets[1:]:
                total = [builder.fadd(x, y, flags=keep_order) for x, y in zip(total, accs)]
            for t, x in zip(tot, total):
                t.add_incoming(builder.fadd(x, t, flags=keep_order), piece_end)
            k0.add_incoming(kend, piece_end)
            builder.branch(piece_head)

            builder.position_at_end(done)
            for t, cp in zip(tot, cptrs):
                builder.store(t, cp, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return block


ROWS = 4              # rows per block: ROWS * _VECS * CHAINS accumulators
# Two chains where the target has 32 vector registers (AVX-512: 16
# accumulators, 8 totals, loads); one with 16 (AVX2): 8 accumulators, and
# the totals, touched once a piece, are what spills.  The AVX-512 form
# compiled for AVX2 needs 48 ymm registers and spills in the k loop: one
# Zen 3 core, (M, K, N) = (16, 384, 1024), 33 GFLOP/s against 86 with one
# chain (OpenBLAS 45); (64, 1024, 1024) 30 against 69 (OpenBLAS 70)
CHAINS = 2 if _LANES == 16 else 1
# the k terms in pieces of this many, each piece's sums added to the
# block's running total (CHAINS chains of KBLOCK / CHAINS FMAs, then one add a piece): rounding as of a sum in
# short pieces.  One chain of K FMAs per output rounded 1.3-2.5x worse
# than _cols in whole rnn_tanh calls (2.6-6.0e-5 against 1.5-3.0e-5; the
# float32 NumPy oracle 1.8-2.3e-5); these blocks 1.2-2.9e-5 there
# (docs/performance.md, twelfth session)
KBLOCK = 32
_blockR = _block_intrinsic(ROWS, CHAINS, KBLOCK)
_block1 = _block_intrinsic(1, CHAINS, KBLOCK)
# With AVX-512, rows go in blocks of WIDE_ROWS = 8 first: 8 x 32 outputs in
# 16 zmm accumulators, one chain (the 8 totals a row pair adds spill and
# are touched once a piece), then blocks of 4 and of 1 for the rest.  Per
# term 2 panel loads and 8 broadcasts feed 16 FMAs where the 4-row block
# has 2 and 4 for 8: half the panel stream, which on an Intel core with
# two 512-bit FMA units is what held the 4-row block back.  One Intel
# AVX-512 core (this session's VM), GFLOP/s, 8-row against 4-row block,
# two runs: (16, 384, 1024) 130-144 against 100-115, (16, 256, 1024)
# 134-142 against 122-127, (32, 1024, 2048) 123-133 against 95-112,
# (64, 1536, 4096) 87-93 against 78-82 (docs/performance.md, twenty-fourth
# session).  With AVX2 (16 ymm registers) it would spill in the k loop:
# there WIDE_ROWS = ROWS and the wide block is the 4-row one.
WIDE_ROWS = 8 if _LANES == 16 else ROWS
_blockW = _block_intrinsic(WIDE_ROWS, 1, KBLOCK) if WIDE_ROWS != ROWS else _blockR


@inner
def _rows(a, ra, sk, p, ldp, c, ldc, m0, m1, kn, add):
    """Rows [m0, m1) of one panel's block of kn terms: blocks of WIDE_ROWS
    rows, then of ROWS rows, then one-row blocks.  a and c are the
    addresses of row 0's first term and first output column; row m's are
    m * ra and m * ldc elements on."""
    m8 = m0 + (m1 - m0) // WIDE_ROWS * WIDE_ROWS
    for m in range(m0, m8, WIDE_ROWS):
        _blockW(a + 4 * m * ra, ra, sk, p, ldp, c + 4 * m * ldc, ldc, kn, add)
    m4 = m8 + (m1 - m8) // ROWS * ROWS
    for m in range(m8, m4, ROWS):
        _blockR(a + 4 * m * ra, ra, sk, p, ldp, c + 4 * m * ldc, ldc, kn, add)
    for m in range(m4, m1):
        _block1(a + 4 * m * ra, ra, sk, p, ldp, c + 4 * m * ldc, ldc, kn, add)


@inner
def _panels_fit(A, Pp, out):
    """Whether the raw-pointer blocks can take A and the panels Pp into
    out: float32, panels packed for A's K, contiguous panels, unit column
    strides, an output with A's rows and at least the panels' columns."""
    M, K = A.shape
    P = Pp.shape[0]
    return not (P == 0 or A.itemsize != 4 or Pp.itemsize != 4 or out.itemsize != 4
                or Pp.shape[1] != K or Pp.shape[2] != PANEL
                or out.shape[0] < M or out.shape[1] < P * PANEL
                or A.strides[1] != 4 or out.strides[1] != 4
                or Pp.strides[2] != 4 or Pp.strides[1] != 4 * PANEL or Pp.strides[0] != 4 * PANEL * K)


@inner
def _fits(A, Pp, Bt, out):
    """_panels_fit, with the panels within Bt's rows (Bt of A's K) and an
    output as wide as Bt has rows."""
    return (_panels_fit(A, Pp, out) and Bt.shape[1] == A.shape[1]
            and Pp.shape[0] * PANEL <= Bt.shape[0] and out.shape[1] >= Bt.shape[0])


@inner
def _panel_range(A, Pp, out, q0, q1, rev=False):
    """out's columns [q0 * PANEL, q1 * PANEL) = A @ panels q0..q1 - 1, by
    the blocks (operands _panels_fit accepts); rev: the panels last to
    first (the time loops by rows on every other step: REVERSE_ALTERNATE
    below).  Each output is the same sum in either order."""
    M, K = A.shape
    a0 = A.ctypes.data
    p0 = Pp.ctypes.data
    c0 = out.ctypes.data
    lda = A.strides[0] // 4
    ldc = out.strides[0] // 4
    for q in range(q0, q1):
        p = q0 + q1 - 1 - q if rev else q
        # each block of rows over all K terms at once (its pieces of KBLOCK
        # summed in registers): one store of the block per panel, where a
        # call per piece loaded and stored it K / KBLOCK times (one thread,
        # (M, K, N) = (32, 512, 2048): 110 against 94 GFLOP/s; (16, 1024,
        # 4096): 93 against 60)
        _rows(a0, lda, 1, p0 + 4 * p * K * PANEL, PANEL, c0 + 4 * p * PANEL, ldc, 0, M, K, 0)


@inner
def step_product_range(A, Pp, Bt, out, n0, n1, rev=False):
    """out[:, n0:n1] = A @ Bt[n0:n1].T for A (M, K), Bt (N, K), out (M, N),
    with Pp = pack_rows(Bt) (or an empty (0, K, PANEL) array): the panels
    inside [n0, n1) by the packed blocks (rev: last to first), the columns
    before the first and after the last of them by _cols (everything by
    _cols where _fits says no)."""
    M, K = A.shape
    if M == 0 or n0 >= n1:
        return
    q0 = (n0 + PANEL - 1) // PANEL
    if K == 0:          # no terms: the dot form writes the zeros
        q0 = n1
    q1 = min(n1 // PANEL, Pp.shape[0])
    if q0 >= q1 or not _fits(A, Pp, Bt, out):
        _cols(A, Bt, out, n0, n1)
        return
    if n0 < q0 * PANEL:
        _cols(A, Bt, out, n0, q0 * PANEL)
    _panel_range(A, Pp, out, q0, q1, rev)
    if q1 * PANEL < n1:
        _cols(A, Bt, out, q1 * PANEL, n1)


@inner
def step_product(A, Pp, Bt, out, rev=False):
    """out = A @ Bt.T for A (M, K), Bt (N, K), out (M, N), with Pp =
    pack_rows(Bt) (or an empty (0, K, PANEL) array: _cols alone).  Bt
    None: the panels alone, which must then hold every column of out
    (pack_rows2 packed them with no Bt made).  rev: see _panel_range."""
    if Bt is None:
        _panels_product(A, Pp, out, rev)
    else:
        step_product_range(A, Pp, Bt, out, 0, Bt.shape[0], rev)


# The time loops by rows read every panel at every step, and a part's
# panels can be most of its core's L2 (the fused LSTM's [W_ih | W_hh] at
# S3: 1.5 MB of a 2 MB L2).  Read in the same order at every step, the
# lines a step reads first are the ones the L2 has held longest, and they
# go first: a loop over more than the cache holds misses on every line.
# So the parts read the panels last to first on every other step (rev =
# step parity): a step starts on the panels the step before ended on.
# One thread, the 8-row blocks, 16 rows (one S3 part), 20 steps, GFLOP/s
# in one order against alternating (Intel VM, 2 MB of L2): (16, 384,
# 1024), 1.5 MB, 135 against 141; 2 MB 123-126 against 135-137; 2.5 MB
# 115-117 against 126-127; 1 MB (in the L2) 154-155 against 155-158.
REVERSE_ALTERNATE = True


@register_jitable
def reversed_at(s):
    """The `rev` of step_product at the loop's step s (its count, not t)."""
    return REVERSE_ALTERNATE and (s & 1) == 1


@inner
def _panels_product(A, Pp, out, rev=False):
    """out = A @ (the matrix Pp packs).T, every column from the panels."""
    M, K = A.shape
    if M == 0:
        return
    if K == 0 or not _panels_fit(A, Pp, out) or out.shape[1] != Pp.shape[0] * PANEL:
        raise ValueError("packed._panels_product: the panels do not cover the output")
    _panel_range(A, Pp, out, 0, Pp.shape[0], rev)


@njit(**JIT)
def pack_rows_part(i, nth, Bt, Pp):
    """Part i of nth of pack_rows (its share of the panels): the backend
    runs the parts on its threads where the weights are big enough
    (numba_cpu.PACK_IN_PARTS_MIN_BYTES), else part 0 of 1."""
    part_started(i)
    p0, p1 = split(Pp.shape[0], nth, i, 1)
    for p in range(p0, p1):
        transpose_into(Bt[p * PANEL:(p + 1) * PANEL], Pp[p])


def pack_rows(Bt, Pp):
    """Pp[p, k, j] = Bt[p * PANEL + j, k] for the full panels of Bt (N, K)
    (Pp (N // PANEL, K, PANEL)), C-contiguous Bt: each panel is the
    transpose of PANEL of Bt's rows (common.transpose_into, 8x8 tiles)."""
    pack_rows_part(0, 1, Bt, Pp)


@njit(**JIT)
def pack_rows2_part(i, nth, B1, B2, Pp):
    """Part i of nth of pack_rows2 (see pack_rows_part)."""
    part_started(i)
    K1 = B1.shape[1]
    p0, p1 = split(Pp.shape[0], nth, i, 1)
    for p in range(p0, p1):
        transpose_into(B1[p * PANEL:(p + 1) * PANEL], Pp[p, :K1])
        transpose_into(B2[p * PANEL:(p + 1) * PANEL], Pp[p, K1:])


@njit(**JIT)
def pack_rows2_cols_part(i, nth, B1, B2, Pp, Pc):
    """Part i of nth of pack_rows2(B1, B2, Pp) and pack_cols(B2, Pc) at
    once: the fused LSTM's forward panels and, in training, its BPTT's
    panels of W_hh = B2, each part the second from the rows of B2 it has
    just read for the first (its share by rows, not by panels), so W_hh
    is read from memory once, not again at the start of the backward."""
    part_started(i)
    pack_rows2_part(i, nth, B1, B2, Pp)
    P, K, W = Pc.shape
    if W != PANEL or K != B2.shape[0]:
        raise ValueError("pack_rows2_cols_part: Pc (N // PANEL, B2 rows, PANEL) expected")
    k0, k1 = split(K, nth, i, PANEL)
    for k in range(k0, k1):
        src = B2[k]
        for p in range(P):
            dst = Pc[p, k]
            for j in range(PANEL):
                dst[j] = src[p * PANEL + j]


def pack_rows2(B1, B2, Pp):
    """pack_rows([B1 | B2], Pp) without [B1 | B2]: B1 (N, K1) and B2 (N, K2)
    C-contiguous, Pp (N // PANEL, K1 + K2, PANEL).  The fused LSTM step's
    [W_ih | W_hh] panels straight from the two weights, no concatenated
    copy: 0.25 against 0.33 ms for the copy and its packing at S3, with
    cold caches."""
    pack_rows2_part(0, 1, B1, B2, Pp)


@njit(**JIT)
def pack_cols_part(i, nth, BtT, Pp):
    """Part i of nth of pack_cols (see pack_rows_part)."""
    part_started(i)
    P, K, W = Pp.shape
    p0, p1 = split(P, nth, i, 1)
    if W != PANEL:
        raise ValueError("pack_cols_part: panels PANEL wide expected")
    # down BtT's rows, each row's chunks to their panels: the source read
    # in order, and PANEL a constant trip count (one thread, 1024 x 256
    # float32: 0.08-0.10 ms against 0.17-0.21 panel by panel with W's)
    for k in range(K):
        src = BtT[k]
        for p in range(p0, p1):
            dst = Pp[p, k]
            for j in range(PANEL):
                dst[j] = src[p * PANEL + j]


def pack_cols(BtT, Pp):
    """Pp[p, k, j] = BtT[k, p * PANEL + j] for BtT = Bt.T (K, N): from W^T's
    rows, chunk copies."""
    pack_cols_part(0, 1, BtT, Pp)


def panels(N, K, dtype, empty=np.empty):
    """An uninitialised panel array for Bt (N, K): (N // PANEL, K, PANEL)
    for float32, from `empty` (the backend passes its buffer cache's),
    else an empty one (the dot form)."""
    P = N // PANEL if np.dtype(dtype) == np.float32 else 0
    return empty((P, K, PANEL), dtype) if P else np.empty((0, K, PANEL), dtype)


# ---------------------------------------------------------------- after BPTT
# The GEMMs after the BPTT loop (parallel.after_loop_part) on the same
# blocks, for small operands, on the operands as they lie (no packing):
# the B operand's rows (W_ih's, x's, h's) are read PANEL values at a time
# at their own row stride, and in _mm_tn A's columns (dG's) four at a time
# from each of its rows.  Without packing, strided rows that fall into the
# same cache sets (4 KB apart) and long k ranges run slower than OpenBLAS,
# so the backend uses these only up to numba_cpu.OWN_AFTER_MAX_GH.
MB = 64               # _mm_nn: rows of A (and C) per chunk, kept in cache across the panels
KC = 128              # _mm_tn: terms per chunk, whose A and B rows stay in cache across the panels


@inner
def _mm_fits(A, B, C, M, K, N):
    """Whether the raw-pointer blocks can take C (M, N) from A and B:
    float32, the shapes the caller names, unit column strides and row
    strides in whole elements."""
    return not (A.itemsize != 4 or B.itemsize != 4 or C.itemsize != 4
                or C.shape[0] != M or C.shape[1] != N or B.shape[0] != K or B.shape[1] != N
                or A.strides[1] != 4 or B.strides[1] != 4 or C.strides[1] != 4
                or A.strides[0] % 4 != 0 or B.strides[0] % 4 != 0 or C.strides[0] % 4 != 0)


@inner
def _raw(A, B, C):
    """Each operand's address and row stride in elements (float32)."""
    return A.ctypes.data, A.strides[0] // 4, B.ctypes.data, B.strides[0] // 4, C.ctypes.data, C.strides[0] // 4


@inner
def _mm_nn(A, B, C, N):
    """C[:, :N] = A @ B[:, :N] for N a multiple of PANEL (see gemm_nn)."""
    M, K = A.shape
    P = N // PANEL
    a0, lda, b0, ldb, c0, ldc = _raw(A, B, C)
    for r0 in range(0, M, MB):
        r1 = min(r0 + MB, M)
        for p in range(P):
            # all K terms in one call a block of rows (as _panel_range; one
            # thread, (M, K, N) = (1024, 768, 128): 75 against 62 GFLOP/s,
            # (400, 512, 128) 91 against 83).  Not in _mm_tn, whose A
            # reads go down dG's columns: there pieces of KBLOCK per call
            # stayed fastest (KC = 128: 66-73 against 59-70 with 64-128)
            _rows(a0, lda, 1, b0 + 4 * p * PANEL, ldb, c0 + 4 * p * PANEL, ldc, r0, r1, K, 0)


@inner
def _mm_tn(A, B, C, N):
    """C[:, :N] = A.T @ B[:, :N] for N a multiple of PANEL (see gemm_tn)."""
    K, M = A.shape
    P = N // PANEL
    a0, lda, b0, ldb, c0, ldc = _raw(A, B, C)
    for q0 in range(0, K, KC):
        q1 = min(q0 + KC, K)
        for p in range(P):
            for k0 in range(q0, q1, KBLOCK):
                _rows(a0 + 4 * k0 * lda, 1, lda, b0 + 4 * (k0 * ldb + p * PANEL), ldb, c0 + 4 * p * PANEL, ldc,
                      0, M, min(KBLOCK, q1 - k0), k0)


@inner
def _gemm_own(A, trans_a, B, C, blocks):
    """C = op(A) @ B (op(A) = A.T when trans_a): with `blocks`, the full
    panels of C's columns by the blocks (_mm_nn, _mm_tn); the columns past
    them, operands the blocks cannot take (float64, other shapes or
    strides), and everything without `blocks`, by BLAS.  blocks None:
    BLAS alone, and Numba leaves the blocks out of what it compiles
    (an `is None` test on an argument; the callers' `own`)."""
    if blocks is None:
        gemm(A, trans_a, B, False, C, C.dtype.type(0))
        return
    M = A.shape[1] if trans_a else A.shape[0]
    K = A.shape[0] if trans_a else A.shape[1]
    N = B.shape[1]
    n = N // PANEL * PANEL
    if not blocks or M == 0 or K == 0 or not _mm_fits(A, B, C, M, K, N):
        n = 0
    if n > 0:
        if trans_a:
            _mm_tn(A, B, C, n)
        else:
            _mm_nn(A, B, C, n)
    if n < N:
        gemm(A, trans_a, B[:, n:], False, C[:, n:], C.dtype.type(0))


@inner
def gemm_nn(A, B, C, blocks=True):
    """C = A @ B for A (M, K), B (K, N), C (M, N), row-major views with unit
    column strides (blas.gemm's operands); see _gemm_own."""
    _gemm_own(A, False, B, C, blocks)


@inner
def gemm_tn(A, B, C, blocks=True):
    """C = A.T @ B for A (K, M), B (K, N), C (M, N) (see gemm_nn)."""
    _gemm_own(A, True, B, C, blocks)
