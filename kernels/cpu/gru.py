"""GRU time loops (forward and BPTT), fused, for the Numba backend.

Gate order r, z, n (PyTorch's):
    r = sigmoid(xr + b_ir + W_hr h + b_hr),  z likewise,
    n = tanh(xn + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h.

Rows run in sorted order (see lstm.py for the convention).  Shapes:
xg (T, B, 3H) = x @ w_ih.T; w_hh (3H, H) and w_hhT (H, 3H), C-contiguous (gemm.py reads their rows); bx (3H,) =
[b_ir + b_hr, b_iz + b_hz, b_in]; bhn (H,) = b_hn; h, dh (B, H) sorted;
y, Hs, HNs (T, B, H) where HNs = W_hn h + b_hn; Gs, dGi, dGh (T, B, 3H);
gh, dgs, gws (B, 3H) and dhd, hnws (B, H) workspaces (gws, hnws by units) (dgs (2, B, 3H) in the
parallel BPTT, and the parallel forward keeps h in hbuf (2, B, H)).
The one-thread loops' step product takes its form as lstm.py says (w_hh, or
w_hhT in BPTT, is None in the axpy form).
The loops by units run the pointwise code over hidden units [k0, k1)
(_fwd_units, _bwd_units; every BPTT runs _bwd_units); the forwards on
whole rows (one thread, by rows) run _fwd_rows; lstm.py and parallel.py
describe the scheme.
The input-side and recurrent-side gradients differ in the n block
(d(W_hn h) = r * d(pre-activation of n)), hence dGi and dGh.
"""
import numpy as np
from numba import njit, prange

from .activations import sigmoid_, tanh_
from .blas import split
from .common import JIT, JIT_PAR, inner, inner_inline, inner_par, after_loop_grads, finished_rows
from .gemm import mm_nt
from .packed import reversed_at, step_product, step_product_range
from .spin import part_started
from .stream import fence, put_row
from .parallel import (PROJECT_BEFORE, after_loop_grads_par, help_grads, help_loop_role, help_progress, help_project,
                       help_projected, bias_sums_buf, bias_sums_step, copy_rows,
                       grads_own_rows, input_projection, project_own_rows, put_rows, rows_of,
                       take_rows, zero_bias_sums)


@inner
def _fwd_units(t, n, k0, k1, hin, hout, xg, gh, bx, bhn, perm, training, y, Hs, Gs, HNs, gws, hnws):
    """Pointwise forward of step t for sorted rows [0, n), units [k0, k1);
    gh holds h_prev @ W_hh^T.  Row views start at k0 and the H <= 0 exit
    lets LLVM vectorise (see lstm._fwd_units)."""
    H = hin.shape[1]
    m = k1 - k0
    bxs = bx[k0:]
    bhs = bhn[k0:]
    if H <= 0:
        return
    for j in range(n):
        b = perm[j]
        xr = xg[t, b, k0:]
        gr = gh[j, k0:]
        hi = hin[j, k0:]
        ho = hout[j, k0:]
        yr = y[t, b, k0:]
        # always store the gates (scratch rows when not training): a branch
        # inside the k loop would keep LLVM from vectorising it
        sg = gws[j, k0:]
        shn = hnws[j, k0:]
        # h_prev is read below from a copy in y's row (which then takes
        # h): where hin is hout (the one-thread and by-rows loops), reading
        # hi while writing ho fails LLVM's runtime overlap check and the
        # whole loop ran scalar, 28 against 5 ns per unit (S3, measured).
        # Training copies h_prev to Hs as well.  Reading it from Hs there
        # and from y's row otherwise (one view chosen per row) saves that
        # copy but brings the failed check back: the loop reads the chosen
        # view and writes y's row, which in inference is the same memory
        # (measured: 30 ns per unit again).
        for k in range(m):
            yr[k] = hi[k]
        if training:
            sg = Gs[t, b, k0:]
            shn = HNs[t, b, k0:]
            sh = Hs[t, b, k0:]
            for k in range(m):
                sh[k] = hi[k]
        for k in range(m):
            r = sigmoid_(xr[k] + gr[k] + bxs[k])
            z = sigmoid_(xr[H + k] + gr[H + k] + bxs[H + k])
            hn = gr[2 * H + k] + bhs[k]
            nn = tanh_(xr[2 * H + k] + bxs[2 * H + k] + r * hn)
            hnew = nn + z * (yr[k] - nn)
            ho[k] = hnew
            yr[k] = hnew
            sg[k] = r
            sg[H + k] = z
            sg[2 * H + k] = nn
            shn[k] = hn
    finished_rows(t, n, k0, k1, perm, training, y, Hs)


@inner_inline
def _fwd_rows(t, n, xg, gp, bx, bhn, hp, perm, training, y, Hs, Gs, HNs, sg):
    """The pointwise forward of a by-rows part's running rows [0, n) at
    step t (gp holds their h_prev @ W_hh^T; h_prev in hp, overwritten):
    _fwd_units on 2-D indices, without its row views (their reference
    counts: lstm._cells_rows) and without its copy of h_prev into y's row,
    which the views needed (reading hp[j, k] and writing it in the same
    iteration through one index is no overlap LLVM has to check).  sg
    (2, 3H) in training where the saved rows go out by streaming stores
    (stream.py; numba_cpu.STREAM_SAVES_*): the gate values and hn through
    its rows; else (0, 0)."""
    H = hp.shape[1]
    if H <= 0:
        return      # never taken; see lstm._fwd_units
    streamed = training and sg.shape[0] == 2 and sg.shape[1] == 3 * H
    for j in range(n):
        b = perm[j]
        if streamed:
            # the cell a second time, through sg's rows (as lstm._cells_rows:
            # one training loop through sg with plain copies after it ran
            # scalar here, 20-22 against 2.6-3.0 ns a unit)
            put_row(Hs, t, b, hp, j, 0, H)
            for k in range(H):
                r = sigmoid_(xg[t, b, k] + gp[j, k] + bx[k])
                z = sigmoid_(xg[t, b, H + k] + gp[j, H + k] + bx[H + k])
                hn = gp[j, 2 * H + k] + bhn[k]
                nn = tanh_(xg[t, b, 2 * H + k] + bx[2 * H + k] + r * hn)
                hnew = nn + z * (hp[j, k] - nn)
                hp[j, k] = hnew
                y[t, b, k] = hnew
                sg[0, k] = r
                sg[0, H + k] = z
                sg[0, 2 * H + k] = nn
                sg[1, k] = hn
            put_row(Gs, t, b, sg, 0, 0, 3 * H)
            put_row(HNs, t, b, sg, 1, 0, H)
        elif training:
            for k in range(H):
                Hs[t, b, k] = hp[j, k]
            for k in range(H):
                r = sigmoid_(xg[t, b, k] + gp[j, k] + bx[k])
                z = sigmoid_(xg[t, b, H + k] + gp[j, H + k] + bx[H + k])
                hn = gp[j, 2 * H + k] + bhn[k]
                nn = tanh_(xg[t, b, 2 * H + k] + bx[2 * H + k] + r * hn)
                hnew = nn + z * (hp[j, k] - nn)
                hp[j, k] = hnew
                y[t, b, k] = hnew
                Gs[t, b, k] = r
                Gs[t, b, H + k] = z
                Gs[t, b, 2 * H + k] = nn
                HNs[t, b, k] = hn
        else:
            for k in range(H):
                r = sigmoid_(xg[t, b, k] + gp[j, k] + bx[k])
                z = sigmoid_(xg[t, b, H + k] + gp[j, H + k] + bx[H + k])
                nn = tanh_(xg[t, b, 2 * H + k] + bx[2 * H + k] + r * (gp[j, 2 * H + k] + bhn[k]))
                hnew = nn + z * (hp[j, k] - nn)
                hp[j, k] = hnew
                y[t, b, k] = hnew
    finished_rows(t, n, 0, H, perm, training, y, Hs)


@inner
def _bwd_units(t, n, k0, k1, dy, dh, Gs, HNs, Hs, dGi, buf, dGh, dhd, perm, ident, dybm):
    """Pointwise BPTT of step t for sorted rows [0, n), units [k0, k1): gate
    gradients to dGi[t] (input side) and buf (recurrent side, sorted rows;
    dGh[t] itself when ident, else also copied to dGh[t] in original order),
    and dhd = the direct part of dh_prev (dht * z).  Rows [n, B) get zero.
    dybm: dy is batch-major, (B, T, H) (see lstm.lstm_backward_rows_part)."""
    B = perm.shape[0]       # the rows perm covers (see lstm._fwd_units)
    H = dh.shape[1]
    m = k1 - k0
    one = dy.dtype.type(1)
    if H <= 0:
        return
    for j in range(n):
        b = perm[j]
        dyr = dy[b, t, k0:] if dybm else dy[t, b, k0:]
        sg = Gs[t, b, k0:]
        shn = HNs[t, b, k0:]
        sh = Hs[t, b, k0:]
        dhj = dh[j, k0:]
        dgi = dGi[t, b, k0:]
        dgh = buf[j, k0:]
        dd = dhd[j, k0:]
        for k in range(m):
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
            # element loops, not a slice-to-slice copy (see lstm._bwd_units)
            dgo = dGh[t, b, k0:]
            for q in range(3):
                for k in range(m):
                    dgo[q * H + k] = dgh[q * H + k]
    for j in range(n, B):
        b = perm[j]
        for q in range(3):
            dGi[t, b, q * H + k0:q * H + k1] = 0
            dGh[t, b, q * H + k0:q * H + k1] = 0


@inner
def _add_units(dh, dhd, n, k0, k1):
    """dh[:n, k0:k1] += dhd[:n, k0:k1]."""
    for j in range(n):
        a = dh[j, k0:k1]
        d = dhd[j, k0:k1]
        for k in range(k1 - k0):
            a[k] += d[k]


# ---------------------------------------------------------------- one thread

@njit(**JIT)
def gru_forward(x2, w_ih, xg, w_hh, bx, bhn, h, perm, nb, reverse, training, y, Hs, Gs, HNs, gh, axpyT, blasT,
                ctl, rows):
    """The one-thread forward: per step the recurrent product into gh,
    then the cell on whole rows (_fwd_rows, as the loops by rows)."""
    T, B = xg.shape[0], xg.shape[1]
    nosg = np.empty((0, 0), h.dtype)     # its calls are small: plain stores (stream.py)
    xg2 = xg.reshape((T * B, xg.shape[2]))
    # input projection for all T*B rows: one GEMM, before the loop (with a
    # helper, ctl given: in chunks as the loop needs them, parallel.py)
    if ctl is None:
        np.dot(x2, w_ih.T, xg2)
    ready = 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        n = nb[t]
        if n > 0:
            mm_nt(h[:n], w_hh, gh[:n], axpyT, blasT)
        if ctl is not None:
            ready = help_projected(ctl, ready, t, B, rows, reverse, x2, w_ih, xg2)
        _fwd_rows(t, n, xg, gh, bx, bhn, h, perm, training, y, Hs, Gs, HNs, nosg)


@njit(**JIT)
def gru_backward(dy, w_hhT, dh, perm, nb, reverse, ident, Hs, Gs, HNs, dGi, dGh, dgs, dhd,
                 x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, axpyT, blasT, ctl):
    """The one-thread BPTT; ctl: see lstm.lstm_backward."""
    T, B = dy.shape[0], dy.shape[1]
    H = dh.shape[1]
    for s in range(T):
        t = s if reverse else T - 1 - s
        n = nb[t]
        buf = dGh[t] if ident else dgs
        _bwd_units(t, n, 0, H, dy, dh, Gs, HNs, Hs, dGi, buf, dGh, dhd, perm, ident, False)
        if n > 0:
            mm_nt(buf[:n], w_hhT, dh[:n], axpyT, blasT)
            _add_units(dh, dhd, n, 0, H)
        if ctl is not None:
            help_progress(ctl, s)

    # x2 None: the caller runs these GEMMs itself, on its threads
    # (numba_cpu.AFTER_LOOP_THREADS_MIN_MACS); Numba then compiles them out
    if x2 is not None:
        T_B = T * B
        after_loop_grads(dGi.reshape((T_B, dGi.shape[2])), dGh.reshape((T_B, dGi.shape[2])), x2, Hs.reshape((T_B, H)),
                         w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh)


@njit(**JIT)
def gru_forward_helped_part(i, nth, ctl, rows, x2, w_ih, xg, w_hh, bx, bhn, h, perm, nb, reverse, training, y,
                            Hs, Gs, HNs, gh, axpyT, blasT):
    """Part i of nth (2) of gru_forward_helped: the loop if it arrives
    first, else projection chunks (parallel.py, the forward's helper)."""
    if help_loop_role(ctl):
        gru_forward(x2, w_ih, xg, w_hh, bx, bhn, h, perm, nb, reverse, training, y, Hs, Gs, HNs, gh, axpyT,
                    blasT, ctl, rows)
    else:
        help_project(ctl, rows, reverse, x2, w_ih, xg.reshape((xg.shape[0] * xg.shape[1], xg.shape[2])))


@njit(**JIT_PAR)
def gru_forward_helped(nth, ctl, rows, x2, w_ih, xg, w_hh, bx, bhn, h, perm, nb, reverse, training, y, Hs, Gs,
                       HNs, gh, axpyT, blasT):
    """gru_forward with a helper: the input projection in chunks on both
    parts, the loop on one (parallel.py); ctl zeroed, HELP_CTL_SIZE + the
    chunk count.  Where the region's team has one thread, its parts run
    in turn and the first does everything."""
    for i in prange(nth):
        gru_forward_helped_part(np.int64(i), nth, ctl, rows, x2, w_ih, xg, w_hh, bx, bhn, h, perm, nb,
                                reverse, training, y, Hs, Gs, HNs, gh, axpyT, blasT)


@njit(**JIT)
def gru_backward_helped_part(i, nth, ctl, rows, dy, w_hhT, dh, perm, nb, reverse, ident, Hs, Gs, HNs,
                             dGi, dGh, dgs, dhd, x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own, axpyT, blasT):
    """Part i of nth (2) of gru_backward_helped: the loop if it arrives
    first, then the tasks after it (parallel.py, a helper beside the
    one-thread BPTT)."""
    T, B = dy.shape[0], dy.shape[1]
    if help_loop_role(ctl):
        gru_backward(dy, w_hhT, dh, perm, nb, reverse, ident, Hs, Gs, HNs, dGi, dGh, dgs, dhd, None, w_ih,
                     dx2, dw_ih, dw_hh, db_ih, db_hh, axpyT, blasT, ctl)
    TB = T * B
    help_grads(ctl, T, B, rows, reverse, dGi.reshape((TB, dGi.shape[2])), dGh.reshape((TB, dGh.shape[2])), x2,
               Hs.reshape((TB, dh.shape[1])), w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own)


@njit(**JIT_PAR)
def gru_backward_helped(nth, ctl, rows, dy, w_hhT, dh, perm, nb, reverse, ident, Hs, Gs, HNs, dGi, dGh,
                        dgs, dhd, x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own, axpyT, blasT):
    """gru_backward with a helper (parallel.py, a helper beside the
    one-thread BPTT): one region of nth parts (2), every gradient
    written, the GEMMs after the loop included; ctl zeroed, HELP_CTL_SIZE.
    Where the region's team has one thread, its parts run in turn and the
    first does everything."""
    for i in prange(nth):
        gru_backward_helped_part(np.int64(i), nth, ctl, rows, dy, w_hhT, dh, perm, nb, reverse, ident,
                                 Hs, Gs, HNs, dGi, dGh, dgs, dhd, x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh,
                                 own, axpyT, blasT)


# ---------------------------------------------------------------- threads

@inner
def _fwd_step(p, parts, t, n, cur, nxt, w_hh, wp, gh, xg, bx, bhn, perm, training, y, Hs, Gs, HNs, gws, hnws):
    """Step t for block p of `parts` blocks of hidden units (see lstm._fwd_step)."""
    H = cur.shape[1]
    k0, k1 = split(H, parts, p, 8)
    if n > 0:
        for q in range(3):
            step_product_range(cur[:n], wp, w_hh, gh[:n], q * H + k0, q * H + k1)
    _fwd_units(t, n, k0, k1, cur, nxt, xg, gh, bx, bhn, perm, training, y, Hs, Gs, HNs, gws, hnws)


@inner
def _bwd_step(p, parts, t, n, nprev, prev, w_hhT, wp, dy, dh, Gs, HNs, Hs, dGi, buf, dGh, dhd, perm, ident):
    """BPTT step t for block p of `parts` blocks of hidden units (see
    lstm._bwd_step); dh also gets the direct part dhd."""
    H = dh.shape[1]
    k0, k1 = split(H, parts, p, 8)
    if nprev > 0:
        step_product_range(prev[:nprev], wp, w_hhT, dh[:nprev], k0, k1)
        _add_units(dh, dhd, nprev, k0, k1)
    if t >= 0:
        _bwd_units(t, n, k0, k1, dy, dh, Gs, HNs, Hs, dGi, buf, dGh, dhd, perm, ident, False)


@inner_par
def _fwd_steps(parts, t, n, cur, nxt, w_hh, wp, gh, xg, bx, bhn, perm, training, y, Hs, Gs, HNs, gws, hnws):
    """One fork/join: _fwd_step for every block of units, one block per
    thread (see lstm._fwd_steps for why the regions and indices look so)."""
    for p in prange(parts):
        _fwd_step(np.int64(p), parts, t, n, cur, nxt, w_hh, wp, gh, xg, bx, bhn, perm, training, y, Hs, Gs, HNs, gws, hnws)


@inner_par
def _bwd_steps(parts, t, n, nprev, prev, w_hhT, wp, dy, dh, Gs, HNs, Hs, dGi, buf, dGh, dhd, perm, ident):
    """One fork/join: _bwd_step for every block of units, one block per thread."""
    for p in prange(parts):
        _bwd_step(np.int64(p), parts, t, n, nprev, prev, w_hhT, wp, dy, dh, Gs, HNs, Hs, dGi, buf, dGh, dhd, perm, ident)


@njit(**JIT)
def gru_forward_par(x2, w_ih, xg, w_hh, wp, bx, bhn, hbuf, perm, nb, reverse, training, y, Hs, Gs, HNs, gh,
                    gws, hnws, nth, parts):
    T, B = xg.shape[0], xg.shape[1]
    p0, p1 = parts - parts, parts - parts + 1    # not literals: see _fwd_steps
    # x2 None: the caller projected xg already (torch's BLAS, numba_cpu.TORCH_PROJECT)
    if x2 is not None:
        input_projection(x2, w_ih, xg.reshape((T * B, xg.shape[2])), nth)
    nprev = B
    for s in range(T):
        t = T - 1 - s if reverse else s
        n = nb[t]
        cur = hbuf[s % 2]
        nxt = hbuf[(s + 1) % 2]
        copy_rows(cur, nxt, n, nprev)     # rows that just finished: keep their state in both
        nprev = n
        if parts > 1:
            _fwd_steps(parts, t, n, cur, nxt, w_hh, wp, gh, xg, bx, bhn, perm, training, y, Hs, Gs, HNs, gws, hnws)
        else:
            _fwd_step(p0, p1, t, n, cur, nxt, w_hh, wp, gh, xg, bx, bhn, perm, training, y, Hs, Gs, HNs, gws, hnws)


@njit(**JIT)
def gru_backward_par(dy, w_hhT, wp, dh, perm, nb, reverse, ident, Hs, Gs, HNs, dGi, dGh, dgs, dhd,
                     x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own, nth, parts):
    T, B = dy.shape[0], dy.shape[1]
    p0, p1 = parts - parts, parts - parts + 1
    H = dh.shape[1]
    nprev = p0      # p0 rather than 0 (a literal) throughout: see _fwd_steps
    prev = dgs[1]
    for s in range(T + 1):      # s = T: the last product, dh0
        t = p0 - 1
        n = p0
        buf = prev
        if s < T:
            t = s if reverse else T - 1 - s
            n = nb[t]
            buf = dGh[t] if ident else dgs[s % 2]
        if parts > 1:
            _bwd_steps(parts, t, n, nprev, prev, w_hhT, wp, dy, dh, Gs, HNs, Hs, dGi, buf, dGh, dhd, perm, ident)
        else:
            _bwd_step(p0, p1, t, n, nprev, prev, w_hhT, wp, dy, dh, Gs, HNs, Hs, dGi, buf, dGh, dhd, perm, ident)
        nprev = n
        prev = buf

    # x2 None: the caller runs these GEMMs (torch's BLAS, numba_cpu.TORCH_AFTER);
    # Numba then compiles them out
    if x2 is not None:
        T_B = T * B
        after_loop_grads_par(dGi.reshape((T_B, dGi.shape[2])), dGh.reshape((T_B, dGi.shape[2])), x2,
                             Hs.reshape((T_B, H)), w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, nth, own)


# ---------------------------------------------------------------- threads, by rows

@njit(**JIT)
def gru_forward_rows_part(i, nth, xg, w_hh, wp, bx, bhn, h, perm, nb, reverse, training, y, Hs, Gs, HNs,
                          x2, w_ih, project, stream):
    """Part i of nth of the forward time loop by rows (see
    lstm.lstm_forward_rows_part, stream too)."""
    part_started(i)
    if project != PROJECT_BEFORE:   # this part's own rows of the input projection
        project_own_rows(i, nth, x2, w_ih, xg, perm, nb, project)
    T = xg.shape[0]
    H = h.shape[1]
    GH = xg.shape[2]
    hp = take_rows(h, i, nth)
    pp = take_rows(perm, i, nth)
    m = pp.shape[0]
    gp = np.empty((m, GH), h.dtype)
    sg = np.empty((2, GH) if stream and training else (0, 0), h.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        n = rows_of(nb[t], i, nth)
        if n > 0:
            step_product(hp[:n], wp, w_hh, gp[:n], reversed_at(s))
        _fwd_rows(t, n, xg, gp, bx, bhn, hp, pp, training, y, Hs, Gs, HNs, sg)
    if sg.shape[0]:
        fence()
    put_rows(hp, h, i, nth)


@njit(**JIT)
def gru_backward_rows_part(i, nth, w_hhT, wp, dy, dh, perm, nb, reverse, Hs, Gs, HNs, dGi, dGh,
                           x2, w_ih, dx, dwi, dwh, dbi, dbh, bsum, dybm):
    """Part i of nth of the BPTT loop by rows (see lstm.lstm_forward_rows_part).
    bsum (nth, 2, 3H), where not None: part i's running bias sums, dGi's
    in bsum[i, 0], dGh's in bsum[i, 1]; dybm: dy (B, T, H), batch-major
    (see lstm.lstm_backward_rows_part for both)."""
    part_started(i)
    T = dy.shape[1] if dybm else dy.shape[0]
    H = dh.shape[1]
    dhp = take_rows(dh, i, nth)
    pp = take_rows(perm, i, nth)
    m = pp.shape[0]
    dhd = np.empty((m, H), dh.dtype)
    buf = np.empty((m, dGh.shape[2]), dh.dtype)
    tmp = np.empty(dGh.shape[2], dh.dtype)
    if bsum is not None:
        zero_bias_sums(bsum, i)
    for s in range(T):
        t = s if reverse else T - 1 - s
        n = rows_of(nb[t], i, nth)
        _bwd_units(t, n, 0, H, dy, dhp, Gs, HNs, Hs, dGi, buf, dGh, dhd, pp, False, dybm)
        if bsum is not None:
            bias_sums_step(bsum[i, 0], tmp, dGi, t, n, pp)
            bias_sums_buf(bsum[i, 1], tmp, buf, n)     # dGh's rows, as they lie in buf
        if n > 0:
            step_product(buf[:n], wp, w_hhT, dhp[:n], reversed_at(s))
            _add_units(dhp, dhd, n, 0, H)
    put_rows(dhp, dh, i, nth)
    # this part's rows' share of the gradients after the loop, given its
    # sums; None leaves grads_own_rows out of the compiled part (~1 s of a
    # cold first call that does not use it)
    if dwi is not None:
        grads_own_rows(i, nth, dGi, dGh, x2, Hs, w_ih, dx, dwi[i], dwh[i], dbi[i], dbh[i], perm, nb)
