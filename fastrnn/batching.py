"""Padding, masks, mini-batches and BPTT windows.

Everything here is re-exported by :mod:`fastrnn.data`; import it from there.

Shapes follow the kernels' contract: time-major ``(T, B)`` id arrays (int64)
and ``lengths`` ``(B,)`` int64, so ``rnn_forward(embed(ids), ..., lengths=lengths)``
works directly. ``time_major=False`` gives ``(B, T)`` instead.
"""
from __future__ import annotations

from typing import Any, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "pad_sequences", "length_mask", "Batch", "iterate_batches",
    "batchify", "bptt_batches", "random_windows",
]

SeedLike = Union[None, int, np.random.Generator]


def _rng(seed: SeedLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int = 0, time_major: bool = True,
                  max_len: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Pad variable-length id sequences.

    Returns ``(ids, lengths)``: ``ids`` int64 ``(T, B)`` (``(B, T)`` when
    ``time_major=False``) with ``pad_id`` after each sequence's end, and
    ``lengths`` int64 ``(B,)``. ``T = max(lengths)``, at least 1 (so an
    all-empty batch still gives a valid array). ``max_len`` truncates longer
    sequences (keeping their start) and their lengths.
    """
    if len(seqs) == 0:
        raise ValueError("pad_sequences: seqs is empty; expected at least one sequence")
    if max_len is not None and max_len < 1:
        raise ValueError(f"pad_sequences: max_len must be >= 1 or None, got {max_len}")
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    if max_len is not None:
        np.minimum(lengths, max_len, out=lengths)
    T = max(int(lengths.max()), 1)
    out = np.full((len(seqs), T), pad_id, dtype=np.int64)
    for b, (s, n) in enumerate(zip(seqs, lengths)):
        if n:
            out[b, :n] = np.asarray(s[:n] if max_len is not None else s, dtype=np.int64)
    return (np.ascontiguousarray(out.T) if time_major else out), lengths


def length_mask(lengths: np.ndarray, T: Optional[int] = None, time_major: bool = True) -> np.ndarray:
    """Boolean mask of valid steps: ``(T, B)`` (or ``(B, T)``), True where ``t < lengths[b]``."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"length_mask: lengths must be (B,), got shape {lengths.shape}")
    T = int(lengths.max(initial=0)) if T is None else T
    m = np.arange(T)[:, None] < lengths[None, :]
    return m if time_major else np.ascontiguousarray(m.T)


class Batch(NamedTuple):
    """One mini-batch.

    inputs          int64 (T, B) padded ids (or (B, T) when time_major=False)
    lengths         int64 (B,) valid steps of each input
    targets         None; int64 (B,) for one label per example; or padded
                    int64 (T', B) / (B, T') for sequence targets
    target_lengths  int64 (B,) for sequence targets, else None
    indices         int64 (B,) positions of the examples in the dataset given
    """
    inputs: np.ndarray
    lengths: np.ndarray
    targets: Optional[np.ndarray]
    target_lengths: Optional[np.ndarray]
    indices: np.ndarray


def _is_scalar_label(x: Any) -> bool:
    return np.ndim(x) == 0


def _batch_order(lengths: np.ndarray, batch_size: int, shuffle: bool, seed: SeedLike,
                 bucket_size: Optional[int]) -> List[np.ndarray]:
    n = len(lengths)
    rng = _rng(seed) if shuffle else None
    order = rng.permutation(n) if shuffle else np.arange(n)
    if bucket_size:
        chunks = [order[i:i + bucket_size] for i in range(0, n, bucket_size)]
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if shuffle and bucket_size:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def iterate_batches(inputs: Sequence[Sequence[int]], targets: Optional[Sequence[Any]] = None,
                    batch_size: int = 32, shuffle: bool = False, seed: SeedLike = 0,
                    bucket_size: Optional[int] = None, drop_last: bool = False,
                    time_major: bool = True, pad_id: int = 0, target_pad_id: int = 0,
                    max_len: Optional[int] = None) -> Iterator[Batch]:
    """Yield :class:`Batch` es covering every example exactly once (unless ``drop_last``).

    inputs        N id sequences (lists or 1-D arrays of ints)
    targets       None; N scalar labels (-> (B,) int64); or N id sequences
                  (tags for NER, target sentences for translation; padded with
                  ``target_pad_id``)
    shuffle/seed  seeded permutation of the examples; pass ``seed=epoch`` (or a
                  shared ``np.random.Generator``) for a new order each epoch
    bucket_size   when set: cut the (shuffled) order into chunks of this many
                  examples, sort each chunk by input length (longest first),
                  cut into batches, then shuffle the batch order (when
                  ``shuffle``). Much less padding; ~``50 * batch_size`` is typical.
    drop_last     drop a final batch smaller than ``batch_size``
    max_len       truncate inputs (and sequence targets) to this many steps
    """
    n = len(inputs)
    if batch_size < 1:
        raise ValueError(f"iterate_batches: batch_size must be >= 1, got {batch_size}")
    if bucket_size is not None and bucket_size < 1:
        raise ValueError(f"iterate_batches: bucket_size must be >= 1 or None, got {bucket_size}")
    if targets is not None and len(targets) != n:
        raise ValueError(f"iterate_batches: targets has {len(targets)} items, inputs has {n}")
    if n == 0:
        return
    scalar = targets is not None and _is_scalar_label(targets[0])
    label_arr = np.asarray(targets, dtype=np.int64) if scalar else None
    lengths = np.fromiter((len(s) for s in inputs), dtype=np.int64, count=n)
    for idx in _batch_order(lengths, batch_size, shuffle, seed, bucket_size):
        if drop_last and len(idx) < batch_size:
            continue
        x, xl = pad_sequences([inputs[i] for i in idx], pad_id, time_major, max_len)
        y = yl = None
        if scalar:
            y = label_arr[idx]
        elif targets is not None:
            y, yl = pad_sequences([targets[i] for i in idx], target_pad_id, time_major, max_len)
        yield Batch(x, xl, y, yl, idx.astype(np.int64))


def batchify(ids: Sequence[int], batch_size: int) -> np.ndarray:
    """Cut one long id stream into ``batch_size`` contiguous parallel streams.

    Returns int64 ``(N, B)`` with ``N = len(ids) // B`` (the tail is dropped):
    column ``b`` is ``ids[b*N:(b+1)*N]``, so a stateful RNN reading rows in
    order sees each column as one continuous text (PyTorch's word_language_model).
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"batchify: ids must be 1-D, got shape {ids.shape}")
    n = len(ids) // batch_size if batch_size >= 1 else 0
    if n < 2:
        raise ValueError(f"batchify: need batch_size >= 1 and at least 2*batch_size ids, "
                         f"got batch_size={batch_size}, {len(ids)} ids")
    return np.ascontiguousarray(ids[:n * batch_size].reshape(batch_size, n).T)


def bptt_batches(ids: Sequence[int], batch_size: int, seq_len: int) -> Iterator[Batch]:
    """Consecutive (T, B) truncated-BPTT windows over an id stream (language modelling).

    ``batchify(ids, batch_size)`` then windows of ``seq_len`` rows: ``inputs`` =
    rows ``[i, i+T)``, ``targets`` = rows ``[i+1, i+T+1)`` (next token); the last
    window may be shorter. Carry the hidden state from one window to the next
    (detached). ``lengths`` is all T; ``indices`` holds the window's start row.
    """
    if seq_len < 1:
        raise ValueError(f"bptt_batches: seq_len must be >= 1, got {seq_len}")
    data = batchify(ids, batch_size)
    N = data.shape[0]
    for i in range(0, N - 1, seq_len):
        T = min(seq_len, N - 1 - i)
        yield Batch(data[i:i + T], np.full(batch_size, T, dtype=np.int64),
                    data[i + 1:i + 1 + T], None, np.array([i], dtype=np.int64))


def random_windows(ids: Sequence[int], batch_size: int, seq_len: int,
                   seed: SeedLike = 0, time_major: bool = True) -> Batch:
    """One batch of ``batch_size`` windows at random offsets (nanoGPT-style sampling).

    ``inputs`` ``ids[o:o+T]``, ``targets`` ``ids[o+1:o+T+1]``, as (T, B); ``indices``
    holds the offsets ``o``. Pass a shared ``np.random.Generator`` as ``seed``
    to draw a fresh batch on every call.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < seq_len + 1:
        raise ValueError(f"random_windows: need at least seq_len+1={seq_len + 1} ids, got {len(ids)}")
    offs = _rng(seed).integers(0, len(ids) - seq_len, size=batch_size)
    rows = offs[:, None] + np.arange(seq_len)[None, :]
    x, y = ids[rows], ids[rows + 1]
    if time_major:
        x, y = np.ascontiguousarray(x.T), np.ascontiguousarray(y.T)
    return Batch(x, np.full(batch_size, seq_len, dtype=np.int64), y, None, offs.astype(np.int64))
