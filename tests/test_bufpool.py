"""The Numba backend's buffer cache (fastrnn/_backends/bufpool.py): a buffer
is handed out again only when nothing refers to it any more."""
import subprocess
import sys

import numpy as np
import pytest

from fastrnn._backends import bufpool

MB = 1 << 20


@pytest.fixture
def cache(monkeypatch):
    monkeypatch.setattr(bufpool, "MIN_BYTES", 1024)
    return bufpool.BufferCache(64 * MB)


def _buf(a):
    """The cached buffer an array is a view of."""
    while a.base is not None:
        a = a.base
    return a


def test_a_buffer_in_use_is_not_handed_out_again(cache):
    a = cache.empty((256, 256), np.float32)
    b = cache.empty((256, 256), np.float32)
    assert _buf(a) is not _buf(b)
    view = a[3:7]                           # a view keeps the buffer in use
    del a
    c = cache.empty((256, 256), np.float32)
    assert _buf(c) is not _buf(view) and cache.hits == 0
    base = id(_buf(view))        # an id: a reference would keep the buffer in use
    del view
    d = cache.empty((128, 512), np.float32)   # same bytes, other shape: reused
    assert id(_buf(d)) == base and cache.hits == 1
    assert d.shape == (128, 512) and d.dtype == np.float32 and d.flags.c_contiguous
    e = cache.empty((32768,), np.float64)     # nothing free: a new buffer
    assert cache.misses == 4 and len({id(_buf(x)) for x in (b, c, d, e)}) == 4


def test_other_sizes_and_small_arrays(cache):
    a = cache.empty((1000,), np.float32)
    big = id(_buf(a))
    del a
    b = cache.empty((3000,), np.float32)                          # more than the free one: new
    assert cache.hits == 0
    mid = id(_buf(b))
    del b
    c = cache.empty((900,), np.float32)                           # the smallest free one that fits
    assert cache.hits == 1 and id(_buf(c)) == big and c.shape == (900,)
    d = cache.empty((1000,), np.float32)                          # 3000 > 2 x 1000: not reused
    assert cache.hits == 1 and id(_buf(d)) not in (big, mid)
    e = cache.empty((1600,), np.float32)                          # 3000 <= 2 x 1600: reused
    assert cache.hits == 2 and id(_buf(e)) == mid
    c[:] = 1
    e[:] = 2
    assert float(c.sum()) == 900, "two arrays on one buffer"
    assert cache.empty([2, 600], "float32").shape == (2, 600)        # a list, a dtype name
    small = cache.empty((10,), np.float64)                         # under MIN_BYTES: np.empty
    assert small.base is None and cache.stats()["buffers"] == 4


def test_a_torch_tensor_keeps_its_buffer(cache):
    torch = pytest.importorskip("torch")
    a = cache.empty((64, 64), np.float32)
    a[:] = 1
    t = torch.from_numpy(a.reshape(-1))
    ids = {id(_buf(a))}
    del a
    b = cache.empty((64, 64), np.float32)
    b[:] = 2
    assert float(t.sum()) == 64 * 64, "the tensor's memory was handed out again"
    ids.add(id(_buf(b)))
    del t, b
    assert id(_buf(cache.empty((4096,), np.float32))) in ids and cache.hits == 1


def test_free_bytes_stay_under_the_cap(monkeypatch):
    monkeypatch.setattr(bufpool, "MIN_BYTES", 1024)
    cache = bufpool.BufferCache(3 * MB)
    held = [cache.empty((MB,), np.uint8) for _ in range(5)]     # in use: never dropped
    assert cache.stats()["bytes"] == 5 * MB
    del held
    b = cache.empty((2 * MB,), np.uint8)    # 5 MB free + 2 MB new: drop the oldest down to 1 MB free
    st = cache.stats()
    assert st["bytes_free"] <= 3 * MB - 2 * MB and st["bytes_in_use"] == 2 * MB, st
    # the new buffer is the cache's after the trim too (it once went into
    # the list the trim had replaced, and was never handed out again)
    del b
    hits = cache.hits
    cache.empty((2 * MB,), np.uint8)
    assert cache.hits == hits + 1, "the buffer allocated after a trim was not kept"
    total = cache.stats()["bytes"]
    assert cache.release() == total and cache.stats()["buffers"] == 0


def test_release_keeps_buffers_in_use(cache):
    a = cache.empty((512,), np.float64)
    b = cache.empty((1024,), np.float64)
    del b
    assert cache.release() == 1024 * 8
    a[:] = 3
    assert cache.stats()["bytes_in_use"] == 512 * 8 and float(a.sum()) == 3 * 512


def test_cap_zero_turns_the_cache_off(monkeypatch):
    monkeypatch.setattr(bufpool, "MIN_BYTES", 0)
    cache = bufpool.BufferCache(0)
    a = cache.empty((100, 100), np.float32)
    assert not cache.enabled and cache.stats()["buffers"] == 0
    # a fresh array each call, still on a cache line (aligned_empty)
    b = cache.empty((100, 100), np.float32)
    assert a.ctypes.data % bufpool.ALIGN == 0 and b.ctypes.data % bufpool.ALIGN == 0
    a[:] = 1
    b[:] = 2
    assert float(a.sum()) == 100 * 100


def test_every_array_starts_on_a_cache_line(monkeypatch):
    """New buffers, reused ones (smaller requests in bigger buffers, other
    dtypes) and those kept after a trim: each array starts on ALIGN bytes,
    and is as long as asked, inside its buffer."""
    monkeypatch.setattr(bufpool, "MIN_BYTES", 1024)
    cache = bufpool.BufferCache(3 * MB)
    rng = np.random.default_rng(0)
    live = []
    for step in range(200):
        n = int(rng.integers(1024, MB))
        dt = (np.float32, np.float64, np.uint8)[step % 3]
        a = cache.empty((n // np.dtype(dt).itemsize,), dt)
        assert a.ctypes.data % bufpool.ALIGN == 0, (step, a.ctypes.data % bufpool.ALIGN)
        buf = a.base
        while not (buf.base is None):
            buf = buf.base
        start = a.ctypes.data - buf.ctypes.data
        assert 0 <= start < bufpool.ALIGN and start + a.nbytes <= buf.nbytes
        a.view(np.uint8)[:] = step % 251      # writes all of it (a short view would raise above)
        live.append(a)
        if len(live) > 3:                     # some kept, most freed: hits, misses and trims
            live.pop(int(rng.integers(0, len(live))))
    assert cache.hits > 0 and cache.misses > 0
    assert cache.stats()["bytes_free"] <= 3 * MB


@pytest.mark.parametrize("value,msg", [("lots", "expected a number"), ("-5", ">= 0")])
def test_bad_environment_setting_is_a_clear_error(value, msg):
    out = subprocess.run([sys.executable, "-c", "import fastrnn._backends.bufpool"], capture_output=True,
                         text=True, env={"FASTRNN_BUFFER_CACHE_MB": value, "PATH": ""})
    assert out.returncode != 0 and "FASTRNN_BUFFER_CACHE_MB" in out.stderr and msg in out.stderr, out.stderr


def test_the_backend_allocates_big_arrays_from_the_cache_and_release_frees_them():
    import fastrnn
    T, B, I, H = 16, 8, 32, 256             # LSTM: saved gates (T, B, 4H) are 512 KB
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w = [(0.1 * rng.standard_normal(s)).astype(np.float32) for s in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]
    y, _, saved = fastrnn.rnn_forward("lstm", x, w, training=True, backend="numba")
    first = np.array(y)
    st = bufpool.CACHE.stats()
    if not st["enabled"]:
        pytest.skip("the buffer cache is off here (FASTRNN_BUFFER_CACHE_MB=0 or a free-threaded Python)")
    assert st["bytes_in_use"] >= T * B * 4 * H * 4, st
    del saved, y
    hits = bufpool.CACHE.hits
    y, _, saved = fastrnn.rnn_forward("lstm", x, w, training=True, backend="numba")
    assert bufpool.CACHE.hits > hits and np.array_equal(y, first)
    del saved, y
    assert fastrnn.release_cached_buffers() >= T * B * 4 * H * 4
    assert bufpool.CACHE.stats()["bytes_free"] == 0


def test_threads_never_share_a_buffer(monkeypatch):
    """Four Python threads take and drop arrays of a few sizes as fast as they
    can; each fills its array with its own tag and checks it is still there
    after the others have had time to take buffers."""
    import threading
    import time
    monkeypatch.setattr(bufpool, "MIN_BYTES", 1024)
    cache = bufpool.BufferCache(64 * MB)
    errors = []

    def work(tag):
        rng = np.random.default_rng(tag)
        held = []
        for _ in range(300):
            a = cache.empty((int(rng.choice([1000, 1500, 4000])),), np.float64)
            a[:] = tag
            held.append(a)
            time.sleep(0)
            if len(held) > 3:
                b = held.pop(0)
                if not np.all(b == tag):
                    errors.append(f"thread {tag}: its array was handed to another thread")
                    return
    ths = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert not errors, errors[:3]
    assert cache.hits > 100, cache.stats()


def test_varying_lengths_keep_the_cache_bounded(monkeypatch):
    """A loop over batches whose arrays change size every step: the cache
    holds at most the cap's worth of free buffers besides the ones in use."""
    monkeypatch.setattr(bufpool, "MIN_BYTES", 1024)
    cache = bufpool.BufferCache(2 * MB)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = cache.empty((int(rng.integers(10_000, 60_000)),), np.float32)   # 40-240 KB
        b = cache.empty((int(rng.integers(10_000, 60_000)),), np.float32)
        st = cache.stats()
        assert st["bytes_free"] <= 2 * MB, st
        del a, b
    assert cache.hits > 50, cache.stats()


def test_a_batch_first_x_and_dy_are_copied_into_the_cache(monkeypatch):
    # x and dy seen time-major through a transposed view (batch-first data):
    # their C-contiguous copies come from the cache, and the results are
    # those of C-contiguous inputs, bit for bit.  Copied first, in
    # functional, where the backend does not take them as they lie (the
    # forms that do: tests/test_batch_major.py)
    import fastrnn
    from fastrnn._backends import numba_cpu
    monkeypatch.setattr(numba_cpu.NumbaCPU, "ACCEPTS_BATCH_MAJOR", False)
    if not bufpool.CACHE.stats()["enabled"]:
        pytest.skip("the buffer cache is off here (FASTRNN_BUFFER_CACHE_MB=0 or a free-threaded Python)")
    T, B, I, H = 40, 16, 128, 128           # x and dy 320 KB each, over MIN_BYTES
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((B, T, I)).astype(np.float32)
    dyb = rng.standard_normal((B, T, H)).astype(np.float32)
    w = [(0.1 * rng.standard_normal(s)).astype(np.float32) for s in ((3 * H, I), (3 * H, H), (3 * H,), (3 * H,))]
    asked = []
    empty = bufpool.CACHE.empty

    def spy(shape, dtype):
        asked.append(tuple(shape))
        return empty(shape, dtype)
    monkeypatch.setattr(bufpool.CACHE, "empty", spy)
    x, dy = xb.transpose(1, 0, 2), dyb.transpose(1, 0, 2)
    y, h, saved = fastrnn.rnn_forward("gru", x, w, training=True, backend="numba")
    assert asked[0] == (T, B, I), asked          # x's copy, before the kernels' arrays
    del asked[:]
    grads = fastrnn.rnn_backward(saved, dy)
    assert asked[0] == (T, B, H), asked
    monkeypatch.setattr(bufpool.CACHE, "empty", empty)
    y2, h2, saved2 = fastrnn.rnn_forward("gru", np.ascontiguousarray(x), w, training=True, backend="numba")
    grads2 = fastrnn.rnn_backward(saved2, np.ascontiguousarray(dy))
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(h, h2)
    for a, b in zip(grads[:2] + tuple(grads[2]), grads2[:2] + tuple(grads2[2])):
        np.testing.assert_array_equal(a, b)


def test_tiny_calls_skip_the_cache():
    """A call whose biggest array is under MIN_BYTES allocates with plain
    np.empty (no size check per array); a big one with the cache; an
    allocator a test put in place is used at every size."""
    from fastrnn._backends import numba_cpu
    f32 = np.dtype(np.float32)
    assert numba_cpu._allocator(1, 1, 16, f32) is np.empty
    big = numba_cpu._allocator(64, 32, 1024, f32)
    assert big is numba_cpu._empty and big is not np.empty


def test_a_replaced_allocator_reaches_tiny_calls(monkeypatch):
    from fastrnn._backends import numba_cpu

    def mine(shape, dtype):
        return np.empty(shape, dtype)
    monkeypatch.setattr(numba_cpu, "_empty", mine)
    assert numba_cpu._allocator(1, 1, 16, np.dtype(np.float32)) is mine
