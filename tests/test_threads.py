"""The threaded Numba kernels (kernels/cpu/parallel.py and the *_par loops)
against the float64 oracle, and the rules of fastrnn/_threads.py: when they
run, what they do to SciPy's OpenBLAS, concurrent calls, fork."""
import contextlib
import multiprocessing as mp
import os
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import _threads
from fastrnn._backends import bufpool, numba_cpu
from fastrnn.cells import spec
from fastrnn._kernels.cpu import gru, lstm, packed, rnn

from .helpers import (TOL, _cast, assert_child_survives, assert_close, check_backend, make_problem, nan_empty,
                      poison_free_cached_buffers, numba_threads, run, spy_rows_parts)

MODES = fastrnn.MODES
PAR = {"lstm": (lstm, "lstm"), "gru": (gru, "gru"), "rnn_tanh": (rnn, "rnn"), "rnn_relu": (rnn, "rnn")}

pytestmark = pytest.mark.skipif(_threads.available_threads() < 2,
                                reason=f"threaded kernels cannot run here: {_threads.why_single()}")


def _force_split(monkeypatch):
    """The threaded kernels by units, with every step split, at any size."""
    monkeypatch.setattr(numba_cpu, "PAR_MIN_MACS", 0)
    monkeypatch.setattr(numba_cpu, "PAR_MIN_WORK", 0)
    monkeypatch.setattr(numba_cpu, "TINY_WORK", 0)
    monkeypatch.setattr(numba_cpu, "ROWS_MODES", ())


@pytest.fixture
def rows_spy(monkeypatch):
    """Force the threaded loops by rows at every size (from one row a
    thread) and record each part that runs: (name, part, nth, thread id,
    SciPy's OpenBLAS thread count as the part saw it)."""
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 1)   # by rows even with torch imported
    return spy_rows_parts(monkeypatch,
                          lambda name, i, nth: (name, i, nth, threading.get_ident(), _threads._blas[0]()))


def _assert_by_rows(calls, mode):
    prefix = PAR[mode][1]
    names = {c[0] for c in calls}
    # the LSTM's forward folds the projection into its steps up to
    # numba_cpu.FUSED_STEP_MAX_BYTES (the "lstm-unfused" cases set it to -1)
    forward = ("lstm_forward_fused_rows_part" if mode == "lstm" and numba_cpu.FUSED_STEP_MAX_BYTES >= 0
               else f"{prefix}_forward_rows_part")
    assert {forward, f"{prefix}_backward_rows_part"} <= names, names
    for name in names:
        mine = [c for c in calls if c[0] == name]
        nth = mine[0][2]
        assert nth >= 2 and sorted({c[1] for c in mine}) == list(range(nth)), mine
    assert len({c[3] for c in calls}) >= 2, "the parts ran on one thread"
    assert all(c[4] == 1 for c in calls), "SciPy's OpenBLAS must run one thread inside a threaded kernel"


@pytest.fixture
def spy(monkeypatch):
    """Force the threaded kernels at every size and record each call to them,
    with SciPy's OpenBLAS thread count as the kernel saw it."""
    _force_split(monkeypatch)
    calls = []
    for mod, prefix in ((lstm, "lstm"), (gru, "gru"), (rnn, "rnn")):
        for name in (f"{prefix}_forward_par", f"{prefix}_backward_par"):
            kern = getattr(mod, name)

            def wrapped(*a, _k=kern, _n=name):
                calls.append((_n, _threads._blas[0](), a[-2], a[-1]))
                return _k(*a)
            monkeypatch.setattr(mod, name, wrapped)
    return calls


def _assert_threaded(calls, mode):
    prefix = PAR[mode][1]
    names = {c[0] for c in calls}
    assert {f"{prefix}_forward_par", f"{prefix}_backward_par"} <= names, names
    assert all(c[1] == 1 for c in calls), "SciPy's OpenBLAS must run one thread inside a threaded kernel"
    assert all(c[2] >= 2 and c[3] == c[2] for c in calls), "nth >= 2 and every step split"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 3, 5), (7, 3, 5, 13), (5, 9, 4, 37), (3, 20, 6, 70)])
def test_threaded_odd_sizes(spy, mode, dtype, T, B, I, H):
    # H = 5 and 13 leave one thread no units (blocks are cut at multiples of 8)
    check_backend(mode, "numba", T=T, B=B, I=I, H=H, dtype=dtype)
    _assert_threaded(spy, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("H", [128, 136])
def test_threaded_steps_on_packed_panels(spy, mode, H):
    # float32 with each thread's block of units holding whole panels
    # (H = 128: blocks of 64 units) or panels and edges (H = 136: blocks of
    # 72 and 64, the gates' columns shifted off the panel grid), so the
    # by-units steps run kernels/cpu/packed.py's blocks; B = 5 and lengths:
    # blocks of 4 rows, one-row blocks, and shrinking row counts
    check_backend(mode, "numba", T=6, B=5, I=9, H=H, dtype="float32")
    check_backend(mode, "numba", T=6, B=5, I=9, H=H, lengths="random", reverse=True, dtype="float32")
    _assert_threaded(spy, mode)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", ["edges", "random"])
@pytest.mark.parametrize("mode", MODES)
def test_threaded_lengths_and_reverse(spy, mode, lengths, reverse, dtype):
    check_backend(mode, "numba", T=9, B=6, I=4, H=27, lengths=lengths, reverse=reverse, dtype=dtype)
    _assert_threaded(spy, mode)


@pytest.mark.parametrize("mode", MODES)
def test_threaded_no_state_no_bias_all_zero_lengths(spy, mode):
    check_backend(mode, "numba", H=21, h0=False, reverse=True, lengths="edges")
    check_backend(mode, "numba", H=21, bias=False)
    got, _ = check_backend(mode, "numba", T=4, B=3, H=21, lengths=np.zeros(3, int))
    assert np.all(got["y"] == 0), "y: all-zero lengths give zero output"
    _assert_threaded(spy, mode)


@pytest.mark.parametrize("mode", MODES)
def test_threaded_nan_poisoned_buffers(spy, mode, monkeypatch):
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)
    check_backend(mode, "numba", T=6, B=5, H=19, lengths="edges", dtype="float32")
    check_backend(mode, "numba", T=6, B=5, H=19, lengths="edges", reverse=True, dtype="float32")
    _assert_threaded(spy, mode)


@pytest.mark.parametrize("mode", MODES)
def test_threaded_reused_cached_buffers_are_written_in_full(spy, mode, monkeypatch):
    monkeypatch.setattr(bufpool, "MIN_BYTES", 0)
    monkeypatch.setattr(bufpool, "CACHE", bufpool.BufferCache(1 << 30))
    monkeypatch.setattr(numba_cpu, "_empty", bufpool.CACHE.empty)
    check_backend(mode, "numba", T=6, B=5, H=19, lengths="edges", dtype="float32")
    assert poison_free_cached_buffers() > 0
    hits = bufpool.CACHE.hits
    check_backend(mode, "numba", T=6, B=5, H=19, lengths="edges", reverse=True, dtype="float32")
    assert bufpool.CACHE.hits > hits, "the call reused no cached buffer"
    _assert_threaded(spy, mode)


# every mode, and the LSTM once more with its forward's input projection
# before the loop rather than in the steps (lstm.lstm_forward_rows_part)
ROWS = [*MODES, "lstm-unfused"]


@pytest.fixture
def rows_mode(request, monkeypatch):
    """The mode of a by-rows test; "lstm-unfused" is the LSTM with
    numba_cpu.FUSED_STEP_MAX_BYTES at -1."""
    mode = request.param
    if mode == "lstm-unfused":
        monkeypatch.setattr(numba_cpu, "FUSED_STEP_MAX_BYTES", -1)
        mode = "lstm"
    return mode


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rows_mode", ROWS, indirect=True)
@pytest.mark.parametrize("T,B,I,H", [(1, 2, 3, 5), (7, 3, 5, 13), (5, 9, 4, 37), (3, 20, 6, 70)])
def test_by_rows_odd_sizes(rows_spy, rows_mode, dtype, T, B, I, H):
    mode = rows_mode
    # B = 3, 9: the threads get different numbers of rows
    check_backend(mode, "numba", T=T, B=B, I=I, H=H, dtype=dtype)
    _assert_by_rows(rows_spy, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("I,H", [(40, 70), (72, 64)])
def test_gemms_after_bptt_on_own_blocks(rows_spy, mode, I, H, monkeypatch):
    # float32, full lengths, G*H and I, H within numba_cpu.OWN_AFTER_*: the
    # region after the parts runs packed.gemm_nn / gemm_tn (its last
    # argument, own, True), with whole panels of I and H columns and
    # remainders (40 = 32 + 8, 70 = 64 + 6, 72 = 64 + 8); float64 runs it on BLAS
    regions = []
    run_parts = numba_cpu._in_threads

    def spy(fn, nth, *args):
        regions.append((fn.__name__, args[-1]))
        return run_parts(fn, nth, *args)
    monkeypatch.setattr(numba_cpu, "_in_threads", spy)
    # the blocks take these layers at every vector width here (the bound
    # itself follows the width: its default is a speed choice, not checked)
    monkeypatch.setitem(numba_cpu.OWN_AFTER_MAX_GH, packed._LANES, 768)
    G = spec(mode).gates
    assert numba_cpu._own_after(G * H, I, H, np.dtype(np.float32))
    # scale 0.25, not the default 0.5: at H = 64 a tanh RNN with 0.5 has a
    # step gain near 0.5 * sqrt(64) = 4, so float32 rounding grows ~4x a step
    # and seed 0 lands in the tail (h_n 2.3e-5 by rows with 16-lane sums on
    # an AVX-512 machine; over 12 seeds loops, by rows and NumPy's float32
    # all have medians 6.5-7.8e-6).  At 0.25 they sit at 0.9-1.9e-6, and a
    # wrong block or remainder still misses by O(1)
    check_backend(mode, "numba", T=7, B=6, I=I, H=H, dtype="float32", scale=0.25)
    check_backend(mode, "numba", T=7, B=6, I=I, H=H, h0=False, reverse=True, dtype="float32")
    _assert_by_rows(rows_spy, mode)
    assert [r for r in regions if r[0] == "after_loop_part"] == [("after_loop_part", True)] * 2, regions
    regions.clear()
    check_backend(mode, "numba", T=7, B=6, I=I, H=H, dtype="float64")
    # (the LSTM's on BLAS: both weight gradients in one GEMM, numba_cpu.SAVE_XH)
    name = "after_loop_part_cat" if mode == "lstm" else "after_loop_part"
    assert [r for r in regions if r[0].startswith("after_loop_part")] == [(name, None)], regions


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,H", [("float32", 64), ("float32", 40), ("float64", 64)])
def test_parts_by_rows_take_no_weights_where_the_panels_hold_them(mode, dtype, H, monkeypatch):
    """numba_cpu.PANELS_ONLY_ROWS: where the panels hold every column
    (float32; G*H a multiple of 32 for the forward's product, H for
    BPTT's) the parts by rows get None for W_hh and W_hh^T (the
    panels-only product), else the arrays (H = 40: the LSTM's forward
    none, G*H = 160, its BPTT the array); against the oracle with every
    allocation NaN-filled."""
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 1)
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)
    monkeypatch.setattr(numba_cpu, "FUSED_STEP_MAX_BYTES", -1)    # the LSTM's unfused forward too
    seen = {}

    def record(name, i, nth):
        return name
    calls = spy_rows_parts(monkeypatch, record)
    real = numba_cpu._in_threads

    def spy(fn, nth, *a):
        if fn.__name__ != "wrapped":
            return real(fn, nth, *a)
        before = len(calls)
        out = real(fn, nth, *a)
        # the forward parts take (xg, w_hh, ...), the BPTT parts (w_hhT, ...)
        seen[calls[before]] = a[1] if "_forward_" in calls[before] else a[0]
        return out
    monkeypatch.setattr(numba_cpu, "_in_threads", spy)
    check_backend(mode, "numba", T=5, B=6, I=7, H=H, lengths="random", dtype=dtype)
    prefix = PAR[mode][1]
    assert {f"{prefix}_forward_rows_part", f"{prefix}_backward_rows_part"} <= set(seen), seen
    G = spec(mode).gates
    for name, w in seen.items():
        width = G * H if "_forward_" in name else H
        whole = dtype == "float32" and width % 32 == 0
        assert (w is None) == whole, (name, None if w is None else w.shape)


def _region_spy(monkeypatch):
    regions = []
    run_parts = numba_cpu._in_threads

    def spy(fn, nth, *args):
        regions.append(fn.__name__)
        return run_parts(fn, nth, *args)
    monkeypatch.setattr(numba_cpu, "_in_threads", spy)
    return regions


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("I,H", [(5, 13), (40, 64)])
def test_lstm_saves_x_and_h_for_one_dw_gemm(rows_spy, dtype, I, H, monkeypatch):
    # the fused forward saves [x_t | h_prev] (numba_cpu.SAVE_XH) where the
    # GEMMs after BPTT run on BLAS, and the region after the parts runs
    # dW_ih and dW_hh as one GEMM (parallel.after_loop_part_cat); with
    # padding too once the parts do not take the gradients themselves,
    # where x's padding (NaN here) must not reach them
    monkeypatch.setattr(numba_cpu, "OWN_AFTER", False)
    regions = _region_spy(monkeypatch)
    check_backend("lstm", "numba", T=7, B=6, I=I, H=H, dtype=dtype)
    check_backend("lstm", "numba", T=7, B=6, I=I, H=H, h0=False, reverse=True, dtype=dtype)
    assert regions.count("after_loop_part_cat") == 2 and "after_loop_part" not in regions, regions
    monkeypatch.setattr(numba_cpu, "FUSED_GRADS_MAX_ROWS", 0)
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)     # every element the kernels leave is NaN
    regions.clear()
    for reverse in (False, True):
        check_backend("lstm", "numba", T=7, B=6, I=I, H=H, lengths="edges", reverse=reverse, dtype=dtype)
    assert regions.count("after_loop_part_cat") == 2, regions
    prob = make_problem("lstm", 6, 5, I, H, lengths=np.array([6, 2, 0, 3, 1]))
    clean = run("lstm", prob, backend="numba", dtype=dtype)
    x = prob["x"].copy()
    x[2:, 1] = np.nan
    x[:, 2] = np.inf
    x[1:, 4] = np.nan
    got = run("lstm", dict(prob, x=x), backend="numba", dtype=dtype)
    for name in clean:
        np.testing.assert_array_equal(got[name], clean[name], err_msg=name)
    _assert_by_rows(rows_spy, "lstm")


@pytest.mark.parametrize("other", ["one thread", "by units"])
def test_lstm_saved_x_and_h_when_bptt_takes_another_path(rows_spy, other, monkeypatch):
    # BPTT may run another form than its forward (the threads busy, say):
    # it then takes h_prev out of the saved [x_t | h_prev] rows
    monkeypatch.setattr(numba_cpu, "OWN_AFTER", False)
    prob = make_problem("lstm", 7, 6, 40, 64, lengths="random")
    monkeypatch.setattr(numba_cpu, "FUSED_GRADS_MAX_ROWS", 0)
    ref = run("lstm", prob, backend="numpy", dtype="float64")
    x, w = prob["x"].astype(np.float32), [a.astype(np.float32) for a in prob["w"]]
    h0 = tuple(a.astype(np.float32) for a in prob["h0"])
    y, hn, saved = fastrnn.rnn_forward("lstm", x, w, h0, prob["lengths"], training=True, backend="numba")
    assert saved.payload["xh"] and saved.payload["Hs"].shape == (7, 6, 40 + 64)
    if other == "one thread":
        monkeypatch.setattr(numba_cpu, "_kernel_form", lambda *a: contextlib.nullcontext((1, False, 1)))
    else:
        _force_split(monkeypatch)
    dhn = tuple(a.astype(np.float32) for a in prob["dhn"])
    dx, dh0, dw = fastrnn.rnn_backward(saved, prob["dy"].astype(np.float32), dhn)
    for name, got, want in [("dx", dx, ref["dx"]), ("dh0", dh0[0], ref["dh0"]), ("dc0", dh0[1], ref["dc0"]),
                            *[(n, g, ref[n]) for n, g in zip(("dw_ih", "dw_hh", "db_ih", "db_hh"), dw)]]:
        assert_close(name, got, want, TOL["float32"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("H,copied", [(64, False), (80, True)])
def test_whhT_copy_by_units_only_where_bptt_reads_it(spy, mode, H, copied, monkeypatch):
    """By units, float32: the training forward makes W_hh^T for BPTT only
    where a block of units does not start on a panel's edge (H = 80 cuts
    at 40, inside a panel of 16 or 32 columns; H = 64 at 32, an edge of
    both) or the panels do not cover G·H, else BPTT gets W_hh's transposed
    view, which its panels never read.  The copies counted, results
    against the oracle with every allocation NaN-filled; and a BPTT that
    runs on one thread after such a forward (the threads busy) makes the
    copy itself."""
    if copied and (H // 2) % packed.PANEL == 0:
        pytest.skip("panels of 8 columns (no AVX): every cut of 8 units is on a panel's edge")
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)
    made = []
    real = numba_cpu._transposed
    monkeypatch.setattr(numba_cpu, "_transposed", lambda *a: (made.append(1), real(*a))[1])
    check_backend(mode, "numba", T=6, B=5, I=7, H=H, lengths="random", dtype="float32")
    _assert_threaded(spy, mode)
    assert len(made) == (1 if copied else 0), made
    if copied:
        return
    prob = make_problem(mode, 6, 5, 7, H, lengths="random")
    ref = run(mode, prob, backend="numpy", dtype="float64")
    f32 = lambda a: _cast(a, "float32")  # noqa: E731
    y, hn, saved = fastrnn.rnn_forward(mode, f32(prob["x"]), f32(prob["w"]), f32(prob["h0"]),
                                       prob["lengths"], training=True, backend="numba")
    assert saved.payload["w_hhT"] is None and not made
    monkeypatch.setattr(numba_cpu, "_kernel_form", lambda *a: contextlib.nullcontext((1, False, 1)))
    dx, dh0, dw = fastrnn.rnn_backward(saved, f32(prob["dy"]), f32(prob["dhn"]))
    assert len(made) == 1, "the one-thread BPTT reads W_hh^T: it must make the copy"
    assert_close("dx", dx, ref["dx"], TOL["float32"])
    for name, got in zip(("dw_ih", "dw_hh", "db_ih", "db_hh"), dw):
        assert_close(name, got, ref[name], TOL["float32"])


@pytest.mark.parametrize("mode", MODES)
def test_gemms_after_bptt_on_own_blocks_by_units(spy, mode):
    # the same in the loops by units (parallel.after_loop_grads_par), with
    # padding: x's copy with its padding zeroed goes into gemm_tn
    check_backend(mode, "numba", T=7, B=6, I=40, H=70, dtype="float32")
    check_backend(mode, "numba", T=7, B=6, I=40, H=70, lengths="random", dtype="float32")
    _assert_threaded(spy, mode)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", ["edges", "random"])
@pytest.mark.parametrize("rows_mode", ROWS, indirect=True)
def test_by_rows_lengths_and_reverse(rows_spy, rows_mode, lengths, reverse, dtype):
    mode = rows_mode
    check_backend(mode, "numba", T=9, B=7, I=4, H=27, lengths=lengths, reverse=reverse, dtype=dtype)
    _assert_by_rows(rows_spy, mode)


@pytest.mark.parametrize("rows_mode", ROWS, indirect=True)
def test_by_rows_no_state_no_bias_zero_lengths_poisoned_buffers(rows_spy, rows_mode, monkeypatch):
    mode = rows_mode
    check_backend(mode, "numba", H=21, B=5, h0=False, reverse=True, lengths="edges")
    check_backend(mode, "numba", H=21, B=5, bias=False)
    got, _ = check_backend(mode, "numba", T=4, B=3, H=21, lengths=np.zeros(3, int))
    assert np.all(got["y"] == 0), "y: all-zero lengths give zero output"
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)
    check_backend(mode, "numba", T=6, B=5, H=19, lengths="edges", dtype="float32")
    _assert_by_rows(rows_spy, mode)


def test_by_rows_is_the_default_only_where_w_hh_fits_in_cache(monkeypatch):
    """The form chosen for real shapes: by rows at S2-S4 (W_hh 256 KB to
    4 MB), by units at S5 beyond 4 MB (GRU 12 MB, LSTM 16 MB), for too few
    rows, and while torch runs more than one thread, unless its OpenMP team
    can run the parts."""
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 1)
    f = numba_cpu._by_rows
    f32 = np.dtype(np.float32)
    assert f("lstm", 8, 128, 512, f32, 2) and f("lstm", 32, 256, 1024, f32, 2)
    assert f("lstm", 64, 512, 2048, f32, 2) and f("gru", 64, 512, 1536, f32, 2)
    assert not f("lstm", 32, 1024, 4096, f32, 2) and not f("gru", 32, 1024, 3072, f32, 2)
    assert not f("lstm", 64, 512, 2048, np.dtype(np.float64), 2)     # 8 MB in float64
    assert not f("lstm", 3, 128, 512, f32, 2)
    assert f("gru", 32, 256, 768, f32, 2) and f("rnn_tanh", 32, 256, 256, f32, 2)
    assert f("lstm", 32, 256, 1024, f32, 2) is numba_cpu._in_threads     # fastrnn's own threads
    # torch's workers would spin against fastrnn's: by rows on torch's team
    # where there is one, else by units
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 2)
    team = object()
    monkeypatch.setattr(numba_cpu.torch_team, "runner", lambda: team)
    assert f("lstm", 32, 256, 1024, f32, 2) is team
    assert not f("lstm", 32, 1024, 4096, f32, 2)
    monkeypatch.setattr(numba_cpu.torch_team, "runner", lambda: None)
    assert not f("lstm", 32, 256, 1024, f32, 2)


def test_small_problem_keeps_steps_on_one_thread(monkeypatch):
    """Below PAR_MIN_MACS the threaded kernels run, with the steps unsplit."""
    monkeypatch.setattr(numba_cpu, "PAR_MIN_WORK", 0)
    monkeypatch.setattr(numba_cpu, "TINY_WORK", 0)
    calls = []
    kern = lstm.lstm_forward_par

    def wrapped(*a):
        calls.append(a[-2:])
        return kern(*a)
    monkeypatch.setattr(lstm, "lstm_forward_par", wrapped)
    check_backend("lstm", "numba", T=5, B=2, I=3, H=7, lengths="random")
    assert calls and all(nth >= 2 and parts == 1 for nth, parts in calls), calls


def test_tiny_call_runs_one_thread_loops_with_blas_held(monkeypatch):
    """Between TINY_WORK and PAR_MIN_WORK the one-thread loops run, OpenBLAS
    still at one thread."""
    calls = []
    for name in ("lstm_forward", "lstm_backward"):
        kern = getattr(lstm, name)

        def wrapped(*a, _k=kern, _n=name):
            calls.append((_n, _threads._blas[0]()))
            return _k(*a)
        monkeypatch.setattr(lstm, name, wrapped)
    T, B, I, H = 20, 8, 16, 32
    assert numba_cpu.TINY_WORK <= T * B * 4 * H * (I + H) < numba_cpu.PAR_MIN_WORK
    check_backend("lstm", "numba", T=T, B=B, I=I, H=H)
    assert sorted(c[0] for c in calls) == ["lstm_backward", "lstm_forward", "lstm_forward"], calls
    assert all(c[1] == 1 for c in calls)


def _one_thread_backward_calls(monkeypatch, mode):
    """The one-thread loops for every call (TINY_WORK 0, PAR_MIN_WORK out of
    reach), every allocation NaN-filled, and a list that records, for each
    call of the mode's one-thread BPTT kernel, whether it got x2 None (its
    GEMMs after the loop left to the caller)."""
    monkeypatch.setattr(numba_cpu, "PAR_MIN_WORK", 1 << 62)
    monkeypatch.setattr(numba_cpu, "TINY_WORK", 0)
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)
    mod, prefix = PAR[mode]
    calls = []
    kern = getattr(mod, f"{prefix}_backward")

    def wrapped(*a):
        calls.append(("kernel, x2 None", a[-10] is None))     # x2, 9 arguments before the last
        return kern(*a)
    monkeypatch.setattr(mod, f"{prefix}_backward", wrapped)
    return calls


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B,lengths,reverse", [(1, "full", False), (3, [9, 0, 4], True), (5, "random", False)])
def test_one_thread_loops_with_the_gemms_after_bptt_on_the_threads(mode, B, lengths, reverse, dtype,
                                                                   monkeypatch):
    """Between TINY_WORK and PAR_MIN_WORK the loops run on one thread, and
    from AFTER_LOOP_THREADS_MIN_MACS up their GEMMs after the BPTT loop run
    as a region on the threads (the kernel gets x2 None and skips them).
    Against the oracle with every allocation NaN-filled, and which kernels
    and regions ran, with the bound at 0 and above the call's size."""
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 1)    # fastrnn's own threads
    calls = _one_thread_backward_calls(monkeypatch, mode)
    real = numba_cpu._in_threads

    def spy(fn, nth, *a):
        calls.append((fn.__name__, nth))
        return real(fn, nth, *a)
    monkeypatch.setattr(numba_cpu, "_in_threads", spy)
    kw = dict(T=9, B=B, I=5, H=11, dtype=dtype, lengths=lengths, reverse=reverse)
    monkeypatch.setattr(numba_cpu, "AFTER_LOOP_THREADS_MIN_MACS", 0)
    check_backend(mode, "numba", **kw)
    assert calls == [("kernel, x2 None", True), ("after_loop_part", _threads.available_threads())], calls
    calls.clear()
    monkeypatch.setattr(numba_cpu, "AFTER_LOOP_THREADS_MIN_MACS", 9 * B * 4 * 11 * (2 * 5 + 11) + 1)
    monkeypatch.setattr(numba_cpu, "AFTER_LOOP_OWN_MIN_MACS", 1 << 62)
    check_backend(mode, "numba", **kw)
    assert calls == [("kernel, x2 None", False)], calls


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B,lengths,reverse,H", [(1, "full", False, 11), (3, [9, 0, 4], True, 40),
                                                 (5, "random", False, 33)])
def test_one_thread_loops_with_the_gemms_after_bptt_by_own_blocks(mode, B, lengths, reverse, H, dtype,
                                                                  monkeypatch):
    """Where the one-thread loops' GEMMs after the BPTT loop stay off the
    threads (torch busy, or below AFTER_LOOP_THREADS_MIN_MACS), from
    AFTER_LOOP_OWN_MIN_MACS up they run as the region's function on the
    calling thread, by the own blocks (float32, OWN_AFTER_*); float64 keeps
    them in the kernel (BLAS).  Against the oracle with every allocation
    NaN-filled, and which kernels and functions ran, with the bound at 0
    and above the call's size."""
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 2)    # torch busy: no region on the threads
    monkeypatch.setitem(numba_cpu.OWN_AFTER_MAX_GH, packed._LANES, 768)     # the blocks at any width
    calls = _one_thread_backward_calls(monkeypatch, mode)
    real = numba_cpu._on_this_thread

    def spy(fn, nth, *a):
        calls.append((fn.__name__, a[-1]))     # the region's function, and its `own`
        return real(fn, nth, *a)
    monkeypatch.setattr(numba_cpu, "_on_this_thread", spy)
    kw = dict(T=9, B=B, I=5, H=H, dtype=dtype, lengths=lengths, reverse=reverse)
    monkeypatch.setattr(numba_cpu, "AFTER_LOOP_OWN_MIN_MACS", 0)
    check_backend(mode, "numba", **kw)
    if dtype == "float32":
        assert calls == [("kernel, x2 None", True), ("after_loop_part", True)], calls
    else:
        assert calls == [("kernel, x2 None", False)], calls
    calls.clear()
    G = spec(mode).gates
    monkeypatch.setattr(numba_cpu, "AFTER_LOOP_OWN_MIN_MACS", 9 * B * G * H * (2 * 5 + H) + 1)
    check_backend(mode, "numba", **kw)
    assert calls == [("kernel, x2 None", False)], calls


def test_blas_threads_restored():
    get, set_ = _threads._blas
    before = get()
    try:
        set_(2)
        prob = make_problem("lstm", 4, 64, 8, 128)
        run("lstm", prob, backend="numba", dtype="float32")
        assert get() == 2, "the user's OpenBLAS thread count comes back after a threaded call"
    finally:
        set_(before)


@pytest.fixture(params=["compiled", "ctypes"])
def hold_form(request, monkeypatch):
    """threaded() with the Numba backend's compiled hold (kernels/cpu/
    blasctl.py, installed by the backend's first call) and with its ctypes
    calls (where the backend has not run yet)."""
    numba_cpu._kernels()
    assert _threads._hold is not None and _threads._restore is not None, "the backend installs the compiled hold"
    if request.param == "ctypes":
        monkeypatch.setattr(_threads, "_hold", None)
        monkeypatch.setattr(_threads, "_restore", None)
    return request.param


def test_threaded_context_restores_blas_and_lock_on_error(hold_form):
    """threaded() (a class since session 21, not a generator): the user's
    OpenBLAS count and the lock come back when the body raises."""
    get, set_ = _threads._blas
    before = get()
    try:
        set_(2)
        with pytest.raises(RuntimeError, match="inside"):
            with _threads.threaded() as nth:
                assert nth >= 2 and get() == 1, "OpenBLAS runs one thread inside"
                assert _threads._lock.locked()
                raise RuntimeError("inside")
        assert get() == 2 and not _threads._lock.locked()
        with _threads.threaded() as nth:            # the lock is free again
            with _threads.threaded() as inner:      # a second caller meanwhile: one thread
                assert inner == 1
            assert nth >= 2 and _threads._lock.locked()
        assert not _threads._lock.locked()
        set_(1)                                     # already one: stays one
        with _threads.threaded() as nth:
            assert nth >= 2 and get() == 1
        assert get() == 1
    finally:
        set_(before)


def test_threaded_with_one_numba_thread_changes_nothing(hold_form):
    get, set_ = _threads._blas
    before = get()
    try:
        set_(2)
        with numba_threads(1):
            with _threads.threaded() as nth:
                assert nth == 1 and get() == 2, "one Numba thread: OpenBLAS left as it is"
                assert not _threads._lock.locked()
        with _threads.threaded() as nth:
            assert nth >= 2 and get() == 1
        assert get() == 2
    finally:
        set_(before)


def test_compiled_hold_before_install_runs_the_stand_ins():
    # a fresh process: the compiled hold called before install finds the
    # stand-ins (count 1, set a no-op), not a missing symbol (which would
    # crash the process), and install then refuses
    assert_child_survives("from fastrnn._kernels.cpu import blasctl\n"
                          "from fastrnn import _threads\n"
                          "n, saved = blasctl._hold()\n"
                          "assert saved == (1 if n >= 2 else 0), (n, saved)\n"
                          "blasctl._restore(3)\n"
                          "try:\n"
                          "    blasctl.install(*_threads._blas_control())\n"
                          "except RuntimeError as e:\n"
                          "    assert 'already ran' in str(e), e\n"
                          "else:\n"
                          "    raise SystemExit('install after use did not raise')\n"
                          "print('alive')\n")


def test_compiled_hold_is_installed_once():
    from fastrnn._kernels.cpu import blasctl
    numba_cpu._kernels()
    get, set_ = _threads._blas
    assert blasctl.install(get, set_) == (_threads._hold, _threads._restore)   # the same functions: no-op
    with pytest.raises(RuntimeError, match="already installed"):
        blasctl.install(set_, get)


def test_thread_count_follows_numba_setting():
    """The cached path to Numba's count reads the calling thread's setting,
    as numba.get_num_threads does."""
    import numba
    old = numba.get_num_threads()
    assert _threads.available_threads() == old
    with numba_threads(1):
        assert _threads.available_threads() == 1
        assert "Numba has one thread" in _threads.why_single()
    assert _threads.available_threads() == old


def test_single_numba_thread_runs_one_thread_kernels(spy):
    with numba_threads(1):
        check_backend("gru", "numba", H=21)
    assert spy == [], "numba.set_num_threads(1) must keep fastrnn on one thread"


def test_concurrent_calls_from_python_threads(monkeypatch):
    """Two Python threads in the kernels at once: one runs threaded, the other
    on one thread (it finds the threads busy); both give the right answer."""
    _force_split(monkeypatch)
    probs = [make_problem(m, 30, 16, 8, 64, lengths="random", seed=i) for i, m in enumerate(["lstm", "gru"])]
    modes = ["lstm", "gru"]
    expect = [run(m, p, backend="numba", dtype="float64") for m, p in zip(modes, probs)]
    results, errors = [None, None], []

    def work(i):
        try:
            for _ in range(5):
                results[i] = run(modes[i], probs[i], backend="numba", dtype="float64")
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)
    ths = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert not errors, errors
    for got, ref in zip(results, expect):
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-12, atol=1e-12, err_msg=name)
    assert not _threads._lock.locked()


def _child(q):
    try:
        prob = make_problem("lstm", 5, 40, 8, 64)
        out = run("lstm", prob, backend="numba", dtype="float64")
        q.put(("ok", _threads.why_single(), float(np.abs(out["y"]).sum())))
    except Exception as exc:   # pragma: no cover - reported by the parent
        q.put(("error", repr(exc), 0.0))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_after_threaded_kernels(monkeypatch):
    """GNU OpenMP cannot run in a child forked after it started; Numba then
    aborts the child.  fastrnn's child runs the one-thread kernels instead."""
    _force_split(monkeypatch)
    prob = make_problem("lstm", 5, 40, 8, 64)
    ref = run("lstm", prob, backend="numba", dtype="float64")     # starts the threads here
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(120)
    assert p.exitcode == 0, f"forked child died (exit code {p.exitcode})"
    status, why, total = q.get(timeout=5)
    assert status == "ok", why
    assert "forked" in why
    assert total == pytest.approx(float(np.abs(ref["y"]).sum()), rel=1e-12)


@pytest.mark.parametrize("bwd_in_forward", [True, False])
@pytest.mark.parametrize("rows_mode", ROWS, indirect=True)
def test_weights_packed_as_a_region_on_the_threads(rows_spy, rows_mode, bwd_in_forward, monkeypatch):
    # by rows, panels of PACK_IN_PARTS_MIN_BYTES or more are packed by a
    # region of their own, each thread a share of the panels (here every
    # size, the bound at 0; H = 40 leaves a column remainder past the
    # panels, B = 5 unequal rows).  Against the oracle, every allocation
    # NaN-filled, so a panel left unpacked would show.
    # The fused LSTM's training forward packs BPTT's panels too
    # (PACK_BWD_IN_FORWARD), and its BPTT then packs none.
    mode = rows_mode
    monkeypatch.setattr(numba_cpu, "PACK_IN_PARTS_MIN_BYTES", 0)
    monkeypatch.setattr(numba_cpu, "PACK_BWD_IN_FORWARD", bwd_in_forward)
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)
    regions = []
    run_parts = numba_cpu._in_threads

    def spy(fn, nth, *args):
        regions.append((fn.__name__, nth))
        return run_parts(fn, nth, *args)
    monkeypatch.setattr(numba_cpu, "_in_threads", spy)
    for H in (32, 40):
        regions.clear()
        check_backend(mode, "numba", T=6, B=5, I=9, H=H, dtype="float32", lengths="random")
        packs = [r for r in regions if r[0].startswith("pack_")]
        # the training forward, its BPTT (W_hh's column panels) and the
        # inference forward
        assert all(r[1] >= 2 for r in packs), regions
        if mode == "lstm" and numba_cpu.FUSED_STEP_MAX_BYTES >= 0 and bwd_in_forward:
            assert [r[0] for r in packs] == ["pack_rows2_cols_part", "pack_rows2_part"], regions
        else:
            assert len(packs) == 3 and packs[1][0] == "pack_cols_part", regions
    _assert_by_rows(rows_spy, mode)


def test_gemms_after_bptt_on_own_blocks_by_vector_width(monkeypatch):
    # The bound on the own blocks after BPTT follows the blocks' vector width
    # (numba_cpu.OWN_AFTER_MAX_GH): the AVX-512 bound at 16 lanes, a lower
    # one at 8 (AVX2, where OpenBLAS was faster above it), none at a
    # width without an entry; float64 and wide inputs always on BLAS.
    f32 = np.dtype(np.float32)
    monkeypatch.setattr(packed, "_LANES", 16)
    assert numba_cpu._own_after(512, 128, 128, f32)            # LSTM S2
    assert not numba_cpu._own_after(1024, 128, 256, f32)       # LSTM S3
    assert not numba_cpu._own_after(512, 128, 128, np.dtype(np.float64))
    assert not numba_cpu._own_after(512, 512, 128, f32)
    monkeypatch.setattr(packed, "_LANES", 8)
    assert numba_cpu._own_after(128, 128, 128, f32)            # rnn_tanh S2
    assert not numba_cpu._own_after(512, 128, 128, f32)
    monkeypatch.setattr(packed, "_LANES", 4)
    assert not numba_cpu._own_after(64, 64, 64, f32)


def test_cache_sizes_from_sysfs(tmp_path):
    # the L2's size sizes the LSTM's fused step (numba_cpu.FUSED_STEP_MAX_BYTES);
    # read from sysfs, skipping instruction caches and other levels, with the
    # default where nothing readable is there
    assert _threads.parse_cache_size("512K\n") == 512 << 10
    assert _threads.parse_cache_size("1M") == 1 << 20
    assert _threads.parse_cache_size("65536") == 65536
    for bad in ("", "K", "12Q", "-1K", "0K", "big"):
        assert _threads.parse_cache_size(bad) is None, bad
    for name, level, kind, size in [("index0", 1, "Data", "32K"), ("index1", 1, "Instruction", "48K"),
                                    ("index2", 2, "Unified", "512K"), ("index3", 3, "Unified", "32768K")]:
        d = tmp_path / name
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert _threads.cache_bytes(1, 0, root=str(tmp_path)) == 32 << 10
    assert _threads.cache_bytes(2, 0, root=str(tmp_path)) == 512 << 10
    assert _threads.cache_bytes(3, 0, root=str(tmp_path)) == 32 << 20
    assert _threads.cache_bytes(4, 123, root=str(tmp_path)) == 123
    (tmp_path / "index2" / "size").write_text("garbage\n")
    assert _threads.cache_bytes(2, 77, root=str(tmp_path)) == 77
    assert _threads.cache_bytes(2, 77, root=str(tmp_path / "missing")) == 77
    assert numba_cpu.FUSED_STEP_MAX_BYTES == min(8 * _threads.cache_bytes(2, 1 << 20), 4 << 20)
