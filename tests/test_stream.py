"""Streaming stores for the LSTM's and GRU's saved activations and the
LSTM BPTT's gate gradients (kernels/cpu/stream.py, numba_cpu.STREAM_SAVES_*,
STREAM_DG): the rows they write are the rows plain stores
write, whether a row can be streamed (on a 64-byte line, whole lines of
float32) or not, and whole calls give the float64 oracle's results and the
same bits as without them."""
import numpy as np
import pytest
from numba import njit

from fastrnn import _threads
from fastrnn._backends import bufpool, numba_cpu
from fastrnn._kernels.cpu import stream

from .helpers import check_backend, force_by_rows, make_problem, run, torch_threads


@njit(cache=False)
def _put(a, t, b, src, j, k0, w):
    stream.put_row(a, t, b, src, j, k0, w)
    stream.fence()


def _aligned_nan(shape, dtype=float):
    a = bufpool.aligned_empty(shape, dtype)
    a.fill(np.nan)
    return a


def _misaligned_nan(shape, dtype=float):
    """float-aligned, but 16 bytes past a 64-byte line: no row streams."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = bufpool.aligned_empty(n * dtype.itemsize + 64, np.uint8)
    a = raw[16:16 + n * dtype.itemsize].view(dtype).reshape(shape)
    a.fill(np.nan)
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alloc", [_aligned_nan, _misaligned_nan])
@pytest.mark.parametrize("w,k0", [(64, 0), (48, 16), (16, 3), (5, 2), (0, 0)])
def test_put_row_writes_the_row_and_nothing_else(dtype, alloc, w, k0):
    rng = np.random.default_rng(w + k0)
    a = alloc((3, 4, 64), dtype)
    src = rng.standard_normal((2, 80)).astype(dtype)
    _put(a, 1, 2, src, 1, k0, w)
    np.testing.assert_array_equal(a[1, 2, :w], src[1, k0:k0 + w])
    assert np.isnan(a[1, 2, w:]).all() and np.isnan(a[0]).all() and np.isnan(a[2]).all()
    assert np.isnan(a[1, [0, 1, 3]]).all()


@pytest.fixture(params=["own", "torch"])
def after(request, monkeypatch):
    """The GEMMs after BPTT in fastrnn's region, or on torch's BLAS at two
    threads (the parts then sum the bias gradients as they go: with dG
    streamed, from their scratch rows, parallel.bias_sums_buf)."""
    if request.param == "own":
        yield request.param
        return
    pytest.importorskip("torch", reason="the torch BLAS path needs PyTorch")
    if _threads.available_threads() < 2:
        pytest.skip(f"threaded kernels cannot run here: {_threads.why_single()}")
    monkeypatch.setattr(numba_cpu, "TORCH_AFTER_MIN_MACS", 0)
    with torch_threads(2):
        yield request.param


@pytest.mark.parametrize("mode,fused", [("lstm", True), ("lstm", False), ("gru", False)])
@pytest.mark.parametrize("I,H", [(16, 32), (40, 24)])
def test_streamed_saves_match_the_oracle_and_plain_stores(monkeypatch, after, mode, fused, I, H):
    # by rows at any size, streaming from the first byte (the forward's
    # saves and the LSTM BPTT's dG); (16, 32): every saved row on whole
    # lines; (40, 24): the LSTM's gates' rows only (the cell states'
    # 96-byte rows take the plain stores), none of the GRU's
    force_by_rows(monkeypatch)
    monkeypatch.setattr(numba_cpu, "FUSED_GRADS_MAX_ROWS", 0)
    if not fused:
        monkeypatch.setattr(numba_cpu, "FUSED_STEP_MAX_BYTES", 0)
    monkeypatch.setattr(numba_cpu, "STREAM_SAVES_MIN_BYTES", 0)
    seen = []

    def aligned(shape, dtype=float):
        a = _aligned_nan(shape, dtype)
        seen.append(a.ctypes.data % 64)
        return a
    monkeypatch.setattr(numba_cpu, "_empty", aligned)
    for lengths in ("full", "random"):
        for reverse in (False, True):
            check_backend(mode, "numba", T=7, B=6, I=I, H=H, dtype="float32", lengths=lengths,
                          reverse=reverse, seed=int(reverse))
    assert seen and set(seen) == {0}
    prob = make_problem(mode, 7, 6, I, H, lengths="random", seed=3)

    def call():
        return run(mode, prob, backend="numba", dtype="float32")
    streamed = call()
    for name, flag in (("STREAM_SAVES", False), ("STREAM_DG", True), ("STREAM_SAVES", True),
                       ("STREAM_DG", False)):
        monkeypatch.setattr(numba_cpu, name, flag)
        half = call()       # one of the two streamed, the other not
        for key in half:
            np.testing.assert_array_equal(half[key], streamed[key], err_msg=f"{name}={flag}: {key}")
    monkeypatch.setattr(numba_cpu, "STREAM_SAVES", False)
    plain = call()
    monkeypatch.setattr(numba_cpu, "STREAM_SAVES", True)
    monkeypatch.setattr(numba_cpu, "STREAM_DG", True)
    monkeypatch.setattr(numba_cpu, "_empty", _misaligned_nan)       # every row on plain stores
    unaligned = call()
    for name in plain:
        np.testing.assert_array_equal(streamed[name], plain[name], err_msg=name)
        np.testing.assert_array_equal(unaligned[name], plain[name], err_msg=name)


def test_streaming_bound():
    # small calls keep their saves in cache for BPTT (S1 lost 10 % streamed)
    assert numba_cpu.STREAM_SAVES_MIN_BYTES >= 1 << 20
    B, T, H = 1, 100, 64
    assert T * B * 4 * H * 4 < numba_cpu.STREAM_SAVES_MIN_BYTES
