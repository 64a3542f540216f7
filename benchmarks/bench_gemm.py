"""The per-step recurrent GEMM: fastrnn's own kernels (kernels/cpu/gemm.py,
and kernels/cpu/packed.py on packed weights, which the threaded loops use)
beside OpenBLAS (Numba's np.dot, the BLAS the kernels link), at the shapes the
time loops use, each called T times inside one compiled loop as in a kernel.

Rows (M, K, N) are (batch rows, K, N) of one step: the forward's h @ W_hh^T
is (B, H, G*H), BPTT's dG @ W_hh is (B, G*H, H).  The table gives us per
call, GFLOP/s, own/BLAS and which one fastrnn's one-thread loops use
(gemm.OWN_MAX_ROWS, gemm.OWN_MAX_MACS decide).  Single-threaded own kernel;
OpenBLAS with its default threads; and "split": the own kernel with the
columns cut into one block per Numba thread, OpenBLAS held at one thread, as
the threaded loops run it (kernels/cpu/parallel.py).  The split column is
measured first for each shape, after a 0.3 s pause: OpenBLAS's workers spin
for a while after each multi-threaded call and would take its second core.

The second table asks what an LSTM forward+BPTT at S1-S5 can cost at best
with these GEMMs: the same GEMM calls fastrnn's kernels make (input
projection, the per-step products both ways, dx, dW_ih, dW_hh), nothing
else, beside fastrnn's whole forward+BPTT: how much of the kernel's time the
GEMMs take.  (torch.nn beside it: `fastrnn bench`.)

    PYTHONPATH=. python3 benchmarks/bench_gemm.py          # ~1 min
    python -m pytest benchmarks/bench_gemm.py --benchmark-group-by=param:shape
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np
from numba import njit

from numba import prange

from fastrnn import _threads
from fastrnn._kernels.cpu import gemm, packed
from fastrnn._kernels.cpu.blas import split
from fastrnn._kernels.cpu.common import JIT, JIT_PAR

# (M, K, N): LSTM S1-S5 forward and backward steps, and a few around the switch
SHAPES = [(1, 64, 256), (1, 256, 64), (1, 128, 512), (2, 64, 256), (2, 128, 512), (2, 512, 128), (8, 128, 512), (8, 512, 128), (16, 256, 1024), (32, 256, 1024),
          (32, 1024, 256), (64, 512, 2048), (64, 2048, 512), (32, 1024, 4096), (32, 4096, 1024)]
STEPS = 20


@njit(**JIT)
def _loop_own(A, Bt, BtT, out, steps, axpy):
    """The own form the one-thread loops take: axpy (W^T's rows) where
    gemm.axpy_fits, the dot form (_cols) otherwise."""
    for _ in range(steps):
        if axpy:
            gemm._axpy(A, BtT, out)
        else:
            gemm._cols(A, Bt, out, 0, Bt.shape[0])


@njit(**JIT)
def _loop_dot(A, Bt, out, steps):
    for _ in range(steps):
        gemm._cols(A, Bt, out, 0, Bt.shape[0])


@njit(**JIT_PAR)
def _loop_split(A, Bt, out, steps, nth):
    for _ in range(steps):
        for p in prange(nth):
            n0, n1 = split(Bt.shape[0], nth, p, 8)
            gemm._cols(A, Bt, out, n0, n1)


@njit(**JIT)
def _loop_packed(A, Pp, Bt, out, steps):
    for _ in range(steps):
        packed.step_product(A, Pp, Bt, out)


def _panels(Bt):
    Pp = packed.panels(Bt.shape[0], Bt.shape[1], Bt.dtype)
    packed.pack_rows(Bt, Pp)
    return Pp


@njit(**JIT)
def _loop_blas(A, BtT, out, steps):
    for _ in range(steps):
        np.dot(A, BtT, out)


def _problem(M, K, N, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, K)).astype(np.float32)
    Bt = rng.standard_normal((N, K)).astype(np.float32)
    return A, Bt, np.ascontiguousarray(Bt.T), np.empty((M, N), np.float32)


def _median_call(fn, reps=9):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) / STEPS


def measure(M, K, N):
    A, Bt, BtT, out = _problem(M, K, N)
    axpy = gemm.axpy_fits(M, Bt.nbytes)
    ref = A.astype(np.float64) @ Bt.astype(np.float64).T
    Pp = _panels(Bt)
    for name, fn in (("own", lambda: _loop_own(A, Bt, BtT, out, 1, axpy)), ("dot", lambda: _loop_dot(A, Bt, out, 1)),
                     ("packed", lambda: _loop_packed(A, Pp, Bt, out, 1))):
        out[:] = np.nan
        fn()
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        if not err < 1e-5:
            raise AssertionError(f"{name} kernel ({M}x{K}x{N}) relative error {err:.1e}")
    split_s = float("nan")
    time.sleep(0.3)
    with _threads.threaded() as nth:
        if nth > 1:
            out[:] = np.nan
            _loop_split(A, Bt, out, 1, nth)
            err = float(np.abs(out - ref).max() / np.abs(ref).max())
            if not err < 1e-5:
                raise AssertionError(f"split own kernel ({M}x{K}x{N}) relative error {err:.1e}")
            split_s = _median_call(lambda: _loop_split(A, Bt, out, STEPS, nth))
    own = _median_call(lambda: _loop_own(A, Bt, BtT, out, STEPS, axpy))
    # the dot form where the loops take the axpy form instead
    dot = _median_call(lambda: _loop_dot(A, Bt, out, STEPS)) if axpy else float("nan")
    blas = _median_call(lambda: _loop_blas(A, BtT, out, STEPS))
    pk = _median_call(lambda: _loop_packed(A, Pp, Bt, out, STEPS))
    flops = 2 * M * K * N
    return dict(M=M, K=K, N=N, own_us=own * 1e6, blas_us=blas * 1e6, dot_us=dot * 1e6, own_gflops=flops / own / 1e9,
                blas_gflops=flops / blas / 1e9, own_over_blas=own / blas,
                split_us=split_s * 1e6, split_gflops=flops / split_s / 1e9,
                packed_us=pk * 1e6, packed_gflops=flops / pk / 1e9,
                used="BLAS" if gemm.uses_blas(M, N, K) else "own (axpy)" if axpy else "own (dot)")


@njit(**JIT)
def _lstm_gemms(x2, w_ih, xg2, h, gh, dG, dh, dx2, dw_ih, dw_hh, Hs2, T, fw, fa, fb, bw, ba, bb):
    """Only the GEMMs of one LSTM forward+BPTT, as the one-thread kernels call
    them; (fw, fa, fb) and (bw, ba, bb) are the forward's and the BPTT's
    step operands (gemm.step_operands)."""
    np.dot(x2, w_ih.T, xg2)
    for _ in range(T):
        gemm.mm_nt(h, fw, gh, fa, fb)
    for t in range(T):
        gemm.mm_nt(dG[t], bw, dh, ba, bb)
    TB = dG.shape[0] * dG.shape[1]
    dG2 = dG.reshape((TB, dG.shape[2]))
    np.dot(dG2, w_ih, dx2)
    np.dot(dG2.T, x2, dw_ih)
    np.dot(dG2.T, Hs2, dw_hh)


def lstm_gemm_floor(shape):
    """(GEMM-only ms, fastrnn ms) for an LSTM forward+BPTT at a bench shape:
    medians over 3 rounds, each timing one then the other in a block of 5."""
    import fastrnn
    from fastrnn.bench import SHAPES as S, _problem as lstm_problem
    B, T, I, H = S[shape]
    x, w, dy = lstm_problem("lstm", B, T, I, H)
    f32 = np.float32
    G = 4 * H
    w_ih, w_hh = w[0], w[1]
    w_hhT = np.ascontiguousarray(w_hh.T)
    bufs = (x.reshape(T * B, I), w_ih, np.empty((T * B, G), f32),
            np.zeros((B, H), f32), np.empty((B, G), f32), np.full((T, B, G), 1e-3, f32), np.empty((B, H), f32),
            np.empty((T * B, I), f32), np.empty((G, I), f32), np.empty((G, H), f32), np.zeros((T * B, H), f32), T,
            *gemm.step_operands(B, w_hh, w_hhT), *gemm.step_operands(B, w_hhT, w_hh))

    def fr():
        y, hn, s = fastrnn.rnn_forward("lstm", x, w, training=True, backend="numba")
        return fastrnn.rnn_backward(s, dy)
    fns = {"gemm": lambda: _lstm_gemms(*bufs), "fastrnn": fr}
    times = {k: [] for k in fns}
    for _ in range(3):
        for k, f in fns.items():
            f()
            for _ in range(5):
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return med["gemm"], med["fastrnn"]


def main():
    print("| M x K x N | own us | dot form us (where own is axpy) | BLAS us | split us | own GFLOP/s | BLAS GFLOP/s "
          "| split GFLOP/s | own / BLAS | one-thread loops use | packed us | packed GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for M, K, N in SHAPES:
        r = measure(M, K, N)
        print(f"| {M}x{K}x{N} | {r['own_us']:.1f} | {r['dot_us']:.1f} | {r['blas_us']:.1f} | {r['split_us']:.1f} | "
              f"{r['own_gflops']:.1f} | {r['blas_gflops']:.1f} | {r['split_gflops']:.1f} | "
              f"{r['own_over_blas']:.2f} | {r['used']} | {r['packed_us']:.1f} | {r['packed_gflops']:.1f} |", flush=True)
    print()
    print("LSTM forward+BPTT, ms: its GEMMs alone (as fastrnn calls them) beside the whole of it")
    print()
    print("| shape | GEMMs only | fastrnn | GEMM share of fastrnn |")
    print("|---|---|---|---|")
    for shape in ("S1", "S2", "S3", "S4", "S5"):
        g, f = lstm_gemm_floor(shape)
        print(f"| {shape} | {g:.2f} | {f:.2f} | {g / f:.2f} |", flush=True)
    return 0


try:
    import pytest
except ImportError:  # pragma: no cover - script use without pytest
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("impl", ["own", "packed", "blas"])
    @pytest.mark.parametrize("shape", [f"{m}x{k}x{n}" for m, k, n in SHAPES])
    def test_step_gemm(benchmark, shape, impl):
        M, K, N = (int(v) for v in shape.split("x"))
        A, Bt, BtT, out = _problem(M, K, N)
        if impl == "own":
            fn = lambda: _loop_own(A, Bt, BtT, out, STEPS, gemm.axpy_fits(M, Bt.nbytes))  # noqa: E731
        elif impl == "packed":
            Pp = _panels(Bt)
            fn = lambda: _loop_packed(A, Pp, Bt, out, STEPS)  # noqa: E731
        else:
            fn = lambda: _loop_blas(A, BtT, out, STEPS)  # noqa: E731
        fn()
        benchmark.group = f"step-gemm-{shape}"
        benchmark(fn)
        ref = A.astype(np.float64) @ Bt.astype(np.float64).T
        assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5, f"{impl} {shape}: wrong product"


if __name__ == "__main__":
    sys.exit(main())
