"""A cache of the big arrays the Numba backend allocates each call.

Why.  A training step allocates, per layer and direction, the saved
activations (LSTM: gates, cell states, tanh(c), previous h: 7*T*B*H
values), the input projection, the output, and in the backward the gate
gradients and dx: 24 MB for one LSTM forward at S3 (B=32, T=64, I=128,
H=256).  glibc hands arrays that big out as fresh pages, and every page is
faulted in and zeroed by the kernel on first touch: measured on the 2-core
dev VM, 540 000 page faults over 137 training forwards at S3 (3 900 per
call, 15 MB), and the training forward took 34 ms against 20 ms for the
inference forward, whose arrays are fewer.  A loop of the same 24 MB of
arrays, allocated and touched each iteration with the previous set still
alive, cost 6 ms per iteration in page faults alone.

How.  `empty(shape, dtype)` for arrays of at least MIN_BYTES returns a view
of a cached 1-D byte buffer that nothing uses any more, the smallest one
of at least that size and at most twice it (so that a loop over batches of
varying length, whose arrays differ in size from step to step, still
reuses memory), or of a new one.  "Nothing uses it" is read from the buffer's
reference count: every view of a buffer (the array handed out, its
reshapes and slices, a torch tensor made with torch.from_numpy, a DLPack
capsule, a memoryview) holds a reference to it, so a buffer whose only
references are the cache's own is free, whoever held it before.  No call
has to give memory back; a buffer comes back to use when the last array
on it dies.  Arrays are handed out uninitialised, like np.empty: a reused
buffer holds the values of its last use (the kernel tests poison cached
buffers with NaN to show that no element is left unwritten).

Bounds.  Buffers in use are never dropped.  Free ones are dropped, oldest
first, when free bytes exceed the cap (FASTRNN_BUFFER_CACHE_MB, default
1024; 0 turns the cache off: every array comes from np.empty).
`release()` (fastrnn.release_cached_buffers) drops every free buffer now.
The cache keeps what the last steps used at their peak, as PyTorch's CUDA
caching allocator does; it is per process (a fork's child starts empty).

Alignment.  Every array starts on a 64-byte cache line (ALIGN; np.empty's
big arrays start 16 bytes past one: glibc's header of an mmapped chunk).
The threaded loops by rows write rows i, i + nth, ... of the same arrays
(y, the saved activations, dG) from different threads; with rows a
multiple of 64 bytes long and the array's start off a line, the line at
every row boundary is written by two cores at once and moves between
their caches each step, and every 512-bit access of a row split two lines.
Measured (the twenty-fifth session's Intel VM, fastrnn.torch fwd+bwd,
each call right after a torch.nn one, the two alignments swapping places
every repetition in one process, medians of 15-31): torch at 2 threads,
LSTM S2 1.10x, S3 1.09x, GRU S2 1.05-1.06x, S3 1.07-1.08x; torch at one
thread, LSTM S3 1.05x.

The reference count test needs CPython with the GIL; on a free-threaded
build the cache is off (arrays from aligned_empty then).
"""
from __future__ import annotations

import os
import sys
import threading
from math import prod

import numpy as np

MIN_BYTES = 1 << 18     # below this glibc reuses freed heap memory without page faults
ALIGN = 64              # bytes: where every array from here starts (see Alignment above)


def _offset(buf):
    """Bytes from buf's start to its first ALIGN-aligned byte."""
    return -buf.__array_interface__["data"][0] % ALIGN


def _aligned_bytes(n):
    """(buf, off): a byte buffer ALIGN bytes longer than n, whose bytes
    [off, off + n) start on an ALIGN-byte boundary."""
    buf = np.empty(n + ALIGN, np.uint8)
    return buf, _offset(buf)


def aligned_empty(shape, dtype):
    """np.empty(shape, dtype) starting on an ALIGN-byte boundary (a view of
    a byte buffer ALIGN bytes longer)."""
    dtype = np.dtype(dtype)
    n = (shape if type(shape) is int else prod(shape)) * dtype.itemsize
    buf, off = _aligned_bytes(n)
    return buf[off:off + n].view(dtype).reshape(shape)


def _cap_from_env():
    v = os.environ.get("FASTRNN_BUFFER_CACHE_MB", "1024")
    try:
        mb = float(v)
    except ValueError:
        raise ValueError(f"FASTRNN_BUFFER_CACHE_MB: expected a number of megabytes (0 turns the "
                         f"cache off), got {v!r}") from None
    if mb < 0:
        raise ValueError(f"FASTRNN_BUFFER_CACHE_MB: expected >= 0 megabytes, got {v!r}")
    return int(mb * (1 << 20))


def _refs(bufs, i):
    return sys.getrefcount(bufs[i])


# what _refs reads for a buffer only the cache's list holds (measured, not
# assumed: the count an expression adds differs between CPython versions)
_FREE_REFS = _refs([np.empty(1)], 0)


class BufferCache:
    def __init__(self, cap_bytes):
        self.cap = cap_bytes
        gil = getattr(sys, "_is_gil_enabled", lambda: True)()
        self.enabled = cap_bytes > 0 and gil
        self._lock = threading.Lock()
        self._bufs = []          # 1-D uint8 arrays, oldest first, each ALIGN bytes over its size
        self._sizes = []         # their sizes in bytes (the scan reads ints, not .nbytes)
        self._offs = []          # where each one's aligned bytes start
        self.hits = self.misses = 0

    def empty(self, shape, dtype):
        # on every call's path, tiny ones included: kept to a few C calls
        if type(dtype) is type or isinstance(dtype, str):
            dtype = np.dtype(dtype)
        n = (shape if type(shape) is int else prod(shape)) * dtype.itemsize
        if n < MIN_BYTES:
            return np.empty(shape, dtype)
        if not self.enabled:
            return aligned_empty(shape, dtype)
        with self._lock:
            bufs = self._bufs
            sizes = self._sizes
            best, size = -1, 2 * n + 1
            i = 0
            for b in sizes:
                if n <= b < size and _refs(bufs, i) == _FREE_REFS:
                    best, size = i, b
                    if b == n:
                        break
                i += 1
            if best >= 0:
                buf = bufs.pop(best)
                bufs.append(buf)      # most recently used last: the eviction drops the oldest
                sizes.append(sizes.pop(best))
                off = self._offs.pop(best)
                self._offs.append(off)
                self.hits += 1
                return buf[off:off + n].view(dtype).reshape(shape)
            self.misses += 1
            self._trim(self.cap - n)
            buf, off = _aligned_bytes(n)
            self._bufs.append(buf)
            self._sizes.append(n)
            self._offs.append(off)
            return buf[off:off + n].view(dtype).reshape(shape)

    def _trim(self, keep):
        """Drop free buffers, oldest first, until free bytes <= keep (lock held)."""
        bufs = self._bufs
        free = [i for i in range(len(bufs)) if _refs(bufs, i) == _FREE_REFS]
        sizes = self._sizes
        total = sum(sizes[i] for i in free)
        drop = set()
        for i in free:
            if total <= keep:
                break
            drop.add(i)
            total -= sizes[i]
        if drop:
            kept = [i for i in range(len(bufs)) if i not in drop]
            self._bufs = [bufs[i] for i in kept]
            self._sizes = [sizes[i] for i in kept]
            self._offs = [self._offs[i] for i in kept]

    def release(self):
        """Drop every free buffer; returns the bytes released."""
        with self._lock:
            before = sum(self._sizes)
            self._trim(0)
            return before - sum(self._sizes)

    def stats(self):
        with self._lock:
            bufs = self._bufs
            used = sum(self._sizes[i] for i in range(len(bufs)) if _refs(bufs, i) != _FREE_REFS)
            total = sum(self._sizes)
        return dict(enabled=self.enabled, buffers=len(self._bufs), bytes=total, bytes_in_use=used,
                    bytes_free=total - used, cap_bytes=self.cap, hits=self.hits, misses=self.misses)


CACHE = BufferCache(_cap_from_env())


def _after_fork_in_child():
    # the child's copies of the buffers are its own; start with a fresh lock
    CACHE._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
