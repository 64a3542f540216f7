"""The one-thread loops with a helper (numba_cpu.HELPED_*, kernels/cpu/parallel.py):
one Numba region of two parts, the loop on whichever arrives first, the rest
as tasks claimed by both (the BPTT's dx and weight gradients; the forward's
input projection in chunks).  The BPTT's results must be the one-thread
path's bit for bit (the tasks' bounds never depend on which part runs
them); the forward's are the float64 oracle's (its projection chunks round
as BLAS rounds a chunk), the same whichever part runs which chunk.  Every
element written, for every mode, dtype, direction and length pattern; and
both must finish where the region's two parts run one after the other (a
team of one thread), in either order."""
import numpy as np
import pytest

from fastrnn import _threads
from fastrnn._backends import numba_cpu
from fastrnn._kernels.cpu import gru, lstm, parallel, rnn

from .helpers import assert_child_survives, check_backend, make_problem, nan_empty, run

MODES = ("rnn_tanh", "rnn_relu", "gru", "lstm")
KERNELS = {"lstm": lstm, "gru": gru, "rnn": rnn}


def _threads_or_skip():
    if _threads.available_threads() < 2:
        pytest.skip(f"threaded kernels cannot run here: {_threads.why_single()}")
    if not numba_cpu._numba_omp():
        pytest.skip("Numba's parallel regions do not run on its OpenMP layer here")


@pytest.fixture
def helped_calls(monkeypatch):
    """Every size big enough for the helped form (its bound at 0, and
    threads even for tiny calls), the NaN allocator; each helped region's
    call recorded by its kernel name."""
    _threads_or_skip()
    # the helper runs where torch runs several threads (HELPED's comment):
    # that answer, whether torch is here or not
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 2)
    # compiled on first use in this thread (the background compile has a test of its own)
    monkeypatch.setattr(numba_cpu, "HELPED_BACKGROUND", False)
    # calls here come between oracle runs: not only within a burst
    monkeypatch.setattr(numba_cpu, "HELPED_MAX_GAP_S", float("inf"))
    monkeypatch.setattr(numba_cpu, "HELPED_MIN_MACS", 0)
    monkeypatch.setattr(numba_cpu, "TINY_WORK", 0)
    monkeypatch.setattr(numba_cpu, "_empty", nan_empty)
    monkeypatch.setattr(numba_cpu, "HELPED_PROJECT_MIN_MACS", 0)
    calls = []
    for mod in KERNELS.values():
        for name in _regions(mod):
            real = getattr(mod, name)

            def spy(*args, _real=real, _name=name):
                calls.append(_name.split("_")[1])     # "forward" or "backward"
                return _real(*args)
            spy.compile = real.compile      # for the background compile
            monkeypatch.setattr(mod, name, spy)
    return calls


def _regions(mod):
    """The kernel module's two helped regions (forward, backward)."""
    return [n for n in dir(mod) if n.endswith(("_forward_helped", "_backward_helped"))]


def _both(monkeypatch, mode, prob, dtype, reverse):
    """run() with the helper off, then on."""
    monkeypatch.setattr(numba_cpu, "HELPED", False)
    off = run(mode, prob, backend="numba", dtype=dtype, reverse=reverse)
    monkeypatch.setattr(numba_cpu, "HELPED", True)
    on = run(mode, prob, backend="numba", dtype=dtype, reverse=reverse)
    return off, on


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lengths", ["full", "random", "edges"])
@pytest.mark.parametrize("reverse", [False, True])
def test_helped_bptt_is_the_one_thread_path_bit_for_bit(monkeypatch, helped_calls, mode, dtype, lengths, reverse):
    # the forward without its helper here (its projection rounds as BLAS
    # rounds a chunk); B = 3, T = 37: dx's row chunks (16 rows) end
    # mid-step, and the last is short
    monkeypatch.setattr(numba_cpu, "HELPED_PROJECT_MIN_MACS", 1 << 62)
    prob = make_problem(mode, 37, 3, 24, 40, lengths=lengths, seed=3)
    off, on = _both(monkeypatch, mode, prob, dtype, reverse)
    assert "backward" in helped_calls and "forward" not in helped_calls
    for name in off:
        assert np.array_equal(off[name], on[name]), name


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("lengths", ["full", "edges"])
def test_helped_against_the_oracle(helped_calls, mode, lengths):
    check_backend(mode, "numba", T=30, B=2, I=20, H=33, dtype="float32", lengths=lengths, scale=0.3, seed=5)
    check_backend(mode, "numba", T=30, B=3, I=20, H=33, dtype="float64", lengths=lengths, reverse=True, seed=6)
    # each check: training forward, its backward, an inference forward
    assert helped_calls == ["forward", "backward", "forward"] * 2


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_relu"])
def test_parts_in_turn(monkeypatch, helped_calls, mode, order):
    """The regions' parts one after the other on this thread (a team of
    one), in either order: the first runs the loop and every task, the
    second finds none left; nothing waits for ever, and the results are
    the two threads' bit for bit."""
    prob = make_problem(mode, 29, 2, 16, 24, lengths="random", seed=7)
    both = run(mode, prob, backend="numba", dtype="float32")
    for mod in KERNELS.values():
        for name in _regions(mod):
            part = getattr(mod, name + "_part")

            def in_turn(nth, *args, _part=part):
                assert nth == 2
                for i in order:
                    _part(i, nth, *args)
            monkeypatch.setattr(mod, name, in_turn)
    turns = run(mode, prob, backend="numba", dtype="float32")
    for name in both:
        assert np.array_equal(both[name], turns[name]), name
    off, _ = _both(monkeypatch, mode, prob, "float32", False)
    for name in off:
        np.testing.assert_allclose(turns[name], off[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_not_where_the_region_cannot_run(monkeypatch, helped_calls):
    monkeypatch.setattr(numba_cpu, "_HELPED_OK", [False])
    run("lstm", make_problem("lstm", 20, 2, 8, 16), backend="numba", dtype="float32")
    assert not helped_calls


def test_not_where_torch_runs_one_thread_or_none(monkeypatch, helped_calls):
    """There the loops by rows run on fastrnn's own threads, which the
    region's spinning OpenMP worker would slow."""
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 1)
    run("gru", make_problem("gru", 20, 2, 8, 16), backend="numba", dtype="float32")
    assert not helped_calls


def test_below_the_bound_and_with_threads_not_used(monkeypatch, helped_calls):
    """Not below HELPED_MIN_MACS and HELPED_PROJECT_MIN_MACS, and not where
    the threaded loops run (they split their own GEMMs)."""
    monkeypatch.setattr(numba_cpu, "HELPED_MIN_MACS", 1 << 40)
    monkeypatch.setattr(numba_cpu, "HELPED_PROJECT_MIN_MACS", 1 << 40)
    run("gru", make_problem("gru", 20, 2, 8, 16), backend="numba", dtype="float32")
    monkeypatch.setattr(numba_cpu, "HELPED_PROJECT_MIN_MACS", 0)
    monkeypatch.setattr(numba_cpu, "HELPED_MIN_MACS", 0)
    monkeypatch.setattr(numba_cpu, "PAR_MIN_WORK", 0)
    monkeypatch.setattr(numba_cpu, "TINY_WORK", 0)
    run("gru", make_problem("gru", 20, 4, 8, 16), backend="numba", dtype="float32")
    assert not helped_calls


def test_one_flag_turns_both_off(monkeypatch, helped_calls):
    monkeypatch.setattr(numba_cpu, "HELPED", False)
    run("lstm", make_problem("lstm", 20, 2, 8, 16), backend="numba", dtype="float32")
    assert not helped_calls


def test_ctl_layout():
    """The three counters on cache lines of their own, inside the array."""
    slots = (parallel.HELP_ROLE, parallel.HELP_PROGRESS, parallel.HELP_TASK)
    assert len({s // 8 for s in slots}) == 3
    assert max(slots) < parallel.HELP_CTL_SIZE


def test_two_of_more_numba_threads():
    """With more Numba threads than two (NUMBA_NUM_THREADS=4 here, in a
    child), the helped region runs on two, the caller's count is back
    after it, and the results are the helper-off path's."""
    code = """
import os, numpy as np, numba
from fastrnn import _threads
from fastrnn._backends import numba_cpu
from fastrnn._kernels.cpu import lstm
from tests.helpers import make_problem, run
if _threads.available_threads() < 4 or not numba_cpu._numba_omp():
    print("alive"); raise SystemExit
numba_cpu._torch_threads = lambda: 2
numba_cpu.HELPED_BACKGROUND = False
numba_cpu.HELPED_MAX_GAP_S = float("inf")
numba_cpu.HELPED_MIN_MACS = numba_cpu.TINY_WORK = 0
numba_cpu.HELPED_PROJECT_MIN_MACS = 1 << 62
seen = []
real = lstm.lstm_backward_helped
def spy(*a):
    seen.append(numba.get_num_threads())
    return real(*a)
lstm.lstm_backward_helped = spy
prob = make_problem("lstm", 30, 2, 16, 24, seed=2)
on = run("lstm", prob, backend="numba", dtype="float32")
assert seen == [2], seen
assert numba.get_num_threads() == 4
numba_cpu.HELPED = False
off = run("lstm", prob, backend="numba", dtype="float32")
assert all(np.array_equal(on[k], off[k]) for k in on)
print("alive")
"""
    assert_child_survives("import os; os.environ['NUMBA_NUM_THREADS'] = '4'\n" + code)


def test_compiled_in_the_background(monkeypatch, helped_calls):
    """HELPED_BACKGROUND: the calls that want a helped region run the
    one-thread kernels, the second of them starts the region's compilation
    in a thread; once that is done, calls of that kind run the region.
    Until then a call takes the form it takes without the helper (here the
    GEMMs after the loop on this thread's own blocks), whose bits the
    helped BPTT's are."""
    monkeypatch.setattr(numba_cpu, "HELPED_BACKGROUND", True)
    monkeypatch.setattr(numba_cpu, "_HELPED_STATE", {})
    monkeypatch.setattr(numba_cpu, "HELPED_PROJECT_MIN_MACS", 1 << 62)
    prob = make_problem("gru", 25, 2, 12, 20, lengths="random", seed=9)
    first = run("gru", prob, backend="numba", dtype="float32")
    assert not helped_calls and list(numba_cpu._HELPED_STATE.values()) == [1]
    run("gru", prob, backend="numba", dtype="float32")
    assert not helped_calls
    states = list(numba_cpu._HELPED_STATE.values())
    assert len(states) == 1
    if states[0] is not True:       # still compiling (done already where this process had it)
        assert states[0].name == "fastrnn-compile"
        numba_cpu.wait_compiles(600)
    assert list(numba_cpu._HELPED_STATE.values()) == [True]
    then = run("gru", prob, backend="numba", dtype="float32")
    assert helped_calls == ["backward"]
    for name in first:
        assert np.array_equal(then[name], first[name]), name     # the BPTT: the one-thread path's bits


def test_a_failed_compile_leaves_the_one_thread_kernels(monkeypatch, helped_calls):
    monkeypatch.setattr(numba_cpu, "HELPED_BACKGROUND", True)
    monkeypatch.setattr(numba_cpu, "HELPED_PROJECT_MIN_MACS", 1 << 62)
    state = {}
    monkeypatch.setattr(numba_cpu, "_HELPED_STATE", state)

    class Broken:
        def compile(self, sig):
            raise RuntimeError("no")
    t = numba_cpu._compile_in_background("k", Broken(), (np.zeros(2, np.float32),))
    assert state["k"] in (t, False)
    t.join(60)
    assert state == {"k": False}


def test_only_while_the_worker_is_awake(monkeypatch, helped_calls):
    """After an idle spell (HELPED_MAX_GAP_S since the last helped region,
    and no burst of calls) not used: the region's worker is asleep by
    then; within a burst (two calls in a row, each close after the one
    before), used again."""
    import fastrnn
    monkeypatch.setattr(numba_cpu, "HELPED_MAX_GAP_S", 0.5)
    monkeypatch.setattr(numba_cpu, "HELPED_PROJECT_MIN_MACS", 1 << 62)
    prob = make_problem("lstm", 20, 2, 8, 16)
    x = prob["x"].astype(np.float32)
    w = [a.astype(np.float32) for a in prob["w"]]

    def fwd_bwd():
        y, _, saved = fastrnn.rnn_forward("lstm", x, w, training=True, backend="numba")
        fastrnn.rnn_backward(saved, np.ones_like(y))

    long_ago = {"end": -1e9, "region": -1e9, "burst": 0}
    monkeypatch.setattr(numba_cpu, "_LAST", dict(long_ago))
    fwd_bwd()           # the forward after an idle spell, its backward the first of a burst
    assert helped_calls == []
    fwd_bwd()           # the forward the second: its backward is helped
    assert helped_calls == ["backward"]
    fwd_bwd()           # and the next backward (the worker awake)
    assert helped_calls == ["backward"] * 2
    numba_cpu._LAST.update(long_ago)
    fwd_bwd()
    assert helped_calls == ["backward"] * 2
