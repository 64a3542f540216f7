"""Vanilla RNN time loops (tanh or relu), fused, for the Numba backend.

h' = act(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh), act = tanh or relu.

Rows run in sorted order (see lstm.py for the convention).  Shapes:
xg (T, B, H) = x @ w_ih.T; w_hh (H, H) and its transpose w_hhT, both C-contiguous (the
recurrent GEMM reads rows: W_hh's in the forward, W_hh^T's in BPTT, see gemm.py); bias (H,) =
b_ih + b_hh; h, dh (B, H) sorted; y, Hs, As, dG (T, B, H) where As is the
activated output; gh, dgs (B, H) workspaces (dgs (2, B, H) in the parallel
BPTT, whose forward keeps h in hbuf (2, B, H)).  relu selects the activation.
The one-thread loops' step product takes its form as lstm.py says (w_hh, or
w_hhT in BPTT, is None in the axpy form).
The loops by units run the pointwise code over hidden units [k0, k1)
(_fwd_units, _bwd_units; the one-thread BPTT too); the forwards on whole
rows (one thread, by rows) and the BPTT by rows run _fwd_rows and
_bwd_rows; lstm.py and parallel.py describe the scheme.
"""
import numpy as np
from numba import njit, prange

from .activations import tanh_
from .blas import split
from .common import JIT, JIT_PAR, inner, inner_inline, inner_par, after_loop_grads, finished_rows
from .gemm import mm_nt
from .packed import reversed_at, step_product, step_product_range
from .spin import part_started
from .parallel import (PROJECT_BEFORE, after_loop_grads_par, help_grads, help_loop_role, help_progress, help_project,
                       help_projected, bias_sums_buf, copy_rows,
                       grads_own_rows, input_projection, project_own_rows, put_rows, rows_of,
                       take_rows, zero_bias_sums)


@inner
def _fwd_units(t, n, k0, k1, hin, hout, xg, gh, bias, perm, relu, training, y, Hs, As):
    """Pointwise forward of step t for sorted rows [0, n), units [k0, k1);
    gh holds h_prev @ W_hh^T.  Row views start at k0 (see lstm._fwd_units)."""
    H = hin.shape[1]
    m = k1 - k0
    bs = bias[k0:]
    zero = y.dtype.type(0)
    if H <= 0:
        return
    for j in range(n):
        b = perm[j]
        xr = xg[t, b, k0:]
        gr = gh[j, k0:]
        hi = hin[j, k0:]
        ho = hout[j, k0:]
        yr = y[t, b, k0:]
        if training:
            sh = Hs[t, b, k0:]
            for k in range(m):
                sh[k] = hi[k]
        if relu:
            for k in range(m):
                a = xr[k] + gr[k] + bs[k]
                v = a if a > zero else zero
                ho[k] = v
                yr[k] = v
        else:
            for k in range(m):
                v = tanh_(xr[k] + gr[k] + bs[k])
                ho[k] = v
                yr[k] = v
        if training:
            sa = As[t, b, k0:]
            for k in range(m):
                sa[k] = ho[k]
    finished_rows(t, n, k0, k1, perm, training, y, Hs)


@inner_inline
def _fwd_rows(t, n, xg, gp, bias, hp, perm, relu, training, y, Hs, As):
    """The pointwise forward of a by-rows part's running rows [0, n) at
    step t (gp holds their h_prev @ W_hh^T; h_prev in hp, overwritten):
    _fwd_units on 2-D indices, without its row views, whose reference
    counts cost ~20 ns each, ~100 ns a row (lstm._cells_rows)."""
    H = hp.shape[1]
    zero = y.dtype.type(0)
    if H <= 0:
        return      # never taken; see lstm._fwd_units
    for j in range(n):
        b = perm[j]
        if training:
            for k in range(H):
                Hs[t, b, k] = hp[j, k]
        if relu:
            for k in range(H):
                a = xg[t, b, k] + gp[j, k] + bias[k]
                v = a if a > zero else zero
                hp[j, k] = v
                y[t, b, k] = v
        else:
            for k in range(H):
                v = tanh_(xg[t, b, k] + gp[j, k] + bias[k])
                hp[j, k] = v
                y[t, b, k] = v
        if training:
            for k in range(H):
                As[t, b, k] = hp[j, k]
    finished_rows(t, n, 0, H, perm, training, y, Hs)


@inner
def _bwd_rows(t, n, dy, dhp, As, buf, dG, perm, relu, dybm):
    """The pointwise BPTT of a by-rows part's running rows [0, n) at step t
    (_bwd_units on 2-D indices): the pre-activation gradient to buf (the
    part's rows) and to dG[t] (original order); the part's rows [n, B)
    that no longer run get zero.  dybm: dy is batch-major, (B, T, H)
    (see lstm.lstm_backward_rows_part)."""
    H = dhp.shape[1]
    one = dy.dtype.type(1)
    zero = dy.dtype.type(0)
    if H <= 0:
        return
    for j in range(n):
        b = perm[j]
        # dy's two leading indices for this row: (b, t) batch-major, else (t, b)
        d0, d1 = (b, t) if dybm else (t, b)
        if relu:
            for k in range(H):
                v = (dhp[j, k] + dy[d0, d1, k]) if As[t, b, k] > zero else zero
                buf[j, k] = v
                dG[t, b, k] = v
        else:
            for k in range(H):
                a = As[t, b, k]
                v = (dhp[j, k] + dy[d0, d1, k]) * (one - a * a)
                buf[j, k] = v
                dG[t, b, k] = v
    for j in range(n, perm.shape[0]):
        b = perm[j]
        for k in range(H):
            dG[t, b, k] = 0


@inner
def _bwd_units(t, n, k0, k1, dy, dh, As, buf, dG, perm, relu, ident):
    """Pointwise BPTT of step t for sorted rows [0, n), units [k0, k1): the
    pre-activation gradient to buf (sorted rows; dG[t] itself when ident,
    else also copied to dG[t] in original order); rows [n, B) get zero."""
    B = perm.shape[0]       # the rows perm covers (see lstm._fwd_units)
    H = dh.shape[1]
    m = k1 - k0
    one = dy.dtype.type(1)
    zero = dy.dtype.type(0)
    if H <= 0:
        return
    for j in range(n):
        b = perm[j]
        dyr = dy[t, b, k0:]
        sa = As[t, b, k0:]
        dhj = dh[j, k0:]
        dgr = buf[j, k0:]
        if relu:
            for k in range(m):
                dgr[k] = (dhj[k] + dyr[k]) if sa[k] > zero else zero
        else:
            for k in range(m):
                a = sa[k]
                dgr[k] = (dhj[k] + dyr[k]) * (one - a * a)
        if not ident:
            # an element loop, not a slice-to-slice copy (see lstm._bwd_units)
            dgo = dG[t, b, k0:]
            for k in range(m):
                dgo[k] = dgr[k]
    for j in range(n, B):
        dG[t, perm[j], k0:k1] = 0


# ---------------------------------------------------------------- one thread

@njit(**JIT)
def rnn_forward(x2, w_ih, xg, w_hh, bias, h, perm, nb, reverse, relu, training, y, Hs, As, gh, axpyT, blasT,
                ctl, rows):
    """The one-thread forward: per step the recurrent product into gh,
    then the cell on whole rows (_fwd_rows, as the loops by rows)."""
    T, B = xg.shape[0], xg.shape[1]
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
        _fwd_rows(t, n, xg, gh, bias, h, perm, relu, training, y, Hs, As)


@njit(**JIT)
def rnn_backward(dy, w_hhT, dh, perm, nb, reverse, relu, ident, Hs, As, dG, dgs,
                 x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, axpyT, blasT, ctl):
    """The one-thread BPTT; ctl: see lstm.lstm_backward."""
    T, B = dy.shape[0], dy.shape[1]
    H = dh.shape[1]
    for s in range(T):
        t = s if reverse else T - 1 - s
        n = nb[t]
        buf = dG[t] if ident else dgs
        _bwd_units(t, n, 0, H, dy, dh, As, buf, dG, perm, relu, ident)
        if n > 0:
            mm_nt(buf[:n], w_hhT, dh[:n], axpyT, blasT)
        if ctl is not None:
            help_progress(ctl, s)

    # x2 None: the caller runs these GEMMs itself, on its threads
    # (numba_cpu.AFTER_LOOP_THREADS_MIN_MACS); Numba then compiles them out
    if x2 is not None:
        T_B = T * B
        after_loop_grads(dG.reshape((T_B, dG.shape[2])), dG.reshape((T_B, dG.shape[2])), x2, Hs.reshape((T_B, H)),
                         w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh)


@njit(**JIT)
def rnn_forward_helped_part(i, nth, ctl, rows, x2, w_ih, xg, w_hh, bias, h, perm, nb, reverse, relu, training,
                            y, Hs, As, gh, axpyT, blasT):
    """Part i of nth (2) of rnn_forward_helped: the loop if it arrives
    first, else projection chunks (parallel.py, the forward's helper)."""
    if help_loop_role(ctl):
        rnn_forward(x2, w_ih, xg, w_hh, bias, h, perm, nb, reverse, relu, training, y, Hs, As, gh, axpyT,
                    blasT, ctl, rows)
    else:
        help_project(ctl, rows, reverse, x2, w_ih, xg.reshape((xg.shape[0] * xg.shape[1], xg.shape[2])))


@njit(**JIT_PAR)
def rnn_forward_helped(nth, ctl, rows, x2, w_ih, xg, w_hh, bias, h, perm, nb, reverse, relu, training, y, Hs,
                       As, gh, axpyT, blasT):
    """rnn_forward with a helper: the input projection in chunks on both
    parts, the loop on one (parallel.py); ctl zeroed, HELP_CTL_SIZE + the
    chunk count.  Where the region's team has one thread, its parts run
    in turn and the first does everything."""
    for i in prange(nth):
        rnn_forward_helped_part(np.int64(i), nth, ctl, rows, x2, w_ih, xg, w_hh, bias, h, perm, nb, reverse,
                                relu, training, y, Hs, As, gh, axpyT, blasT)


@njit(**JIT)
def rnn_backward_helped_part(i, nth, ctl, rows, dy, w_hhT, dh, perm, nb, reverse, relu, ident, Hs, As,
                             dG, dgs, x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own, axpyT, blasT):
    """Part i of nth (2) of rnn_backward_helped: the loop if it arrives
    first, then the tasks after it (parallel.py, a helper beside the
    one-thread BPTT)."""
    T, B = dy.shape[0], dy.shape[1]
    if help_loop_role(ctl):
        rnn_backward(dy, w_hhT, dh, perm, nb, reverse, relu, ident, Hs, As, dG, dgs, None, w_ih, dx2, dw_ih,
                     dw_hh, db_ih, db_hh, axpyT, blasT, ctl)
    TB = T * B
    help_grads(ctl, T, B, rows, reverse, dG.reshape((TB, dG.shape[2])), dG.reshape((TB, dG.shape[2])), x2,
               Hs.reshape((TB, dh.shape[1])), w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own)


@njit(**JIT_PAR)
def rnn_backward_helped(nth, ctl, rows, dy, w_hhT, dh, perm, nb, reverse, relu, ident, Hs, As, dG, dgs,
                        x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own, axpyT, blasT):
    """rnn_backward with a helper (parallel.py, a helper beside the
    one-thread BPTT): one region of nth parts (2), every gradient
    written, the GEMMs after the loop included; ctl zeroed, HELP_CTL_SIZE.
    Where the region's team has one thread, its parts run in turn and the
    first does everything."""
    for i in prange(nth):
        rnn_backward_helped_part(np.int64(i), nth, ctl, rows, dy, w_hhT, dh, perm, nb, reverse, relu,
                                 ident, Hs, As, dG, dgs, x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own,
                                 axpyT, blasT)


# ---------------------------------------------------------------- threads

@inner
def _fwd_step(p, parts, t, n, cur, nxt, w_hh, wp, gh, xg, bias, perm, relu, training, y, Hs, As):
    """Step t for block p of `parts` blocks of hidden units (see lstm._fwd_step)."""
    H = cur.shape[1]
    k0, k1 = split(H, parts, p, 8)
    if n > 0:
        step_product_range(cur[:n], wp, w_hh, gh[:n], k0, k1)
    _fwd_units(t, n, k0, k1, cur, nxt, xg, gh, bias, perm, relu, training, y, Hs, As)


@inner
def _bwd_step(p, parts, t, n, nprev, prev, w_hhT, wp, dy, dh, As, buf, dG, perm, relu, ident):
    """BPTT step t for block p of `parts` blocks of hidden units (see lstm._bwd_step)."""
    H = dh.shape[1]
    k0, k1 = split(H, parts, p, 8)
    if nprev > 0:
        step_product_range(prev[:nprev], wp, w_hhT, dh[:nprev], k0, k1)
    if t >= 0:
        _bwd_units(t, n, k0, k1, dy, dh, As, buf, dG, perm, relu, ident)


@inner_par
def _fwd_steps(parts, t, n, cur, nxt, w_hh, wp, gh, xg, bias, perm, relu, training, y, Hs, As):
    """One fork/join: _fwd_step for every block of units, one block per
    thread (see lstm._fwd_steps for why the regions and indices look so)."""
    for p in prange(parts):
        _fwd_step(np.int64(p), parts, t, n, cur, nxt, w_hh, wp, gh, xg, bias, perm, relu, training, y, Hs, As)


@inner_par
def _bwd_steps(parts, t, n, nprev, prev, w_hhT, wp, dy, dh, As, buf, dG, perm, relu, ident):
    """One fork/join: _bwd_step for every block of units, one block per thread."""
    for p in prange(parts):
        _bwd_step(np.int64(p), parts, t, n, nprev, prev, w_hhT, wp, dy, dh, As, buf, dG, perm, relu, ident)


@njit(**JIT)
def rnn_forward_par(x2, w_ih, xg, w_hh, wp, bias, hbuf, perm, nb, reverse, relu, training, y, Hs, As, gh, nth, parts):
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
            _fwd_steps(parts, t, n, cur, nxt, w_hh, wp, gh, xg, bias, perm, relu, training, y, Hs, As)
        else:
            _fwd_step(p0, p1, t, n, cur, nxt, w_hh, wp, gh, xg, bias, perm, relu, training, y, Hs, As)


@njit(**JIT)
def rnn_backward_par(dy, w_hhT, wp, dh, perm, nb, reverse, relu, ident, Hs, As, dG, dgs,
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
            buf = dG[t] if ident else dgs[s % 2]
        if parts > 1:
            _bwd_steps(parts, t, n, nprev, prev, w_hhT, wp, dy, dh, As, buf, dG, perm, relu, ident)
        else:
            _bwd_step(p0, p1, t, n, nprev, prev, w_hhT, wp, dy, dh, As, buf, dG, perm, relu, ident)
        nprev = n
        prev = buf

    # x2 None: the caller runs these GEMMs (torch's BLAS, numba_cpu.TORCH_AFTER);
    # Numba then compiles them out
    if x2 is not None:
        T_B = T * B
        after_loop_grads_par(dG.reshape((T_B, dG.shape[2])), dG.reshape((T_B, dG.shape[2])), x2,
                             Hs.reshape((T_B, H)), w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, nth, own)


# ---------------------------------------------------------------- threads, by rows

@njit(**JIT)
def rnn_forward_rows_part(i, nth, xg, w_hh, wp, bias, h, perm, nb, reverse, relu, training, y, Hs, As,
                          x2, w_ih, project):
    """Part i of nth of the forward time loop by rows (see
    lstm.lstm_forward_rows_part)."""
    part_started(i)
    if project != PROJECT_BEFORE:   # this part's own rows of the input projection
        project_own_rows(i, nth, x2, w_ih, xg, perm, nb, project)
    T = xg.shape[0]
    H = h.shape[1]
    hp = take_rows(h, i, nth)
    pp = take_rows(perm, i, nth)
    gp = np.empty((pp.shape[0], H), h.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        n = rows_of(nb[t], i, nth)
        if n > 0:
            step_product(hp[:n], wp, w_hh, gp[:n], reversed_at(s))
        _fwd_rows(t, n, xg, gp, bias, hp, pp, relu, training, y, Hs, As)
    put_rows(hp, h, i, nth)


@njit(**JIT)
def rnn_backward_rows_part(i, nth, w_hhT, wp, dy, dh, perm, nb, reverse, relu, As, dG,
                           x2, Hs, w_ih, dx, dwi, dwh, dbi, dbh, bsum, dybm):
    """Part i of nth of the BPTT loop by rows (see lstm.lstm_forward_rows_part).
    bsum (nth, 1, H), where not None: part i's running bias sums; dybm:
    dy (B, T, H), batch-major (see lstm.lstm_backward_rows_part for both)."""
    part_started(i)
    T = dy.shape[1] if dybm else dy.shape[0]
    H = dh.shape[1]
    dhp = take_rows(dh, i, nth)
    pp = take_rows(perm, i, nth)
    buf = np.empty((pp.shape[0], H), dh.dtype)
    tmp = np.empty(H, dh.dtype)
    if bsum is not None:
        zero_bias_sums(bsum, i)
    for s in range(T):
        t = s if reverse else T - 1 - s
        n = rows_of(nb[t], i, nth)
        _bwd_rows(t, n, dy, dhp, As, buf, dG, pp, relu, dybm)
        if bsum is not None:
            bias_sums_buf(bsum[i, 0], tmp, buf, n)
        if n > 0:
            step_product(buf[:n], wp, w_hhT, dhp[:n], reversed_at(s))
    put_rows(dhp, dh, i, nth)
    # this part's rows' share of the gradients after the loop, given its
    # sums; None leaves grads_own_rows out of the compiled part (~1 s of a
    # cold first call that does not use it)
    if dwi is not None:
        grads_own_rows(i, nth, dG, dG, x2, Hs, w_ih, dx, dwi[i], dwh[i], dbi[i], dbh[i], perm, nb)
