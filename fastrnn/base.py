"""The Layer base class: parameters, gradients, caches, config capture, registry.

Every layer and model of the model API derives from :class:`Layer`:

    params      dict name -> array, this layer's own parameters
    grads       dict name -> array of the same shapes; backward() *accumulates*
                into them, zero_grad() (or the optimiser) zeroes them in place
    forward(x, *, training=False, ...) -> output
    backward(dout) -> d input (None where the input is not differentiable)

Caches.  A training-mode forward pushes what its backward needs onto a
per-layer stack and backward pops it, so one layer may be applied several
times in one step (a decoder run step by step, a shared embedding) as long
as the backward calls come in reverse order, as backpropagation does.
``clear_cache()`` drops everything (fit() does so before every step).

Sub-layers are found, like torch.nn.Module's, among the public attributes:
an attribute holding a Layer, or a list/tuple of Layers (named ``attr.i``).
parameters()/gradients()/state_dict() walk them with dotted names.

Config capture.  Constructing any Layer records its constructor arguments
(``get_config()``), and every subclass is registered by name
(``registry_name`` or the class name), so fastrnn.serialize can rebuild a
saved model by calling ``cls(*args, **kwargs)`` and loading the arrays.
"""
from __future__ import annotations

import inspect
import numbers

import numpy as np

__all__ = ["Layer", "register", "registered", "lookup", "name_of", "as_rng", "check_dtype", "batch_get"]

_REGISTRY: dict[str, type] = {}


def register(cls=None, *, name=None):
    """Register a Layer/Model class for loading by name (done automatically for
    every subclass; call it to register under another name).  Usable as a
    decorator: ``@register(name="my_model")``."""
    def do(c):
        key = name or c.__dict__.get("registry_name") or c.__name__
        old = _REGISTRY.get(key)
        if old is not None and old is not c and (old.__module__, old.__qualname__) != (c.__module__, c.__qualname__):
            raise TypeError(f"register: the name {key!r} is already taken by {old.__module__}.{old.__qualname__}; "
                            f"give {c.__module__}.{c.__qualname__} a class attribute registry_name = '...'")
        _REGISTRY[key] = c
        if name is not None:
            c._registry_key = name
        return c
    return do if cls is None else do(cls)


def name_of(cls) -> str:
    """The name a class is registered under (what a saved file records)."""
    return cls.__dict__.get("_registry_key") or cls.__dict__.get("registry_name") or cls.__name__


def registered() -> dict:
    """A copy of the registry: name -> class."""
    return dict(_REGISTRY)


def lookup(name: str):
    """The class registered as ``name``; KeyError if none."""
    return _REGISTRY[name]


def as_rng(seed, arg="seed"):
    """np.random.Generator from None | int | Generator (never the global state)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)):
        return np.random.default_rng(seed)
    raise TypeError(f"{arg}: expected None, an int or a np.random.Generator, got {type(seed).__name__}")


def check_dtype(dtype, arg="dtype"):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{arg}: expected float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{arg}: expected float32 or float64, got {dt}")
    return dt


def check_int(value, arg, low=None):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{arg}: expected an int, got {type(value).__name__}")
    if low is not None and value < low:
        raise ValueError(f"{arg}: expected an int >= {low}, got {value}")
    return int(value)


def batch_get(batch, key, default=None):
    """batch[key] for a Mapping, getattr(batch, key) otherwise (a NamedTuple such
    as fastrnn.data.Batch); ``default`` when absent."""
    if isinstance(batch, dict) or hasattr(batch, "keys") and hasattr(batch, "get"):
        return batch.get(key, default)
    return getattr(batch, key, default)


def _capture(cls, args, kwargs):
    try:
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
    except (TypeError, ValueError):
        return None  # __init__ will raise the real error
    bound.apply_defaults()
    return list(bound.args[1:]), dict(bound.kwargs)


class Layer:
    """Base of every layer and model.  See the module docstring."""

    accepts_lengths = False   # Sequential passes lengths= to layers that set this

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        register(cls)

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        object.__setattr__(self, "params", {})
        object.__setattr__(self, "grads", {})
        object.__setattr__(self, "_cache", [])
        object.__setattr__(self, "_init_args", _capture(cls, args, kwargs))
        return self

    def __getattr__(self, name):
        # layer.weight is layer.params["weight"]
        params = self.__dict__.get("params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    # ------------------------------------------------------------ parameters
    def add_param(self, name, value):
        """Register a parameter array (and a zero gradient of its shape)."""
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)
        return value

    def children(self):
        """(name, layer) pairs of the direct sub-layers, in attribute order."""
        for k, v in vars(self).items():
            if k.startswith("_") or k in ("params", "grads"):
                continue
            if isinstance(v, Layer):
                yield k, v
            elif isinstance(v, (list, tuple)) and v and all(isinstance(i, Layer) for i in v):
                for i, c in enumerate(v):
                    yield f"{k}.{i}", c

    def layers(self, prefix=""):
        """(dotted name, layer) for this layer and every sub-layer, each once."""
        seen = set()

        def walk(layer, pre):
            if id(layer) in seen:
                return
            seen.add(id(layer))
            yield pre, layer
            for n, c in layer.children():
                yield from walk(c, f"{pre}{n}.")
        yield from walk(self, prefix)

    def parameters(self):
        """dict dotted name -> parameter array (the arrays themselves, not copies)."""
        return {p + k: v for p, layer in self.layers() for k, v in layer.params.items()}

    def gradients(self):
        """dict dotted name -> gradient array, same keys as parameters()."""
        return {p + k: layer.grads[k] for p, layer in self.layers() for k in layer.params}

    def num_parameters(self):
        return int(sum(v.size for v in self.parameters().values()))

    def zero_grad(self):
        for g in self.gradients().values():
            g.fill(0)

    def clear_cache(self):
        """Drop every cached training-mode forward (this layer and sub-layers)."""
        for _, layer in self.layers():
            layer._cache.clear()

    def state_dict(self):
        """dict dotted name -> a copy of every parameter (torch.nn's names for RNN layers)."""
        return {k: v.copy() for k, v in self.parameters().items()}

    def load_state_dict(self, state, *, strict=True, source="state"):
        """Copy arrays into the parameters in place (NumPy arrays, or torch
        tensors, which are detached and moved to the CPU).  With strict, names
        must match exactly.  ValueError names what is missing, unexpected or
        of the wrong shape; ``source`` names the origin in the message."""
        if not hasattr(state, "items"):
            raise TypeError(f"{source}: expected a mapping name -> array, got {type(state).__name__}")
        params = self.parameters()
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if strict and (missing or unexpected):
            raise ValueError(f"{source}: parameter names do not match {type(self).__name__}: "
                             f"missing {missing}, unexpected {unexpected}")
        for k, v in state.items():
            if k not in params:
                continue
            if hasattr(v, "detach"):
                v = v.detach().cpu().numpy()
            v = np.asarray(v)
            if v.shape != params[k].shape:
                raise ValueError(f"{source}: parameter {k!r}: expected shape {params[k].shape}, got {v.shape}")
            if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
                raise ValueError(f"{source}: parameter {k!r}: expected a numeric array, got dtype {v.dtype}")
            np.copyto(params[k], v, casting="unsafe")
        return self

    def astype(self, dtype):
        """Convert every parameter (and gradient) to ``dtype`` in this layer and
        its sub-layers; returns self.  Build the optimiser afterwards."""
        dt = check_dtype(dtype)
        for _, layer in self.layers():
            for k in list(layer.params):
                layer.params[k] = layer.params[k].astype(dt)
                layer.grads[k] = np.zeros_like(layer.params[k])
            if "dtype" in vars(layer):
                layer.dtype = dt
        return self

    def set_backend(self, backend):
        """Set the kernel backend ("numba" | "numpy" | "cupy" | None = auto)
        of every recurrent layer in this layer."""
        for _, layer in self.layers():
            if "backend" in vars(layer):
                layer.backend = backend
        return self

    def reseed(self, seed):
        """Reset the random generators (dropout masks) of this layer and its
        sub-layers from one seed, reproducibly."""
        layers = [layer for _, layer in self.layers() if "_rng" in vars(layer)]
        seqs = np.random.SeedSequence(seed).spawn(len(layers))
        for layer, s in zip(layers, seqs):
            layer._rng = np.random.default_rng(s)
        return self

    def get_config(self):
        """(args, kwargs) that rebuild this layer: ``type(self)(*args, **kwargs)``."""
        if self._init_args is None:
            raise ValueError(f"{type(self).__name__}: constructor arguments were not captured")
        return self._init_args

    # ------------------------------------------------------------ computing
    def _push(self, item):
        self._cache.append(item)

    def _pop(self):
        if not self._cache:
            raise RuntimeError(f"{type(self).__name__}.backward: nothing cached; call "
                               "forward(..., training=True) before backward (one forward per backward)")
        return self._cache.pop()

    def forward(self, x, *, training=False):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __repr__(self):
        try:
            args, kwargs = self.get_config()
        except ValueError:
            return f"{type(self).__name__}()"
        parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()
                                           if k not in ("seed", "dtype", "backend")]
        return f"{type(self).__name__}({', '.join(parts)})"
