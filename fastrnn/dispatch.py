"""Backend registry: which backends exist, which are usable here, and why not.

A backend is an object with
    name        str
    priority    int, higher wins in auto-selection
    modes       tuple of modes it runs
    dtypes      tuple of numpy dtype names it runs
    array_module()          the module whose arrays it takes (numpy or cupy)
    probe()                 -> (available: bool, reason: str); may import things
    forward(...), backward(...)   see fastrnn._backends.numpy_ref for the signature

Selection, in order: an explicit ``backend=`` argument, the FASTRNN_BACKEND
environment variable, else the available backend of highest priority whose
arrays match the input (NumPy arrays never go to the GPU behind the user's
back, CuPy arrays never come to the host).  Asking for a backend that is
unknown or unavailable raises and says why: there is no silent fallback.
"""
from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass

__all__ = ["BackendInfo", "register", "backends", "get", "select", "ENV_VAR"]

ENV_VAR = "FASTRNN_BACKEND"


def _env_reader():
    """A function returning $FASTRNN_BACKEND (None if unset), read at each
    call as os.environ holds it (so a change through os.environ or
    monkeypatch.setenv counts at once).  Through os.environ's own mapping
    of encoded names where it has one: os.environ.get on a variable that is
    not set raises and catches a KeyError inside, 0.96 us measured (a tiny
    call's Python is ~20), against 0.13 us for this."""
    env = os.environ
    try:
        data, key, decode = env._data, env.encodekey(ENV_VAR), env.decodevalue
        data.get(key)
    except Exception:  # pragma: no cover - another Python's os.environ
        return lambda: env.get(ENV_VAR)

    def read():
        v = data.get(key)
        return None if v is None else decode(v)
    return read


_env_backend = _env_reader()


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str
    priority: int
    modes: tuple
    dtypes: tuple

    def __str__(self) -> str:
        state = "available" if self.available else "unavailable"
        return f"{self.name:6s} {state:11s} priority={self.priority} {self.reason}"


# name -> "module:attribute" (loaded lazily so `import fastrnn` stays cheap and
# an optional dependency that is broken cannot break the import)
_REGISTRY: dict[str, str] = {}
_LOADED: dict[str, object] = {}
_PROBED: dict[str, tuple[bool, str]] = {}
# auto-selection results, (array module, mode, dtype) -> backend: probes are
# cached anyway, and the search costs ~10 us of a ~50 us tiny call
_AUTO: dict[tuple, object] = {}
_LOCK = threading.Lock()


def register(name: str, target: str) -> None:
    """Register a backend by import path, e.g. ``register("numba", "fastrnn._backends.numba_cpu:BACKEND")``."""
    with _LOCK:
        _REGISTRY[name] = target
        _LOADED.pop(name, None)
        _PROBED.pop(name, None)
        _AUTO.clear()


def _load(name):
    if name in _LOADED:
        return _LOADED[name]
    modname, attr = _REGISTRY[name].split(":")
    try:
        obj = getattr(importlib.import_module(modname), attr)
    except Exception as exc:  # report, never hide: probe() returns the reason
        obj = _Broken(name, f"import of {modname} failed: {type(exc).__name__}: {exc}")
    _LOADED[name] = obj
    return obj


class _Broken:
    priority = -1
    modes = ()
    dtypes = ()

    def __init__(self, name, reason):
        self.name, self._reason = name, reason

    def probe(self):
        return False, self._reason


def _probe(name):
    with _LOCK:
        if name not in _PROBED:
            be = _load(name)
            try:
                _PROBED[name] = be.probe()
            except Exception as exc:
                _PROBED[name] = (False, f"probe failed: {type(exc).__name__}: {exc}")
        return _PROBED[name]


def backends() -> dict[str, BackendInfo]:
    """Every registered backend with its availability and, if unavailable, why."""
    out = {}
    for name in list(_REGISTRY):
        ok, reason = _probe(name)
        be = _load(name)
        out[name] = BackendInfo(name, ok, reason, be.priority, tuple(be.modes), tuple(be.dtypes))
    return out


def get(name: str):
    """The backend object ``name``; ValueError if unknown, RuntimeError if unavailable."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"backend: expected one of {', '.join(repr(n) for n in _REGISTRY)}, got {name!r}"
        )
    ok, reason = _probe(name)
    if not ok:
        raise RuntimeError(f"backend {name!r} is unavailable: {reason}")
    return _load(name)


def select(backend=None, array_module_name: str = "numpy", mode=None, dtype=None):
    """Pick the backend for one call.  See the module docstring for the rule."""
    source = "backend="
    if backend is None:
        backend = _env_backend() or None
        source = f"${ENV_VAR}"
        if backend is None:
            key = (array_module_name, mode, dtype)
            be = _AUTO.get(key)
            if be is None:
                be = _AUTO[key] = _auto(array_module_name, mode, dtype)
            return be
    if backend is not None:
        if isinstance(backend, str) and backend not in _REGISTRY:
            raise ValueError(
                f"{source}: expected one of {', '.join(repr(n) for n in _REGISTRY)}, got {backend!r}"
            )
        be = get(backend)
        _check_supports(be, source, array_module_name, mode, dtype)
        return be
    return _auto(array_module_name, mode, dtype)


def _auto(array_module_name, mode, dtype):
    candidates = []
    for name in _REGISTRY:
        ok, _ = _probe(name)
        if not ok:
            continue
        be = _load(name)
        if be.array_module_name != array_module_name:
            continue
        if mode is not None and mode not in be.modes:
            continue
        if dtype is not None and str(dtype) not in be.dtypes:
            continue
        candidates.append(be)
    if not candidates:
        why = "; ".join(str(i) for i in backends().values())
        raise RuntimeError(
            f"no available backend runs mode={mode!r} dtype={dtype} on {array_module_name} arrays ({why})"
        )
    return max(candidates, key=lambda b: b.priority)


def _check_supports(be, source, array_module_name, mode, dtype):
    if be.array_module_name != array_module_name:
        raise TypeError(
            f"{source}: backend {be.name!r} takes {be.array_module_name} arrays, got {array_module_name} arrays"
            " (move the arrays, or pick another backend)"
        )
    if mode is not None and mode not in be.modes:
        raise ValueError(f"{source}: backend {be.name!r} does not run mode {mode!r}")
    if dtype is not None and str(dtype) not in be.dtypes:
        raise TypeError(f"{source}: backend {be.name!r} runs dtypes {be.dtypes}, got {dtype}")


register("numpy", "fastrnn._backends.numpy_ref:BACKEND")
register("numba", "fastrnn._backends.numba_cpu:BACKEND")
register("cupy", "fastrnn._backends.cupy_cuda:BACKEND")
