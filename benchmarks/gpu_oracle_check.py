"""Per-array error against the float64 NumPy oracle, for fastrnn (cupy) and for
torch.nn on cuDNN (float32, TF32 off) on the same inputs: tells a float32
conditioning effect (both far from the oracle, close to each other) from a
kernel bug (fastrnn alone far).

    python3 benchmarks/gpu_oracle_check.py rnn_relu 128 25 2048 2048   # mode B T I H
"""
from __future__ import annotations

import sys

import numpy as np


def main(argv):
    import cupy
    import torch

    import fastrnn
    mode = argv[0]
    B, T, I, H = (int(v) for v in argv[1:5])
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    G = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}[mode]
    rs = cupy.random.RandomState(1234)           # the inputs bench_gpu.py uses
    x = rs.standard_normal((T, B, I), dtype=cupy.float32)
    dy = rs.standard_normal((T, B, H), dtype=cupy.float32)
    k = 1.0 / H ** 0.5
    W = tuple(rs.uniform(-k, k, s, dtype=cupy.float32) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,)))
    f64 = lambda a: cupy.asnumpy(a).astype(np.float64)  # noqa: E731
    names = ["y", "h_n", "dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"]
    ry, rhn, rsv = fastrnn.rnn_forward(mode, f64(x), tuple(f64(w) for w in W), training=True, backend="numpy")
    rdx, rdh0, rdW = fastrnn.rnn_backward(rsv, f64(dy))
    first = lambda s: s[0] if isinstance(s, tuple) else s  # noqa: E731
    ref = [ry, first(rhn), rdx, first(rdh0), *rdW]

    y, hn, sv = fastrnn.rnn_forward(mode, x, W, training=True, backend="cupy")
    dx, dh0, dW = fastrnn.rnn_backward(sv, dy)
    fr = [cupy.asnumpy(a) for a in (y, first(hn), dx, first(dh0), *dW)]

    cls = {"rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[mode]
    kw = {"nonlinearity": mode[4:]} if mode.startswith("rnn_") else {}
    m = cls(I, H, **kw).cuda()
    with torch.no_grad():
        for n, w in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), W):
            getattr(m, n).copy_(torch.from_dlpack(w))
    xt = torch.from_dlpack(x).clone().requires_grad_(True)
    h0 = torch.zeros(1, B, H, device="cuda", requires_grad=True)
    hx = (h0, torch.zeros(1, B, H, device="cuda")) if mode == "lstm" else h0
    out, hnt = m(xt, hx)
    out.backward(torch.from_dlpack(dy))
    th = [out.detach(), first(hnt)[0].detach(), xt.grad, h0.grad[0], m.weight_ih_l0.grad, m.weight_hh_l0.grad,
          m.bias_ih_l0.grad, m.bias_hh_l0.grad]
    th = [t.cpu().numpy() for t in th]

    rel = lambda a, r: float(np.abs(a - r).max() / max(np.abs(r).max(), 1e-30))  # noqa: E731
    print(f"{mode} B={B} T={T} I={I} H={H}: max|got - ref| / max|ref| against the float64 oracle")
    print("| array | fastrnn | torch cuDNN | fastrnn vs torch |")
    print("|---|---|---|---|")
    for n, a, t, r in zip(names, fr, th, ref):
        print(f"| {n} | {rel(a, r):.1e} | {rel(t, r):.1e} | {rel(a, t.astype(np.float64)):.1e} |")
    if mode == "rnn_relu":
        # how many pre-activations (input part) sit within float32 rounding of the kink at 0
        xa = f64(x).reshape(T * B, I) @ f64(W[0]).T + f64(W[2]) + f64(W[3])
        print(f"(input projections within 1e-6 of 0: {int((np.abs(xa) < 1e-6).sum())} of {xa.size})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
