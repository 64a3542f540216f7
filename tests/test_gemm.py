"""The recurrent-step GEMM (kernels/cpu/gemm.py) against float64 NumPy:
every remainder of its 4x3 blocking (and the 1x6 one for 1-3 rows), of the
axpy form for 1-2 rows (k by 8 and by 4), both dtypes, and the switches
to BLAS and to the axpy form."""
import numpy as np
import pytest

from numba import njit

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


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("M,K,N", SHAPES + [(40, 128, 1024)])   # the last goes to BLAS
def test_mm_nt_matches_float64(M, K, N, dtype):
    A, Bt, ref = _case(M, K, N, dtype)
    out = np.full((M, N), np.nan, dtype)
    gemm.mm_nt(A, Bt, out, np.ascontiguousarray(Bt.T))
    _check(f"mm_nt {M}x{K}x{N}", out, ref, dtype, K)


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


def _spy_mm_nt_form(M, K, N, BtT):
    """Which form mm_nt took: run it with Bt and BtT disagreeing (BtT is
    -Bt.T when given), so the sign of the result tells."""
    A, Bt, ref = _case(M, K, N, "float64")
    out = np.full((M, N), np.nan)
    gemm.mm_nt(A, Bt, out, -np.ascontiguousarray(Bt.T) if BtT else np.empty((0, 0)))
    if np.allclose(out, ref):
        return "dot"
    assert np.allclose(out, -ref), "mm_nt gave neither A @ Bt.T nor A @ BtT"
    return "axpy"


def test_axpy_form_taken_for_one_or_two_rows_only_when_the_transpose_is_given():
    assert gemm.AXPY_MAX_ROWS == 2
    assert _spy_mm_nt_form(1, 16, 24, True) == "axpy"
    assert _spy_mm_nt_form(2, 16, 24, True) == "axpy"
    assert _spy_mm_nt_form(3, 16, 24, True) == "dot"
    assert _spy_mm_nt_form(1, 16, 24, False) == "dot"     # no W^T built: the dot form
    assert _spy_mm_nt_form(1, 256, 512, True) == "dot"     # 512 KB of weights: out of cache, the dot form
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
    gemm.mm_nt(A, Bt, out, np.ascontiguousarray(Bt.T))
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
