"""fastrnn's own worker pool (fastrnn/_backends/spinpool.py): every part runs
once per region, on the right threads, through both hand-over paths (a
spinning worker, a sleeping one), with errors re-raised on the caller, many
regions in a row, and as the backend's pool for the loops by rows."""
import threading
import time

import numpy as np
import pytest
from numba import njit

from fastrnn._backends import numba_cpu, spinpool
from fastrnn._kernels.cpu import spin

from .helpers import check_backend


@njit(nogil=True, cache=False)
def _part(i, nth, out, work):
    s = 0.0
    for k in range(work):
        s += 1e-12 * k
    out[i] = 100 * nth + i + 1 + s * 0


def _record(calls):
    def part(i, nth, tag):
        calls.append((tag, i, nth, threading.get_native_id()))
    return part


@pytest.fixture(scope="module")
def pool():
    p = spinpool.SpinPool(3)
    yield p
    p.close()


@pytest.mark.parametrize("nth", [1, 2, 3, 4])
def test_every_part_runs_once_and_part_0_on_the_caller(pool, nth):
    calls = []
    pool.run(_record(calls), nth, "x")
    assert sorted(c[1] for c in calls) == list(range(nth)), calls
    assert all(c[2] == nth and c[0] == "x" for c in calls)
    assert [c[3] for c in calls if c[1] == 0] == [threading.get_native_id()]
    assert len({c[3] for c in calls}) == nth, "each part on a thread of its own"


def test_many_regions_in_a_row_lose_no_task(pool):
    out = np.zeros(4)
    for r in range(2000):
        nth = 2 + r % 3
        out[:] = np.nan
        pool.run(_part, nth, out, r % 7)
        assert np.array_equal(out[:nth], 100 * nth + np.arange(1, nth + 1)), (r, out)


def test_sleeping_workers_are_woken():
    # spin_us=0: a worker sleeps after every task, so every post goes
    # through the condition variable
    p = spinpool.SpinPool(2, spin_us=0)
    try:
        out = np.zeros(3)
        for r in range(200):
            out[:] = np.nan
            p.run(_part, 3, out, 0)
            assert np.array_equal(out, [301, 302, 303])
        time.sleep(0.01)
        assert all(p._sleeping), "workers did not go to sleep"
        t0 = time.perf_counter()
        p.run(_part, 3, out, 0)
        assert np.array_equal(out, [301, 302, 303])
        # woken by the post's notify, not by the sleep's 1 s safety-net timeout
        # (a liveness check with a wide margin, not a speed target)
        assert time.perf_counter() - t0 < 0.5, "a sleeping worker was not notified"
    finally:
        p.close()


def test_wake_then_regions_lose_no_task_in_any_timing():
    # wake() posts without waiting; a region may follow at once (the worker
    # still waking), while the worker spins, or after it has gone back to
    # sleep; wakes may follow wakes.  Every part runs once each time.
    p = spinpool.SpinPool(2, spin_us=0)      # asleep after every task
    try:
        out = np.zeros(3)
        for r in range(300):
            p.wake(50.0 if r % 2 else 2000.0)
            if r % 5 == 0:
                p.wake(10.0)
            if r % 3 == 1:
                time.sleep(0.0002)
            elif r % 3 == 2:
                t = time.perf_counter()
                while time.perf_counter() - t < 0.0003:
                    pass
            out[:] = np.nan
            p.run(_part, 3, out, r % 4)
            assert np.array_equal(out, [301, 302, 303]), (r, out)
        assert p._woken == 0, "a run takes the wake it follows"
    finally:
        p.close()


def test_a_woken_worker_spins_for_the_time_asked_then_sleeps():
    p = spinpool.SpinPool(1, spin_us=0)
    try:
        out = np.zeros(2)
        p.run(_part, 2, out, 0)
        time.sleep(0.01)
        assert p._sleeping == [True]
        p.wake(1_000_000.0)                  # 1 s
        time.sleep(0.1)
        assert p._sleeping == [False], "the woken worker should be spinning"
        t = time.perf_counter()
        while not p._sleeping[0] and time.perf_counter() - t < 20:
            time.sleep(0.01)
        assert p._sleeping == [True], "the spin is bounded: the worker sleeps again"
        p.run(_part, 2, out, 0)
        assert np.array_equal(out, [201, 202])
    finally:
        p.close()


def test_caller_waits_for_a_long_worker_part(pool):
    # longer than the caller's spin (CALLER_SPIN_US): the polling path
    done = []

    def part(i, nth):
        if i == 1:
            time.sleep(3 * spinpool.CALLER_SPIN_US * 1e-6)
            done.append(i)
    pool.run(part, 2)
    assert done == [1]


def test_errors_are_raised_on_the_caller_and_the_pool_still_works(pool):
    def bad_worker(i, nth):
        if i == 2:
            raise ZeroDivisionError("part 2")

    def bad_caller(i, nth):
        if i == 0:
            raise KeyError("part 0")
        time.sleep(0.002)
    with pytest.raises(ZeroDivisionError, match="part 2"):
        pool.run(bad_worker, 3)
    with pytest.raises(KeyError, match="part 0"):
        pool.run(bad_caller, 3)     # raised after the workers are done
    out = np.zeros(3)
    pool.run(_part, 3, out, 0)
    assert np.array_equal(out, [301, 302, 303])


def test_a_region_inside_a_part_runs_its_parts_in_place(pool):
    # from a part, on the caller's thread or a worker's, the pool is busy
    # with the outer region: the inner one runs every part on the thread
    # that asks (no deadlock, every part once)
    inner = []

    def outer(i, nth):
        pool.run(_record(inner), 3, i)
    pool.run(outer, 2)
    for tag in (0, 1):
        calls = [c for c in inner if c[0] == tag]
        assert sorted(c[1] for c in calls) == [0, 1, 2], inner
        assert len({c[3] for c in calls}) == 1, "an inner region used other threads"
    out = np.zeros(3)
    pool.run(_part, 3, out, 0)      # the pool still works
    assert np.array_equal(out, [301, 302, 303])


def test_asking_for_more_threads_than_workers_is_an_error(pool):
    with pytest.raises(ValueError, match="nth=5"):
        pool.run(_part, 5, np.zeros(5), 0)


def test_close_lets_the_workers_exit():
    p = spinpool.SpinPool(2)
    p.run(_part, 3, np.zeros(3), 0)
    p.close()
    for t in p._threads:
        t.join(5)
    assert not any(t.is_alive() for t in p._threads)


def test_spin_waits_see_the_stores():
    ctl = np.zeros(32, np.int64)
    assert spin.wait_post(ctl, 16, 0, 100, 0) == 0          # nothing posted: times out
    ctl[16] = 7
    assert spin.wait_post(ctl, 16, 0, 100, 3) == 7
    assert not spin.wait_done(ctl, 17, 7, 50)
    assert spin.finish_and_wait(ctl, 17, 7, 16, 10, 0, 18, 0) == 7  # stores done, nothing new posted
    assert ctl[17] == 7 and spin.wait_done(ctl, 17, 7, 0)


def test_a_worker_waits_for_the_part_before_it_to_start():
    # A region's post names the part-started word the worker waits for
    # (ctl[want]); a wake's names none.  The wait ends when the word gets
    # there, or times out and the worker goes on all the same.
    from numba import njit

    @njit(nogil=True)
    def started(i):
        spin.part_started(i)

    ctl = np.zeros(32, np.int64)
    post, done, want = 16, 17, 18
    spin.reset_started()
    assert spin.wait_post_started(ctl, post, 0, 100, 0, want, 100) == 0     # nothing posted
    ctl[post] = 7                                   # a wake: no word to wait for
    assert spin.wait_post_started(ctl, post, 0, 100, 0, want, 10**9) == 7
    ctl[want] = 1                                   # a region: part 0 never starts, time out
    assert spin.wait_post_started(ctl, post, 0, 100, 0, want, 1000) == 7
    started(0)                                      # part 0 has started
    assert spin.wait_started(1, 1) and spin.wait_post_started(ctl, post, 0, 100, 0, want, 10**9) == 7
    assert spin.finish_and_wait(ctl, done, 7, post, 10, 0, want, 10) == 7
    assert ctl[done] == 7


def test_regions_of_compiled_parts_that_say_they_started(pool):
    # the workers wait for the part before theirs, the caller's first
    from numba import njit

    @njit(nogil=True)
    def part(i, nth, out):
        spin.part_started(i)
        out[i] = i + 1

    for nth in range(2, pool.nworkers + 2):
        for _ in range(20):
            out = np.zeros(nth, np.int64)
            pool.run(part, nth, out)
            assert list(out) == list(range(1, nth + 1))


def test_the_backend_runs_its_by_rows_parts_on_the_pool(monkeypatch):
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 1)
    monkeypatch.setattr(numba_cpu, "PAR_MIN_WORK", 0)
    monkeypatch.setattr(numba_cpu, "TINY_WORK", 0)
    ran = []
    real = numba_cpu._in_threads
    monkeypatch.setattr(numba_cpu, "_in_threads", lambda fn, nth, *a: (ran.append(nth), real(fn, nth, *a)))
    check_backend("gru", "numba", T=5, B=6, I=4, H=9, dtype="float64", lengths="random")
    if not ran:
        pytest.skip("the threaded kernels did not run here (one thread: see fastrnn/_threads.py)")
    assert isinstance(numba_cpu._POOL, spinpool.SpinPool)
    assert numba_cpu._POOL.nworkers >= max(ran) - 1
