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

_RUNNER = None      # (torch module, run function or None)
_FORKED = False
_JOBS = {}          # key -> (fn, nth, args, errors): one per region running
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


def _make_runner(gomp):
    global _MEMBER
    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    parallel = gomp.GOMP_parallel
    parallel.argtypes = [callback, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    thread_num, num_threads = gomp.omp_get_thread_num, gomp.omp_get_num_threads
    thread_num.restype = num_threads.restype = ctypes.c_int

    def member(key):
        fn, nth, args, errors = _JOBS[key]
        try:
            # The team may be smaller than asked (nested in another region,
            # a thread limit): each member takes every n-th part.
            for i in range(thread_num(), nth, max(1, num_threads())):
                fn(i, nth, *args)
        except BaseException as e:      # re-raised by run() on the caller
            errors.append(e)

    _MEMBER = callback(member)

    def run(fn, nth, *args):
        """fn(i, nth, *args) for i in range(nth) on a team of nth of
        torch's OpenMP threads (the calling thread is member 0)."""
        key = next(_KEYS)
        errors = []
        _JOBS[key] = (fn, nth, args, errors)
        try:
            parallel(_MEMBER, key, nth, 0)
        finally:
            del _JOBS[key]
        if errors:
            raise errors[0]
    run.gomp = gomp
    return run


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
