"""Cell specifications: one place for each cell's pointwise math (NumPy form).

Shapes use one letter set throughout the package:
    T  time steps          B  batch          I  input features
    H  hidden units        G  gates per cell (1 rnn, 3 gru, 4 lstm)

Gate order (PyTorch's, so state_dicts move between fastrnn and torch.nn):
    rnn_tanh, rnn_relu : one gate, h' = act(W_ih x + b_ih + W_hh h + b_hh)
    gru                : r, z, n
                         r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
                         z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
                         n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
                         h' = (1 - z) * n + z * h
    lstm               : i, f, g, o
                         i, f, o = sigmoid(.), g = tanh(.)
                         c' = f * c + i * g,  h' = o * tanh(c')

The functions here are the readable NumPy form used by the reference
backend (the oracle).  The Numba kernels (fastrnn._kernels.cpu) and the CUDA
kernels (fastrnn._kernels.cuda) implement the same math fused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CellSpec", "CELLS", "MODES", "spec"]


@dataclass(frozen=True)
class CellSpec:
    mode: str
    gates: int          # G
    has_cell: bool      # True for LSTM: state is the pair (h, c)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"CellSpec({self.mode!r}, G={self.gates})"


CELLS = {
    "rnn_tanh": CellSpec("rnn_tanh", 1, False),
    "rnn_relu": CellSpec("rnn_relu", 1, False),
    "gru": CellSpec("gru", 3, False),
    "lstm": CellSpec("lstm", 4, True),
}
MODES = tuple(CELLS)


def spec(mode: str) -> CellSpec:
    """Return the CellSpec for ``mode``; ValueError naming the valid modes otherwise."""
    try:
        return CELLS[mode]
    except (KeyError, TypeError):
        raise ValueError(
            f"mode: expected one of {', '.join(repr(m) for m in MODES)}, got {mode!r}"
        ) from None


def sigmoid(a):
    # Split by sign so that exp never overflows (float32 and float64 alike).
    out = np.empty_like(a)
    pos = a >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-a[pos]))
    e = np.exp(a[~pos])
    out[~pos] = e / (1.0 + e)
    return out


# --------------------------------------------------------------------------
# Pointwise step functions (reference form).  Each forward takes the input
# projection xg = W_ih x + b_ih (B, G*H), the recurrent projection
# hg = W_hh h + b_hh (B, G*H) and the previous state, and returns the new
# state plus what backward needs ("cache").  Each backward takes the cache
# and the gradient flowing into the new state and returns the gradients of
# the pre-activations on the input side (dxg) and on the recurrent side
# (dhg), plus the direct gradient into the previous state.
# --------------------------------------------------------------------------

def rnn_step(mode, xg, hg, h, c):
    a = xg + hg
    hn = np.tanh(a) if mode == "rnn_tanh" else np.maximum(a, 0)
    return hn, None, (hn,)


def rnn_step_back(mode, cache, h, c, dhn, dcn):
    (hn,) = cache
    if mode == "rnn_tanh":
        da = dhn * (1 - hn * hn)
    else:
        da = dhn * (hn > 0)
    return da, da, np.zeros_like(dhn), None


def gru_step(mode, xg, hg, h, c):
    H = h.shape[1]
    r = sigmoid(xg[:, :H] + hg[:, :H])
    z = sigmoid(xg[:, H:2 * H] + hg[:, H:2 * H])
    hn_part = hg[:, 2 * H:]
    n = np.tanh(xg[:, 2 * H:] + r * hn_part)
    hnew = (1 - z) * n + z * h
    return hnew, None, (r, z, n, hn_part)


def gru_step_back(mode, cache, h, c, dhn, dcn):
    r, z, n, hn_part = cache
    dn = dhn * (1 - z)
    dz = dhn * (h - n)
    dh_direct = dhn * z
    dan = dn * (1 - n * n)
    dr = dan * hn_part
    dar = dr * r * (1 - r)
    daz = dz * z * (1 - z)
    dxg = np.concatenate([dar, daz, dan], axis=1)
    dhg = np.concatenate([dar, daz, dan * r], axis=1)
    return dxg, dhg, dh_direct, None


def lstm_step(mode, xg, hg, h, c):
    H = h.shape[1]
    a = xg + hg
    i = sigmoid(a[:, :H])
    f = sigmoid(a[:, H:2 * H])
    g = np.tanh(a[:, 2 * H:3 * H])
    o = sigmoid(a[:, 3 * H:])
    cnew = f * c + i * g
    tc = np.tanh(cnew)
    hnew = o * tc
    return hnew, cnew, (i, f, g, o, tc)


def lstm_step_back(mode, cache, h, c, dhn, dcn):
    i, f, g, o, tc = cache
    dc = dcn + dhn * o * (1 - tc * tc)
    do = dhn * tc
    di = dc * g
    dg = dc * i
    df = dc * c
    da = np.concatenate(
        [di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=1
    )
    return da, da, np.zeros_like(dhn), dc * f


STEPS = {
    "rnn_tanh": (rnn_step, rnn_step_back),
    "rnn_relu": (rnn_step, rnn_step_back),
    "gru": (gru_step, gru_step_back),
    "lstm": (lstm_step, lstm_step_back),
}
