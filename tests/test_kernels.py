"""Every CPU backend against the float64 oracle: outputs, final states and
every gradient, asserted by name (see helpers.check_backend)."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _threads
from fastrnn._backends import bufpool, numba_cpu

from .helpers import (assert_close, check_backend, force_by_rows, make_problem, nan_empty, one_numba_thread,
                      poison_free_cached_buffers, run)

MODES = fastrnn.MODES
BACKENDS = ["numba", "numpy"]


@pytest.fixture(autouse=True, params=["threaded by units", "threaded by rows", "one-thread kernels",
                                      "one-thread by rows"])
def kernel_form(request, monkeypatch):
    """Every test here runs every form of the Numba loops: the threaded ones
    (the default where threads can run), with the time loop split by hidden
    units (per step; tests/test_threads.py also forces every step split) or
    by batch rows (each thread its own rows; the modes in ROWS_MODES, where
    a call has at least two rows), and the one-thread ones (forked children,
    one Numba thread, a BLAS fastrnn cannot set): the one-thread loops, or
    the loops by rows as one part on the calling thread (big calls,
    numba_cpu.ONE_THREAD_ROWS_*), here at every size and from one row."""
    if request.param.startswith("one-thread"):
        one_numba_thread(request)
        if request.param == "one-thread kernels":
            monkeypatch.setattr(numba_cpu, "ONE_THREAD_ROWS", False)
        else:
            force_by_rows(monkeypatch)
            monkeypatch.setattr(numba_cpu, "ONE_THREAD_ROWS_MIN_WORK", 0)
    elif _threads.available_threads() < 2:
        pytest.skip(f"threaded kernels cannot run here: {_threads.why_single()}")
    else:
        monkeypatch.setattr(numba_cpu, "PAR_MIN_WORK", 0)    # the sizes here are all small
        monkeypatch.setattr(numba_cpu, "TINY_WORK", 0)
        if request.param == "threaded by units":
            monkeypatch.setattr(numba_cpu, "ROWS_MODES", ())
        else:
            force_by_rows(monkeypatch)
            monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 1)   # by rows even with torch imported
    return request.param


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 3, 5), (7, 3, 5, 13), (63, 3, 4, 9)])
def test_odd_sizes(backend, mode, dtype, T, B, I, H):
    check_backend(mode, backend, T=T, B=B, I=I, H=H, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B", [1, 2])
def test_one_or_two_rows(mode, B, dtype):
    # 1-2 rows take the axpy form of the per-step GEMM (gemm.AXPY_*): in
    # training always, in inference from AXPY_MIN_STEPS steps; ragged lengths
    # give steps with one row left of two
    from fastrnn._kernels.cpu import gemm
    T = gemm.AXPY_MIN_STEPS + 3
    check_backend(mode, "numba", T=T, B=B, I=6, H=19, dtype=dtype)
    check_backend(mode, "numba", T=T, B=B, I=6, H=19, dtype=dtype, lengths=[T, 5][:B], reverse=True)


def _by_rows(kernel_form, dtype):
    """Whether the loops by rows run in this form: always where threaded by
    rows; on one thread for float32 only (numba_cpu.ONE_THREAD_ROWS_*)."""
    return kernel_form == "threaded by rows" or (kernel_form == "one-thread by rows" and dtype == "float32")


def _spy_regions(monkeypatch):
    """The names of the parts each by-rows region runs, in order, as a list
    that fills while the test runs."""
    regions = []
    real_rows_form = numba_cpu._rows_form

    def spy_rows_form(*a):
        run = real_rows_form(*a)
        if not run:
            return run

        def wrapped(fn, nth, *args):
            regions.append(fn.__name__)
            return run(fn, nth, *args)
        return wrapped
    monkeypatch.setattr(numba_cpu, "_rows_form", spy_rows_form)
    return regions


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B,lengths", [(4, "full"), (6, [9, 9, 7, 4, 4, 1]), (4, [2, 9, 9, 5]), (5, "full")])
def test_projection_inside_the_parts(mode, B, lengths, dtype, kernel_form, monkeypatch):
    # by rows, each part projects its own rows (numba_cpu.FUSED_PROJECTION_*,
    # which these sizes are under): one strided GEMM where the rows keep
    # their order (no lengths, or lengths already sorted) and B is a
    # multiple of the threads, else one GEMM per row over its valid steps.
    # Against the oracle in each case, and that no projection region ran;
    # with the limit at -1 the separate region runs instead.  (The LSTM's
    # by-rows forward takes the projection into its steps instead, unless
    # FUSED_STEP_MAX_BYTES says no: test_lstm_projection_in_the_step.)
    monkeypatch.setattr(numba_cpu, "FUSED_STEP_MAX_BYTES", -1)
    regions = _spy_regions(monkeypatch)
    check_backend(mode, "numba", T=9, B=B, I=5, H=11, dtype=dtype, lengths=lengths)
    if _by_rows(kernel_form, dtype):
        assert B <= numba_cpu.FUSED_PROJECTION_MAX_ROWS and 9 * B * 4 * 11 * 5 <= numba_cpu.FUSED_PROJECTION_MAX_MACS
        assert "project_part" not in regions and regions, f"a projection region ran: {regions}"
    regions.clear()
    monkeypatch.setattr(numba_cpu, "FUSED_PROJECTION_MAX_MACS", -1)
    check_backend(mode, "numba", T=9, B=B, I=5, H=11, dtype=dtype, lengths=lengths)
    if _by_rows(kernel_form, dtype):
        assert "project_part" in regions, f"no projection region ran: {regions}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("B,lengths,reverse,h0", [(4, "full", False, True), (5, "full", True, False),
                                                  (6, [9, 9, 7, 4, 4, 1], False, True),
                                                  (7, [2, 9, 0, 5, 9, 1, 3], True, True), (3, "edges", False, False)])
def test_lstm_projection_in_the_step(B, lengths, reverse, h0, dtype, kernel_form, monkeypatch):
    # by rows, the LSTM's forward folds the input projection into each
    # step's product ([x_t | h] @ [W_ih | W_hh].T, numba_cpu.FUSED_STEP_*):
    # no projection array, no projection region.  Against the oracle (y,
    # the final state, every gradient) with every allocation NaN-filled,
    # and which forward part ran; at a limit of -1 bytes the part with the
    # projection before its loop runs instead.
    regions = _spy_regions(monkeypatch)
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)
    kw = dict(T=9, B=B, I=5, H=11, dtype=dtype, lengths=lengths, reverse=reverse, h0=h0)
    check_backend("lstm", "numba", **kw)
    if _by_rows(kernel_form, dtype):
        assert regions[0] == "lstm_forward_fused_rows_part" and "project_part" not in regions, regions
    regions.clear()
    monkeypatch.setattr(numba_cpu, "FUSED_STEP_MAX_BYTES", -1)
    check_backend("lstm", "numba", **kw)
    if _by_rows(kernel_form, dtype):
        assert "lstm_forward_rows_part" in regions and "lstm_forward_fused_rows_part" not in regions, regions


@pytest.mark.parametrize("H", [8, 16, 11])
@pytest.mark.parametrize("B,lengths,reverse", [(4, "full", False), (7, [2, 9, 0, 5, 9, 1, 3], True)])
def test_lstm_step_panels_from_the_two_weights(H, B, lengths, reverse, kernel_form, monkeypatch):
    # float32 with 4H a multiple of the panel width (H = 8, 16): the fused
    # step's panels are packed from W_ih and W_hh (packed.pack_rows2_part) and
    # its product runs without a [W_ih | W_hh] copy; H = 11 makes the copy.
    # Every allocation NaN-filled, against the oracle.
    # (spied on where the backend hands them out: a Python wrapper in
    # packed's globals would be what Numba compiles pack_rows2_cols_part
    # against, were that not yet compiled, and the call fails to type)
    from fastrnn._kernels.cpu import packed
    packs = []
    real = numba_cpu._pack
    two = ("pack_rows2_part", "pack_rows2_cols_part")
    monkeypatch.setattr(numba_cpu, "_pack",
                        lambda part, *a: (part.__name__ in two and packs.append(part)) or real(part, *a))
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)
    regions = _spy_regions(monkeypatch)
    check_backend("lstm", "numba", T=9, B=B, I=5, H=H, dtype="float32", lengths=lengths, reverse=reverse)
    if _by_rows(kernel_form, "float32"):
        assert regions[0] == "lstm_forward_fused_rows_part", regions
        assert bool(packs) == (4 * H % packed.PANEL == 0), (H, len(packs))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B,lengths,reverse", [(6, [9, 9, 7, 4, 4, 1], False), (4, [2, 9, 0, 5], True),
                                               (5, "random", False), (4, "full", False)])
def test_gradients_inside_the_bptt_parts(mode, B, lengths, reverse, dtype, kernel_form, monkeypatch):
    # by rows with padding, each BPTT part computes its own rows' share of
    # dx, dW and the bias gradients over their valid steps
    # (numba_cpu.FUSED_GRADS_*, which these sizes are under) and no region
    # runs after the parts; without padding, or with the limit at 0 rows,
    # the region runs (and x's padding is zeroed for it).  Against the
    # oracle each time, every array the call allocates NaN-filled.
    regions = _spy_regions(monkeypatch)
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)
    padded = lengths != "full"
    check_backend(mode, "numba", T=9, B=B, I=5, H=11, dtype=dtype, lengths=lengths, reverse=reverse)
    if _by_rows(kernel_form, dtype):
        assert any(r.endswith("backward_rows_part") for r in regions), regions
        # (after_loop_part, or the LSTM's after_loop_part_cat: numba_cpu.SAVE_XH)
        after = any(r.startswith("after_loop_part") for r in regions)
        assert after != padded, f"padded={padded}, regions: {regions}"
    regions.clear()
    monkeypatch.setattr(numba_cpu, "FUSED_GRADS_MAX_ROWS", 0)
    check_backend(mode, "numba", T=9, B=B, I=5, H=11, dtype=dtype, lengths=lengths, reverse=reverse)
    if _by_rows(kernel_form, dtype):
        assert any(r.startswith("after_loop_part") for r in regions), f"no region after the BPTT parts: {regions}"


@pytest.mark.parametrize("mode", MODES)
def test_tiled_transpose_path(mode, monkeypatch):
    # big calls copy W_hh^T with the tiled kernel into a cached buffer (small
    # ones with NumPy): force that path at a small size, remainders included
    monkeypatch.setattr(numba_cpu, "TRANSPOSE_KERNEL_MIN_BYTES", 0)
    check_backend(mode, "numba", T=6, B=3, I=5, H=11, dtype="float32", lengths="random")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", ["edges", "random"])
@pytest.mark.parametrize("mode", MODES)
def test_lengths_and_reverse(mode, lengths, reverse, dtype):
    check_backend(mode, "numba", T=9, B=5, I=4, H=11, lengths=lengths, reverse=reverse, dtype=dtype)


@pytest.mark.parametrize("mode", MODES)
def test_all_lengths_zero(mode):
    got, _ = check_backend(mode, "numba", T=4, B=3, lengths=np.zeros(3, int))
    assert np.all(got["y"] == 0), "y: all-zero lengths give zero output"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reverse", [False, True])
def test_no_initial_state(mode, reverse):
    check_backend(mode, "numba", h0=False, reverse=reverse, lengths="edges")


@pytest.mark.parametrize("mode", MODES)
def test_no_bias(mode):
    check_backend(mode, "numba", bias=False)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_saturating_inputs(mode, dtype):
    # pre-activations far beyond the rational tanh's clamp (|a| >> 7.9)
    check_backend(mode, "numba", x_scale=30.0, scale=2.0, dtype=dtype, lengths="random")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_nan_poisoned_buffers(mode, dtype, monkeypatch):
    """Every output and saved buffer is allocated NaN-filled: an element the
    kernels forget to write shows up as NaN (check_backend asserts finite)."""
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)
    check_backend(mode, "numba", T=6, B=4, lengths="edges", dtype=dtype)
    check_backend(mode, "numba", T=6, B=4, lengths="edges", reverse=True, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_reused_cached_buffers_are_written_in_full(mode, dtype, monkeypatch):
    """The buffer cache (bufpool.py) hands out memory of earlier calls: every
    array goes through it here, the free ones are NaN-filled between calls,
    and the second and third calls, which reuse them, must match the oracle."""
    monkeypatch.setattr(bufpool, "MIN_BYTES", 0)
    monkeypatch.setattr(bufpool, "CACHE", bufpool.BufferCache(1 << 30))
    monkeypatch.setattr(numba_cpu, "_empty", bufpool.CACHE.empty)
    check_backend(mode, "numba", T=6, B=4, lengths="edges", dtype=dtype)
    for reverse in (False, True):
        assert poison_free_cached_buffers() > 0
        hits = bufpool.CACHE.hits
        check_backend(mode, "numba", T=6, B=4, lengths="edges", reverse=reverse, dtype=dtype)
        assert bufpool.CACHE.hits > hits, "the call reused no cached buffer"


@pytest.mark.parametrize("mode", MODES)
def test_layouts_give_same_result(mode):
    """C-, F- and non-contiguous inputs all give the C-contiguous result."""
    prob = make_problem(mode, 6, 3, 5, 7, lengths="random")
    base = run(mode, prob, backend="numba")
    odd = dict(prob)
    odd["x"] = np.asfortranarray(prob["x"])
    odd["w"] = [np.asfortranarray(w) for w in prob["w"][:2]] + [
        np.repeat(b, 2)[::2] for b in prob["w"][2:]]           # strided views
    big = np.zeros((3, 2 * 5, 7 * 2))
    odd["dy"] = prob["dy"]
    h0 = prob["h0"]
    if isinstance(h0, tuple):
        odd["h0"] = (np.asfortranarray(h0[0]), h0[1][:, ::-1][:, ::-1])
    else:
        odd["h0"] = np.asfortranarray(h0)
    del big
    other = run(mode, odd, backend="numba")
    for name in base:
        np.testing.assert_array_equal(other[name], base[name], err_msg=name)


@pytest.mark.parametrize("mode", MODES)
def test_nan_in_padding_does_not_leak(mode):
    """Values in x beyond each sequence's length are ignored, even NaN."""
    prob = make_problem(mode, 6, 3, 4, 5, lengths=np.array([6, 2, 0]))
    clean = run(mode, prob, backend="numba")
    dirty = dict(prob)
    x = prob["x"].copy()
    x[2:, 1] = np.nan
    x[:, 2] = np.inf
    dirty["x"] = x
    got = run(mode, dirty, backend="numba")
    for name in clean:
        assert_close(name, got[name], clean[name], 1e-12)


def test_nan_input_propagates():
    """A NaN inside a valid step must come out as NaN, not be squashed to +-1."""
    prob = make_problem("lstm", 3, 2, 4, 5)
    x = prob["x"].astype(np.float32)
    x[1, 0, 0] = np.nan
    w = [a.astype(np.float32) for a in prob["w"]]
    y, _, _ = fastrnn.rnn_forward("lstm", x, w, backend="numba")
    assert np.isnan(y[1:, 0]).all(), "y: NaN in x must propagate to later steps of its row"
    assert np.isfinite(y[:, 1]).all(), "y: other rows must stay finite"


def test_backward_twice_gives_same_gradients():
    prob = make_problem("gru", 5, 3, 4, 6, lengths="random")
    y, hn, saved = fastrnn.rnn_forward("gru", prob["x"], prob["w"], prob["h0"], prob["lengths"],
                                       training=True, backend="numba")
    g1 = fastrnn.rnn_backward(saved, prob["dy"], prob["dhn"])
    g2 = fastrnn.rnn_backward(saved, prob["dy"], prob["dhn"])
    np.testing.assert_array_equal(g1[0], g2[0], err_msg="dx")
    for a, b, name in zip(g1[2], g2[2], ("dw_ih", "dw_hh", "db_ih", "db_hh")):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_inputs_not_modified():
    prob = make_problem("lstm", 5, 3, 4, 6, lengths="random")
    copies = [prob["x"].copy()] + [w.copy() for w in prob["w"]] + [h.copy() for h in prob["h0"]]
    run("lstm", prob, backend="numba")
    for a, b in zip([prob["x"]] + prob["w"] + list(prob["h0"]), copies):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_recurrent_gemm_both_paths(mode, dtype):
    # B = 20 > gemm.OWN_MAX_ROWS with B*G*H*H > gemm.OWN_MAX_MACS: the first
    # steps go to BLAS; random lengths shrink the active rows below the limits
    # so later steps use the own kernel.  H = 67 leaves remainders in its 4x3
    # blocking (G*H = 67, 201, 268).
    check_backend(mode, "numba", T=6, B=20, I=10, H=67 * 8 if mode.startswith("rnn") else 67 * 4,
                  lengths="random", dtype=dtype, scale=0.1)
