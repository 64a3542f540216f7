"""Kernel helpers compiled without a CPython wrapper (kernels/cpu/common.py,
@inner) raise TypeError when called from Python instead of crashing the
process (Numba calls such a function through a null pointer,
numba/numba#2541)."""
import pytest

pytest.importorskip("numba")

from numba.core.registry import CPUDispatcher  # noqa: E402

from fastrnn._kernels.cpu import blas, common, gemm, gru, lstm, parallel, rnn  # noqa: E402

from .helpers import assert_child_survives  # noqa: E402

MODULES = (blas, common, gemm, gru, lstm, parallel, rnn)


def _wrapperless():
    for mod in MODULES:
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.targetoptions.get("no_cpython_wrapper"):
                yield f"{mod.__name__}.{name}", obj


def test_every_wrapperless_helper_is_guarded():
    found = dict(_wrapperless())
    assert len(found) >= 25, sorted(found)      # the helpers exist and are seen
    unguarded = [n for n, d in found.items() if not isinstance(d, common.InnerDispatcher)]
    assert not unguarded, f"compiled without a CPython wrapper but callable from Python: {unguarded}"


def test_calling_a_helper_from_python_raises_and_the_process_lives():
    code = ("import numpy as np\n"
            "from fastrnn._kernels.cpu import parallel, gemm\n"
            "for f, args in ((parallel.rows_of, (5, 0, 2)),\n"
            "                (gemm._cols, (np.ones((2, 3), np.float32),) * 3 + (0, 2))):\n"
            "    try:\n"
            "        f(*args)\n"
            "    except TypeError as e:\n"
            "        assert 'inner kernel helper' in str(e), e\n"
            "    else:\n"
            "        raise SystemExit('no TypeError')\n"
            "print('alive')\n")
    assert_child_survives(code)


def test_compiled_callers_still_reach_the_helpers():
    """The guard is on the Python-level call only: a compiled caller works."""
    import numpy as np
    from numba import njit

    @njit
    def shim(n, i, nth):
        return parallel.rows_of(n, i, nth)

    assert [shim(5, i, 2) for i in range(2)] == [3, 2]
    assert shim(0, 1, 2) == 0
    A = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = np.full((4, 5), np.nan, np.float32)
    Bt = np.arange(15, dtype=np.float32).reshape(5, 3)

    @njit
    def cols(A, Bt, out):
        gemm._cols(A, Bt, out, 0, Bt.shape[0])

    cols(A, Bt, out)
    np.testing.assert_allclose(out, A @ Bt.T, rtol=1e-6)
