"""The members of torch's OpenMP team (fastrnn/_backends/torch_team.py).

That module runs the by-rows parts on torch's libgomp team:
GOMP_parallel(team_member, ctl, nth, 0) calls team_member(ctl) on every
member of the team.  team_member is compiled (a C callback: no Python, no
GIL) and calls the team's Python member function only when that will not
have to wait for the GIL: member k > 0 first spins (spin.wait_at_least)
until member k - 1 has posted that it is about to enter its part, then
(spin.started_or_grace) until that part's compiled code, which runs with the
GIL released, has said it started (spin.part_started; every by-rows part
does so first).  Where that never comes (a part that does not say it, a
timeout of ctl[CTL_STARTED_ROUNDS] rounds; 0 turns the wait off) a grace
of a few microseconds after the post, as before.  Two threads asking for
the GIL at once cost the one that loses a sleep and a wake-up (20-60 us on
the dev VM, see spinpool.py); after a torch.nn call a part's dispatch held
the GIL for ~18 us, past the grace, and member 1 entered its part 51-68 us
after member 0 where it now enters 17-22 us after.

ctl is an int64 array: CTL_POST (written by the members, on a cache line
of its own), then the call's constants.  The addresses are of C functions
(omp_get_thread_num, omp_get_num_threads) and of the Python member, a
ctypes callback void(int64 key, int64 member, int64 members); they are
read from ctl, not compiled in, so the compiled callback can be cached.

A module of its own, imported only where the team runs: the decorator
compiles (or loads from the cache) when the module is imported.
"""
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, types
from numba.extending import intrinsic

from .spin import started_or_grace, wait_at_least

CTL_POST = 0
CTL_KEY = 8
CTL_ROUNDS = 9
CTL_GRACE = 10
CTL_THREAD_NUM = 11
CTL_NUM_THREADS = 12
CTL_MEMBER = 13
CTL_STARTED_ROUNDS = 14
CTL_SIZE = 16


@intrinsic
def _call_int32(typingctx, addr):
    """The C function int f(void) at address addr, called; its result as int64."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.sext(builder.call(fn, []), ir.IntType(64))
    return types.int64(addr), codegen


@intrinsic
def _call_member(typingctx, addr, key, member, members):
    """The C function void f(int64, int64, int64) at address addr, called."""
    if not all(isinstance(a, types.Integer) for a in (addr, key, member, members)):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [i64, i64, i64])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, [context.cast(builder, v, t, types.int64) for v, t in zip(args[1:], sig.args[1:])])
        return context.get_dummy_value()
    return types.void(addr, key, member, members), codegen


@cfunc(types.void(types.voidptr), cache=True)
def team_member(data):
    """One member of torch's team (see above): data is ctl's address.  With
    ctl[CTL_KEY] == 0 (not a region's key) it only spins ctl[CTL_ROUNDS]
    rounds and returns: the runner times a round that way, outside any
    region, without compiling or loading another function."""
    ctl = carray(data, (CTL_SIZE,), np.int64)
    if ctl[CTL_KEY] == 0:
        wait_at_least(ctl, CTL_POST, 1, ctl[CTL_ROUNDS], 0)
        return
    member = _call_int32(ctl[CTL_THREAD_NUM])
    members = _call_int32(ctl[CTL_NUM_THREADS])
    if member > 0:
        started = ctl[CTL_STARTED_ROUNDS]
        if started > 0:
            # member - 1's Python post, then its part's own post (made with
            # the GIL released: spin.part_started); the grace only where
            # that never came (a part that does not post)
            wait_at_least(ctl, CTL_POST, member, ctl[CTL_ROUNDS], 0)
            started_or_grace(member, started, ctl[CTL_GRACE])
        else:
            wait_at_least(ctl, CTL_POST, member, ctl[CTL_ROUNDS], ctl[CTL_GRACE])
    _call_member(ctl[CTL_MEMBER], ctl[CTL_KEY], member, members)
