"""The parts of the threaded kernels that every mode shares.

Scheme (the *_par loops in rnn.py, gru.py, lstm.py).  Per time step (when
the caller asks for more than one part: big enough steps), the
hidden units are cut into one block per thread; thread p computes its block's
columns of the recurrent GEMM (for every gate: W_hh's rows of those units,
with gemm._cols, which needs no packing) and then the pointwise update of
those units.  A unit's pointwise update needs only its own gate columns, so
the only synchronisation is the join at the end of each step (the next GEMM
reads all of h).  Because both threads read h_prev while they write h, the
forward keeps h in two buffers and alternates.  BPTT is the same with the
roles turned round: thread p computes dh for its units from all of the
previous step's gate gradients, then its units' gate gradients.

By rows (the *_rows_part functions in rnn.py, gru.py, lstm.py; chosen
where W_hh fits in cache, see numba_cpu.ROWS_*): thread i takes the sorted
batch rows i, i + nth, ... and runs the whole time loop on them, with a
working state of its own, its recurrent GEMM against all of W_hh and its
pointwise pass over whole rows.  Rows never depend on other rows, so
there is one fork/join per call instead of one per step.  Those parts are
plain compiled functions that the backend runs on threads of its own (the
GIL released), not a prange region: Numba compiles the code under a region
several times over, and under this one would be the whole loop.  Sorted
rows run longest first, so each thread's running rows stay a prefix.

The big GEMMs before and after the loop (input projection, dx, dW_ih, dW_hh)
are split into one block of rows per thread, each a one-thread BLAS call
(blas.gemm); the caller holds SciPy's OpenBLAS at one thread for the whole
kernel (fastrnn/_threads.py), because OpenBLAS's idle workers spin on the
cores for a long time after a multi-threaded call and take the core a
Numba thread needs (measured: a step loop ran 1.9x slower right after one
two-thread OpenBLAS GEMM).  In this scheme every core is Numba's.
"""
import numpy as np
from numba import njit, prange

from .blas import gemm, split
from .common import JIT, inner, inner_par, colsum
from .packed import gemm_nn, gemm_tn
from .spin import _load_acquire, _pause, _store_release, fetch_add, part_started


@njit(**JIT)
def project_part(i, nth, x2, w_ih, xg2):
    """Block i of nth of xg2 = x2 @ w_ih.T (rows [r0, r1)): one thread's
    share, for input_projection and for callers running the parts on
    threads of their own (the loops by rows)."""
    part_started(i)
    r0, r1 = split(x2.shape[0], nth, i, 1)
    gemm(x2[r0:r1], False, w_ih, True, xg2[r0:r1], xg2.dtype.type(0))


# How a by-rows part gets its rows of the input projection (the forward
# parts' `project` argument; numba_cpu decides): from a region run before
# the parts, or in the part itself (project_own_rows) as one strided GEMM
# or one GEMM per row.
PROJECT_BEFORE = 0
PROJECT_STRIDED = 1
PROJECT_PER_ROW = 2


@inner
def project_own_rows(i, nth, x2, w_ih, xg, perm, nb, how):
    """A by-rows part's own rows of the input projection, xg[t, b] = x[t, b]
    @ w_ih.T for its batch rows b = perm[i], perm[i + nth], ...: it projects
    what its own loop reads, on its own core, so no separate region runs
    first (see fastrnn/_backends/numba_cpu.py, FUSED_PROJECTION_*).
    PROJECT_STRIDED, for rows in their own order and B a multiple of nth:
    the part's rows are one strided view of x, one GEMM.  PROJECT_PER_ROW:
    one GEMM per row over its valid steps only (a row's padding steps are
    never read)."""
    T, B, GH = xg.shape
    I = x2.shape[1]
    z = xg.dtype.type(0)
    if how == PROJECT_STRIDED:
        R = T * B // nth
        x3 = x2.reshape((R, nth, I))
        xg3 = xg.reshape((R, nth, GH))
        gemm(x3[:, i, :], False, w_ih, True, xg3[:, i, :], z)
        return
    xt = x2.reshape((T, B, I))
    for j in range(i, B, nth):
        b = perm[j]
        L = valid_steps(nb, j)
        if L > 0:
            gemm(xt[:L, b, :], False, w_ih, True, xg[:L, b, :], z)


@inner
def valid_steps(nb, j):
    """The length of sorted row j: the steps t at which it still runs
    (nb[t] > j), which are the first ones, t < length."""
    L = 0
    for t in range(nb.shape[0]):
        if nb[t] > j:
            L += 1
    return L


@inner_par
def input_projection(x2, w_ih, xg2, nth):
    """xg2 = x2 @ w_ih.T, one block of rows per thread."""
    for p in prange(nth):
        # int64, like the step regions' block index (prange's is unsigned):
        # one specialisation for every caller
        project_part(np.int64(p), nth, x2, w_ih, xg2)


@inner
def copy_rows(src, dst, n, nprev):
    """dst[n:nprev] = src[n:nprev] (no-op when n >= nprev); a plain loop, which
    compiles in a fraction of the time of the slice assignment."""
    for j in range(n, nprev):
        for k in range(src.shape[1]):
            dst[j, k] = src[j, k]


@inner
def grads_own_rows(i, nth, dG, dGh, x2, Hs, w_ih, dx, dwi, dwh, dbi, dbh, perm, nb):
    """A by-rows BPTT part's own rows' share of the gradients after the loop,
    computed on its own core once its loop is done, over each row's valid
    steps only (numba_cpu uses it where the batch has padding, see
    FUSED_GRADS_*; the region after the parts, after_loop_part, multiplies
    the padding too): for its rows b = perm[i], perm[i + nth], ..., of length
    L, dx[:L, b] = dG[:L, b] @ w_ih and dx[L:, b] = 0, and the rows' terms
    of dW_ih = dG^T x, dW_hh = dGh^T h_prev and the bias gradients as sums
    of its own, dwi (GH, I), dwh (GH, H), dbi, dbh (GH,), which the caller
    adds up over the parts.  dG, dGh (T, B, GH) in the caller's row order;
    x2 (T*B, I) (its padding never read, so it needs no zeroing); Hs
    (T, B, H); dx (T, B, I).  One GEMM per row and product."""
    T, B, GH = dG.shape
    I = x2.shape[1]
    xt = x2.reshape((T, B, I))
    z = dx.dtype.type(0)
    one = dx.dtype.type(1)
    # element loops, not slice assignments (see lstm._bwd_units)
    for r in range(GH):
        dbi[r] = 0
        dbh[r] = 0
        for k in range(I):
            dwi[r, k] = 0
        for k in range(dwh.shape[1]):
            dwh[r, k] = 0
    for j in range(i, B, nth):
        b = perm[j]
        L = valid_steps(nb, j)
        for t in range(L, T):
            for k in range(I):
                dx[t, b, k] = 0
        if L == 0:
            continue
        gemm(dG[:L, b, :], False, w_ih, False, dx[:L, b, :], z)
        gemm(dG[:L, b, :], True, xt[:L, b, :], False, dwi, one)
        gemm(dGh[:L, b, :], True, Hs[:L, b, :], False, dwh, one)
        for t in range(L):
            gr = dG[t, b]
            ghr = dGh[t, b]
            for k in range(GH):
                dbi[k] += gr[k]
                dbh[k] += ghr[k]


@inner
def bias_sums_step(acc, tmp, a, t, n, perm):
    """acc += the sum over j in [0, n) of a[t, perm[j]] (a (T, B, G)): a
    by-rows BPTT part's running bias sums, added while the step's gate
    gradients are still in cache.  The step's rows are summed in tmp (G,)
    first, so each total is a sum of T step sums (rounding as of T + n
    terms, not T * n).  Row views, as in common.colsum, so LLVM can tell
    the arrays apart and vectorises."""
    G = acc.shape[0]
    if n <= 0 or G <= 0:
        return
    r0 = a[t, perm[0]]
    for k in range(G):
        tmp[k] = r0[k]
    for j in range(1, n):
        r = a[t, perm[j]]
        for k in range(G):
            tmp[k] += r[k]
    for k in range(G):
        acc[k] += tmp[k]


@inner
def bias_sums_buf(acc, tmp, buf, n):
    """bias_sums_step over the step's rows as they lie in a by-rows BPTT
    part's scratch rows buf[:n] (the same rows in the same order, so the
    same sums), already in L1, and there even where they went to dG by
    streaming stores (not to be read back).  The GRU's dGi, which has no
    scratch rows, takes bias_sums_step."""
    G = acc.shape[0]
    if n <= 0 or G <= 0:
        return
    for k in range(G):
        tmp[k] = buf[0, k]
    for j in range(1, n):
        for k in range(G):
            tmp[k] += buf[j, k]
    for k in range(G):
        acc[k] += tmp[k]


@inner
def zero_bias_sums(bsum, i):
    """Part i's running bias sums bsum[i] (nth, S, G) set to zero."""
    for q in range(bsum.shape[1]):
        for k in range(bsum.shape[2]):
            bsum[i, q, k] = 0


@njit(**JIT)
def after_loop_part(i, nth, dG2, dGh2, x2, Hs2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own):
    """Block i of nth of common.after_loop_grads: its block of rows of dx,
    of rows of dW_ih and dW_hh, and of bias columns.  own: the GEMMs by
    fastrnn's own blocks (packed.gemm_nn, gemm_tn), else by BLAS."""
    part_started(i)
    r0, r1 = split(dG2.shape[0], nth, i, 1)
    g0, g1 = split(dG2.shape[1], nth, i, 8)
    gemm_nn(dG2[r0:r1], w_ih, dx2[r0:r1], own)
    gemm_tn(dG2[:, g0:g1], x2, dw_ih[g0:g1], own)
    gemm_tn(dGh2[:, g0:g1], Hs2, dw_hh[g0:g1], own)
    colsum(dG2, db_ih, g0, g1)
    colsum(dGh2, db_hh, g0, g1)


@njit(**JIT)
def after_loop_part_cat(i, nth, dG2, XH2, w_ih, dx2, dw_cat, dw_ih, dw_hh, db_ih, db_hh, own):
    """after_loop_part where dW_hh's gate gradients are dW_ih's (LSTM,
    vanilla RNN) and the forward saved [x_t | h_prev] rows, XH2
    (T*B, I + H): one GEMM dW_cat = dG^T XH for both weight gradients,
    whose block of rows the part then copies into dw_ih and dw_hh, and
    one column sum for both bias gradients.  One GEMM over N = I + H
    columns packs dG^T once, not twice (LSTM S3, two threads, OpenBLAS:
    8.7 against 9.1-9.4 ms for the two)."""
    part_started(i)
    I = dw_ih.shape[1]
    H = dw_hh.shape[1]
    r0, r1 = split(dG2.shape[0], nth, i, 1)
    g0, g1 = split(dG2.shape[1], nth, i, 8)
    gemm_nn(dG2[r0:r1], w_ih, dx2[r0:r1], own)
    gemm_tn(dG2[:, g0:g1], XH2, dw_cat[g0:g1], own)
    for r in range(g0, g1):
        for k in range(I):
            dw_ih[r, k] = dw_cat[r, k]
        for k in range(H):
            dw_hh[r, k] = dw_cat[r, I + k]
    colsum(dG2, db_ih, g0, g1)
    for r in range(g0, g1):
        db_hh[r] = db_ih[r]


# ---------------------------------------------------------------- a helper beside the one-thread BPTT
# Where the one-thread loops run (a small call: S1), a second thread helps
# their BPTT: one region of two parts (numba_cpu.HELPED_*), the first part
# to arrive runs the loop (the one-thread kernel, publishing its progress
# after each step), the other computes dx for the steps already done
# meanwhile; after the loop both take what is left (the weight gradients
# in two halves of gate rows).  Every piece of work is a task claimed by
# an atomic counter in a fixed order, and a task waits only for the
# loop's progress, never for the other part: where the region runs its
# two parts one after the other (a team of one thread), the first runs
# the loop and every task, and the second finds none left.  The tasks'
# bounds do not depend on who runs them, so the results do not either:
# they are the one-thread path's bit for bit (dx's row chunks start on
# multiples of 8 rows, the own blocks' row groups, see packed.py).
# ctl (int64, HELP_CTL_SIZE): the role counter, the loop's progress (steps
# done) and the task counter, each on a cache line of its own.
HELP_ROLE = 0
HELP_PROGRESS = 8
HELP_TASK = 16
HELP_CTL_SIZE = 24


@inner
def help_loop_role(ctl):
    """Whether this part runs the loop: the first to arrive does."""
    return fetch_add(ctl, HELP_ROLE, 1) == 0


@inner
def help_progress(ctl, s):
    """After step s: publish the steps done (a release store)."""
    _store_release(ctl, HELP_PROGRESS, s + 1)


@inner
def _help_wait(ctl, steps):
    while _load_acquire(ctl, HELP_PROGRESS) < steps:
        _pause()


@inner
def help_grads(ctl, T, B, rows, reverse, dG2, dGh2, x2, Hs2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own):
    """The tasks after the loop (common.after_loop_grads' GEMMs) for either
    part, claimed until none is left: dx in chunks of `rows` rows (a
    multiple of 8) in the order the loop finishes them, each once the
    loop's progress covers its steps; then the weight and bias gradients
    in two halves of the gate rows, once the loop is done."""
    TB = T * B
    nch = (TB + rows - 1) // rows
    while True:
        k = fetch_add(ctl, HELP_TASK, 1)
        if k >= nch + 2:
            return
        if k < nch:
            c = k if reverse else nch - 1 - k      # BPTT runs t = T - 1 first, unless reverse
            r0 = c * rows
            r1 = min(r0 + rows, TB)
            # steps done that cover rows [r0, r1): times [r0 // B, ceil(r1 / B))
            _help_wait(ctl, (r1 + B - 1) // B if reverse else T - r0 // B)
            gemm_nn(dG2[r0:r1], w_ih, dx2[r0:r1], own)
        else:
            _help_wait(ctl, T)
            g0, g1 = split(dG2.shape[1], 2, k - nch, 8)
            gemm_tn(dG2[:, g0:g1], x2, dw_ih[g0:g1], own)
            gemm_tn(dGh2[:, g0:g1], Hs2, dw_hh[g0:g1], own)
            colsum(dG2, db_ih, g0, g1)
            colsum(dGh2, db_hh, g0, g1)


# The forward's helper: the input projection (xg = x W_ih^T) in chunks of
# `rows` rows, tasks claimed in the order the loop reads them, the loop's
# part taking the next one itself while its step still lacks one
# (help_projected), the other part taking them until none is left
# (help_project).  A task's done flag: ctl[HELP_CTL_SIZE + k], set after its
# rows are written; ctl then holds HELP_CTL_SIZE + the chunk count.


@inner
def _project_task(ctl, k, nch, rows, reverse, x2, w_ih, xg2):
    c = nch - 1 - k if reverse else k      # the loop reads t = 0 first, unless reverse
    r0 = c * rows
    r1 = min(r0 + rows, x2.shape[0])
    np.dot(x2[r0:r1], w_ih.T, xg2[r0:r1])
    _store_release(ctl, HELP_CTL_SIZE + k, 1)


@inner
def help_project(ctl, rows, reverse, x2, w_ih, xg2):
    """The helper's part of the forward: projection chunks until none is left."""
    nch = (x2.shape[0] + rows - 1) // rows
    while True:
        k = fetch_add(ctl, HELP_TASK, 1)
        if k >= nch:
            return
        _project_task(ctl, k, nch, rows, reverse, x2, w_ih, xg2)


@inner
def help_projected(ctl, ready, t, B, rows, reverse, x2, w_ih, xg2):
    """In the loop's part, before step t reads xg[t]: until every chunk
    holding its rows is done (the first `ready` tasks are known to be),
    take the next unclaimed chunk, or wait where the helper has them all.
    Returns the new `ready`."""
    nch = (x2.shape[0] + rows - 1) // rows
    need = nch - 1 - (t * B) // rows if reverse else ((t + 1) * B - 1) // rows
    claimed_all = False
    while ready <= need:
        if _load_acquire(ctl, HELP_CTL_SIZE + ready) != 0:
            ready += 1
            continue
        if not claimed_all:
            k = fetch_add(ctl, HELP_TASK, 1)
            if k < nch:
                _project_task(ctl, k, nch, rows, reverse, x2, w_ih, xg2)
                continue
            claimed_all = True
        _pause()
    return ready


@njit(**JIT)
def sgemm_part(i, nth, A, B, C):
    """Block i of nth of C = A @ B's rows (C-contiguous 2-D arrays), a
    one-thread BLAS call: `fastrnn bench` measures its floor's GEMM rate
    with these, on the BLAS and the threads the kernels' parts use, so no
    BLAS worker is left spinning on the cores after it."""
    part_started(i)
    r0, r1 = split(C.shape[0], nth, i, 1)
    gemm(A[r0:r1], False, B, False, C[r0:r1], C.dtype.type(0))


@inner
def rows_of(n, i, nth):
    """How many of the sorted rows [0, n) are part i's when rows i, i + nth,
    ... go to part i (the loops by rows): for n = B, all of its rows; for
    n = nb[t], its rows still running, a prefix of them."""
    return (n - i + nth - 1) // nth


@inner
def take_rows(src, i, nth):
    """Rows i, i + nth, ... of src (1-D or 2-D) as a C-contiguous array of
    their own: a part's working state (element loops: see copy_rows)."""
    m = rows_of(src.shape[0], i, nth)
    out = np.empty((m,) + src.shape[1:], src.dtype)
    o = out.reshape((m, -1))
    a = src.reshape((src.shape[0], -1))
    for r in range(m):
        for k in range(o.shape[1]):
            o[r, k] = a[i + r * nth, k]
    return out


@inner
def put_rows(part, dst, i, nth):
    """dst's rows i, i + nth, ... = part's rows (take_rows turned round)."""
    for r in range(part.shape[0]):
        for k in range(part.shape[1]):
            dst[i + r * nth, k] = part[r, k]


@inner_par
def after_loop_grads_par(dG2, dGh2, x2, Hs2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, nth, own):
    """common.after_loop_grads split over threads, one block per thread."""
    for p in prange(nth):
        after_loop_part(np.int64(p), nth, dG2, dGh2, x2, Hs2, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, own)
