"""Spin waits for fastrnn's own worker threads (fastrnn/_backends/spinpool.py).

Compiled so that they run with the GIL released: a worker waiting for its
next task, and the caller waiting for a worker to finish, spin here on a
shared int64 array without holding the GIL, so the other thread can run
Python meanwhile.  The loads are atomic acquire loads and the stores
atomic release stores (LLVM atomics; Numba has none of its own), so the
compiler cannot hoist a load out of the loop and a value read here is
ordered after the writes that preceded its store.  `_pause` is x86's
PAUSE (a spin-wait hint: less power, no memory-order mis-speculation on
exit); elsewhere nothing.

Timeouts are counts of spin rounds; the pool times spin_rounds once per
process (spinpool._round_seconds) and converts its microseconds to rounds.
"""
import ctypes
import platform

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .common import JIT

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _int64_array(arr):
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1


@intrinsic
def _load_acquire(typingctx, arr, idx):
    """arr[idx], an atomic acquire load (no bounds check)."""
    if not (_int64_array(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.load_atomic(builder.gep(ary.data, [args[1]]), "acquire", 8)
    return types.int64(arr, types.intp), codegen


@intrinsic
def _store_release(typingctx, arr, idx, val):
    """arr[idx] = val, an atomic release store (no bounds check)."""
    if not (_int64_array(arr) and isinstance(idx, types.Integer) and isinstance(val, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        builder.store_atomic(args[2], builder.gep(ary.data, [args[1]]), "release", 8)
        return context.get_dummy_value()
    return types.void(arr, types.intp, types.int64), codegen


@intrinsic
def fetch_add(typingctx, arr, idx, val):
    """arr[idx] += val as one atomic read-modify-write (acquire and
    release); returns the value before (no bounds check)."""
    if not (_int64_array(arr) and isinstance(idx, types.Integer) and isinstance(val, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", builder.gep(ary.data, [args[1]]), v, "acq_rel")
    return types.int64(arr, types.intp, val), codegen


@intrinsic
def _pause(typingctx):
    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@njit(**JIT)
def wait_post(ctl, post, old, rounds, grace):
    """Spin until ctl[post] != old or `rounds` rounds pass.  Returns the new
    value, after `grace` more rounds (see spinpool.py: the poster is still
    holding the GIL for a moment), or old on timeout."""
    for _ in range(rounds):
        v = _load_acquire(ctl, post)
        if v != old:
            for _ in range(grace):
                _pause()
            return v
        _pause()
    return old



@njit(**JIT)
def wait_done(ctl, done, ticket, rounds):
    """Spin until ctl[done] == ticket or `rounds` rounds pass; whether it is."""
    for _ in range(rounds):
        if _load_acquire(ctl, done) == ticket:
            return True
        _pause()
    return _load_acquire(ctl, done) == ticket


@njit(**JIT)
def spin_rounds(ctl, rounds):
    """`rounds` spin rounds reading ctl[0] (for timing a round)."""
    s = 0
    for _ in range(rounds):
        s += _load_acquire(ctl, 0)
        _pause()
    return s


@njit(**JIT)
def wait_at_least(ctl, idx, target, rounds, grace):
    """Spin until ctl[idx] >= target, then `grace` more rounds; or until
    `rounds` rounds pass (a timeout, after which the caller goes on all the
    same: waiting here only saves time, it never guards correctness)."""
    for _ in range(rounds):
        if _load_acquire(ctl, idx) >= target:
            for _ in range(grace):
                _pause()
            return
        _pause()


# ------------------------------------------------------------ part started
# A part run on torch's OpenMP team (fastrnn/_backends/torch_team.py) or
# fastrnn's own workers (spinpool.py) says here, as its first statement,
# that it has started: its compiled code runs with the GIL released, so
# the next member or worker, spinning without the GIL (kernels/cpu/team.py,
# wait_post_started), can now take the GIL without finding it held.  Posted from Python before the part's call instead, the next member
# asked for the GIL while the part's dispatch still held it (18 us after a
# torch.nn call), slept, and was woken 40-45 us later.  One int64 in C
# memory, reached from compiled code by name (an external global, resolved
# when a function is compiled or loaded from Numba's cache): the regions
# run one at a time (_threads.threaded's lock), and a wait on it only ever
# saves time (team.py times out and goes on).
_STARTED_NAME = "fastrnn_part_started"
_STARTED = (ctypes.c_int64 * 8)()       # 64 bytes, slot 0 used
llvm.add_symbol(_STARTED_NAME, ctypes.addressof(_STARTED))


def _started_global(builder):
    mod = builder.module
    gv = mod.globals.get(_STARTED_NAME)
    if gv is None:
        gv = ir.GlobalVariable(mod, ir.IntType(64), _STARTED_NAME)
        gv.linkage = "external"
    return gv


@intrinsic
def part_started(typingctx, i):
    """The part-started word = i + 1 (an atomic release store)."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = builder.add(context.cast(builder, args[0], sig.args[0], types.int64), ir.Constant(ir.IntType(64), 1))
        builder.store_atomic(v, _started_global(builder), "release", 8)
        return context.get_dummy_value()
    return types.void(i), codegen


@intrinsic
def _load_started(typingctx):
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_started_global(builder), "acquire", 8)
    return types.int64(), codegen


@njit(**JIT)
def wait_started(target, rounds):
    """Spin until the part-started word is >= target or `rounds` rounds
    pass; whether it got there."""
    for _ in range(rounds):
        if _load_started() >= target:
            return True
        _pause()
    return _load_started() >= target


def reset_started():
    """The part-started word back to 0 (before a region)."""
    _STARTED[0] = 0


@njit(**JIT)
def started_or_grace(target, started_rounds, grace):
    """After a post: wait for the part-started word to reach target (the
    part before this thread's has started, so the GIL is free), up to
    started_rounds; where it does not get there (or target or
    started_rounds is 0: nothing to wait for), `grace` rounds instead."""
    if not (target > 0 and started_rounds > 0 and wait_started(target, started_rounds)):
        for _ in range(grace):
            _pause()


@njit(**JIT)
def wait_post_started(ctl, post, old, rounds, grace, want, started_rounds):
    """wait_post for fastrnn's own workers (spinpool.py), where a post of a
    region asks it (ctl[want] > 0; a wake() posts 0) waiting for the part
    before this worker's to start instead of the grace (started_or_grace)."""
    v = wait_post(ctl, post, old, rounds, 0)
    if v != old:
        started_or_grace(_load_acquire(ctl, want), started_rounds, grace)
    return v


@njit(**JIT)
def finish_and_wait(ctl, done, ticket, post, rounds, grace, want, started_rounds):
    """ctl[done] = ticket (this worker's task is finished), then
    wait_post_started for the next task: the store happens here, after the
    GIL is released, so the caller it wakes never finds the GIL held by
    this worker."""
    _store_release(ctl, done, ticket)
    return wait_post_started(ctl, post, ticket, rounds, grace, want, started_rounds)
