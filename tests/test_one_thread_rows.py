"""Big calls on one thread run the loops by rows as one part on the calling
thread (numba_cpu.ONE_THREAD_ROWS_*): when that form is chosen, that it
runs where and as it should, and that it gives the oracle's results, also
when the forward and the backward of one call take different forms."""
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import _threads
from fastrnn._backends import numba_cpu

from .helpers import TOL, _cast, assert_close, check_backend, make_problem, numba_threads, spy_rows_parts

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


def _form(mode, B, T, I, H, dt=F32, par=False, nth=1):
    G = {"lstm": 4, "gru": 3}.get(mode, 1)
    return numba_cpu._rows_form(mode, T, B, I, H, G * H, dt, nth, par)


def test_when_big_calls_on_one_thread_run_by_rows(monkeypatch):
    """(B, T, I, H) as the benchmarks' S1-S5.  By rows from
    ONE_THREAD_ROWS_MIN_WORK, for the modes and W_hh sizes the threaded
    loops by rows take, from two rows; where SciPy's OpenBLAS runs more
    than one thread, only for steps up to ONE_THREAD_ROWS_MAX_BLAS_MACS
    (above that the one-thread loops' per-step BLAS uses its threads)."""
    blas = [1]
    monkeypatch.setattr(_threads, "blas_threads", lambda: blas[0])
    here = numba_cpu._on_this_thread
    S1, S2, S3, S4, S5 = (1, 100, 64, 64), (8, 100, 128, 128), (32, 64, 128, 256), (64, 50, 512, 512), \
        (32, 25, 1024, 1024)
    for mode in fastrnn.MODES:
        assert _form(mode, *S1) is None                     # B = 1, and under the work bound
        assert _form(mode, *S3) is here and _form(mode, *S4) is here
    assert _form("lstm", *S2) is here and _form("rnn_tanh", *S2) is here
    assert _form("lstm", 4, 20, 32, 32) is None             # 0.7 M < ONE_THREAD_ROWS_MIN_WORK
    # beyond ROWS_MAX_WHH_BYTES only where the one-thread loops' steps go to
    # BLAS (more than gemm.OWN_MAX_ROWS rows)
    assert _form("lstm", *S5) is here and _form("gru", *S5) is here     # W_hh 16 / 12 MB, 32 rows
    assert _form("lstm", 8, 50, 1024, 1024) is None and _form("lstm", 16, 50, 1024, 1024) is None
    assert _form("lstm", 17, 50, 1024, 1024) is here
    assert _form("lstm", 8, 50, 256, 256) is here           # W_hh 1 MB: within the bound
    for shape in (S2, S3, S4):
        assert _form("lstm", *shape, dt=F64) is None        # float64: never
    assert _form("lstm", 1, 4000, 256, 256) is None         # one row: the one-thread loops' axpy form
    blas[0] = 2
    assert _form("lstm", *S3) is here and _form("gru", *S3) is here     # steps of 8.4 M / 6.3 M
    assert _form("lstm", *S4) is None and _form("gru", *S4) is None     # 67 M / 50 M
    assert _form("rnn_tanh", *S4) is here                   # 16.8 M, at the bound
    assert _form("lstm", *S5) is None                       # 134 M
    assert _form("lstm", 8, 50, 256, 256) is here           # 8 rows: the loops' dot form, no BLAS steps
    blas[0] = 0                                             # unknown: as for more than one
    assert _form("lstm", *S4) is None
    monkeypatch.setattr(numba_cpu, "ONE_THREAD_ROWS", False)
    assert _form("lstm", *S3) is None
    # with threads: _by_rows decides, as before
    monkeypatch.setattr(numba_cpu, "_by_rows", lambda *a: ("by_rows", a))
    assert _form("lstm", *S3, par=True, nth=2) == ("by_rows", ("lstm", 32, 256, 1024, F32, 2))


@pytest.fixture
def one_numba_thread():
    with numba_threads(1):
        yield


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", fastrnn.MODES)
@pytest.mark.parametrize("B,lengths,reverse", [(5, "random", False), (4, "full", True), (1, "full", False),
                                               (6, [9, 9, 7, 4, 4, 1], True)])
def test_one_numba_thread_runs_the_parts_on_the_calling_thread(mode, dtype, B, lengths, reverse, monkeypatch,
                                                               one_numba_thread):
    """Numba at one thread (numba.set_num_threads(1)), the bound lowered so
    that these sizes count as big: in float32 every part by rows runs as
    part 0 of 1 on the calling thread; float64 keeps the one-thread loops.
    The results match the float64 oracle."""
    assert _threads.available_threads() == 1
    calls = spy_rows_parts(monkeypatch, lambda name, i, nth: (name, i, nth, threading.get_ident()))
    monkeypatch.setattr(numba_cpu, "ONE_THREAD_ROWS_MIN_WORK", 0)
    check_backend(mode, "numba", T=9, B=B, I=5, H=11, dtype=dtype, lengths=lengths, reverse=reverse)
    if dtype == "float64":
        assert calls == []
        return
    names = {c[0] for c in calls}
    assert any("forward" in n for n in names) and any("backward" in n for n in names), names
    assert all(c[1:] == (0, 1, threading.get_ident()) for c in calls), calls


@pytest.mark.skipif(_threads.available_threads() < 2,
                    reason=f"threaded kernels cannot run here: {_threads.why_single()}")
@pytest.mark.parametrize("mode", fastrnn.MODES)
@pytest.mark.parametrize("first", ["threaded", "one thread"])
def test_forward_and_backward_in_different_forms(mode, first, monkeypatch):
    """The threads can be busy for one half of a call and free for the other
    (another Python thread in a threaded kernel), or Numba's thread count
    changed between them: a forward by rows on two threads with its BPTT
    by rows on one, and the other way round, match the oracle."""
    calls = spy_rows_parts(monkeypatch, lambda name, i, nth: (name, nth))
    monkeypatch.setattr(numba_cpu, "ONE_THREAD_ROWS_MIN_WORK", 0)
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 1)
    prob = make_problem(mode, 9, 6, 5, 11, lengths="random", h0=True, seed=3)
    x, w, h0, dy, dhn = (_cast(prob[k], "float32") for k in ("x", "w", "h0", "dy", "dhn"))
    import numba
    old = numba.get_num_threads()
    with numba_threads(old if first == "threaded" else 1):
        y, _, saved = fastrnn.rnn_forward(mode, x, w, h0, prob["lengths"], training=True, backend="numba")
    with numba_threads(1 if first == "threaded" else old):
        dx, _, dw = fastrnn.rnn_backward(saved, dy, dhn)
    fwd = [c[1] for c in calls if "forward" in c[0]]
    bwd = [c[1] for c in calls if "backward" in c[0]]
    assert fwd and bwd and (set(fwd), set(bwd)) == (({old}, {1}) if first == "threaded" else ({1}, {old}))
    y64, _, s64 = fastrnn.rnn_forward(mode, prob["x"], prob["w"], prob["h0"], prob["lengths"],
                                      training=True, backend="numpy")
    dx64, _, dw64 = fastrnn.rnn_backward(s64, prob["dy"], prob["dhn"])
    assert_close("y", y, y64, TOL["float32"])
    assert_close("dx", dx, dx64, TOL["float32"])
    for name, a, b in zip(("dw_ih", "dw_hh", "db_ih", "db_hh"), dw, dw64):
        assert_close(name, a, b, TOL["float32"])
