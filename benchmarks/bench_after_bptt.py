"""The GEMMs after the BPTT loop: fastrnn's own 4 x 32 block
(kernels/cpu/packed.py, gemm_nn and gemm_tn) beside OpenBLAS (the strided
BLAS call the kernels otherwise make), on one thread, at each thread's share
of the region as parallel.after_loop_part cuts it for two threads:

    dx     rows [0, T*B/2) of dG @ W_ih          (M = T*B/2, K = G*H, N = I)
    dW_ih  rows [0, G*H/2) of dG^T @ x           (M = G*H/2, K = T*B, N = I)
    dW_hh  rows [0, G*H/2) of dG^T @ h_prev      (M = G*H/2, K = T*B, N = H)

The table gives GFLOP/s of each, own over OpenBLAS, and which one the
backend runs for that layer on this machine's blocks (numba_cpu.OWN_AFTER_MAX_GH by
the vector width, OWN_AFTER_MAX_IH).

    PYTHONPATH=. python3 benchmarks/bench_after_bptt.py      # ~30 s
    python -m pytest benchmarks/bench_after_bptt.py --benchmark-group-by=param:case
"""
from __future__ import annotations

import statistics
import time

import numpy as np
from numba import njit

from fastrnn import _threads
from fastrnn._backends import numba_cpu
from fastrnn._kernels.cpu import packed
from fastrnn._kernels.cpu.blas import gemm

G = {"rnn_tanh": 1, "gru": 3, "lstm": 4}
SHAPES = {"S2": (8, 100, 128, 128), "S3": (32, 64, 128, 256), "S4": (64, 50, 512, 512)}
CASES = [(mode, s) for s in SHAPES for mode in G]


@njit(nogil=True)
def _own(dG, w_ih, x, Hs, dx, dwi, dwh):
    h = dG.shape[0] // 2
    g = dG.shape[1] // 2
    packed.gemm_nn(dG[:h], w_ih, dx)
    packed.gemm_tn(dG[:, :g], x, dwi)
    packed.gemm_tn(dG[:, :g], Hs, dwh)


@njit(nogil=True)
def _blas(dG, w_ih, x, Hs, dx, dwi, dwh):
    h = dG.shape[0] // 2
    g = dG.shape[1] // 2
    z = dx.dtype.type(0)
    gemm(dG[:h], False, w_ih, False, dx, z)
    gemm(dG[:, :g], True, x, False, dwi, z)
    gemm(dG[:, :g], True, Hs, False, dwh, z)


def _problem(mode, shape, seed=0):
    B, T, I, H = SHAPES[shape]
    GH, R = G[mode] * H, T * B
    rng = np.random.default_rng(seed)
    f = np.float32
    dG = rng.standard_normal((R, GH), dtype=f)
    w_ih = rng.standard_normal((GH, I), dtype=f)
    x = rng.standard_normal((R, I), dtype=f)
    Hs = rng.standard_normal((R, H), dtype=f)
    outs = (np.empty((R // 2, I), f), np.empty((GH // 2, I), f), np.empty((GH // 2, H), f))
    flops = 2 * (R // 2 * GH * I + GH // 2 * R * (I + H))
    return (dG, w_ih, x, Hs, *outs), flops, (GH, I, H)


def _median(fn, args, reps=15):
    fn(*args)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    print("one thread, each thread's share of the region after BPTT (two threads), float32")
    print("| mode | shape | own GFLOP/s | OpenBLAS GFLOP/s | own / OpenBLAS | the backend runs |")
    print("|---|---|---|---|---|---|")
    with _threads.threaded():       # OpenBLAS held at one thread, as inside the kernels
        for mode, shape in CASES:
            args, flops, (GH, I, H) = _problem(mode, shape)
            t_own = _median(_own, args)
            t_blas = _median(_blas, args)
            picks = numba_cpu._own_after(GH, I, H, np.dtype(np.float32))
            print(f"| {mode} | {shape} | {flops / t_own / 1e9:.0f} | {flops / t_blas / 1e9:.0f} | "
                  f"{t_blas / t_own:.2f} | {'own' if picks else 'OpenBLAS'} |")


try:
    import pytest
except ImportError:  # pragma: no cover - script use without pytest
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("impl", ["own", "blas"])
    @pytest.mark.parametrize("case", [f"{m}-{s}" for m, s in CASES])
    def test_after_bptt_gemms(benchmark, case, impl):
        mode, shape = case.split("-")
        args, _, _ = _problem(mode, shape)
        fn = _own if impl == "own" else _blas
        with _threads.threaded():
            fn(*args)
            benchmark(fn, *args)
        # the two agree (the kernel tests check each against float64)
        ref = [np.empty_like(a) for a in args[4:]]
        _blas(*args[:4], *ref)
        for got, want in zip(args[4:], ref):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max())


if __name__ == "__main__":
    main()
