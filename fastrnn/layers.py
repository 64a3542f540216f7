"""Layers with explicit forward and backward (NumPy arrays; no autograd).

Every layer follows fastrnn.base.Layer: ``forward(x, *, training=False)``
returns the output and, when training, caches what ``backward(dout)`` needs;
``backward`` accumulates parameter gradients into ``layer.grads`` and returns
the gradient with respect to the input.  Shapes use T time, B batch, F
features, E embedding size, V vocabulary size, C classes.

    Embedding(V, E, padding_idx=None)        int ids (...)  -> (..., E)
    Dense(in_features, out_features)         (..., in)      -> (..., out)
    Dropout(p)                               inverted dropout, seeded
    ReLU(), Tanh()                           elementwise
    Flatten(start_dim=1)                     (B, d1, d2...) -> (B, d1*d2*...)
    MeanPool(batch_first=False)              (T, B, F) + lengths -> (B, F), mean of valid steps
    LastPool(batch_first=False)              (T, B, F) + lengths -> (B, F), the last valid step
    RNN, GRU, LSTM                           fastrnn.recurrent (re-exported here)
    Attention(Hq, Hk, score="general")       fastrnn.attention (re-exported here): Luong attention

Initialisation follows torch.nn (Embedding N(0, 1); Linear and RNN weights
uniform(-1/sqrt(fan), 1/sqrt(fan))), drawn from ``seed`` (None, an int or a
np.random.Generator; pass one Generator to every layer of a model for a
reproducible model from one seed).  Parameters are float32 unless
``dtype="float64"``; float inputs are cast to the layer's dtype.
"""
from __future__ import annotations

import numpy as np

from .attention import Attention
from .base import Layer, as_rng, check_dtype, check_int
from .recurrent import GRU, LSTM, RNN, Recurrent

__all__ = ["Layer", "Embedding", "Dense", "Dropout", "ReLU", "Tanh", "Flatten", "MeanPool",
           "LastPool", "Recurrent", "RNN", "GRU", "LSTM", "Attention"]


def float_input(x, arg, dtype, owner):
    """x as an array of ``dtype``; TypeError unless it holds floats."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{owner}: {arg}: expected a float array, got dtype {x.dtype}")
    return x.astype(dtype, copy=False)


def lengths_mask(lengths, T, B, owner):
    """(T, B) bool mask t < lengths[b], or None when lengths is None."""
    if lengths is None:
        return None
    lengths = np.asarray(lengths)
    if lengths.shape != (B,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"{owner}: lengths: expected a ({B},) integer array, got shape "
                         f"{lengths.shape} dtype {lengths.dtype}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"{owner}: lengths: expected values in [0, T={T}], got "
                         f"[{lengths.min()}, {lengths.max()}]")
    return np.arange(T)[:, None] < lengths[None, :]


class Embedding(Layer):
    """Lookup table: int ids of any shape (e.g. (T, B) or (B, T)) -> (..., E).

    weight (V, E) ~ N(0, 1) like torch.nn.Embedding; the ``padding_idx`` row
    starts at zero and never receives gradient.  backward returns None (ids
    are not differentiable)."""

    def __init__(self, num_embeddings, dim, padding_idx=None, *, seed=None, dtype="float32"):
        self.num_embeddings = check_int(num_embeddings, "num_embeddings", 1)
        self.dim = check_int(dim, "dim", 1)
        if padding_idx is not None:
            padding_idx = check_int(padding_idx, "padding_idx")
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx: expected a value in [-{num_embeddings}, {num_embeddings}), "
                                 f"got {padding_idx}")
            padding_idx %= num_embeddings
        self.padding_idx = padding_idx
        self.dtype = check_dtype(dtype)
        w = as_rng(seed).standard_normal((num_embeddings, dim)).astype(self.dtype)
        if padding_idx is not None:
            w[padding_idx] = 0
        self.add_param("weight", w)

    def forward(self, ids, *, training=False):
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"Embedding: ids: expected an integer array, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            bad = ids[(ids < 0) | (ids >= self.num_embeddings)].flat[0]
            raise ValueError(f"Embedding: ids: expected values in [0, {self.num_embeddings}), got {bad}")
        if training:
            self._push(ids)
        return self.params["weight"][ids]

    def backward(self, dout):
        ids = self._pop()
        flat = ids.reshape(-1)
        d = np.asarray(dout).reshape(flat.size, self.dim)
        if self.padding_idx is not None:
            keep = flat != self.padding_idx
            flat, d = flat[keep], d[keep]
        np.add.at(self.grads["weight"], flat, d)
        return None


class Dense(Layer):
    """Affine map on the last axis, torch.nn.Linear's layout and init:
    weight (out, in), bias (out,); x (..., in) -> (..., out)."""

    def __init__(self, in_features, out_features, bias=True, *, seed=None, dtype="float32"):
        self.in_features = check_int(in_features, "in_features", 1)
        self.out_features = check_int(out_features, "out_features", 1)
        self.dtype = check_dtype(dtype)
        rng = as_rng(seed)
        bound = 1.0 / np.sqrt(in_features)
        self.add_param("weight", rng.uniform(-bound, bound, (out_features, in_features)).astype(self.dtype))
        if bias:
            self.add_param("bias", rng.uniform(-bound, bound, out_features).astype(self.dtype))

    def forward(self, x, *, training=False):
        x = float_input(x, "x", self.dtype, "Dense")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Dense: x: expected shape (..., {self.in_features}), got {x.shape}")
        y = x @ self.params["weight"].T
        if "bias" in self.params:
            y += self.params["bias"]
        if training:
            self._push(x)
        return y

    def backward(self, dout):
        x = self._pop()
        x2 = x.reshape(-1, self.in_features)
        d2 = np.asarray(dout, dtype=self.dtype).reshape(-1, self.out_features)
        self.grads["weight"] += d2.T @ x2
        if "bias" in self.params:
            self.grads["bias"] += d2.sum(axis=0)
        return (d2 @ self.params["weight"]).reshape(x.shape)


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability p and
    scale the rest by 1/(1-p); identity otherwise.  Masks come from a
    np.random.Generator built from ``seed`` (``reseed()`` resets it)."""

    def __init__(self, p=0.5, *, seed=None):
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self._rng = as_rng(seed)

    def forward(self, x, *, training=False):
        x = np.asarray(x)
        if not training or self.p == 0:
            if training:
                self._push(None)
            return x
        keep = self._rng.random(x.shape) >= self.p
        mask = keep.astype(x.dtype) * (x.dtype.type(1.0 / (1.0 - self.p)) if self.p < 1 else 0)
        self._push(mask)
        return x * mask

    def backward(self, dout):
        mask = self._pop()
        return dout if mask is None else dout * mask


class ReLU(Layer):
    def forward(self, x, *, training=False):
        y = np.maximum(x, 0)
        if training:
            self._push(y > 0)
        return y

    def backward(self, dout):
        return dout * self._pop()


class Tanh(Layer):
    def forward(self, x, *, training=False):
        y = np.tanh(x)
        if training:
            self._push(y)
        return y

    def backward(self, dout):
        y = self._pop()
        return dout * (1 - y * y)


class Flatten(Layer):
    """(d0, ..., d_{s-1}, d_s, ...) -> (d0, ..., d_{s-1}, prod(d_s...)); e.g. the
    (B, k, E) embeddings of a k-token window -> (B, k*E) for a feed-forward net."""

    def __init__(self, start_dim=1):
        self.start_dim = check_int(start_dim, "start_dim", 0)

    def forward(self, x, *, training=False):
        x = np.asarray(x)
        if x.ndim <= self.start_dim:
            raise ValueError(f"Flatten: x: expected more than {self.start_dim} dimensions, got shape {x.shape}")
        if training:
            self._push(x.shape)
        return x.reshape(x.shape[:self.start_dim] + (-1,))

    def backward(self, dout):
        return np.reshape(dout, self._pop())


class _Pool(Layer):
    accepts_lengths = True

    def __init__(self, batch_first=False):
        self.batch_first = bool(batch_first)

    def _prep(self, x):
        x = np.asarray(x)
        if x.ndim != 3 or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{type(self).__name__}: x: expected a float array of shape "
                             f"{'(B, T, F)' if self.batch_first else '(T, B, F)'}, got shape {x.shape} "
                             f"dtype {x.dtype}")
        return x.transpose(1, 0, 2) if self.batch_first else x

    def _out(self, dx):
        return dx.transpose(1, 0, 2) if self.batch_first else dx


class MeanPool(_Pool):
    """Mean over the valid steps: (T, B, F) (or (B, T, F) with batch_first) and
    lengths (B,) -> (B, F).  A zero-length sequence gives zeros.  No lengths:
    the mean over all T steps."""

    def forward(self, x, *, training=False, lengths=None):
        x = self._prep(x)
        T, B, _ = x.shape
        m = lengths_mask(lengths, T, B, "MeanPool")
        if m is None:
            w = np.full((T, B), 1.0 / T, x.dtype)
        else:
            w = m / np.maximum(m.sum(axis=0), 1)[None, :]
            w = w.astype(x.dtype)
        if training:
            self._push(w)
        return np.einsum("tbf,tb->bf", x, w)

    def backward(self, dout):
        w = self._pop()
        return self._out(w[:, :, None] * np.asarray(dout)[None, :, :])


class LastPool(_Pool):
    """The output at each sequence's last valid step: (T, B, F) and lengths
    (B,) -> (B, F); zeros for a zero-length sequence.  No lengths: step T-1.
    (For a bidirectional RNN prefer the layer's return_sequences=False, which
    takes the backward direction's final state too.)"""

    def forward(self, x, *, training=False, lengths=None):
        x = self._prep(x)
        T, B, F = x.shape
        if lengths_mask(lengths, T, B, "LastPool") is None:
            lengths = np.full(B, T)
        lengths = np.asarray(lengths)
        idx = np.maximum(lengths - 1, 0)
        valid = (lengths > 0)[:, None]
        y = np.where(valid, x[idx, np.arange(B)], 0).astype(x.dtype, copy=False)
        if training:
            self._push((x.shape, x.dtype, idx, valid))
        return y

    def backward(self, dout):
        shape, dtype, idx, valid = self._pop()
        dx = np.zeros(shape, dtype)
        dx[idx, np.arange(shape[1])] = np.where(valid, dout, 0)
        return self._out(dx)
