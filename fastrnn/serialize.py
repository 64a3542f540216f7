"""Saving and loading models: one versioned ``.npz`` file, written atomically.

Format (FORMAT_VERSION = 1): a NumPy .npz (zip) archive holding
    "__fastrnn__"          a 0-d unicode array: a JSON header
                           {"format": "fastrnn.model", "format_version": 1,
                            "fastrnn_version": ..., "class": registered name,
                            "module": defining module, "args": [...],
                            "kwargs": {...}, "params": {name: [shape, dtype]},
                            "metadata": {...}}
    "param:<dotted name>"  one array per parameter
It is read with np.load(allow_pickle=False): no code runs on load.
Constructor arguments must be JSON values (numbers, strings, lists, dicts,
None), numpy scalars/dtypes/small arrays, or Layers (rebuilt recursively);
a np.random.Generator seed is saved as None (the weights come from the file).

save() writes to a temporary file in the target's directory, fsyncs it and
os.replace()s it over the target, so a crash never leaves a half-written
file at ``path``.  load() raises ValueError naming the file and the problem
for a truncated/corrupted/foreign file, a newer format version, an unknown
class, or parameter names/shapes that do not match the rebuilt model.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from .base import Layer, lookup, name_of

__all__ = ["save", "load", "FORMAT", "FORMAT_VERSION", "to_json", "from_json"]

FORMAT = "fastrnn.model"
FORMAT_VERSION = 1
HEADER = "__fastrnn__"
PREFIX = "param:"


def _version():
    from . import __version__
    return __version__


def to_json(value, where):
    """Constructor arguments -> JSON-able values; TypeError naming ``where``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (np.random.Generator, np.random.SeedSequence)):
        return None
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return {"__dtype__": np.dtype(value).name}
    if isinstance(value, np.ndarray):
        return {"__array__": value.tolist(), "dtype": value.dtype.name}
    if isinstance(value, (list, tuple)):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: dict keys must be strings to be saved, got {list(value)[:3]}")
        return {k: to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, Layer):
        args, kwargs = value.get_config()
        return {"__layer__": name_of(type(value)), "module": type(value).__module__,
                "args": to_json(args, f"{where}.args"), "kwargs": to_json(kwargs, f"{where}.kwargs")}
    raise TypeError(f"{where}: cannot save a {type(value).__name__} constructor argument; use JSON values "
                    "(numbers, strings, lists, dicts), numpy arrays or Layers, or override get_config()")


def _class(name, module, source):
    try:
        return lookup(name)
    except KeyError:
        pass
    if isinstance(module, str) and (module == "fastrnn" or module.startswith("fastrnn.")):
        import importlib
        try:
            importlib.import_module(module)
            return lookup(name)
        except (ImportError, KeyError):
            pass
    raise ValueError(f"{source}: model class {name!r} is not registered; import the module that defines it "
                     f"(saved from module {module!r}) before loading")


def from_json(value, source):
    if isinstance(value, list):
        return [from_json(v, source) for v in value]
    if isinstance(value, dict):
        if "__dtype__" in value:
            return np.dtype(value["__dtype__"])
        if "__array__" in value:
            return np.asarray(value["__array__"], dtype=value["dtype"])
        if "__layer__" in value:
            cls = _class(value["__layer__"], value.get("module"), source)
            return cls(*from_json(value["args"], source), **from_json(value["kwargs"], source))
        return {k: from_json(v, source) for k, v in value.items()}
    return value


def save(model, path, *, metadata=None):
    """Write ``model`` (a Layer/Model) to ``path`` atomically; returns path.
    ``metadata``: a JSON-able dict stored beside the config (load() puts it
    on ``model.metadata``): vocabularies, label names, training history."""
    if not isinstance(model, Layer):
        raise TypeError(f"model: expected a fastrnn Layer/Model, got {type(model).__name__}")
    path = os.fspath(path)
    args, kwargs = model.get_config()
    params = model.parameters()
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "fastrnn_version": _version(),
        "class": name_of(type(model)), "module": type(model).__module__,
        "args": to_json(args, f"{type(model).__name__} args"),
        "kwargs": to_json(kwargs, f"{type(model).__name__} kwargs"),
        "params": {k: [list(v.shape), v.dtype.name] for k, v in params.items()},
        "metadata": to_json(metadata or {}, "metadata"),
    }
    arrays = {PREFIX + k: np.asarray(v) for k, v in params.items()}
    arrays[HEADER] = np.array(json.dumps(header))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:                                   # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def read(path):
    """(header dict, {name: array}) of a saved file; ValueError naming the file otherwise."""
    path = os.fspath(path)
    src = f"load: {path!r}"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{src}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not a fastrnn model archive")
        with z:
            names = list(z.files)
            if HEADER not in names:
                raise ValueError(f"no {HEADER!r} header: not a fastrnn model file (members: {names[:5]})")
            header = json.loads(str(z[HEADER][()]))
            arrays = {n[len(PREFIX):]: z[n] for n in names if n.startswith(PREFIX)}
    except ValueError as exc:
        raise ValueError(f"{src}: {exc}") from exc
    except Exception as exc:  # BadZipFile, EOFError, OSError, zlib/JSON errors...: all mean "unreadable"
        raise ValueError(f"{src}: not a readable fastrnn model file (truncated or corrupted?): "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{src}: header format is {header.get('format') if isinstance(header, dict) else header!r}, "
                         f"expected {FORMAT!r}: not a fastrnn model file")
    ver = header.get("format_version")
    if not isinstance(ver, int) or ver > FORMAT_VERSION or ver < 1:
        raise ValueError(f"{src}: format_version {ver!r} is not supported by this fastrnn "
                         f"({_version()} reads versions 1..{FORMAT_VERSION}); upgrade fastrnn")
    declared = header.get("params", {})
    if set(declared) != set(arrays):
        raise ValueError(f"{src}: the header lists parameters {sorted(set(declared) ^ set(arrays))} that "
                         "the archive does not match: corrupted file")
    for k, (shape, dtype) in declared.items():
        if list(arrays[k].shape) != list(shape) or arrays[k].dtype.name != dtype:
            raise ValueError(f"{src}: parameter {k!r} is {arrays[k].shape} {arrays[k].dtype}, the header says "
                             f"{tuple(shape)} {dtype}: corrupted file")
    return header, arrays


def load(path, *, backend=None, cls=None):
    """Rebuild the model saved at ``path`` (its class must be registered, i.e.
    its module imported) and load its parameters.  ``backend`` sets the
    kernel backend of its recurrent layers; ``cls``, when given, must be the
    saved class or a base of it.  The saved metadata is ``model.metadata``."""
    header, arrays = read(path)
    src = f"load: {os.fspath(path)!r}"
    klass = _class(header.get("class"), header.get("module"), src)
    if cls is not None and not issubclass(klass, cls):
        raise ValueError(f"{src}: holds a {klass.__name__}, expected a {cls.__name__}")
    try:
        model = klass(*from_json(header.get("args", []), src), **from_json(header.get("kwargs", {}), src))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{src}: could not rebuild {klass.__name__} from the saved arguments: {exc}") from exc
    dtypes = {a.dtype for a in arrays.values()}
    if len(dtypes) == 1 and next(iter(dtypes)) in (np.float32, np.float64):
        model.astype(next(iter(dtypes)))
    model.load_state_dict(arrays, source=src)
    if backend is not None:
        model.set_backend(backend)
    model.metadata = from_json(header.get("metadata", {}), src)
    return model
