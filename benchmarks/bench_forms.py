"""The threaded time loops' two forms side by side: by batch rows against by
hidden units (fastrnn/_backends/numba_cpu.py, ROWS_*), for every mode, in
one process, the two forms taking turns within each repetition.

This is the measurement behind ROWS_MODES and ROWS_MAX_WHH_BYTES.  With
--torch-threads N the script imports torch and sets it to N threads first,
so that where N > 1 the by-rows parts run on torch's OpenMP team
(fastrnn/_backends/torch_team.py), as they do inside a PyTorch program.

    PYTHONPATH=. python3 benchmarks/bench_forms.py                      # S2, S3, all modes, ~1 min
    PYTHONPATH=. python3 benchmarks/bench_forms.py --modes gru --shapes S2,S3,S4 --reps 9
    PYTHONPATH=. python3 benchmarks/bench_forms.py --torch-threads 2    # by rows on torch's team

Columns: medians over the repetitions of the median of 3 calls, in ms, for
forward+BPTT (rnn_forward(training=True) + rnn_backward) and the inference
forward; "rows/units" < 1 means by rows is faster.  The shapes are the
benchmark's (fastrnn.bench.SHAPES, with its problem data); the forms are forced by setting
ROWS_MODES and ROWS_MAX_WHH_BYTES for the call, so a shape whose W_hh is
over the cache bound (S4, S5) can still be run by rows here.
"""
from __future__ import annotations

import argparse
import statistics
import sys


def compare(mode, shape, reps, seed=0):
    """{form_what: [seconds per repetition]} for form in rows, units and what in fb, fw."""
    import fastrnn
    from fastrnn._backends import numba_cpu
    from fastrnn.bench import SHAPES, _problem, timeit

    B, T, I, H = SHAPES[shape]
    x, w, dy = _problem(mode, B, T, I, H, seed)

    def fb():
        _, _, saved = fastrnn.rnn_forward(mode, x, w, training=True, backend="numba")
        fastrnn.rnn_backward(saved, dy)

    def fw():
        fastrnn.rnn_forward(mode, x, w, backend="numba")

    saved_cfg = numba_cpu.ROWS_MODES, numba_cpu.ROWS_MAX_WHH_BYTES
    others = tuple(m for m in saved_cfg[0] if m != mode)
    out = {}
    try:
        for r in range(reps):
            for form in (("rows", "units") if r % 2 else ("units", "rows")):
                numba_cpu.ROWS_MODES = others + ((mode,) if form == "rows" else ())
                numba_cpu.ROWS_MAX_WHH_BYTES = 1 << 40 if form == "rows" else saved_cfg[1]
                for what, f in (("fb", fb), ("fw", fw)):
                    out.setdefault(f"{form}_{what}", []).append(timeit(f, min_reps=3, min_time=0.0,
                                                                       max_reps=3))
    finally:
        numba_cpu.ROWS_MODES, numba_cpu.ROWS_MAX_WHH_BYTES = saved_cfg
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="rnn_tanh,rnn_relu,gru,lstm")
    ap.add_argument("--shapes", default="S2,S3")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="import torch and run it at this many threads first (0: no torch)")
    args = ap.parse_args(argv)
    if args.torch_threads:
        import torch
        torch.set_num_threads(args.torch_threads)
    from fastrnn import _threads
    from fastrnn._backends import numba_cpu, torch_team

    nth = _threads.available_threads()
    if nth < 2:
        sys.exit(f"the threaded kernels cannot run here: {_threads.why_single()}")
    where = "fastrnn's own threads"
    if numba_cpu._torch_threads() > 1:
        where = "torch's OpenMP team" if torch_team.runner() is not None else "(none: by units only)"
    print(f"# {nth} threads; by-rows parts on {where}; medians of {args.reps}, ms")
    print("| mode | shape | rows fwd+bwd | units fwd+bwd | rows/units | rows fwd | units fwd | rows/units |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        for shape in args.shapes.split(","):
            r = {k: 1e3 * statistics.median(v) for k, v in compare(mode, shape, args.reps).items()}
            print(f"| {mode} | {shape} | {r['rows_fb']:.2f} | {r['units_fb']:.2f} | "
                  f"{r['rows_fb'] / r['units_fb']:.2f} | {r['rows_fw']:.2f} | {r['units_fw']:.2f} | "
                  f"{r['rows_fw'] / r['units_fw']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
