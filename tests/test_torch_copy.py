"""Big non-contiguous inputs copied by torch where it is imported
(functional._torch_copy): the copy must equal NumPy's, fall back to NumPy
where torch cannot take the array or must not run (a forked child, no
torch), and whole calls on batch-major views must match the float64 oracle."""
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import functional
from fastrnn._backends import bufpool, torch_team

from .helpers import arrays, check_backend

torch = pytest.importorskip("torch", reason="the torch copy needs PyTorch (pip install fastrnn[torch])")


@pytest.fixture
def torch_copies(monkeypatch):
    """Every copy of at least 1 KB goes through _contiguous's cache path;
    each _torch_copy call recorded with what it returned."""
    monkeypatch.setattr(bufpool, "MIN_BYTES", 1024)
    calls = []
    real = functional._torch_copy

    def spy(out, a):
        done = real(out, a)
        calls.append(done)
        return done
    monkeypatch.setattr(functional, "_torch_copy", spy)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_view_copied_by_torch(torch_copies, dtype):
    a = np.random.default_rng(0).standard_normal((16, 33, 40)).astype(dtype)
    view = a.transpose(1, 0, 2)                       # (B, T, I) seen time-major
    out = functional._contiguous(view, np)
    assert torch_copies == [True]
    assert out.flags.c_contiguous and out.dtype == dtype and out.shape == view.shape
    assert np.array_equal(out, np.ascontiguousarray(view))
    assert not np.shares_memory(out, a)


def test_negative_strides_fall_back_to_numpy(torch_copies):
    a = np.random.default_rng(1).standard_normal((20, 8, 30)).astype(np.float32)
    view = a[::-1]                                    # torch.from_numpy refuses these
    out = functional._contiguous(view, np)
    assert torch_copies == [False]
    assert np.array_equal(out, np.ascontiguousarray(view))


def test_not_in_a_forked_child(torch_copies, monkeypatch):
    monkeypatch.setattr(torch_team, "_FORKED", True)
    view = np.ones((30, 10, 8), np.float32).transpose(1, 0, 2)
    out = functional._contiguous(view, np)
    assert torch_copies == [False] and np.array_equal(out, np.ones((10, 30, 8), np.float32))


def test_without_torch_imported(torch_copies, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")
    view = np.arange(2400, dtype=np.float32).reshape(10, 30, 8).transpose(1, 0, 2)
    out = functional._contiguous(view, np)
    assert torch_copies == [False] and np.array_equal(out, np.ascontiguousarray(view))


@pytest.mark.parametrize("mode", fastrnn.MODES)
def test_batch_major_views_through_whole_calls(torch_copies, mode):
    """x and dy handed over as time-major views of batch-major arrays (what
    fastrnn.torch does with batch_first): every output and gradient is
    bit for bit the call's on C-contiguous copies of the same values, and
    both copies went through torch."""
    B, T, I, H = 5, 9, 7, 12
    rng = np.random.default_rng(2)
    G = {"lstm": 4, "gru": 3}.get(mode, 1)
    w = tuple(rng.standard_normal(s).astype(np.float32) * 0.3
              for s in ((G * H, I), (G * H, H), (G * H,), (G * H,)))
    xb = rng.standard_normal((B, T, I)).astype(np.float32)
    dyb = rng.standard_normal((B, T, H)).astype(np.float32)
    res = []
    for x, dy in ((xb.transpose(1, 0, 2), dyb.transpose(1, 0, 2)),
                  (np.ascontiguousarray(xb.transpose(1, 0, 2)), np.ascontiguousarray(dyb.transpose(1, 0, 2)))):
        y, hn, saved = fastrnn.rnn_forward(mode, x, w, training=True, backend="numba")
        dx, dh0, dw = fastrnn.rnn_backward(saved, dy)
        res.append([y, *arrays(hn), dx, *arrays(dh0), *dw])
    assert torch_copies.count(True) == 2
    for got, want in zip(*res):
        assert np.array_equal(got, want)
