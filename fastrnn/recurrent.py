"""Recurrent layers RNN, GRU, LSTM over the fused kernels (fastrnn.rnn_forward).

Parameters are named, shaped and initialised exactly like torch.nn.RNN/GRU/LSTM
(weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}, and the
``_reverse`` ones of a bidirectional layer; uniform(-1/sqrt(H), 1/sqrt(H))),
so ``layer.load_state_dict(torch_lstm.state_dict())`` and back just work.
Gate order is torch's (see fastrnn.cells).

Shapes: T time, B batch, I input_size, H hidden_size, L num_layers,
D = 2 if bidirectional else 1.

    forward(x, *, training=False, lengths=None, h0=None)
        x        (T, B, I), or (B, T, I) with batch_first=True
        lengths  (B,) ints in [0, T] or None: packed-sequence semantics (steps
                 at t >= lengths[b] give zero output and leave the state alone;
                 the reverse direction starts at each sequence's own last step)
        h0       (L*D, B, H) like torch, for LSTM the pair (h0, c0) (either may
                 be None); None means zeros
      returns, by the constructor flags:
        return_sequences=True  -> y (T, B, D*H) ((B, T, D*H) with batch_first),
                                  directions concatenated on the last axis
        return_sequences=False -> (B, D*H): the top layer's final state of each
                                  direction (forward: after the last valid step;
                                  reverse: after step 0), torch's h_n[-D:]
        return_state=True      -> the pair (that output, state) with state the
                                  final h_n (L*D, B, H), for LSTM (h_n, c_n)

    backward(dout, dstate=None) -> dx (same layout as x)
        dout    gradient of the output above (None: zero); dstate the gradient of
                the returned state (same structure as the state; None: zero).
        After it, ``layer.dh0`` holds the gradient with respect to the h0 given
        to that forward (same structure), or None when h0 was None.

Dropout (p = ``dropout``) applies between stacked layers in training, like torch.
"""
from __future__ import annotations

import numpy as np

from .base import Layer, as_rng, check_dtype, check_int
from .cells import spec
from .functional import rnn_backward, rnn_forward

__all__ = ["Recurrent", "RNN", "GRU", "LSTM"]


class Recurrent(Layer):
    """One class for every cell; RNN, GRU and LSTM fix ``mode``.

    Recurrent(mode, input_size, hidden_size, num_layers=1, *, bias=True,
              batch_first=False, dropout=0.0, bidirectional=False,
              return_sequences=True, return_state=False, seed=None,
              dtype="float32", backend=None)

    backend None picks the best available kernel backend at call time
    ($FASTRNN_BACKEND overrides); see the module docstring for shapes.
    """
    accepts_lengths = True

    def __init__(self, mode, input_size, hidden_size, num_layers=1, *, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, return_sequences=True, return_state=False,
                 seed=None, dtype="float32", backend=None):
        self.mode = spec(mode).mode
        self.input_size = check_int(input_size, "input_size", 1)
        self.hidden_size = H = check_int(hidden_size, "hidden_size", 1)
        self.num_layers = check_int(num_layers, "num_layers", 1)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.dtype = check_dtype(dtype)
        self.backend = backend
        self.dh0 = None
        self._rng = as_rng(seed)
        G = spec(mode).gates
        D = 2 if self.bidirectional else 1
        k = 1.0 / np.sqrt(H)
        for layer in range(self.num_layers):
            isz = self.input_size if layer == 0 else D * H
            for d in range(D):
                for name, shape in (("weight_ih", (G * H, isz)), ("weight_hh", (G * H, H)),
                                    ("bias_ih", (G * H,)), ("bias_hh", (G * H,))):
                    if name.startswith("bias") and not self.bias:
                        continue
                    self.add_param(self._name(name, layer, d),
                                   self._rng.uniform(-k, k, shape).astype(self.dtype))

    @staticmethod
    def _name(name, layer, d):
        return f"{name}_l{layer}{'_reverse' if d else ''}"

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def output_size(self):
        """Feature size of the output: D*H."""
        return self.num_directions * self.hidden_size

    def _weights(self, layer, d):
        p = self.params
        return tuple(p.get(self._name(n, layer, d)) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def _state_arg(self, s, arg, B):
        """(h, c) each None or (L*D, B, H) arrays, from the user's h0 / dstate."""
        has_cell = self.mode == "lstm"
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        if s is None:
            return None, None
        if has_cell:
            if not isinstance(s, (tuple, list)) or len(s) != 2:
                raise TypeError(f"{type(self).__name__}: {arg}: expected a pair (h, c) of ({LD}, {B}, {H}) "
                                f"arrays for an LSTM, got {type(s).__name__}")
            parts = s
        else:
            if isinstance(s, (tuple, list)):
                raise TypeError(f"{type(self).__name__}: {arg}: expected one ({LD}, {B}, {H}) array "
                                f"(only an LSTM takes a pair), got a {type(s).__name__}")
            parts = (s, None)
        out = []
        for i, a in enumerate(parts):
            if a is not None:
                a = np.asarray(a)
                if a.shape != (LD, B, H):
                    raise ValueError(f"{type(self).__name__}: {arg}{'[%d]' % i if has_cell else ''}: "
                                     f"expected shape (L*D, B, H) = ({LD}, {B}, {H}), got {a.shape}")
                a = a.astype(self.dtype, copy=False)
            out.append(a)
        return tuple(out)

    def forward(self, x, *, training=False, lengths=None, h0=None):
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{type(self).__name__}: x: expected a float array, got dtype {x.dtype}")
        if x.ndim != 3 or x.shape[2] != self.input_size:
            lay = "(B, T, I)" if self.batch_first else "(T, B, I)"
            raise ValueError(f"{type(self).__name__}: x: expected shape {lay} with I={self.input_size}, "
                             f"got {x.shape}")
        x = x.astype(self.dtype, copy=False)
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B, _ = x.shape
        h0h, h0c = self._state_arg(h0, "h0", B)
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        lstm = self.mode == "lstm"
        inp, saved, masks, hn, cn = x, [], [], [], []
        for layer in range(L):
            outs = []
            for d in range(D):
                i = layer * D + d
                s0 = None if h0h is None else h0h[i]
                if lstm:
                    s0 = (s0, None if h0c is None else h0c[i])
                y, s, sv = rnn_forward(self.mode, inp, self._weights(layer, d), s0, lengths,
                                       reverse=d == 1, training=bool(training), backend=self.backend)
                outs.append(y)
                saved.append(sv)
                hn.append(s[0] if lstm else s)
                if lstm:
                    cn.append(s[1])
            inp = outs[0] if D == 1 else np.concatenate(outs, axis=-1)
            if training and self.dropout > 0 and layer < L - 1:
                mask = (self._rng.random(inp.shape) >= self.dropout).astype(self.dtype)
                mask *= self.dtype.type(1.0 / (1.0 - self.dropout))
                inp = inp * mask
                masks.append(mask)
        if training:
            self._push((saved, masks, (T, B), (h0h is not None, h0c is not None)))
        h_n = np.stack(hn)
        if self.return_sequences:
            out = inp.transpose(1, 0, 2) if self.batch_first else inp
        else:
            out = np.concatenate([h_n[(L - 1) * D + d] for d in range(D)], axis=-1)
        if self.return_state:
            return out, ((h_n, np.stack(cn)) if lstm else h_n)
        return out

    def backward(self, dout, dstate=None):
        saved, masks, (T, B), (had_h, had_c) = self._pop()
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        lstm = self.mode == "lstm"
        dsh, dsc = self._state_arg(dstate, "dstate", B)
        dy, dtop = None, None
        if dout is not None:
            dout = np.asarray(dout, dtype=self.dtype)
            if self.return_sequences:
                want = (B, T, D * H) if self.batch_first else (T, B, D * H)
                if dout.shape != want:
                    raise ValueError(f"{type(self).__name__}.backward: dout: expected shape {want}, got {dout.shape}")
                dy = dout.transpose(1, 0, 2) if self.batch_first else dout
            else:
                if dout.shape != (B, D * H):
                    raise ValueError(f"{type(self).__name__}.backward: dout: expected shape {(B, D * H)}, "
                                     f"got {dout.shape}")
                dtop = dout
        dh0 = [None] * (L * D)
        dc0 = [None] * (L * D)
        dinp = None
        for layer in range(L - 1, -1, -1):
            dinp = None
            for d in range(D):
                i = layer * D + d
                dh = None if dsh is None else dsh[i]
                if dtop is not None and layer == L - 1:
                    part = dtop[:, d * H:(d + 1) * H]
                    dh = part if dh is None else dh + part
                dn = (dh, None if dsc is None else dsc[i]) if lstm else dh
                dyd = None if dy is None else dy[..., d * H:(d + 1) * H]
                dx, ds0, dw = rnn_backward(saved[i], dyd, dn)
                for n, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), dw):
                    if g is not None:
                        self.grads[self._name(n, layer, d)] += g
                dinp = dx if dinp is None else dinp + dx
                dh0[i], dc0[i] = (ds0 if lstm else (ds0, None))
            if layer > 0:
                dy = dinp * masks[layer - 1] if masks else dinp
        if had_h or had_c:
            self.dh0 = (np.stack(dh0), np.stack(dc0)) if lstm else np.stack(dh0)
        else:
            self.dh0 = None
        return dinp.transpose(1, 0, 2) if self.batch_first else dinp


class RNN(Recurrent):
    """Elman RNN, torch.nn.RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act
    tanh or relu (``nonlinearity``).  Other keywords: see Recurrent."""

    def __init__(self, input_size, hidden_size, num_layers=1, *, nonlinearity="tanh", **kwargs):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, num_layers, **kwargs)


class GRU(Recurrent):
    """torch.nn.GRU (gates r, z, n).  Keywords: see Recurrent."""

    def __init__(self, input_size, hidden_size, num_layers=1, **kwargs):
        super().__init__("gru", input_size, hidden_size, num_layers, **kwargs)


class LSTM(Recurrent):
    """torch.nn.LSTM (gates i, f, g, o); state is the pair (h, c).  Keywords: see Recurrent."""

    def __init__(self, input_size, hidden_size, num_layers=1, **kwargs):
        super().__init__("lstm", input_size, hidden_size, num_layers, **kwargs)
