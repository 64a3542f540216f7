"""Running the by-rows parts on torch's own OpenMP threads.

Where torch is imported and runs more than one intra-op thread, its
OpenMP workers spin for a while after each of its ops (libgomp's default
wait policy).  A by-rows part on a thread of fastrnn's own then shares a
core with a spinning worker and the call slows down by half
(fastrnn.torch.LSTM fwd+bwd, torch at 2 threads: S2 14.6-19.9 ms by rows
on fastrnn's pool against 11.6 by units).  The spinning workers are idle,
so the parts run on them instead: one OpenMP parallel region of torch's
own libgomp (GOMP_parallel, the entry point GCC's `#pragma omp parallel`
compiles to), whose members each call the compiled part for their share
of the part numbers.  The parts release the GIL; a member holds it only
to enter one.

What a region costs is the GIL's hand-over (an empty one: 25-43 us on the
dev VM before, 10-14 us now, fastrnn's own pool 10):
  * each member enters through a compiled C callback (kernels/cpu/team.py)
    that, for members other than the caller, spins without the GIL until
    the member before it has posted that it is about to enter its part
    and that part's compiled code has said it started (so the GIL is
    free), and only then calls the Python member: two threads asking for
    the GIL at once cost the loser a sleep and a wake-up.  (Waiting for
    the Python post alone and a 6 us grace, member 1 entered 51-68 us
    after member 0 in a module call after a torch.nn call, 17-22 us now;
    on/off alternating, fwd+bwd: LSTM S3 1.016x and 1.014x, GRU S3 1.010x,
    GRU S2 1.042x and 1.007x, LSTM S2 1.003x and 0.999x; training loop
    LSTM 1.007x, GRU 1.027x);
  * the OpenMP threads keep the Python thread state their first callback
    made (_pin_thread_state); otherwise ctypes makes one and drops it at
    every callback, ~20 us each.
Measured in whole calls (torch at 2 threads, separate processes taking
turns with the version before, 8 rounds, medians): fwd+bwd at S2 rnn_tanh
1.19x, GRU 1.05x, LSTM 1.06x; forward 1.13x, 1.11x, 1.05x.

Only where this can be done safely: Linux, torch imported, the libgomp
it runs on already mapped in this process (never loaded here; see
_find_gomp for which one that is), and not in a forked
child (libgomp's team does not survive fork).  Anywhere else runner()
is None and the caller keeps to its other forms.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import sys
import threading

import numpy as np

_RUNNER = None      # (torch module, run function or None)
_FORKED = False
_JOBS = {}          # key -> (fn, nth, args, errors, ctl): one per region running
_KEYS = itertools.count(1)
_MEMBER = None      # the ctypes callback (kept alive here)


def _find_gomp(torch):
    """torch's libgomp as a ctypes library, if it is mapped in this process."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        root = os.path.realpath(os.path.dirname(torch.__file__))
        paths = set()
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)    # address perms offset dev inode [path]
                if len(fields) == 6:
                    paths.add(fields[5].strip())
    except (OSError, AttributeError, TypeError):
        return None
    gomps = sorted(p for p in paths if os.path.basename(p).startswith("libgomp"))
    # torch's wheels ship a libgomp.so.1 beside libtorch, but the dynamic
    # linker binds libtorch's NEEDED libgomp.so.1 to any library of that
    # soname already loaded (Numba's OpenMP layer loads the system one when
    # it runs first).  So: the copy under torch's directory if that is the
    # one mapped, else the only libgomp in the process, which is then the
    # one torch runs on; never a guess between two, and none where Intel's
    # OpenMP runtime is mapped (torch may run on that one instead).
    own = [p for p in gomps if os.path.realpath(p).startswith(root + os.sep)]
    if not own and (len(gomps) != 1
                    or any(os.path.basename(p).startswith("libiomp") for p in paths)):
        return None
    for path in own or gomps:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_NOLOAD)
            lib.GOMP_parallel, lib.omp_get_thread_num, lib.omp_get_num_threads
        except (OSError, AttributeError):
            continue
        return lib
    return None


# A member k > 0 waits up to this long for member k - 1's post before it
# asks for the GIL all the same (its Python member then simply waits for
# the GIL); after the post, GRACE_US more (spinpool.py's reasoning: the
# poster still holds the GIL until its part's dispatch releases it).
WAIT_US = 500.0
GRACE_US = 6.0
# Then up to this long for member k - 1's part to say from its compiled
# code that it has started (kernels/cpu/spin.py: part_started), i.e. that
# the GIL is free; where that never comes, GRACE_US as before.  0: the
# grace after the post only.
STARTED_WAIT_US = 200.0
_PINNED = set()     # the team's threads whose Python thread state is kept
# At most this many: libgomp makes a pool of threads per calling thread
# (and a pool can shrink), so a program that calls from ever new threads
# would otherwise keep ever more states.  Past it, members go back to a
# state per callback: slower, never wrong.
MAX_PINNED = 64


def _pin_thread_state():
    """Keep this (foreign, OpenMP) thread's Python thread state for good.

    A ctypes callback entered on a thread Python did not make creates a
    thread state on entry and deletes it on return (PyGILState_Ensure and
    _Release): ~20 us a call on the dev VM, paid by every member but the
    caller in every region.  One unmatched PyGILState_Ensure keeps the
    state's count above zero, so later callbacks only take and drop the GIL.
    The cost: one thread state (a few hundred bytes) per OpenMP thread that
    has ever run a part (at most MAX_PINNED), freed when the interpreter
    finalises."""
    ensure = ctypes.pythonapi.PyGILState_Ensure
    ensure.restype = ctypes.c_int
    ensure.argtypes = []
    ensure()


def _round_seconds(member, team):
    """Seconds per spin round of team_member's wait: its key-0 call spins
    ctl[CTL_ROUNDS] rounds without a region (spinpool.seconds_per_round)."""
    from .spinpool import seconds_per_round
    ctl = np.zeros(team.CTL_SIZE, np.int64)

    def spin_n(n):
        ctl[team.CTL_ROUNDS] = n
        member(ctl.ctypes.data)
    return seconds_per_round(spin_n)


def _make_runner(gomp):
    global _MEMBER
    from .. import _threads
    # SciPy's OpenBLAS loaded first the way fastrnn loads it (its kernel set
    # on Zen 4, see _threads.py): compiling or loading team_member imports
    # scipy.linalg, which would otherwise load it with OpenBLAS's own choice
    _threads._blas_control()
    from .._kernels.cpu import team
    from .._kernels.cpu.spin import reset_started
    parallel = gomp.GOMP_parallel
    parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    callback = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
    addr = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
    pin = hasattr(ctypes, "pythonapi")

    def member(key, k, members):
        fn, nth, args, errors, ctl = _JOBS[key]
        if k > 0 and pin:
            ident = threading.get_ident()
            if ident not in _PINNED and len(_PINNED) < MAX_PINNED:
                _pin_thread_state()
                _PINNED.add(ident)
        # posted before this member's first part: its dispatch releases the
        # GIL within microseconds, and member k + 1 asks for it after that
        ctl[team.CTL_POST] = k + 1
        try:
            # The team may be smaller than asked (nested in another region,
            # a thread limit): each member takes every n-th part.
            for i in range(k, nth, max(1, members)):
                fn(i, nth, *args)
        except BaseException as e:      # re-raised by run() on the caller
            errors.append(e)

    _MEMBER = callback(member)
    entry = team.team_member.address
    per_round = _round_seconds(ctypes.CFUNCTYPE(None, ctypes.c_void_p)(entry), team)
    rounds = max(1, int(WAIT_US * 1e-6 / per_round))
    grace = max(1, int(GRACE_US * 1e-6 / per_round))
    started = int(STARTED_WAIT_US * 1e-6 / per_round)
    template = np.zeros(team.CTL_SIZE, np.int64)
    for slot, value in ((team.CTL_ROUNDS, rounds), (team.CTL_GRACE, grace), (team.CTL_STARTED_ROUNDS, started),
                        (team.CTL_THREAD_NUM, addr(gomp.omp_get_thread_num)),
                        (team.CTL_NUM_THREADS, addr(gomp.omp_get_num_threads)),
                        (team.CTL_MEMBER, addr(_MEMBER))):
        template[slot] = value

    def run(fn, nth, *args):
        """fn(i, nth, *args) for i in range(nth) on a team of nth of
        torch's OpenMP threads (the calling thread is member 0)."""
        key = next(_KEYS)
        errors = []
        ctl = template.copy()
        ctl[team.CTL_KEY] = key
        _JOBS[key] = (fn, nth, args, errors, ctl)
        reset_started()
        try:
            parallel(entry, ctl.ctypes.data, nth, 0)
        finally:
            del _JOBS[key]
        if errors:
            raise errors[0]
    run.gomp = gomp
    return run


def torch_module():
    """torch where it is imported and its ops may run in this process
    (a full import: torch.from_numpy there; not a forked child, where its
    OpenMP team may not survive the fork), else None.  What the backend's
    torch.mm paths and functional's torch copy ask first."""
    torch = sys.modules.get("torch")
    if torch is None or _FORKED or not hasattr(torch, "from_numpy"):
        return None
    return torch


def runner():
    """run(fn, nth, *args) on torch's OpenMP team, or None where that is
    not possible here (see the module's docstring)."""
    global _RUNNER
    torch = sys.modules.get("torch")
    if torch is None or _FORKED:
        return None
    if _RUNNER is None or _RUNNER[0] is not torch:
        gomp = _find_gomp(torch)
        _RUNNER = (torch, _make_runner(gomp) if gomp is not None else None)
    return _RUNNER[1]


def _after_fork_in_child():
    global _FORKED
    _FORKED = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
