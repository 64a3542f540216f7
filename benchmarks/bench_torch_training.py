"""torch.nn vs fastrnn.torch on the CPU, float32, measured side by side in one run.

Three measurements:

1. training: a real loop (Embedding -> LSTM or GRU -> Linear, Adam,
   cross-entropy next-token loss), steps/s, median over repetitions;
2. forward+backward of the recurrent layer alone at the shapes
   S1..S5 (B, T, I, H), with the GEMM floor measured in the same run;
3. the wrapper's per-call overhead: fastrnn.torch.LSTM forward at a tiny
   size minus the raw fastrnn.rnn_forward call on the same arrays.

Correctness is checked before anything is timed; JIT compilation is kept out
by warm-up rounds.  As a script it prints markdown tables and writes JSON to
bench_results/torch_training.json:

    PYTHONPATH=. python3 benchmarks/bench_torch_training.py            # ~1.5 min, 1 thread
    PYTHONPATH=. python3 benchmarks/bench_torch_training.py --quick    # seconds
    PYTHONPATH=. python3 benchmarks/bench_torch_training.py --threads 2

Under pytest-benchmark (functions test_*, grouped by what they measure):

    pytest benchmarks/bench_torch_training.py --benchmark-group-by=group   # $FASTRNN_BENCH_THREADS, default 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import timeit
from pathlib import Path

import numpy as np
import torch

import fastrnn
import fastrnn.bench
import fastrnn.torch as frt

SHAPES = {  # name: (B, T, I, H)
    "S1": (1, 100, 64, 64),
    "S2": (8, 100, 128, 128),
    "S3": (32, 64, 128, 256),
    "S4": (64, 50, 512, 512),
    "S5": (32, 25, 1024, 1024),
}
GATES = {"lstm": 4, "gru": 3}
_LIMITS = []   # keeps threadpoolctl's limiter alive for the run
# the training model: next-token prediction on random tokens
TRAIN = dict(V=1000, E=128, H=256, B=32, T=64)


# ---------------------------------------------------------------- helpers

def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                numpy=np.__version__, fastrnn=fastrnn.__version__, torch_threads=torch.get_num_threads())
    try:
        import numba
        info.update(numba=numba.__version__, numba_threads=numba.get_num_threads())
    except Exception:
        pass
    try:
        from fastrnn import dispatch
        info["fastrnn_backend"] = dispatch.select(None, "numpy", "lstm", "float32").name
    except Exception as exc:
        info["fastrnn_backend"] = f"none ({exc})"
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = sorted({f"{p['internal_api']}:{p['num_threads']}" for p in threadpool_info()})
    except Exception:
        pass
    return info


def set_threads(n):
    """n threads for torch and the BLAS libraries (SciPy's, which the numba kernels call)."""
    torch.set_num_threads(n)
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(n)
    fastrnn.backends()     # load the backends' libraries (SciPy's BLAS for numba) first:
    try:                   # threadpoolctl limits only libraries already loaded
        from threadpoolctl import threadpool_limits
        _LIMITS.append(threadpool_limits(n))
    except Exception:
        pass
    # fastrnn's threaded kernels use Numba's threads (fastrnn/_threads.py):
    # give them the same count, so that both sides get n cores.
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def gemm_call(n=1024):
    """(fn, flops): one float32 n^3 GEMM, torch.mm on torch's intra-op
    threads (those torch.nn's RNNs run on, and fastrnn's parts by rows
    with torch at more than one thread).  Not NumPy's matmul: NumPy's
    OpenBLAS (a copy of its own) leaves its workers spinning on the cores
    for tens of ms after each call, and the next function in the same
    repetition then shared its cores with them: torch.nn's LSTM took
    17-92 ms at S2 against 5 (fifteenth session)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = a.clone()
    out = torch.empty(n, n)
    return (lambda: torch.mm(a, b, out=out)), 2 * n ** 3


def gemm_rate(n=1024, reps=7):
    """float32 GEMM rate of this machine (FLOP/s), best of reps (the run's
    header; each shape's floor uses the GEMMs timed beside that shape)."""
    fn, flops = gemm_call(n)
    fn()
    best = min(timeit.repeat(fn, number=1, repeat=reps))
    return flops / best


def fwd_bwd_flops(cell, B, T, I, H):
    """~2*T*B*G*H*(I+H) forward, about twice that backward."""
    return 3 * 2 * T * B * GATES[cell] * H * (I + H)


def paired_times(fns, reps, warmup=1):
    """{name: [seconds per repetition]}, the functions taking turns within each
    repetition, so that both sides of a comparison see the same machine
    (other load on a shared machine comes and goes)."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    out = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            out[k].append(time.perf_counter() - t0)
    return out


def make_rnn(impl, cell, I, H, seed=0, **kw):
    torch.manual_seed(seed)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    ref = cls(I, H, batch_first=True, **kw)
    return ref if impl == "torch" else frt.from_torch(ref)


# ---------------------------------------------------------------- 1. training loop

class LM(torch.nn.Module):
    def __init__(self, rnn, V, E, H):
        super().__init__()
        self.emb = torch.nn.Embedding(V, E)
        self.rnn = rnn
        self.out = torch.nn.Linear(H, V)

    def forward(self, tok):
        y, _ = self.rnn(self.emb(tok))
        return self.out(y)


def make_trainer(impl, cell, V, E, H, B, T, seed=0):
    """(step function returning the loss, model): the same model and data for both impls."""
    torch.manual_seed(seed)
    model = LM(make_rnn("torch", cell, E, H, seed), V, E, H)
    if impl == "fastrnn":
        frt.swap_rnns(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed + 1)
    tok = torch.randint(0, V, (B, T + 1), generator=g)
    inp, tgt = tok[:, :-1], tok[:, 1:].reshape(-1)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(inp).reshape(-1, V), tgt)
        loss.backward()
        opt.step()
        return loss.item()

    return step, model


def check_training(cell, cfg, steps=3):
    """Both impls give the same loss curve (float32 rounding) before any timing."""
    curves = {impl: [make_trainer(impl, cell, **cfg)[0]] for impl in ("torch", "fastrnn")}
    for impl in curves:
        step = curves[impl][0]
        curves[impl] = [step() for _ in range(steps)]
    a, b = np.array(curves["torch"]), np.array(curves["fastrnn"])
    if not np.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise AssertionError(f"training {cell}: loss curves differ: torch {a} fastrnn {b}")
    return curves


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def bench_training(cell, cfg, reps, steps_per_rep):
    check_training(cell, cfg)
    steps = {impl: make_trainer(impl, cell, **cfg)[0] for impl in ("torch", "fastrnn")}
    times = paired_times({impl: (lambda st=st: [st() for _ in range(steps_per_rep)]) for impl, st in steps.items()},
                         reps, warmup=1)
    out = {}
    for impl, ts in times.items():
        med = statistics.median(ts)
        out[impl] = dict(steps_per_s=steps_per_rep / med, ms_per_step=1e3 * med / steps_per_rep,
                         rep_s=[round(t, 5) for t in ts])
        log(f"  train {cell} {impl}: {out[impl]['steps_per_s']:.2f} steps/s")
    out["speedup"] = out["fastrnn"]["steps_per_s"] / out["torch"]["steps_per_s"]
    return out


# ---------------------------------------------------------------- 2. shapes, fwd+bwd

def fwd_bwd_runner(impl, cell, B, T, I, H, seed=0):
    rnn = make_rnn(impl, cell, I, H, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, T, I, generator=g, requires_grad=True)
    dy = torch.randn(B, T, H, generator=g)

    def run():
        for p in rnn.parameters():
            p.grad = None
        x.grad = None
        y, _ = rnn(x)
        y.backward(dy)
        return y

    return run, rnn, x


def raw_runner(cell, B, T, I, H, seed=0):
    """fastrnn.rnn_forward + rnn_backward on time-major NumPy arrays: the
    kernels with no torch around them (what the wrapper adds is the rest)."""
    rnn = make_rnn("torch", cell, I, H, seed)
    w = tuple(p.detach().numpy() for p in rnn._flat_weights)
    g = torch.Generator().manual_seed(seed + 1)
    x = np.ascontiguousarray(torch.randn(B, T, I, generator=g).numpy().transpose(1, 0, 2))
    dy = np.ascontiguousarray(torch.randn(B, T, H, generator=g).numpy().transpose(1, 0, 2))

    def run():
        y, _, saved = fastrnn.rnn_forward(cell, x, w, training=True)
        return fastrnn.rnn_backward(saved, dy)

    return run


def check_shape(cell, B, T, I, H):
    """fastrnn vs torch.nn outputs and gradients at this shape (float32 rounding, relative)."""
    res = {}
    for impl in ("torch", "fastrnn"):
        run, rnn, x = fwd_bwd_runner(impl, cell, B, T, I, H)
        y = run()
        res[impl] = [("y", y.detach()), ("dx", x.grad)] + [(f"d{n}", p.grad) for n, p in rnn.named_parameters()]
    for (name, a), (_, b) in zip(res["torch"], res["fastrnn"]):
        err = (a - b).abs().max().item() / max(a.abs().max().item(), 1e-30)
        if err > 2e-4:
            raise AssertionError(f"{cell} {(B, T, I, H)} {name}: max relative error {err:.2e} vs torch.nn")


# Repetitions of a row of the shapes table where --reps is not given: as
# many as fit in ROW_BUDGET_S (one repetition = torch.nn, fastrnn.torch
# and the raw kernels once each), at least MIN_REPS and at most MAX_REPS.
# This VM's timings of one call scatter by +-5-10 % between repetitions, and
# a median of 5 moved S3's speedup by 0.94-1.09x between runs of the same
# code (twenty-ninth session); the cheap rows (S1-S3) take 21-31 for about a
# second more each, S4 and S5 stay at 5-7.
ROW_BUDGET_S = 3.0
MIN_REPS, MAX_REPS = 5, 31
TRAIN_REPS = 11     # the training loop's, where --reps is not given (5 steps each)


def row_reps(runs, reps):
    """reps, or where it is None the repetitions ROW_BUDGET_S allows, from
    one timed warm-up repetition of the row's calls."""
    t0 = time.perf_counter()
    for f in runs.values():
        f()
    if reps is not None:
        return reps
    return max(MIN_REPS, min(MAX_REPS, int(ROW_BUDGET_S / max(time.perf_counter() - t0, 1e-6))))


def bench_shapes(cells, shapes, reps):
    rows = []
    for cell in cells:
        for name, (B, T, I, H) in shapes.items():
            check_shape(cell, B, T, I, H)
            row = dict(cell=cell, shape=name, B=B, T=T, I=I, H=H)
            runs = {impl: fwd_bwd_runner(impl, cell, B, T, I, H)[0] for impl in ("torch", "fastrnn")}
            runs["raw"] = raw_runner(cell, B, T, I, H)
            fastrnn.bench._settle(*runs.values())      # background compiles done before any timing
            row["reps"] = n = row_reps(runs, reps)
            # the floor's GEMM rate, timed in blocks just before and just
            # after the row's repetitions (this VM's speed drifts by 1.5-2x
            # within minutes; one rate for the whole run put some rows'
            # floor fraction above 1).  Not inside them: the call after it
            # in each repetition then met torch's threads just out of a big
            # GEMM (torch.nn's LSTM at S1: 1.5-2.1 ms against 0.9-1.0)
            gemm, gemm_flops = gemm_call()
            around = paired_times({"gemm": gemm}, 5)["gemm"]
            times = paired_times(runs, n, warmup=1)
            around += paired_times({"gemm": gemm}, 5)["gemm"]
            row["gemm_gflops"] = gemm_flops / statistics.median(around) / 1e9
            floor = fwd_bwd_flops(cell, B, T, I, H) / (row["gemm_gflops"] * 1e9)
            row["floor_ms"] = 1e3 * floor
            for impl, ts in times.items():
                med = statistics.median(ts)
                row[f"{impl}_ms"] = 1e3 * med
                row[f"{impl}_floor_fraction"] = floor / med
                log(f"  {cell} {name} {impl}: {1e3 * med:.2f} ms")
            row["speedup"] = row["torch_ms"] / row["fastrnn_ms"]
            # the speedup over torch.nn of any implementation that ran every
            # FLOP at the GEMM rate: a speedup target above it cannot be met
            # on this machine (S2's 2x, for one, asks for ~0.9-1.0 of it)
            row["ceiling"] = row["torch_ms"] / row["floor_ms"]
            rows.append(row)
    return rows


# ---------------------------------------------------------------- 3. per-call overhead

def overhead_runners(I=4, H=4, T=1, B=1):
    """(module forward, raw rnn_forward on the same arrays, module fwd+bwd, raw fwd+bwd)."""
    torch.manual_seed(0)
    m = frt.LSTM(I, H, backend=None)
    x = torch.randn(T, B, I)
    xa = x.numpy()
    w = tuple(p.detach().numpy() for p in m._flat_weights)

    def raw_fwd():
        return fastrnn.rnn_forward("lstm", xa, w, training=True)

    def raw_fwd_bwd():
        y, hn, saved = fastrnn.rnn_forward("lstm", xa, w, training=True)
        return fastrnn.rnn_backward(saved, np.ones_like(y))

    def mod_fwd():
        return m(x)

    def mod_fwd_bwd():
        y, _ = m(x)
        y.backward(torch.ones_like(y))

    return mod_fwd, raw_fwd, mod_fwd_bwd, raw_fwd_bwd


class _EmptyFunction(torch.autograd.Function):
    """The least an autograd.Function wrapper can do: same inputs and outputs
    as the LSTM layer's, outputs wrapped from ready NumPy arrays, no kernel;
    its backward hands autograd ready weight gradients (which it then
    accumulates into .grad, as it does for the real layer)."""

    @staticmethod
    def forward(ctx, arrays, wgrads, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        ctx.wgrads = wgrads
        return tuple(torch.from_numpy(a) for a in arrays)

    @staticmethod
    def backward(ctx, *grads):
        return (None,) * 5 + ctx.wgrads


class _EmptyModule(torch.nn.Module):
    def __init__(self, like):
        super().__init__()
        self.w = list(like.parameters())
        y, (h, c), _ = fastrnn.rnn_forward("lstm", np.zeros((1, 1, 4), np.float32),
                                           tuple(p.detach().numpy() for p in self.w))
        self.arrays = (y, h, c)
        self.wgrads = tuple(torch.zeros_like(p) for p in self.w)

    def forward(self, x):
        return _EmptyFunction.apply(self.arrays, self.wgrads, x, None, None, *self.w)


def _interleaved(fns, rounds, number):
    """{name: [per-call seconds per round]}: each round times every fn in turn
    (best of 2), thread CPU time."""
    for f in fns.values():
        for _ in range(50):
            f()
    out = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            out[k].append(min(timeit.repeat(f, number=number, repeat=2, timer=time.thread_time)) / number)
    return out


def bench_overhead(rounds=9, number=200):
    """Interleaved rounds; the overhead is the median over rounds of
    (module - raw).  Timed in CPU time of this thread (time.thread_time): at
    this size everything runs on the calling thread, and on a shared machine
    wall time would add the time the thread waited for a core.  For context,
    in the same run: the wrapper with the kernel call stubbed out (its own
    cost without cache interplay with the kernel), the floor of any
    Module + autograd.Function wrapper, and torch.nn.LSTM itself."""
    mod_fwd, raw_fwd, mod_fb, raw_fb = overhead_runners()
    torch.manual_seed(0)
    tl = torch.nn.LSTM(4, 4)
    x = torch.randn(1, 1, 4)
    empty = _EmptyModule(tl)

    def torch_fb():
        y, _ = tl(x)
        y.backward(torch.ones_like(y))

    def empty_fb():
        y = empty(x)[0]
        y.backward(torch.ones_like(y))

    t = _interleaved({"raw_fwd": raw_fwd, "mod_fwd": mod_fwd, "raw_fb": raw_fb, "mod_fb": mod_fb,
                      "torch_fwd": lambda: tl(x), "torch_fb": torch_fb, "empty": lambda: empty(x),
                      "empty_fb": empty_fb},
                     rounds, number)
    # the wrapper alone: the kernel call replaced by a stub returning a ready
    # result (the modules call _forward_checked for weights they checked,
    # rnn_forward otherwise)
    ready = raw_fwd()
    real = frt.rnn_forward, frt._forward_checked
    frt.rnn_forward = frt._forward_checked = lambda *a, **k: ready
    try:
        stub = _interleaved({"stub": mod_fwd}, rounds, number)["stub"]
    finally:
        frt.rnn_forward, frt._forward_checked = real
    med = lambda v: 1e6 * statistics.median(v)  # noqa: E731
    diff = lambda a, b: 1e6 * statistics.median([p - q for p, q in zip(t[a], t[b])])  # noqa: E731
    out = {"forward": dict(module_us=med(t["mod_fwd"]), raw_us=med(t["raw_fwd"]),
                           overhead_us=diff("mod_fwd", "raw_fwd")),
           "forward+backward": dict(module_us=med(t["mod_fb"]), raw_us=med(t["raw_fb"]),
                                    overhead_us=diff("mod_fb", "raw_fb")),
           "wrapper_alone_us": med(stub), "empty_module_function_us": med(t["empty"]),
           "empty_module_function_fwd_bwd_us": med(t["empty_fb"]),
           "torch_lstm_forward_us": med(t["torch_fwd"]), "torch_lstm_forward_backward_us": med(t["torch_fb"])}
    log(f"  overhead forward {out['forward']['overhead_us']:.1f} us, wrapper alone {out['wrapper_alone_us']:.1f} us")
    return out


# ---------------------------------------------------------------- report

def markdown(res):
    m = res["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']} ({m['torch_threads']} threads), "
             f"numba {m.get('numba', '-')} ({m.get('numba_threads', '-')} threads), "
             f"fastrnn backend {m['fastrnn_backend']}; float32 GEMM rate {res['gemm_gflops']:.0f} GFLOP/s "
             "at the start.", ""]
    if "training" in res:
        t = res["train_config"]
        lines += [f"Training steps/s (Embedding {t['V']}x{t['E']} -> {{cell}} H={t['H']} -> Linear, Adam, "
                  f"cross-entropy; B={t['B']}, T={t['T']}; median of {res['train_reps']} repetitions of "
                  f"{res['train_steps']} steps, the two taking turns):", "",
                  "| cell | torch.nn steps/s | fastrnn.torch steps/s | speedup |", "|---|---|---|---|"]
        for cell, r in res["training"].items():
            lines.append(f"| {cell} | {r['torch']['steps_per_s']:.2f} | {r['fastrnn']['steps_per_s']:.2f} | "
                         f"{r['speedup']:.2f}x |")
        lines.append("")
    if "shapes" in res:
        lines += [f"Recurrent layer forward+backward, ms (median of the row's repetitions, the two taking turns); "
                  "floor = FLOPs / the rate of a 1024^3 torch.mm timed just before and after the row; "
                  "ceiling = torch.nn / floor, the speedup of a layer that ran every FLOP at that rate:", "",
                  "| cell | shape (B,T,I,H) | floor ms | torch.nn ms | fastrnn.torch ms | speedup | ceiling | "
                  "fastrnn floor fraction | raw fastrnn ms (no torch) | GEMM GFLOP/s | reps |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["shapes"]:
            lines.append(f"| {r['cell']} | {r['shape']} ({r['B']},{r['T']},{r['I']},{r['H']}) | "
                         f"{r['floor_ms']:.2f} | {r['torch_ms']:.2f} | {r['fastrnn_ms']:.2f} | "
                         f"{r['speedup']:.2f}x | {r['ceiling']:.2f}x | {r['fastrnn_floor_fraction']:.2f} | "
                         f"{r['raw_ms']:.2f} | {r['gemm_gflops']:.0f} | {r['reps']} |")
        lines.append("")
    if "overhead" in res:
        o = res["overhead"]
        lines += ["Per-call cost at a tiny size, LSTM T=1 B=1 I=H=4 (thread CPU time, median of interleaved "
                  "rounds, us):", "", "| what | forward | forward+backward |", "|---|---|---|",
                  f"| raw fastrnn.rnn_forward (+ rnn_backward) on the same arrays | {o['forward']['raw_us']:.1f} | "
                  f"{o['forward+backward']['raw_us']:.1f} |",
                  f"| fastrnn.torch.LSTM | {o['forward']['module_us']:.1f} | {o['forward+backward']['module_us']:.1f} |",
                  f"| **wrapper overhead** (fastrnn.torch.LSTM - raw) | **{o['forward']['overhead_us']:.1f}** | "
                  f"{o['forward+backward']['overhead_us']:.1f} |",
                  f"| the wrapper alone (kernel call stubbed out) | {o['wrapper_alone_us']:.1f} | |",
                  f"| floor of any nn.Module + autograd.Function (empty) | {o['empty_module_function_us']:.1f} | "
                  f"{o['empty_module_function_fwd_bwd_us']:.1f} |",
                  f"| torch.nn.LSTM | {o['torch_lstm_forward_us']:.1f} | {o['torch_lstm_forward_backward_us']:.1f} |",
                  ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke run)")
    ap.add_argument("--reps", type=int, default=None,
                    help="repetitions per measurement (median); default: the training loop "
                         f"{TRAIN_REPS}, each shape row as many as fit in {ROW_BUDGET_S:.0f} s "
                         f"({MIN_REPS}-{MAX_REPS})")
    ap.add_argument("--cells", default="lstm,gru", help="cells for the training loop")
    ap.add_argument("--shape-cells", default="lstm", help="cells for the S1..S5 forward+backward table")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="subset of S1..S5")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch, BLAS and numba threads (default 1: on a small shared machine more threads stall "
                         "in OpenMP/OpenBLAS barriers; 0 leaves the libraries' defaults)")
    ap.add_argument("--skip", default="", help="comma list of training,shapes,overhead to skip")
    ap.add_argument("--out", default="bench_results/torch_training.json")
    args = ap.parse_args(argv)

    if args.threads:
        set_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    reps = 2 if args.quick else args.reps
    train_reps = reps or TRAIN_REPS
    train_steps = 2 if args.quick else 5
    res = dict(machine=machine(), reps=reps, train_reps=train_reps, train_steps=train_steps,
               command=" ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])))
    res["gemm_gflops"] = gemm_rate() / 1e9
    t0 = time.perf_counter()
    if "training" not in skip:
        cfg = dict(V=50, E=8, H=16, B=4, T=8) if args.quick else dict(TRAIN)
        res["train_config"] = cfg
        res["training"] = {c: bench_training(c, cfg, train_reps, train_steps) for c in args.cells.split(",")}
    if "shapes" not in skip:
        shapes = {k: SHAPES[k] for k in args.shapes.split(",")}
        if args.quick:
            shapes = {"tiny": (2, 5, 8, 8)}
        res["shapes"] = bench_shapes(args.shape_cells.split(","), shapes, reps)
    if "overhead" not in skip:
        res["overhead"] = bench_overhead(rounds=3 if args.quick else 9, number=100 if args.quick else 200)
    res["wall_s"] = time.perf_counter() - t0
    text = markdown(res)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out} ({res['wall_s']:.0f} s)")
    return res


# ---------------------------------------------------------------- pytest-benchmark

try:
    import pytest
except ImportError:  # pragma: no cover - running as a script without pytest
    pytest = None

if pytest is not None:
    _IMPLS = pytest.mark.parametrize("impl", ["torch", "fastrnn"])

    @pytest.fixture(autouse=True, scope="module")
    def _threads():
        """$FASTRNN_BENCH_THREADS threads (default 1, as the script; 0: the libraries' defaults)."""
        n = int(os.environ.get("FASTRNN_BENCH_THREADS", "1"))
        if n:
            set_threads(n)
        yield

    @pytest.mark.parametrize("cell", ["lstm", "gru"])
    @_IMPLS
    def test_training_step(benchmark, impl, cell):
        benchmark.group = f"train-{cell}"
        if impl == "fastrnn":
            check_training(cell, TRAIN, steps=2)
        step, _ = make_trainer(impl, cell, **TRAIN)
        benchmark.extra_info.update(machine())
        benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)

    @pytest.mark.parametrize("shape", list(SHAPES))
    @_IMPLS
    def test_lstm_forward_backward(benchmark, impl, shape):
        B, T, I, H = SHAPES[shape]
        benchmark.group = f"lstm-fwd+bwd-{shape}"
        if impl == "fastrnn":
            check_shape("lstm", B, T, I, H)
        run, _, _ = fwd_bwd_runner(impl, "lstm", B, T, I, H)
        fastrnn.bench._settle(run)
        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=2)

    @pytest.mark.parametrize("what", ["module", "raw"])
    def test_wrapper_overhead(benchmark, what):
        """Compare the two means: their difference is the wrapper's per-call overhead."""
        mod_fwd, raw_fwd, _, _ = overhead_runners()
        benchmark.group = "overhead-lstm-tiny-forward"
        benchmark.pedantic(mod_fwd if what == "module" else raw_fwd, rounds=200, iterations=20, warmup_rounds=5)


if __name__ == "__main__":
    main()
