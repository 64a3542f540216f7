"""Load the CUDA sources of this folder as CuPy RawModules.

One module per (source, dtype), compiled by NVRTC on first use and cached
(CuPy also keeps the binary in its on-disk kernel cache).  The dtype is chosen
with ``-DFRNN_SCALAR=float|double``; the kernels are ``extern "C"``, so their
names need no mangling.

Sources:
    rnn.cu, gru.cu, lstm.cu   the cells and their general-path step kernels
                              (``<mode>_fwd_step``, ``<mode>_bwd_step``)
    persistent.cu             the persistent small-batch kernels
                              (``persist_fwd_<mode>``, ``persist_bwd_<mode>``),
                              compiled with enable_cooperative_groups=True so
                              that CuPy launches them with cuLaunchCooperativeKernel

``source(name)`` returns exactly the text NVRTC compiles (``#include "x"`` of
this folder's files inlined, each file once), so that a test can compile the
same text with nvcc where there is no GPU.  Nothing here imports CuPy at
import time.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

__all__ = ["SOURCES", "MODE_SOURCE", "source", "options", "module", "get_kernel",
           "fwd_step_name", "bwd_step_name", "persist_fwd_name", "persist_bwd_name",
           "kernel_names", "source_path"]

_DIR = Path(__file__).resolve().parent

SOURCES = ("rnn", "gru", "lstm", "persistent")
MODE_SOURCE = {"rnn_tanh": "rnn", "rnn_relu": "rnn", "gru": "gru", "lstm": "lstm"}
COOPERATIVE = frozenset({"persistent"})
_SCALAR = {"float32": "float", "float64": "double"}

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)
_LOCK = threading.Lock()
_MODULES: dict = {}
_KERNELS: dict = {}


def fwd_step_name(mode: str) -> str:
    return f"{mode}_fwd_step"


def bwd_step_name(mode: str) -> str:
    return f"{mode}_bwd_step"


def persist_fwd_name(mode: str) -> str:
    return f"persist_fwd_{mode}"


def persist_bwd_name(mode: str) -> str:
    return f"persist_bwd_{mode}"


def source_path(name: str) -> Path:
    """Path of the top-level source ``name`` (one of SOURCES)."""
    if name not in SOURCES:
        raise ValueError(f"name: expected one of {', '.join(SOURCES)}, got {name!r}")
    return _DIR / f"{name}.cu"


def _inline(path: Path, seen: set) -> str:
    text = path.read_text(encoding="utf-8")

    def repl(m):
        inc = (_DIR / m.group(1)).resolve()
        if not inc.is_file():
            raise FileNotFoundError(f"{path.name}: #include \"{m.group(1)}\" not found in {_DIR}")
        if inc in seen:
            return f"// (#include \"{m.group(1)}\": already inlined)"
        seen.add(inc)
        return f"// ---- begin {m.group(1)}\n{_inline(inc, seen)}\n// ---- end {m.group(1)}"

    return _INCLUDE.sub(repl, text)


def source(name: str) -> str:
    """The self-contained CUDA C++ text of source ``name`` (includes inlined)."""
    path = source_path(name)
    return _inline(path, {path.resolve()})


def options(dtype) -> tuple:
    """NVRTC options for a dtype ('float32' or 'float64').  CuPy adds the
    architecture and -ftz=true itself."""
    key = str(getattr(dtype, "name", dtype))
    if key not in _SCALAR:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    return ("-std=c++17", f"-DFRNN_SCALAR={_SCALAR[key]}")


def module(name: str, dtype):
    """The cupy.RawModule for source ``name`` and ``dtype`` (built once)."""
    key = (name, str(getattr(dtype, "name", dtype)))
    with _LOCK:
        mod = _MODULES.get(key)
        if mod is None:
            import cupy
            mod = cupy.RawModule(code=source(name), options=options(dtype),
                                 enable_cooperative_groups=name in COOPERATIVE)
            _MODULES[key] = mod
        return mod


def get_kernel(name: str, func: str, dtype):
    """The cupy.RawKernel ``func`` of source ``name`` compiled for ``dtype``."""
    key = (name, func, str(getattr(dtype, "name", dtype)))
    with _LOCK:
        k = _KERNELS.get(key)
    if k is None:
        k = module(name, dtype).get_function(func)
        with _LOCK:
            _KERNELS[key] = k
    return k


def kernel_names(name: str) -> list:
    """Names of the extern "C" __global__ kernels defined by source ``name``."""
    if name == "persistent":
        return [f(m) for m in MODE_SOURCE for f in (persist_fwd_name, persist_bwd_name)]
    return [f(m) for m, src in MODE_SOURCE.items() if src == name
            for f in (fwd_step_name, bwd_step_name)]
