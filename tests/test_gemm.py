"""The recurrent-step GEMM (kernels/cpu/gemm.py) against float64 NumPy:
every remainder of its 4x3 blocking (and the 1x6 one for 1-3 rows), of the
axpy form for 1-2 rows (k by 8 and by 4), both dtypes, and the switches
to BLAS and to the axpy form."""
import os
import subprocess
import sys

import numpy as np
import pytest

from numba import njit

from fastrnn import _threads
from fastrnn._kernels.cpu import gemm


@njit(cache=False)
def _cols(A, Bt, out, n0, n1):
    # gemm._cols is an inner helper with no CPython wrapper: call it from
    # compiled code, as the kernels do
    gemm._cols(A, Bt, out, n0, n1)


@njit(cache=False)
def _axpy(A, BT, out):
    gemm._axpy(A, BT, out)


def _case(M, K, N, dtype, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, K)).astype(dtype)
    Bt = rng.standard_normal((N, K)).astype(dtype)
    return A, Bt, A.astype(np.float64) @ Bt.astype(np.float64).T


def _check(name, out, ref, dtype, K):
    assert np.isfinite(out).all(), f"{name}: unwritten (NaN) elements"
    err = np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30)
    # sums of K products: rounding grows like sqrt(K) * eps
    tol = (1e-5 if dtype == "float32" else 1e-12) * max(1.0, np.sqrt(K) / 4)
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.1e}"


SHAPES = [(1, 1, 1), (1, 7, 2), (2, 9, 13), (1, 64, 256), (3, 5, 4), (4, 9, 3), (5, 13, 7), (8, 128, 512), (9, 33, 101),
          (13, 64, 3 * 64 + 1), (17, 100, 200), (3, 300, 1000)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_own_kernel_matches_float64(M, K, N, dtype):
    A, Bt, ref = _case(M, K, N, dtype)
    out = np.full((M, N), np.nan, dtype)        # every element must be written
    _cols(A, Bt, out, 0, N)
    _check(f"_cols {M}x{K}x{N}", out, ref, dtype, K)


@pytest.mark.parametrize("form", ["dot", "axpy", "blas"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("M,K,N", SHAPES + [(40, 128, 1024)])   # the last goes to BLAS in the blas form
def test_mm_nt_matches_float64(M, K, N, dtype, form):
    # every form at every size (the loops give axpyT only for 1-2 rows, but
    # the axpy form is right for any number of rows)
    A, Bt, ref = _case(M, K, N, dtype)
    out = np.full((M, N), np.nan, dtype)
    WT = np.ascontiguousarray(Bt.T)
    gemm.mm_nt(A, *{"dot": (Bt, out, None, None), "axpy": (None, out, WT, None), "blas": (Bt, out, None, WT)}[form])
    _check(f"mm_nt {form} {M}x{K}x{N}", out, ref, dtype, K)


# 1-2 rows: K below, at and off the unroll (8 for one row, 4 for a pair)
AXPY_SHAPES = [(1, 1, 1), (1, 7, 2), (1, 8, 1), (1, 17, 33), (1, 64, 256), (2, 1, 3), (2, 3, 5), (2, 4, 7),
               (2, 9, 13), (2, 128, 512), (1, 0, 4), (2, 0, 3)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("M,K,N", AXPY_SHAPES)
def test_axpy_form_matches_float64(M, K, N, dtype):
    A, Bt, ref = _case(M, K, N, dtype)
    out = np.full((M, N), np.nan, dtype)
    _axpy(A, np.ascontiguousarray(Bt.T), out)
    _check(f"_axpy {M}x{K}x{N}", out, ref, dtype, K)


def _spy_mm_nt_form(M, K, N, built):
    """Which form a loop with up to M rows takes (gemm.step_operands, then
    mm_nt on M rows): run with Bt and the transpose disagreeing (it is
    -Bt.T), so the sign of the result tells whether the transpose was read
    (the axpy or the BLAS form) or Bt (the dot form)."""
    A, Bt, ref = _case(M, K, N, "float64")
    out = np.full((M, N), np.nan)
    WT = -np.ascontiguousarray(Bt.T) if built else np.empty((0, 0))
    W, axpyT, blasT = gemm.step_operands(M, Bt, WT)
    gemm.mm_nt(A, W, out, axpyT, blasT)
    if np.allclose(out, ref):
        assert axpyT is None and blasT is None and W is Bt
        return "dot"
    assert np.allclose(out, -ref), "mm_nt gave neither A @ Bt.T nor A @ (its transpose argument)"
    assert (axpyT is None) != (blasT is None) and (W is None) == (axpyT is not None)
    return "axpy" if axpyT is not None else "blas"


def test_the_form_a_loop_takes():
    assert gemm.AXPY_MAX_ROWS == 2
    assert _spy_mm_nt_form(1, 16, 24, True) == "axpy"
    assert _spy_mm_nt_form(2, 16, 24, True) == "axpy"
    assert _spy_mm_nt_form(3, 16, 24, True) == "dot"
    assert _spy_mm_nt_form(1, 16, 24, False) == "dot"     # no W^T built: the dot form
    assert _spy_mm_nt_form(1, 256, 512, True) == "dot"     # 1 MB of weights: out of cache, the dot form
    assert _spy_mm_nt_form(40, 128, 1024, True) == "blas"
    assert _spy_mm_nt_form(16, 128, 1024, True) == "dot"    # OWN_MAX_ROWS rows: still the own kernel
    small, big = gemm.AXPY_MAX_BYTES, gemm.AXPY_MAX_BYTES + 1
    assert gemm.uses_axpy(1, gemm.AXPY_MIN_STEPS, small) and not gemm.uses_axpy(1, gemm.AXPY_MIN_STEPS - 1, small)
    assert not gemm.uses_axpy(3, 100, small) and not gemm.uses_axpy(1, 100, big)


def test_column_range_writes_only_its_columns():
    A, Bt, ref = _case(6, 20, 11, "float64")
    out = np.full((6, 11), np.nan)
    _cols(A, Bt, out, 2, 9)
    assert np.isnan(out[:, :2]).all() and np.isnan(out[:, 9:]).all(), "columns outside [2, 9) were written"
    _check("_cols columns [2, 9)", out[:, 2:9], ref[:, 2:9], "float64", 20)


def test_zero_rows_writes_nothing():
    A = np.empty((0, 4), np.float32)
    Bt = np.ones((5, 4), np.float32)
    out = np.empty((0, 5), np.float32)
    WT = np.ascontiguousarray(Bt.T)
    for form in ((None, WT, None), (Bt, None, WT), (Bt, None, None)):
        gemm.mm_nt(A, form[0], out, *form[1:])
    assert out.shape == (0, 5)


def test_switch_sizes_cover_both_paths():
    # the kernel tests at S-like sizes must exercise both sides of the switch
    assert 40 > gemm.OWN_MAX_ROWS and 40 * 128 * 1024 > gemm.OWN_MAX_MACS, "(40x128x1024) must go to BLAS"
    assert 8 <= gemm.OWN_MAX_ROWS, "(8 rows) must use the own kernel"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("R,C", [(0, 5), (1, 1), (7, 3), (8, 8), (9, 17), (16, 64), (64, 16), (100, 37)])
def test_transpose_into_is_exact(R, C, dtype):
    # the backend builds W_hh^T with it for every training call; every element
    # of the destination must be written (it starts as NaN), exactly
    src = np.random.default_rng(R * 100 + C).standard_normal((R, C)).astype(dtype)
    dst = np.full((C, R), np.nan, dtype)
    gemm.transpose_into(src, dst)
    np.testing.assert_array_equal(dst, src.T)


_COMPILED_FORMS = r"""
import sys
import numpy as np
import fastrnn
from fastrnn._kernels.cpu import gemm
B = int(sys.argv[1])
x = np.ones((3, B, 4), np.float32)
w = [np.full(s, 0.1, np.float32) for s in ((20, 4), (20, 5), (20,), (20,))]
y, h, s = fastrnn.rnn_forward("lstm", x, w, training=True, backend="numba")
fastrnn.rnn_backward(s, y)
print(len(gemm._axpy.overloads), len(gemm._cols.overloads))
"""


def test_a_loop_compiles_only_the_step_form_it_takes(tmp_path):
    # a first call (fresh Numba cache, a tiny LSTM, the one-thread loops):
    # at 2 rows the loops take the axpy form and Numba compiles no dot form
    # (_cols) at all; at 5 rows the other way round (gemm.mm_nt prunes by
    # its None arguments).  That is ~2-3 s of a cold first call.
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    got = {}
    for B in (2, 5):
        out = subprocess.run([sys.executable, "-c", _COMPILED_FORMS, str(B)], env=env, capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        got[B] = tuple(int(v) for v in out.stdout.split())
    assert got[2] == (1, 0), f"at 2 rows: (_axpy, _cols) compiled {got[2]}"
    assert got[5] == (0, 1), f"at 5 rows: (_axpy, _cols) compiled {got[5]}"


_COMPILED_GRADS = r"""
import numpy as np
import fastrnn
from fastrnn._backends import numba_cpu
from fastrnn._kernels.cpu import parallel
from tests.helpers import force_by_rows

class _MP:       # force_by_rows wants a monkeypatch: set the attributes for good
    setattr = staticmethod(setattr)

force_by_rows(_MP())
numba_cpu._torch_threads = lambda: 1
x = np.ones((3, 4, 4), np.float32)
w = [np.full(s, 0.1, np.float32) for s in ((20, 4), (20, 5), (20,), (20,))]
counts = []
for lengths in (None, np.array([3, 2, 3, 1])):
    y, h, s = fastrnn.rnn_forward("lstm", x, w, lengths=lengths, training=True, backend="numba")
    fastrnn.rnn_backward(s, y)
    counts.append(len(parallel.grads_own_rows.overloads))
print(*counts)
"""


def test_full_length_bptt_by_rows_does_not_compile_the_per_row_gradients(tmp_path):
    # the BPTT parts by rows compute the gradients after the loop per row
    # only with padding (numba_cpu.FUSED_GRADS_*); without it their sums are
    # None and Numba leaves parallel.grads_own_rows out of the compiled part
    if _threads.available_threads() < 2:
        pytest.skip(f"threaded kernels cannot run here: {_threads.why_single()}")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _COMPILED_GRADS], env=env, capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "1"], f"grads_own_rows overloads after full length, then padded: {out.stdout}"
