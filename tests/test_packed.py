"""The packed per-step product (kernels/cpu/packed.py): an outer-product
kernel in LLVM IR over weights packed into panels of output columns,
against the float64 product; its packing; and its guards, which send any
operand the raw-pointer kernel cannot take to the dot form (gemm._cols)."""
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from fastrnn._kernels.cpu import packed

PANEL = packed.PANEL


@njit
def _step_product(A, Pp, Bt, out, rev=False):
    packed.step_product(A, Pp, Bt, out, rev)


def _reference_panels(Bt):
    N, K = Bt.shape
    P = N // PANEL
    return np.ascontiguousarray(Bt[:P * PANEL].reshape(P, PANEL, K).transpose(0, 2, 1))


def _operands(M, K, N, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, K)).astype(dtype)
    Bt = rng.standard_normal((N, K)).astype(dtype)
    Pp = packed.panels(N, K, dtype)
    packed.pack_rows(Bt, Pp)
    return A, Bt, Pp


def _check(out, A, Bt):
    want = A.astype(np.float64) @ Bt.astype(np.float64).T
    scale = np.sqrt(A.shape[1]) * 4      # |terms| ~ 1, K of them: float32 rounding of the sum
    assert np.isfinite(out).all(), "an output element was left unwritten (NaN)"
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-6 * scale)


def test_packing_matches_the_panel_layout():
    for N, K in [(64, 1), (64, 7), (130, 33), (256, 128), (63, 5)]:
        A, Bt, Pp = _operands(1, K, N)
        ref = _reference_panels(Bt)
        assert Pp.shape == ref.shape == (N // PANEL, K, PANEL)
        np.testing.assert_array_equal(Pp, ref)
        Pc = packed.panels(N, K, np.float32)
        packed.pack_cols(np.ascontiguousarray(Bt.T), Pc)
        np.testing.assert_array_equal(Pc, ref)


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 21])
@pytest.mark.parametrize("K,N", [(1, 64), (3, 65), (64, 63), (64, 64), (130, 128), (33, 200), (256, 512)])
def test_step_product_every_block_and_remainder(M, K, N):
    # rows: blocks of 4 and the one-row block; columns: full panels and the
    # dot form for the tail (N % 64), or for all of them (N < 64).  The
    # panels last to first (rev, every other step of the loops by rows)
    # give the same bits: each output's sum is the same either way
    A, Bt, Pp = _operands(M, K, N, seed=M * 1000 + K + N)
    out = np.full((M, N), np.nan, np.float32)
    _step_product(A, Pp, Bt, out)
    _check(out, A, Bt)
    back = np.full((M, N), np.nan, np.float32)
    _step_product(A, Pp, Bt, back, True)
    np.testing.assert_array_equal(back, out)


def test_views_write_only_their_own_elements():
    # out a view into a wider, taller array (row stride > N): the kernel
    # writes through raw pointers, so every element outside the view must
    # keep its NaN; A a view with a row stride > K
    M, K, N = 6, 40, 130
    A0, Bt, Pp = _operands(M + 2, K + 9, N)
    A = A0[1:M + 1, 3:3 + K]
    Bt = np.ascontiguousarray(Bt[:, :K])
    Pp = packed.panels(N, K, np.float32)
    packed.pack_rows(Bt, Pp)
    big = np.full((M + 3, N + 11), np.nan, np.float32)
    out = big[2:2 + M, 5:5 + N]
    _step_product(A, Pp, Bt, out)
    _check(out, A, Bt)
    mask = np.ones(big.shape, bool)
    mask[2:2 + M, 5:5 + N] = False
    assert np.isnan(big[mask]).all(), "the kernel wrote outside its output view"


def test_operands_the_kernel_cannot_take_go_to_the_dot_form():
    M, K, N = 5, 20, 128
    A, Bt, Pp = _operands(M, K, N)
    # panels packed for another K (NaN: never read); A with a column stride;
    # output with a column stride; panels not contiguous; float64 (panels()
    # makes none)
    wrong_k = packed.panels(N, K + 3, np.float32)
    wrong_k[:] = np.nan
    cases = [(A, wrong_k, np.full((M, N), np.nan, np.float32)),
             (np.repeat(A, 2, axis=1)[:, ::2], Pp, np.full((M, N), np.nan, np.float32)),
             (A, Pp, np.full((M, 2 * N), np.nan, np.float32)[:, ::2])]
    for a, pp, out in cases:
        _step_product(a, pp, Bt, out)
        _check(out, a, Bt)
    strided = np.full((Pp.shape[0], K, 2 * PANEL), np.nan, np.float32)[:, :, ::2]
    strided[:] = Pp
    out = np.full((M, N), np.nan, np.float32)
    _step_product(A, strided, Bt, out)
    _check(out, A, Bt)
    A64, Bt64, Pp64 = _operands(M, K, N, np.float64)
    assert Pp64.shape[0] == 0
    out = np.full((M, N), np.nan)
    _step_product(A64, Pp64, Bt64, out)
    np.testing.assert_allclose(out, A64 @ Bt64.T, rtol=1e-12, atol=1e-12)


def test_zero_rows_is_a_no_op_and_zero_terms_give_zeros():
    A, Bt, Pp = _operands(0, 16, 64)
    out = np.empty((0, 64), np.float32)
    _step_product(A, Pp, Bt, out)
    A, Bt, Pp = _operands(5, 0, 70)
    assert Pp.shape == (70 // PANEL, 0, PANEL)
    out = np.full((5, 70), np.nan, np.float32)
    _step_product(A, Pp, Bt, out)
    assert np.array_equal(out, np.zeros((5, 70), np.float32))


@njit
def _step_product_range(A, Pp, Bt, out, n0, n1, rev=False):
    packed.step_product_range(A, Pp, Bt, out, n0, n1, rev)


@pytest.mark.parametrize("n0,n1", [(0, 200), (0, 64), (64, 192), (8, 136), (70, 100), (128, 200), (130, 131),
                                   (192, 200), (5, 5)])
def test_step_product_range_writes_its_columns_only(n0, n1):
    # the loops by units give each thread a block of columns: panels inside
    # it packed, its edges by the dot form; nothing outside it is written
    M, K, N = 6, 37, 200
    A, Bt, Pp = _operands(M, K, N)
    for rev in (False, True):
        out = np.full((M, N), np.nan, np.float32)
        _step_product_range(A, Pp, Bt, out, n0, n1, rev)
        _check(out[:, n0:n1], A, Bt[n0:n1])
        assert np.isnan(out[:, :n0]).all() and np.isnan(out[:, n1:]).all()


# ------------------------------------------------- the GEMMs after BPTT

@njit
def _gemm_nn(A, B, C):
    packed.gemm_nn(A, B, C)


@njit
def _gemm_tn(A, B, C):
    packed.gemm_tn(A, B, C)


def _check_mm(C, want, K):
    assert np.isfinite(C).all(), "an output element was left unwritten (NaN)"
    np.testing.assert_allclose(C, want, rtol=0, atol=2e-6 * np.sqrt(max(K, 1)) * 4)


# M: blocks of 4, the one-row block, more than one chunk of MB rows;
# K: one term, part of a block of KBLOCK, several, more than one chunk of
# KC; N: under a panel (BLAS alone), panels and a remainder
@pytest.mark.parametrize("M", [1, 3, 4, 9, 70, 131])
@pytest.mark.parametrize("K,N", [(1, 32), (5, 31), (7, 33), (31, 64), (33, 96), (200, 70), (300, 128)])
def test_gemm_nn_and_tn_every_block_and_remainder(M, K, N):
    rng = np.random.default_rng(M * 1000 + K + N)
    A = rng.standard_normal((M, K)).astype(np.float32)
    At = np.ascontiguousarray(A.T)          # (K, M) for A.T @ B
    B = rng.standard_normal((K, N)).astype(np.float32)
    want = A.astype(np.float64) @ B.astype(np.float64)
    C = np.full((M, N), np.nan, np.float32)
    _gemm_nn(A, B, C)
    _check_mm(C, want, K)
    C = np.full((M, N), np.nan, np.float32)
    _gemm_tn(At, B, C)
    _check_mm(C, want, K)


def test_gemm_nn_and_tn_on_views_write_only_their_own_elements():
    # the shapes after_loop_part gives them: column slices of dG (row stride
    # > width) and row slices; the output a view inside a NaN-filled array
    rng = np.random.default_rng(5)
    R, GH, I = 150, 200, 96
    dG = rng.standard_normal((R, GH)).astype(np.float32)
    x = rng.standard_normal((R, I + 7)).astype(np.float32)[:, 3:3 + I]
    w = rng.standard_normal((GH, I)).astype(np.float32)
    g0, g1, r0, r1 = 37, 141, 11, 130
    for fn, A, B, want in ((_gemm_tn, dG[:, g0:g1], x, dG[:, g0:g1].T.astype(np.float64) @ x),
                           (_gemm_nn, dG[r0:r1], w, dG[r0:r1].astype(np.float64) @ w)):
        M = want.shape[0]
        big = np.full((M + 4, I + 9), np.nan, np.float32)
        C = big[1:1 + M, 6:6 + I]
        fn(A, B, C)
        _check_mm(C, want, A.shape[0] if fn is _gemm_tn else A.shape[1])
        mask = np.ones(big.shape, bool)
        mask[1:1 + M, 6:6 + I] = False
        assert np.isnan(big[mask]).all(), f"{fn.__name__} wrote outside its output view"


def test_gemm_nn_and_tn_hand_what_the_blocks_cannot_take_to_blas():
    rng = np.random.default_rng(6)
    M, K, N = 9, 40, 64
    A = rng.standard_normal((M, K))
    B = rng.standard_normal((K, N))
    want = A @ B
    for dt in (np.float64, np.float32):
        C = np.full((M, N), np.nan, dt)
        _gemm_nn(A.astype(dt), B.astype(dt), C)
        _check_mm(C, want, K)
        C = np.full((M, N), np.nan, dt)
        _gemm_tn(np.ascontiguousarray(A.T).astype(dt), B.astype(dt), C)
        _check_mm(C, want, K)
    # no terms: zeros (BLAS's K = 0 case), over a NaN-filled output
    for fn, A0 in ((_gemm_nn, np.zeros((M, 0), np.float32)), (_gemm_tn, np.zeros((0, M), np.float32))):
        C = np.full((M, N), np.nan, np.float32)
        fn(A0, np.zeros((0, N), np.float32), C)
        np.testing.assert_array_equal(C, 0)


@pytest.mark.parametrize("M", [1, 4, 5, 16])
@pytest.mark.parametrize("K1,K2,N", [(1, 7, 32), (5, 16, 64), (128, 256, 256), (33, 40, 96)])
def test_panels_of_two_weights_and_the_product_without_them(M, K1, K2, N):
    # pack_rows2(B1, B2) packs [B1 | B2] without making it; step_product
    # with Bt None then runs on the panels alone, into a NaN-filled output
    rng = np.random.default_rng(K1 + K2 + N)
    B1 = rng.standard_normal((N, K1)).astype(np.float32)
    B2 = rng.standard_normal((N, K2)).astype(np.float32)
    Bt = np.concatenate((B1, B2), axis=1)
    Pp = np.full((N // PANEL, K1 + K2, PANEL), np.nan, np.float32)
    packed.pack_rows2(B1, B2, Pp)
    np.testing.assert_array_equal(Pp, _reference_panels(Bt))
    A = rng.standard_normal((M, K1 + K2)).astype(np.float32)
    out = np.full((M, N), np.nan, np.float32)
    _step_product(A, Pp, None, out)
    _check(out, A, Bt)
    back = np.full((M, N), np.nan, np.float32)
    _step_product(A, Pp, None, back, True)      # the panels last to first: the same bits
    np.testing.assert_array_equal(back, out)


def test_product_without_weights_refuses_panels_that_do_not_cover_the_output():
    A, Bt, Pp = _operands(4, 64, 96)
    for bad_out, bad_A in [(np.empty((4, 128), np.float32), A),        # more columns than panels
                           (np.empty((4, 96), np.float32), A[:, :63])]:  # K other than the panels'
        with pytest.raises(ValueError, match="do not cover"):
            _step_product(bad_A, Pp, None, bad_out)


def _sum_in_pieces(A, B):
    """A @ B (float32) in the order the blocks sum it, emulated: the k terms
    in pieces of KBLOCK, each piece in CHAINS chains (term k of a piece
    into chain (k - piece start) % CHAINS, a piece's odd last term into
    chain 0), each by fused multiply-adds (the float32 product is exact in
    float64), the chains added, then each piece's sum added to the total
    so far: ((piece_1 + 0) + piece_2) + ...  The rows in blocks of
    WIDE_ROWS (the first M // WIDE_ROWS * WIDE_ROWS where WIDE_ROWS !=
    ROWS: M <= 64 here, one chunk of _mm_nn) sum in one chain."""
    wide = A.shape[0] // packed.WIDE_ROWS * packed.WIDE_ROWS if packed.WIDE_ROWS != packed.ROWS else 0
    out = _sum_in_chains(A, B, packed.CHAINS)
    out[:wide] = _sum_in_chains(A[:wide], B, 1)
    return out


def _sum_in_chains(A, B, n_chains):
    f32, f64 = np.float32, np.float64
    M, K = A.shape
    total = np.zeros((M, B.shape[1]), f32)
    for k0 in range(0, K, packed.KBLOCK):
        kn = min(packed.KBLOCK, K - k0)
        chains = [np.zeros_like(total) for _ in range(n_chains)]
        main = kn - kn % n_chains
        for j in range(kn):
            c = j % n_chains if j < main else 0
            k = k0 + j
            chains[c] = (np.outer(A[:, k].astype(f64), B[k].astype(f64)) + chains[c]).astype(f32)
        piece = chains[0]
        for c in chains[1:]:
            piece = piece + c
        total = piece + total
    return total


@pytest.mark.parametrize("M,K,N", [(4, 96, 32), (5, 97, 64), (9, 130, 96), (13, 97, 64), (1, 64, 32)])
def test_blocks_sum_each_output_in_pieces_in_order(M, K, N):
    # The blocks keep each piece's sum in registers and add it to a running
    # total (not to the output in memory, as each piece's call once did);
    # those adds carry a flag so that Numba's fastmath pass adds no
    # 'reassoc' to them.  Without it LLVM moved the total into chain 1's add
    # (c0 + (c1 + total)), which rounded 10-20 % worse.  Every bit of the
    # step product and both after-loop products must match the emulated
    # order.  (The emulation rounds each product-plus-sum once from
    # float64, which can differ from a true fused multiply-add in rare
    # double-rounding cases; the operands are fixed, so the test is
    # deterministic, and it matches on these.)
    rng = np.random.default_rng(M * 1000 + K + N)
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    want = _sum_in_pieces(A, B)
    Bt = np.ascontiguousarray(B.T)
    Pp = packed.panels(N, K, np.float32)
    packed.pack_rows(Bt, Pp)
    out = np.full((M, N), np.nan, np.float32)
    _step_product(A, Pp, Bt, out)
    np.testing.assert_array_equal(out, want)
    C = np.full((M, N), np.nan, np.float32)
    _gemm_nn(A, B, C)
    np.testing.assert_array_equal(C, want)
    At = np.empty((K, M), np.float32)       # unit column stride also at M = 1
    At[...] = A.T
    C = np.full((M, N), np.nan, np.float32)
    _gemm_tn(At, B, C)
    np.testing.assert_array_equal(C, want)


@pytest.mark.parametrize("nth", [1, 2, 3])
@pytest.mark.parametrize("K1,K2,N", [(5, 32, 64), (128, 256, 1024), (9, 40, 160), (3, 64, 96)])
def test_forward_and_bptt_panels_packed_together_in_parts(nth, K1, K2, N):
    # pack_rows2_cols_part: the fused LSTM's forward panels of [B1 | B2]
    # and BPTT's column panels of B2 (W_hh), every part's share, into
    # NaN-filled panels: both equal the reference layouts (a part that
    # skipped its rows of either would leave NaN)
    rng = np.random.default_rng(nth + K1 + K2 + N)
    B1 = rng.standard_normal((N, K1)).astype(np.float32)
    B2 = rng.standard_normal((N, K2)).astype(np.float32)
    Pp = np.full((N // PANEL, K1 + K2, PANEL), np.nan, np.float32)
    Pc = np.full((K2 // PANEL, N, PANEL), np.nan, np.float32)
    for i in range(nth):
        packed.pack_rows2_cols_part(i, nth, B1, B2, Pp, Pc)
    np.testing.assert_array_equal(Pp, _reference_panels(np.concatenate((B1, B2), axis=1)))
    np.testing.assert_array_equal(Pc, _reference_panels(np.ascontiguousarray(B2.T)))
    # and pack_cols in the same parts gives the same column panels
    Pc2 = np.full_like(Pc, np.nan)
    for i in range(nth):
        packed.pack_cols_part(i, nth, B2, Pc2)
    np.testing.assert_array_equal(Pc2, Pc)


def test_column_panels_of_another_width_are_refused():
    B2 = np.ones((64, 64), np.float32)
    with pytest.raises(ValueError, match="PANEL wide"):
        packed.pack_cols_part(0, 1, B2, np.empty((4, 64, PANEL // 2), np.float32))
    with pytest.raises(ValueError, match="expected"):
        packed.pack_rows2_cols_part(0, 1, B2, B2, np.empty((2, 128, PANEL), np.float32),
                                    np.empty((2, 63, PANEL), np.float32))


def test_block_shape_follows_the_target_vector_registers():
    # the block is written for the register file Numba compiles for: two
    # vectors of the target's width a panel, and no more accumulators than
    # half its registers (AVX-512: 32 zmm, 16 accumulators in two chains;
    # AVX2: 16 ymm, 8 in one). The AVX-512 form compiled for AVX2 spilled in
    # its k loop and ran at a third of the speed (docs/performance.md,
    # nineteenth session).
    import llvmlite.binding as ll
    from numba.core import config
    if config.CPU_FEATURES is not None or config.CPU_NAME is not None:
        pytest.skip("NUMBA_CPU_NAME/NUMBA_CPU_FEATURES set: the target is not the host")
    host = ll.get_host_cpu_features()
    lanes = 16 if host.get("avx512f") else 8 if host.get("avx") else 4
    registers = 32 if lanes == 16 else 16
    assert packed._LANES == lanes
    assert PANEL == 2 * lanes
    assert packed.ROWS * packed._VECS * packed.CHAINS <= registers // 2


_BASELINE_PROBE = """
import json, numpy as np
from numba import njit
from fastrnn._kernels.cpu import packed

@njit
def sp(A, Pp, Bt, out):
    packed.step_product(A, Pp, Bt, out)

rng = np.random.default_rng(0)      # _operands(M, K, N)'s operands
M, K, N = {shape}
A = rng.standard_normal((M, K)).astype(np.float32)
Bt = rng.standard_normal((N, K)).astype(np.float32)
Pp = packed.panels(N, K, np.float32)
packed.pack_rows(Bt, Pp)
out = np.full((M, N), np.nan, np.float32)
sp(A, Pp, Bt, out)
asm = "\\n".join(sp.inspect_asm().values())
print(json.dumps(dict(lanes=packed._LANES, panel=packed.PANEL, out=out.tolist(), fmaf=asm.count("fmaf"))))
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="an x86-64 target")
def test_block_on_a_target_without_avx_or_fma(tmp_path):
    # Numba compiled for baseline x86-64 (SSE2, no AVX, no FMA), in a fresh
    # process and cache: 4-lane panels, right products, and a multiply-add
    # the target can do (llvm.fma there became a call to fmaf per element,
    # 1 GFLOP/s)
    shape = (7, 70, 45)     # a 4-row block and 3 one-row blocks; 5 panels of 8 and 5 columns left
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_CPU_NAME="generic",
               NUMBA_CPU_FEATURES="+64bit,+cx8,+fxsr,+mmx,+sse,+sse2")
    out = subprocess.run([sys.executable, "-c", _BASELINE_PROBE.format(shape=shape)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert (r["lanes"], r["panel"]) == (4, 8)
    A, Bt, _ = _operands(*shape)
    _check(np.array(r["out"], np.float32), A, Bt)
    assert r["fmaf"] == 0, "the block calls fmaf: llvm.fma on a target without FMA"
