"""The GEMMs after the BPTT loop on torch's BLAS (numba_cpu.TORCH_AFTER_*):
where torch is imported they take dx, dW_ih, dW_hh and the bias sums for
big float32 calls; the results must be the float64 oracle's, every
element written, in each form that leaves those GEMMs to a region (by
rows on two threads; the one-thread loops' region on the calling thread),
with full and ragged lengths.  Likewise the input projection before the
loops by rows (TORCH_PROJECT)."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _threads
from fastrnn._backends import numba_cpu, torch_team

from .helpers import arrays, check_backend, force_by_rows, force_by_units, nan_empty, one_numba_thread, torch_threads

torch = pytest.importorskip("torch", reason="the torch BLAS path needs PyTorch (pip install fastrnn[torch])")

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


class _Calls(list):
    """The torch path's calls ('cat' or 'split'), in .bsum whether each got
    the parts' bias sums, in .dxb whether it wrote dx batch-major."""

    def __init__(self):
        super().__init__()
        self.bsum = []
        self.dxb = []


@pytest.fixture
def torch_calls(monkeypatch):
    """Every size takes the torch path; each call of it recorded (the
    form of its weight-gradient operand: 'cat' or 'split')."""
    monkeypatch.setattr(numba_cpu, "TORCH_AFTER_MIN_MACS", 0)
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)     # an element left unwritten shows NaN
    calls = _Calls()
    real = numba_cpu._after_loop_torch

    def spy(torch_mod, dG2, dGh2, x2, h2, *rest):
        calls.append("cat" if h2 is None else "split")
        # the parts' bias sums (BIAS_IN_PARTS) and the batch-major dx
        # (DX_LIKE_X), if given: the arguments after db_hh
        calls.bsum.append(len(rest) >= 8 and rest[7] is not None)
        calls.dxb.append(len(rest) >= 9 and rest[8] is not None)
        return real(torch_mod, dG2, dGh2, x2, h2, *rest)
    monkeypatch.setattr(numba_cpu, "_after_loop_torch", spy)
    return calls


@pytest.fixture
def two_threads():
    """Skip where the threaded kernels cannot run; torch at two threads
    inside (the by-rows parts on its team, and its BLAS on two)."""
    if _threads.available_threads() < 2:
        pytest.skip(f"threaded kernels cannot run here: {_threads.why_single()}")
    with torch_threads(2):
        yield


@pytest.mark.parametrize("bias_in_parts", [True, False])
@pytest.mark.parametrize("own_after,xh_torch", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("lengths", ["full", "random"])
@pytest.mark.parametrize("mode", fastrnn.MODES)
def test_by_rows_on_two_threads(torch_calls, two_threads, monkeypatch, mode, lengths, own_after, xh_torch,
                                bias_in_parts):
    force_by_rows(monkeypatch)
    # the bias gradients summed by the parts as they go, or by torch.sum after
    monkeypatch.setattr(numba_cpu, "BIAS_IN_PARTS", bias_in_parts)
    # ragged lengths: the gradients after the loop in the region, not in
    # the parts (FUSED_GRADS_*), so that the region's x has padding in it
    monkeypatch.setattr(numba_cpu, "FUSED_GRADS_MAX_ROWS", 0)
    # without the own blocks' bound the LSTM's fused forward saves
    # [x_t | h_prev] rows (SAVE_XH) and dW is one GEMM over I + H columns;
    # within it too where torch takes the GEMMs on two threads (XH_TORCH_AFTER)
    monkeypatch.setattr(numba_cpu, "OWN_AFTER", own_after)
    monkeypatch.setattr(numba_cpu, "XH_TORCH_AFTER", xh_torch)
    for reverse in (False, True):
        check_backend(mode, "numba", T=9, B=6, I=40, H=64, dtype="float32", lengths=lengths, scale=0.25,
                      reverse=reverse, seed=int(reverse))
    want = "cat" if mode == "lstm" and (xh_torch or not own_after) else "split"
    assert torch_calls and set(torch_calls) == {want}, torch_calls
    assert set(torch_calls.bsum) == {bias_in_parts}, torch_calls.bsum


@pytest.mark.parametrize("lengths", ["full", "random"])
@pytest.mark.parametrize("mode", fastrnn.MODES)
def test_one_thread_loops_region(torch_calls, monkeypatch, request, mode, lengths):
    # the one-thread loops (a call under PAR_MIN_WORK) leave their GEMMs to
    # a region on this thread (AFTER_LOOP_OWN_MIN_MACS): torch takes it
    one_numba_thread(request)
    monkeypatch.setattr(numba_cpu, "ONE_THREAD_ROWS", False)
    check_backend(mode, "numba", T=9, B=3, I=40, H=64, dtype="float32", lengths=lengths, scale=0.25)
    assert torch_calls and set(torch_calls) == {"split"}, torch_calls


def test_when_torch_takes_the_gemms(monkeypatch):
    big = numba_cpu.TORCH_AFTER_MIN_MACS
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 2)
    assert numba_cpu._torch_after(F32, big, 2) is torch
    assert numba_cpu._torch_after(F32, big, 1) is torch
    assert numba_cpu._torch_after(F64, big, 2) is None              # float32 only
    assert numba_cpu._torch_after(F32, numba_cpu.TORCH_AFTER_MIN_MACS - 1, 2) is None
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 1)
    assert numba_cpu._torch_after(F32, big, 2) is None      # torch at fewer threads than the call
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 2)
    monkeypatch.setattr(torch_team, "_FORKED", True)        # a forked child: not there
    assert numba_cpu._torch_after(F32, big, 2) is None
    monkeypatch.setattr(torch_team, "_FORKED", False)
    assert numba_cpu._torch_after(F32, big, 2) is torch
    monkeypatch.setattr(numba_cpu, "TORCH_AFTER", False)
    assert numba_cpu._torch_after(F32, big, 2) is None


def test_float64_stays_on_the_kernels(torch_calls, two_threads, monkeypatch):
    force_by_rows(monkeypatch)
    check_backend("lstm", "numba", T=9, B=6, I=40, H=64, dtype="float64")
    assert torch_calls == []


@pytest.mark.parametrize("form", ["rows", "units"])
def test_torch_raising_falls_back_to_the_kernels(torch_calls, two_threads, monkeypatch, form):
    # torch.mm raising partway (after dx was written): the kernels' own
    # region runs and writes every output again
    if form == "rows":
        force_by_rows(monkeypatch)
    else:
        force_by_units(monkeypatch)
    real_mm = torch.mm
    seen = []

    def mm(*args, **kw):
        seen.append(1)
        if len(seen) > 1:
            raise RuntimeError("no BLAS in this build")
        return real_mm(*args, **kw)
    monkeypatch.setattr(torch, "mm", mm)
    # the projection before the parts goes to torch.mm too (every call of it
    # but the very first raises)
    monkeypatch.setattr(numba_cpu, "FUSED_PROJECTION_MAX_MACS", -1)
    for mode in fastrnn.MODES:
        check_backend(mode, "numba", T=9, B=6, I=40, H=64, dtype="float32", scale=0.25)
    assert torch_calls and len(seen) >= 2


@pytest.mark.parametrize("lengths", ["full", "random"])
@pytest.mark.parametrize("mode", fastrnn.MODES)
def test_projection_before_the_parts(torch_calls, two_threads, monkeypatch, mode, lengths):
    # the loops by rows with the projection as a region before the parts
    # (not in the parts: FUSED_PROJECTION_*; the LSTM unfused): torch.mm
    # writes xg, whose NaN-filled buffer shows any element it left
    force_by_rows(monkeypatch)
    monkeypatch.setattr(numba_cpu, "FUSED_PROJECTION_MAX_MACS", -1)
    monkeypatch.setattr(numba_cpu, "FUSED_STEP_MAX_BYTES", -1)
    projected = []
    real = numba_cpu._project_torch

    def spy(*args):
        projected.append(1)
        return real(*args)
    monkeypatch.setattr(numba_cpu, "_project_torch", spy)
    check_backend(mode, "numba", T=9, B=6, I=40, H=64, dtype="float32", lengths=lengths, scale=0.25)
    assert projected, "the projection did not go to torch"
    n = len(projected)
    monkeypatch.setattr(numba_cpu, "TORCH_PROJECT", False)
    check_backend(mode, "numba", T=9, B=6, I=40, H=64, dtype="float32", lengths=lengths, scale=0.25)
    assert len(projected) == n


@pytest.mark.parametrize("lengths", ["full", "random"])
@pytest.mark.parametrize("mode", fastrnn.MODES)
def test_by_units_on_two_threads(torch_calls, two_threads, monkeypatch, mode, lengths):
    # the loops by units given x2 None (TORCH_UNITS): torch.mm projects x
    # before them and takes the GEMMs after BPTT, into NaN-filled buffers;
    # with it off the kernels do both themselves
    force_by_units(monkeypatch)
    ran = []     # in this form only the loops by units ask _torch_projected
    real_units = numba_cpu._torch_projected

    def spy(*args):
        ran.append(real_units(*args))
        return ran[-1]
    monkeypatch.setattr(numba_cpu, "_torch_projected", spy)
    for reverse in (False, True):
        check_backend(mode, "numba", T=9, B=6, I=40, H=64, dtype="float32", lengths=lengths, scale=0.25,
                      reverse=reverse, seed=int(reverse))
    assert ran and all(ran), ran
    assert torch_calls and set(torch_calls) == {"split"}, torch_calls
    n, m = len(ran), len(torch_calls)
    monkeypatch.setattr(numba_cpu, "TORCH_UNITS", False)
    check_backend(mode, "numba", T=9, B=6, I=40, H=64, dtype="float32", lengths=lengths, scale=0.25)
    assert len(ran) == n and len(torch_calls) == m


def _child_call(queue):
    try:
        check_backend("lstm", "numba", T=9, B=6, I=40, H=64, dtype="float32", scale=0.25)
        queue.put(("ok", numba_cpu._after_loop_torch.calls))
    except BaseException as exc:       # report, never hang the parent
        queue.put(("error", repr(exc)))


def test_forked_child_keeps_the_kernels(monkeypatch):
    # a child forked after torch ran its threads: the GEMMs stay on the
    # kernels there (torch_team._FORKED), and the results are right
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    monkeypatch.setattr(numba_cpu, "TORCH_AFTER_MIN_MACS", 0)
    real = numba_cpu._after_loop_torch

    def spy(*args):
        spy.calls += 1
        return real(*args)
    spy.calls = 0
    monkeypatch.setattr(numba_cpu, "_after_loop_torch", spy)
    torch.mm(torch.ones(64, 64), torch.ones(64, 64))        # torch's threads have run
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_call, args=(q,), daemon=True)
    p.start()
    try:
        # torch.mm in such a child can hang in libgomp (it did here
        # without the _FORKED test): a timeout, not a hung test run
        status, value = q.get(timeout=120)
    finally:
        p.join(timeout=30)
        if p.is_alive():
            p.terminate()
    assert status == "ok", value
    assert value == 0, "torch.mm ran in the forked child"


@pytest.mark.parametrize("bmm", [True, False], ids=["bmm", "mm-copy"])
@pytest.mark.parametrize("lengths", ["full", "random"])
@pytest.mark.parametrize("mode", fastrnn.MODES)
def test_dx_in_the_layout_of_a_batch_major_x(torch_calls, two_threads, monkeypatch, mode, lengths, bmm):
    """x handed over batch-major (a batch_first caller's) and the GEMMs after
    the loop on torch: dx comes back in x's layout (DX_LIKE_X: one batched
    GEMM, or where W_ih is over DX_BMM_MAX_W_BYTES one GEMM into time-major
    rows copied over), equal to the call's on a C-contiguous x but for
    rounding, and every other output bit for bit."""
    force_by_rows(monkeypatch)
    monkeypatch.setattr(numba_cpu, "DX_BMM_MAX_W_BYTES", 1 << 40 if bmm else 0)
    monkeypatch.setattr(numba_cpu, "FUSED_GRADS_MAX_ROWS", 0)
    monkeypatch.setattr(numba_cpu, "OWN_AFTER", False)
    rng = np.random.default_rng(3)
    B, T, I, H = 6, 9, 40, 64
    G = {"lstm": 4, "gru": 3}.get(mode, 1)
    w = tuple((rng.standard_normal(s) * 0.25).astype(np.float32) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,)))
    xb = rng.standard_normal((B, T, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    L = rng.integers(0, T + 1, B) if lengths == "random" else None
    if L is not None:
        dy[np.arange(T)[:, None] >= L[None, :]] = 0
    res = []
    for x in (xb.transpose(1, 0, 2), np.ascontiguousarray(xb.transpose(1, 0, 2))):
        y, hn, saved = fastrnn.rnn_forward(mode, x, w, None, L, training=True, backend="numba")
        dx, dh0, dw = fastrnn.rnn_backward(saved, dy)
        res.append((dx, [y, *arrays(hn), *arrays(dh0), *dw]))
    assert torch_calls.dxb == [True, False], torch_calls.dxb
    (dxb, rest_b), (dxc, rest_c) = res
    assert dxb.shape == (T, B, I) and dxb.transpose(1, 0, 2).flags.c_contiguous
    assert dxc.flags.c_contiguous
    assert np.all(np.isfinite(dxb))
    assert np.abs(dxb - dxc).max() <= 1e-5 * np.abs(dxc).max()
    if L is not None:
        assert np.all(dxb[np.arange(T)[:, None] >= L[None, :]] == 0)
    for a, b in zip(rest_b, rest_c):
        assert np.array_equal(a, b)
    # and off: dx time-major, C-contiguous
    monkeypatch.setattr(numba_cpu, "DX_LIKE_X", False)
    _, _, saved = fastrnn.rnn_forward(mode, xb.transpose(1, 0, 2), w, None, L, training=True, backend="numba")
    dx_off = fastrnn.rnn_backward(saved, dy)[0]
    assert dx_off.flags.c_contiguous and np.array_equal(dx_off, dxc)
