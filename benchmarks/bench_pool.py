"""fastrnn's worker pool (fastrnn/_backends/spinpool.py) against a plain
ThreadPoolExecutor, the pool it replaced, for the loops by rows.

Two measurements:

1. one parallel region on 2 threads whose parts do (almost) nothing: the
   cost of handing part 1 to a worker and waiting for it, in one process,
   the two pools taking turns;
2. whole fwd+bwd calls (rnn_forward(training=True) + rnn_backward) at the
   benchmark's shapes, each pool in processes of its own, the processes
   taking turns (in one process a worker still spinning after the other
   pool's region would take a core from it).  torch is not imported: with
   torch running several threads the parts run on torch's OpenMP team
   instead (fastrnn/_backends/torch_team.py), and neither pool is used.

    PYTHONPATH=. python3 benchmarks/bench_pool.py                       # ~2 min
    PYTHONPATH=. python3 benchmarks/bench_pool.py --rounds 12 --modes rnn_tanh,gru --shapes S2

Columns: medians in ms (over rounds, of each process's median call);
"executor/spin" > 1 means the spin pool is faster.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _executor_runner():
    from concurrent.futures import ThreadPoolExecutor
    ex = ThreadPoolExecutor(max_workers=1)

    def run(fn, nth, *args):
        futs = [ex.submit(fn, i, nth, *args) for i in range(1, nth)]
        try:
            fn(0, nth, *args)
        finally:
            for f in futs:
                f.result()
    return run


def _empty_part():
    """A compiled part that does nothing but write its index, and its
    output array, compiled by one call."""
    import numpy as np
    from numba import njit

    @njit(nogil=True, cache=False)
    def part(i, nth, out):
        out[i] = i

    out = np.zeros(2)
    part(0, 2, out)
    return part, out


def empty_region(rounds=300):
    """{pool: median microseconds} of a 2-part region of empty compiled parts."""
    from fastrnn import _threads
    from fastrnn._backends import spinpool

    part, out = _empty_part()
    pools = {"spin": spinpool.SpinPool(1).run, "executor": _executor_runner()}
    times = {k: [] for k in pools}
    with _threads.threaded():
        for _ in range(rounds):
            for k, run in pools.items():
                t0 = time.perf_counter()
                run(part, 2, out)
                times[k].append(time.perf_counter() - t0)
    return {k: 1e6 * statistics.median(v) for k, v in times.items()}


def _child(pool, modes, shapes, calls):
    """One process: median ms of fwd+bwd and forward for each (mode, shape)."""
    import fastrnn
    from fastrnn._backends import numba_cpu
    from fastrnn.bench import SHAPES, _problem

    if pool == "executor":
        numba_cpu._in_threads = _executor_runner()
    out = {}
    for mode in modes:
        for shape in shapes:
            B, T, I, H = SHAPES[shape]
            x, w, dy = _problem(mode, B, T, I, H, 0)
            fb, fw = [], []
            for rep in range(calls + 3):
                t0 = time.perf_counter()
                _, _, saved = fastrnn.rnn_forward(mode, x, w, training=True, backend="numba")
                t1 = time.perf_counter()
                fastrnn.rnn_backward(saved, dy)
                t2 = time.perf_counter()
                if rep >= 3:
                    fb.append(t2 - t0)
                    fw.append(t1 - t0)
            out[f"{mode} {shape}"] = (1e3 * statistics.median(fb), 1e3 * statistics.median(fw))
    return out


def whole_calls(modes, shapes, rounds, calls):
    res = {"executor": [], "spin": []}
    for r in range(rounds):
        for pool in (("executor", "spin") if r % 2 == 0 else ("spin", "executor")):
            cmd = [sys.executable, __file__, "--child", pool, "--modes", ",".join(modes),
                   "--shapes", ",".join(shapes), "--calls", str(calls)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res[pool].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for key in res["spin"][0]:
        med = {p: [statistics.median(d[key][j] for d in res[p]) for j in (0, 1)] for p in res}
        rows.append((key, med["executor"], med["spin"]))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="rnn_tanh,rnn_relu,gru,lstm")
    ap.add_argument("--shapes", default="S2,S3")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=25)
    ap.add_argument("--child", choices=["executor", "spin"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    modes, shapes = a.modes.split(","), a.shapes.split(",")
    if a.child:
        print(json.dumps(_child(a.child, modes, shapes, a.calls)))
        return
    e = empty_region()
    print(f"empty 2-part region: spin pool {e['spin']:.1f} us, ThreadPoolExecutor {e['executor']:.1f} us\n")
    print("| mode | shape | executor fwd+bwd ms | spin fwd+bwd ms | executor/spin | executor fwd ms | spin fwd ms |")
    print("|---|---|---|---|---|---|---|")
    for key, ex, sp in whole_calls(modes, shapes, a.rounds, a.calls):
        mode, shape = key.split()
        print(f"| {mode} | {shape} | {ex[0]:.3f} | {sp[0]:.3f} | {ex[0] / sp[0]:.2f} | {ex[1]:.3f} | {sp[1]:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()


def test_empty_region(benchmark):
    """pytest-benchmark: the spin pool's empty 2-part region."""
    from fastrnn import _threads
    from fastrnn._backends import spinpool

    part, out = _empty_part()
    pool = spinpool.SpinPool(1)
    with _threads.threaded():
        benchmark(pool.run, part, 2, out)
    pool.close()
