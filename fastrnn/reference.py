"""Plain-NumPy forward and BPTT for every cell: the oracle.

Readable first, fast never.  Works in the input's dtype, so float64 inputs
give a float64 reference that every other backend is compared against.  It
is itself checked against finite differences and torch.nn in the tests.

Shapes: x (T, B, I); w_ih (G*H, I); w_hh (G*H, H); b_ih, b_hh (G*H,);
h0, c0 (B, H); lengths (B,) ints in [0, T]; y (T, B, H).
"""
from __future__ import annotations

import numpy as np

from .cells import STEPS, spec

__all__ = ["forward", "backward"]


def _order(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training):
    """Run the whole sequence.  Returns (y, h_n, c_n, cache); c_n is None
    unless mode is lstm; cache is None unless training."""
    sp = spec(mode)
    step, _ = STEPS[mode]
    T, B, _I = x.shape
    H = w_hh.shape[1]
    lengths = np.full(B, T, dtype=np.int64) if lengths is None else lengths
    h = h0.copy()
    c = c0.copy() if sp.has_cell else None
    y = np.zeros((T, B, H), dtype=x.dtype)
    steps = []
    for t in _order(T, reverse):
        valid = (t < lengths)[:, None]
        xg = x[t] @ w_ih.T + b_ih
        hg = h @ w_hh.T + b_hh
        hnew, cnew, cache = step(mode, xg, hg, h, c)
        if training:
            steps.append((t, valid, x[t], h, c, cache))
        h = np.where(valid, hnew, h)
        if sp.has_cell:
            c = np.where(valid, cnew, c)
        y[t] = np.where(valid, hnew, 0)
    saved = None
    if training:
        saved = dict(mode=mode, steps=steps, w_ih=w_ih, w_hh=w_hh, shape=(T, B, _I, H),
                     dtype=x.dtype)
    return y, h, c, saved


def backward(saved, dy, dh_n, dc_n):
    """BPTT through a cache from forward(training=True).
    Returns (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh); dc0 is None unless lstm."""
    mode = saved["mode"]
    sp = spec(mode)
    _, step_back = STEPS[mode]
    w_ih, w_hh = saved["w_ih"], saved["w_hh"]
    T, B, I, H = saved["shape"]
    dt = saved["dtype"]
    dx = np.zeros((T, B, I), dtype=dt)
    dw_ih = np.zeros_like(w_ih)
    dw_hh = np.zeros_like(w_hh)
    db_ih = np.zeros(w_ih.shape[0], dtype=dt)
    db_hh = np.zeros(w_ih.shape[0], dtype=dt)
    dh = dh_n.copy()
    dc = dc_n.copy() if sp.has_cell else None
    for t, valid, xt, h, c, cache in reversed(saved["steps"]):
        # Only valid rows of this step received the state update, so only
        # they pass gradient through the cell; the rest carry dh unchanged.
        dhn = np.where(valid, dh + dy[t], 0)
        dcn = np.where(valid, dc, 0) if sp.has_cell else None
        dxg, dhg, dh_direct, dc_prev = step_back(mode, cache, h, c, dhn, dcn)
        dxg = np.where(valid, dxg, 0)
        dhg = np.where(valid, dhg, 0)
        dw_ih += dxg.T @ xt
        db_ih += dxg.sum(axis=0)
        dw_hh += dhg.T @ h
        db_hh += dhg.sum(axis=0)
        dx[t] = dxg @ w_ih
        dh = np.where(valid, dh_direct + dhg @ w_hh, dh)
        if sp.has_cell:
            dc = np.where(valid, dc_prev, dc)
    return dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh
