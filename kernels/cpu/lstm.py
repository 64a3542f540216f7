"""LSTM time loops (forward and BPTT), fused, for the Numba backend.

Gate order i, f, g, o (PyTorch's):  c' = f*c + i*g,  h' = o*tanh(c').

Batch rows are processed in *sorted* order: the wrapper sorts rows by length,
longest first, so the rows still running at step t are the prefix [0, n_t)
of the working state and the recurrent GEMM touches only them.  perm[j] is
the original batch index of sorted row j.  Everything the caller sees or the
big after-the-loop GEMMs read (xg, y, saved buffers, dG) is in original order.

The forms of each loop share the per-step pointwise code (_fwd_units,
_bwd_units, which work on hidden units [k0, k1); the forward's cell math
itself is _cell_fwd; the forwards on whole rows use _cells_rows instead):
  * lstm_forward / lstm_backward: one thread; per step one recurrent GEMM
    (gemm.mm_nt) then the pointwise pass over all units (the forward's on
    whole rows, _cells_rows);
  * lstm_forward_par / lstm_backward_par: the hidden units are cut into one
    block per thread and each thread does its block's slice of the recurrent
    GEMM and its pointwise pass, one fork/join per step (parallel.py has the
    scheme and why);
  * lstm_forward_helped / lstm_backward_helped: the one-thread loops in a
    region of two parts, the other part helping (the forward's input
    projection in chunks ahead of the loop, the BPTT's dx for the steps
    done and then half of the weight gradients; parallel.py, "a helper
    beside the one-thread BPTT");
  * lstm_forward_rows_part / lstm_backward_rows_part: each thread the whole
    loop on its own batch rows (parallel.py, "by rows");
    lstm_forward_fused_rows_part is that forward with the input projection
    folded into each step's product (numba_cpu.FUSED_STEP_*).

Shapes: xg (T, B, 4H) = x @ w_ih.T (bias not added); w_hh (4H, H) and
w_hhT (H, 4H), C-contiguous (gemm.py reads their rows); bias (4H,) = b_ih + b_hh;
h, c, dh, dc (B, H) sorted working state (the parallel forward keeps h in two
buffers, hbuf (2, B, H)); nb (T,) = rows active at each t; y, Hs, Cs, TCs
(T, B, H), except Hs (T, B, I + H) where the fused forward saves [x_t | h_prev]
(_cells_rows); Gs, dG (T, B, 4H); gh, gws (B, 4H) and tcws (B, H) workspaces;
dgs (B, 4H), or (2, B, 4H) in the parallel BPTT.  The one-thread loops'
step product is gemm.mm_nt(A, Bt, out, axpyT, blasT), with Bt = w_hh in the
forward and w_hhT in BPTT, None in the axpy form; the backend picks the form
once per call (gemm.step_operands), and Numba compiles only that form.
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
                       help_projected, bias_sums_buf, copy_rows,
                       grads_own_rows, input_projection, project_own_rows, put_rows, rows_of,
                       take_rows, zero_bias_sums)


@inner
def _cell_fwd(xr, gr, bs, cj, ho, yr, sg, stc, m, H):
    """The cell's forward on m units of one row, every view starting at the
    first of them: gate pre-activations xr + gr + bs (each gate H further
    on), c updated in place (cj), h to ho and yr, the gate values to sg and
    tanh(c) to stc (the saved buffers, or scratch rows)."""
    if H <= 0:
        return      # never taken; see _fwd_units
    for k in range(m):
        i = sigmoid_(xr[k] + gr[k] + bs[k])
        f = sigmoid_(xr[H + k] + gr[H + k] + bs[H + k])
        g = tanh_(xr[2 * H + k] + gr[2 * H + k] + bs[2 * H + k])
        o = sigmoid_(xr[3 * H + k] + gr[3 * H + k] + bs[3 * H + k])
        cn = f * cj[k] + i * g
        tc = tanh_(cn)
        hn = o * tc
        cj[k] = cn
        ho[k] = hn
        yr[k] = hn
        sg[k] = i
        sg[H + k] = f
        sg[2 * H + k] = g
        sg[3 * H + k] = o
        stc[k] = tc


@inner
def _add_input(t, n, gp, xg, perm):
    """gp[j] += xg[t, perm[j]] for the running rows [0, n): the input's share
    of the gates, added to the step product's before the cell (the
    one-thread forward and the forward by rows)."""
    for j in range(n):
        b = perm[j]
        for k in range(gp.shape[1]):
            gp[j, k] += xg[t, b, k]


@inner_inline
def _cells_rows(t, n, gp, bias, hx, h0, cp, perm, training, y, Hs, Gs, Cs, TCs, sg):
    """The cell's forward for a by-rows part's running rows [0, n) at step
    t: gate pre-activations gp[j] + bias, c in cp[j] (updated), h_prev in
    hx[j, h0:h0 + H] (overwritten with h); rows b = perm[j] of y and, when
    training, of the saved buffers.  Hs saves hx's last Hs.shape[2] columns
    of each row before the cell: h_prev (width H) or, from the fused
    forward, [x_t | h_prev] (width I + H, for one dW GEMM after BPTT).
    Indexed in 2-D, without the row views _fwd_units passes _cell_fwd: a
    row's views cost ~170 ns (their reference counts), which at H = 128
    was 30 % of the cell's time (4.0 against 2.7 ns a unit, one thread),
    and without scratch stores when not training.  Rows [n, B) get y = 0 (and Hs = 0).
    sg (2, 4H) when training: the saved rows go out by streaming stores
    (stream.py), the gate values and tanh(c) through sg's two rows; else
    (0, 0), the saved arrays written in the cell's loop."""
    H = cp.shape[1]
    w = Hs.shape[2]
    s0 = h0 + H - w
    if H <= 0 or h0 < 0 or s0 < 0:
        return      # never taken; see _fwd_units (h0 + k too must be provably >= 0)
    streamed = training and sg.shape[0] == 2 and sg.shape[1] == 4 * H
    for j in range(n):
        b = perm[j]
        if streamed:
            # the cell written out a second time, its gate values and
            # tanh(c) into sg's rows (for put_row) instead of the saved
            # arrays: one loop through sg for both ran the plain-store
            # training cell at 4.72-4.79 against 4.09-4.27 ns a unit
            put_row(Hs, t, b, hx, j, s0, w)
            put_row(Cs, t, b, cp, j, 0, H)
            for k in range(H):
                i = sigmoid_(gp[j, k] + bias[k])
                f = sigmoid_(gp[j, H + k] + bias[H + k])
                g = tanh_(gp[j, 2 * H + k] + bias[2 * H + k])
                o = sigmoid_(gp[j, 3 * H + k] + bias[3 * H + k])
                cn = f * cp[j, k] + i * g
                tc = tanh_(cn)
                hn = o * tc
                sg[0, k] = i
                sg[0, H + k] = f
                sg[0, 2 * H + k] = g
                sg[0, 3 * H + k] = o
                sg[1, k] = tc
                cp[j, k] = cn
                hx[j, h0 + k] = hn
                y[t, b, k] = hn
            put_row(Gs, t, b, sg, 0, 0, 4 * H)
            put_row(TCs, t, b, sg, 1, 0, H)
        elif training:
            # the state saved first, in loops of their own: with those
            # stores in it the cell's loop ran scalar (26.6 ns a unit)
            for k in range(w):
                Hs[t, b, k] = hx[j, s0 + k]
            for k in range(H):
                Cs[t, b, k] = cp[j, k]
            for k in range(H):
                i = sigmoid_(gp[j, k] + bias[k])
                f = sigmoid_(gp[j, H + k] + bias[H + k])
                g = tanh_(gp[j, 2 * H + k] + bias[2 * H + k])
                o = sigmoid_(gp[j, 3 * H + k] + bias[3 * H + k])
                cn = f * cp[j, k] + i * g
                tc = tanh_(cn)
                hn = o * tc
                Gs[t, b, k] = i
                Gs[t, b, H + k] = f
                Gs[t, b, 2 * H + k] = g
                Gs[t, b, 3 * H + k] = o
                TCs[t, b, k] = tc
                cp[j, k] = cn
                hx[j, h0 + k] = hn
                y[t, b, k] = hn
        else:
            # the gates written out again, not through a helper: a helper
            # returning the four values (an @inner function) left this loop
            # scalar, 32 against 2.6 ns a unit (tests/test_vectorised.py)
            for k in range(H):
                i = sigmoid_(gp[j, k] + bias[k])
                f = sigmoid_(gp[j, H + k] + bias[H + k])
                g = tanh_(gp[j, 2 * H + k] + bias[2 * H + k])
                o = sigmoid_(gp[j, 3 * H + k] + bias[3 * H + k])
                cn = f * cp[j, k] + i * g
                hn = o * tanh_(cn)
                cp[j, k] = cn
                hx[j, h0 + k] = hn
                y[t, b, k] = hn
    finished_rows(t, n, 0, H, perm, False, y, Hs)
    if training:    # the rows no longer running: saved zeros, read by dW's GEMM against dG = 0
        for j in range(n, perm.shape[0]):
            b = perm[j]
            for k in range(w):
                Hs[t, b, k] = 0


@inner
def _fwd_units(t, n, k0, k1, hin, hout, c, xg, gh, bias, perm, training, y, Hs, Gs, Cs, TCs, gws, tcws):
    """Pointwise forward of step t for sorted rows [0, n) and units [k0, k1):
    gh holds h_prev @ W_hh^T; reads h_prev from hin, writes h to hout (may be
    hin).  Rows [n, B) get y = 0 (and Hs = 0) on these units.

    Every row view starts at unit k0 and the loops run over range(k1 - k0).
    Numba wraps negative indices with a select; LLVM drops the selects (and
    can then vectorise) only where it can prove the index non-negative, so
    the gate offsets H + k need the `H <= 0` exit in front of the loop:
    without it this pass ran 4-6x slower (47-67 against 12 ns per unit).
    _bwd_units and the other modes' pointwise code do the same."""
    H = hin.shape[1]
    m = k1 - k0
    bs = bias[k0:]
    if H <= 0:
        return      # never taken; see the docstring
    for j in range(n):
        b = perm[j]
        xr = xg[t, b, k0:]
        gr = gh[j, k0:]
        hi = hin[j, k0:]
        ho = hout[j, k0:]
        cj = c[j, k0:]
        yr = y[t, b, k0:]
        # The gate values always go somewhere (the saved buffers, or a
        # scratch row when not training): a branch inside the k loop
        # would keep LLVM from vectorising it.
        sg = gws[j, k0:]
        stc = tcws[j, k0:]
        if training:
            sg = Gs[t, b, k0:]
            stc = TCs[t, b, k0:]
            sh = Hs[t, b, k0:]
            sc = Cs[t, b, k0:]
            for k in range(m):
                sh[k] = hi[k]
                sc[k] = cj[k]
        _cell_fwd(xr, gr, bs, cj, ho, yr, sg, stc, m, H)
    finished_rows(t, n, k0, k1, perm, training, y, Hs)


@inner
def _bwd_units(t, n, k0, k1, dy, dh, dc, Gs, Cs, TCs, buf, dG, perm, ident, dybm):
    """Pointwise BPTT of step t for sorted rows [0, n) and units [k0, k1):
    dh holds the gradient from step t+1's recurrence; writes the four gate
    gradients of these units to buf (sorted rows; dG[t] itself when ident)
    and to dG[t] in original order, zero for rows [n, B).  Row views start
    at k0 (see _fwd_units for why, and for the H <= 0 exit).  dybm: dy
    is batch-major, (B, T, H), read as it lies (see lstm_backward_rows_part)."""
    B = perm.shape[0]       # the rows perm covers (see _fwd_units)
    H = dh.shape[1]
    m = k1 - k0
    one = dy.dtype.type(1)
    if H <= 0:
        return
    for j in range(n):
        b = perm[j]
        dyr = dy[b, t, k0:] if dybm else dy[t, b, k0:]
        sg = Gs[t, b, k0:]
        sc = Cs[t, b, k0:]
        stc = TCs[t, b, k0:]
        dhj = dh[j, k0:]
        dcj = dc[j, k0:]
        dgr = buf[j, k0:]
        for k in range(m):
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
            # element loops, not slice-to-slice copies: those compile Numba's
            # shape-mismatch error path (~2 s of the cold compile)
            dgo = dG[t, b, k0:]
            for q in range(4):
                for k in range(m):
                    dgo[q * H + k] = dgr[q * H + k]
    for j in range(n, B):
        b = perm[j]
        for q in range(4):
            dG[t, b, q * H + k0:q * H + k1] = 0


# ---------------------------------------------------------------- one thread

@njit(**JIT)
def lstm_forward(x2, w_ih, xg, w_hh, bias, h, c, perm, nb, reverse, training, y, Hs, Gs, Cs, TCs, gh,
                 axpyT, blasT, ctl, rows):
    """The one-thread forward: per step the recurrent product into gh, the
    input's share of the gates added to it, then the cell on whole rows
    (_cells_rows, as the loops by rows).  It ran _fwd_units over all
    units until the fifteenth session; on whole rows, without that pass's
    row views, the kernel alone (float32, the two alternating 300-1500
    times, training) ran 1.12x as fast at (B, T, I, H) = (1, 100, 64, 64)
    (1.18x inference), 1.25x at (3, 63, 32, 40), 1.05x at (16, 50, 128,
    128), level at (64, 20, 256, 512); the GRU's and vanilla RNN's
    one-thread forwards likewise (GRU 1.11-1.17x at the first shape,
    rnn_relu 1.09-1.10x, rnn_tanh 1.02-1.06x)."""
    T, B, GH = xg.shape
    nosg = np.empty((0, 0), h.dtype)     # its calls are small: plain stores (stream.py)
    xg2 = xg.reshape((T * B, GH))
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
        _add_input(t, n, gh, xg, perm)
        _cells_rows(t, n, gh, bias, h, 0, c, perm, training, y, Hs, Gs, Cs, TCs, nosg)


@njit(**JIT)
def lstm_backward(dy, w_hhT, dh, dc, perm, nb, reverse, ident, Hs, Gs, Cs, TCs, dG, dgs,
                  x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, axpyT, blasT, ctl):
    """The one-thread BPTT.  ctl: None, or the helped region's control
    array (parallel.py, a helper beside the one-thread BPTT), where the
    loop publishes its progress after each step."""
    T, B = dy.shape[0], dy.shape[1]
    H = dh.shape[1]
    for s in range(T):
        t = s if reverse else T - 1 - s
        n = nb[t]
        buf = dG[t] if ident else dgs
        _bwd_units(t, n, 0, H, dy, dh, dc, Gs, Cs, TCs, buf, dG, perm, ident, False)
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
def lstm_forward_helped_part(i, nth, ctl, rows, x2, w_ih, xg, w_hh, bias, h, c, perm, nb, reverse, training,
                             y, Hs, Gs, Cs, TCs, gh, axpyT, blasT):
    """Part i of nth (2) of lstm_forward_helped: the loop if it arrives
    first, else projection chunks (parallel.py, the forward's helper)."""
    if help_loop_role(ctl):
        lstm_forward(x2, w_ih, xg, w_hh, bias, h, c, perm, nb, reverse, training, y, Hs, Gs, Cs, TCs, gh,
                     axpyT, blasT, ctl, rows)
    else:
        help_project(ctl, rows, reverse, x2, w_ih, xg.reshape((xg.shape[0] * xg.shape[1], xg.shape[2])))


@njit(**JIT_PAR)
def lstm_forward_helped(nth, ctl, rows, x2, w_ih, xg, w_hh, bias, h, c, perm, nb, reverse, training, y, Hs,
                        Gs, Cs, TCs, gh, axpyT, blasT):
    """lstm_forward with a helper: the input projection in chunks on both
    parts, the loop on one (parallel.py); ctl zeroed, HELP_CTL_SIZE + the
    chunk count.  Where the region's team has one thread, its parts run
    in turn and the first does everything."""
    for i in prange(nth):
        lstm_forward_helped_part(np.int64(i), nth, ctl, rows, x2, w_ih, xg, w_hh, bias, h, c, perm, nb,
                                 reverse, training, y, Hs, Gs, Cs, TCs, gh, axpyT, blasT)


@njit(**JIT)
def lstm_backward_helped_part(i, nth, ctl, rows, dy, w_hhT, dh, dc, perm, nb, reverse, ident, Hs, Gs,
                              Cs, TCs, dG, dgs, x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own, axpyT, blasT):
    """Part i of nth (2) of lstm_backward_helped: the loop if it arrives
    first, then the tasks after it (parallel.py, a helper beside the
    one-thread BPTT)."""
    T, B = dy.shape[0], dy.shape[1]
    if help_loop_role(ctl):
        lstm_backward(dy, w_hhT, dh, dc, perm, nb, reverse, ident, Hs, Gs, Cs, TCs, dG, dgs, None, w_ih, dx2,
                      dw_ih, dw_hh, db_ih, db_hh, axpyT, blasT, ctl)
    TB = T * B
    help_grads(ctl, T, B, rows, reverse, dG.reshape((TB, dG.shape[2])), dG.reshape((TB, dG.shape[2])), x2,
               Hs.reshape((TB, dh.shape[1])), w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own)


@njit(**JIT_PAR)
def lstm_backward_helped(nth, ctl, rows, dy, w_hhT, dh, dc, perm, nb, reverse, ident, Hs, Gs, Cs, TCs,
                         dG, dgs, x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own, axpyT, blasT):
    """lstm_backward with a helper (parallel.py, a helper beside the
    one-thread BPTT): one region of nth parts (2), every gradient
    written, the GEMMs after the loop included; ctl zeroed, HELP_CTL_SIZE.
    Where the region's team has one thread, its parts run in turn and the
    first does everything."""
    for i in prange(nth):
        lstm_backward_helped_part(np.int64(i), nth, ctl, rows, dy, w_hhT, dh, dc, perm, nb, reverse,
                                  ident, Hs, Gs, Cs, TCs, dG, dgs, x2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh,
                                  own, axpyT, blasT)


# ---------------------------------------------------------------- threads

@inner
def _fwd_step(p, parts, t, n, cur, nxt, w_hh, wp, gh, c, xg, bias, perm, training, y, Hs, Gs, Cs, TCs, gws, tcws):
    """Step t for block p of `parts` blocks of hidden units: its columns of
    the recurrent GEMM (all four gates), then its pointwise pass."""
    H = cur.shape[1]
    k0, k1 = split(H, parts, p, 8)
    if n > 0:
        for q in range(4):
            step_product_range(cur[:n], wp, w_hh, gh[:n], q * H + k0, q * H + k1)
    _fwd_units(t, n, k0, k1, cur, nxt, c, xg, gh, bias, perm, training, y, Hs, Gs, Cs, TCs, gws, tcws)


@inner
def _bwd_step(p, parts, t, n, nprev, prev, w_hhT, wp, dy, dh, dc, Gs, Cs, TCs, buf, dG, perm, ident):
    """BPTT step t for block p of `parts` blocks of hidden units: dh of these
    units from all of the previous step's gate gradients (prev, nprev rows),
    then their pointwise pass (none when t < 0: the final dh0 product)."""
    H = dh.shape[1]
    k0, k1 = split(H, parts, p, 8)
    if nprev > 0:
        step_product_range(prev[:nprev], wp, w_hhT, dh[:nprev], k0, k1)
    if t >= 0:
        _bwd_units(t, n, k0, k1, dy, dh, dc, Gs, Cs, TCs, buf, dG, perm, ident, False)


@inner_par
def _fwd_steps(parts, t, n, cur, nxt, w_hh, wp, gh, c, xg, bias, perm, training, y, Hs, Gs, Cs, TCs, gws, tcws):
    """One fork/join: _fwd_step for every block of units, one block per thread.
    The parallel regions are these small functions rather than the whole
    loop, and the one-part calls pass p0, p1 (int64) rather than the
    literals 0, 1, which Numba would compile as another specialisation of
    the whole step; for the same reason the block index, which prange makes
    unsigned, is cast to int64.  All of it keeps the cold compile shorter."""
    for p in prange(parts):
        _fwd_step(np.int64(p), parts, t, n, cur, nxt, w_hh, wp, gh, c, xg, bias, perm, training, y, Hs, Gs, Cs, TCs, gws, tcws)


@inner_par
def _bwd_steps(parts, t, n, nprev, prev, w_hhT, wp, dy, dh, dc, Gs, Cs, TCs, buf, dG, perm, ident):
    """One fork/join: _bwd_step for every block of units, one block per thread."""
    for p in prange(parts):
        _bwd_step(np.int64(p), parts, t, n, nprev, prev, w_hhT, wp, dy, dh, dc, Gs, Cs, TCs, buf, dG, perm, ident)


@njit(**JIT)
def lstm_forward_par(x2, w_ih, xg, w_hh, wp, bias, hbuf, c, perm, nb, reverse, training, y, Hs, Gs, Cs, TCs, gh,
                     gws, tcws, nth, parts):
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
            _fwd_steps(parts, t, n, cur, nxt, w_hh, wp, gh, c, xg, bias, perm, training, y, Hs, Gs, Cs, TCs, gws, tcws)
        else:
            _fwd_step(p0, p1, t, n, cur, nxt, w_hh, wp, gh, c, xg, bias, perm, training, y, Hs, Gs, Cs, TCs, gws, tcws)


@njit(**JIT)
def lstm_backward_par(dy, w_hhT, wp, dh, dc, perm, nb, reverse, ident, Hs, Gs, Cs, TCs, dG, dgs,
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
            _bwd_steps(parts, t, n, nprev, prev, w_hhT, wp, dy, dh, dc, Gs, Cs, TCs, buf, dG, perm, ident)
        else:
            _bwd_step(p0, p1, t, n, nprev, prev, w_hhT, wp, dy, dh, dc, Gs, Cs, TCs, buf, dG, perm, ident)
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
def lstm_forward_rows_part(i, nth, xg, w_hh, wp, bias, h, c, perm, nb, reverse, training, y, Hs, Gs, Cs, TCs,
                           x2, w_ih, project, stream):
    """Part i of nth of the forward time loop by rows (parallel.py, "by
    rows"): sorted rows i, i + nth, ... into a working state of its own, the
    whole loop on them (its recurrent GEMM against all of W_hh, its
    pointwise pass over whole rows), the final state back into h, c.  The
    caller runs the nth parts at once, one per thread, after the input
    projection (xg) is complete (project = parallel.PROJECT_BEFORE), or each
    part first computes its own rows of it (x2, w_ih; parallel.project_own_rows).
    w_hh None: wp holds every column (numba_cpu.PANELS_ONLY_ROWS); the BPTT
    parts take w_hhT None the same way.  stream: the saved rows go out by
    streaming stores (stream.py; numba_cpu.STREAM_SAVES_*)."""
    part_started(i)
    if project != PROJECT_BEFORE:   # this part's own rows of the input projection
        project_own_rows(i, nth, x2, w_ih, xg, perm, nb, project)
    T = xg.shape[0]
    H = h.shape[1]
    GH = xg.shape[2]
    hp = take_rows(h, i, nth)
    cp = take_rows(c, i, nth)
    pp = take_rows(perm, i, nth)
    m = pp.shape[0]
    gp = np.empty((m, GH), h.dtype)
    sg = np.empty((2, GH) if stream and training else (0, 0), h.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        n = rows_of(nb[t], i, nth)      # sorted rows run longest first: a prefix
        if n > 0:
            step_product(hp[:n], wp, w_hh, gp[:n], reversed_at(s))
        _add_input(t, n, gp, xg, pp)        # the input's share of the gates, then the cell
        _cells_rows(t, n, gp, bias, hp, 0, cp, pp, training, y, Hs, Gs, Cs, TCs, sg)
    if sg.shape[0]:
        fence()
    put_rows(hp, h, i, nth)
    put_rows(cp, c, i, nth)


@njit(**JIT)
def lstm_forward_fused_rows_part(i, nth, x, w_cat, wp, bias, h, c, perm, nb, reverse, training, y, Hs, Gs, Cs,
                                 TCs, xbm, stream):
    """Part i of nth of the forward by rows with the input projection in the
    step (numba_cpu.FUSED_STEP_*): per step one product [x_t | h] @ w_cat.T,
    w_cat = [W_ih | W_hh] (4H, I + H), for its running rows, instead of a
    projection over all T*B rows before the loop and a product with W_hh
    in it.  The same multiply-adds, but K = I + H gives the product longer
    rows to amortise its horizontal sums over, and no (T, B, 4H) projection
    is written and read back.  The row's working vector xh = [x_t | h]
    holds the state: the pointwise pass writes h into its tail.  x (T, B, I)
    in the caller's row order; the rest as in lstm_forward_rows_part.
    w_cat None: wp holds every column (packed.pack_rows2).  xbm: x is
    (B, T, I), batch-major (a batch_first caller's input, read as it
    lies: each step reads its rows' x_t into xh anyway, so no transposed
    copy of x is made first).  stream: as in lstm_forward_rows_part."""
    part_started(i)
    I = x.shape[2]
    T = x.shape[1] if xbm else x.shape[0]
    H = h.shape[1]
    GH = bias.shape[0]
    pp = take_rows(perm, i, nth)
    m = pp.shape[0]
    dt = h.dtype
    xh = np.empty((m, I + H), dt)
    for r in range(m):
        for k in range(H):
            xh[r, I + k] = h[i + r * nth, k]
    cp = take_rows(c, i, nth)
    gp = np.empty((m, GH), dt)
    sg = np.empty((2, GH) if stream and training else (0, 0), dt)
    if H <= 0:
        return      # never taken (see _fwd_units)
    for s in range(T):
        t = T - 1 - s if reverse else s
        n = rows_of(nb[t], i, nth)
        for j in range(n):
            b = pp[j]
            x0, x1 = (b, t) if xbm else (t, b)     # indices, not a row view (see _cells_rows)
            for k in range(I):
                xh[j, k] = x[x0, x1, k]
        if n > 0:
            step_product(xh[:n], wp, w_cat, gp[:n], reversed_at(s))
        _cells_rows(t, n, gp, bias, xh, I, cp, pp, training, y, Hs, Gs, Cs, TCs, sg)
    if sg.shape[0]:
        fence()
    for r in range(m):
        for k in range(H):
            h[i + r * nth, k] = xh[r, I + k]
    put_rows(cp, c, i, nth)


@njit(**JIT)
def lstm_backward_rows_part(i, nth, w_hhT, wp, dy, dh, dc, perm, nb, reverse, Gs, Cs, TCs, dG,
                            x2, Hs, w_ih, dx, dwi, dwh, dbi, dbh, bsum, dybm, stream):
    """Part i of nth of the BPTT loop by rows (see lstm_forward_rows_part).
    The GEMMs after the loop: the caller runs them as a region of their own
    (parallel.after_loop_part), with dwi, dwh, dbi, dbh None, or each part
    computes its own rows' share of them over their valid steps
    (parallel.grads_own_rows) into sums of its own dwi[i], dwh[i], dbi[i],
    dbh[i], which the caller adds up.  bsum (nth, 1, 4H), where not None:
    part i sums its rows' gate gradients into bsum[i, 0] step by step (the
    bias gradient's share, from its scratch rows: parallel.bias_sums_buf).
    dybm: dy is (B, T, H), batch-major (a batch_first caller's gradient,
    read as it lies, no transposed copy made), else (T, B, H).  stream: dG's rows go
    out by streaming stores (stream.py) from the part's scratch rows."""
    part_started(i)
    T = dy.shape[1] if dybm else dy.shape[0]
    H = dh.shape[1]
    dhp = take_rows(dh, i, nth)
    dcp = take_rows(dc, i, nth)
    pp = take_rows(perm, i, nth)
    buf = np.empty((pp.shape[0], dG.shape[2]), dh.dtype)
    tmp = np.empty(dG.shape[2], dh.dtype)
    if bsum is not None:
        zero_bias_sums(bsum, i)
    for s in range(T):
        t = s if reverse else T - 1 - s
        n = rows_of(nb[t], i, nth)
        _bwd_units(t, n, 0, H, dy, dhp, dcp, Gs, Cs, TCs, buf, dG, pp, stream, dybm)
        if stream:
            for j in range(n):
                put_row(dG, t, pp[j], buf, j, 0, buf.shape[1])
        if bsum is not None:
            bias_sums_buf(bsum[i, 0], tmp, buf, n)
        if n > 0:
            step_product(buf[:n], wp, w_hhT, dhp[:n], reversed_at(s))
    if stream:
        fence()
    put_rows(dhp, dh, i, nth)
    put_rows(dcp, dc, i, nth)
    # this part's rows' share of the gradients after the loop, given its
    # sums; None leaves grads_own_rows out of the compiled part (~1 s of a
    # cold first call that does not use it)
    if dwi is not None:
        grads_own_rows(i, nth, dG, dG, x2, Hs, w_ih, dx, dwi[i], dwh[i], dbi[i], dbh[i], perm, nb)
