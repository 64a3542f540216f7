"""Batch-major x and dy (a batch_first caller's arrays seen time-major,
x.transpose(1, 0, 2) C-contiguous) go to the Numba backend as they lie
(functional._batch_major, NumbaCPU.ACCEPTS_BATCH_MAJOR): the fused LSTM
forward by rows reads x in place, the BPTT parts by rows read dy in place,
and every other form makes the time-major copy it needs.  Every output and
gradient must be bit for bit the call's on C-contiguous copies, in every
form, and no copy may be made where the form reads the array in place."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _threads, functional
from fastrnn._backends import numba_cpu

from .helpers import _cast, arrays, force_by_rows, make_problem, nan_empty, numba_threads, one_numba_thread


def _call(mode, x, dy, w, h0, lengths, reverse):
    y, hn, saved = fastrnn.rnn_forward(mode, x, w, h0, lengths, reverse=reverse, training=True,
                                       backend="numba")
    dx, dh0, dw = fastrnn.rnn_backward(saved, dy)
    yi, hni, _ = fastrnn.rnn_forward(mode, x, w, h0, lengths, reverse=reverse, backend="numba")
    return [y, *arrays(hn), dx, *arrays(dh0), *[d for d in dw if d is not None], yi, *arrays(hni)]


@pytest.fixture
def copies(monkeypatch):
    """Each time-major copy of a batch-major array (in functional or in the
    backend), recorded by shape."""
    made = []
    real = functional._contiguous

    def spy(a, xp):
        if functional._batch_major(a):
            made.append(tuple(a.shape))
        return real(a, xp)
    monkeypatch.setattr(functional, "_contiguous", spy)
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)     # an element left unwritten shows NaN
    return made


def _problem(mode, dtype, lengths=None, seed=0, B=6, T=9, I=10, H=16):
    """helpers.make_problem's data in dtype, x and dy batch-major (B, T, n)."""
    p = make_problem(mode, T, B, I, H, lengths="random" if lengths == "random" else "full", scale=0.3, seed=seed)
    bm = lambda a: np.ascontiguousarray(a.transpose(1, 0, 2)).astype(dtype)  # noqa: E731
    return _cast(p["w"], dtype), bm(p["x"]), bm(p["dy"]), _cast(p["h0"], dtype), p["lengths"]


def _compare(mode, dtype, lengths, reverse, copies):
    w, xb, dyb, h0, L = _problem(mode, dtype, lengths=lengths)
    got = _call(mode, xb.transpose(1, 0, 2), dyb.transpose(1, 0, 2), w, h0, L, reverse)
    made = list(copies)
    want = _call(mode, np.ascontiguousarray(xb.transpose(1, 0, 2)), np.ascontiguousarray(dyb.transpose(1, 0, 2)),
                 w, h0, L, reverse)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        assert np.all(np.isfinite(a)), i
        assert np.array_equal(a, b), (i, float(np.abs(a - b).max()))
    return made


def test_batch_major_is_recognised():
    a = np.zeros((4, 3, 5), np.float32)
    assert functional._batch_major(a.transpose(1, 0, 2))
    assert not functional._batch_major(a)                       # C-contiguous: as always
    assert not functional._batch_major(a[:, ::-1].transpose(1, 0, 2))
    assert not functional._batch_major(a[:, :, :4].transpose(1, 0, 2))
    assert not functional._batch_major(a.transpose(2, 1, 0))


@pytest.fixture
def by_rows(monkeypatch):
    if _threads.available_threads() < 2:
        pytest.skip(f"threaded kernels cannot run here: {_threads.why_single()}")
    force_by_rows(monkeypatch)
    # the LSTM's fused forward then saves [x_t | h_prev] rows (SAVE_XH) for
    # one dW GEMM after BPTT: x is not needed again, so it is read in place
    monkeypatch.setattr(numba_cpu, "OWN_AFTER", False)
    monkeypatch.setattr(numba_cpu, "FUSED_GRADS_MAX_ROWS", 0)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, "random"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", fastrnn.MODES)
def test_by_rows_reads_in_place(by_rows, copies, mode, dtype, lengths, reverse):
    made = _compare(mode, dtype, lengths, reverse, copies)
    B, T, I, H = 6, 9, 10, 16
    # dy never copied by rows; x only where a projection or BPTT needs it time-major
    x_copies = 0 if mode == "lstm" else 2                  # training call and inference call
    assert made.count((T, B, H)) == 0, made
    assert made.count((T, B, I)) == x_copies, made


@pytest.mark.parametrize("lengths", [None, "random"])
@pytest.mark.parametrize("mode", fastrnn.MODES)
def test_other_forms_copy(copies, monkeypatch, request, mode, lengths):
    # the one-thread loops (threads off): both copied, as before
    one_numba_thread(request)
    monkeypatch.setattr(numba_cpu, "ONE_THREAD_ROWS", False)
    made = _compare(mode, np.float32, lengths, False, copies)
    B, T, I, H = 6, 9, 10, 16
    assert made.count((T, B, I)) == 2 and made.count((T, B, H)) == 1, made


@pytest.mark.parametrize("lengths", [None, "random"])
def test_backward_in_another_form_than_the_forward(by_rows, copies, monkeypatch, lengths):
    """The fused LSTM forward read x in place and kept no time-major x;
    a BPTT that then runs another form (the threads changed in between)
    takes x_t from the saved [x_t | h_prev] rows."""
    w, xb, dyb, h0, L = _problem("lstm", np.float32, lengths=lengths)
    res = []
    for x in (xb.transpose(1, 0, 2), np.ascontiguousarray(xb.transpose(1, 0, 2))):
        y, hn, saved = fastrnn.rnn_forward("lstm", x, w, h0, L, training=True, backend="numba")
        assert saved.payload["xh"]
        # no time-major x kept where it came batch-major
        assert (saved.payload["x2"] is None) == (x.base is xb), saved.payload["x2"]
        with monkeypatch.context() as m, numba_threads(1):
            m.setattr(numba_cpu, "_rows_form", lambda *a: None)
            dx, dh0, dw = fastrnn.rnn_backward(saved, np.ascontiguousarray(dyb.transpose(1, 0, 2)))
        res.append([dx, *dh0, *dw])
    for a, b in zip(*res):
        assert np.all(np.isfinite(a)) and np.array_equal(a, b)
