"""The CuPy CUDA backend against the float64 NumPy reference (the oracle).

Every output is asserted by name: y, h_n (c_n), dx, dh0 (dc0), dw_ih, dw_hh,
db_ih, db_hh.  Error measure: max |got - ref| / max |ref| per array (so an
element near zero is not held to a relative bound it cannot meet), at most
1e-10 in float64 and 1e-5 in float32 (the float32 run gets the same inputs
rounded to float32; the oracle runs in float64).

Both CUDA paths are forced in turn (cupy_cuda.set_path), and every buffer
the backend allocates is NaN-poisoned first (cupy_cuda.POISON), so an
element a kernel forgets to write shows up as a non-finite value.  Odd sizes
on purpose: T = 1, 7, 63; B = 1, 3, 5, 16; H = 9, 13, 37, 263 (263 on a
132-SM H100 gives U = 2 units per persistent block and a last block with one
unit); lengths include 0 and T; reverse; h0 given or not.

Skipped, with the reason, where CuPy or a CUDA device is missing.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import fastrnn
import fastrnn.dispatch
from fastrnn.cells import MODES, spec


def _gpu_skip_reason():
    try:
        import cupy
    except Exception as exc:
        return f"cupy is not importable ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"no usable CUDA device ({type(exc).__name__}: {exc})"
    if n < 1:
        return "no CUDA device"
    info = fastrnn.dispatch.backends()["cupy"]
    if not info.available:
        return f"the cupy backend is unavailable: {info.reason}"
    return None


_SKIP = _gpu_skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

TOL = {"float64": 1e-10, "float32": 1e-5}
DTYPES = ("float64", "float32")
PATHS = ("general", "persistent")


@pytest.fixture(autouse=True)
def _poison_and_reset_path():
    from fastrnn._backends import cupy_cuda
    old = cupy_cuda.POISON
    cupy_cuda.POISON = True
    cupy_cuda.set_path(None)
    yield cupy_cuda
    cupy_cuda.POISON = old
    cupy_cuda.set_path(None)


# ------------------------------------------------------------------ helpers

def make_case(mode, T, B, I, H, lengths="none", h0=True, seed=0, scale=1.0, bias=True):
    """Float64 inputs and upstream gradients for one call (NumPy arrays)."""
    rng = np.random.default_rng(seed)
    G = spec(mode).gates
    k = 1.0 / np.sqrt(H)
    case = dict(mode=mode, shape=(T, B, I, H))
    case["x"] = rng.standard_normal((T, B, I)) * scale
    case["w_ih"] = rng.uniform(-k, k, (G * H, I))
    case["w_hh"] = rng.uniform(-k, k, (G * H, H))
    case["b_ih"] = rng.uniform(-k, k, G * H) if bias else None
    case["b_hh"] = rng.uniform(-k, k, G * H) if bias else None
    case["h0"] = rng.standard_normal((B, H)) * 0.5 if h0 else None
    case["c0"] = rng.standard_normal((B, H)) * 0.5 if h0 else None
    if lengths == "none":
        case["lengths"] = None
    elif lengths == "mixed":        # includes T and (for B > 1) 0
        L = rng.integers(0, T + 1, B)
        L[0] = T
        if B > 1:
            L[-1] = 0
        case["lengths"] = L.astype(np.int64)
    else:
        raise ValueError(lengths)
    case["dy"] = rng.standard_normal((T, B, H))
    case["dh_n"] = rng.standard_normal((B, H))
    case["dc_n"] = rng.standard_normal((B, H))
    return case


def run_case(case, dtype, reverse, backend, xp, training=True):
    """Forward + backward through the public API; a dict of named outputs."""
    mode = case["mode"]
    lstm = spec(mode).has_cell

    def cast(a):
        return None if a is None else xp.asarray(np.asarray(a, dtype=dtype))

    weights = tuple(cast(case[n]) for n in ("w_ih", "w_hh", "b_ih", "b_hh"))
    if case["h0"] is None:
        h0 = None
    else:
        h0 = (cast(case["h0"]), cast(case["c0"])) if lstm else cast(case["h0"])
    y, hn, saved = fastrnn.rnn_forward(mode, cast(case["x"]), weights, h0, case["lengths"],
                                       reverse=reverse, training=training, backend=backend)
    out = {"y": y}
    if lstm:
        out["h_n"], out["c_n"] = hn
    else:
        out["h_n"] = hn
    if not training:
        return out, None
    dh_n = (cast(case["dh_n"]), cast(case["dc_n"])) if lstm else cast(case["dh_n"])
    dx, dh0, dweights = fastrnn.rnn_backward(saved, cast(case["dy"]), dh_n)
    out["dx"] = dx
    if lstm:
        out["dh0"], out["dc0"] = dh0
    else:
        out["dh0"] = dh0
    for n, v in zip(("dw_ih", "dw_hh", "db_ih", "db_hh"), dweights):
        out[n] = v
    return out, saved


def assert_close(name, got, ref, tol):
    if ref is None:
        assert got is None, f"{name}: expected None, got {type(got).__name__}"
        return
    assert got is not None, f"{name}: got None"
    assert type(got).__module__.split(".")[0] == "cupy", f"{name}: expected a cupy array, got {type(got)}"
    g = got.get().astype(np.float64)
    r = np.asarray(ref, dtype=np.float64)
    assert g.shape == r.shape, f"{name}: shape {g.shape}, expected {r.shape}"
    assert np.all(np.isfinite(g)), f"{name}: {np.count_nonzero(~np.isfinite(g))} non-finite values (unwritten, NaN-poisoned?)"
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    err = float(np.max(np.abs(g - r))) / max(scale, 1e-300) if r.size else 0.0
    assert err <= tol, f"{name}: max|got-ref|/max|ref| = {err:.3e} > {tol:.0e} (max|ref| = {scale:.3e})"


def _skip_unless_persistent_fits(mode, B, H, dtype):
    """The cases are sized for a 132-SM H100/H200; skip, saying why, on a device
    where the persistent kernels cannot hold this W_hh slice."""
    from fastrnn._backends import cupy_cuda
    rt = cupy_cuda._runtime()
    for which in ("fwd", "bwd"):
        ok, reason, *_ = cupy_cuda.persistent_plan(mode, B, H, np.dtype(dtype).itemsize, rt.sm_count,
                                                   rt.smem_optin, which, rt.cooperative)
        if not ok:
            pytest.skip(f"persistent {which} does not fit this device ({rt.sm_count} SMs): {reason}")


def check(case, dtype, reverse, path=None, training=True):
    """Run the cupy backend (path forced if given) and the float64 oracle; assert every output."""
    import cupy
    from fastrnn._backends import cupy_cuda
    if path == "persistent":
        _skip_unless_persistent_fits(case["mode"], case["shape"][1], case["shape"][3], dtype)
    cupy_cuda.set_path(path)
    got, saved = run_case(case, dtype, reverse, "cupy", cupy, training)
    ref, _ = run_case(case, np.float64, reverse, "numpy", np, training)
    if saved is not None and path is not None:
        assert saved.payload["path"] == path, f"forward ran {saved.payload['path']}, expected {path}"
    for name, r in ref.items():
        g = got[name]
        if g is not None:
            assert str(g.dtype) == str(np.dtype(dtype)), f"{name}: dtype {g.dtype}, expected {dtype}"
        assert_close(name, g, r, TOL[str(np.dtype(dtype))])
    return got


# ------------------------------------------------------------------ the tests

CASES = {
    # name: (T, B, I, H, lengths, reverse, h0)
    "T1_B1_H13": (1, 1, 4, 13, "none", False, True),
    "T7_B3_H13_rev_mixed": (7, 3, 5, 13, "mixed", True, True),
    "T7_B3_H37_mixed_noh0": (7, 3, 5, 37, "mixed", False, False),
    "T63_B3_H37_rev_mixed_noh0": (63, 3, 8, 37, "mixed", True, False),
    "T63_B1_H13": (63, 1, 3, 13, "none", False, True),
    "T5_B16_H9_rev_noh0": (5, 16, 3, 9, "none", True, False),
    "T9_B5_H263_mixed": (9, 5, 7, 263, "mixed", False, True),
    "T4_B16_H263_rev_mixed": (4, 16, 3, 263, "mixed", True, True),
}


@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(mode, dtype, path, case_name):
    T, B, I, H, lengths, reverse, h0 = CASES[case_name]
    check(make_case(mode, T, B, I, H, lengths, h0, seed=list(CASES).index(case_name)), dtype, reverse, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES)
def test_saturating_inputs(mode, path):
    """|x| ~ 30: sigmoid/tanh saturate, exp(-x) overflows to inf in float32; no NaN."""
    check(make_case(mode, 7, 3, 5, 13, "mixed", True, seed=5, scale=30.0), "float32", False, path)


@pytest.mark.parametrize("mode", MODES)
def test_no_bias(mode):
    got = check(make_case(mode, 6, 2, 3, 11, "mixed", True, seed=2, bias=False), "float64", True)
    assert got["db_ih"] is None and got["db_hh"] is None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", PATHS)
def test_inference_equals_training_forward(mode, path):
    import cupy
    from fastrnn._backends import cupy_cuda
    case = make_case(mode, 9, 4, 5, 21, "mixed", True, seed=3)
    cupy_cuda.set_path(path)
    a, _ = run_case(case, "float32", False, "cupy", cupy, training=True)
    b, _ = run_case(case, "float32", False, "cupy", cupy, training=False)
    for name in b:
        assert cupy.array_equal(a[name], b[name]), f"{name}: training=False differs from training=True"


@pytest.mark.parametrize("mode", ["gru", "lstm"])
@pytest.mark.parametrize("fwd_path,bwd_path", [("persistent", "general"), ("general", "persistent")])
def test_paths_share_saved_buffers(mode, fwd_path, bwd_path):
    """Either backward runs after either forward (the saved layout is common)."""
    import cupy
    from fastrnn._backends import cupy_cuda
    case = make_case(mode, 8, 3, 4, 19, "mixed", True, seed=4)
    lstm = spec(mode).has_cell
    cast = lambda a: cupy.asarray(a)  # noqa: E731  (float64)
    weights = tuple(cast(case[n]) for n in ("w_ih", "w_hh", "b_ih", "b_hh"))
    h0 = (cast(case["h0"]), cast(case["c0"])) if lstm else cast(case["h0"])
    cupy_cuda.set_path(fwd_path)
    y, hn, saved = fastrnn.rnn_forward(mode, cast(case["x"]), weights, h0, case["lengths"],
                                       training=True, backend="cupy")
    assert saved.payload["path"] == fwd_path
    cupy_cuda.set_path(bwd_path)
    dh_n = (cast(case["dh_n"]), cast(case["dc_n"])) if lstm else cast(case["dh_n"])
    dx, dh0, dw = fastrnn.rnn_backward(saved, cast(case["dy"]), dh_n)
    ref, _ = run_case(case, np.float64, False, "numpy", np)
    assert_close("y", y, ref["y"], 1e-10)
    assert_close("dx", dx, ref["dx"], 1e-10)
    assert_close("dh0", dh0[0] if lstm else dh0, ref["dh0"], 1e-10)
    assert_close("dw_hh", dw[1], ref["dw_hh"], 1e-10)
    assert_close("db_hh", dw[3], ref["db_hh"], 1e-10)


@pytest.mark.parametrize("mode", ["gru", "lstm"])
def test_persistent_large_shared_memory(mode):
    """H = 1024, B = 16, float32: about 200 KB of shared memory per block (opt-in limit)."""
    from fastrnn._backends import cupy_cuda
    rt = cupy_cuda._runtime()
    smem = cupy_cuda.persistent_smem(mode, 16, 1024, -(-1024 // rt.sm_count), 4, "fwd")
    if smem > rt.smem_optin:
        pytest.skip(f"this device's opt-in shared memory ({rt.smem_optin}) is below {smem}")
    check(make_case(mode, 3, 16, 16, 1024, "mixed", True, seed=6), "float32", False, "persistent")


def test_dispatch_rule():
    from fastrnn._backends import cupy_cuda
    be = cupy_cuda.BACKEND
    rt = cupy_cuda._runtime()
    # small batch, W_hh slice fits: persistent (on any device with >= 64 KB opt-in smem)
    assert be.paths_for("lstm", 8, 256, "float32") == ("persistent", "persistent")
    # B > 16: general
    assert be.paths_for("lstm", 64, 256, "float32") == ("general", "general")
    # W_hh far too large for shared memory: general
    assert be.paths_for("lstm", 4, 4096, "float32") == ("general", "general")
    # forcing persistent where it cannot run is an error that says why
    cupy_cuda.set_path("persistent")
    with pytest.raises(ValueError, match="B=17"):
        be.paths_for("gru", 17, 64, "float32")
    with pytest.raises(ValueError, match="shared memory"):
        be.paths_for("lstm", 4, 8 * rt.sm_count * 64, "float64")
    cupy_cuda.set_path(None)


def test_path_env_var(monkeypatch):
    import cupy
    case = make_case("gru", 3, 2, 3, 5, "none", True, seed=7)
    for p in PATHS:
        monkeypatch.setenv("FASTRNN_CUDA_PATH", p)
        _, saved = run_case(case, "float32", False, "cupy", cupy)
        assert saved.payload["path"] == p
    monkeypatch.setenv("FASTRNN_CUDA_PATH", "fastest")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_PATH"):
        run_case(case, "float32", False, "cupy", cupy)


def test_tf32_is_off():
    """The float32 tolerances assume full-precision GEMMs."""
    assert os.environ.get("CUPY_TF32", "0") in ("", "0"), "CUPY_TF32 is set: float32 GEMMs would use TF32"


def test_auto_selects_cupy_for_cupy_arrays():
    import cupy
    case = make_case("rnn_tanh", 2, 2, 3, 4, "none", False)
    x = cupy.asarray(case["x"])
    w = tuple(cupy.asarray(case[n]) for n in ("w_ih", "w_hh", "b_ih", "b_hh"))
    y, hn, saved = fastrnn.rnn_forward("rnn_tanh", x, w, training=True)
    assert saved.backend.name == "cupy"
    assert isinstance(y, cupy.ndarray) and isinstance(hn, cupy.ndarray)
