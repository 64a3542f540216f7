"""GRU time loops (forward and BPTT), fused, for the Numba backend.

Gate order r, z, n (PyTorch's):
    r = sigmoid(xr + b_ir + W_hr h + b_hr),  z likewise,
    n = tanh(xn + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h.

Rows run in sorted order (see lstm.py for the convention).  Shapes:
xg (T, B, 3H) = x @ w_ih.T; w_hh (3H, H) and w_hhT (H, 3H), C-contiguous (gemm.py reads their rows); bx (3H,) =
[b_ir + b_hr, b_iz + b_hz, b_in]; bhn (H,) = b_hn; h, dh (B, H) sorted;
y, Hs, HNs (T, B, H) where HNs = W_hn h + b_hn; Gs, dGi, dGh (T, B, 3H);
gh, dgs, gws (B, 3H) and dhd, hnws (B, H) workspaces.
The input-side and recurrent-side gradients differ in the n block
(d(W_hn h) = r * d(pre-activation of n)), hence dGi and dGh.
"""
import numpy as np
from numba import njit

from .activations import sigmoid_, tanh_
from .common import JIT, after_loop_grads
from .gemm import mm_nt


@njit(**JIT)
def gru_forward(x2, w_ih, xg, w_hh, bx, bhn, h, perm, nb, reverse, training, y, Hs, Gs, HNs, gh,
                gws, hnws, w_hhT):
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
            yr = y[t, b]
            # always store the gates (scratch rows when not training): a branch
            # inside the k loop would keep LLVM from vectorising it
            sg = gws[j]
            shn = hnws[j]
            if training:
                sg = Gs[t, b]
                shn = HNs[t, b]
                sh = Hs[t, b]
                for k in range(H):
                    sh[k] = hj[k]
            for k in range(H):
                r = sigmoid_(xr[k] + gr[k] + bx[k])
                z = sigmoid_(xr[H + k] + gr[H + k] + bx[H + k])
                hn = gr[2 * H + k] + bhn[k]
                nn = tanh_(xr[2 * H + k] + bx[2 * H + k] + r * hn)
                hnew = nn + z * (hj[k] - nn)
                hj[k] = hnew
                yr[k] = hnew
                sg[k] = r
                sg[H + k] = z
                sg[2 * H + k] = nn
                shn[k] = hn
        for j in range(n, B):
            b = perm[j]
            y[t, b, :] = 0
            if training:
                Hs[t, b, :] = 0   # read by the dW_hh GEMM against dGh = 0: keep it finite


@njit(**JIT)
def gru_backward(dy, w_hhT, dh, perm, nb, reverse, ident, Hs, Gs, HNs, dGi, dGh, dgs, dhd,
                 x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, w_hh):
    T, B = dy.shape[0], dy.shape[1]
    H = dh.shape[1]
    one = dy.dtype.type(1)
    for s in range(T):
        t = s if reverse else T - 1 - s
        n = nb[t]
        buf = dGh[t] if ident else dgs
        for j in range(n):
            b = perm[j]
            dyr = dy[t, b]
            sg = Gs[t, b]
            shn = HNs[t, b]
            sh = Hs[t, b]
            dhj = dh[j]
            dgi = dGi[t, b]
            dgh = buf[j]
            dd = dhd[j]
            for k in range(H):
                r = sg[k]
                z = sg[H + k]
                nn = sg[2 * H + k]
                dht = dhj[k] + dyr[k]
                dan = dht * (one - z) * (one - nn * nn)
                dar = dan * shn[k] * r * (one - r)
                daz = dht * (sh[k] - nn) * z * (one - z)
                dgi[k] = dar
                dgi[H + k] = daz
                dgi[2 * H + k] = dan
                dgh[k] = dar
                dgh[H + k] = daz
                dgh[2 * H + k] = dan * r
                dd[k] = dht * z
        if not ident:
            for j in range(n):
                dGh[t, perm[j], :] = dgs[j]
        for j in range(n, B):
            dGi[t, perm[j], :] = 0
            dGh[t, perm[j], :] = 0
        if n > 0:
            mm_nt(buf[:n], w_hhT, dh[:n], w_hh)
            for j in range(n):
                for k in range(H):
                    dh[j, k] += dhd[j, k]

    T_B = T * B
    after_loop_grads(dGi.reshape((T_B, dGi.shape[2])), dGh.reshape((T_B, dGi.shape[2])), x2, Hs.reshape((T_B, H)),
                     w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh)
