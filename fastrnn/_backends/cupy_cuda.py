"""The CuPy CUDA backend: fused RNN/GRU/LSTM forward and BPTT on NVIDIA GPUs.

CuPy arrays in, CuPy arrays out; nothing goes to the host (``lengths``
arrives as a host int64 (B,) array, or None, and is uploaded once per call).
The CUDA sources live in ``fastrnn._kernels.cuda`` (kernels/cuda/) and are
compiled by NVRTC through ``cupy.RawModule``, once per source and dtype.

Shapes: x (T, B, I); w_ih (G*H, I); w_hh (G*H, H); b_ih, b_hh (G*H,);
h0, c0 (B, H); y (T, B, H).  G = 1 rnn, 3 gru (r, z, n), 4 lstm (i, f, g, o).

Two paths, with the same saved buffers (either backward runs after either
forward):

general (any size)
    before the loop, one GEMM xg = x W_ih^T over all T*B rows (cuBLAS);
    per step one GEMM hg = h W_hh^T for all G gates and ONE fused pointwise
    kernel (biases, activations, state update, length masking, y, saved
    gates).  Backward per step: one fused pointwise kernel and one GEMM
    dh += dhg W_hh; after the loop dx, dW_ih, dW_hh as GEMMs over all T*B
    rows and the bias gradients as column sums.  No allocation in the loop;
    the per-step GEMM is one raw cublas<S|D>gemm call planned before the loop
    (the call cupy.cublas.gemm would make, without its per-call checks).

persistent (small batch)
    one cooperative kernel runs all T steps, W_hh held in shared memory, one
    grid-wide barrier per step (kernels/cuda/persistent.cu).  Block k owns the
    hidden units [k*U, k*U + U) with all G gates of them, U = ceil(H / SMs),
    so ceil(H / U) <= SMs blocks.  The input projection and the weight
    gradients are the same big GEMMs as the general path.

Dispatch rule (FASTRNN_CUDA_PATH=auto, the default): persistent when all of
    * B <= 16 (PERSIST_MAX_B: the per-column accumulators live in registers),
    * the device supports cooperative launch,
    * the shared memory one block needs, in elements of the dtype,
        forward  G*U*H + B*H + KS*B*G*U  (KS k-chunks, persistent_kchunks)
        backward G*U*H + 16*G*U + 2*B*U
      fits the device's opt-in per-block limit (227 KiB on H100/H200: in
      float32 H up to about 1100 for LSTM at B=16; in float64 about 780),
    * the occupancy API confirms that all ceil(H / U) blocks are co-resident;
otherwise general.  One block per SM (the most blocks) was measured on an
H100 against 64, 32, 16 and 8 blocks (benchmarks/gpu_sweep_blocks.py,
B = 1, 8, 16, every mode): fastest or tied everywhere, up to 2.7x faster
than 8 blocks, so the grid barrier is not what limits these kernels.
PERSIST_BLOCKS caps the count for such sweeps.  Forward and backward decide separately (their shared
memory differs), each with the same rule.

Force a path with the environment variable FASTRNN_CUDA_PATH=general|persistent|auto
or with ``set_path(...)`` (which wins over the variable).  Forcing persistent
where it does not fit raises ValueError saying why: no silent fallback.

TF32: the GEMMs go through cupy.cublas.gemm (cublasSgemm/Dgemm) on CuPy's
handle, whose default math mode does not use TF32; CuPy's own matmul only
uses TF32 when CUPY_TF32=1.  The tests check that neither CUPY_TF32 nor
NVIDIA_TF32_OVERRIDE enables it.
"""
from __future__ import annotations

import os

import numpy as np

from ..cells import MODES, spec

__all__ = ["BACKEND", "CupyCuda", "set_path", "get_path", "choose_path", "persistent_plan",
           "persistent_smem", "gemm_layout", "PATH_ENV", "PERSIST_MAX_B", "SAVED_PER_UNIT"]

PATH_ENV = "FASTRNN_CUDA_PATH"
PATHS = ("auto", "general", "persistent")
PERSIST_MAX_B = 16          # FRNN_MAXB in kernels/cuda/common.cuh
PERSIST_THREADS = 256       # threads per block of the persistent kernels (multiple of 32)
STEP_THREADS = 256          # threads per block of the general-path step kernels
SAVED_PER_UNIT = {"rnn_tanh": 0, "rnn_relu": 0, "gru": 4, "lstm": 4}   # S in the .cu files
POISON = False              # tests: fill every buffer with NaN first, so an unwritten element shows
PERSIST_BLOCKS = None       # at most this many persistent blocks (None: one per SM); for tuning sweeps

_FORCED = None


def set_path(path):
    """Force the CUDA path for later calls: "general", "persistent", "auto", or
    None (back to $FASTRNN_CUDA_PATH, default auto)."""
    global _FORCED
    if path is not None and path not in PATHS:
        raise ValueError(f"path: expected one of {', '.join(map(repr, PATHS))} or None, got {path!r}")
    _FORCED = path


def get_path() -> str:
    """The requested path: set_path(), else $FASTRNN_CUDA_PATH, else "auto"."""
    if _FORCED is not None:
        return _FORCED
    env = os.environ.get(PATH_ENV) or "auto"
    if env not in PATHS:
        raise ValueError(f"${PATH_ENV}: expected one of {', '.join(map(repr, PATHS))}, got {env!r}")
    return env


# ---------------------------------------------------------------- planning (pure)

def persistent_kchunks(G, U, H, itemsize, threads=PERSIST_THREADS):
    """KS, the forward's number of k chunks (frnn_kchunks in persistent.cu)."""
    rb = 4 if itemsize == 4 else 2                      # FRNN_RB
    nrb = -(-(G * U) // rb)
    return max(1, min((threads // 32) // nrb, -(-H // 32)))


def persistent_smem(mode, B, H, U, itemsize, which):
    """Dynamic shared memory in bytes of one persistent block ('fwd' or 'bwd');
    the layout is documented in kernels/cuda/persistent.cu."""
    G = spec(mode).gates
    if which == "fwd":
        n = G * U * H + B * H + persistent_kchunks(G, U, H, itemsize) * B * G * U
    elif which == "bwd":
        n = G * U * H + PERSIST_MAX_B * G * U + 2 * B * U
    else:
        raise ValueError(f"which: expected 'fwd' or 'bwd', got {which!r}")
    return n * itemsize


def persistent_plan(mode, B, H, itemsize, max_blocks, smem_optin, which, cooperative=True):
    """Static part of the dispatch rule, for at most max_blocks blocks (the SM
    count, or PERSIST_BLOCKS below it).  Returns (fits, reason, U, nblocks, smem_bytes)."""
    U = -(-H // max_blocks)          # ceil(H / blocks)
    nblk = -(-H // U)                # ceil(H / U) <= max_blocks
    smem = persistent_smem(mode, B, H, U, itemsize, which)
    if not cooperative:
        return False, "the device does not support cooperative launch", U, nblk, smem
    if B > PERSIST_MAX_B:
        return False, f"B={B} > {PERSIST_MAX_B} (persistent kernels keep B columns in registers)", U, nblk, smem
    if smem > smem_optin:
        return (False, f"{which} needs {smem} bytes of shared memory per block (U={U} units x "
                f"{spec(mode).gates} gates x H={H}), more than the device's {smem_optin}", U, nblk, smem)
    return True, f"U={U} units per block, {nblk} blocks, {smem} bytes shared memory", U, nblk, smem


def choose_path(requested, plan_ok, plan_reason, which):
    """'general' or 'persistent' for one call; ValueError when persistent is
    forced but does not fit."""
    if requested == "general":
        return "general"
    if requested == "persistent":
        if not plan_ok:
            raise ValueError(f"{PATH_ENV}=persistent: the persistent {which} kernel does not fit: {plan_reason}")
        return "persistent"
    return "persistent" if plan_ok else "general"


def gemm_layout(transa, transb, a_shape, a_cf, b_shape, b_cf, out_cf):
    """The column-major cuBLAS call computing out = op(a) @ op(b) (+ beta*out) on
    contiguous row- or column-major operands without copies -- the call
    cupy.cublas.gemm makes -- decided once for the time loop.  *_cf are
    (c_contiguous, f_contiguous).  Returns (b_first, opx, opy, M, N, K, ldx, ldy, ldc):
    gemm(opx, opy, M, N, K, alpha, x, ldx, y, ldy, beta, out, ldc) with
    (x, y) = (b, a) if b_first else (a, b); op 0 = N, 1 = T."""
    ta = 0 if transa == "N" else 1
    tb = 0 if transb == "N" else 1
    m, k = a_shape if ta == 0 else a_shape[::-1]
    n = b_shape[1] if tb == 0 else b_shape[0]

    def ld(shape, cf, t):
        if cf[1]:
            return shape[0], t
        if cf[0]:
            return shape[1], 1 - t
        raise ValueError(f"gemm operand of shape {shape} is not contiguous")

    lda, ta = ld(a_shape, a_cf, ta)
    ldb, tb = ld(b_shape, b_cf, tb)
    if out_cf[1]:
        return False, ta, tb, m, n, k, lda, ldb, m
    if out_cf[0]:
        return True, 1 - tb, 1 - ta, n, m, k, ldb, lda, n
    raise ValueError("gemm output is not contiguous")


# ---------------------------------------------------------------- device runtime

class _Runtime:
    """The device side: CuPy arrays, cuBLAS GEMMs, RawModule kernels and the
    limits of the current device.  (A test harness can stand in another object
    with the same methods.)"""

    def __init__(self):
        import cupy
        from cupy import cublas
        from cupy_backends.cuda.api import driver

        from .._kernels.cuda import loader

        self.xp = cupy
        self._cublas = cublas
        self._driver = driver
        self.loader = loader
        rt = cupy.cuda.runtime
        dev = cupy.cuda.Device().id
        self.sm_count = int(rt.deviceGetAttribute(rt.cudaDevAttrMultiProcessorCount, dev))
        self.smem_optin = int(rt.deviceGetAttribute(rt.cudaDevAttrMaxSharedMemoryPerBlockOptin, dev))
        self.cooperative = bool(rt.deviceGetAttribute(rt.cudaDevAttrCooperativeLaunch, dev))
        self._scalars = {}

    # arrays
    def empty(self, shape, dtype):
        if POISON:
            return self.xp.full(shape, np.nan, dtype=dtype)
        return self.xp.empty(shape, dtype=dtype)

    def _scalar(self, value, dtype):
        key = (float(value), np.dtype(dtype).char)
        s = self._scalars.get(key)
        if s is None:
            s = self._scalars[key] = np.array(value, dtype=dtype)
        return s

    def gemm(self, transa, transb, a, b, out, beta=0.0):
        """out = op(a) @ op(b) + beta * out (cuBLAS, no copies for contiguous operands)."""
        self._cublas.gemm(transa, transb, a, b, out=out, alpha=self._scalar(1.0, a.dtype),
                          beta=self._scalar(beta, a.dtype))

    def step_gemm(self, transa, transb, a, b, out, beta=0.0):
        """f(a_ptr, b_ptr, out_ptr) computing out = op(a) @ op(b) + beta * out for
        operands shaped and laid out like a, b, out: one raw cublas<S|D>gemm call,
        planned here once so that the time loop skips CuPy's per-call checks."""
        from cupy.cuda import device
        from cupy_backends.cuda.libs import cublas as lib
        b_first, opx, opy, M, N, K, ldx, ldy, ldc = gemm_layout(
            transa, transb, a.shape, (a.flags.c_contiguous, a.flags.f_contiguous), b.shape,
            (b.flags.c_contiguous, b.flags.f_contiguous), (out.flags.c_contiguous, out.flags.f_contiguous))
        func = lib.sgemm if a.dtype == np.float32 else lib.dgemm
        alpha_ptr = self._scalar(1.0, a.dtype).ctypes.data     # kept alive by self._scalars
        beta_ptr = self._scalar(beta, a.dtype).ctypes.data
        handle = device.get_cublas_handle()
        lib.setPointerMode(handle, lib.CUBLAS_POINTER_MODE_HOST)
        if b_first:
            def f(a_ptr, b_ptr, out_ptr):
                func(handle, opx, opy, M, N, K, alpha_ptr, b_ptr, ldx, a_ptr, ldy, beta_ptr, out_ptr, ldc)
        else:
            def f(a_ptr, b_ptr, out_ptr):
                func(handle, opx, opy, M, N, K, alpha_ptr, a_ptr, ldx, b_ptr, ldy, beta_ptr, out_ptr, ldc)
        return f

    @staticmethod
    def ptr(a):
        return a.data.ptr

    # kernels
    def kernel(self, source, name, dtype):
        return self.loader.get_kernel(source, name, np.dtype(dtype).name)

    def launch(self, kern, grid, block, args, shared_mem=0):
        kern((grid,), (block,), args, shared_mem=shared_mem)

    def co_resident(self, kern, threads, smem, nblk):
        """(ok, reason): can nblk blocks of kern run at once (cooperative launch)?
        Also raises the kernel's dynamic shared memory limit to smem."""
        kern.max_dynamic_shared_size_bytes = int(smem)
        per_sm = self._driver.occupancyMaxActiveBlocksPerMultiprocessor(kern.kernel.ptr, threads, int(smem))
        if per_sm * self.sm_count < nblk:
            return False, (f"only {per_sm} block(s) of {threads} threads and {smem} bytes fit per SM "
                           f"x {self.sm_count} SMs < {nblk} blocks")
        return True, "co-resident"


_RUNTIMES = {}


def _runtime():
    import cupy
    dev = cupy.cuda.Device().id
    rt = _RUNTIMES.get(dev)
    if rt is None:
        rt = _RUNTIMES[dev] = _Runtime()
    return rt


# ---------------------------------------------------------------- the two passes

def _plan(rt, mode, B, H, dtype, which):
    """(path, U, nblk, smem) for one pass under the requested path."""
    requested = get_path()
    if requested == "general":
        return "general", 0, 0, 0
    itemsize = np.dtype(dtype).itemsize
    max_blocks = rt.sm_count if PERSIST_BLOCKS is None else max(1, min(int(PERSIST_BLOCKS), rt.sm_count))
    ok, reason, U, nblk, smem = persistent_plan(mode, B, H, itemsize, max_blocks, rt.smem_optin,
                                                which, rt.cooperative)
    if ok:
        name = (rt.loader.persist_fwd_name if which == "fwd" else rt.loader.persist_bwd_name)(mode)
        ok, why = rt.co_resident(rt.kernel("persistent", name, dtype), PERSIST_THREADS, smem, nblk)
        if not ok:
            reason = why
    path = choose_path(requested, ok, reason, which)
    return path, U, nblk, smem


def _forward(rt, mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training):
    xp = rt.xp
    i32 = np.int32
    sp = spec(mode)
    G, S = sp.gates, SAVED_PER_UNIT[mode]
    T, B, I = (int(v) for v in x.shape)
    H = int(w_hh.shape[1])
    GH = G * H
    dt = x.dtype
    first, last = (T, 0) if reverse else (0, T)

    # input projection of all T*B rows: one GEMM (biases are added in the kernels)
    xg = rt.empty((T, B, GH), dt)
    rt.gemm("N", "T", x.reshape(T * B, I), w_ih, xg.reshape(T * B, GH))
    hs = rt.empty((T + 1, B, H), dt)
    hs[first] = h0
    cs = None
    if sp.has_cell:
        cs = rt.empty((T + 1, B, H), dt)
        cs[first] = c0
    y = rt.empty((T, B, H), dt)
    write_save = bool(training and S > 0)
    save = rt.empty((T, B, S * H), dt) if write_save else None
    len_d = (xp.asarray(lengths, dtype=np.int64) if lengths is not None
             else xp.full((B,), T, dtype=np.int64))
    cs_arg = cs if cs is not None else hs       # never touched unless lstm
    save_arg = save if save is not None else y  # never touched unless write_save

    path, U, nblk, smem = _plan(rt, mode, B, H, dt, "fwd")
    if path == "persistent":
        bar = xp.zeros((1,), dtype=np.uint32)
        k = rt.kernel("persistent", rt.loader.persist_fwd_name(mode), dt)
        rt.launch(k, nblk, PERSIST_THREADS,
                  (xg, w_hh, b_ih, b_hh, len_d, hs, cs_arg, y, save_arg, bar, i32(write_save),
                   i32(T), i32(B), i32(H), i32(U), i32(reverse)), shared_mem=smem)
    else:
        hg = rt.empty((B, GH), dt)
        k = rt.kernel(rt.loader.MODE_SOURCE[mode], rt.loader.fwd_step_name(mode), dt)
        grid = -(-(B * H) // STEP_THREADS)
        h_in = [hs[t + 1] if reverse else hs[t] for t in range(T)]   # state entering time t
        rec = rt.step_gemm("N", "T", h_in[0], w_hh, hg)               # hg = h @ W_hh^T
        h_ptr = [rt.ptr(v) for v in h_in]
        w_ptr, hg_ptr = rt.ptr(w_hh), rt.ptr(hg)
        tail = (i32(B), i32(H), i32(reverse))
        head = (xg, hg, b_ih, b_hh, len_d, hs, cs_arg, y, save_arg, i32(write_save))
        for s in range(T):
            t = T - 1 - s if reverse else s
            rec(h_ptr[t], w_ptr, hg_ptr)
            rt.launch(k, grid, STEP_THREADS, head + (i32(t),) + tail)

    h_n = hs[last].copy()
    c_n = cs[last].copy() if cs is not None else None
    payload = None
    if training:
        payload = dict(mode=mode, path=path, shape=(T, B, I, H), dtype=dt, x=x, w_ih=w_ih,
                       w_hh=w_hh, hs=hs, cs=cs, save=save, lengths=len_d, reverse=bool(reverse))
    return y, h_n, c_n, payload


def _backward(rt, p, dy, dh_n, dc_n):
    i32 = np.int32
    mode = p["mode"]
    sp = spec(mode)
    G = sp.gates
    T, B, I, H = p["shape"]
    GH = G * H
    dt = p["dtype"]
    reverse = p["reverse"]
    hs, cs, save, len_d, w_hh, w_ih = p["hs"], p["cs"], p["save"], p["lengths"], p["w_hh"], p["w_ih"]

    dh = dh_n.copy()                          # running gradient, updated in place
    dc = dc_n.copy() if sp.has_cell else None
    dy = rt.xp.ascontiguousarray(dy)
    dxg = rt.empty((T, B, GH), dt)
    split = mode == "gru"                     # Cell::SPLIT in the .cu files
    dhg = rt.empty((T, B, GH), dt) if split else dxg
    cs_arg = cs if cs is not None else hs
    save_arg = save if save is not None else hs
    dc_arg = dc if dc is not None else dh

    path, U, nblk, smem = _plan(rt, mode, B, H, dt, "bwd")
    if path == "persistent":
        partial = rt.empty((2, nblk, B, H), dt)
        bar = rt.xp.zeros((1,), dtype=np.uint32)
        k = rt.kernel("persistent", rt.loader.persist_bwd_name(mode), dt)
        rt.launch(k, nblk, PERSIST_THREADS,
                  (w_hh, len_d, hs, cs_arg, save_arg, dy, dh, dc_arg, dxg, dhg, partial, bar,
                   i32(T), i32(B), i32(H), i32(U), i32(reverse)), shared_mem=smem)
    else:
        k = rt.kernel(rt.loader.MODE_SOURCE[mode], rt.loader.bwd_step_name(mode), dt)
        grid = -(-(B * H) // STEP_THREADS)
        rec = rt.step_gemm("N", "N", dhg[0], w_hh, dh, beta=1.0)     # dh += dhg[t] @ W_hh
        dhg_ptr = [rt.ptr(dhg[t]) for t in range(T)]
        w_ptr, dh_ptr = rt.ptr(w_hh), rt.ptr(dh)
        head = (hs, cs_arg, save_arg, dy, len_d, dh, dc_arg, dxg, dhg)
        tail = (i32(B), i32(H), i32(reverse))
        for s in range(T - 1, -1, -1):
            t = T - 1 - s if reverse else s
            rt.launch(k, grid, STEP_THREADS, head + (i32(t),) + tail)
            rec(dhg_ptr[t], w_ptr, dh_ptr)

    # weight and input gradients: big GEMMs over all T*B rows, bias gradients as column sums
    dxg2 = dxg.reshape(T * B, GH)
    dhg2 = dhg.reshape(T * B, GH)
    dx = rt.empty((T, B, I), dt)
    rt.gemm("N", "N", dxg2, w_ih, dx.reshape(T * B, I))
    dw_ih = rt.empty((GH, I), dt)
    rt.gemm("T", "N", dxg2, p["x"].reshape(T * B, I), dw_ih)
    off = 1 if reverse else 0                 # hs[off:off+T][t] is the state entering time t
    dw_hh = rt.empty((GH, H), dt)
    rt.gemm("T", "N", dhg2, hs[off:off + T].reshape(T * B, H), dw_hh)
    db_ih = dxg2.sum(axis=0)
    db_hh = dhg2.sum(axis=0) if split else db_ih.copy()
    return dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh


# ---------------------------------------------------------------- the adapter

class CupyCuda:
    """Dispatcher adapter (see fastrnn._backends): CuPy arrays in and out."""

    name = "cupy"
    priority = 20
    modes = MODES
    dtypes = ("float32", "float64")
    array_module_name = "cupy"

    def probe(self):
        try:
            import cupy
        except Exception as exc:  # ImportError, or a broken install
            return False, f"cupy is not importable ({type(exc).__name__}: {exc}); pip install cupy-cuda13x"
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # e.g. cudaErrorInsufficientDriver, cudaErrorNoDevice
            return False, f"no usable CUDA device: {type(exc).__name__}: {exc}"
        if n < 1:
            return False, "no CUDA device (getDeviceCount() == 0)"
        try:
            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            cc = int(props["major"]) * 10 + int(props["minor"])
            name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        except Exception as exc:
            return False, f"cannot query the CUDA device: {type(exc).__name__}: {exc}"
        if cc < 70:
            return False, f"{name} is sm_{cc}; the kernels need sm_70 or newer"
        try:
            nvrtc = cupy.cuda.nvrtc.getVersion()
        except Exception as exc:
            return False, f"NVRTC (the CUDA runtime compiler) is not loadable: {type(exc).__name__}: {exc}"
        try:
            from .._kernels.cuda import loader  # noqa: F401
        except ImportError as exc:
            return False, (f"fastrnn._kernels.cuda is not importable ({exc}); install the package "
                           "(pip install -e .) so that kernels/ maps to fastrnn._kernels")
        return True, (f"CuPy {cupy.__version__}, NVRTC {nvrtc[0]}.{nvrtc[1]}, {n} device(s); "
                      f"current: {name} (sm_{cc}); path {get_path()}")

    def forward(self, mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training):
        return _forward(_runtime(), mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training)

    def backward(self, payload, dy, dh_n, dc_n):
        return _backward(_runtime(), payload, dy, dh_n, dc_n)

    def paths_for(self, mode, B, H, dtype):
        """(forward path, backward path) that a call of this shape takes now."""
        rt = _runtime()
        return (_plan(rt, mode, B, H, np.dtype(dtype), "fwd")[0],
                _plan(rt, mode, B, H, np.dtype(dtype), "bwd")[0])


BACKEND = CupyCuda()
