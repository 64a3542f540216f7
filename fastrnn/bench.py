"""`fastrnn bench`: fastrnn against its peers, measured side by side in one run.

For each mode and shape: fastrnn (Numba) forward+BPTT and forward-only,
torch.nn on the CPU (if installed) the same, and the NumPy reference.
Correctness is checked before anything is timed; JIT compile time is kept
out by a warm-up call.  Reported per row: median times, the ratio
torch / fastrnn (> 1 means fastrnn is faster), and the fraction of the GEMM
floor: FLOPs = 6*T*B*G*H*(I+H) for forward+BPTT (2*... forward) divided by
an sgemm rate measured with the row's own calls.  The functions of a row
(fastrnn, torch, the sgemm) are timed in interleaved rounds of blocks
(timeit_rounds): this VM's speed drifts, and blocks that take turns see
the same machine.

Shapes (B, T, I, H), from the core issue:
    S1 (1,100,64,64)  S2 (8,100,128,128)  S3 (32,64,128,256)
    S4 (64,50,512,512)  S5 (32,25,1024,1024)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .cells import MODES, spec

SHAPES = {
    "S1": (1, 100, 64, 64),
    "S2": (8, 100, 128, 128),
    "S3": (32, 64, 128, 256),
    "S4": (64, 50, 512, 512),
    "S5": (32, 25, 1024, 1024),
}


def timeit(fn, *, min_reps=5, min_time=0.5, max_reps=200):
    """Median seconds of fn() after one warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timeit_rounds(fns, *, min_reps=5, min_time=2.0, rounds=5, max_reps=200, own_warmup_s=0.02):
    """Median seconds of each of fns (a dict name -> callable), timed in
    interleaved blocks: each of `rounds` or more rounds runs one block per
    function, the order rotating from round to round.  A block is one
    untimed call, then timed calls for about min_time / (rounds * len(fns))
    seconds (at least one).  Rounds go on until every function has min_reps
    timed calls and min_time has passed; at most max_reps timed calls each.

    Why blocks in rounds.  This VM's speed drifts by up to 1.5-2x within
    seconds to minutes: a peer timed in one block of its own, a second after
    fastrnn's, may meet another machine, and the ratio then measures the
    drift as much as the code.  Blocks that take turns sample the same
    stretch of time.  Why not one call each in turn: the first call after
    the other library has run is slower by a near-constant amount
    (measured: rnn_tanh at S1, 0.38-0.65 ms after a torch call against
    0.14 ms steady, whatever the pause between them: caches and the core
    refilled), which would swamp the small shapes; hence the untimed call
    that opens each block.  A call of own_warmup_s or more is its own
    warm-up: its block skips the untimed call."""
    names = list(fns)
    est = {}
    for n in names:
        t0 = time.perf_counter()
        fns[n]()
        est[n] = time.perf_counter() - t0
    block = min_time / (rounds * len(names))
    cap = max(1, -(-max_reps // rounds))     # timed calls per block at most
    times = {n: [] for n in names}
    start = time.perf_counter()
    r = 0
    while (r < rounds or min(len(v) for v in times.values()) < min_reps
           or time.perf_counter() - start < min_time) and min(len(v) for v in times.values()) < max_reps:
        for j in range(len(names)):
            n = names[(r + j) % len(names)]
            if est[n] < own_warmup_s:
                fns[n]()
            t_block = time.perf_counter()
            k = 0
            while k < cap and len(times[n]) < max_reps and (k == 0 or time.perf_counter() - t_block < block):
                t0 = time.perf_counter()
                fns[n]()
                dt = time.perf_counter() - t0
                times[n].append(dt)
                est[n] = dt
                k += 1
        r += 1
    return {n: statistics.median(v) for n, v in times.items()}


def gemm_call(n=1024, dtype=np.float32):
    """A callable that runs one n^3 sgemm on every core fastrnn's threaded
    kernels use, and its FLOPs.

    The product is cut into one block of rows per thread, each a one-thread
    call of the BLAS the kernels call (SciPy's OpenBLAS), on the backend's
    own threads.  Not np.matmul: NumPy's OpenBLAS (another copy) leaves its
    workers spinning on the cores for tens of ms after each call, and in
    the interleaved rounds torch's next block then ran 1.5-2.5x slower
    (rnn_tanh S4 165 ms against 65-100)."""
    from ._backends import numba_cpu
    from ._kernels.cpu import parallel
    from . import _threads
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    b = a.copy()
    out = np.empty_like(a)

    def run():
        with _threads.threaded() as nth:
            numba_cpu._in_threads(parallel.sgemm_part, nth, a, b, out)
    return run, 2 * n ** 3


def gemm_rate(n=1024, dtype=np.float32):
    """sgemm GFLOP/s on this machine now (median of several n^3 products)."""
    fn, flops = gemm_call(n, dtype)
    return flops / timeit(fn, min_reps=5, min_time=1.0) / 1e9


def machine_info():
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "numpy": np.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba
    info["numba"] = numba.__version__
    from . import _threads
    _threads.available_threads()            # loads SciPy's OpenBLAS (the kernels' BLAS) if not yet
    info["kernels_blas"] = _threads.blas_core()
    # what the kernels were tuned by on this machine: Numba's target CPU,
    # the packed block's vector width, the L2 (numba_cpu's bounds follow them)
    try:
        from numba.core.registry import cpu_target
        info["numba_target"] = cpu_target.target_context.codegen().magic_tuple()[1]
        from ._kernels.cpu import packed
        info["vector_lanes"] = packed._LANES
    except Exception:       # noqa: BLE001 - a report, never a reason to fail
        pass
    info["l2_bytes"] = _threads.cache_bytes(2, None)
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [f"{i['internal_api']} {i.get('version')} {i.get('architecture')} "
                        f"threads={i['num_threads']}" for i in threadpool_info()]
    except ImportError:
        pass
    return info


def _problem(mode, B, T, I, H, seed=0):
    rng = np.random.default_rng(seed)
    G = spec(mode).gates
    k = 1 / np.sqrt(H)
    w = [rng.uniform(-k, k, s).astype(np.float32) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    return x, w, dy


def _torch_module(mode, I, H, w):
    import torch
    cls = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}.get(mode)
    m = cls(I, H) if cls else torch.nn.RNN(I, H, nonlinearity=mode[4:])
    with torch.no_grad():
        for name, a in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), w):
            getattr(m, name).copy_(torch.from_numpy(a))
    return m


def _settle(*fns):
    """Each fn twice, then the Numba backend's background compiles waited
    for (numba_cpu.wait_compiles: the helped regions compile in a thread
    from their second call): the timed calls then run the form a
    long-running program settles on, not the one before it is compiled."""
    for _ in range(2):
        for f in fns:
            f()
    try:
        from fastrnn._backends import numba_cpu
    except Exception:       # pragma: no cover - no Numba backend
        return
    numba_cpu.wait_compiles()


def bench_case(mode, shape_name, *, lengths=False, reference=True, torch_ok=True, quick=False,
               blocks=False):
    """One row: fastrnn and torch.nn (if torch_ok) forward+BPTT and forward
    only, and an n^3 sgemm for the row's floor (its GEMM rate), timed in
    interleaved rounds (timeit_rounds), or with blocks=True one block of
    calls per function after the other (timeit; the protocol of the
    benchmark's first versions)."""
    import fastrnn
    B, T, I, H = SHAPES[shape_name]
    x, w, dy = _problem(mode, B, T, I, H)
    dy_full = dy        # the full-length call's gradient (lengths=True's extra column)
    L = None
    if lengths:
        L = np.random.default_rng(1).integers(1, T + 1, size=B)
        dy = dy * (np.arange(T)[:, None] < L[None, :])[:, :, None]
    reps = dict(min_reps=2, min_time=0.05) if quick else dict(min_reps=5, min_time=0.5)
    row = {"mode": mode, "shape": shape_name, "B": B, "T": T, "I": I, "H": H,
           "lengths": "random" if lengths else "full"}

    def fr_train():
        y, h, s = fastrnn.rnn_forward(mode, x, w, None, L, training=True, backend="numba")
        return fastrnn.rnn_backward(s, dy)

    def fr_infer():
        return fastrnn.rnn_forward(mode, x, w, None, L, backend="numba")

    y_fr = fr_infer()[0]
    _settle(fr_train, fr_infer)
    gemm_fn, gemm_flops = gemm_call(512 if quick else 1024)
    fns = {"fastrnn_train_s": fr_train, "fastrnn_fwd_s": fr_infer, "gemm_s": gemm_fn}
    if lengths:
        # the same call at full length in the same rounds: the lengths'
        # cost as a ratio of two calls measured side by side (the full
        # row's own time comes from other minutes, beside other torch calls)
        def fr_train_full():
            y, h, s = fastrnn.rnn_forward(mode, x, w, None, None, training=True, backend="numba")
            return fastrnn.rnn_backward(s, dy_full)
        fns["fastrnn_full_train_s"] = fr_train_full
    if torch_ok:
        import torch
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        m = _torch_module(mode, I, H, w)
        xt = torch.from_numpy(x).requires_grad_(True)
        dyt = torch.from_numpy(dy)

        def t_out(inp):
            if L is None:
                return m(inp)[0]
            out = m(pack_padded_sequence(inp, torch.from_numpy(L), enforce_sorted=False))[0]
            return pad_packed_sequence(out, total_length=T)[0]

        with torch.no_grad():
            y_t = t_out(xt).numpy()
        err = float(np.abs(y_t - y_fr).max())
        if not err < 1e-4:
            raise AssertionError(f"{mode} {shape_name}: fastrnn and torch outputs differ by {err:.2e}")
        row["check_max_abs_diff"] = err

        def t_train():
            m.zero_grad(set_to_none=True)
            xt.grad = None
            t_out(xt).backward(dyt)

        def t_infer():
            with torch.no_grad():
                t_out(xt)

        fns.update(torch_train_s=t_train, torch_fwd_s=t_infer)
    if blocks:
        row.update({k: timeit(f, **reps) for k, f in fns.items()})
    else:
        # the same total time as the blocks: min_time for each function
        row.update(timeit_rounds(fns, min_reps=reps["min_reps"], min_time=reps["min_time"] * len(fns),
                                 rounds=2 if quick else 5))
    row["timing"] = "blocks" if blocks else "rounds"
    row["gemm_gflops"] = gemm_flops / row.pop("gemm_s") / 1e9
    if torch_ok:
        row["ratio_train"] = row["torch_train_s"] / row["fastrnn_train_s"]
        row["ratio_fwd"] = row["torch_fwd_s"] / row["fastrnn_fwd_s"]
    if reference:
        def ref_train():
            y, h, s = fastrnn.rnn_forward(mode, x, w, None, L, training=True, backend="numpy")
            return fastrnn.rnn_backward(s, dy)
        row["numpy_train_s"] = timeit(ref_train, min_reps=1, min_time=0.0, max_reps=1)
        row["ratio_numpy"] = row["numpy_train_s"] / row["fastrnn_train_s"]
    G = spec(mode).gates
    row["flops_train"] = 6 * T * B * G * H * (I + H)
    row["flops_fwd"] = 2 * T * B * G * H * (I + H)
    return row


def startup_times(modes, threaded=False):
    """import time, cold first call (empty Numba cache) and warm start (cache on
    disk), each in a fresh process, at a tiny size (the one-thread kernels).
    threaded=True adds the same at S3, whose first call compiles the threaded
    kernels (in a cache of its own, as a user's first large call would)."""
    code = r"""
import time, sys
t0 = time.perf_counter(); import fastrnn; t_imp = time.perf_counter() - t0
import numpy as np
mode, size = sys.argv[1], sys.argv[2]
G = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}[mode]
T, B, I, H = (3, 2, 4, 5) if size == "tiny" else (64, 32, 128, 256)
rng = np.random.default_rng(0)
x = rng.standard_normal((T, B, I)).astype(np.float32)
w = [(rng.standard_normal(s) * 0.1).astype(np.float32) for s in ((G*H, I), (G*H, H), (G*H,), (G*H,))]
t0 = time.perf_counter()
y, h, s = fastrnn.rnn_forward(mode, x, w, training=True, backend="numba"); fastrnn.rnn_backward(s, y)
print(t_imp, time.perf_counter() - t0)
"""
    out = {}
    for mode in modes:
        out[mode] = {}
        for size in ("tiny", "S3") if threaded else ("tiny",):
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, NUMBA_CACHE_DIR=cache)
                res = []
                for _ in range(2):   # cold, then warm
                    p = subprocess.run([sys.executable, "-c", code, mode, size], env=env, capture_output=True,
                                       text=True, check=True)
                    res.append([float(v) for v in p.stdout.split()])
            if size == "tiny":
                out[mode].update(import_s=res[1][0], cold_first_call_s=res[0][1], warm_first_call_s=res[1][1])
            else:
                out[mode].update(cold_threaded_call_s=res[0][1], warm_threaded_call_s=res[1][1])
    return out


_FLOOR_MODULE = """
from numba import njit
@njit(cache=True)
def total(a):
    return a.sum()
"""
_FLOOR_CODE = r"""
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
a = np.ones(3)
t0 = time.perf_counter()
import fastrnn_floor_probe
fastrnn_floor_probe.total(a)
dt = time.perf_counter() - t0
print(dt, sum(fastrnn_floor_probe.total.stats.cache_hits.values()))
"""


def numba_floor():
    """Numba's own start-up floor: the first call of a one-line cached @njit
    function in a fresh process, cold (empty cache) then warm, counted like
    the startup rows (from after `import numpy`, so `import numba` and the
    loading of Numba's typing and lowering registries, which imports
    scipy.linalg, are in it).  No package built on Numba starts faster."""
    with tempfile.TemporaryDirectory() as d:
        Path(d, "fastrnn_floor_probe.py").write_text(_FLOOR_MODULE)
        env = dict(os.environ, NUMBA_CACHE_DIR=str(Path(d, "cache")))
        res = [subprocess.run([sys.executable, "-c", _FLOOR_CODE, d], env=env, capture_output=True,
                              text=True, check=True).stdout.split() for _ in range(2)]
    (cold, cold_hits), (warm, warm_hits) = res
    if int(cold_hits) != 0 or int(warm_hits) != 1:
        raise RuntimeError(f"Numba floor: expected a cache miss then a hit, got {cold_hits} and {warm_hits} hits")
    return {"cold_first_call_s": float(cold), "warm_first_call_s": float(warm)}


def _fmt_ms(s):
    return f"{s * 1e3:.2f}" if s is not None else "-"


def _tuning(m):
    """'; Numba target znver3, 8-lane blocks, L2 512 KB' from machine_info
    (empty where a run's JSON predates those fields)."""
    parts = []
    if m.get("numba_target"):
        parts.append(f"Numba target {m['numba_target']}")
    if m.get("vector_lanes"):
        parts.append(f"{m['vector_lanes']}-lane blocks")
    if m.get("l2_bytes"):
        parts.append(f"L2 {m['l2_bytes'] >> 10} KB")
    return "; " + ", ".join(parts) if parts else ""


def render(result):
    rates = [r.get("gemm_gflops", result["gemm_gflops"]) for r in result["rows"]] or [result["gemm_gflops"]]
    lo, hi = min(rates), max(rates)
    span = f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}"
    lines = [f"Machine: {result['machine'].get('cpu', '?')}, {result['machine']['cpus']} cores; "
             f"numpy {result['machine']['numpy']}, numba {result['machine']['numba']}, "
             f"torch {result['machine'].get('torch')}"
             + (f"; kernels' OpenBLAS: {result['machine']['kernels_blas']} kernels"
                if result['machine'].get('kernels_blas') else "")
             + _tuning(result['machine'])
             + f"; sgemm floor rate {span} GFLOP/s "
             "(each row's own, measured with its calls); "
             + ("each function timed in a block of its own (--blocks)."
                if result.get("timing") == "blocks" else
                "medians of interleaved rounds (each round a block of calls of every function)."),
             "",
             "| mode | shape | lengths | fastrnn fwd+bwd ms | torch fwd+bwd ms | ratio | floor frac | "
             "fastrnn fwd ms | torch fwd ms | fwd ratio | numpy ref ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        floor = r["flops_train"] / (r.get("gemm_gflops", result["gemm_gflops"]) * 1e9) / r["fastrnn_train_s"]
        lines.append(
            f"| {r['mode']} | {r['shape']} | {r['lengths']} | {_fmt_ms(r['fastrnn_train_s'])} | "
            f"{_fmt_ms(r.get('torch_train_s'))} | {r.get('ratio_train', float('nan')):.2f} | {floor:.2f} | "
            f"{_fmt_ms(r['fastrnn_fwd_s'])} | {_fmt_ms(r.get('torch_fwd_s'))} | "
            f"{r.get('ratio_fwd', float('nan')):.2f} | {_fmt_ms(r.get('numpy_train_s'))} |")
    if result.get("lengths_cost"):
        lines += ["", "Random lengths in [1, T] relative to full length (fastrnn fwd+bwd, the two timed "
                  "in the same rounds): " + ", ".join(
            f"{k} {v:.2f}x" for k, v in result["lengths_cost"].items())]
    if result.get("startup"):
        lines += ["", "| mode | import s | cold first call s | warm first call s | cold threaded call s (S3) "
                  "| warm threaded call s (S3) |", "|---|---|---|---|---|---|"]
        for m, s in result["startup"].items():
            thr = (f"{s['cold_threaded_call_s']:.1f} | {s['warm_threaded_call_s']:.2f}"
                   if "cold_threaded_call_s" in s else "- | -")
            lines.append(f"| {m} | {s['import_s']:.2f} | {s['cold_first_call_s']:.1f} | "
                         f"{s['warm_first_call_s']:.2f} | {thr} |")
        fl = result.get("numba_floor")
        if fl:
            lines += ["", f"Numba's floor (a one-line cached @njit function's first call in a fresh process, "
                          f"timed the same way): cold {fl['cold_first_call_s']:.2f} s, "
                          f"warm {fl['warm_first_call_s']:.2f} s."]
    return "\n".join(lines)


def run(modes=MODES, shapes=tuple(SHAPES), *, full=False, quick=False, reference=True,
        startup=True, json_path=None, out=print, blocks=False):
    try:
        import torch
        torch_ok = True
    except ImportError:
        torch_ok = False
        out("torch is not installed: fastrnn is compared with the NumPy reference only "
            "(pip install torch for the peer column)")
    result = {"machine": machine_info(), "gemm_gflops": gemm_rate(512 if quick else 1024),
              "rows": [], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "timing": "blocks" if blocks else "rounds"}
    len_shapes = shapes if full else [s for s in shapes if s in ("S2", "S3")]
    lengths_cost = {}
    for mode in modes:
        # The machine's speed drifts (a shared VM: by 2x within minutes
        # here), so each row's floor comes from a GEMM rate measured in the
        # row's own rounds, between its fastrnn and torch calls.
        for sh in shapes:
            row = bench_case(mode, sh, reference=reference,
                             torch_ok=torch_ok, quick=quick, blocks=blocks)
            result["rows"].append(row)
            out(f"  {mode:8s} {sh}: fastrnn {row['fastrnn_train_s'] * 1e3:8.2f} ms"
                + (f"  torch {row['torch_train_s'] * 1e3:8.2f} ms  ratio {row['ratio_train']:.2f}"
                   if torch_ok else ""))
            if sh in len_shapes:
                lrow = bench_case(mode, sh, lengths=True, reference=False, torch_ok=torch_ok, quick=quick,
                                  blocks=blocks)
                result["rows"].append(lrow)
                lengths_cost[f"{mode}/{sh}"] = lrow["fastrnn_train_s"] / lrow["fastrnn_full_train_s"]
    result["lengths_cost"] = lengths_cost
    if startup:
        result["startup"] = startup_times(modes if full else ("lstm",), threaded=full)
        result["numba_floor"] = numba_floor()
    text = render(result)
    out("")
    out(text)
    if json_path is None:
        Path("bench_results").mkdir(exist_ok=True)
        json_path = Path("bench_results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(result, indent=1))
    out(f"\nJSON: {json_path}")
    return result


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes (default: all)")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shapes S1..S5 (default: all)")
    p.add_argument("--full", action="store_true", help="lengths rows at every shape, startup per mode")
    p.add_argument("--quick", action="store_true", help="few repetitions (smoke run; numbers are rough)")
    p.add_argument("--no-reference", action="store_true", help="skip the slow NumPy reference column")
    p.add_argument("--no-startup", action="store_true", help="skip the cold/warm start measurement")
    p.add_argument("--json", default=None, help="where to write the JSON (default bench_results/)")
    p.add_argument("--blocks", action="store_true",
                   help="time each function in a block of its own, one after the other, instead of "
                        "interleaved rounds (the protocol of the first versions)")


def main_from_args(a):
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    shapes = [s.strip().upper() for s in a.shapes.split(",") if s.strip()]
    for m in modes:
        spec(m)
    for s in shapes:
        if s not in SHAPES:
            raise ValueError(f"--shapes: expected names from {', '.join(SHAPES)}, got {s!r}")
    run(modes, shapes, full=a.full, quick=a.quick, reference=not a.no_reference,
        startup=not a.no_startup, json_path=a.json, blocks=a.blocks)
