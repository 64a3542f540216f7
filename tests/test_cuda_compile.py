"""Compile every CUDA source for sm_90 without a GPU.

What is compiled is exactly the text CuPy's NVRTC sees at run time
(fastrnn._kernels.cuda.loader.source: includes inlined) with the same
options (-std=c++17 -DFRNN_SCALAR=float|double), once per dtype:

* with nvcc, where nvcc is on PATH (CI); ptxas must also report every kernel
  name the backend launches, with no register spills;
* with NVRTC itself through CuPy's bindings, where libnvrtc loads (no device
  is needed to compile).

It also runs the kernels on the CPU (host C++20 emulation, g++) behind the
backend's own host code and compares every output with the float64 oracle,
and checks the host-side planning (cuBLAS layouts, the dispatch rule).

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
    C[...] = alpha * (X @ Y) + (beta * C if beta else 0)   # beta = 0: C is not read (may hold NaN)


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


# ------------------------------------------------------------------ CPU emulation
# The CUDA sources, as NVRTC sees them, compiled as host C++20 with a small shim
# (each CUDA thread an OS thread for the persistent kernels; a serial loop for
# the one-thread-per-element step kernels), driven by the backend's own host
# code (fastrnn._backends.cupy_cuda._forward/_backward) with NumPy standing in
# for CuPy and a column-major BLAS on raw pointers standing in for cuBLAS.
# Every buffer starts NaN-poisoned, shared memory too.  This checks kernel
# logic (indexing, masking, reverse, the grid barrier protocol, the partial
# sums) and the host orchestration without a GPU; it cannot check GPU memory
# ordering or performance.

_SHIM = r'''
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <thread>
#include <barrier>
#include <vector>
#include <atomic>
#include <algorithm>
#include <memory>
#include <utility>
#include <type_traits>
using std::min; using std::max;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __align__(n) alignas(n)
struct emu_uint3 { unsigned int x = 0, y = 0, z = 0; };
thread_local emu_uint3 threadIdx, blockIdx, blockDim, gridDim;
struct EmuCtx { std::barrier<>* bar; std::vector<std::unique_ptr<std::barrier<>>>* wbar;
                uint64_t* wbuf; unsigned char* smem; };
thread_local EmuCtx* emu_ctx = nullptr;
inline void __syncthreads() { if (!emu_ctx) std::abort(); emu_ctx->bar->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned) { std::this_thread::yield(); }
[[noreturn]] inline void __trap() { std::fprintf(stderr, "__trap\n"); std::abort(); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { return std::atomic_ref<unsigned int>(*p).fetch_add(v); }
template <class T> inline T __ldcg(const T* p) { std::atomic_thread_fence(std::memory_order_acquire); return *(volatile const T*)p; }
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int m) {
  if (mask != 0xffffffffu) std::abort();
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  uint64_t* buf = emu_ctx->wbuf + w * 32; uint64_t raw = 0; std::memcpy(&raw, &v, sizeof(T));
  buf[lane] = raw; (*emu_ctx->wbar)[w]->arrive_and_wait();
  uint64_t r = buf[lane ^ m]; (*emu_ctx->wbar)[w]->arrive_and_wait();
  T out; std::memcpy(&out, &r, sizeof(T)); return out;
}
struct EmuBlk {
  std::barrier<> bar; std::vector<std::unique_ptr<std::barrier<>>> wb; std::vector<uint64_t> wbuf;
  std::vector<unsigned char> sm; EmuCtx ctx;
  EmuBlk(int block, size_t smem) : bar(block), wbuf((block / 32 + 1) * 32), sm(smem + 64, 0xFF) {
    for (int w = 0; w < block / 32; ++w) wb.push_back(std::make_unique<std::barrier<>>(32));
    ctx = {&bar, &wb, wbuf.data(), sm.data()};
  }
};
template <class F> void emu_launch(int grid, int block, size_t smem, bool threaded, F&& f) {
  if (!threaded) {
    for (int b = 0; b < grid; ++b) for (int t = 0; t < block; ++t) {
      blockIdx = {(unsigned)b, 0, 0}; threadIdx = {(unsigned)t, 0, 0};
      blockDim = {(unsigned)block, 1, 1}; gridDim = {(unsigned)grid, 1, 1}; emu_ctx = nullptr; f(); }
    return;
  }
  if (block % 32) std::abort();
  std::vector<std::unique_ptr<EmuBlk>> blks;
  for (int b = 0; b < grid; ++b) blks.push_back(std::make_unique<EmuBlk>(block, smem));
  std::vector<std::thread> th;
  for (int b = 0; b < grid; ++b) for (int t = 0; t < block; ++t)
    th.emplace_back([&, b, t] {
      blockIdx = {(unsigned)b, 0, 0}; threadIdx = {(unsigned)t, 0, 0};
      blockDim = {(unsigned)block, 1, 1}; gridDim = {(unsigned)grid, 1, 1};
      emu_ctx = &blks[b]->ctx; f(); });
  for (auto& x : th) x.join();
}
template <class... A, size_t... I>
void emu_call_with(void (*fn)(A...), void** a, std::index_sequence<I...>) {
  fn(*reinterpret_cast<std::remove_reference_t<A>*>(a[I])...);
}
template <class... A>
void emu_call(void (*fn)(A...), int grid, int block, size_t smem, bool threaded, void** a) {
  emu_launch(grid, block, smem, threaded, [&] { emu_call_with(fn, a, std::index_sequence_for<A...>{}); });
}
'''
_SMEM_DECL = "extern __shared__ __align__(16) unsigned char frnn_smem[];"


class _EmuRuntime:
    """Stands in for cupy_cuda._Runtime: NumPy arrays, host-compiled kernels."""

    def __init__(self, build_dir, sm_count=4):
        import numpy as np
        self.xp = np
        self.loader = loader
        self.sm_count, self.smem_optin, self.cooperative = sm_count, 227 * 1024, True
        self._dir = build_dir
        self._libs = {}

    def empty(self, shape, dtype):
        return self.xp.full(shape, self.xp.nan, dtype=dtype)

    def gemm(self, transa, transb, a, b, out, beta=0.0):
        A = a.T if transa == "T" else a
        Bm = b.T if transb == "T" else b
        out[...] = A @ Bm + (beta * out if beta else 0)

    def step_gemm(self, transa, transb, a, b, out, beta=0.0):
        from fastrnn._backends.cupy_cuda import gemm_layout
        fl = lambda m: (m.flags.c_contiguous, m.flags.f_contiguous)  # noqa: E731
        b_first, opx, opy, M, N, K, ldx, ldy, ldc = gemm_layout(transa, transb, a.shape, fl(a), b.shape,
                                                                fl(b), fl(out))
        dt = a.dtype

        def f(ap, bp, op):
            x, y = (bp, ap) if b_first else (ap, bp)
            _blas_gemm(dt, opx, opy, M, N, K, 1.0, x, ldx, y, ldy, beta, op, ldc)
        return f

    @staticmethod
    def ptr(a):
        return a.ctypes.data

    def _lib(self, source, dtype):
        import ctypes
        import hashlib
        key = (source, dtype)
        if key not in self._libs:
            text = loader.source(source)
            assert _SMEM_DECL in text
            text = text.replace(_SMEM_DECL, "unsigned char* frnn_smem = emu_ctx->smem;")
            wrappers = "\n".join(
                f'extern "C" void emu_{k}(int g, int b, size_t smem, void** a) '
                f'{{ emu_call(&{k}, g, b, smem, {"true" if k.startswith("persist_") else "false"}, a); }}'
                for k in loader.kernel_names(source))
            scal = {"float32": "float", "float64": "double"}[dtype]
            full = f"#define FRNN_SCALAR {scal}\n{_SHIM}\n{text}\n{wrappers}\n"
            so = self._dir / f"{source}_{dtype}_{hashlib.sha1(full.encode()).hexdigest()[:10]}.so"
            cpp = so.with_suffix(".cpp")
            cpp.write_text(full, encoding="utf-8")
            r = subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w",
                                "-o", str(so), str(cpp)], capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"host build of {source} ({dtype}) failed:\n{r.stderr[-4000:]}"
            self._libs[key] = ctypes.CDLL(str(so))
        return self._libs[key]

    def kernel(self, source, name, dtype):
        import ctypes
        import numpy as np
        fn = getattr(self._lib(source, np.dtype(dtype).name), "emu_" + name)
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
        return fn

    def launch(self, kern, grid, block, args, shared_mem=0):
        import ctypes
        import numpy as np
        keep = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous
                keep.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.int32):
                keep.append(ctypes.c_int32(int(a)))
            else:
                raise TypeError(f"kernel argument of type {type(a).__name__}")
        params = (ctypes.c_void_p * len(keep))(*[ctypes.addressof(k) for k in keep])
        kern(grid, block, shared_mem, params)

    def co_resident(self, kern, threads, smem, nblk):
        return nblk <= self.sm_count, f"{nblk} blocks > {self.sm_count} emulated SMs"


def _cxx20_ok():
    if shutil.which("g++") is None:
        return "g++ is not on PATH"
    probe = "#include <barrier>\n#include <atomic>\nint main(){unsigned u=0; std::atomic_ref<unsigned>(u).fetch_add(1); std::barrier<> b(1); b.arrive_and_wait(); return 0;}\n"
    try:
        r = subprocess.run(["g++", "-std=c++20", "-pthread", "-x", "c++", "-", "-o", "/dev/null"],
                           input=probe, capture_output=True, text=True, timeout=120)
    except Exception as exc:
        return f"g++ failed: {exc}"
    return None if r.returncode == 0 else f"g++ lacks C++20 <barrier>/atomic_ref: {r.stderr[-300:]}"


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    why = _cxx20_ok()
    if why:
        pytest.skip(why)
    pytest.importorskip("numpy")
    from fastrnn._backends import cupy_cuda
    old = cupy_cuda.PERSIST_THREADS
    cupy_cuda.PERSIST_THREADS = 64   # 2 warps: rows outnumber warps, loops wrap
    yield _EmuRuntime(tmp_path_factory.mktemp("cuda_emu"))
    cupy_cuda.PERSIST_THREADS = old


EMU_CASES = [  # (T, B, I, H, reverse, lengths, h0): 4 emulated SMs, H=13 -> U=4, last block 1 unit
    (7, 3, 5, 13, True, "mixed", True),
    (2, 16, 3, 9, False, "none", False),   # B = FRNN_MAXB
]
_EMU_MODES = ("rnn_tanh", "rnn_relu", "gru", "lstm")
# The general path emulates fast (serial loops); the persistent one runs an OS
# thread per CUDA thread, so it gets fewer cases (shared CI cores).
EMU_RUNS = ([(m, d, "general", c) for m in _EMU_MODES for d in DTYPES for c in range(len(EMU_CASES))]
            + [(m, "float64", "persistent", 0) for m in _EMU_MODES]
            + [(m, "float32", "persistent", 1) for m in ("gru", "lstm")])


@pytest.mark.parametrize("mode,dtype,path,case", EMU_RUNS)
def test_emulated_kernels_match_reference(emu, mode, dtype, path, case):
    import numpy as np

    from fastrnn import reference
    from fastrnn._backends import cupy_cuda
    from fastrnn.cells import spec
    T, B, I, H, reverse, lengths, with_h0 = EMU_CASES[case]
    rng = np.random.default_rng(case)
    sp = spec(mode)
    G, k = sp.gates, 1 / np.sqrt(H)
    x = rng.standard_normal((T, B, I))
    w_ih, w_hh = rng.uniform(-k, k, (G * H, I)), rng.uniform(-k, k, (G * H, H))
    b_ih, b_hh = rng.uniform(-k, k, G * H), rng.uniform(-k, k, G * H)
    h0 = rng.standard_normal((B, H)) * 0.5 if with_h0 else np.zeros((B, H))
    c0 = rng.standard_normal((B, H)) * 0.5 if with_h0 else np.zeros((B, H))
    L = None
    if lengths == "mixed":
        L = rng.integers(0, T + 1, B).astype(np.int64)
        L[0], L[-1] = T, 0
    dy, dh, dc = rng.standard_normal((T, B, H)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    c0r, dcr = (c0, dc) if sp.has_cell else (None, None)
    ry, rh, rc, saved = reference.forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0r, L, reverse, True)
    ref = dict(zip(("y", "h_n", "c_n"), (ry, rh, rc)))
    ref.update(zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"),
                   reference.backward(saved, dy, dh, dcr)))

    def cast(a):
        return None if a is None else np.ascontiguousarray(a, dtype=dtype)

    cupy_cuda.set_path(path)
    try:
        y, hn, cn, p = cupy_cuda._forward(emu, mode, cast(x), cast(w_ih), cast(w_hh), cast(b_ih),
                                          cast(b_hh), cast(h0), cast(c0r), L, reverse, True)
        assert p["path"] == path
        got = dict(zip(("y", "h_n", "c_n"), (y, hn, cn)))
        got.update(zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"),
                       cupy_cuda._backward(emu, p, cast(dy), cast(dh), cast(dcr))))
        y_inf = cupy_cuda._forward(emu, mode, cast(x), cast(w_ih), cast(w_hh), cast(b_ih), cast(b_hh),
                                   cast(h0), cast(c0r), L, reverse, False)[0]
    finally:
        cupy_cuda.set_path(None)
    got["y (training=False)"], ref["y (training=False)"] = y_inf, ry
    tol = 1e-10 if dtype == "float64" else 1e-5
    for name, r in ref.items():
        g = got[name]
        if r is None:
            assert g is None, name
            continue
        assert g.shape == r.shape and str(g.dtype) == dtype, (name, g.shape, g.dtype)
        assert np.all(np.isfinite(g)), f"{name}: non-finite values (an element never written?)"
        err = float(np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-300))
        assert err <= tol, f"{name}: max|got-ref|/max|ref| = {err:.2e} > {tol:.0e}"
