"""Luong (multiplicative) attention with an explicit backward.

    Attention(query_size, key_size, score="general", *, seed=None, dtype="float32")
    forward(query, keys, *, training=False, key_lengths=None) -> context
        query        (Tq, B, Hq)   e.g. the decoder's outputs
        keys         (Tk, B, Hk)   e.g. the encoder's outputs (also the values)
        key_lengths  (B,) ints in [0, Tk]: keys at t >= key_lengths[b] get no weight
        context      (Tq, B, Hk)   sum_k a[q, b, k] * keys[k, b]
        score: "dot"     s = query . keys             (needs Hq == Hk)
               "general" s = query . (W keys), W (Hq, Hk) like a bias-free
                         torch.nn.Linear(Hk, Hq) weight
        a = softmax over k of the scores; ``last_weights`` keeps the latest
        (Tq, B, Tk) weights for inspection.  A sequence with key_lengths 0
        gets all-zero weights and context.
    backward(dcontext) -> (dquery, dkeys)

Luong's attentional state h~ = tanh(W_c [context; h]) is a Dense + Tanh on
np.concatenate([context, query], -1) in the model; split its input gradient
with np.split.
"""
from __future__ import annotations

import numpy as np

from .base import Layer, as_rng, check_dtype, check_int

__all__ = ["Attention"]


class Attention(Layer):
    def __init__(self, query_size, key_size, score="general", *, seed=None, dtype="float32"):
        self.query_size = check_int(query_size, "query_size", 1)
        self.key_size = check_int(key_size, "key_size", 1)
        if score not in ("dot", "general"):
            raise ValueError(f"score: expected 'dot' or 'general', got {score!r}")
        if score == "dot" and query_size != key_size:
            raise ValueError(f"score='dot' needs query_size == key_size, got {query_size} and {key_size}")
        self.score = score
        self.dtype = check_dtype(dtype)
        self.last_weights = None
        if score == "general":
            bound = 1.0 / np.sqrt(key_size)
            self.add_param("weight", as_rng(seed).uniform(-bound, bound, (query_size, key_size)).astype(self.dtype))

    def forward(self, query, keys, *, training=False, key_lengths=None):
        q = np.asarray(query, dtype=self.dtype)
        k = np.asarray(keys, dtype=self.dtype)
        if q.ndim != 3 or q.shape[2] != self.query_size:
            raise ValueError(f"Attention: query: expected shape (Tq, B, {self.query_size}), got {q.shape}")
        if k.ndim != 3 or k.shape[2] != self.key_size or k.shape[1] != q.shape[1]:
            raise ValueError(f"Attention: keys: expected shape (Tk, B={q.shape[1]}, {self.key_size}), got {k.shape}")
        Tk, B = k.shape[:2]
        qb = q.transpose(1, 0, 2)                                  # (B, Tq, Hq)
        kb = k.transpose(1, 0, 2)                                  # (B, Tk, Hk)
        kk = kb @ self.params["weight"].T if self.score == "general" else kb   # (B, Tk, Hq)
        s = qb @ kk.transpose(0, 2, 1)                             # (B, Tq, Tk)
        valid = None
        if key_lengths is not None:
            kl = np.asarray(key_lengths)
            if kl.shape != (B,) or not np.issubdtype(kl.dtype, np.integer) or (kl.size and (kl.min() < 0 or kl.max() > Tk)):
                raise ValueError(f"Attention: key_lengths: expected ({B},) ints in [0, {Tk}], got {kl!r}")
            valid = (np.arange(Tk)[None, :] < kl[:, None])[:, None, :]          # (B, 1, Tk)
            s = np.where(valid, s, -np.inf)
        m = s.max(axis=2, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        a = np.exp(s - m)
        tot = a.sum(axis=2, keepdims=True)
        a = np.divide(a, tot, out=np.zeros_like(a), where=tot > 0)
        ctx = a @ kb                                               # (B, Tq, Hk)
        self.last_weights = a.transpose(1, 0, 2)
        if training:
            self._push((qb, kb, kk, a))
        return ctx.transpose(1, 0, 2)

    def backward(self, dcontext):
        qb, kb, kk, a = self._pop()
        dc = np.asarray(dcontext, dtype=self.dtype).transpose(1, 0, 2)     # (B, Tq, Hk)
        da = dc @ kb.transpose(0, 2, 1)                            # (B, Tq, Tk)
        dkb = a.transpose(0, 2, 1) @ dc                            # (B, Tk, Hk) via the values
        ds = a * (da - (a * da).sum(axis=2, keepdims=True))
        dqb = ds @ kk                                              # (B, Tq, Hq)
        dkk = ds.transpose(0, 2, 1) @ qb                           # (B, Tk, Hq)
        if self.score == "general":
            dkb += dkk @ self.params["weight"]
            self.grads["weight"] += np.einsum("bkh,bkj->hj", dkk, kb)
        else:
            dkb += dkk
        return dqb.transpose(1, 0, 2), dkb.transpose(1, 0, 2)
