"""Losses: (loss, d loss / d logits) pairs, numerically stable.

Shapes: logits (..., C) for C classes, targets (...) integers, mask (...)
bool (True = counted).  E.g. a tagger's (T, B, C) logits with (T, B) tags
and its length mask; a classifier's (B, C) with (B,) labels.

    softmax_cross_entropy(logits, targets, *, mask=None, weight=None,
                          ignore_index=None, reduction="mean") -> (loss, dlogits)
    CrossEntropyLoss(...)   the same as a fit()/evaluate() loss_fn: called as
                            loss_fn(outputs, batch) -> (loss, doutputs, n_tokens)
    log_softmax(z), softmax(z)

The loss_fn protocol (what fastrnn.model.fit expects):
    loss_fn(outputs, batch) -> (loss: float, doutputs: array like outputs, n: int)
where ``outputs`` is what model.forward(batch, training=...) returned, ``loss``
the mean over the ``n`` counted targets (n weights the per-epoch mean and
gives tokens/s).  Write your own for anything else (shifted decoder targets,
several heads): three lines around softmax_cross_entropy.
"""
from __future__ import annotations

import numpy as np

from .base import batch_get

__all__ = ["log_softmax", "softmax", "softmax_cross_entropy", "CrossEntropyLoss", "resolve_mask"]


def log_softmax(z, axis=-1):
    z = np.asarray(z)
    m = z.max(axis=axis, keepdims=True)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def softmax(z, axis=-1):
    z = np.asarray(z)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_cross_entropy(logits, targets, *, mask=None, weight=None, ignore_index=None,
                          reduction="mean"):
    """Cross-entropy of softmax(logits) against integer targets.

    logits (..., C) float; targets (...) ints in [0, C) where counted; mask
    (...) bool or 0/1, False = not counted; ignore_index: targets equal to it
    are not counted (torch's); weight (C,) class weights: the loss is then
    sum_i w[y_i] * nll_i / sum_i w[y_i] over counted i, like
    torch.nn.CrossEntropyLoss(weight=...).  reduction "mean" (that weighted
    mean) or "sum".  With nothing counted the loss and gradient are 0 (torch
    gives nan).

    Returns (loss: float, dlogits: array of logits' shape and dtype).
    """
    logits = np.asarray(logits)
    if logits.ndim < 1 or not np.issubdtype(logits.dtype, np.floating):
        raise TypeError(f"logits: expected a float array (..., C), got shape {logits.shape} dtype {logits.dtype}")
    C = logits.shape[-1]
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"targets: expected an integer array, got dtype {targets.dtype}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets: expected shape {logits.shape[:-1]} (logits' shape without C), "
                         f"got {targets.shape}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    z = logits.reshape(-1, C)
    t = targets.reshape(-1)
    valid = np.ones(t.shape, bool)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != targets.shape:
            raise ValueError(f"mask: expected shape {targets.shape} (the targets' shape), got {mask.shape}")
        valid &= mask.reshape(-1).astype(bool)
    if ignore_index is not None:
        valid &= t != ignore_index
    tv = t[valid]
    if tv.size and (tv.min() < 0 or tv.max() >= C):
        raise ValueError(f"targets: expected counted values in [0, C={C}), got {tv[(tv < 0) | (tv >= C)][0]}")
    tt = np.where(valid, t, 0)
    w = valid.astype(np.float64)
    if weight is not None:
        weight = np.asarray(weight, dtype=np.float64)
        if weight.shape != (C,):
            raise ValueError(f"weight: expected shape ({C},) (one per class), got {weight.shape}")
        w *= weight[tt]
    denom = w.sum() if reduction == "mean" else 1.0
    rows = np.arange(z.shape[0])
    m = z.max(axis=1, keepdims=True)
    p = z - m
    np.exp(p, out=p)
    s = p.sum(axis=1)
    nll = np.log(s) - (z[rows, tt] - m[:, 0])              # -log softmax at the target
    if denom == 0:
        return 0.0, np.zeros_like(logits)
    loss = float(np.dot(w, nll.astype(np.float64)) / denom)
    p /= s[:, None]                                          # softmax
    p[rows, tt] -= 1
    p *= (w / denom).astype(p.dtype)[:, None]
    return loss, p.reshape(logits.shape)


def resolve_mask(batch, targets, mask, time_major, owner):
    """The mask a loss or metric uses: ``mask`` None (none), a key/attribute
    name of the batch, or "auto": batch["mask"] if present, else for 2-D
    targets a length mask from batch.target_lengths (or batch.lengths when
    that has one entry per batch row), else None."""
    if mask is None:
        return None
    if mask != "auto":
        m = batch_get(batch, mask)
        if m is None:
            raise ValueError(f"{owner}: the batch has no {mask!r} (mask=)")
        return m
    m = batch_get(batch, "mask")
    if m is not None:
        return m
    if targets.ndim != 2:
        return None
    T, B = targets.shape if time_major else targets.shape[::-1]
    for key in ("target_lengths", "lengths"):
        lens = batch_get(batch, key)
        if lens is not None and np.shape(lens) == (B,):
            m = np.arange(T)[:, None] < np.asarray(lens)[None, :]
            return m if time_major else m.T
    return None


class CrossEntropyLoss:
    """softmax_cross_entropy as a fit()/evaluate() loss_fn.

    CrossEntropyLoss(weight=None, ignore_index=None, *, targets="targets",
                     mask="auto", time_major=True)
    Called as loss_fn(outputs, batch) -> (loss, doutputs, n) with the targets
    ``batch[targets]`` (or the attribute: fastrnn.data.Batch works), the mask
    as resolve_mask() finds it, n the number of counted targets.
    """

    def __init__(self, weight=None, ignore_index=None, *, targets="targets", mask="auto", time_major=True):
        self.weight = None if weight is None else np.asarray(weight, dtype=np.float64)
        self.ignore_index = ignore_index
        self.targets = targets
        self.mask = mask
        self.time_major = bool(time_major)

    def __call__(self, outputs, batch):
        y = batch_get(batch, self.targets)
        if y is None:
            raise ValueError(f"CrossEntropyLoss: the batch has no {self.targets!r} (targets=)")
        y = np.asarray(y)
        m = resolve_mask(batch, y, self.mask, self.time_major, "CrossEntropyLoss")
        loss, d = softmax_cross_entropy(outputs, y, mask=m, weight=self.weight, ignore_index=self.ignore_index)
        valid = np.ones(y.shape, bool) if m is None else np.asarray(m, bool)
        if self.ignore_index is not None:
            valid = valid & (y != self.ignore_index)
        return loss, d, int(valid.sum())
