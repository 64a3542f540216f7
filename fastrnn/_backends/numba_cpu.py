"""The Numba CPU backend: fused time loops from fastrnn._kernels.cpu.

Per call, one compiled call each way.  Forward: one GEMM for the input
projection of all T*B rows, then the time loop (per step: one recurrent GEMM for
all gates of the rows still running, then one fused pointwise pass).
Backward: the time loop (fused pointwise pass, then dh = dG @ W_hh), then
dx, dW_ih, dW_hh as big GEMMs over all T*B rows and the bias gradients as
column sums.  The big GEMMs go through the BLAS Numba links (SciPy's
OpenBLAS); the per-step recurrent GEMM is fastrnn's own (kernels/cpu/gemm.py:
no per-step packing of W_hh) where it beats OpenBLAS, single-threaded (the
docstring there says why), and OpenBLAS above that.

Variable lengths: rows are sorted by length (longest first) so that the rows
still running at step t are a prefix of the working state; the recurrent GEMM
then only touches them, and padding costs nothing.
"""
from __future__ import annotations

import numpy as np

from ..cells import MODES

# Allocation of every array the kernels must write in full (outputs and
# saved buffers).  Tests replace it with a NaN-filling allocator to prove no
# element is left unwritten.
_empty = np.empty


def _schedule(lengths, T, B):
    """(perm, nb, ident): sorted-row order, rows active per step, and whether
    the order is the identity."""
    if lengths is None:
        return np.arange(B, dtype=np.int64), np.full(T, B, dtype=np.int64), True
    perm = np.argsort(-lengths, kind="stable").astype(np.int64)
    sorted_desc = lengths[perm]
    # rows active at step t: how many lengths exceed t
    nb = np.searchsorted(-sorted_desc, -np.arange(T), side="left").astype(np.int64)
    ident = bool(np.array_equal(perm, np.arange(B)))
    return perm, nb, ident


def _take_rows(a, perm, ident):
    return a.copy() if ident else np.ascontiguousarray(a[perm])


def _put_rows(a, perm, ident):
    out = _empty(a.shape, a.dtype)
    if ident:
        out[...] = a
    else:
        out[perm] = a
    return out


class NumbaCPU:
    name = "numba"
    priority = 10
    modes = MODES
    dtypes = ("float32", "float64")
    array_module_name = "numpy"

    def probe(self):
        try:
            import numba
        except Exception as exc:
            return False, f"numba does not import: {type(exc).__name__}: {exc}"
        try:
            import scipy  # noqa: F401  (np.dot inside @njit needs SciPy's BLAS)
        except Exception as exc:
            return False, f"scipy does not import (Numba's np.dot needs its BLAS): {exc}"
        from .._kernels.cpu import lstm  # noqa: F401  (fails loudly if the kernels are missing)
        return True, f"numba {numba.__version__}, fused CPU kernels"

    # ------------------------------------------------------------ forward
    def forward(self, mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training):
        from .._kernels.cpu import gemm, gru, lstm, rnn
        T, B, I = x.shape
        H = w_hh.shape[1]
        GH = w_hh.shape[0]
        dt = x.dtype
        perm, nb, ident = _schedule(lengths, T, B)
        x2 = x.reshape(T * B, I)
        xg = np.empty((T, B, GH), dt)
        w_hh = np.ascontiguousarray(w_hh)
        # the per-step GEMM reads W_hh's rows in the forward and W_hh^T's in
        # BPTT; the forward needs the W_hh^T copy only where it hands a step to
        # BLAS (gemm.uses_blas), so inference skips the G*H*H copy otherwise
        if training or gemm.uses_blas(B, GH, H):
            w_hhT = np.ascontiguousarray(w_hh.T)
        else:
            w_hhT = np.empty((0, 0), dt)
        h = _take_rows(h0, perm, ident)
        y = _empty((T, B, H), dt)
        gh = np.empty((B, GH), dt)
        dummy = np.empty((1, 1, 1), dt)
        tb = (lambda shape: _empty(shape, dt)) if training else (lambda shape: dummy)
        Hs = tb((T, B, H))
        c = None
        if mode == "lstm":
            c = _take_rows(c0, perm, ident)
            Gs, Cs, TCs = tb((T, B, GH)), tb((T, B, H)), tb((T, B, H))
            lstm.lstm_forward(x2, w_ih, xg, w_hh, b_ih + b_hh, h, c, perm, nb, reverse, training,
                              y, Hs, Gs, Cs, TCs, gh, np.empty((B, GH), dt), np.empty((B, H), dt), w_hhT)
            bufs = dict(Gs=Gs, Cs=Cs, TCs=TCs)
        elif mode == "gru":
            bx = b_ih.copy()
            bx[:2 * H] += b_hh[:2 * H]
            Gs, HNs = tb((T, B, GH)), tb((T, B, H))
            gru.gru_forward(x2, w_ih, xg, w_hh, bx, np.ascontiguousarray(b_hh[2 * H:]), h, perm, nb,
                            reverse, training, y, Hs, Gs, HNs, gh, np.empty((B, GH), dt),
                            np.empty((B, H), dt), w_hhT)
            bufs = dict(Gs=Gs, HNs=HNs)
        else:
            As = tb((T, B, H))
            rnn.rnn_forward(x2, w_ih, xg, w_hh, b_ih + b_hh, h, perm, nb, reverse, mode == "rnn_relu",
                            training, y, Hs, As, gh, w_hhT)
            bufs = dict(As=As)
        h_n = _put_rows(h, perm, ident)
        c_n = _put_rows(c, perm, ident) if c is not None else None
        payload = None
        if training:
            if lengths is not None and lengths.min() < T:
                # Padding may hold anything (even NaN); dW_ih multiplies it by
                # dG = 0, so keep a copy with the padding zeroed.
                x2 = np.where((np.arange(T)[:, None] < lengths[None, :])[:, :, None], x, 0
                              ).astype(dt, copy=False).reshape(T * B, I)
            payload = dict(mode=mode, x2=x2, w_ih=w_ih, w_hh=w_hh, w_hhT=w_hhT, Hs=Hs, perm=perm, nb=nb,
                           ident=ident, reverse=reverse, shape=(T, B, I, H), **bufs)
        return y, h_n, c_n, payload

    # ------------------------------------------------------------ backward
    def backward(self, p, dy, dh_n, dc_n):
        from .._kernels.cpu import gru, lstm, rnn
        mode = p["mode"]
        T, B, I, H = p["shape"]
        perm, nb, ident, reverse = p["perm"], p["nb"], p["ident"], p["reverse"]
        w_ih, w_hh = p["w_ih"], p["w_hh"]
        GH = w_hh.shape[0]
        w_hhT = p["w_hhT"]
        dt = dy.dtype
        dh = _take_rows(dh_n, perm, ident)
        dgs = np.empty((B, GH), dt)
        dG = _empty((T, B, GH), dt)
        dx = _empty((T, B, I), dt)
        dw_ih = _empty((GH, I), dt)
        dw_hh = _empty((GH, H), dt)
        db_ih = _empty(GH, dt)
        db_hh = _empty(GH, dt)
        grads = (p["x2"], w_ih, dx.reshape(T * B, I), dw_ih, dw_hh, db_ih, db_hh, w_hh)
        dc0 = None
        if mode == "lstm":
            dc = _take_rows(dc_n, perm, ident)
            lstm.lstm_backward(dy, w_hhT, dh, dc, perm, nb, reverse, ident,
                               p["Hs"], p["Gs"], p["Cs"], p["TCs"], dG, dgs, *grads)
            dc0 = _put_rows(dc, perm, ident)
        elif mode == "gru":
            dGh = _empty((T, B, GH), dt)
            dhd = np.empty((B, H), dt)
            gru.gru_backward(dy, w_hhT, dh, perm, nb, reverse, ident, p["Hs"], p["Gs"], p["HNs"],
                             dG, dGh, dgs, dhd, *grads)
        else:
            rnn.rnn_backward(dy, w_hhT, dh, perm, nb, reverse, mode == "rnn_relu", ident,
                             p["Hs"], p["As"], dG, dgs, *grads)
        dh0 = _put_rows(dh, perm, ident)
        return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


BACKEND = NumbaCPU()
