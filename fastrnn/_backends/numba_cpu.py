"""The Numba CPU backend: fused time loops from fastrnn._kernels.cpu.

Per call, one compiled call each way.  Forward: one GEMM for the input
projection of all T*B rows, then the time loop (per step: one recurrent GEMM for
all gates of the rows still running, then one fused pointwise pass).
Backward: the time loop (fused pointwise pass, then dh = dG @ W_hh), then
dx, dW_ih, dW_hh as big GEMMs over all T*B rows and the bias gradients as
column sums.  The big GEMMs go through the BLAS Numba links (SciPy's
OpenBLAS), except the ones after BPTT for small layers (OWN_AFTER_*); the
per-step recurrent GEMM is fastrnn's own (kernels/cpu/gemm.py, and
kernels/cpu/packed.py in the threaded loops).

Two forms of every loop.  Where fastrnn/_threads.py allows threads (the
usual case), OpenBLAS is held at one thread for the call, and, from
PAR_MIN_WORK up, the threaded kernels run (kernels/cpu/parallel.py): the
big GEMMs split by rows over the threads, and the time loop either by
batch rows (each thread the whole sequence for its own rows, on threads
of fastrnn's own, or on torch's OpenMP team where torch runs several
threads: see _by_rows; where W_hh fits in cache, ROWS_*) or by hidden units:
where a step's recurrent GEMM has at least PAR_MIN_MACS multiply-adds,
each time step split (the hidden units cut into one block per Numba
thread, one fork/join per step); below that the steps run on one thread.  Every core is
then Numba's, so nothing spins against the kernel.  Below PAR_MIN_WORK
the one-thread loops run, from HELPED_* up with a second thread helping
(the forward's input projection, the GEMMs after BPTT).  Tiny calls run the
one-thread loops (with OpenBLAS at one thread).  Where threads cannot run
(a forked child, a BLAS fastrnn cannot set, one Numba thread), the
one-thread loops, whose big GEMMs and, above gemm.OWN_MAX_*, per-step GEMMs
go to OpenBLAS with its own threads; or, for big float32 calls, the loops by rows
as one part on the calling thread (ONE_THREAD_ROWS_*).

Variable lengths: rows are sorted by length (longest first) so that the rows
still running at step t are a prefix of the working state; the recurrent GEMM
then only touches them, and padding costs nothing.
"""
from __future__ import annotations

import contextlib
import os
import sys
from functools import partial
from time import perf_counter

import numpy as np

from .. import _threads
from . import bufpool, spinpool, torch_team
from .bufpool import CACHE
from ..cells import MODES

# Per-step recurrent MACs (rows x G*H x H) from which the time loop is split
# over the threads (kernels/cpu/parallel.py): below it one fork/join per step
# (~1.5 us) costs more than the second core saves.  Measured at 2^17 (rnn_tanh
# S2, fwd+bwd, separate processes): split steps 3.42-3.93 ms, unsplit steps in
# the threaded kernels 2.70-3.76 ms; at 3 * 2^17 (gru S2) splitting wins.
PAR_MIN_MACS = 1 << 18
# Forward GEMM multiply-adds of a whole call (T*B x G*H x (I+H)) from which the
# threaded kernels run at all (with the steps split or not, by PAR_MIN_MACS):
# below it their fork/joins and the thread hand-off cost more than they save,
# and the one-thread loops run, with OpenBLAS still held at one thread.
# Measured (fwd+bwd, separate processes, alternating): rnn_tanh S2 (26M) in the
# threaded kernels with unsplit steps, whose big GEMMs use both cores, median
# 2.96-3.38 ms against 3.04-4.05 one-thread over two rounds of five;
# rnn_relu S2 3.18 against 3.62; S1 (< 4M) one-thread 0.24 against 0.32.
PAR_MIN_WORK = 1 << 24
# Below this (the same count) OpenBLAS itself runs every GEMM of the call on one
# thread (its multithreading threshold is M*N*K > 2^18), so there is nothing
# to hold and the call skips _threads.threaded() (~10 us at the smallest sizes
# when it was two generator contexts; ~4 us as _held_form, session 21).
# Between TINY_WORK and PAR_MIN_WORK the hold is a trade-off, measured (when
# PAR_MIN_WORK was 2^25 and rnn_tanh S2 ran the one-thread loops): alone,
# rnn_tanh S2 ran 10-30 % faster with OpenBLAS on two threads (2.9-3.2 against
# 3.2-4.7 ms); in a real model, where such calls sit between threaded ones,
# `fastrnn train sentiment` took 38-48 s with the hold and 46-53 s without,
# because OpenBLAS's spinning workers slow the threaded calls that follow.
TINY_WORK = 1 << 18
# Between TINY_WORK and PAR_MIN_WORK the loops run on one thread, but their
# GEMMs after the BPTT loop (dx, dW_ih, dW_hh: T*B x G*H x (2I + H)
# multiply-adds) run as a region on the threads (parallel.after_loop_part)
# from this many up.  Measured, that region alone on 2 threads against the
# one-thread kernel's GEMMs (float32, alternating, medians of 200): LSTM
# S1 (B, T, I, H) = (1, 100, 64, 64), 4.9 M, 1.8-2.0x (once 1.18x); GRU
# S1 3.7 M 1.81-1.85x; (1, 100, 64, 64) with G = 2, 2.5 M, 1.25x; vanilla
# RNN S1, 1.2 M, 1.10x; (1, 20, 64, 64) LSTM, 1 M, 0.82x; (1, 10, 32, 32)
# LSTM, 82 K, 0.34x.  But in whole backward calls on the twenty-sixth
# session's Intel VM (two threads, no torch, region vs this thread
# alternating, medians of ~95): LSTM S1 (4.9 M) 281 against 250 us and
# 326 against 284, GRU S1 (3.7 M) 241 against 207, (2, 50, 64, 64) LSTM
# 275 against 247, where the woken workers cost more than they save;
# level at (1, 100, 96, 96) (LSTM 11 M, GRU 8.3 M); the region ahead at
# (1, 100, 128, 128) LSTM, 19.7 M, 916 against 989 us, and (1, 200, 128,
# 96) GRU, 20 M, 791 against 891.  Hence from 8 M.
AFTER_LOOP_THREADS_MIN_MACS = 1 << 23
# The pool's workers are asleep by then (nothing ran on them for longer
# than spinpool.SPIN_US): the backward wakes them before its loop
# (SpinPool.wake), to spin up to this long for the region.
AFTER_LOOP_WAKE_US = 3000.0
# Where the one-thread loops' GEMMs after the loop do not go to the threads
# (torch busy on the other core, or below AFTER_LOOP_THREADS_MIN_MACS), they
# run on the calling thread by fastrnn's own blocks (OWN_AFTER_*) from this
# many multiply-adds up, instead of by BLAS inside the kernel.  Measured,
# one thread, float32, the two alternating 1000 times (G: gates):
# (B, T, I, H) = (1, 100, 64, 64), G = 4, 4.9 M: 96 against 121 us (1.25x);
# G = 3 1.28x; G = 1 1.47x; (3, 63, 32, 40) LSTM 1.24x; (1, 20, 32, 32)
# LSTM, 0.25 M: 6.1 against 11.0 us; (2, 10, 16, 16) LSTM, 61 K: 0.93x.
AFTER_LOOP_OWN_MIN_MACS = 1 << 17
# Where the one-thread loops run a call's BPTT (below PAR_MIN_WORK: S1)
# and torch runs several threads in the process, a second thread helps
# from this many multiply-adds of GEMMs after the loop up
# (kernels/cpu/parallel.py, a helper beside the one-thread BPTT): one
# Numba parallel region of two parts, the loop on one, dx for the steps
# done on the other meanwhile, the weight gradients split after.  The
# region enters in compiled code: an empty one took 1.7 us on the dev VM,
# 9.8 right after a torch.nn call, against 17-27 and 60-70 for a region
# of Python parts on torch's team.  Measured
# (fastrnn.torch fwd+bwd after a torch.nn call, torch and Numba at 2
# threads, on/off alternating, medians of 151-201; the backend's backward
# in brackets), this helper alone: LSTM S1 (4.9 M) 700 against 736 us
# (201 against 233) and 705 against 746; GRU S1 936 against 963 (202
# against 227); LSTM (2, 50, 64, 64) 746 against 787; (1, 50, 48, 48),
# 1.4 M, 472 against 481 (102 against 105), about even; the same parts on
# torch's team (member 1 enters through Python) 755-758 at S1, slower
# than without.
# Where torch runs one thread or none, not used: there the loops by rows
# run on fastrnn's own threads, and the region's OpenMP worker, spinning
# for 2-5 ms after it, took their second core (no torch, an S2 call by
# rows right after a helped S1 call: 8.1 against 4.2 ms; the S1 call
# itself 377 against 420 us); its parts on fastrnn's threads instead, the
# S1 call took 536 against 442 (a sleeping worker's wake and its trip
# through Python).  With torch at 2 threads, torch's ops and the loops by
# rows on its team right after a helped call were not slowed (4 torch.mm
# of 512^3 3.73 against 3.81 ms, an S2 call by rows 4.43 against 4.51).
# Numba's OpenMP layer only (its other layers wake their workers more
# slowly; not measured).  The BPTT's results are the one-thread path's
# bit for bit.
HELPED = True
HELPED_MIN_MACS = 1 << 21
# dx's rows per task (rounded up to a multiple of 8, the own blocks' row
# groups: _helped_rows)
HELPED_CHUNK_ROWS = 16
# Likewise the forward: a helper for the input projection (T*B x G*H x I
# multiply-adds) from this many up, which projects chunks of
# HELPED_CHUNK_ROWS rows ahead of the loop on the other part (a chunk
# rounds as BLAS rounds those rows alone: not the one GEMM's bits).
# Measured (fastrnn.rnn_forward after a torch.nn call, on/off
# alternating, medians of 301): LSTM S1 (1.6 M) training 277 against 297
# us, inference 249 against 267; (1, 64, 64, 64), 1.05 M, 235.5 against
# 237.0 (even).  Both helpers, fastrnn.torch fwd+bwd as above: LSTM S1
# 684, 715, 664, 614 against 778, 800, 743, 681 us; GRU S1 817 against
# 860; LSTM (2, 50, 64, 64) 682 against 737.
HELPED_PROJECT_MIN_MACS = 1 << 20
_HELPED_OK = []


# Only where Numba's worker is awake: after a helped region that ended at
# most HELPED_MAX_GAP_S ago (it spins for a few ms after one), or within a
# burst of calls (the two calls before this one each came at most that
# long after the one before them), where one region wakes it for those
# after.  After an idle spell the worker is asleep, and on the dev VM
# waking it, when the whole machine had idled, took milliseconds, which
# the region's join waits for: LSTM S1 fwd+bwd after a 10 ms sleep 7.3 ms
# against 0.93 without the helper (50 ms: 6.5 against 1.4), after a 2 ms
# sleep 0.69 against 0.76, after 5 ms 0.88 against 0.83; after the same
# gaps spent busy in this thread it stayed even or ahead (50 ms: 1.31
# against 1.27).  A training loop's calls, and the benchmark's (a torch.nn
# call between), come well inside it.
HELPED_MAX_GAP_S = 0.003
# perf_counter() at the end of the backend's last call and of the last
# helped region, and how many calls in a row came within the gap
_LAST = {"end": -1e9, "region": -1e9, "burst": 0}


def _call_ended(start):
    """Book a forward or backward call of this backend (HELPED_MAX_GAP_S)."""
    now = perf_counter()
    _LAST["burst"] = _LAST["burst"] + 1 if start - _LAST["end"] <= HELPED_MAX_GAP_S else 0
    _LAST["end"] = now


def _helped_rows():
    """The helped regions' rows per task: HELPED_CHUNK_ROWS rounded up to 8."""
    return -(-HELPED_CHUNK_ROWS // 8) * 8


def _helped_region():
    """Whether the helped loops may run: torch runs several threads here,
    Numba's worker is awake (HELPED_MAX_GAP_S), and Numba's parallel
    regions run on its OpenMP layer (found once; its threads launched then
    if no region has run yet)."""
    if _torch_threads() <= 1:
        return False
    if perf_counter() - _LAST["region"] > HELPED_MAX_GAP_S and _LAST["burst"] < 2:
        return False
    if not _HELPED_OK:
        _HELPED_OK.append(_numba_omp())
    return _HELPED_OK[0]


# Each helped region compiles in a background thread from the second call
# that wants it (per mode, direction, dtype and step form), and until it is
# ready the calls run the one-thread kernels as before: a Numba parallel
# region compiles slowly over code as big as a time loop (cold, LSTM S1
# under torch: the forward 8.5 against 4.1 s, the BPTT 11.5 against 6.0;
# the first fwd+bwd 21.5 against 10.2 s), and the cache on disk makes
# that a first run's cost only.  Not from the first call: Numba compiles
# one function at a time (a lock), so the call's own one-thread kernels,
# compiling then, would wait for the region's (first fwd+bwd 20.6 s).
# False: in the calling thread, at the first call.
HELPED_BACKGROUND = True
_HELPED_STATE = {}      # key -> 1 (seen once), the compiling Thread, True (compiled) or False (failed)


def _helped(region, head, nth, args):
    """Run region(*head, *args) if it is compiled for these arguments' kind
    (HELPED_BACKGROUND) and say whether it ran; where it is not, say False
    (the caller runs the one-thread kernel), and at the second such call
    start its compilation.
    Its two parts run on two of Numba's threads: where Numba has more
    (nth), its count is set to 2 around the call, or the region would
    start and join every one of them for two parts."""
    key = (region, args[0].dtype.char, *[a is None for a in args])
    state = _HELPED_STATE.get(key)
    if state is not True:
        if HELPED_BACKGROUND:
            if state is None:           # the first such call: its own kernels compile now
                _HELPED_STATE[key] = 1
            elif state == 1:            # the second: theirs are done, the region's start
                _compile_in_background(key, region, head + args)
            return False                # (or compiling, or failed)
        if state is not None:
            return False
        _HELPED_STATE[key] = True
    if nth <= 2:
        region(*head, *args)
    else:
        import numba
        numba.set_num_threads(2)
        try:
            region(*head, *args)
        finally:
            numba.set_num_threads(nth)
    _LAST["region"] = perf_counter()
    return True


def _compile_in_background(key, region, args):
    """A daemon thread compiling (or loading from Numba's cache) region for
    args' types, _HELPED_STATE[key] until it sets True (or False) there."""
    import threading
    from numba import typeof
    sig = tuple(typeof(a) for a in args)

    def work():
        try:
            region.compile(sig)
            _HELPED_STATE[key] = True
        except Exception:       # that form stays on the one-thread kernels
            _HELPED_STATE[key] = False
    t = _HELPED_STATE[key] = threading.Thread(target=work, name="fastrnn-compile", daemon=True)
    t.start()
    return t


def wait_compiles(timeout=None):
    """Wait for the helped regions' background compiles started so far
    (HELPED_BACKGROUND): what a benchmark's warm-up calls, so that its
    timed calls run the form a long-running program settles on."""
    import threading
    for state in list(_HELPED_STATE.values()):
        if isinstance(state, threading.Thread):
            state.join(timeout)


def _numba_omp():
    """Whether Numba's parallel regions run on its OpenMP layer."""
    try:
        import numba
        from numba.np.ufunc import parallel as npar
        npar._launch_threads()
        return numba.threading_layer() == "omp"
    except Exception:
        return False


# The threaded kernels have two schemes (kernels/cpu/parallel.py): each time
# step split over the threads by hidden units (one fork/join per step), or
# the batch rows split (each thread runs the whole sequence on its own rows:
# one fork/join per call, whole rows for the pointwise pass, but every
# thread reads all of W_hh each step).  By rows wins while W_hh stays in
# cache: measured, LSTM forward time loop on both cores, by rows over by
# units, median of alternating runs: S2 0.80, S3 0.78 (W_hh 1 MB), S4 1.01
# (4 MB), S5 1.22 (16 MB); whole LSTM calls, fwd+bwd, S2 12.4 against 14.0
# ms, S3 62.3 against 68.3 ms.  It needs ROWS_MIN_PER_THREAD rows a thread.
# By rows also compiles in half the time (no prange: see _in_threads).
# The bound was 2 MB until whole calls at S4 were measured
# (benchmarks/bench_forms.py, rows/units, medians of 5-7, four runs with
# and without torch at 2 threads): LSTM (W_hh 4 MB) fwd+bwd 0.91-1.04,
# median 0.96, forward 0.85-0.92; GRU (3 MB) 0.90-1.00, forward 0.82-0.93;
# and at S5 level or worse: rnn_tanh (4 MB) 1.01, forward 0.93; GRU (12 MB)
# 1.13; LSTM (16 MB) 1.01, forward 1.05.
ROWS_MAX_WHH_BYTES = 1 << 22
ROWS_MIN_PER_THREAD = 2
# Every mode.  The GRU's forward by rows was slower (S3 21.1 and 24.1
# against 17.9 and 18.9 ms by units) until its pointwise pass stopped reading
# h_prev from the array it writes h to (gru._fwd_units: the loop had run
# scalar); since then, medians of 9 alternating (float32, rnn_forward and
# rnn_backward, no torch imported): S2 fwd+bwd 7.12 against 8.25 ms,
# forward 2.44 against 2.99; S3 41.2 against 42.1, forward 12.7 against
# 13.7 (and on torch's team, torch at 2 threads: S3 39.4 against 41.4).
# The vanilla RNN's was level or faster (S2 fwd+bwd 3.22 against 3.64 ms
# relu, 4.09 against 4.14 tanh).
ROWS_MODES = ("rnn_tanh", "rnn_relu", "gru", "lstm")
# Where a big float32 call runs on one thread (Numba at one thread, as for
# one process per core under torchrun; the threads busy with another call;
# a forked child), the loops by rows run as one part on the calling thread:
# their step product is the packed one (W_hh, or [W_ih | W_hh], packed once
# a call) where the one-thread loops hand each step of more than
# gemm.OWN_MAX_ROWS rows to BLAS, which packs W_hh again every step.
# Measured (raw fwd+bwd, torch, Numba and SciPy's OpenBLAS at one thread,
# the two forms alternating in one process, medians of 3-5; one-thread loops
# / by rows): LSTM S2 1.03, S3 1.23, S4 1.02; GRU 1.03, 1.32, 1.11;
# rnn_tanh 1.06, 1.05, 1.07; rnn_relu S3 1.10.  Beyond ROWS_MAX_WHH_BYTES
# only where the loops' steps go to BLAS: S5 (B = 32, W_hh 12-16 MB) LSTM
# 1.18, GRU 1.13, rnn_tanh (32, 25, 2048, 2048) 1.19, but with 4-8 rows,
# whose steps the loops keep on the dot form, (8, 50, 1024, 1024) LSTM 0.96
# and (4, 50, 512, 1024) 0.89.  With OpenBLAS left at two threads (Numba at
# one), the loops' per-step BLAS uses both cores: LSTM S3 still 1.21 (GRU
# 1.23), but S4, whose steps are (64 x 512) @ (512 x 2048), 0.85; so where
# OpenBLAS runs more than one thread, only up to
# ONE_THREAD_ROWS_MAX_BLAS_MACS multiply-adds a step (S3's are 8.4 M, S4's
# 67 M).  float64 (no packed product): LSTM S2 0.83, S3 0.99, GRU S3 0.93,
# so not there.
ONE_THREAD_ROWS = True
ONE_THREAD_ROWS_MIN_WORK = PAR_MIN_WORK
ONE_THREAD_ROWS_MAX_BLAS_MACS = 1 << 24

# In the loops by rows each part can project its own rows of the input
# before its loop (parallel.project_own_rows), instead of a projection
# region of its own before the parts: one fork/join less per forward.
# That pays where the projection is small (a region cost 50-250 us on the
# dev VM when this was measured, before spinpool.py): alternating in one
# process, medians of 9, vanilla RNN at S2 (T*B*G*H*I = 13 M multiply-adds)
# forward 1.05-1.16x, fwd+bwd 0.94-1.06x (six runs, with and without torch);
# GRU and LSTM at S2 (39 M, 52 M) 0.97-1.01x, LSTM at S3 (268 M)
# 0.92-1.01x.  Up to this many:
FUSED_PROJECTION_MAX_MACS = 1 << 25
# Rows out of their own order (lengths) or B not a multiple of the threads:
# one GEMM per row (over its valid steps only), so only up to this many rows.
FUSED_PROJECTION_MAX_ROWS = 32

# After the BPTT loop by rows, where the batch has padding (lengths under
# T): each part computes its own rows' share of the GEMMs after the loop
# over their valid steps only, one GEMM per row (parallel.grads_own_rows:
# its rows of dx, and sums of its own of dW_ih, dW_hh and the bias
# gradients, which the backend then adds up), instead of the region after
# the parts, whose GEMMs multiply the padding as well (and need a copy of
# x with its padding zeroed).  Measured with the benchmark's random lengths
# (51-59 % of the steps valid), every mode, alternating in one process,
# medians of 9-23, with and without torch at 2 threads: BPTT 1.32-1.46x as
# fast at S2 and 1.27-1.66x at S3, fwd+bwd 1.12-1.23x and 1.12-1.39x.  Each
# row's GEMMs read and write the part's whole weight-gradient sums, so only
# up to this many rows and bytes of dW_ih + dW_hh:
FUSED_GRADS_MAX_ROWS = 32
FUSED_GRADS_MAX_BYTES = 1 << 21

# The LSTM's forward by rows can fold the input projection into each
# step's product, [x_t | h] @ [W_ih | W_hh].T (lstm.lstm_forward_fused_rows_part):
# the same multiply-adds, one product per step with K = I + H instead of
# a projection (K = I) before the loop and a K = H product in it, and no
# (T, B, 4H) projection array written and read back.  fastrnn's own
# product runs faster the longer K is (one thread, 16 rows x 1024 columns:
# 80 GFLOP/s at K = 256, 86 at K = 384; 4 x 512: 71 at K = 128, 85 at
# K = 256).  Measured (benchmarks/bench_fused_step.py), float32, alternating
# in one process, medians of 9-15, with and without torch at 2 threads (the
# ratio is the time without over the time with): S3 (1.5 MB of
# [W_ih | W_hh]) forward 1.05-1.19x, with random lengths 1.09-1.16x,
# fwd+bwd 0.96-1.06x; S2 (0.5 MB) forward 0.91-1.14x, fwd+bwd 0.95-1.04x;
# with more weights it lost or drew: (B, T, I, H) = (32, 64, 256, 256),
# 2 MB, forward 0.95-1.05x, fwd+bwd 0.97-1.03x; (32, 64, 256, 384),
# 3.9 MB, 0.98-0.99x and 0.95-1.00x; S4, 8 MB, 0.81-0.98x and
# 0.93-0.97x.  A cold first fwd+bwd at S3 also
# compiles less: 10.4-11.2 s against 13.3-13.4 s.  With the blocks over
# all K at once (8a1d8a4; the longer K, the more that gains) the bound was
# measured again (benchmarks as above, abflag: fused or not alternating in
# one process, torch at 2 threads, medians of the per-round ratios, 8-12
# rounds): S4 (8 MB) fwd+bwd 1.04-1.05x and forward 1.04x fused (two
# runs); (32, 64, 256, 384), 3.9 MB, 1.02x and 1.05x; S5 (16 MB) 1.01x and
# 0.99x, level.  Those were a Zen 4 (1 MB of L2 a core).  On a Zen 3 (512
# KB of L2, the same 32 MB of L3; same script, torch at 2 threads, 7
# rounds): S4 forward 0.89 and 0.92x fused (fwd+bwd 0.98 and 1.01x);
# (32, 64, 256, 384), 3.9 MB, 1.03x (1.02x); S3 1.05-1.07x (1.02-1.07x).
# The bound that fit both was eight times the L2, and at most the 8 MB
# measured to pay on the Zen 4.  On an Intel core with 2 MB of L2 and two
# 512-bit FMA units (the twenty-fourth session's VM; fastrnn.torch.LSTM,
# torch at 2 threads, the forms alternating in one process, 7 rounds),
# S4 (8 MB) ran faster unfused, whose projection goes to BLAS: no_grad
# forward 52.9-55.6 against 64.0 ms fused, fwd+bwd 156-158 against 166;
# S3 (1.5 MB) was faster fused (forward 8.3 against 8.5-9.1).  So at
# most 4 MB (the Zen 4's S4, 1.04x fused then, is given up): up to this
# many bytes of [W_ih | W_hh], which every step reads (4 MB where the L2
# cannot be read):
FUSED_STEP_MAX_BYTES = min(8 * _threads.cache_bytes(2, 1 << 20), 1 << 22)

# In training, the fused forward saves each step's [x_t | h_prev] row, the
# step product's own left operand, instead of h_prev alone, so that BPTT
# runs dW_ih = dG^T x and dW_hh = dG^T h_prev as one GEMM over I + H
# columns (parallel.after_loop_part_cat), and x's padding needs no zeroed
# copy.  Where BPTT takes another path it copies h_prev out.  On BLAS only
# (LSTM S3, fwd+bwd, SAVE_XH False/True alternating in one process, 12
# rounds: 30.2 against 29.5 ms); on the own blocks (OWN_AFTER_*) the one
# GEMM was slower than two (LSTM S2, 20 rounds: 5.24 against 4.94 ms).
SAVE_XH = True
# But where torch's BLAS runs those GEMMs (TORCH_AFTER) the own blocks'
# bound does not apply: on two threads the rows are saved there too, so a
# batch_first caller's x is read where it lies, not copied time-major for
# the region after BPTT.  Measured (the twenty-seventh session's Intel
# VM, fastrnn.torch.LSTM fwd+bwd, on/off alternating after a torch.nn
# call, medians of 31-41): S2 batch_first 1.046, 1.002, 1.017, 1.020,
# 1.013, 1.024x; S2 time-major 1.007, 1.011, 0.993x (level); but torch
# and the kernels at one thread S2 batch_first 0.973-0.980x (four runs:
# one thread pays the cat GEMM's column-block copies in full), so only
# where the call runs on two or more threads.
XH_TORCH_AFTER = True

# The LSTM's forward by rows writes its saved activations (gates, cell
# states, tanh(c), the h_prev or [x_t | h_prev] rows) by streaming stores
# (kernels/cpu/stream.py: no read of each line before it is written, and
# the lines not kept in cache) where the gates' array holds at least this
# many bytes: twice a core's L2, from which BPTT could not have found them
# in cache anyway.  Measured (the twenty-seventh session's Intel VM, 2 MB
# of L2 a core; fastrnn.torch.LSTM, batch_first, each call right after a
# torch.nn call, the two builds in separate processes taking turns):
# forward S3 (gates 8 MB) 9.19-9.44 against 9.68-10.08 ms, S4 (26 MB)
# 54.6-55.8 against 58.9-59.0 (its backward 97.7-100.6 against
# 104.0-104.5), S2 (1.6 MB) level, S1 (100 KB) 398-433 against 350-385 us;
# the LSTM training loop's forward (S3's shape) 9.07-9.28 against
# 9.49-10.01.  The GRU's forward by rows likewise (gates, hn, h_prev):
# on/off alternating in one process, fwd+bwd S3 1.033x and 1.006x, S4
# 1.013x, the GRU training loop 1.040x.  STREAM_SAVES False: never.
STREAM_SAVES = True
STREAM_SAVES_MIN_BYTES = 2 * _threads.cache_bytes(2, 1 << 20)
# Likewise the LSTM's BPTT parts by rows write dG (the gate gradients,
# read by the GEMMs after the loop) by streaming stores from the same
# bound, and sum the bias gradients from their scratch rows instead of
# reading dG back.  Measured as above, on/off alternating in one process,
# fwd+bwd: S3 1.023x and 1.026x, S4 1.010x; the training loop 1.011x.
# (The GRU's dGh the same way: S3 1.015x and 0.987x, S4 1.003x, training
# loop 0.995x, so not there.)  STREAM_DG False: never.
STREAM_DG = True

# W_hh^T (BPTT reads its rows) is copied with the tiled kernel
# (common.transpose_into) from this size up, with NumPy below it, where
# NumPy's transpose is as fast and the tiniest calls then do not compile
# the kernel (0.5 s of a cold first call).  Measured on the first dev VM:
# 0.27 against 0.13 ms at 1 MB, 3.9 against 0.65 ms at 4 MB and 31
# against 4.3 at 16 MB.  On the twenty-sixth session's Intel VM the
# kernel is ahead from 64 KB too (NumPy 13.9 against 6.4 us at 64 KB,
# 77 against 32 at 256 KB; 16 KB 1.5 against 1.4): whole fwd+bwd calls,
# one-thread loops, alternating, medians of ~290, LSTM S1 1.022x, GRU S1
# level, LSTM (4, 50, 128, 128) 1.012x.  Hence from 16 KB (was 1 MB).
TRANSPOSE_KERNEL_MIN_BYTES = 1 << 14


# The threaded loops multiply each step by the weights packed into panels
# of output columns (kernels/cpu/packed.py: an outer-product kernel in LLVM
# IR, no horizontal sums), float32 only.  Measured on one thread against
# gemm._cols, GFLOP/s: (4, 128, 384) 108 against 78, (4, 256, 512) 107
# against 89, (16, 384, 1024) 103 against 90, (32, 512, 2048) 108 against
# 89; whole calls, torch at 2 threads, alternating in one process: forward
# 1.03-1.15x, fwd+bwd 1.00-1.06x at S2-S5.  False: _cols, as before (for
# comparisons).
PACKED_STEP = True
# The parts by rows take None for W_hh (forward) and W_hh^T (BPTT, where
# _whhT_unread) wherever the panels hold every column: the step product is
# then the panels-only one (packed._panels_product), the one the LSTM's
# fused forward uses, and the parts do not compile the dot form (_cols)
# for the columns past the panels that they never have.  The same
# products; a cold first call at S3 compiles less (LSTM fwd+bwd, Numba's
# compile events: the BPTT part 5.9 -> 1.6 s; GRU and vanilla RNN
# forwards likewise, below).  False: the weights passed as before.
PANELS_ONLY_ROWS = True


# The GEMMs after the BPTT loop (dx = dG @ W_ih, dW_ih = dG^T x, dW_hh =
# dGh^T h_prev; parallel.after_loop_part) on fastrnn's own blocks
# (packed.gemm_nn, gemm_tn: the step product's 4 x 32 block on the
# operands as they lie), float32, up to OWN_AFTER_MAX_GH gate rows; BLAS
# above it and for float64.  Measured on one thread, each thread's half of
# the region (GFLOP/s, own against OpenBLAS's Haswell kernels): (T*B, GH,
# I, H) = (800, 128, 128, 128), rnn_tanh S2: dx 105 against 102, dW_ih
# and dW_hh 107-109 against 73; (800, 384, 128, 128), GRU S2: 107 against
# 102, 105-109 against 89-90; (800, 512, 128, 128), LSTM S2: 107 against
# 103, 105-108 against 92; (2048, 768, 128, 256), GRU S3: level, 102
# against 94-99.  From GH = 1024 on, OpenBLAS's packing wins: LSTM S3
# (2048, 1024, 128, 256) dW_hh 63-65 against 91-92 (dG's rows 4 KB apart
# share cache sets), S4 57-71 against 100-105.
# Those were AVX-512 blocks (16 lanes, 32-column panels).  With AVX2 (8
# lanes, 16-column panels: a Zen 3) the unpacked B rows are read 64 bytes
# at a time and the blocks fell behind OpenBLAS (benchmarks/bench_after_bptt.py,
# one thread, own / OpenBLAS in two runs: LSTM S2 0.76-0.80, GRU S2
# 0.84-1.01, GRU S3 0.70, rnn_tanh S3 0.75-0.86, rnn_tanh S2 1.00-1.01); whole
# fwd+bwd calls, OWN_AFTER True/False alternating in one process, torch
# at 2 threads (at 1): LSTM S2 1.12 and 1.06 (1.14) as fast on BLAS, GRU
# S2 1.06 and 1.04 (0.99), GRU S3 1.09 (1.16), rnn_tanh S3 1.04 and 1.06,
# LSTM S1 level (1.01, 0.96); only G = 1 with H = 64 or 128 was faster on
# the blocks (rnn_tanh S1 0.96, S2 0.95-0.99).  So the bound on the gate
# rows follows the blocks' width (kernels/cpu/packed._LANES); a width not
# listed (4 lanes: SSE only) never takes the blocks here.
OWN_AFTER = True
OWN_AFTER_MAX_GH = {16: 768, 8: 128}
OWN_AFTER_MAX_IH = 256

# The threaded loops pack the weights into panels once per call
# (packed.pack_*): by rows, from this many bytes of panels on, the packing
# is a region of its own on the two threads, each a half of the panels.
PACK_IN_PARTS_MIN_BYTES = 1 << 18
# The fused LSTM's training forward packs BPTT's W_hh panels too, in its
# packing region, each part from the W_hh rows it has just read for the
# forward's panels (packed.pack_rows2_cols_part); the backward then packs
# nothing.
PACK_BWD_IN_FORWARD = True


def _panels(packed, N, K, dt, alloc):
    """The panel array for a step product with N output columns and K
    terms (packed.panels' shape), from the call's allocator, or none (the
    dot form) without PACKED_STEP or for float64."""
    return packed.panels(N if PACKED_STEP else 0, K, dt, alloc)


def _panels_cover(packed, N, dt):
    """Whether _panels' array for N output columns holds every one of
    them (N > 0): the step product then never reads the weights
    themselves, and the panels-only product can run."""
    return PACKED_STEP and dt == np.float32 and N % packed.PANEL == 0


def _kernel_form(T, B, I, H, GH):
    """The form one call's kernels take, the same for its forward and its
    BPTT: a context that yields (nth, par, parts), where par says whether
    the threaded loops run (on nth threads) and parts how many blocks each
    time step is cut into.  OpenBLAS is held at one thread inside, except
    for tiny calls, which get a ready-made context (no generator per call)."""
    work = T * B * GH * (I + H)
    if work < TINY_WORK:
        return _TINY_FORM
    return _held_form(work, B * GH * H)


_TINY_FORM = contextlib.nullcontext((1, False, 1))


def _torch_threads():
    """torch's intra-op thread count where torch is imported, else 1."""
    torch = sys.modules.get("torch")
    try:
        return torch.get_num_threads() if torch is not None else 1
    except Exception:       # a partly imported or unusual torch
        return 1


def _by_rows(mode, B, H, GH, dt, nth):
    """Whether a threaded call runs its time loops by rows (see ROWS_*):
    None if not, else the function that runs the parts, run(fn, nth, *args).
    That is fastrnn's own threads (_in_threads), except while torch runs
    more than one thread in this process: its OpenMP workers spin for a
    while after each of its ops and would take the core a by-rows thread
    needs, so the parts run on those workers (torch_team.py), and where
    that cannot be done, by units (Numba's threads).  Measured,
    fastrnn.torch.LSTM fwd+bwd with torch at 2 threads, alternating: S2
    19.9 ms by rows on fastrnn's threads against 11.9 by units, S3 77.4
    against 66.0; with torch at 1 thread, S2 10.3 against 10.7; on torch's
    team, S2 10.1 against 11.6 by units, S3 52.3 against 55.1."""
    if not (mode in ROWS_MODES and B >= ROWS_MIN_PER_THREAD * nth
            and GH * H * dt.itemsize <= ROWS_MAX_WHH_BYTES):
        return None
    return _in_threads if _torch_threads() <= 1 else torch_team.runner()


def _rows_form(mode, T, B, I, H, GH, dt, nth, par):
    """The runner of a call's loops by rows, or None: _by_rows where the
    threaded kernels run (par), else _on_this_thread where a big call runs
    on one thread (ONE_THREAD_ROWS_*)."""
    if par:
        return _by_rows(mode, B, H, GH, dt, nth)
    if not (ONE_THREAD_ROWS and dt == np.float32 and T * B * GH * (I + H) >= ONE_THREAD_ROWS_MIN_WORK
            and mode in ROWS_MODES and B >= ROWS_MIN_PER_THREAD):
        return None
    blas_steps = _kernels()[0].uses_blas(B, GH, H)      # the one-thread loops' steps go to BLAS
    if GH * H * dt.itemsize > ROWS_MAX_WHH_BYTES and not blas_steps:
        return None
    if blas_steps and B * GH * H > ONE_THREAD_ROWS_MAX_BLAS_MACS and _threads.blas_threads() != 1:
        return None
    return _on_this_thread


# The GEMMs after the BPTT loop (dx = dG @ W_ih, dW_ih = dG^T x, dW_hh =
# dG^T h_prev, the bias column sums) go to torch's BLAS (torch.mm on the
# same memory, torch's intra-op threads) where torch is imported, the call
# is float32 and they take at least this many multiply-adds: where the
# program is a PyTorch one, its BLAS is at hand, and on an Intel core
# with two 512-bit FMA units MKL runs them well above the OpenBLAS that
# Numba links and fastrnn's own blocks.  Measured (the twenty-fourth
# session's Intel AVX-512 VM, two threads, docs/performance.md): the LSTM's
# region alone S2 1.12 against 1.59-1.65 ms, S3 8.0 against 10.5-10.9, S4
# 66.8 against 75.1; fastrnn.torch fwd+bwd, on/off alternating in one
# process, speedup: LSTM S2 (157 M multiply-adds here) 1.04, S3 1.07, S4
# 1.05; GRU S3 1.07 but S2 (118 M) 1.00; vanilla RNN S3 1.04 but S2 (39 M)
# 0.975, where the own blocks are quick.  Also on one thread (torch, Numba
# and OpenBLAS at one, as under torchrun): LSTM S2 1.09, S3 1.08, GRU S3
# 1.08, S2 1.01.  Below the bound the kernels' own region stays.
# TORCH_AFTER False: never.
TORCH_AFTER = True
TORCH_AFTER_MIN_MACS = 1 << 27


# The loops by units (the threaded form where W_hh is over
# ROWS_MAX_WHH_BYTES: LSTM S5) likewise leave to torch's BLAS, given x2
# None, their input projection (run before their loop) and the GEMMs after
# their BPTT loop, which they otherwise run on SciPy's OpenBLAS, one block
# a thread.  Measured in the thirtieth session (Intel VM, torch and the
# kernels at 2 threads): the GEMMs after BPTT at LSTM S5's sizes alone,
# torch.mm 73.4 ms against 87-89 for the kernels' two OpenBLAS blocks;
# the projection 22.3 against 23.1-23.9 (in the module's forward 23.2
# against ~25.7).  fastrnn.torch fwd+bwd after a torch.nn call, this and
# DX_BMM_MAX_W_BYTES on against both off, alternating in one process,
# medians of 9: LSTM S5 189.2 against 201.2 ms and 207.9 against 223.1
# (1.06x, 1.07x), GRU S5 144.8 against 161.8 (1.12x); LSTM S4 (by rows,
# so DX_BMM_MAX_W_BYTES alone) 166.5 against 174.0 and 174.1 against
# 178.5.  TORCH_UNITS False: the loops by units run their own.
TORCH_UNITS = True

# Likewise the input projection before the loops by rows (xg = x W_ih^T
# over all T*B rows, where the parts do not project their own rows:
# FUSED_PROJECTION_*), from the same bound.  Measured as above, no_grad
# forward, LSTM unfused, torch.mm against the kernels' region: S3 8.5
# against 9.1 ms, S4 52.9 against 55.6; fwd+bwd level (S3 27.3 against
# 27.1, S4 156 against 158).  TORCH_PROJECT False: never.
TORCH_PROJECT = True


# Where torch's BLAS runs the GEMMs after the loops by rows (TORCH_AFTER),
# the bias gradients (column sums of dG over all T*B rows) are summed by
# the parts as they go, each step's rows while they are in cache
# (parallel.bias_sums_buf), and the parts' sums added up after: torch.sum
# over dG read 8 MB at LSTM S3 for 0.36 ms a call.  BIAS_IN_PARTS False:
# torch.sum after the loop.
BIAS_IN_PARTS = True

# Where x came batch-major (a batch_first caller's input seen time-major)
# and torch's BLAS runs the GEMMs after the loop, dx comes back in x's
# layout: written batch-major by one batched GEMM (torch.bmm over each batch
# row's (T, 4H) slice of dG, read where it lies) and returned as its
# time-major view.  fastrnn.torch then hands autograd a C-contiguous
# (B, T, I) gradient, which it keeps as x.grad or passes on, where a
# transposed one is copied first (AccumulateGrad's layout rule; 1 MB at
# LSTM S3).  DX_LIKE_X False: dx C-contiguous (T, B, I) always.
DX_LIKE_X = True
# The batched GEMM reads W_ih once per batch row: where W_ih is bigger than
# this, dx is one torch.mm into time-major rows and then copied batch-major
# instead.  torch at 2 threads, the two forms alone (the thirtieth session's
# Intel VM, 2 MB of L2), ms, bmm against mm + copy: LSTM S2 0.36 / 0.42
# (W_ih 256 KB), S3 1.72 / 1.97 (512 KB), (64, 10, 256, 256) 1.45 / 1.27
# (1 MB), S4 23.9 / 21.7 (4 MB), S5 39.1 / 23.6 (16 MB).
DX_BMM_MAX_W_BYTES = _threads.cache_bytes(2, 1 << 20) // 2


def _torch_after(dt, macs, nth):
    """_torch_blas for the GEMMs after the BPTT loop."""
    return _torch_blas(TORCH_AFTER, dt, macs, nth)


def _torch_blas(on, dt, macs, nth):
    """torch where a region's GEMMs of `macs` multiply-adds go to torch's
    BLAS (`on`: TORCH_AFTER or TORCH_PROJECT; from TORCH_AFTER_MIN_MACS),
    else None; also None where torch runs fewer threads than the call's
    region would (torch at one thread, the kernels at two), and in a forked
    child (torch's OpenMP team may not survive the fork: torch_team)."""
    if not (on and dt == np.float32 and macs >= TORCH_AFTER_MIN_MACS):
        return None
    torch = torch_team.torch_module()
    if torch is None or _torch_threads() < nth:
        return None
    return torch


def _project_torch(torch, x2, w_ih, xg2):
    """xg2 = x2 @ w_ih.T by torch.mm into xg2's memory (C-contiguous); True
    when done, False where torch raised."""
    t = torch.from_numpy
    try:
        torch.mm(t(x2), t(w_ih).t(), out=t(xg2))
    except Exception:
        return False
    return True


def _torch_projected(dt, nth, x2, w_ih, xg2):
    """xg2 = x2 @ w_ih.T by torch's BLAS where TORCH_PROJECT's bound takes
    it (before the parts by rows, or the loops by units: TORCH_UNITS):
    whether it ran (False: the caller's kernels project)."""
    torch_mm = _torch_blas(TORCH_PROJECT, dt, xg2.shape[0] * xg2.shape[1] * x2.shape[1], nth)
    return torch_mm is not None and _project_torch(torch_mm, x2, w_ih, xg2)


def _after_loop_torch(torch, dG2, dGh2, x2, h2, I, w_ih, dx2, dw_ih, dw_hh, db_ih, db_hh, bsum=None, dxb=None,
                      cat=None):
    """parallel.after_loop_part(_cat)'s products by torch.mm, written into
    the backend's own arrays (C-contiguous; torch writes through the
    shared memory).  dGh2 None: dW_hh's gate gradients are dG's (all but
    the GRU).  h2 None: x2 is the forward's [x_t | h_prev] rows (T*B,
    I + H), and dGh2 is None.  True when done; False where torch raised
    (an unusual build, say): the caller then runs its own region, which
    writes every output again.  bsum (nth, S, GH): the parts' running bias
    sums (S = 2 for the GRU: dG's, then dGh's), added up here instead of
    torch.sum over dG (BIAS_IN_PARTS).  dxb (B, T, I), C-contiguous: dx
    written there batch-major (one batched GEMM over dG's (T, I) slices
    of each batch row, read where they lie) instead of into dx2
    (DX_LIKE_X), or, where W_ih holds DX_BMM_MAX_W_BYTES or more, into
    dx2 and then copied there.  cat (GH, I + H), C-contiguous, where h2 is None: the
    one GEMM's output, from the caller's allocator.

    Everything after the GEMMs is NumPy on the backend's arrays: the
    column blocks copied out of cat by np.copyto, the parts' two bias
    sums added by np.add.  With a fresh torch.mm output, torch's copy_ and
    np.sum over bsum's first axis, the copies took 95 us and the sums 43
    at LSTM S2 (208 and 76 at S3), right after BPTT in a module call after
    a torch.nn call; this function as a whole, alternating with that form
    (medians of 101): 1500 against 1582 us at S2, level at S3 (8824
    against 8822; docs/performance.md, thirtieth session)."""
    t = torch.from_numpy
    try:
        G = t(dG2)
        outs = (t(dx2), t(dw_ih), t(dw_hh), t(db_ih), t(db_hh))
        if dxb is None or w_ih.nbytes >= DX_BMM_MAX_W_BYTES:
            torch.mm(G, t(w_ih), out=outs[0])
            if dxb is not None:
                Bn, Tn, In = dxb.shape
                t(dxb).copy_(outs[0].view(Tn, Bn, In).transpose(0, 1))
        else:
            Bn, Tn, In = dxb.shape
            W = t(w_ih)
            torch.bmm(G.view(Tn, Bn, G.shape[1]).transpose(0, 1), W.expand(Bn, *W.shape), out=t(dxb))
        if h2 is None:
            # one GEMM over the I + H columns, then its two column blocks (LSTM
            # S3: 4.95 ms, against 2.18 + 3.77 for the two on column slices)
            torch.mm(G.t(), t(x2), out=t(cat))
            np.copyto(dw_ih, cat[:, :I])
            np.copyto(dw_hh, cat[:, I:])
            Gh = G
        else:
            torch.mm(G.t(), t(x2), out=outs[1])
            Gh = G if dGh2 is None else t(dGh2)
            torch.mm(Gh.t(), t(h2), out=outs[2])
        if bsum is not None:
            _add_parts(bsum, 0, db_ih)
            if bsum.shape[1] == 1:      # dW_hh's gate gradients are dG's
                np.copyto(db_hh, db_ih)
            else:
                _add_parts(bsum, 1, db_hh)
        else:
            torch.sum(G, 0, out=outs[3])
            if Gh is G:
                outs[4].copy_(outs[3])
            else:
                torch.sum(Gh, 0, out=outs[4])
    except Exception:
        return False
    return True


def _add_parts(bsum, q, out):
    """out = bsum[:, q].sum(axis=0): for two parts one np.add (a
    reduction over the first axis costs more than the add at these sizes)."""
    if bsum.shape[0] == 2:
        np.add(bsum[0, q], bsum[1, q], out=out)
    else:
        np.sum(bsum[:, q], axis=0, out=out)


class _held_form:
    """The context _kernel_form gives calls above TINY_WORK: _threads.threaded()
    (OpenBLAS held at one thread inside), its value (nth, par, parts).  A
    class, not a @contextmanager around threaded(): two generators cost
    ~3 us per context, twice per call."""

    __slots__ = ("work", "step_macs", "held")

    def __init__(self, work, step_macs):
        self.work = work
        self.step_macs = step_macs

    def __enter__(self):
        self.held = held = _threads.threaded()
        nth = held.__enter__()
        return nth, nth > 1 and self.work >= PAR_MIN_WORK, nth if self.step_macs >= PAR_MIN_MACS else 1

    def __exit__(self, *exc):
        return self.held.__exit__(*exc)


_KERNELS = None


def _kernels():
    """The kernel modules (gemm, gru, lstm, rnn), imported on first use:
    this module must import without Numba (the probe reports why), and an
    import statement per call cost ~5 us at the smallest sizes."""
    global _KERNELS
    if _KERNELS is None:
        from .._kernels.cpu import blasctl, gemm, gru, lstm, packed, parallel, rnn
        _threads.use_compiled_hold(blasctl.install)
        _KERNELS = gemm, gru, lstm, rnn, parallel, packed
    return _KERNELS


# Threads of fastrnn's own for the loops by rows (ROWS_*): those kernels are
# plain compiled functions, one per part, that release the GIL; the calling
# thread runs part 0 and a pool the others.  Not Numba's prange: a parallel
# region compiles the code under it several times over (see
# kernels/cpu/lstm.py, _fwd_steps), and under a by-rows region is the whole
# time loop (measured: the LSTM's by-rows kernels as prange regions took
# 50 s to compile cold against 37 s for the by-units ones).  The pool's
# workers spin for a while between regions instead of sleeping
# (spinpool.py): an empty region costs ~10 us on the dev VM against
# 56-137 us on a ThreadPoolExecutor, and whole calls at S2 ran 1.09-1.28x as
# fast (fwd+bwd, separate processes taking turns, 12 rounds; S3 level).
_POOL = None


def _pool(nth):
    """The pool, with at least nth - 1 workers."""
    global _POOL
    if _POOL is None or _POOL.nworkers < nth - 1:
        if _POOL is not None:
            _POOL.close()
        _POOL = spinpool.SpinPool(nth - 1)
    return _POOL


def _in_threads(fn, nth, *args):
    """fn(i, nth, *args) for i in range(nth), at once, on nth threads."""
    _pool(nth).run(fn, nth, *args)


def _on_this_thread(fn, nth, *args):
    """A region's function as its one part, on the calling thread."""
    fn(0, 1, *args)


def _drop_pool_in_child():
    global _POOL
    _POOL = None        # its threads do not exist in a forked child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_pool_in_child)

# Allocation of every array the kernels must write in full (outputs, saved
# buffers, the input projection): big ones come from the buffer cache
# (bufpool.py: no page faults on reused memory).  Tests replace it with a
# NaN-filling allocator, and poison the cache's free buffers, to prove no
# element is left unwritten.
_CACHE_EMPTY = CACHE.empty
_empty = _CACHE_EMPTY


def _allocator(T, B, GH, dt):
    """What a call allocates with: _empty, or plain np.empty where the
    call's biggest array, (T, B, GH), is under the cache's size floor (the
    cache's own size check costs ~1 us an array, a tenth of a tiny call).
    Compared with the bound method made once (_CACHE_EMPTY): each
    `CACHE.empty` makes a new one, so `_empty is CACHE.empty` never held
    and tiny calls went through the size checks."""
    e = _empty
    if e is _CACHE_EMPTY and T * B * GH * dt.itemsize < bufpool.MIN_BYTES:
        return np.empty
    return e


def _whhT_unread(par, rows, parts, dt, H):
    """Whether the threaded BPTT's step product never reads W_hh^T's rows:
    every column of dh = dG @ W_hh it computes lies in a panel (packed
    from W_hh itself), by rows, or by units with every block of units
    (the kernels' _bwd_step: split(H, parts, p, 8)) starting and ending
    on a panel's edge.  There the W_hh^T copy is not made and its
    transposed view serves (were a column outside the panels, the dot
    form would read the view, right but slower): 0.34 ms of LSTM S3's
    fwd+bwd (cold caches, 2-core VM) and, by units, the 16 MB copy of
    LSTM S5's training forward, 4.5 ms."""
    *_, parallel, packed = _kernels()
    if not (par and _panels_cover(packed, H, dt)):
        return False
    split = parallel.split.py_func      # blas.split in Python: the units as the kernels cut them
    return bool(rows) or all(split(H, parts, p, 8)[0] % packed.PANEL == 0 for p in range(1, parts))


def _pack(part, rows, nth, *args):
    """Pack weight panels (packed.pack_*_part): as a region on the threads
    of the loops by rows (`rows`, their runner) where the panels hold at
    least PACK_IN_PARTS_MIN_BYTES, else on this thread."""
    if rows and args[-1].nbytes >= PACK_IN_PARTS_MIN_BYTES:
        rows(part, nth, *args)
    else:
        part(0, 1, *args)


def _own_after(GH, I, H, dt):
    """Whether the GEMMs after BPTT run on fastrnn's own blocks (OWN_AFTER_*)."""
    return bool(OWN_AFTER and dt == np.float32 and GH <= OWN_AFTER_MAX_GH.get(_kernels()[5]._LANES, 0)
                and max(I, H) <= OWN_AFTER_MAX_IH)


def _streams(on, a):
    """Whether the by-rows parts write the rows of a (the gates' saved
    array, or dG) by streaming stores: where `on` (the switch, and
    training for the saves) and a holds STREAM_SAVES_MIN_BYTES or more."""
    return bool(on and a.nbytes >= STREAM_SAVES_MIN_BYTES)


def _own_grads(rows, padded, T, B, GH, I, H, dt):
    """Whether the BPTT parts by rows compute their rows' share of the
    gradients after the loop (FUSED_GRADS_*): with padding (padded, the
    lengths, not None), small batches and weights."""
    return bool(rows) and padded is not None and B <= FUSED_GRADS_MAX_ROWS and (
        GH * (I + H) * dt.itemsize <= FUSED_GRADS_MAX_BYTES)


def _transposed(gemm, w_hh, alloc):
    """W_hh^T, C-contiguous (w_hh C-contiguous): the tiled kernel for big
    ones, NumPy's copy below TRANSPOSE_KERNEL_MIN_BYTES."""
    GH, H = w_hh.shape
    if w_hh.nbytes >= TRANSPOSE_KERNEL_MIN_BYTES:
        w_hhT = alloc((H, GH), w_hh.dtype)
        gemm.transpose_into(w_hh, w_hhT)
        return w_hhT
    return np.ascontiguousarray(w_hh.T)


def _schedule(lengths, T, B):
    """(perm, nb, ident): sorted-row order, rows active per step, and whether
    the order is the identity.  The full-length schedule of each (T, B) is
    built once and shared (the kernels only read perm and nb)."""
    if lengths is None:
        sch = _FULL.get((T, B))
        if sch is None:
            if len(_FULL) >= 256:
                _FULL.clear()
            sch = _FULL[T, B] = (np.arange(B, dtype=np.int64), np.full(T, B, dtype=np.int64), True)
        return sch
    perm = np.argsort(-lengths, kind="stable").astype(np.int64)
    sorted_desc = lengths[perm]
    # rows active at step t: how many lengths exceed t
    nb = np.searchsorted(-sorted_desc, -np.arange(T), side="left").astype(np.int64)
    ident = bool(np.array_equal(perm, np.arange(B)))
    return perm, nb, ident


_FULL = {}


def _time_major(a):
    """A batch-major (T, B, n) view (a.transpose(1, 0, 2) C-contiguous) as a
    C-contiguous copy, made as functional makes its copies (torch's copy_
    where torch is imported, into the buffer cache)."""
    from ..functional import _contiguous
    return _contiguous(a, np)


def _take_rows(a, perm, ident):
    return a.copy() if ident else np.ascontiguousarray(a[perm])


def _put_rows(a, perm, ident):
    """a's rows back in the caller's order.  a is the call's own working
    state (a fresh array or a view of one), handed out as is when the
    order is the identity."""
    if ident:
        return a
    out = _empty(a.shape, a.dtype)
    out[perm] = a
    return out


class NumbaCPU:
    name = "numba"
    priority = 10
    # x and dy may come batch-major (functional._batch_major): see forward
    ACCEPTS_BATCH_MAJOR = True
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
        why = _threads.why_single()
        threads = f"{_threads.available_threads()} threads" if why is None else f"one thread: {why}"
        cache = (f"buffer cache up to {CACHE.cap >> 20} MB idle" if CACHE.enabled
                 else "buffer cache off")
        core = _threads.blas_core()
        blas = f", SciPy's OpenBLAS with its {core} kernels" if core else ""
        return True, f"numba {numba.__version__}, fused CPU kernels, {threads}{blas}, {cache}"

    # ------------------------------------------------------------ forward
    def forward(self, mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training):
        start = perf_counter()
        gemm, gru, lstm, rnn, parallel, packed = _kernels()
        T, B, I = x.shape
        H = w_hh.shape[1]
        GH = w_hh.shape[0]
        dt = x.dtype
        perm, nb, ident = _schedule(lengths, T, B)
        # x may come batch-major (x.transpose(1, 0, 2) C-contiguous: a
        # batch_first caller's input seen time-major, which functional
        # passes on as it is to this backend: ACCEPTS_BATCH_MAJOR).  The
        # fused LSTM reads it as it lies; every other form gets a
        # C-contiguous copy below, once the form is known.
        xbm = bm_in = not x.flags.c_contiguous
        alloc = _allocator(T, B, GH, dt)
        w_hh = np.ascontiguousarray(w_hh)
        h = _take_rows(h0, perm, ident)
        y = alloc((T, B, H), dt)
        gh = np.empty((B, GH), dt)
        dummy = np.empty((1, 1, 1), dt)
        tb = (lambda shape: alloc(shape, dt)) if training else (lambda shape: dummy)
        c = None
        wp_bwd = None   # BPTT's W_hh panels where the forward packs them (PACK_BWD_IN_FORWARD)
        with _kernel_form(T, B, I, H, GH) as (nth, par, parts):
            rows = _rows_form(mode, T, B, I, H, GH, dt, nth, par)
            par = par or bool(rows)      # one part on this thread: the by-rows code paths
            # The per-step GEMM reads W_hh's rows in the forward and W_hh^T's
            # in BPTT.  The forward itself needs the W_hh^T copy only where
            # the one-thread loop hands a step to BLAS (gemm.uses_blas) or, at
            # 1-2 rows, to the axpy form (gemm.uses_axpy); in training it
            # makes it for BPTT too (and packs the panels from it), except
            # where the threaded BPTT never reads it (_whhT_unread), so the
            # G*H*H copy is skipped there.
            if ((not par and (gemm.uses_blas(B, GH, H) or gemm.uses_axpy(B, T, w_hh.nbytes)))
                    or (training and not _whhT_unread(par, rows, parts, dt, H))):
                w_hhT = _transposed(gemm, w_hh, alloc)
            else:
                w_hhT = np.empty((0, 0), dt)
            # the LSTM by rows with the input projection in each step's
            # product (FUSED_STEP_*): no projection array at all
            fused = bool(rows) and mode == "lstm" and GH * (I + H) * dt.itemsize <= FUSED_STEP_MAX_BYTES
            xg = None if fused else alloc((T, B, GH), dt)
            # the fused forward saves [x_t | h_prev] rows where BPTT will
            # run both weight gradients as one GEMM after its loop
            # (parallel.after_loop_part_cat), i.e. unless its parts compute
            # them (padding: _own_grads)
            padded = lengths if training and lengths is not None and lengths.min() < T else None
            # (XH_TORCH_AFTER: also where the own blocks would fit but
            # torch's BLAS takes those GEMMs on two or more threads)
            xh = (training and fused and SAVE_XH
                  and (not _own_after(GH, I, H, dt)
                       or (XH_TORCH_AFTER and nth > 1
                           and _torch_after(dt, T * B * GH * (2 * I + H), nth) is not None))
                  and not _own_grads(rows, padded, T, B, GH, I, H, dt))
            # x as it lies where only the fused step reads it (BPTT then
            # reads the saved [x_t | h_prev] rows, or nothing: inference);
            # else time-major, for the projection and the GEMMs after BPTT
            if xbm and not (fused and (xh or not training)):
                x = _time_major(x)
                xbm = False
            x2 = None if xbm else x.reshape(T * B, I)
            Hs = tb((T, B, I + H) if xh else (T, B, H))
            # the threaded loops multiply by W_hh's panels (packed.py), packed
            # here once for every step (from W_hh^T's rows where there is one)
            wp = None
            if par and not fused:
                wp = _panels(packed, GH, H, dt, alloc)
                if w_hhT.size:
                    _pack(packed.pack_cols_part, rows, nth, w_hhT, wp)
                else:
                    _pack(packed.pack_rows_part, rows, nth, w_hh, wp)
            # the parts by rows take None for W_hh where the panels hold
            # every column: the panels-only product (PANELS_ONLY_ROWS)
            rows_w = None if rows and PANELS_ONLY_ROWS and _panels_cover(packed, GH, dt) else w_hh
            # the threaded loops by units keep h in two buffers (parallel.py);
            # the last step's holds every row's final state
            hs = np.stack([h, h]) if par and not rows else h
            # the forms take the same arguments but the last one or two
            last = (nth,) if rows else (nth, parts)
            w_step = w_hh     # the loops' B operand of the step product (None for the axpy form)
            if not par:       # the one-thread loops: the form their steps take (gemm.step_operands)
                w_step, *last = gemm.step_operands(B, w_hh, w_hhT)
            w_ops = (w_step, wp) if par else (w_step,)   # the threaded loops take the panels too
            # the input projection, before any part's loop reads it: in the
            # parts themselves where the projection is small
            # (FUSED_PROJECTION_*), else as a region of its own
            project = parallel.PROJECT_BEFORE
            if rows and T * B * GH * I <= FUSED_PROJECTION_MAX_MACS:
                if ident and B % nth == 0:
                    project = parallel.PROJECT_STRIDED
                elif B <= FUSED_PROJECTION_MAX_ROWS:
                    project = parallel.PROJECT_PER_ROW
            if rows and project == parallel.PROJECT_BEFORE and not fused:
                # by torch's BLAS (TORCH_PROJECT), else (or where it raised) by the kernels
                if not _torch_projected(dt, nth, x2, w_ih, xg.reshape(T * B, GH)):
                    rows(parallel.project_part, nth, x2, w_ih, xg.reshape(T * B, GH))
            # the loops by units project x themselves (parallel.input_projection,
            # OpenBLAS) unless given x2 None: where torch's BLAS takes the
            # projection (TORCH_PROJECT), it runs here first
            kx2 = x2
            if par and not rows and TORCH_UNITS and _torch_projected(dt, nth, x2, w_ih, xg.reshape(T * B, GH)):
                kx2 = None
            # the one-thread loops with a helper for the input projection
            # from HELPED_PROJECT_MIN_MACS up (HELPED): the region's
            # first arguments; the one-thread kernels' last two else
            helped = ()
            if not par and nth > 1 and HELPED and T * B * GH * I >= HELPED_PROJECT_MIN_MACS and _helped_region():
                hr = _helped_rows()
                chunks = -(-T * B // hr)
                helped = (2, np.zeros(parallel.HELP_CTL_SIZE + chunks, np.int64), hr)
            one = () if par else (None, 0)      # the one-thread kernels' last two
            if mode == "lstm":
                c = _take_rows(c0, perm, ident)
                Gs, Cs, TCs = tb((T, B, GH)), tb((T, B, H)), tb((T, B, H))
                stream = _streams(training and STREAM_SAVES, Gs)
                if fused:
                    wp = _panels(packed, GH, I + H, dt, alloc)
                    if _panels_cover(packed, GH, dt):
                        # every column in a panel: packed from the two
                        # weights, no [W_ih | W_hh] copy made
                        w_cat = None
                        if training and PACK_BWD_IN_FORWARD:
                            # and BPTT's panels of W_hh from the same reads
                            wp_bwd = _panels(packed, H, GH, dt, alloc)
                            _pack(packed.pack_rows2_cols_part, rows, nth, np.ascontiguousarray(w_ih), w_hh,
                                  wp, wp_bwd)
                        else:
                            _pack(packed.pack_rows2_part, rows, nth, np.ascontiguousarray(w_ih), w_hh, wp)
                    else:
                        w_cat = alloc((GH, I + H), dt)
                        np.concatenate((w_ih, w_hh), axis=1, out=w_cat)
                        _pack(packed.pack_rows_part, rows, nth, w_cat, wp)
                    rows(lstm.lstm_forward_fused_rows_part, nth, x.transpose(1, 0, 2) if xbm else x,
                         w_cat, wp, b_ih + b_hh, h, c, perm, nb, reverse,
                         training, y, Hs, Gs, Cs, TCs, xbm, stream)
                elif rows:
                    rows(lstm.lstm_forward_rows_part, nth, xg, rows_w, wp, b_ih + b_hh, h, c, perm, nb, reverse,
                         training, y, Hs, Gs, Cs, TCs, x2, w_ih, project, stream)
                else:
                    scratch = (np.empty((B, GH), dt), np.empty((B, H), dt)) if par else ()
                    kern = lstm.lstm_forward_par if par else lstm.lstm_forward
                    args = (kx2, w_ih, xg, *w_ops, b_ih + b_hh, hs, c, perm, nb, reverse, training,
                            y, Hs, Gs, Cs, TCs, gh, *scratch, *last)
                    if not (helped and _helped(lstm.lstm_forward_helped, helped, nth, args)):
                        kern(*args, *one)
                bufs = dict(Gs=Gs, Cs=Cs, TCs=TCs)
            elif mode == "gru":
                bx = b_ih.copy()
                bx[:2 * H] += b_hh[:2 * H]
                Gs, HNs = tb((T, B, GH)), tb((T, B, H))
                bhn = np.ascontiguousarray(b_hh[2 * H:])
                if rows:
                    rows(gru.gru_forward_rows_part, nth, xg, rows_w, wp, bx, bhn, h, perm, nb, reverse,
                         training, y, Hs, Gs, HNs, x2, w_ih, project, _streams(training and STREAM_SAVES, Gs))
                else:
                    scratch = (np.empty((B, GH), dt), np.empty((B, H), dt)) if par else ()
                    kern = gru.gru_forward_par if par else gru.gru_forward
                    args = (kx2, w_ih, xg, *w_ops, bx, bhn, hs, perm, nb, reverse,
                            training, y, Hs, Gs, HNs, gh, *scratch, *last)
                    if not (helped and _helped(gru.gru_forward_helped, helped, nth, args)):
                        kern(*args, *one)
                bufs = dict(Gs=Gs, HNs=HNs)
            else:
                As = tb((T, B, H))
                if rows:
                    rows(rnn.rnn_forward_rows_part, nth, xg, rows_w, wp, b_ih + b_hh, h, perm, nb, reverse,
                         mode == "rnn_relu", training, y, Hs, As, x2, w_ih, project)
                else:
                    kern = rnn.rnn_forward_par if par else rnn.rnn_forward
                    args = (kx2, w_ih, xg, *w_ops, b_ih + b_hh, hs, perm, nb, reverse, mode == "rnn_relu",
                            training, y, Hs, As, gh, *last)
                    if not (helped and _helped(rnn.rnn_forward_helped, helped, nth, args)):
                        kern(*args, *one)
                bufs = dict(As=As)
            if par and not rows:
                h = hs[T % 2]
        h_n = _put_rows(h, perm, ident)
        c_n = _put_rows(c, perm, ident) if c is not None else None
        payload = None
        if training:
            payload = dict(mode=mode, x2=x2, w_ih=w_ih, w_hh=w_hh, w_hhT=w_hhT if w_hhT.size else None, Hs=Hs,
                           xh=xh, perm=perm, nb=nb, ident=ident, reverse=reverse, shape=(T, B, I, H),
                           padded=padded, wp_bwd=wp_bwd, xbm=bm_in, **bufs)
        _call_ended(start)
        return y, h_n, c_n, payload

    # ------------------------------------------------------------ backward
    def backward(self, p, dy, dh_n, dc_n):
        start = perf_counter()
        gemm, gru, lstm, rnn, parallel, packed = _kernels()
        mode = p["mode"]
        T, B, I, H = p["shape"]
        perm, nb, ident, reverse = p["perm"], p["nb"], p["ident"], p["reverse"]
        w_ih, w_hh = p["w_ih"], p["w_hh"]
        GH = w_hh.shape[0]
        w_hhT = p["w_hhT"]
        dt = dy.dtype
        dh = _take_rows(dh_n, perm, ident)
        alloc = _allocator(T, B, GH, dt)
        dG = alloc((T, B, GH), dt)
        dx = alloc((T, B, I), dt)
        dw_ih = alloc((GH, I), dt)
        dw_hh = alloc((GH, H), dt)
        db_ih = alloc(GH, dt)
        db_hh = alloc(GH, dt)
        dc0 = None
        with _kernel_form(T, B, I, H, GH) as (nth, par, parts):
            # The threaded BPTT writes one step's sorted-row gate gradients
            # while it reads the previous step's: two buffers (unused when
            # rows keep their order: dG[t] serves).
            rows = _rows_form(mode, T, B, I, H, GH, dt, nth, par)
            par = par or bool(rows)      # one part on this thread: the by-rows code paths
            # dy may come batch-major (see forward): the parts by rows read
            # it as it lies, every other form a time-major copy
            dybm = not dy.flags.c_contiguous
            if dybm and not rows:
                dy = _time_major(dy)
                dybm = False
            dyk = dy.transpose(1, 0, 2) if dybm else dy      # what the kernels get: C-contiguous
            dgs = np.empty((2, 1 if ident else B, GH), dt) if par and not rows else np.empty((B, GH), dt)
            # the forms take the same arguments but the last one or two
            last = (nth,) if rows else (nth, parts)
            unread = _whhT_unread(par, rows, parts, dt, H)
            if w_hhT is None:
                if unread:
                    w_hhT = w_hh.T      # a view the step product never reads
                else:                   # (the threads were busy in the forward, say)
                    w_hhT = _transposed(gemm, w_hh, alloc)
            # the parts by rows then take None: the panels-only product, the
            # one the forward compiled (numba_cpu.PANELS_ONLY_ROWS)
            rows_bt = None if rows and unread and PANELS_ONLY_ROWS else w_hhT
            w_step = w_hhT    # as in forward
            wp = None
            if not par:
                w_step, *last = gemm.step_operands(B, w_hhT, w_hh)
            else:       # dh = dG @ W_hh by W_hh's column panels (packed.py), packed once
                wp = p["wp_bwd"]
                if wp is None:
                    wp = _panels(packed, H, GH, dt, alloc)
                    _pack(packed.pack_cols_part, rows, nth, w_hh, wp)
            w_ops = (w_step, wp) if par else (w_step,)
            # by rows with padding, the GEMMs after the loop in the parts
            # themselves (FUSED_GRADS_*), each part's weight and bias
            # gradients into sums of its own; else after the loop over all
            # T*B rows
            padded = p["padded"]
            own = _own_grads(rows, padded, T, B, GH, I, H, dt)
            x2 = p["x2"]
            Hs = p["Hs"]
            # the forward's [x_t | h_prev] rows: one dW GEMM where the
            # region after the parts runs (LSTM), else h_prev alone
            cat = p["xh"] and bool(rows) and not own and mode == "lstm"
            # where the forward read a batch-major x as it lay (no x2) it
            # saved those rows for cat; another form (the threads changed
            # in between, say) takes x_t from them, already zero at the
            # padding (where dG is zero too)
            x_from_rows = x2 is None and not cat
            if x_from_rows:
                x2 = np.ascontiguousarray(Hs[:, :, :I]).reshape(T * B, I)
            if p["xh"] and not cat:
                Hs = np.ascontiguousarray(Hs[:, :, I:])
            if padded is not None and not own and not cat and not x_from_rows:
                # x's padding may hold anything (even NaN), and the GEMMs over
                # all T*B rows multiply it by dG = 0: a copy with it zeroed
                xz = alloc((T, B, I), dt)
                np.copyto(xz, x2.reshape(T, B, I))
                xz[np.arange(T)[:, None] >= padded[None, :]] = 0
                x2 = xz.reshape(T * B, I)
            # the GEMMs after the loop on fastrnn's own blocks where they
            # are small (OWN_AFTER_*), else on BLAS
            own_after = _own_after(GH, I, H, dt)
            # what the regions' and kernels' `own` gets: None where the GEMMs
            # stay on BLAS, so that the blocks are not compiled there
            own_arg = True if own_after else None
            # the one-thread loops leave their GEMMs after the loop (x2 None
            # tells the kernel) to a region on fastrnn's threads where those
            # are big enough (AFTER_LOOP_THREADS_MIN_MACS), the workers woken
            # now, while the loop runs; else, where the own blocks take them,
            # to the same function on this thread (AFTER_LOOP_OWN_MIN_MACS)
            after = None
            after_macs = T * B * GH * (2 * I + H)
            # or, from HELPED_MIN_MACS up, the loop and those GEMMs to one
            # region of two parts, a helper beside the loop (HELPED); `after`
            # is still chosen: it is the form where the region is not
            # compiled yet (HELPED_BACKGROUND)
            helped = (not par and nth > 1 and HELPED and after_macs >= HELPED_MIN_MACS
                      and _helped_region())
            if not par:
                if nth > 1 and after_macs >= AFTER_LOOP_THREADS_MIN_MACS and _torch_threads() <= 1:
                    after = _in_threads
                    _pool(nth).wake(AFTER_LOOP_WAKE_US)
                elif own_after and after_macs >= AFTER_LOOP_OWN_MIN_MACS:
                    after = _on_this_thread
            # torch's BLAS takes the GEMMs after the loop (TORCH_AFTER) from
            # the parts by rows, the one-thread loops' region and the loops by
            # units (given x2 None, they leave them to it)
            torch_mm = (None if own or not (rows or after or (par and TORCH_UNITS))
                        else _torch_after(dt, after_macs, nth))
            units_torch = par and not rows and torch_mm is not None
            grads = (None if after or units_torch else x2, w_ih, dx.reshape(T * B, I), dw_ih, dw_hh, db_ih, db_hh,
                     *((own_arg,) if par else ()), *last, *(() if par else (None,)))
            hgrads = ()
            if helped:
                # the helped region's first arguments, and its GEMMs' (x2 given)
                helped = (2, np.zeros(parallel.HELP_CTL_SIZE, np.int64), _helped_rows())
                hgrads = (x2, w_ih, dx.reshape(T * B, I), dw_ih, dw_hh, db_ih, db_hh, own_arg, *last)
            ran = False     # whether the helped region ran (and with it the GEMMs after the loop)
            # where torch's BLAS runs the GEMMs after the parts, the parts
            # sum the bias gradients as they go (BIAS_IN_PARTS)
            bsum = (np.empty((nth, 2 if mode == "gru" else 1, GH), dt)
                    if rows and torch_mm is not None and BIAS_IN_PARTS else None)
            # and dx batch-major where x came so (DX_LIKE_X)
            dxb = alloc((B, T, I), dt) if torch_mm is not None and p["xbm"] and DX_LIKE_X else None
            if rows:    # the parts' sums, or None: the region after the parts
                sums = ((alloc((nth, GH, I), dt), alloc((nth, GH, H), dt), np.empty((nth, GH), dt),
                         np.empty((nth, GH), dt)) if own else (None,) * 4)
                tail = (w_ih, dx, *sums, bsum)
            dGh = dG    # the gate gradients the dW_hh GEMM reads (the GRU's differ)
            if mode == "lstm":
                dc = _take_rows(dc_n, perm, ident)
                if rows:
                    rows(lstm.lstm_backward_rows_part, nth, rows_bt, wp, dyk, dh, dc, perm, nb, reverse,
                         p["Gs"], p["Cs"], p["TCs"], dG, x2, Hs, *tail, dybm, _streams(STREAM_DG, dG))
                else:
                    kern = lstm.lstm_backward_par if par else lstm.lstm_backward
                    args = (dy, *w_ops, dh, dc, perm, nb, reverse, ident, Hs, p["Gs"], p["Cs"], p["TCs"], dG, dgs)
                    ran = bool(helped) and _helped(lstm.lstm_backward_helped, helped, nth, args + hgrads)
                    if not ran:
                        kern(*args, *grads)
                dc0 = _put_rows(dc, perm, ident)
            elif mode == "gru":
                dGh = alloc((T, B, GH), dt)
                if rows:
                    rows(gru.gru_backward_rows_part, nth, rows_bt, wp, dyk, dh, perm, nb, reverse,
                         Hs, p["Gs"], p["HNs"], dG, dGh, x2, *tail, dybm)
                else:
                    kern = gru.gru_backward_par if par else gru.gru_backward
                    args = (dy, *w_ops, dh, perm, nb, reverse, ident, Hs, p["Gs"], p["HNs"],
                            dG, dGh, dgs, np.empty((B, H), dt))
                    ran = bool(helped) and _helped(gru.gru_backward_helped, helped, nth, args + hgrads)
                    if not ran:
                        kern(*args, *grads)
            else:
                if rows:
                    rows(rnn.rnn_backward_rows_part, nth, rows_bt, wp, dyk, dh, perm, nb, reverse,
                         mode == "rnn_relu", p["As"], dG, x2, Hs, *tail, dybm)
                else:
                    kern = rnn.rnn_backward_par if par else rnn.rnn_backward
                    args = (dy, *w_ops, dh, perm, nb, reverse, mode == "rnn_relu", ident,
                            Hs, p["As"], dG, dgs)
                    ran = bool(helped) and _helped(rnn.rnn_backward_helped, helped, nth, args + hgrads)
                    if not ran:
                        kern(*args, *grads)
            if own:     # the parts' sums added up
                for total, part in zip((dw_ih, dw_hh, db_ih, db_hh), sums):
                    np.sum(part, axis=0, out=total)
            elif ran:
                pass        # the helped region ran the GEMMs after the loop
            elif torch_mm is not None and _after_loop_torch(
                    torch_mm, dG.reshape(T * B, GH), None if dGh is dG else dGh.reshape(T * B, GH),
                    Hs.reshape(T * B, I + H) if cat else x2, None if cat else Hs.reshape(T * B, H), I, w_ih,
                    dx.reshape(T * B, I), dw_ih, dw_hh, db_ih, db_hh, bsum, dxb,
                    alloc((GH, I + H), dt) if cat else None):
                # the same GEMMs by torch's BLAS; dx in x's layout where
                # x came batch-major (DX_LIKE_X)
                if dxb is not None:
                    dx = dxb.transpose(1, 0, 2)
            elif cat:   # the GEMMs after the loop, the weight gradients as one
                rows(parallel.after_loop_part_cat, nth, dG.reshape(T * B, GH), Hs.reshape(T * B, I + H), w_ih,
                     dx.reshape(T * B, I), alloc((GH, I + H), dt), dw_ih, dw_hh, db_ih, db_hh, own_arg)
            elif rows or after or units_torch:  # the GEMMs after the loop, once every gate gradient is in
                # (where the loops by units left them to torch and torch
                # raised: on this thread)
                (rows or after or _on_this_thread)(
                    parallel.after_loop_part, nth, dG.reshape(T * B, GH), dGh.reshape(T * B, GH),
                    x2, Hs.reshape(T * B, H), w_ih, dx.reshape(T * B, I),
                    dw_ih, dw_hh, db_ih, db_hh, own_arg)
        dh0 = _put_rows(dh, perm, ident)
        _call_ended(start)
        return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


BACKEND = NumbaCPU()
