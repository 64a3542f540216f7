"""Kernels to profile with Nsight Compute: one persistent forward of rnn_tanh
and one forward+backward of lstm at B=16, T=200, I=H=768 (the shape where the
persistent path is furthest behind cuDNN).  Run under ncu, e.g.

    ncu --section SpeedOfLight --section WarpStateStats --section SchedulerStats \\
        -k regex:persist -c 3 python3 benchmarks/gpu_ncu_persistent.py
"""
import numpy as np


def main():
    import cupy

    import fastrnn
    from fastrnn._backends import cupy_cuda as cc
    cc.set_path("persistent")
    B, T, I, H = 16, 200, 768, 768
    for mode, G in (("rnn_tanh", 1), ("lstm", 4)):
        rs = cupy.random.RandomState(0)
        x = rs.standard_normal((T, B, I), dtype=cupy.float32)
        k = 1 / H ** 0.5
        W = tuple(rs.uniform(-k, k, s, dtype=cupy.float32) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,)))
        y, hn, s = fastrnn.rnn_forward(mode, x, W, training=(mode == "lstm"))
        if s is not None:
            fastrnn.rnn_backward(s, cupy.ones_like(y))
    cupy.cuda.Device().synchronize()
    print("done", np.__version__)


if __name__ == "__main__":
    main()
