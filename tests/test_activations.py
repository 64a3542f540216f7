"""The float32 activations of the Numba kernels (kernels/cpu/activations.py)
against float64 NumPy on dense grids: relative error bounds over the whole
range, NaN passed through, the saturated tails exact, and the loops that
call them vectorised."""
import numpy as np
import pytest
from numba import njit

from fastrnn._kernels.cpu.activations import exp_, sigmoid_, tanh_


@njit(cache=False, error_model="numpy", fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def _apply(which, x, out):
    # the kernels' flags (common.FASTMATH), so the forms compile as there
    for i in range(x.shape[0]):
        if which == 0:
            out[i] = exp_(x[i])
        elif which == 1:
            out[i] = tanh_(x[i])
        else:
            out[i] = sigmoid_(x[i])


def _grid():
    lin = np.linspace(-100, 100, 2_000_001, dtype=np.float32)
    tiny = np.geomspace(1e-30, 1.0, 200_001).astype(np.float32)
    # every float32 in [0.125, 0.25) and [0.5, 1): tanh's expm1(2x) there
    # has the range reduction's n = -1 and +-1..3, where 2^n expm1(r) +
    # (2^n - 1) cancels most
    every = lambda lo, hi: np.arange(np.float32(lo).view(np.int32), np.float32(hi).view(np.int32),  # noqa: E731
                                     dtype=np.int32).view(np.float32)
    mid = np.concatenate([every(0.125, 0.25), every(0.5, 1.0)])
    return np.concatenate([lin, tiny, -tiny, mid, -mid, np.float32([0.0, -0.0])])


def _run(which, x):
    out = np.empty_like(x)
    _apply(which, x, out)
    return out


def _rel(got, want):
    want = want.astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / np.maximum(np.abs(want), np.finfo(np.float32).tiny)


@pytest.mark.parametrize("name,which,ref,bound,lo,hi", [
    ("exp", 0, np.exp, 2.5e-7, -87.0, 88.0),
    ("tanh", 1, np.tanh, 3e-7, -100.0, 100.0),
    ("sigmoid", 2, lambda v: 1 / (1 + np.exp(-v)), 3e-7, -87.0, 100.0),
])
def test_float32_forms_against_float64(name, which, ref, bound, lo, hi):
    x = _grid()
    x = x[(x >= lo) & (x <= hi)]
    err = _rel(_run(which, x), ref(x.astype(np.float64)))
    worst = int(np.argmax(err))
    assert err[worst] < bound, f"{name}: relative error {err[worst]:.2e} at x = {x[worst]!r}"


def test_tanh_tails_absolute_error():
    """In the tails the gradient of a tanh unit, 1 - tanh^2, is a small
    difference from 1, so what matters there is tanh's absolute error: at
    most 2 ulps of the values just below 1 (4 * 2^-25; rounding alone
    gives 2^-25).  The form from |x| has 3 * 2^-25; the same expm1 form
    from x itself (e -> -1 in the negative tail) had 5 * 2^-25, and a
    float32 gradient test against float64 failed on it."""
    x = np.linspace(-9, 9, 2_000_001, dtype=np.float32)
    x = x[np.abs(x) >= 1]
    err = np.abs(_run(1, x).astype(np.float64) - np.tanh(x.astype(np.float64))) / 2.0 ** -25
    worst = int(np.argmax(err))
    assert err[worst] <= 4, f"tanh: absolute error {err[worst]:.2f} * 2^-25 at x = {x[worst]!r}"


def test_tails_saturate_exactly_and_nan_passes():
    x = np.float32([-1e30, -200, -50, 50, 200, 1e30, np.inf, -np.inf, np.nan])
    t = _run(1, x)
    assert np.array_equal(t[:8], [-1, -1, -1, 1, 1, 1, 1, -1]) and np.isnan(t[8])
    s = _run(2, x)
    assert np.array_equal(s[3:7], [1, 1, 1, 1]) and np.isnan(s[8])
    assert np.all(s[:3] >= 0) and s[0] < 1e-30
    assert np.isnan(_run(0, x)[8])
