"""The by-rows parts on torch's own OpenMP team (fastrnn/_backends/torch_team.py):
the runner itself (every part once, on several threads, a team smaller than
asked, errors, fork), and the kernels run that way against the float64 oracle."""
import multiprocessing as mp
import os
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch_team runs parts on torch's OpenMP threads")

import fastrnn  # noqa: E402
from fastrnn import _threads  # noqa: E402
from fastrnn._backends import numba_cpu, torch_team  # noqa: E402

from .helpers import check_backend, nan_empty, spy_rows_parts, torch_threads  # noqa: E402

RUN = torch_team.runner()
pytestmark = pytest.mark.skipif(
    RUN is None, reason="no libgomp that torch runs on is mapped in this process (torch not built with "
                        "GNU OpenMP, or not Linux): fastrnn keeps to its own threads there")


@pytest.fixture
def torch_two_threads():
    with torch_threads(2):
        yield


def _record(calls):
    def part(i, nth, tag):
        calls.append((tag, i, nth, threading.get_native_id(), threading.current_thread().name))
    return part


def test_every_part_runs_once_on_a_team_of_threads():
    for nth in (1, 2, 3, 5):
        calls = []
        RUN(_record(calls), nth, "x")
        assert sorted(c[1] for c in calls) == list(range(nth)), calls
        assert all(c[2] == nth and c[0] == "x" for c in calls)
        if nth >= 2:
            assert len({c[3] for c in calls}) >= 2, "the parts ran on one thread"
        main = [c for c in calls if c[1] == 0]
        assert main[0][3] == threading.get_native_id(), "part 0 runs on the calling thread"


def test_a_team_smaller_than_asked_still_runs_every_part():
    # Inside a region (nested parallelism is off by default) a team has one
    # thread: its member must run all the parts itself.
    inner = []

    def outer(i, nth):
        RUN(_record(inner), 3, i)
    RUN(outer, 2)
    for tag in (0, 1):
        assert sorted(c[1] for c in inner if c[0] == tag) == [0, 1, 2], inner


def test_an_error_in_a_part_reaches_the_caller_and_the_team_still_works():
    def part(i, nth):
        if i == 1:
            raise ValueError("part 1 failed")
    with pytest.raises(ValueError, match="part 1 failed"):
        RUN(part, 2)
    assert torch_team._JOBS == {}
    calls = []
    RUN(_record(calls), 2, "again")
    assert sorted(c[1] for c in calls) == [0, 1]


STATE_CHILD = """
import json, sys, threading
import torch
torch.set_num_threads(2)
from fastrnn._backends import torch_team
torch_team.MAX_PINNED = int(sys.argv[1])
run = torch_team.runner()
local = threading.local()
seen = []
def part(i, nth):
    if i == 1:
        seen.append((threading.get_native_id(), getattr(local, "mark", None)))
        local.mark = "set"
for _ in range(3):
    run(part, 2)
print(json.dumps(dict(seen=seen, pinned=len(torch_team._PINNED), caller=threading.get_native_id())))
"""


@pytest.mark.parametrize("cap", [64, 0])
def test_a_members_python_thread_state_is_kept_up_to_the_cap(cap):
    # The members other than the caller are OpenMP threads Python did not
    # make; torch_team keeps the thread state their first callback created
    # (else every callback would make and drop one, ~20 us), for at most
    # MAX_PINNED threads (threads from ever new pools); past the cap a
    # member gets a fresh state per callback, as before the pinning.  A
    # threading.local value lives in the thread state: set by part 1 in one
    # region, part 1 (the same OpenMP thread) sees it in the next only if
    # its state was kept.  A fresh process each: in this one the team's
    # threads may be pinned already.
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", STATE_CHILD, str(cap)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    seen = r["seen"]
    assert len(seen) == 3, r
    if cap == 0:
        assert r["pinned"] == 0, r
    if len({s[0] for s in seen}) == 1:   # libgomp kept the same worker (it does unless its pool changes)
        assert seen[0][0] != r["caller"], r
        want = [None, "set", "set"] if cap else [None, None, None]
        assert [s[1] for s in seen] == want, r


def test_every_part_runs_when_a_member_keeps_the_gil_past_its_post():
    # Member k waits for member k - 1's post, then a few microseconds more,
    # before it asks for the GIL.  A Python part holds the GIL throughout:
    # the next member then waits for the GIL itself, and every part still
    # runs once, each on its own thread.
    import time

    calls = []

    def part(i, nth):
        t = time.perf_counter()
        while time.perf_counter() - t < 0.002:      # 2 ms holding the GIL
            pass
        calls.append((i, threading.get_native_id()))
    RUN(part, 3)
    assert sorted(c[0] for c in calls) == [0, 1, 2], calls
    assert len({c[1] for c in calls}) == 3


def test_parts_say_they_started_and_the_next_member_runs_meanwhile():
    # A compiled part says it has started (spin.part_started), with the GIL
    # released; the next member waits for that word (spin.wait_started)
    # before it asks for the GIL, not only for the Python post before the
    # part's call, while the part's dispatch still held the GIL.  Part 0
    # here is compiled: it posts and then spins 20 ms without the GIL, and
    # member 1 runs during that time and reads the word at 1.  The wait
    # itself: False until the word reaches the target, True once it has.
    # And the kernels' parts post their index + 1.
    import time

    from numba import njit

    from fastrnn._kernels.cpu import packed, spin

    @njit(nogil=True)
    def started_then_spin(i, ns):
        spin.part_started(i)
        t = 0
        for k in range(ns):
            t += k % 7
        return t

    seen = []

    def part(i, nth, ns):
        if i == 0:
            t0 = time.perf_counter()
            started_then_spin(i, ns)
            seen.append(("0 ran", time.perf_counter() - t0))
        else:
            seen.append(("word", spin._STARTED[0]))
    started_then_spin(0, 1)
    ns = 1
    while True:                         # about 20 ms of spinning
        t0 = time.perf_counter()
        started_then_spin(0, ns)
        if time.perf_counter() - t0 > 0.02:
            break
        ns *= 2
    # member 1 waits for the word only up to STARTED_WAIT_US (then it goes
    # on all the same: the wait only saves time); on a busy machine part
    # 0's way from the region's entry through Python to part_started can
    # take longer, so a few tries, of which one must see the word
    tries = []
    for _ in range(5):
        seen = []
        spin.reset_started()
        RUN(part, 2, ns)
        got = dict(seen)
        tries.append(seen)
        if got["word"] == 1:
            break
    assert got["word"] == 1, tries
    assert got["0 ran"] > 0.01, tries
    spin.reset_started()
    assert not spin.wait_started(1, 100)
    started_then_spin(1, 1)
    assert spin.wait_started(2, 1) and not spin.wait_started(3, 100)
    # a kernel part posts i + 1
    bt = np.zeros((2 * packed.PANEL, 8), np.float32)
    pp = np.empty((2, 8, packed.PANEL), np.float32)
    packed.pack_rows_part(5, 7, bt, pp)
    assert spin._STARTED[0] == 6


def test_concurrent_callers_each_get_their_own_parts():
    results, errors = {}, []

    def caller(k):
        try:
            for _ in range(20):
                calls = []
                RUN(_record(calls), 2, k)
                assert sorted((c[0], c[1]) for c in calls) == [(k, 0), (k, 1)], calls
            results[k] = True
        except BaseException as e:      # reported below
            errors.append(e)
    ts = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors
    assert sorted(results) == [0, 1, 2, 3]


def _child(q):
    q.put(torch_team.runner() is None)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_no_team_in_a_forked_child():
    """libgomp's team does not survive fork: the child gets no runner."""
    RUN(lambda i, nth: None, 2)      # the team exists in the parent
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert q.get(timeout=5) is True


_WHICH_GOMP = r'''
import ctypes, os, sys
if sys.argv[1] == "numba-first":      # Numba's OpenMP layer loads its libgomp first
    import numpy as np
    from numba import njit, prange
    @njit(parallel=True)
    def bump(a):
        for i in prange(a.size):
            a[i] += 1
    bump(np.zeros(64))
import torch
from fastrnn._backends import torch_team
run = torch_team.runner()
if run is None:
    print("none")
else:
    # the libgomp torch's libtorch bound to: the first one loaded of soname libgomp.so.1
    bound = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOW | os.RTLD_NOLOAD)
    same = (ctypes.cast(bound.GOMP_parallel, ctypes.c_void_p).value
            == ctypes.cast(run.gomp.GOMP_parallel, ctypes.c_void_p).value)
    print("same" if same else "other")
'''


@pytest.mark.parametrize("order", ["torch-first", "numba-first"])
def test_the_team_is_the_libgomp_torch_runs_on_in_either_import_order(order):
    """torch ships a libgomp.so.1, but where Numba's OpenMP layer loaded the
    system one first, libtorch binds to that: the runner must use the same."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _WHICH_GOMP, order], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "same"


# ------------------------------------------------------------ the kernels on the team

@pytest.fixture
def team_spy(monkeypatch, torch_two_threads):
    """By rows at every size with torch at two threads (so on torch's team),
    recording each part: (name, part, thread id, thread name)."""
    if _threads.available_threads() < 2:
        pytest.skip(f"threaded kernels cannot run here: {_threads.why_single()}")
    return spy_rows_parts(monkeypatch, lambda name, i, nth: (name, i, threading.get_native_id(),
                                                             threading.current_thread().name))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", fastrnn.MODES)
def test_kernels_by_rows_on_torchs_team_match_the_oracle(team_spy, mode, dtype, monkeypatch):
    assert numba_cpu._by_rows(mode, 4, 8, 32, np.dtype(dtype), 2) is RUN
    check_backend(mode, "numba", T=9, B=7, I=4, H=27, lengths="random", reverse=True, dtype=dtype)
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)
    check_backend(mode, "numba", T=6, B=5, H=19, lengths="edges", dtype=dtype)
    names = {c[0] for c in team_spy}
    assert any("forward" in n for n in names) and any("backward" in n for n in names), names
    assert len({c[2] for c in team_spy}) >= 2, "the parts ran on one thread"
    assert not any(c[3].startswith("fastrnn") for c in team_spy), "a part ran on fastrnn's own pool"
