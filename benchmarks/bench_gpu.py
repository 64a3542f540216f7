"""fastrnn's CuPy backend against torch.nn.RNN/GRU/LSTM (cuDNN) on one GPU, float32.

For each mode and shape (B, T, I, H) it first checks fastrnn against torch
(y, dx, dW_hh from the same weights, input and upstream gradient), then
times, with CUDA events after warm-up (median of several runs):
    forward        fastrnn rnn_forward(training=False)  vs torch under no_grad
    forward+BPTT   rnn_forward(training=True) + rnn_backward  vs  out.backward(dy)
with TF32 off on both sides (torch.backends.cuda.matmul.allow_tf32 = False,
torch.backends.cudnn.allow_tf32 = False; CuPy's GEMMs do not use TF32
unless CUPY_TF32=1, which this script clears).  A separate torch column is
measured with TF32 on, for reference only.  ratio = torch time / fastrnn time
(> 1: fastrnn is faster).  floor = the GEMM FLOPs of the pass
(2*T*B*G*H*(I+H) forward, 3x that for forward+BPTT) at the cuBLAS SGEMM rate
measured in this run; "fwd %floor" is floor time / fastrnn time.

Usage: python3 benchmarks/bench_gpu.py [--out DIR] [--budget SECONDS]
Writes DIR/bench_gpu.json and DIR/bench_gpu.md (DIR: $OUT, else ./bench_results).
Exit status 1 if a correctness check failed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ["CUPY_TF32"] = "0"   # before CuPy reads it

SHAPES = [(1, 100, 256, 256), (8, 100, 512, 512), (16, 200, 768, 768),
          (64, 50, 1024, 1024), (128, 25, 2048, 2048)]      # (B, T, I, H)
MODES = ("rnn_tanh", "rnn_relu", "gru", "lstm")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}
CHECK_TOL = 1e-3        # float32, different summation orders over up to 200 steps
TARGET_S = 0.25         # time spent per measurement (after warm-up)


def _median_ms(fn, new_event, elapsed_ms, sync, target_s=TARGET_S, max_reps=25):
    """Median time of fn() in ms between CUDA events recorded around each call,
    after two warm-up calls; the repetition count aims at target_s in all."""
    fn()
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    est = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(max_reps, max(3, target_s / est)))
    pairs = []
    for _ in range(reps):
        start = new_event()
        fn()
        pairs.append((start, new_event()))
    sync()
    return statistics.median(elapsed_ms(a, b) for a, b in pairs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench_results")
    ap.add_argument("--budget", type=float, default=150.0, help="seconds for the whole sweep")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import cupy
    import numpy as np
    import torch

    import fastrnn
    import fastrnn.dispatch
    from fastrnn._backends import cupy_cuda

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    info = fastrnn.dispatch.backends()["cupy"]
    if not info.available:
        print(f"cupy backend unavailable: {info.reason}", file=sys.stderr)
        return 2

    # ---- events (each library's own, on its current stream)
    def cp_event():
        e = cupy.cuda.Event()
        e.record()
        return e

    def th_event():
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def time_cp(fn):
        return _median_ms(fn, cp_event, cupy.cuda.get_elapsed_time, cupy.cuda.Device().synchronize)

    def time_th(fn):
        return _median_ms(fn, th_event, lambda a, b: a.elapsed_time(b), torch.cuda.synchronize)

    # ---- environment
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    dev_name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    env = dict(device=dev_name, sm_count=int(props["multiProcessorCount"]),
               python=platform.python_version(), numpy=np.__version__, cupy=cupy.__version__,
               torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
               cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
               driver=cupy.cuda.runtime.driverGetVersion(), fastrnn=fastrnn.__version__,
               backend=info.reason)
    print("# fastrnn (cupy) vs torch.nn (cuDNN), float32, TF32 off\n")
    for k, v in env.items():
        print(f"- {k}: {v}")

    # cuBLAS SGEMM rate (the floor's rate), same run, TF32 off
    gemm_ms, gemm_tflops = _sgemm_rate(cupy, time_cp)
    env["sgemm_tflops_4096"] = round(gemm_tflops, 2)
    print(f"- cuBLAS SGEMM 4096^3: {gemm_ms:.3f} ms = {gemm_tflops:.1f} TFLOP/s\n")

    rows = []
    ok_all = True
    t_start = time.time()
    for (B, T, I, H) in SHAPES:
        for mode in MODES:
            row = dict(mode=mode, B=B, T=T, I=I, H=H)
            rows.append(row)
            if time.time() - t_start > args.budget:
                row["skipped"] = f"time budget of {args.budget:.0f} s spent"
                continue
            try:
                row.update(_bench_one(mode, B, T, I, H, cupy, torch, fastrnn, cupy_cuda, time_cp,
                                      time_th, gemm_tflops))
            except Exception as exc:  # report and go on: one failure must not hide the rest
                row["error"] = f"{type(exc).__name__}: {exc}"
                ok_all = False
            if not row.get("check_ok", True):
                ok_all = False
            print(_fmt_row(row), flush=True)
            cupy.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()

    table = _table(rows)
    print("\n" + table)
    (out / "bench_gpu.md").write_text(
        "# fastrnn (cupy) vs torch.nn (cuDNN), float32, TF32 off\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in env.items()) + "\n\n" + table + "\n", encoding="utf-8")
    (out / "bench_gpu.json").write_text(json.dumps(dict(env=env, rows=rows), indent=1), encoding="utf-8")
    print(f"\nwrote {out / 'bench_gpu.md'} and {out / 'bench_gpu.json'}; "
          f"{time.time() - t_start:.0f} s; correctness {'OK' if ok_all else 'FAILED'}")
    return 0 if ok_all else 1


def _sgemm_rate(cupy, time_cp, n=4096):
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    c = cupy.empty((n, n), dtype=cupy.float32)
    ms = time_cp(lambda: cupy.matmul(a, b, out=c))
    return ms, 2 * n ** 3 / (ms * 1e-3) / 1e12


def _bench_one(mode, B, T, I, H, cupy, torch, fastrnn, cupy_cuda, time_cp, time_th, gemm_tflops):
    G = GATES[mode]
    k = 1.0 / H ** 0.5
    rs = cupy.random.RandomState(1234)
    x = rs.standard_normal((T, B, I), dtype=cupy.float32)
    dy = rs.standard_normal((T, B, H), dtype=cupy.float32)
    W = tuple(rs.uniform(-k, k, shape, dtype=cupy.float32)
              for shape in ((G * H, I), (G * H, H), (G * H,), (G * H,)))

    cls = {"rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[mode]
    kw = {"nonlinearity": mode[4:]} if mode.startswith("rnn_") else {}
    model = cls(I, H, num_layers=1, bias=True, **kw).cuda()
    with torch.no_grad():
        for name, w in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), W):
            getattr(model, name).copy_(torch.from_dlpack(w))
    x_t = torch.from_dlpack(x).clone()
    x_req = x_t.clone().requires_grad_(True)
    dy_t = torch.from_dlpack(dy).clone()

    paths = cupy_cuda.BACKEND.paths_for(mode, B, H, "float32")
    row = dict(path_fwd=paths[0], path_bwd=paths[1])

    # ---- correctness first
    y, hn, saved = fastrnn.rnn_forward(mode, x, W, training=True, backend="cupy")
    dx, dh0, dW = fastrnn.rnn_backward(saved, dy)
    out_t, _ = model(x_req)
    out_t.backward(dy_t)
    torch.cuda.synchronize()

    def rel(a, ref):
        a = cupy.asarray(a, dtype=cupy.float64)
        r = cupy.asarray(ref, dtype=cupy.float64)
        return float(cupy.max(cupy.abs(a - r)) / max(float(cupy.max(cupy.abs(r))), 1e-30))

    row["err_y"] = rel(y, cupy.from_dlpack(out_t.detach()))
    row["err_dx"] = rel(dx, cupy.from_dlpack(x_req.grad))
    row["err_dw_hh"] = rel(dW[1], cupy.from_dlpack(model.weight_hh_l0.grad))
    row["check_ok"] = all(row[e] <= CHECK_TOL for e in ("err_y", "err_dx", "err_dw_hh"))
    # the float64 NumPy oracle (the independent reference the 1e-5 is about):
    # every output and gradient, max |got - ref| / max |ref| each, the worst reported
    import numpy as np
    f64 = lambda a: cupy.asnumpy(a).astype(np.float64)  # noqa: E731
    ry, rhn, rs = fastrnn.rnn_forward(mode, f64(x), tuple(f64(w) for w in W), training=True, backend="numpy")
    rdx, rdh0, rdW = fastrnn.rnn_backward(rs, f64(dy))
    got = [y, dx] + list(dW) + (list(hn) + list(dh0) if mode == "lstm" else [hn, dh0])
    ref = [ry, rdx] + list(rdW) + (list(rhn) + list(rdh0) if mode == "lstm" else [rhn, rdh0])
    row["oracle_err"] = max(float(np.abs(cupy.asnumpy(g) - r).max() / max(np.abs(r).max(), 1e-30))
                            for g, r in zip(got, ref))
    del y, hn, saved, dx, dh0, dW, out_t

    # ---- timing
    def fr_fwd():
        fastrnn.rnn_forward(mode, x, W, backend="cupy")

    def fr_fb():
        _, _, s = fastrnn.rnn_forward(mode, x, W, training=True, backend="cupy")
        fastrnn.rnn_backward(s, dy)

    def th_fwd():
        with torch.no_grad():
            model(x_t)

    def th_fb():
        x_req.grad = None
        model.zero_grad(set_to_none=True)
        o, _ = model(x_req)
        o.backward(dy_t)

    row["fastrnn_fwd_ms"] = time_cp(fr_fwd)
    row["torch_fwd_ms"] = time_th(th_fwd)
    row["fastrnn_fb_ms"] = time_cp(fr_fb)
    row["torch_fb_ms"] = time_th(th_fb)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        row["torch_tf32_fwd_ms"] = time_th(th_fwd)
        row["torch_tf32_fb_ms"] = time_th(th_fb)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    row["ratio_fwd"] = row["torch_fwd_ms"] / row["fastrnn_fwd_ms"]
    row["ratio_fb"] = row["torch_fb_ms"] / row["fastrnn_fb_ms"]
    flops = 2.0 * T * B * G * H * (I + H)
    row["floor_fwd_ms"] = flops / (gemm_tflops * 1e12) * 1e3
    row["floor_frac_fwd"] = row["floor_fwd_ms"] / row["fastrnn_fwd_ms"]
    row["floor_frac_fb"] = 3 * row["floor_fwd_ms"] / row["fastrnn_fb_ms"]
    return row


_HEAD = ("| mode | B,T,I,H | path f/b | vs torch (y, dx, dW_hh) | vs f64 oracle (worst) | fastrnn fwd ms | torch fwd ms | ratio "
         "| fastrnn f+b ms | torch f+b ms | ratio | fwd %floor | f+b %floor |")
_SEP = "|" + "---|" * 13


def _fmt_row(r):
    shape = f"{r['B']},{r['T']},{r['I']},{r['H']}"
    if "skipped" in r or "error" in r:
        return f"| {r['mode']} | {shape} | {r.get('skipped') or r.get('error')} |" + " |" * 10
    chk = ("ok " if r["check_ok"] else "MISMATCH ") + f"{r['err_y']:.1e}, {r['err_dx']:.1e}, {r['err_dw_hh']:.1e}"
    return (f"| {r['mode']} | {shape} | {r['path_fwd'][:4]}/{r['path_bwd'][:4]} | {chk} | {r['oracle_err']:.1e} "
            f"| {r['fastrnn_fwd_ms']:.3f} | {r['torch_fwd_ms']:.3f} | {r['ratio_fwd']:.2f} "
            f"| {r['fastrnn_fb_ms']:.3f} | {r['torch_fb_ms']:.3f} | {r['ratio_fb']:.2f} "
            f"| {100 * r['floor_frac_fwd']:.0f}% | {100 * r['floor_frac_fb']:.0f}% |")


def _table(rows):
    lines = [_HEAD, _SEP] + [_fmt_row(r) for r in rows]
    lines += ["", "torch with TF32 on (reference only; fastrnn stays full float32):", "",
              "| mode | B,T,I,H | torch TF32 fwd ms | torch TF32 f+b ms |", "|---|---|---|---|"]
    for r in rows:
        if "torch_tf32_fwd_ms" in r:
            lines.append(f"| {r['mode']} | {r['B']},{r['T']},{r['I']},{r['H']} "
                         f"| {r['torch_tf32_fwd_ms']:.3f} | {r['torch_tf32_fb_ms']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
