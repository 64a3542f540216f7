"""Sweep of the persistent kernels' block count on a GPU machine (tuning data
for the dispatch rule in fastrnn/_backends/cupy_cuda.py).

For the small-batch shapes of bench_gpu.py, every mode, float32, and
PERSIST_BLOCKS in a few values (U = ceil(H / blocks) hidden units per block):
forward and forward+BPTT time (CUDA events, median), and the largest
relative difference of y, dx, dW_hh against the default (one block per SM)
result, which the tests hold to the float64 oracle.  Prints a markdown table.

    python3 benchmarks/gpu_sweep_blocks.py      # from a staged checkout (gpu_check.sh's layout)
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np

SHAPES = [(1, 100, 256, 256), (8, 100, 512, 512), (16, 200, 768, 768)]
BLOCKS = [None, 64, 32, 16, 8]


def main():
    import cupy

    import fastrnn
    from fastrnn._backends import cupy_cuda as cc
    cc.set_path("persistent")

    def med_ms(fn, reps=15):
        fn()
        fn()
        cupy.cuda.Device().synchronize()
        ts = []
        for _ in range(reps):
            a, b = cupy.cuda.Event(), cupy.cuda.Event()
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(cupy.cuda.get_elapsed_time(a, b))
        return statistics.median(ts)

    print("| mode | B,T,I,H | blocks | U | fwd ms | f+b ms | max rel diff vs default |")
    print("|---|---|---|---|---|---|---|", flush=True)
    t0 = time.time()
    for B, T, I, H in SHAPES:
        for mode in ("rnn_tanh", "rnn_relu", "gru", "lstm"):
            G = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}[mode]
            rng = np.random.default_rng(0)
            k = 1 / np.sqrt(H)
            w = [cupy.asarray(rng.uniform(-k, k, s).astype(np.float32)) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
            x = cupy.asarray(rng.standard_normal((T, B, I)).astype(np.float32))
            dy = cupy.asarray(rng.standard_normal((T, B, H)).astype(np.float32))
            ref = None
            for nb in BLOCKS:
                cc.PERSIST_BLOCKS = nb
                try:
                    y, hn, s = fastrnn.rnn_forward(mode, x, w, training=True)
                    dx, dh0, dw = fastrnn.rnn_backward(s, dy)
                except ValueError as exc:          # does not fit with this many blocks
                    print(f"| {mode} | {B},{T},{I},{H} | {nb} | - | - | - | does not fit: {str(exc)[:60]} |", flush=True)
                    continue
                got = [cupy.asnumpy(a) for a in (y, dx, dw[1])]
                if ref is None:
                    ref = got
                diff = max(float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-30)) for g, r in zip(got, ref))
                fwd = med_ms(lambda: fastrnn.rnn_forward(mode, x, w))

                def fb():
                    _, _, s2 = fastrnn.rnn_forward(mode, x, w, training=True)
                    fastrnn.rnn_backward(s2, dy)
                tfb = med_ms(fb)
                U = -(-H // (nb or cc._runtime().sm_count))
                print(f"| {mode} | {B},{T},{I},{H} | {nb or 'SMs'} | {U} | {fwd:.3f} | {tfb:.3f} | {diff:.1e} |",
                      flush=True)
    cc.PERSIST_BLOCKS = None
    cc.set_path(None)
    print(f"\n{time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
