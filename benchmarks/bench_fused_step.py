"""The LSTM's forward by rows with the input projection folded into each
step's product against the same loop with the projection before it
(fastrnn/_backends/numba_cpu.py, FUSED_STEP_MAX_BYTES), in one process, the
two taking turns within each repetition.

This is the measurement behind FUSED_STEP_MAX_BYTES.  The step form is
forced by setting that bound for the call (so shapes over it can be run
fused here); the by-rows loops themselves are forced the same way as in
bench_forms.py.  With --torch-threads N the script imports torch and sets
it to N threads first (N > 1: the parts run on torch's OpenMP team).

    PYTHONPATH=. python3 benchmarks/bench_fused_step.py                   # S2, S3, ~1 min
    PYTHONPATH=. python3 benchmarks/bench_fused_step.py --shapes S3,32x64x256x256 --lengths random
    PYTHONPATH=. python3 benchmarks/bench_fused_step.py --torch-threads 2

Columns: medians over the repetitions of the median of 3 calls, in ms, for
the inference forward and for forward+BPTT; "unfused/fused" > 1 means the
fused step is faster.  Shapes are the benchmark's names (fastrnn.bench.SHAPES,
with its problem data) or BxTxIxH.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np


def _shape(name):
    from fastrnn.bench import SHAPES
    if name in SHAPES:
        return SHAPES[name]
    try:
        B, T, I, H = (int(v) for v in name.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shapes: expected names from {sorted(SHAPES)} or BxTxIxH, got {name!r}")
    return B, T, I, H


def compare(shape, reps, lengths=False, seed=0):
    """{form_what: [seconds per repetition]} for form in fused, unfused and
    what in fw (inference forward), fb (forward+BPTT)."""
    import fastrnn
    from fastrnn._backends import numba_cpu
    from fastrnn.bench import _problem, timeit

    B, T, I, H = _shape(shape)
    x, w, dy = _problem("lstm", B, T, I, H, seed)
    L = np.random.default_rng(seed).integers(1, T + 1, B) if lengths else None

    def fw():
        fastrnn.rnn_forward("lstm", x, w, lengths=L, backend="numba")

    def fb():
        _, _, saved = fastrnn.rnn_forward("lstm", x, w, lengths=L, training=True, backend="numba")
        fastrnn.rnn_backward(saved, dy)

    names = ("ROWS_MODES", "ROWS_MAX_WHH_BYTES", "FUSED_STEP_MAX_BYTES")
    saved_cfg = {n: getattr(numba_cpu, n) for n in names}
    out = {}
    try:
        numba_cpu.ROWS_MODES = tuple(set(saved_cfg["ROWS_MODES"]) | {"lstm"})
        numba_cpu.ROWS_MAX_WHH_BYTES = 1 << 40
        for r in range(reps):
            for form in (("fused", "unfused") if r % 2 else ("unfused", "fused")):
                numba_cpu.FUSED_STEP_MAX_BYTES = 1 << 40 if form == "fused" else -1
                for what, f in (("fw", fw), ("fb", fb)):
                    out.setdefault(f"{form}_{what}", []).append(timeit(f, min_reps=3, min_time=0.0, max_reps=3))
    finally:
        for n, v in saved_cfg.items():
            setattr(numba_cpu, n, v)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="S2,S3")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--lengths", choices=("full", "random"), default="full",
                    help="random: lengths in [1, T] (seeded), as the benchmark's random rows")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="import torch and set it to this many threads first (0: no torch)")
    args = ap.parse_args(argv)
    if args.torch_threads:
        import torch
        torch.set_num_threads(args.torch_threads)
    print(f"| shape | lengths | fused fwd ms | unfused fwd ms | unfused/fused | fused fwd+bwd ms "
          f"| unfused fwd+bwd ms | unfused/fused |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        r = compare(shape, args.reps, args.lengths == "random")
        m = {k: statistics.median(v) * 1e3 for k, v in r.items()}
        print(f"| {shape} | {args.lengths} | {m['fused_fw']:.2f} | {m['unfused_fw']:.2f} | "
              f"{m['unfused_fw'] / m['fused_fw']:.2f} | {m['fused_fb']:.2f} | {m['unfused_fb']:.2f} | "
              f"{m['unfused_fb'] / m['fused_fb']:.2f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
