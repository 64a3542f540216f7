"""Compile every CUDA source for sm_90 without a GPU.

What is compiled is exactly the text CuPy's NVRTC sees at run time
(fastrnn._kernels.cuda.loader.source: includes inlined) with the same
options (-std=c++17 -DFRNN_SCALAR=float|double), once per dtype:

* with nvcc, where nvcc is on PATH (CI); ptxas must also report every kernel
  name the backend launches, with no register spills;
* with NVRTC itself through CuPy's bindings, where libnvrtc loads (no device
  is needed to compile).

Each is skipped with its reason where the tool is missing.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DTYPES = ("float32", "float64")


def _loader():
    try:
        from fastrnn._kernels.cuda import loader
        return loader
    except ImportError:
        # A plain checkout that is not pip-installed: load it from kernels/.
        path = Path(__file__).resolve().parents[1] / "kernels" / "cuda" / "loader.py"
        if not path.is_file():
            pytest.skip("fastrnn._kernels.cuda.loader is not importable and kernels/cuda/loader.py is absent")
        spec = importlib.util.spec_from_file_location("_fastrnn_cuda_loader", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


loader = _loader()
CASES = [(name, dt) for name in loader.SOURCES for dt in DTYPES]


def test_sources_inline_cleanly():
    for name in loader.SOURCES:
        text = loader.source(name)
        assert '#include "' not in text.replace('// (#include "', ""), f"{name}: an include was not inlined"
        assert "#include <" not in text, f"{name}: host headers are not available under NVRTC"
        assert "FRNN_SCALAR" in text and 'extern "C"' in text


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("name,dtype", CASES)
def test_nvcc_compiles(name, dtype, tmp_path):
    src = tmp_path / f"{name}_{dtype}.cu"
    src.write_text(loader.source(name), encoding="utf-8")
    cmd = ["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-ftz=true", *loader.options(dtype),
           "-o", str(tmp_path / f"{name}_{dtype}.cubin"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = r.stdout + r.stderr
    assert r.returncode == 0, f"nvcc failed on {name} ({dtype}):\n{log[-6000:]}"
    assert "error" not in log.lower(), log[-6000:]
    entries = set(re.findall(r"Compiling entry function '([A-Za-z0-9_]+)'", log))
    missing = set(loader.kernel_names(name)) - entries
    assert not missing, f"{name} ({dtype}): kernels the backend launches are missing: {sorted(missing)}"
    spills = [ln for ln in log.splitlines() if "spill" in ln and not re.search(r"\b0 bytes spill stores, 0 bytes spill loads", ln)]
    assert not spills, f"{name} ({dtype}): register spills:\n" + "\n".join(spills)


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        return nvrtc
    except Exception as exc:  # cupy missing, or libnvrtc not found
        pytest.skip(f"NVRTC is not loadable here: {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("name,dtype", CASES)
def test_nvrtc_compiles(name, dtype):
    nvrtc = _nvrtc()
    if "sm_90" not in [f"sm_{a}" for a in nvrtc.getSupportedArchs()]:
        pytest.skip("this NVRTC cannot target sm_90")
    prog = nvrtc.createProgram(loader.source(name), f"{name}.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(prog, loader.options(dtype) + ("--gpu-architecture=sm_90", "-ftz=true"))
        except nvrtc.NVRTCError as exc:
            pytest.fail(f"NVRTC failed on {name} ({dtype}): {exc}\n{nvrtc.getProgramLog(prog)[-6000:]}")
        assert len(nvrtc.getCUBIN(prog)) > 0
    finally:
        nvrtc.destroyProgram(prog)


# ------------------------------------------------------------------ host-side planning
# Pure functions of the cupy backend, checked here because they run without a GPU.

def _colmajor(ptr, rows, cols, ld, dtype):
    import ctypes

    import numpy as np
    n = ld * (cols - 1) + rows
    buf = np.ctypeslib.as_array((ctypes.c_char * (n * dtype.itemsize)).from_address(ptr)).view(dtype)
    return np.lib.stride_tricks.as_strided(buf, shape=(rows, cols), strides=(dtype.itemsize, ld * dtype.itemsize))


def _blas_gemm(dtype, opx, opy, M, N, K, alpha, x, ldx, y, ldy, beta, c, ldc):
    """What a column-major BLAS gemm does to memory, with its argument checks."""
    assert ldx >= max(1, M if opx == 0 else K), "ldx"
    assert ldy >= max(1, K if opy == 0 else N), "ldy"
    assert ldc >= max(1, M), "ldc"
    X = _colmajor(x, M, K, ldx, dtype) if opx == 0 else _colmajor(x, K, M, ldx, dtype).T
    Y = _colmajor(y, K, N, ldy, dtype) if opy == 0 else _colmajor(y, N, K, ldy, dtype).T
    C = _colmajor(c, M, N, ldc, dtype)
    C[...] = alpha * (X @ Y) + beta * C


@pytest.mark.parametrize("transa,transb,shape_a,shape_b", [
    ("N", "T", (1, 13), (52, 13)),     # forward step, B = 1: hg = h @ W_hh^T
    ("N", "T", (3, 13), (52, 13)),     # forward step, B = 3
    ("N", "N", (1, 52), (52, 13)),     # backward step, B = 1: dh += dhg @ W_hh
    ("N", "N", (5, 39), (39, 13)),     # backward step, B = 5
    ("T", "N", (21, 12), (21, 7)),     # dW = dG^T @ X
])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_layout_matches_numpy(transa, transb, shape_a, shape_b, beta):
    np = pytest.importorskip("numpy")
    from fastrnn._backends.cupy_cuda import gemm_layout
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape_a)
    b = rng.standard_normal(shape_b)
    A = a.T if transa == "T" else a
    Bm = b.T if transb == "T" else b
    out = rng.standard_normal((A.shape[0], Bm.shape[1]))
    want = A @ Bm + beta * out
    flags = lambda m: (m.flags.c_contiguous, m.flags.f_contiguous)  # noqa: E731
    b_first, opx, opy, M, N, K, ldx, ldy, ldc = gemm_layout(transa, transb, a.shape, flags(a), b.shape,
                                                            flags(b), flags(out))
    x, y = (b, a) if b_first else (a, b)
    _blas_gemm(a.dtype, opx, opy, M, N, K, 1.0, x.ctypes.data, ldx, y.ctypes.data, ldy, beta,
               out.ctypes.data, ldc)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def test_persistent_plan_on_an_h100():
    from fastrnn._backends import cupy_cuda as cc
    sms, optin = 132, 232448          # H100 SXM: SMs, opt-in shared memory per block
    ok, why, U, nblk, smem = cc.persistent_plan("lstm", 16, 768, 4, sms, optin, "fwd")
    assert ok and U == 6 and nblk == 128 and smem == 4 * (4 * 6 * 768 + 16 * 768 + 16 * 4 * 6), why
    ok, why, U, nblk, _ = cc.persistent_plan("gru", 5, 263, 8, sms, optin, "bwd")
    assert ok and U == 2 and nblk == 132, why           # the last block owns one unit
    assert not cc.persistent_plan("lstm", 17, 64, 4, sms, optin, "fwd")[0]
    ok, why, *_ = cc.persistent_plan("lstm", 16, 2048, 4, sms, optin, "fwd")
    assert not ok and "shared memory" in why
    assert not cc.persistent_plan("gru", 2, 64, 4, sms, optin, "fwd", cooperative=False)[0]
    assert cc.choose_path("auto", False, "x", "fwd") == "general"
    assert cc.choose_path("auto", True, "x", "fwd") == "persistent"
    assert cc.choose_path("general", True, "x", "fwd") == "general"
    with pytest.raises(ValueError, match="FASTRNN_CUDA_PATH=persistent"):
        cc.choose_path("persistent", False, "too big", "bwd")


def test_path_setting(monkeypatch):
    from fastrnn._backends import cupy_cuda as cc
    monkeypatch.delenv("FASTRNN_CUDA_PATH", raising=False)
    cc.set_path(None)
    assert cc.get_path() == "auto"
    monkeypatch.setenv("FASTRNN_CUDA_PATH", "general")
    assert cc.get_path() == "general"
    cc.set_path("persistent")
    try:
        assert cc.get_path() == "persistent"
    finally:
        cc.set_path(None)
    with pytest.raises(ValueError, match="path"):
        cc.set_path("fast")
    monkeypatch.setenv("FASTRNN_CUDA_PATH", "fast")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_PATH"):
        cc.get_path()


def test_probe_without_a_device_says_why():
    from fastrnn._backends import cupy_cuda as cc
    ok, reason = cc.BACKEND.probe()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason
