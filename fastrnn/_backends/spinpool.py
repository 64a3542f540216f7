"""fastrnn's own worker threads for the loops by rows: wake-up without the kernel.

Why.  A threaded call runs 2-4 parallel regions (input projection, time
loop, BPTT loop, the GEMMs after it), each a compiled part per thread.  With
a ThreadPoolExecutor, an idle worker sleeps on a futex; waking it, and
handing it the GIL, costs 40-140 us per region on the 2-core dev VM (a
virtual CPU that has gone idle is woken by an interrupt through the
hypervisor): an empty region took 56-137 us, median 76.  At S2 (a 2-7 ms
call) that is 5-15 % of the call.

How.  Each worker, after a task, spins for a while (SPIN_US) in compiled
code with the GIL released (kernels/cpu/spin.py), reading its slot of a
shared int64 array; the caller posts a task by storing a new ticket there
and runs part 0 itself.  Two details make the hand-over cost microseconds:

  * the GIL.  The caller posts from Python and holds the GIL until its own
    part's dispatch releases it, 1-3 us later.  A worker that asked for the
    GIL in that window would sleep on it (and pay the wake-up after all),
    so on seeing a post it spins GRACE_US more before returning to Python.
    Measured: ticket seen 0.4-1 us after the post, GIL taken 2-6 us after
    the post with the grace, 20-60 us without it.  Where the dispatch
    takes longer than the grace (after other work has pushed Python out of
    the caches, ~18 us), a worker waits instead for the part before its
    own to say from its compiled code that it has started
    (spin.part_started; every by-rows part does so first), up to
    STARTED_WAIT_US, and takes the GIL then, when it is free.
  * the finish.  A worker stores its "done" from compiled code after it has
    released the GIL again (spin.finish_and_wait), so the caller, spinning
    on that store, never wakes to find the GIL held.

A worker that sees no task for SPIN_US sleeps on a condition variable (no
CPU used); posting to a sleeping worker notifies it, and that hand-over
costs what the executor's did.  The caller waits for the workers by
spinning (its core has nothing else to do) for up to CALLER_SPIN_US, then
by polling with short sleeps.  The spinning is bounded: at most SPIN_US of
one core per worker after each region, a cost other work on the machine
(Numba's own threads, torch's) pays only in that window.

Correctness does not depend on timing: every wait has a fallback (sleep,
poll), so a slow post or a long task costs time, never a missed task.
Between the post and the worker's read of its task, Python objects pass
through the GIL (its release and acquire order them).  One caller at a
time (fastrnn/_threads.py's lock guarantees it for the kernels).  Workers
are daemon threads; after a fork the child has none, and the backend makes
a new pool there (numba_cpu._drop_pool_in_child).
"""
from __future__ import annotations

import threading
import time

import numpy as np

from .._kernels.cpu import spin

# A worker spins this long after each task for the next one (a call's
# regions follow each other within tens of microseconds; the next call of
# a training step often within a few hundred) before it sleeps.
SPIN_US = 300.0
# after seeing a post, before taking the GIL (see the module docstring)
GRACE_US = 6.0
# For a region's post, instead: up to this long for the part before the
# worker's to say from its compiled code that it has started (the GIL is
# then free: spin.part_started); the grace only where that never comes.
# 0: the grace always.
STARTED_WAIT_US = 200.0
# the caller spins this long for its workers, then polls
CALLER_SPIN_US = 2000.0
_POLL_S = 20e-6

_STRIDE = 16            # int64s per slot: 128 bytes, so slots never share a cache line
_POST, _DONE, _WANT = 0, 1, 2      # _WANT: the part-started word the worker waits for (0: none)
_ROUND_S = None         # seconds per spin round (calibrated once)


def seconds_per_round(spin_n):
    """Seconds per spin round of spin_n(n), a call that spins n rounds:
    the least of three timings of 20 000 rounds (torch_team.py times its
    compiled member's wait with it too)."""
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        spin_n(20000)
        dt = (time.perf_counter() - t0) / 20000
        best = dt if best is None else min(best, dt)
    return max(best, 1e-9)


def _round_seconds():
    global _ROUND_S
    if _ROUND_S is None:
        ctl = np.zeros(_STRIDE, np.int64)
        spin.spin_rounds(ctl, 10)
        _ROUND_S = seconds_per_round(lambda n: spin.spin_rounds(ctl, n))
    return _ROUND_S


def _rounds(us):
    return max(0, int(us * 1e-6 / _round_seconds()))


class SpinPool:
    """`nworkers` daemon threads; run(fn, nth, *args) calls fn(i, nth, *args)
    for i in range(nth) at once, i = 0 on the calling thread (nth - 1 <=
    nworkers).  fn must be a compiled function that releases the GIL."""

    def __init__(self, nworkers, spin_us=None, grace_us=None):
        self.nworkers = nworkers
        self.ctl = np.zeros(_STRIDE * (nworkers + 1), np.int64)
        self._spin = _rounds(SPIN_US if spin_us is None else spin_us)
        self._grace = _rounds(GRACE_US if grace_us is None else grace_us)
        self._started = _rounds(STARTED_WAIT_US)
        self._caller_spin = _rounds(CALLER_SPIN_US)
        self._tasks = [None] * nworkers
        self._errors = [None] * nworkers
        self._conds = [threading.Condition() for _ in range(nworkers)]
        self._sleeping = [False] * nworkers
        self._ticket = 0
        self._woken = 0                    # the ticket of a wake() no run() has waited for yet
        self._lock = threading.Lock()      # one run at a time (the kernels' callers already ensure it)
        self._owner = None                 # the thread running a region now
        self._worker_ids = set()
        self._threads = []
        for w in range(nworkers):
            t = threading.Thread(target=self._work, args=(w,), name=f"fastrnn-{w + 1}", daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _slot(w, which):
        return _STRIDE * (w + 1) + which

    # ------------------------------------------------------------ worker
    def _work(self, w):
        self._worker_ids.add(threading.get_ident())
        ctl = self.ctl
        post, done, want = self._slot(w, _POST), self._slot(w, _DONE), self._slot(w, _WANT)
        cond = self._conds[w]
        last = 0
        v = spin.wait_post_started(ctl, post, last, self._spin, self._grace, want, self._started)
        while True:
            if v == last:       # nothing posted while spinning: sleep until a post
                with cond:
                    self._sleeping[w] = True
                    while int(ctl[post]) == last:
                        cond.wait(1.0)     # a post notifies; the timeout is only a safety net
                    self._sleeping[w] = False
                v = int(ctl[post])
            if v < 0:           # close()
                return
            last = v
            fn, args = self._tasks[w]
            self._tasks[w] = None
            rounds = self._spin
            if fn is None:      # wake(): no task, a spin of the length it asks for
                rounds = args
            else:
                try:
                    fn(*args)
                except BaseException as exc:   # noqa: BLE001 - re-raised on the caller's thread
                    self._errors[w] = exc
            del fn, args
            v = spin.finish_and_wait(ctl, done, last, post, rounds, self._grace, want, self._started)

    # ------------------------------------------------------------ caller
    def run(self, fn, nth, *args):
        if nth - 1 > self.nworkers:
            raise ValueError(f"SpinPool.run: nth={nth} needs {nth - 1} workers, the pool has {self.nworkers}")
        me = threading.get_ident()
        if self._owner == me or me in self._worker_ids:
            # called from inside a part of a region of this pool (on the
            # caller's thread or a worker's): the workers are busy with that
            # region, so run every part here
            for i in range(nth):
                fn(i, nth, *args)
            return
        with self._lock:
            self._owner = me
            try:
                errors = self._run_locked(fn, nth, args)
            finally:
                self._owner = None
        if errors:
            raise errors[0]

    def wake(self, spin_us):
        """Have the workers spinning for a task for the next spin_us (or
        until one comes), without waiting for them: for a caller that knows
        a region follows work of its own, so that a worker gone to sleep
        (SPIN_US after its last task) is woken while that work runs, not
        when the region is posted (an empty region: 9-12 us with the worker
        spinning, 50-90 us waking it, measured on the 2-core dev VM)."""
        with self._lock:
            self._take_wake()
            self._ticket += 1
            self._woken = self._ticket
            rounds = _rounds(spin_us)
            for w in range(self.nworkers):
                self._tasks[w] = (None, rounds)
            self._post(self._ticket, self.nworkers)

    def _take_wake(self):
        """Wait until every worker has taken the last wake, if one is
        pending: a worker reads its task slot after it has seen the post, so
        the slot must not be written again before that (by a run or by
        another wake)."""
        if self._woken:
            self._wait_done(self.nworkers, self._woken)
            self._woken = 0

    def _wait_done(self, nworkers, tk):
        """Until the first nworkers workers have finished ticket tk: spinning
        for CALLER_SPIN_US, then polling with short sleeps."""
        ctl = self.ctl
        for w in range(nworkers):
            d = self._slot(w, _DONE)
            if not spin.wait_done(ctl, d, tk, self._caller_spin):
                while not spin.wait_done(ctl, d, tk, 0):
                    time.sleep(_POLL_S)

    def _run_locked(self, fn, nth, args):
        self._take_wake()
        self._ticket += 1
        tk = self._ticket
        self._post(tk, nth - 1, fn, args)
        try:
            fn(0, nth, *args)
        finally:
            self._wait_done(nth - 1, tk)
            errors = [e for e in self._errors[:nth - 1] if e is not None]
            for w in range(nth - 1):
                self._errors[w] = None
        return errors

    def _post(self, tk, nworkers, fn=None, args=()):
        """Post ticket tk to the first nworkers workers, with task fn(w + 1,
        nworkers + 1, *args); with fn None their task slots are left as the
        caller wrote them (wake(); close() posts -1, read before any slot)."""
        if fn is not None:
            spin.reset_started()
        for w in range(nworkers):
            if fn is not None:
                self._tasks[w] = (fn, (w + 1, nworkers + 1) + args)
            # a region's worker w waits for part w to start (the caller's
            # part 0 for the first), a wake() for nothing; written before
            # the post, which the worker reads first
            self.ctl[self._slot(w, _WANT)] = w + 1 if fn is not None else 0
            self.ctl[self._slot(w, _POST)] = tk
            if self._sleeping[w]:
                with self._conds[w]:
                    self._conds[w].notify()

    def close(self):
        """Let the workers exit (after the task they may be running)."""
        with self._lock:
            self._post(-1, self.nworkers)
