"""When the Numba backend may use its threaded kernels, and the BLAS setting they need.

The threaded kernels (fastrnn/_kernels/cpu/parallel.py) put one Numba thread
on each core and call BLAS from each of them for one block of rows.  That is
only right while the BLAS those calls reach (SciPy's OpenBLAS, which Numba's
np.dot and the kernels use) runs one thread per call: a multi-threaded
OpenBLAS called from two threads at once queues them on one worker pool
(measured: 10 ms instead of 0.2 ms for one step's GEMM), and its workers spin
on the cores long after each call.  `threaded()` therefore

  * lets only one call at a time run threaded: a call that finds the
    threads busy (another Python thread is in a threaded kernel) runs the
    one-thread kernels instead, never oversubscribing the cores;
  * sets SciPy's OpenBLAS to one thread for the duration of the threaded
    call and restores the user's setting afterwards (only the one threaded
    call touches it, so concurrent calls cannot leave it changed);
  * refuses, and the one-thread kernels run, when the BLAS thread count
    cannot be controlled (SciPy built against another BLAS), when Numba has
    one thread (numba.set_num_threads(1), NUMBA_NUM_THREADS=1), and in a
    child forked from a process that has started threaded kernels (GNU
    OpenMP, Numba's usual threading layer, cannot run in such a child).

Other libraries are left alone: NumPy's own OpenBLAS (a separate copy) and
torch's threads keep their settings.
"""
from __future__ import annotations

import ctypes
import glob
import os
import threading

_lock = threading.Lock()            # held by the one call running threaded
_blas = None                        # (get, set) of SciPy's OpenBLAS, or False
_forked_after_use = False
_used = False


# The kernels' big GEMMs (input projection, dx, dW) are SciPy's OpenBLAS.
# Its DYNAMIC_ARCH build picks a kernel set by CPU model, and on AMD Zen 4
# (family 25 with AVX-512) it picks the SkylakeX (AVX-512) kernels, while
# Zen 4 runs 512-bit FMAs at the 256-bit rate.  The Haswell (AVX2) kernels
# ran faster there, measured on the 2-core Zen 4 dev VM (one thread, SciPy's
# OpenBLAS 0.3.30, alternating processes, three rounds): 1024^3 103-108
# against 97-101 GFLOP/s, the LSTM S3 shapes' 2048x1024x128 90-105 against
# 80-99, 1024x2048x256 100-105 against 84-99, 800x128x384 106-109 against
# 58-104; two threads (the benchmark's floor GEMM) 198-209 against 184-199.
# So where the user has not chosen (OPENBLAS_CORETYPE unset), fastrnn loads
# SciPy's OpenBLAS with OPENBLAS_CORETYPE=Haswell on Zen 4, and only there,
# and takes the variable out of the environment again once the library has
# read it (child processes do not inherit it).  If SciPy's OpenBLAS is
# already loaded (scipy.linalg imported first), its choice stands.
# OPENBLAS_CORETYPE=SkylakeX (or any core) keeps OpenBLAS's own choice.
ZEN4_CORE = "Haswell"


def is_zen4(cpuinfo):
    """Whether /proc/cpuinfo's text describes AMD Zen 4: AuthenticAMD,
    cpu family 25 (Zen 3 and Zen 4) with avx512f (Zen 4 only)."""
    fields = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break                      # the first processor's block is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return (fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25"
            and "avx512f" in fields.get("flags", "").split())


def parse_cache_size(text):
    """Bytes from a sysfs cache size ("512K", "32768K", "1M", "65536"), or None."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    return int(digits) * scale if digits.isdigit() and int(digits) > 0 else None


def cache_bytes(level, default, root="/sys/devices/system/cpu/cpu0/cache"):
    """The size of CPU 0's data (or unified) cache of `level` in bytes, from
    Linux's sysfs; `default` where that cannot be read (another OS, a
    container hiding it).  The backend sizes a few loop forms by it
    (numba_cpu.FUSED_STEP_MAX_BYTES)."""
    for index in sorted(glob.glob(os.path.join(root, "index*"))):
        try:
            with open(os.path.join(index, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(index, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(index, "size")) as f:
                size = parse_cache_size(f.read())
        except (OSError, ValueError):
            continue
        if size:
            return size
    return default


def blas_core_for_this_cpu():
    """The OPENBLAS_CORETYPE fastrnn loads SciPy's OpenBLAS with, or None
    (the user's setting, or OpenBLAS's own choice)."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return None
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read(1 << 16)
    except OSError:
        return None
    return ZEN4_CORE if is_zen4(text) else None


def _import_scipy_blas():
    """Import scipy.linalg.cython_blas (which loads SciPy's OpenBLAS), with
    OPENBLAS_CORETYPE set for the load where blas_core_for_this_cpu says so."""
    core = blas_core_for_this_cpu()
    if core is not None:
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library)
    finally:
        if core is not None:
            os.environ.pop("OPENBLAS_CORETYPE", None)


_corename = None


def blas_core():
    """The kernel set SciPy's OpenBLAS runs (e.g. 'Haswell'), or None if
    that cannot be asked."""
    return _corename


def _find_scipy_openblas():
    """(get_num_threads, set_num_threads) of the OpenBLAS that SciPy's
    cython_blas (and so Numba's BLAS calls) links, or None."""
    global _corename
    try:
        import scipy
        _import_scipy_blas()
    except Exception:
        return None
    base = os.path.dirname(os.path.dirname(scipy.__file__))
    pats = [os.path.join(base, "scipy.libs", "*openblas*"),
            os.path.join(os.path.dirname(scipy.__file__), ".dylibs", "*openblas*")]
    for pat in pats:
        for path in sorted(glob.glob(pat)):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix in ("scipy_", ""):
                try:
                    get = getattr(lib, prefix + "openblas_get_num_threads")
                    set_ = getattr(lib, prefix + "openblas_set_num_threads")
                except AttributeError:
                    continue
                get.restype = ctypes.c_int
                get.argtypes = []
                set_.restype = None
                set_.argtypes = [ctypes.c_int]
                corename = getattr(lib, prefix + "openblas_get_corename", None)
                if corename is not None:
                    corename.restype = ctypes.c_char_p
                    corename.argtypes = []
                    _corename = corename().decode("ascii", "replace")
                return get, set_
    return None


def _blas_control():
    global _blas
    if _blas is None:
        _blas = _find_scipy_openblas() or False
    return _blas


def blas_threads():
    """SciPy's OpenBLAS's thread count now (the BLAS the kernels call),
    or 0 where fastrnn cannot ask it."""
    blas = _blas_control()
    return blas[0]() if blas else 0


def _after_fork_in_child():
    global _forked_after_use, _lock
    if _used:
        _forked_after_use = True
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# numba.get_num_threads until its first call (which starts Numba's threads),
# then the C function it calls after its locked initialisation check: 0.2
# against 1.6 us, twice per call of the kernels (forward and BPTT).  Both read
# the calling thread's setting (numba.set_num_threads is per thread).
_numba_threads = None


def _numba_thread_count():
    global _numba_threads
    get = _numba_threads
    if get is not None:
        return get()
    import numba
    n = numba.get_num_threads()
    get = numba.get_num_threads
    try:
        from numba.np.ufunc import parallel
        if parallel._get_num_threads() == n:
            get = parallel._get_num_threads
    except Exception:  # pragma: no cover - another Numba's internals
        pass
    _numba_threads = get
    return n


def _state():
    """(threads the threaded kernels would use now, or 1; why 1, or None)."""
    if _forked_after_use:
        return 1, "this process was forked from one that had started Numba threads (GNU OpenMP is not fork-safe)"
    if not _blas_control():
        return 1, "SciPy's BLAS is not an OpenBLAS whose thread count fastrnn can set"
    n = _numba_thread_count()
    if n < 2:
        return 1, "Numba has one thread (numba.set_num_threads / NUMBA_NUM_THREADS)"
    return n, None


def available_threads():
    """How many threads the threaded kernels would use now (1: they would not run)."""
    return _state()[0]


def why_single():
    """A sentence on why the kernels run on one thread, or None."""
    return _state()[1]


def _ctypes_hold():
    """threaded()'s entry through ctypes: (Numba's thread count, OpenBLAS's
    count before this set it to 1; 0 where nothing was changed: fewer than
    2 Numba threads, or an OpenBLAS fastrnn cannot reach)."""
    blas = _blas_control()
    n = _numba_thread_count() if blas else 1
    if n < 2:
        return n, 0
    get, set_ = blas
    saved = get()
    if saved != 1:
        set_(1)
    return n, saved


# The same entry and the exit compiled, where the Numba backend gives them
# (kernels/cpu/blasctl.py): the ctypes calls took 12 us after a torch.nn
# call, the compiled ones ~3.
_hold = _restore = None


def use_compiled_hold(install):
    """Give threaded() the compiled hold: install(get, set) registers
    SciPy's OpenBLAS's two functions and returns (hold, restore)
    (blasctl.install).  Nothing happens where fastrnn cannot reach that
    OpenBLAS (threaded() then always returns 1)."""
    global _hold, _restore
    blas = _blas_control()
    if blas and _hold is None:
        _hold, _restore = install(*blas)


class threaded:
    """A context whose value is the number of threads the caller may use
    (>= 2), or 1 when it must run the one-thread kernels (see the module
    docstring).  A class rather than a generator context: entered twice
    per call of the kernels, where a @contextmanager's generator cost
    ~1.5 us of a one-thread call's ~10 us of Python."""

    __slots__ = ("_saved",)

    def __enter__(self):
        global _used
        self._saved = None
        # _state's checks: the fork first, the rest in the hold
        if _forked_after_use or not _lock.acquire(blocking=False):
            return 1
        try:
            nth, saved = (_hold or _ctypes_hold)()
        except BaseException:
            _lock.release()
            raise
        if nth < 2:
            _lock.release()
            return 1
        self._saved = saved
        _used = True
        return nth

    def __exit__(self, *exc):
        saved = self._saved
        if saved is not None:
            self._saved = None
            try:
                if saved != 1:
                    (_restore or _blas[1])(saved)
            finally:
                _lock.release()
        return False
