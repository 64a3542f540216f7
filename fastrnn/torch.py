"""Drop-in ``torch.nn`` recurrent modules over fastrnn kernels.

    import fastrnn.torch as frt
    lstm = frt.LSTM(128, 256, num_layers=2, batch_first=True)   # like torch.nn.LSTM
    lstm = frt.from_torch(existing_nn_lstm)                      # same weights
    frt.swap_rnns(model)                                         # in place, every child

``RNN``, ``GRU`` and ``LSTM`` subclass ``torch.nn.RNN/GRU/LSTM``: the same
constructor, parameter names and shapes (``weight_ih_l{k}{_reverse}`` ...),
initialisation, ``state_dict``, ``repr`` and forward signature (tensor or
``PackedSequence`` input, batched or unbatched, optional initial state), so
``isinstance(m, torch.nn.LSTM)`` still holds and state_dicts move both ways
with ``strict=True``.  Only ``forward`` differs: each layer-direction runs as
one ``fastrnn.rnn_forward`` call (a whole sequence in one compiled kernel)
inside a ``torch.autograd.Function`` whose backward is one
``fastrnn.rnn_backward`` call.  Layers, directions and inter-layer dropout
are composed here in Python with ordinary torch ops.

Arrays cross without copies where the layout allows: CPU tensors through
``Tensor.numpy()`` / ``torch.from_numpy`` (shared memory), CUDA tensors
through DLPack to CuPy on torch's current stream.  The backend is not
hard-coded: ``backend=None`` lets fastrnn pick (``$FASTRNN_BACKEND``, else
numba for CPU tensors, cupy for CUDA tensors).

Shapes: T time, B batch, I input, H hidden, D directions (1 or 2), L layers.
Gate orders are PyTorch's (see fastrnn.cells).

torch is optional for fastrnn: ``import fastrnn`` never imports this module.
"""
from __future__ import annotations

import warnings
from operator import is_ as _is

import torch
import torch.nn.functional as F
import torch.nn.utils.parametrize  # noqa: F401  (from_torch checks for parametrizations)
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import numpy as np

from . import dispatch as _dispatch
from .cells import spec
from .functional import _forward_checked, _lengths, rnn_backward, rnn_forward

__all__ = ["RNN", "GRU", "LSTM", "from_torch", "swap_rnns", "RNNFunction"]

# torch.nn's RNNBase.mode -> fastrnn mode
_MODES = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "GRU": "gru", "LSTM": "lstm"}
_DTYPES = (torch.float32, torch.float64)


# ------------------------------------------------------------ array bridges

def _cupy_for(t):
    """Import CuPy for a CUDA tensor, or raise an error that says what is missing."""
    global _CUPY
    if _CUPY is not None:
        return _CUPY
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        raise RuntimeError(
            f"fastrnn.torch: got a CUDA tensor (device {t.device}), which runs on the 'cupy' "
            f"backend, but CuPy cannot be imported ({type(exc).__name__}: {exc}). Install it "
            "with `pip install fastrnn[cuda]`, or move the module and inputs to the CPU."
        ) from exc
    info = _dispatch.backends().get("cupy")
    if info is None or not info.available:
        why = info.reason if info is not None else "no 'cupy' backend is registered"
        raise RuntimeError(
            f"fastrnn.torch: got a CUDA tensor (device {t.device}), but fastrnn's 'cupy' "
            f"backend is unavailable: {why}. Move the module and inputs to the CPU."
        )
    _CUPY = cupy
    return cupy


_CUPY = None
_STREAMS = {}   # (device index, cudaStream_t) -> CuPy's wrapper of that stream


class _StreamHandle:
    """A raw cudaStream_t behind the CUDA stream protocol (``__cuda_stream__``)."""

    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr

    def __cuda_stream__(self):
        return (0, self.ptr)


def _cupy_stream(cp, index, ptr):
    """CuPy's view of torch's stream ``ptr`` on device ``index`` (no ownership).
    CuPy 14 deprecates ExternalStream for Stream.from_external; older CuPy
    has only the former."""
    from_external = getattr(cp.cuda.Stream, "from_external", None)
    if from_external is not None:
        with cp.cuda.Device(index):
            stream = from_external(_StreamHandle(ptr))
        if stream.ptr == ptr:
            return stream
    return cp.cuda.ExternalStream(ptr, index)


class _CudaScope:
    """Run CuPy work on torch's current stream and device for tensor ``t``."""

    __slots__ = ("cp", "stream", "device")

    def __init__(self, t):
        self.cp = cp = _cupy_for(t)
        index = t.device.index
        self.device = cp.cuda.Device(index)
        ptr = torch.cuda.current_stream(t.device).cuda_stream
        stream = _STREAMS.get((index, ptr))
        if stream is None:
            if len(_STREAMS) >= 64:     # streams come and go in some programs
                _STREAMS.clear()
            stream = _STREAMS[(index, ptr)] = _cupy_stream(cp, index, ptr)
        self.stream = stream

    def __enter__(self):
        self.device.__enter__()
        self.stream.__enter__()
        return self

    def __exit__(self, *exc):
        self.stream.__exit__(*exc)
        self.device.__exit__(*exc)

    def arr(self, t):
        return None if t is None else self.cp.from_dlpack(t.detach())

    @staticmethod
    def ten(a):
        return None if a is None else torch.from_dlpack(a)


def _arr(t):
    # CPU, shares memory (strided views too: fastrnn copies only if it must).
    # Called where grad mode is off or t needs no grad, so no detach() needed.
    return None if t is None else t.numpy()


def _bh(a):
    """(B, H) view of a (B, H) or (1, B, H) state array."""
    return a if a is None or a.ndim == 2 else a.reshape(a.shape[-2:])


# ------------------------------------------------------------ autograd

# Whether the backward running now keeps its graph (retain_graph=True).  The
# backend's Saved (the activations) is dropped after a backward that does not,
# as torch drops its saved tensors then; without this private query (older
# torch) it lives as long as the graph.
try:
    _keep_graph = torch._C._autograd._get_current_graph_task_keep_graph
except AttributeError:  # pragma: no cover
    _keep_graph = lambda: True  # noqa: E731


# cfg's optional sixth entry: which ends of the call are batch-major
BF_IN, BF_OUT = 1, 2
# Whether the modules hand batch_first CPU tensors to the Function as they
# are (BF_IN/BF_OUT) rather than transposing them outside it, as they do on
# CUDA.  Always on; the tests turn it off to run the CUDA form on the CPU.
_BATCH_MAJOR_INSIDE = True


class _EmptyBatch:
    """What an empty batch's forward saves (B = 0): nothing to compute, and
    its backward gives zero gradients, as torch.nn's RNNs do."""

    __slots__ = ("mode",)

    def __init__(self, mode):
        self.mode = mode


def _run_empty(mode, x, bf, w_hh):
    """(saved, y, h_n[, c_n]) for a batch of zero sequences (T >= 1)."""
    T = x.shape[1] if bf & BF_IN else x.shape[0]
    H = w_hh.shape[1]
    y = x.new_zeros((0, T, H) if bf & BF_OUT else (T, 0, H))
    h = x.new_zeros((1, 0, H))
    return (_EmptyBatch(mode), y, h) + ((x.new_zeros((1, 0, H)),) if mode == "lstm" else ())


def _run(cfg, x, h0, c0, w_ih, w_hh, b_ih, b_hh, training):
    """One rnn_forward call on tensors; returns (saved, y, h_n[, c_n]) with
    states (1, B, H), y (T, B, H) or, with BF_OUT, (B, T, H) (a view)."""
    mode, reverse, lengths, backend, warr = cfg[:5]
    bf = cfg[5] if len(cfg) > 5 else 0
    if not x.numel() and x.shape[0 if bf & BF_IN else 1] == 0 and x.shape[1 if bf & BF_IN else 0] > 0:
        return _run_empty(mode, x, bf, w_hh)
    if warr is None and x.is_cuda:
        if bf:
            raise ValueError("RNNFunction: cfg's BF_IN/BF_OUT entry is for CPU tensors only "
                             f"(got a tensor on {x.device}); transpose CUDA tensors outside")
        with _CudaScope(x) as s:
            a = s.arr
            hx = None if h0 is None else (_bh(a(h0)) if c0 is None else (_bh(a(h0)), _bh(a(c0))))
            y, hn, saved = rnn_forward(mode, a(x), (a(w_ih), a(w_hh), a(b_ih), a(b_hh)), hx, lengths,
                                       reverse=reverse, training=training, backend=backend)
            ten = s.ten
    else:
        xa = x.numpy()
        if bf & BF_IN:
            xa = xa.transpose(1, 0, 2)          # (B, T, I) -> (T, B, I), a view
        if warr is not None and xa.size:
            # weights the module checked once (_FastRNNMixin._plan); x and
            # the states it checks each call: skip rnn_forward's checks
            w_ih, w_hh, b_ih, b_hh, has_bias = warr
            B, H = xa.shape[1], w_hh.shape[1]
            h = np.zeros((B, H), xa.dtype) if h0 is None else _bh(h0.numpy())
            c = None
            if mode == "lstm":
                c = np.zeros((B, H), xa.dtype) if c0 is None else _bh(c0.numpy())
            if lengths is not None:
                lengths = _lengths(lengths, xa.shape[0], B)
            y, hn, saved = _forward_checked(mode, xa, w_ih, w_hh, b_ih, b_hh, has_bias, h, c, lengths,
                                            reverse, training, backend)
        else:
            hx = None if h0 is None else (_bh(h0.numpy()) if c0 is None else (_bh(h0.numpy()), _bh(c0.numpy())))
            y, hn, saved = rnn_forward(mode, xa, (_arr(w_ih), _arr(w_hh), _arr(b_ih), _arr(b_hh)), hx, lengths,
                                       reverse=reverse, training=training, backend=backend)
        if bf & BF_OUT:
            y = y.transpose(1, 0, 2)            # (T, B, H) -> (B, T, H), a view
        ten = torch.from_numpy
    if mode == "lstm":
        h, c = hn
        return saved, ten(y), ten(h[None]), ten(c[None])      # (1, B, H) views
    return saved, ten(y), ten(hn[None])


class RNNFunction(torch.autograd.Function):
    """One recurrent layer, one direction, whole sequence.

    ``RNNFunction.apply(cfg, x, h0, c0, w_ih, w_hh, b_ih, b_hh)`` with
    ``cfg = (mode, reverse, lengths, backend, None)``:

        x        (T, B, I) time-major, float32 or float64 (any strides)
        h0, c0   (B, H) or (1, B, H), or None (zeros); c0 only for lstm
        w_ih     (G*H, I), w_hh (G*H, H), b_ih / b_hh (G*H,) or None
        lengths  None or a (B,) int64 NumPy array (packed-sequence semantics)

    (cfg's fifth entry may instead be what the modules cache per parameter
    set: the CPU weights as checked NumPy arrays, (w_ih, w_hh, b_ih, b_hh,
    has_bias), see _FastRNNMixin._plan.  An optional sixth entry, bits
    BF_IN and BF_OUT, makes x (B, T, I) and y (B, T, H) batch-major; CPU
    tensors only.)

    Returns ``(y, h_n)`` or, for lstm, ``(y, h_n, c_n)``; y is (T, B, H),
    h_n and c_n are (1, B, H).  The forward is
    ``fastrnn.rnn_forward(..., training=True)``, the backward
    ``fastrnn.rnn_backward``; double backward is not supported.
    """

    @staticmethod
    def forward(ctx, cfg, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        out = _run(cfg, x, h0, c0, w_ih, w_hh, b_ih, b_hh, True)
        ctx.set_materialize_grads(False)   # unused outputs arrive as None = zero
        # The backends keep x and the weights by reference (shared memory, no
        # copies), so an in-place edit of one between forward and backward
        # would change the gradients silently: their version counters are
        # recorded here and compared in backward, the check torch.nn's RNNs
        # get from save_for_backward (which costs ~3 us more a call).
        # (States and outputs the backends copy.)
        ctx.fr = (out[0], cfg[4] is None and x.is_cuda, None if h0 is None else h0.shape,
                  (x, w_ih, w_hh), (x._version, w_ih._version, w_hh._version),
                  cfg[5] if len(cfg) > 5 else 0)
        return out[1:]

    @staticmethod
    def backward(ctx, gy, gh, gc=None):
        # create_graph=True runs backward with grad mode on: through
        # once_differentiable then, so that a double backward raises (grad
        # mode is off otherwise, and its no_grad block would cost ~2 us)
        if torch.is_grad_enabled():
            return _backward_once(ctx, gy, gh, gc)
        return _backward(ctx, gy, gh, gc)


_INPUT_NAMES = ("the input x", "weight_ih", "weight_hh")


def _backward(ctx, gy, gh, gc):
    saved, cuda, shp, tensors, versions, bf = ctx.fr
    if saved is None:
        raise RuntimeError(
            "Trying to backward through the graph a second time (or directly access saved tensors "
            "after they have already been freed). Saved intermediate values of the graph are freed "
            "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need "
            "to backward through the graph a second time or if you need to access saved tensors "
            "after calling backward.")
    for name, t, v in zip(_INPUT_NAMES, tensors, versions):
        if t._version != v:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an "
                f"inplace operation: {name} of fastrnn's {saved.mode} layer, [{t.type()} "
                f"{list(t.shape)}], is at version {t._version}; expected version {v} instead.")
    if not _keep_graph():              # as torch frees saved tensors then
        ctx.fr = (None, cuda, shp, (), (), bf)
    lstm = saved.mode == "lstm"
    if type(saved) is _EmptyBatch:
        return _empty_grads(ctx, tensors, shp, lstm)
    if cuda:
        with _CudaScope(gy if gy is not None else gh if gh is not None else gc) as s:
            # DLPack import wants plain strides; grads are often expanded views
            a = lambda g: None if g is None else _bh(s.arr(g.contiguous()))  # noqa: E731
            dx, dh0, dw = rnn_backward(saved, None if gy is None else s.arr(gy.contiguous()),
                                       (a(gh), a(gc)) if lstm else a(gh))
            ten = s.ten
    else:
        if gy is not None:
            gy = gy.numpy()
            if bf & BF_OUT:
                gy = gy.transpose(1, 0, 2)      # (B, T, H) -> (T, B, H), a view
        dx, dh0, dw = rnn_backward(saved, gy,
                                   ((None if gh is None else _bh(gh.numpy())),
                                    (None if gc is None else _bh(gc.numpy()))) if lstm
                                   else (None if gh is None else _bh(gh.numpy())))
        ten = torch.from_numpy
    need = ctx.needs_input_grad
    if bf & BF_IN and dx is not None:
        dx = dx.transpose(1, 0, 2)              # (T, B, I) -> (B, T, I), a view
    if lstm:
        dh0, dc0 = dh0
    else:
        dc0 = None
    return (None,
            ten(dx) if need[1] else None,
            ten(dh0.reshape(shp)) if need[2] else None,
            ten(dc0.reshape(shp)) if need[3] else None,
            ten(dw[0]) if need[4] else None,
            ten(dw[1]) if need[5] else None,
            ten(dw[2]) if need[6] else None,
            ten(dw[3]) if need[7] else None)


def _empty_grads(ctx, tensors, shp, lstm):
    """The gradients of an empty batch's layer: zeros (torch.nn gives zero
    weight gradients, not None, for B = 0)."""
    x, w_ih, w_hh = tensors
    need = ctx.needs_input_grad
    z = lambda t, want: t.new_zeros(t.shape) if want else None  # noqa: E731
    gb = lambda want: w_hh.new_zeros(w_hh.shape[0]) if want else None  # noqa: E731
    hz = lambda want: x.new_zeros(shp) if want and shp is not None else None  # noqa: E731
    return (None, z(x, need[1]), hz(need[2]), hz(need[3]) if lstm else None,
            z(w_ih, need[4]), z(w_hh, need[5]), gb(need[6]), gb(need[7]))


_backward_once = once_differentiable(_backward)


# Function.apply's Python layer mostly unwraps functorch wrappers; when no
# functorch transform is active, the C-level apply underneath does the same
# job ~8 us faster per call (a third of the wrapper's overhead at tiny sizes).
try:
    _c_apply = torch._C._FunctionBase.__dict__["apply"].__get__(None, RNNFunction)
    _functorch_active = torch._C._are_functorch_transforms_active
except Exception:  # pragma: no cover - a torch without them
    _c_apply = None



def _layer(grad, cfg, x, h0, c0, w):
    """One layer-direction: through the Function where a graph is needed
    (the C-level apply unless a functorch transform is active), else the
    kernels alone.  Returns (y, h_n[, c_n])."""
    if not grad:
        return _run(cfg, x, h0, c0, *w, False)[1:]
    if _c_apply is None or _functorch_active():
        return RNNFunction.apply(cfg, x, h0, c0, *w)
    return _c_apply(cfg, x, h0, c0, *w)


# ------------------------------------------------------------ modules

class _FastRNNMixin:
    """The forward shared by RNN, GRU and LSTM (mixed in before the torch.nn class)."""

    def _fastrnn_init(self, backend):
        if getattr(self, "proj_size", 0):
            raise NotImplementedError(
                f"fastrnn.torch.LSTM: proj_size={self.proj_size} (LSTM with projections) is not "
                "implemented by fastrnn's kernels; use proj_size=0, or torch.nn.LSTM for this layer"
            )
        self.backend = backend
        self._fr_mode = _MODES[self.mode]
        self._fr_plan = None

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend is None else f"{s}, backend={self.backend!r}"

    def _weights(self):
        """self._flat_weights, refreshed if a parameter was replaced behind
        RNNBase.__setattr__'s back (torch.func.functional_call, parametrizations)."""
        ws = self._flat_weights
        names = self._flat_weights_names
        # all(...) over C iterators: a third of the cost of a Python loop
        if all(map(_is, map(self._parameters.get, names), ws)):
            return ws
        return [getattr(self, n) for n in names]

    def _plan(self, weights):
        """Per layer-direction (reverse, arrays), cached while the parameters
        keep their memory and shapes (in-place optimizer updates are seen
        through the views; .data assignment, .to(), functional_call with new
        tensors give new memory: rebuilt).  arrays: on the CPU, NumPy views
        of the four weights checked here once, as rnn_forward would check
        them each call (shape, dtype, C order), with zeros for absent biases
        and the has_bias pair; None on CUDA, or where a check fails (the call
        then goes through rnn_forward, which raises the error that names
        it).  Only memory is cached: the tensors autograd sees are taken
        fresh each call."""
        key = [(w.data_ptr(), w.shape) for w in weights]
        c = self._fr_plan
        if c is not None and c[0] == key:
            return c[1]
        k = 4 if self.bias else 2
        cpu = not weights[0].is_cuda
        G = spec(self._fr_mode).gates
        H, D = self.hidden_size, 2 if self.bidirectional else 1
        plan = []
        dt = None
        for j in range(len(weights) // k):
            w = list(weights[j * k:(j + 1) * k]) + [None] * (4 - k)
            arrs = None
            if cpu:
                a = [None if t is None else t.detach().numpy() for t in w]
                I = self.input_size if j < D else D * H
                shapes = ((G * H, I), (G * H, H), (G * H,), (G * H,))
                dt = a[0].dtype if dt is None else dt      # every layer in layer 0's dtype (the input's)
                if dt in (np.float32, np.float64) and all(
                        v is None or (v.shape == shp and v.dtype == dt and v.flags.c_contiguous)
                        for v, shp in zip(a, shapes)):
                    has_bias = (a[2] is not None, a[3] is not None)
                    arrs = (a[0], a[1], *(np.zeros(G * H, dt) if v is None else v for v in a[2:]), has_bias)
            plan.append((j % 2 == 1 and self.bidirectional, arrs))
        self.__dict__["_fr_plan"] = (key, plan)
        return plan

    def __getstate__(self):
        state = super().__getstate__()
        state["_fr_plan"] = None    # views of this process's memory
        return state

    def _fastrnn_forward(self, input, hx):
        weights = self._weights()
        w0 = weights[0]
        mode = self._fr_mode
        lstm = mode == "lstm"
        plan = None
        # The common call: a batched CPU tensor (T, B >= 1), no initial
        # state, one layer-direction whose weights passed _plan's checks.
        # It goes straight to the Function, without the general path's
        # bookkeeping for layers, directions, states and packing (7-8 us
        # of a 39 us forward at a tiny size, kernel stubbed out).
        if (hx is None and type(input) is torch.Tensor and input.dim() == 3 and input.dtype is w0.dtype
                and input.dtype in _DTYPES and not input.is_cuda and input.shape[2] == self.input_size
                and input.numel() and (_BATCH_MAJOR_INSIDE or not self.batch_first)):
            plan = self._plan(weights)
            arrs = plan[0][1]
            if len(plan) == 1 and arrs is not None:
                cfg = (mode, False, None, self.backend, arrs, (BF_IN | BF_OUT) if self.batch_first else 0)
                w = weights if len(weights) == 4 else (w0, weights[1], None, None)
                grad = torch.is_grad_enabled() and (input.requires_grad or w0.requires_grad
                                                    or any(t.requires_grad for t in weights))
                out = _layer(grad, cfg, input, None, None, w)
                return out[0], ((out[1], out[2]) if lstm else out[1])

        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if data.dim() != 2:
                raise RuntimeError(f"input must have 2 dimensions, got {data.dim()}")
            # (T, B, I) in the packed (length-sorted) batch order, lengths (B,) int64
            x, lengths_t = pad_packed_sequence(PackedSequence(data, batch_sizes))
            lengths = lengths_t.numpy()
            batched = True
            bf = False
        else:
            nd = input.dim()
            batched = nd == 3
            # batch_first input goes to layer 0's Function as it is, and
            # a single layer-direction's output comes back batch-major: the
            # Function transposes NumPy views inside (BF_IN, BF_OUT), where
            # x.transpose(0, 1) before and after it are two more autograd
            # nodes (measured, tiny LSTM fwd+bwd: +37 us of 322).  CPU only:
            # CUDA keeps the transposes outside, the form run on the GPUs
            bf = batched and self.batch_first and _BATCH_MAJOR_INSIDE and not input.is_cuda
            if batched:
                # (B, T, I) as it is if bf, else time-major (T, B, I), a view
                x = input if bf or not self.batch_first else input.transpose(0, 1)
            elif nd == 2:
                x = input.unsqueeze(1)                                      # (T, 1, I)
            else:
                raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got {nd}D instead")
            lengths = sorted_indices = None
        dtype = x.dtype
        if (dtype is not w0.dtype or dtype not in _DTYPES or x.is_cuda is not w0.is_cuda
                or (x.is_cuda and x.get_device() != w0.get_device())):
            self._bad_input(x, w0)
        B, I = (x.shape[0], x.shape[2]) if bf else x.shape[1:]
        if x.shape[1 if bf else 0] == 0:    # torch.nn's error (an empty batch, B = 0, runs)
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        if I != self.input_size:
            raise RuntimeError("input.size(-1) must be equal to input_size. "
                               f"Expected {self.input_size}, got {I}")

        h0 = c0 = None
        if hx is not None:
            h0, c0 = self._initial_state(hx, x, B, batched, sorted_indices)

        grad = torch.is_grad_enabled() and (
            x.requires_grad or w0.requires_grad or any(w.requires_grad for w in weights)
            or (h0 is not None and (h0.requires_grad or (c0 is not None and c0.requires_grad))))
        if plan is None:
            plan = self._plan(weights)
        backend = self.backend
        D = 2 if self.bidirectional else 1
        single = len(plan) == 1
        p = self.dropout if self.training else 0.0
        h_out, c_out, ys = [], [], []
        k = 4 if self.bias else 2
        # layer 0 reads the batch-first input (BF_IN); a single layer-direction
        # also writes the batch-first output (BF_OUT)
        bf0 = (BF_IN | (BF_OUT if single else 0)) if bf else 0
        for j, (reverse, arrs) in enumerate(plan):
            cfg = (mode, reverse, lengths, backend, arrs, bf0 if j < D else 0)
            w = weights[j * k:(j + 1) * k] if k == 4 else (weights[2 * j], weights[2 * j + 1], None, None)
            h0j = None if h0 is None else (h0 if single else h0[j])
            c0j = None if c0 is None else (c0 if single else c0[j])
            out = _layer(grad, cfg, x, h0j, c0j, w)
            ys.append(out[0])
            h_out.append(out[1])                              # (1, B, H)
            if lstm:
                c_out.append(out[2])
            if len(ys) == D:                                  # layer done: next layer's input
                x = ys[0] if D == 1 else torch.cat(ys, 2)     # (T, B, D*H)
                ys = []
                if p > 0 and j < len(plan) - 1:
                    x = F.dropout(x, p, True)
        if single:
            h_n = h_out[0]
            c_n = c_out[0] if lstm else None
        else:
            h_n = torch.cat(h_out)                            # (L*D, B, H)
            c_n = torch.cat(c_out) if lstm else None

        if packed:
            out = PackedSequence(pack_padded_sequence(x, lengths_t).data, batch_sizes,
                                 sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
                if lstm:
                    c_n = c_n.index_select(1, unsorted_indices)
        elif not batched:
            out = x.squeeze(1)
            h_n = h_n.squeeze(1)
            if lstm:
                c_n = c_n.squeeze(1)
        else:
            # batch-major already where the Function wrote it so (BF_OUT)
            out = x.transpose(0, 1) if self.batch_first and not bf0 & BF_OUT else x
        return out, ((h_n, c_n) if lstm else h_n)

    def _bad_input(self, x, w0):
        name = type(self).__name__
        if x.dtype != w0.dtype:
            raise ValueError(f"RNN input dtype ({x.dtype}) does not match weight dtype ({w0.dtype}). "
                             f"Convert input: input.to({w0.dtype}), or convert model: model.to({x.dtype})")
        if x.dtype not in _DTYPES:
            raise TypeError(f"{name}: fastrnn runs float32 and float64, got dtype {x.dtype} "
                            "(convert with model.float() / model.double())")
        raise RuntimeError(f"{name}: input is on {x.device} but the weights are on {w0.device}")

    def _initial_state(self, hx, x, B, batched, sorted_indices):
        """Validate hx like torch.nn; return (h0, c0-or-None) as (L*D, B, H) in
        the order the kernels run (packed: length-sorted)."""
        name = type(self).__name__
        lstm = self._fr_mode == "lstm"
        if lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
            hs = tuple(hx)
        else:
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"{name}: hx must be a Tensor, got {type(hx).__name__}")
            hs = (hx,)
        want = 3 if batched else 2
        if any(h.dim() != want for h in hs):
            dims = ", ".join(f"{h.dim()}-D" for h in hs)
            raise RuntimeError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, hx "
                               f"should also be {want}-D but got ({dims}) tensors")
        if not batched:
            hs = tuple(h.unsqueeze(1) for h in hs)
        exp = (self.num_layers * (2 if self.bidirectional else 1), B, self.hidden_size)
        for h in hs:
            if tuple(h.shape) != exp:
                raise RuntimeError(f"Expected hidden size {exp}, got {list(h.shape)}")
            if h.dtype != x.dtype or h.is_cuda != x.is_cuda:
                raise ValueError(f"{name}: hx has dtype {h.dtype} on {h.device}; expected "
                                 f"{x.dtype} on {x.device} like the input")
        if sorted_indices is not None:
            hs = tuple(h.index_select(1, sorted_indices) for h in hs)
        return hs[0], (hs[1] if lstm else None)


# Under torch.compile the recurrent layer runs eagerly (a graph break): the
# kernels are NumPy/Numba/CuPy calls that dynamo cannot trace.  Only when a
# dynamo frame callback is set (inside a compiled region) does the call go
# through torch.compiler.disable, built on first use: eager calls pay one C
# call (~0.1 us), and importing fastrnn.torch does not import torch._dynamo.
try:
    _dynamo_callback = torch._C._dynamo.eval_frame.get_eval_frame_callback
    _is_compiling = torch.compiler.is_compiling
except AttributeError:  # pragma: no cover - a torch without dynamo
    _dynamo_callback = lambda: None  # noqa: E731
    _is_compiling = lambda: False  # noqa: E731
_DISABLED = []


def _forward(module, input, hx):
    # is_compiling() first: dynamo traces it (True) without tracing the C query
    if not _is_compiling() and _dynamo_callback() is None:
        return module._fastrnn_forward(input, hx)
    if not _DISABLED:
        _DISABLED.append(torch.compiler.disable(_FastRNNMixin._fastrnn_forward))
    return _DISABLED[0](module, input, hx)


class RNN(_FastRNNMixin, torch.nn.RNN):
    """``torch.nn.RNN`` (tanh or relu) running on fastrnn kernels.

    Same arguments as torch.nn.RNN, plus ``backend=None`` ("numba", "cupy",
    "numpy", or None for fastrnn's auto-selection).  forward(input, hx=None)
    -> (output, h_n): input (T, B, I), (B, T, I) if batch_first, (T, I)
    unbatched, or a PackedSequence; hx and h_n (L*D, B, H).
    """

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._fastrnn_init(backend)

    def forward(self, input, hx=None):
        return _forward(self, input, hx)


class GRU(_FastRNNMixin, torch.nn.GRU):
    """``torch.nn.GRU`` running on fastrnn kernels (gates r, z, n as in torch).

    Same arguments as torch.nn.GRU, plus ``backend=None``.
    forward(input, hx=None) -> (output, h_n); shapes as torch.nn.GRU.
    """

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._fastrnn_init(backend)

    def forward(self, input, hx=None):
        return _forward(self, input, hx)


class LSTM(_FastRNNMixin, torch.nn.LSTM):
    """``torch.nn.LSTM`` running on fastrnn kernels (gates i, f, g, o as in torch).

    Same arguments as torch.nn.LSTM, plus ``backend=None``; proj_size must be 0.
    forward(input, (h0, c0)=None) -> (output, (h_n, c_n)); shapes as torch.nn.LSTM.
    """

    def __init__(self, *args, backend=None, **kwargs):
        if kwargs.get("proj_size", 0) or (len(args) > 7 and args[7]):
            ps = kwargs.get("proj_size", args[7] if len(args) > 7 else 0)
            raise NotImplementedError(
                f"fastrnn.torch.LSTM: proj_size={ps} (LSTM with projections) is not implemented by "
                "fastrnn's kernels; use proj_size=0, or keep torch.nn.LSTM for this layer")
        super().__init__(*args, **kwargs)
        self._fastrnn_init(backend)

    def forward(self, input, hx=None):
        return _forward(self, input, hx)


_FAST = {torch.nn.RNN: RNN, torch.nn.GRU: GRU, torch.nn.LSTM: LSTM}


def from_torch(module, backend=None, *, share_parameters=False):
    """A fastrnn module with the same configuration, weights, device, dtype,
    requires_grad flags and train/eval mode as ``module`` (a torch.nn.RNN, GRU
    or LSTM).  Draws nothing from torch's RNG.

    share_parameters=False (default): the weights are copied, the two modules
    are independent.  share_parameters=True: the new module holds the very
    same Parameter objects (no copy; an optimizer built on the old module
    keeps working), which is what :func:`swap_rnns` uses.

    NotImplementedError for an LSTM with proj_size != 0 or parametrized
    weights; TypeError for anything that is not a torch.nn.RNN/GRU/LSTM.
    """
    cls = next((fast for base, fast in _FAST.items() if isinstance(module, base)), None)
    if cls is None:
        raise TypeError(f"module: expected a torch.nn.RNN, GRU or LSTM, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise NotImplementedError(
            f"from_torch: {type(module).__name__} has proj_size={module.proj_size} (LSTM with "
            "projections), which fastrnn's kernels do not implement")
    if torch.nn.utils.parametrize.is_parametrized(module):
        raise NotImplementedError(
            f"from_torch: {type(module).__name__} has parametrized weights (e.g. weight_norm); "
            "convert the plain module, then register the parametrizations on the result")
    kw = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
              dropout=module.dropout, bidirectional=module.bidirectional, backend=backend)
    if cls is RNN:
        kw["nonlinearity"] = module.nonlinearity
    with warnings.catch_warnings():     # torch already warned about dropout with 1 layer
        warnings.simplefilter("ignore", UserWarning)
        new = cls(module.input_size, module.hidden_size, device="meta", **kw)   # no memory, no RNG
    for name in module._flat_weights_names:
        p = getattr(module, name)
        if not share_parameters:
            p = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        setattr(new, name, p)
    new._init_flat_weights()
    new.train(module.training)
    return new


def swap_rnns(model, backend=None):
    """Replace, in place, every torch.nn.RNN/GRU/LSTM inside ``model`` (at any
    depth; if ``model`` itself is one, its fastrnn twin is returned) by a
    fastrnn module holding the same Parameter objects (from_torch with
    share_parameters=True): no copy, and an optimizer built before the swap
    keeps working.  A module used in two places stays one module.  Only
    exact torch.nn.RNN/GRU/LSTM instances are swapped: fastrnn modules and
    user subclasses (which may override forward) are left alone.  Returns
    the model.
    """
    return _swap(model, backend, {})


def _swap(model, backend, memo):
    if type(model) in _FAST:
        if id(model) not in memo:
            memo[id(model)] = from_torch(model, backend=backend, share_parameters=True)
        return memo[id(model)]
    for name, child in list(model.named_children()):
        new = _swap(child, backend, memo)
        if new is not child:
            setattr(model, name, new)
    return model
