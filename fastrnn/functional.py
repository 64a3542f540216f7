"""The functional contract: rnn_forward / rnn_backward.

Validate everything, normalise layouts, then hand to a backend.  Nothing that
reaches a kernel is unchecked (Numba does not bounds-check).

Shapes (T time, B batch, I input, H hidden, G gates: 1 rnn, 3 gru, 4 lstm):
    x        (T, B, I)          time-major
    w_ih     (G*H, I)           PyTorch's weight_ih_l0 layout and gate order
    w_hh     (G*H, H)           PyTorch's weight_hh_l0
    b_ih     (G*H,) or None     None means no bias (torch's bias=False)
    b_hh     (G*H,) or None
    h0       (B, H), for lstm the pair (h0, c0); None means zeros
    lengths  (B,) ints in [0, T], or None for all T
    y        (T, B, H)          zero at t >= lengths[b]
"""
from __future__ import annotations

import numbers

import numpy as np

from . import dispatch
from .cells import spec

__all__ = ["rnn_forward", "rnn_backward", "Saved"]

_FLOAT_DTYPES = (np.dtype("float32"), np.dtype("float64"))


class Saved:
    """What rnn_backward needs from a training-mode rnn_forward.  Opaque:
    its ``payload`` belongs to the backend that made it."""

    __slots__ = ("mode", "backend", "shape", "dtype", "xp_name", "has_bias", "payload")

    def __init__(self, mode, backend, shape, dtype, xp_name, has_bias, payload):
        self.mode = mode
        self.backend = backend
        self.shape = shape          # (T, B, I, H)
        self.dtype = dtype
        self.xp_name = xp_name
        self.has_bias = has_bias    # (b_ih given, b_hh given)
        self.payload = payload

    def __repr__(self) -> str:
        T, B, I, H = self.shape
        return (f"Saved(mode={self.mode!r}, backend={self.backend.name!r}, "
                f"T={T}, B={B}, I={I}, H={H}, dtype={self.dtype})")


# ---------------------------------------------------------------- helpers

def _xp_of(a):
    """(module, name) of the array library that owns ``a``."""
    if type(a) is np.ndarray:
        return np, "numpy"
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy":
        import cupy
        return cupy, "cupy"
    return np, "numpy"


def _as_array(name, a, xp, xp_name):
    if type(a) is np.ndarray and xp_name == "numpy":
        return a
    if a is None:
        raise TypeError(f"{name}: expected an array, got None")
    _, a_name = _xp_of(a)
    if a_name != xp_name:
        raise TypeError(f"{name}: expected a {xp_name} array like x, got a {a_name} array ({type(a).__name__})")
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        try:
            a = np.asarray(a)
        except Exception as exc:
            raise TypeError(f"{name}: expected an array, got {type(a).__name__}") from exc
    return a


def _contiguous(a, xp):
    """a, or a C-contiguous copy of it.  A NumPy copy big enough to come
    from fresh pages (a batch-first x or dy seen time-major, say) goes into
    the Numba backend's buffer cache (_backends/bufpool.py), as the kernels'
    own arrays do: the copy's page faults cost more than the copy.  Where
    torch is imported, torch copies it (_torch_copy)."""
    if a.flags.c_contiguous:
        return a
    if xp is np:
        from ._backends import bufpool
        if a.nbytes >= bufpool.MIN_BYTES:
            out = bufpool.CACHE.empty(a.shape, a.dtype)
            if not _torch_copy(out, a):
                np.copyto(out, a)
            return out
    return xp.ascontiguousarray(a)


def _torch_copy(out, a):
    """out[...] = a by torch's copy_ on the same memory where torch is
    imported: True when done, False where it was not (no torch, a forked
    child, or torch refused the array: negative strides, say).  torch's copy
    runs on all of its intra-op threads; NumPy's on this one.  Inside a
    call the source is cold (x and dy seen time-major, 3 MB at LSTM S3:
    0.72 ms by NumPy there, against 0.22 ms for the same copies in a loop
    of their own, with torch's idle workers spinning or asleep alike).
    fastrnn.torch fwd+bwd (batch_first), torch at 2 threads, each call
    right after a torch.nn one, the two copies swapping places every
    repetition, medians of 15-21: LSTM S3 1.00-1.06x, GRU S3 1.03x, LSTM
    S2 0.98-0.99x (x and dy 0.4 MB each there); torch at one thread level.
    Not in a forked child, where torch's OpenMP team may not survive the
    fork (_backends/torch_team.torch_module)."""
    from ._backends import torch_team
    torch = torch_team.torch_module()
    if torch is None:
        return False
    try:
        torch.from_numpy(out).copy_(torch.from_numpy(a))
    except Exception:       # an array torch does not take
        return False
    return True


def _batch_major(a):
    """Whether a is a NumPy (T, B, n) array that is not C-contiguous but
    whose a.transpose(1, 0, 2) is: a batch-major (B, T, n) array seen
    time-major, as a batch_first caller's x and dy are.  The Numba backend
    takes those as they lie (ACCEPTS_BATCH_MAJOR on the backend): its
    loops by rows read each step's rows from them, so no transposed copy
    is made (one whose source has left the caches costs 0.3-0.5 ms a MB
    at LSTM S3)."""
    return (type(a) is np.ndarray and a.ndim == 3 and not a.flags.c_contiguous
            and a.transpose(1, 0, 2).flags.c_contiguous and a.flags.aligned)


def _check(name, a, shape, dtype, xp, xp_name, batch_major=False):
    """a as a C-contiguous array of this shape (a tuple) and dtype, or the
    error that names it.  batch_major: a batch-major array (_batch_major)
    is returned as it is."""
    if type(a) is not np.ndarray or xp_name != "numpy":
        a = _as_array(name, a, xp, xp_name)
    if a.shape != shape and tuple(a.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(a.shape)}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of x), got {a.dtype}")
    if batch_major and _batch_major(a):
        return a
    return _contiguous(a, xp)


def _lengths(lengths, T, B):
    if lengths is None:
        return None
    mod = type(lengths).__module__.split(".")[0]
    if mod == "cupy":
        lengths = lengths.get()
    elif mod == "torch":
        lengths = lengths.detach().cpu().numpy()
    try:
        arr = np.asarray(lengths)
    except Exception as exc:
        raise TypeError(f"lengths: expected a (B,) integer array, got {type(lengths).__name__}") from exc
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer)
                                     or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected shape ({B},) (one per batch row), got {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise TypeError("lengths: expected whole numbers, got non-integer values")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > T):
        bad = int(arr[(arr < 0) | (arr > T)][0])
        raise ValueError(f"lengths: expected every value in [0, T={T}], got {bad}")
    return np.ascontiguousarray(arr)


def _state(name, s, B, H, dtype, xp, xp_name, has_cell):
    """Normalise an (optional) state argument to (h, c-or-None) arrays."""
    if has_cell:
        if s is None:
            return xp.zeros((B, H), dtype), xp.zeros((B, H), dtype)
        if not isinstance(s, (tuple, list)) or len(s) != 2:
            raise TypeError(f"{name}: for lstm expected a pair (h, c) of (B, H) arrays or None, "
                            f"got {type(s).__name__}")
        h, c = s
        h = xp.zeros((B, H), dtype) if h is None else _check(f"{name}[0]", h, (B, H), dtype, xp, xp_name)
        c = xp.zeros((B, H), dtype) if c is None else _check(f"{name}[1]", c, (B, H), dtype, xp, xp_name)
        return h, c
    if s is None:
        return xp.zeros((B, H), dtype), None
    if isinstance(s, (tuple, list)):
        raise TypeError(f"{name}: expected one (B, H) array for this mode (only lstm takes a pair), "
                        f"got a {type(s).__name__}")
    return _check(name, s, (B, H), dtype, xp, xp_name), None


# ---------------------------------------------------------------- public API

def rnn_forward(mode, x, weights, h0=None, lengths=None, *, reverse=False, training=False,
                backend=None):
    """Run a whole sequence through one recurrent layer in one compiled call.

    Parameters
    ----------
    mode : "rnn_tanh" | "rnn_relu" | "gru" | "lstm"
    x : (T, B, I) float32 or float64 array (NumPy, or CuPy for the cupy backend)
    weights : (w_ih, w_hh, b_ih, b_hh); shapes (G*H, I), (G*H, H), (G*H,), (G*H,);
        either bias may be None (no bias)
    h0 : (B, H) array, for lstm a pair (h0, c0); None means zeros
    lengths : (B,) ints in [0, T] or None.  Steps t >= lengths[b] leave the
        state alone and give y = 0 (packed-sequence semantics)
    reverse : run each sequence from its own last valid step back to step 0;
        y[t] is still the output at position t
    training : keep what rnn_backward needs (returned as ``saved``)
    backend : "numba" | "numpy" | "cupy" | None (auto; $FASTRNN_BACKEND overrides)

    Returns
    -------
    y : (T, B, H)
    h_n : (B, H), for lstm the pair (h_n, c_n): each sequence's state after its last valid step
    saved : Saved or None
    """
    sp = spec(mode)
    if x is None:
        raise TypeError("x: expected a (T, B, I) float array, got None")
    xp, xp_name = _xp_of(x)
    if not hasattr(x, "shape"):
        try:
            x = np.asarray(x)
        except Exception as exc:
            raise TypeError(f"x: expected a (T, B, I) float array, got {type(x).__name__}") from exc
    if x.ndim != 3:
        raise ValueError(f"x: expected 3 dimensions (T, B, I), got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x: expected dtype float32 or float64, got {x.dtype}")
    T, B, I = map(int, x.shape)
    if min(T, B, I) < 1:
        raise ValueError(f"x: expected T, B, I >= 1, got shape {tuple(x.shape)}")
    dtype = x.dtype

    if not isinstance(weights, (tuple, list)) or len(weights) != 4:
        raise TypeError("weights: expected a tuple (w_ih, w_hh, b_ih, b_hh), got "
                        f"{type(weights).__name__}" + (f" of length {len(weights)}"
                                                       if isinstance(weights, (tuple, list)) else ""))
    w_ih, w_hh, b_ih, b_hh = weights
    w_hh = _as_array("weights[1] (w_hh)", w_hh, xp, xp_name)
    if w_hh.ndim != 2:
        raise ValueError(f"weights[1] (w_hh): expected shape (G*H, H), got {tuple(w_hh.shape)}")
    H = int(w_hh.shape[1])
    GH = sp.gates * H
    if H < 1 or w_hh.shape[0] != GH:
        raise ValueError(f"weights[1] (w_hh): expected shape ({sp.gates}*H, H) for {mode} "
                         f"(G={sp.gates}), got {tuple(w_hh.shape)}")
    w_hh = _check("weights[1] (w_hh)", w_hh, (GH, H), dtype, xp, xp_name)
    w_ih = _check("weights[0] (w_ih)", w_ih, (GH, I), dtype, xp, xp_name)
    has_bias = (b_ih is not None, b_hh is not None)
    b_ih = xp.zeros(GH, dtype) if b_ih is None else _check("weights[2] (b_ih)", b_ih, (GH,), dtype, xp, xp_name)
    b_hh = xp.zeros(GH, dtype) if b_hh is None else _check("weights[3] (b_hh)", b_hh, (GH,), dtype, xp, xp_name)
    h0, c0 = _state("h0", h0, B, H, dtype, xp, xp_name, sp.has_cell)
    lengths = _lengths(lengths, T, B)
    if not isinstance(reverse, (bool, np.bool_)):
        raise TypeError(f"reverse: expected a bool, got {type(reverse).__name__}")
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training: expected a bool, got {type(training).__name__}")

    return _forward_checked(mode, x, w_ih, w_hh, b_ih, b_hh, has_bias, h0, c0, lengths, bool(reverse),
                            bool(training), backend, xp, xp_name)


def _forward_checked(mode, x, w_ih, w_hh, b_ih, b_hh, has_bias, h0, c0, lengths, reverse, training,
                     backend, xp=np, xp_name="numpy"):
    """rnn_forward after its checks: every argument already has the shape
    and dtype rnn_forward's validation guarantees (w_ih, w_hh, the biases
    (zeros where has_bias says none was given), h0 and, for lstm, c0
    C-contiguous; lengths None or an int64 (B,) array in [0, T]; x (T, B, I)
    with T, B, I >= 1, any strides).  fastrnn.torch calls it directly for
    weights it checked once per parameter set (its per-call cost at small
    sizes is mostly Python); nothing else may."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    dtype = x.dtype
    be = dispatch.select(backend, xp_name, mode, dtype)
    if not (getattr(be, "ACCEPTS_BATCH_MAJOR", False) and _batch_major(x)):
        x = _contiguous(x, xp)
    y, h_n, c_n, payload = be.forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training)
    saved = None
    if training:
        saved = Saved(mode, be, (T, B, I, H), dtype, xp_name, has_bias, payload)
    return y, (h_n if c0 is None else (h_n, c_n)), saved


def rnn_backward(saved, dy, dh_n=None):
    """Backpropagation through time for a training-mode rnn_forward.

    Parameters
    ----------
    saved : the Saved returned by rnn_forward(..., training=True)
    dy : (T, B, H) gradient of the loss with respect to y, or None (zero)
    dh_n : (B, H) gradient with respect to h_n, for lstm the pair (dh_n, dc_n)
        (either may be None); None means zero

    Returns
    -------
    dx : (T, B, I); where x was a batch-major view (a batch_first caller's,
        x.transpose(1, 0, 2) C-contiguous), possibly one too, in x's layout
    dh0 : (B, H), for lstm the pair (dh0, dc0)
    dweights : (dw_ih, dw_hh, db_ih, db_hh); a bias gradient is None when
        that bias was None in the forward call
    """
    if not isinstance(saved, Saved):
        if saved is None:
            raise ValueError("saved: got None; call rnn_forward(..., training=True) to get it")
        raise TypeError(f"saved: expected the Saved from rnn_forward(training=True), got {type(saved).__name__}")
    sp = spec(saved.mode)
    T, B, I, H = saved.shape
    if saved.xp_name == "cupy":
        import cupy as xp
    else:
        xp = np
    if dy is None:
        dy = xp.zeros((T, B, H), saved.dtype)
    else:
        dy = _check("dy", dy, (T, B, H), saved.dtype, xp, saved.xp_name,
                    getattr(saved.backend, "ACCEPTS_BATCH_MAJOR", False))
    dh, dc = _state("dh_n", dh_n, B, H, saved.dtype, xp, saved.xp_name, sp.has_cell)
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = saved.backend.backward(saved.payload, dy, dh, dc)
    dweights = (dw_ih, dw_hh, db_ih if saved.has_bias[0] else None, db_hh if saved.has_bias[1] else None)
    return dx, ((dh0, dc0) if sp.has_cell else dh0), dweights
