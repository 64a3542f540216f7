"""Helpers shared by the sentiment, NER and feed-forward-baseline tasks.

    data_path(data, key, name)     the file to read: ``data`` or the shared data file
    file_fingerprint(path)         short content hash (does a file equal the training file?)
    load_model(model, cls)         a saved model path (or an in-memory model) -> the model
    default_out(task, out)         where train() saves: ``out`` or models/<task>.npz
    class_weights(counts, mode)    "none" | "balanced" | "sqrt" loss weights per class
    MeanMaxPool                    (T, B, F) + lengths -> (B, 2F): masked mean and max over time
    word_dropout(ids, p, unk, rng) replace tokens by <unk> (training-time noise)
    throughput(hist, tokens)       tokens/s of a fit() history given tokens per epoch
    save_trained(...)              record dev metrics and history in a trained model, save it,
                                   return train()'s result dict (sentiment and NER)
    merge_options(defaults, quick_overrides, quick, options)
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from ..base import Layer
from ..data import data_file
from ..layers import lengths_mask

__all__ = ["data_path", "file_fingerprint", "load_model", "default_out", "class_weights", "MeanMaxPool",
           "word_dropout", "throughput", "save_trained", "merge_options", "model_size_mb"]


def data_path(data, key, name=None):
    """``data`` (a path) when given, else the shared data file ``data_file(key)``.
    FileNotFoundError naming the path when it does not exist."""
    if data is None:
        return data_file(key)
    p = Path(os.fspath(data)).expanduser()
    if name is not None and p.is_dir():
        p = p / name
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    return p


def file_fingerprint(path):
    """blake2b of the file's bytes, 16 hex digits."""
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=8).hexdigest()


def load_model(model, cls=None):
    """A model given as a path (loaded with fastrnn.model.load) or already in memory."""
    from ..model import load
    if isinstance(model, Layer):
        if cls is not None and not isinstance(model, cls):
            raise TypeError(f"model: expected a {cls.__name__}, got {type(model).__name__}")
        return model
    return load(os.fspath(model), cls=cls)


def default_out(task, out):
    """``out`` or models/<task>.npz; creates the parent folder."""
    p = Path(out) if out is not None else Path("models") / f"{task}.npz"
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    return str(p)


def class_weights(counts, mode):
    """Per-class loss weights from class counts (C,).

    "none": None (plain cross-entropy); "balanced": N / (C * count_c) (sklearn's
    "balanced", each class contributes equally); "sqrt": the square root of
    that (a milder correction).  Classes never seen get weight 0."""
    if mode in (None, "none"):
        return None
    counts = np.asarray(counts, np.float64)
    seen = counts > 0
    w = np.zeros_like(counts)
    w[seen] = counts.sum() / (seen.sum() * counts[seen])
    if mode == "sqrt":
        w = np.sqrt(w)
    elif mode != "balanced":
        raise ValueError(f"class_weight: expected 'none', 'balanced' or 'sqrt', got {mode!r}")
    return w


def word_dropout(ids, p, unk_id, rng, protect=0):
    """Copy of ``ids`` with each id > ``protect`` (i.e. not <pad>) replaced by
    ``unk_id`` with probability ``p`` (a scalar, or an array of ids' shape)."""
    if np.isscalar(p) and p <= 0:
        return ids
    drop = (rng.random(ids.shape) < p) & (ids > protect)
    if not drop.any():
        return ids
    out = ids.copy()
    out[drop] = unk_id
    return out


def throughput(hist, tokens_per_epoch):
    """Input tokens per second over the training epochs of a fit() history."""
    secs = float(sum(hist["seconds"]))
    return tokens_per_epoch * len(hist["seconds"]) / secs if secs > 0 else 0.0


def save_trained(model, out, meta, hist, metrics, tokens_per_epoch, t_start, cfg):
    """The common end of a classifier's train(): record the dev metrics, best
    epoch, epoch times and throughput in ``meta``, save the model to ``out``
    with it, and return train()'s result dict."""
    tps = throughput(hist, tokens_per_epoch)
    meta.update(dev_metrics=dict(metrics), epoch=hist["best_epoch"], history_seconds=hist["seconds"],
                tokens_per_s=tps)
    model.save(out, metadata=meta)
    return {"metrics": metrics, "seconds": time.perf_counter() - t_start,
            "train_seconds": float(sum(hist["seconds"])), "tokens_per_s": tps,
            "history": hist, "model": out, "config": cfg, "parameters": model.num_parameters()}


def merge_options(defaults, quick_overrides, quick, options):
    """defaults, then quick_overrides when ``quick``, then the caller's options
    (None values ignored, so argparse defaults of None fall through).  Unknown
    option names are a TypeError naming them."""
    unknown = sorted(k for k in options if k not in defaults)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; expected some of {sorted(defaults)}")
    cfg = dict(defaults)
    if quick:
        cfg.update(quick_overrides)
    cfg.update({k: v for k, v in options.items() if v is not None})
    return cfg


def model_size_mb(model):
    return sum(v.nbytes for v in model.parameters().values()) / 2 ** 20


class MeanMaxPool(Layer):
    """Masked mean and max over the valid steps, concatenated:
    x (T, B, F) and lengths (B,) -> (B, 2F) = [mean_t x, max_t x].
    A zero-length sequence gives zeros."""
    accepts_lengths = True

    def forward(self, x, *, training=False, lengths=None):
        x = np.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"MeanMaxPool: x: expected shape (T, B, F), got {x.shape}")
        T, B, F = x.shape
        m = lengths_mask(lengths, T, B, "MeanMaxPool")
        if m is None:
            m = np.ones((T, B), bool)
        n = np.maximum(m.sum(axis=0), 1).astype(x.dtype)
        w = (m / n[None, :]).astype(x.dtype)
        mean = np.einsum("tbf,tb->bf", x, w)
        neg = np.where(m[:, :, None], x, -np.inf)
        arg = neg.argmax(axis=0)                                   # (B, F)
        mx = np.take_along_axis(x, arg[None], axis=0)[0]
        empty = ~m.any(axis=0)
        if empty.any():
            mx[empty] = 0
        if training:
            self._push((x.shape, x.dtype, w, arg, empty))
        return np.concatenate([mean, mx], axis=1)

    def backward(self, dout):
        shape, dtype, w, arg, empty = self._pop()
        T, B, F = shape
        dout = np.asarray(dout, dtype)
        dmean, dmax = dout[:, :F], dout[:, F:].copy()
        dmax[empty] = 0
        dx = w[:, :, None] * dmean[None]
        bi, fi = np.meshgrid(np.arange(B), np.arange(F), indexing="ij")
        dx[arg, bi, fi] += dmax
        return dx
