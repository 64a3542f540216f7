"""pytest-benchmark suite: fastrnn (Numba) beside torch.nn and the NumPy
reference, grouped by mode and shape.  Correctness is checked before timing;
the first (compiling) calls happen before the timed region, and the backend's
background compiles are waited for (fastrnn.bench._settle).

    python -m pytest benchmarks/test_bench_kernels.py --benchmark-only
    FASTRNN_BENCH_SHAPES=S1,S2,S3,S4,S5 python -m pytest benchmarks/ --benchmark-only

The printed table of `fastrnn bench` (ratios, fraction of the GEMM floor) is
the report; this suite is for pytest-benchmark's comparison and history
tooling (--benchmark-save / --benchmark-compare).
"""
import os

import numpy as np
import pytest

import fastrnn
from fastrnn.bench import SHAPES, _problem, _settle, _torch_module

MODES = fastrnn.MODES
BENCH_SHAPES = os.environ.get("FASTRNN_BENCH_SHAPES", "S1,S2,S3").split(",")
CASES = [(m, s) for m in MODES for s in BENCH_SHAPES]


def _fastrnn_train(mode, x, w, dy, backend):
    def f():
        y, h, s = fastrnn.rnn_forward(mode, x, w, training=True, backend=backend)
        return fastrnn.rnn_backward(s, dy)
    return f


@pytest.mark.parametrize("mode,shape", CASES)
def test_fastrnn_train(benchmark, mode, shape):
    B, T, I, H = SHAPES[shape]
    x, w, dy = _problem(mode, B, T, I, H)
    f = _fastrnn_train(mode, x, w, dy, "numba")
    ref = fastrnn.rnn_forward(mode, x.astype(np.float64), [a.astype(np.float64) for a in w],
                              backend="numpy")[0]
    y = fastrnn.rnn_forward(mode, x, w, backend="numba")[0]
    assert np.abs(y - ref).max() < 1e-4, "fastrnn output differs from the float64 reference"
    _settle(f)
    benchmark.group = f"{mode}-{shape}-train"
    benchmark(f)


@pytest.mark.parametrize("mode,shape", CASES)
def test_torch_train(benchmark, mode, shape):
    torch = pytest.importorskip("torch")
    B, T, I, H = SHAPES[shape]
    x, w, dy = _problem(mode, B, T, I, H)
    m = _torch_module(mode, I, H, w)
    xt = torch.from_numpy(x).requires_grad_(True)
    dyt = torch.from_numpy(dy)
    y = fastrnn.rnn_forward(mode, x, w, backend="numba")[0]
    with torch.no_grad():
        assert np.abs(m(xt)[0].numpy() - y).max() < 1e-4, "torch and fastrnn outputs differ"

    def f():
        m.zero_grad(set_to_none=True)
        xt.grad = None
        m(xt)[0].backward(dyt)
    f()
    benchmark.group = f"{mode}-{shape}-train"
    benchmark(f)


@pytest.mark.parametrize("mode,shape", [(m, s) for m in MODES for s in BENCH_SHAPES if s in ("S1", "S2")])
def test_numpy_reference_train(benchmark, mode, shape):
    B, T, I, H = SHAPES[shape]
    x, w, dy = _problem(mode, B, T, I, H)
    benchmark.group = f"{mode}-{shape}-train"
    benchmark.pedantic(_fastrnn_train(mode, x, w, dy, "numpy"), rounds=3, iterations=1)


@pytest.mark.parametrize("mode,shape", CASES)
def test_fastrnn_inference(benchmark, mode, shape):
    B, T, I, H = SHAPES[shape]
    x, w, _ = _problem(mode, B, T, I, H)
    f = lambda: fastrnn.rnn_forward(mode, x, w, backend="numba")  # noqa: E731
    _settle(f)
    benchmark.group = f"{mode}-{shape}-inference"
    benchmark(f)


@pytest.mark.parametrize("mode,shape", CASES)
def test_torch_inference(benchmark, mode, shape):
    torch = pytest.importorskip("torch")
    B, T, I, H = SHAPES[shape]
    x, w, _ = _problem(mode, B, T, I, H)
    m = _torch_module(mode, I, H, w)
    xt = torch.from_numpy(x)

    def f():
        with torch.no_grad():
            return m(xt)
    f()
    benchmark.group = f"{mode}-{shape}-inference"
    benchmark(f)
