"""LSTM time loops (forward and BPTT), fused, for the Numba backend.

Gate order i, f, g, o (PyTorch's):  c' = f*c + i*g,  h' = o*tanh(c').

Batch rows are processed in *sorted* order: the wrapper sorts rows by length,
longest first, so the rows still running at step t are the prefix [0, n_t)
of the working state and the recurrent GEMM touches only them.  perm[j] is
the original batch index of sorted row j.  Everything the caller sees or the
big after-the-loop GEMMs read (xg, y, saved buffers, dG) is in original order.

Shapes: xg (T, B, 4H) = x @ w_ih.T (bias not added); w_hh (4H, H) and
w_hhT (H, 4H), C-contiguous (gemm.py reads their rows); bias (4H,) = b_ih + b_hh; h, c, dh, dc (B, H) sorted working
state; nb (T,) = rows active at each t; y, Hs, Cs, TCs (T, B, H);
Gs, dG (T, B, 4H); gh, dgs, gws (B, 4H) and tcws (B, H) workspaces.
"""
import numpy as np
from numba import njit

from .activations import sigmoid_, tanh_
from .common import JIT, after_loop_grads
from .gemm import mm_nt


@njit(**JIT)
def lstm_forward(x2, w_ih, xg, w_hh, bias, h, c, perm, nb, reverse, training, y, Hs, Gs, Cs, TCs, gh,
                 gws, tcws, w_hhT):
    T, B = xg.shape[0], xg.shape[1]
    H = h.shape[1]
    # input projection for all T*B rows: one GEMM, before the loop
    np.dot(x2, w_ih.T, xg.reshape((T * B, xg.shape[2])))
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
            cj = c[j]
            yr = y[t, b]
            # The gate values always go somewhere (the saved buffers, or a
            # scratch row when not training): a branch inside the k loop
            # would keep LLVM from vectorising it.
            sg = gws[j]
            stc = tcws[j]
            if training:
                sg = Gs[t, b]
                stc = TCs[t, b]
                sh = Hs[t, b]
                sc = Cs[t, b]
                for k in range(H):
                    sh[k] = hj[k]
                    sc[k] = cj[k]
            for k in range(H):
                i = sigmoid_(xr[k] + gr[k] + bias[k])
                f = sigmoid_(xr[H + k] + gr[H + k] + bias[H + k])
                g = tanh_(xr[2 * H + k] + gr[2 * H + k] + bias[2 * H + k])
                o = sigmoid_(xr[3 * H + k] + gr[3 * H + k] + bias[3 * H + k])
                cn = f * cj[k] + i * g
                tc = tanh_(cn)
                hn = o * tc
                cj[k] = cn
                hj[k] = hn
                yr[k] = hn
                sg[k] = i
                sg[H + k] = f
                sg[2 * H + k] = g
                sg[3 * H + k] = o
                stc[k] = tc
        for j in range(n, B):
            b = perm[j]
            y[t, b, :] = 0
            if training:
                Hs[t, b, :] = 0   # read by the dW_hh GEMM against dG = 0: keep it finite


@njit(**JIT)
def lstm_backward(dy, w_hhT, dh, dc, perm, nb, reverse, ident, Hs, Gs, Cs, TCs, dG, dgs,
                  x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, w_hh):
    T, B = dy.shape[0], dy.shape[1]
    H = dh.shape[1]
    one = dy.dtype.type(1)
    for s in range(T):
        t = s if reverse else T - 1 - s
        n = nb[t]
        buf = dG[t] if ident else dgs
        for j in range(n):
            b = perm[j]
            dyr = dy[t, b]
            sg = Gs[t, b]
            sc = Cs[t, b]
            stc = TCs[t, b]
            dhj = dh[j]
            dcj = dc[j]
            dgr = buf[j]
            for k in range(H):
                i = sg[k]
                f = sg[H + k]
                g = sg[2 * H + k]
                o = sg[3 * H + k]
                tc = stc[k]
                dht = dhj[k] + dyr[k]
                dct = dcj[k] + dht * o * (one - tc * tc)
                dgr[k] = dct * g * i * (one - i)
                dgr[H + k] = dct * sc[k] * f * (one - f)
                dgr[2 * H + k] = dct * i * (one - g * g)
                dgr[3 * H + k] = dht * tc * o * (one - o)
                dcj[k] = dct * f
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
