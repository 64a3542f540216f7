"""Vanilla RNN time loops (tanh or relu), fused, for the Numba backend.

h' = act(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh), act = tanh or relu.

Rows run in sorted order (see lstm.py for the convention).  Shapes:
xg (T, B, H) = x @ w_ih.T; w_hh (H, H) and its transpose w_hhT, both C-contiguous (the
recurrent GEMM reads rows: W_hh's in the forward, W_hh^T's in BPTT, see gemm.py); bias (H,) =
b_ih + b_hh; h, dh (B, H) sorted; y, Hs, As, dG (T, B, H) where As is the
activated output; gh, dgs (B, H) workspaces.  relu selects the activation.
"""
import numpy as np
from numba import njit

from .activations import tanh_
from .common import JIT, after_loop_grads
from .gemm import mm_nt


@njit(**JIT)
def rnn_forward(x2, w_ih, xg, w_hh, bias, h, perm, nb, reverse, relu, training, y, Hs, As, gh, w_hhT):
    T, B = xg.shape[0], xg.shape[1]
    H = h.shape[1]
    # input projection for all T*B rows: one GEMM, before the loop
    np.dot(x2, w_ih.T, xg.reshape((T * B, xg.shape[2])))
    zero = y.dtype.type(0)
    for s in range(T):
        t = T - 1 - s if reverse else s
        n = nb[t]
        if n > 0:
            mm_nt(h[:n], w_hh, gh[:n], w_hhT)
        for j in range(n):
            b = perm[j]
            xr = xg[t, b]
            gr = gh[j]
            hj = h[j]
            yr = y[t, b]
            if training:
                sh = Hs[t, b]
                for k in range(H):
                    sh[k] = hj[k]
            if relu:
                for k in range(H):
                    a = xr[k] + gr[k] + bias[k]
                    hj[k] = a if a > zero else zero
            else:
                for k in range(H):
                    hj[k] = tanh_(xr[k] + gr[k] + bias[k])
            for k in range(H):
                yr[k] = hj[k]
            if training:
                sa = As[t, b]
                for k in range(H):
                    sa[k] = hj[k]
        for j in range(n, B):
            b = perm[j]
            y[t, b, :] = 0
            if training:
                Hs[t, b, :] = 0   # read by the dW_hh GEMM against dG = 0: keep it finite


@njit(**JIT)
def rnn_backward(dy, w_hhT, dh, perm, nb, reverse, relu, ident, Hs, As, dG, dgs,
                 x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, w_hh):
    T, B = dy.shape[0], dy.shape[1]
    H = dh.shape[1]
    one = dy.dtype.type(1)
    zero = dy.dtype.type(0)
    for s in range(T):
        t = s if reverse else T - 1 - s
        n = nb[t]
        buf = dG[t] if ident else dgs
        for j in range(n):
            b = perm[j]
            dyr = dy[t, b]
            sa = As[t, b]
            dhj = dh[j]
            dgr = buf[j]
            if relu:
                for k in range(H):
                    dgr[k] = (dhj[k] + dyr[k]) if sa[k] > zero else zero
            else:
                for k in range(H):
                    a = sa[k]
                    dgr[k] = (dhj[k] + dyr[k]) * (one - a * a)
        if not ident:
            for j in range(n):
                dG[t, perm[j], :] = dgs[j]
        for j in range(n, B):
            dG[t, perm[j], :] = 0
        if n > 0:
            mm_nt(buf[:n], w_hhT, dh[:n], w_hh)

    T_B = T * B
    after_loop_grads(dG.reshape((T_B, dG.shape[2])), dG.reshape((T_B, dG.shape[2])), x2, Hs.reshape((T_B, H)),
                     w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh)
