"""One helper for every kernel test: run a backend and the float64 oracle on
the same random problem, then compare every output and gradient by name."""
from __future__ import annotations

import contextlib

import numpy as np

import fastrnn
from fastrnn.cells import spec

# max |actual - expected| / max |expected|, per array
TOL = {"float64": 1e-10, "float32": 2e-5}


def nan_empty(shape, dtype=float):
    """np.empty that fills with NaN: stands in for the numba backend's
    allocator (numba_cpu._empty) so that an element the kernels forget to
    write shows up as NaN."""
    a = np.empty(shape, dtype)
    a.fill(np.nan)
    return a


def _rel_err(actual, expected):
    """max |actual - expected| / max |expected| (the measure TOL bounds)."""
    expected = np.asarray(expected)
    scale = max(float(np.abs(expected).max()), 1e-6) if expected.size else 1.0
    return float(np.abs(np.asarray(actual).astype(np.float64) - expected).max(initial=0.0)) / scale


def assert_close(name, actual, expected, tol):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: non-finite values"
    err = _rel_err(actual, expected)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


def make_problem(mode, T, B, I, H, *, dtype="float64", lengths="full", h0=True, scale=0.5,
                 x_scale=1.0, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    G = spec(mode).gates
    x = rng.standard_normal((T, B, I)) * x_scale
    w = [rng.standard_normal((G * H, I)) * scale, rng.standard_normal((G * H, H)) * scale,
         rng.standard_normal(G * H) * scale if bias else None,
         rng.standard_normal(G * H) * scale if bias else None]
    if isinstance(lengths, str):
        lengths = {"full": None,
                   "random": rng.integers(0, T + 1, size=B),
                   "edges": np.resize(np.array([T, 0, max(T - 3, 1), 1]), B)}[lengths]
    hs = None
    if h0:
        hs = rng.standard_normal((B, H))
        if spec(mode).has_cell:
            hs = (hs, rng.standard_normal((B, H)))
    dy = rng.standard_normal((T, B, H))
    if lengths is not None:
        dy = dy * (np.arange(T)[:, None] < np.asarray(lengths)[None, :])[:, :, None]
    dh = rng.standard_normal((B, H))
    dhn = (dh, rng.standard_normal((B, H))) if spec(mode).has_cell else dh
    return dict(x=x, w=w, h0=hs, lengths=lengths, dy=dy, dhn=dhn)


def arrays(v):
    """A state or state gradient as a list of arrays: an lstm pair's two,
    else the one."""
    return list(v) if isinstance(v, tuple) else [v]


def _cast(obj, dtype):
    if obj is None:
        return None
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast(o, dtype) for o in obj)
    return np.asarray(obj).astype(dtype)


def run(mode, prob, *, backend, dtype="float64", reverse=False):
    """Forward + backward; a flat dict of named arrays."""
    x = _cast(prob["x"], dtype)
    w = _cast(prob["w"], dtype)
    h0 = _cast(prob["h0"], dtype)
    y, hn, saved = fastrnn.rnn_forward(mode, x, w, h0, prob["lengths"], reverse=reverse,
                                       training=True, backend=backend)
    dx, dh0, dw = fastrnn.rnn_backward(saved, _cast(prob["dy"], dtype), _cast(prob["dhn"], dtype))
    out = {"y": y, "dx": dx, "dw_ih": dw[0], "dw_hh": dw[1]}
    if dw[2] is not None:
        out["db_ih"], out["db_hh"] = dw[2], dw[3]
    if spec(mode).has_cell:
        out.update(h_n=hn[0], c_n=hn[1], dh0=dh0[0], dc0=dh0[1])
    else:
        out.update(h_n=hn, dh0=dh0)
    # inference mode must give the same forward result as training mode
    y2, hn2, s2 = fastrnn.rnn_forward(mode, x, w, h0, prob["lengths"], reverse=reverse,
                                      training=False, backend=backend)
    assert s2 is None, "saved must be None when training=False"
    out["y_inference"] = y2
    return out


def _f32(a):
    """a rounded to float32 and held in float64 again."""
    return None if a is None else np.asarray(a).astype(np.float32).astype(np.float64)


def run_stored_float32(mode, prob, *, reverse=False):
    """The float64 oracle on float32-rounded inputs, whose BPTT reads every
    activation it saved (states, gates, inputs) rounded to float32: the
    error any float32 implementation makes by holding those in float32,
    with no other float32 rounding.  Where a backward term is ill-conditioned
    (1 - y^2 of a y near +-1 magnifies y's rounding a thousandfold) this
    error is the floor under every float32 kernel, whatever the luck of
    the plain float32 oracle's own roundings."""
    prob32 = {k: (v if k == "lengths" else _cast(_cast(v, "float32"), "float64"))
              for k, v in prob.items()}
    x = prob32["x"]
    y, hn, saved = fastrnn.rnn_forward(mode, x, prob32["w"], prob32["h0"], prob["lengths"],
                                       reverse=reverse, training=True, backend="numpy")
    payload = saved.payload
    payload["steps"] = [tuple(_f32(a) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else
                              (tuple(_f32(c) for c in a) if isinstance(a, tuple) else a)
                              for a in step)
                        for step in payload["steps"]]
    dx, dh0, dw = fastrnn.rnn_backward(saved, prob32["dy"], prob32["dhn"])
    out = {"dx": dx, "dw_ih": dw[0], "dw_hh": dw[1]}
    if dw[2] is not None:
        out["db_ih"], out["db_hh"] = dw[2], dw[3]
    if spec(mode).has_cell:
        out.update(dh0=dh0[0], dc0=dh0[1])
    else:
        out.update(dh0=dh0)
    return out


def check_backend(mode, backend, *, T=7, B=3, I=5, H=13, dtype="float64", lengths="full",
                  reverse=False, h0=True, x_scale=1.0, scale=0.5, seed=0, bias=True):
    """The helper every kernel test calls: backend vs the float64 oracle."""
    prob = make_problem(mode, T, B, I, H, lengths=lengths, h0=h0, x_scale=x_scale,
                        scale=scale, seed=seed, bias=bias)
    ref = run(mode, prob, backend="numpy", dtype="float64", reverse=reverse)
    got = run(mode, prob, backend=backend, dtype=dtype, reverse=reverse)
    assert set(got) == set(ref)
    plain = None
    for name in sorted(ref):
        assert got[name].dtype == np.dtype(dtype), f"{name}: dtype {got[name].dtype} != {dtype}"
        expected = ref["y"] if name == "y_inference" else ref[name]
        tol = TOL[dtype]
        if dtype == "float32" and _rel_err(got[name], expected) > tol:
            # A float32 sum whose terms cancel (a gradient summed over few
            # steps, say) can miss the float64 value by more than TOL of its
            # own size through rounding alone.  The yardstick is then the
            # plain float32 arithmetic of the NumPy oracle on the same
            # problem: the backend may be off by at most twice what it is.
            # A gradient whose backward is ill-conditioned at this draw
            # (run_stored_float32) gets twice the error of float64 BPTT
            # over float32-held activations, the least any float32 kernel
            # makes there.
            if plain is None:
                plain = run(mode, prob, backend="numpy", dtype="float32", reverse=reverse)
                stored = run_stored_float32(mode, prob, reverse=reverse)
            tol = max(tol, 2 * _rel_err(plain[name], expected),
                      2 * _rel_err(stored[name], expected) if name in stored else 0.0)
        assert_close(name, got[name], expected, tol)
    if prob["lengths"] is not None:
        L = np.asarray(prob["lengths"])
        pad = np.arange(T)[:, None] >= L[None, :]
        assert np.all(got["y"][pad] == 0), "y: padding positions must be exactly zero"
    return got, ref


def poison_free_cached_buffers():
    """Fill every buffer the Numba backend's cache holds free with NaN bytes
    (0xFF: NaN in float32 and float64); returns how many.  A kernel that
    reuses one and leaves an element unwritten then shows NaN."""
    from fastrnn._backends import bufpool
    c = bufpool.CACHE
    n = 0
    with c._lock:
        for i in range(len(c._bufs)):
            if bufpool._refs(c._bufs, i) == bufpool._FREE_REFS:
                c._bufs[i].fill(255)
                n += 1
    return n


def force_by_rows(monkeypatch):
    """The threaded loops by rows for every mode at any size, from one row a
    thread (where threads can run)."""
    from fastrnn._backends import numba_cpu
    monkeypatch.setattr(numba_cpu, "PAR_MIN_WORK", 0)
    monkeypatch.setattr(numba_cpu, "TINY_WORK", 0)
    monkeypatch.setattr(numba_cpu, "ROWS_MIN_PER_THREAD", 1)
    monkeypatch.setattr(numba_cpu, "ROWS_MAX_WHH_BYTES", 1 << 40)
    monkeypatch.setattr(numba_cpu, "ROWS_MODES", fastrnn.MODES)


def force_by_units(monkeypatch):
    """The threaded loops by units (the form of calls whose W_hh is over
    ROWS_MAX_WHH_BYTES, such as S5) at any size (where threads can run)."""
    from fastrnn._backends import numba_cpu
    monkeypatch.setattr(numba_cpu, "PAR_MIN_WORK", 0)
    monkeypatch.setattr(numba_cpu, "TINY_WORK", 0)
    monkeypatch.setattr(numba_cpu, "ROWS_MAX_WHH_BYTES", 0)


def spy_rows_parts(monkeypatch, record):
    """force_by_rows, and every *_rows_part of the kernels wrapped so that
    each part appends record(name, i, nth) to the returned list before it runs."""
    from fastrnn._kernels.cpu import gru, lstm, rnn
    force_by_rows(monkeypatch)
    calls = []
    for mod in (lstm, gru, rnn):
        for name in [n for n in dir(mod) if n.endswith("_rows_part")]:
            kern = getattr(mod, name)

            def wrapped(i, nth, *a, _k=kern, _n=name):
                calls.append(record(_n, i, nth))
                return _k(i, nth, *a)
            monkeypatch.setattr(mod, name, wrapped)
    return calls


@contextlib.contextmanager
def _thread_count(lib, n):
    """lib's thread count (lib.get_num_threads / set_num_threads) at n
    inside, the old count restored on the way out, also on error."""
    old = lib.get_num_threads()
    lib.set_num_threads(n)
    try:
        yield old
    finally:
        lib.set_num_threads(old)


def numba_threads(n):
    """Numba's thread count (the calling thread's setting) at n inside."""
    import numba
    return _thread_count(numba, n)


def assert_child_survives(code, timeout=300):
    """Run `code` in a fresh Python process: it must exit 0 and print
    exactly 'alive' (what a crash, a SystemExit or an assertion in it
    would not do)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.strip() == "alive"


def one_numba_thread(request):
    """Numba at one thread (the calling thread's setting) until the test
    ends: the kernels' one-thread forms, as numba.set_num_threads(1) gives
    them to a user (_threads.threaded() then returns 1)."""
    import numba
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    request.addfinalizer(lambda: numba.set_num_threads(old))


def torch_threads(n):
    """torch's intra-op thread count at n inside."""
    import torch
    return _thread_count(torch, n)
