"""Optimisers (torch.optim's formulations) and gradient-norm clipping.

An optimiser holds a model (any fastrnn Layer) and, on step(), reads
``model.parameters()`` and ``model.gradients()`` (dotted name -> array) and
updates the parameter arrays *in place*.  Its state (momentum buffers, Adam
moments) is keyed by parameter name.

    SGD(model, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0)
    Adam(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False)
    AdamW(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False)
    opt.step(); opt.zero_grad(); opt.lr (settable); opt.state_dict() / load_state_dict()
    clip_grad_norm(model_or_grads, max_norm, norm_type=2.0) -> total norm (float)

Instead of a model, ``params`` may be a pair of dicts (parameters, gradients).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm"]


def _pairs(params, arg="params"):
    """(name -> param, name -> grad) from a Layer or a (params, grads) pair of dicts."""
    if hasattr(params, "parameters") and hasattr(params, "gradients"):
        return params.parameters(), params.gradients()
    if isinstance(params, (tuple, list)) and len(params) == 2 and all(hasattr(d, "items") for d in params):
        p, g = params
        if set(p) != set(g):
            raise ValueError(f"{arg}: parameter and gradient names differ: {sorted(set(p) ^ set(g))}")
        return dict(p), dict(g)
    raise TypeError(f"{arg}: expected a fastrnn Layer/Model or a pair of dicts (params, grads), "
                    f"got {type(params).__name__}")


def _positive(value, arg, allow_zero=True):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{arg}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return float(value)


class Optimizer:
    def __init__(self, params, lr):
        _pairs(params)                       # validate now
        self.model = params
        self.lr = _positive(lr, "lr")
        self.state = {}                      # name -> dict of arrays / counters
        self.steps = 0

    def zero_grad(self):
        for g in _pairs(self.model)[1].values():
            g.fill(0)

    def step(self):
        params, grads = _pairs(self.model)
        self.steps += 1
        for name, p in params.items():
            self._update(name, p, grads[name], self.state.setdefault(name, {}))

    def _update(self, name, p, g, st):
        raise NotImplementedError

    def state_dict(self):
        """dict: hyper-parameters, step count, and per-parameter state arrays (copies)."""
        return {"lr": self.lr, "steps": self.steps,
                "state": {n: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
                          for n, st in self.state.items()}}

    def load_state_dict(self, sd):
        self.lr = float(sd["lr"])
        self.steps = int(sd["steps"])
        self.state = {n: {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in st.items()}
                      for n, st in sd["state"].items()}


class SGD(Optimizer):
    """torch.optim.SGD: g += wd*p; buf = momentum*buf + (1-dampening)*g (buf = g
    on the first step); g = g + momentum*buf if nesterov else buf; p -= lr*g."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum = _positive(momentum, "momentum")
        self.dampening = _positive(dampening, "dampening")
        self.weight_decay = _positive(weight_decay, "weight_decay")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov: needs momentum > 0 and dampening = 0, got "
                             f"momentum={momentum}, dampening={dampening}")

    def _update(self, name, p, g, st):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= p.dtype.type(self.lr) * g


class Adam(Optimizer):
    """torch.optim.Adam: g += wd*p (L2, coupled); m = b1*m + (1-b1)*g;
    v = b2*v + (1-b2)*g^2; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
    amsgrad keeps the running max of v."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(
                isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas: expected a pair of numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = _positive(eps, "eps")
        self.weight_decay = _positive(weight_decay, "weight_decay")
        self.amsgrad = bool(amsgrad)

    def _update(self, name, p, g, st):
        b1, b2 = self.betas
        if "step" not in st:
            st.update(step=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
            if self.amsgrad:
                st["max_exp_avg_sq"] = np.zeros_like(p)
        st["step"] += 1
        t = st["step"]
        if self.weight_decay:
            if self.decoupled:
                p *= p.dtype.type(1 - self.lr * self.weight_decay)
            else:
                g = g + self.weight_decay * p
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        if self.amsgrad:
            np.maximum(st["max_exp_avg_sq"], v, out=st["max_exp_avg_sq"])
            v = st["max_exp_avg_sq"]
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        denom = np.sqrt(v) / math.sqrt(bc2) + self.eps
        p -= (self.lr / bc1) * m / denom


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay p *= 1 - lr*wd."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


def clip_grad_norm(params, max_norm, norm_type=2.0):
    """Scale all gradients in place so their joint norm is at most max_norm,
    like torch.nn.utils.clip_grad_norm_ (coefficient max_norm/(norm+1e-6),
    applied only when below 1).  ``params``: a Layer, a (params, grads) pair,
    a dict name -> grad, or a list of grad arrays.  Returns the total norm
    before clipping (a float; inf/nan when a gradient is)."""
    if isinstance(params, dict):
        grads = list(params.values())
    elif isinstance(params, list) and all(isinstance(g, np.ndarray) for g in params):
        grads = params
    else:
        grads = list(_pairs(params)[1].values())
    max_norm = _positive(max_norm, "max_norm")
    if norm_type == "inf" or norm_type == math.inf:
        total = max((float(np.abs(g).max()) for g in grads if g.size), default=0.0)
    else:
        norm_type = _positive(norm_type, "norm_type", allow_zero=False)
        total = sum(float(np.sum(np.abs(g.astype(np.float64, copy=False)) ** norm_type)) for g in grads)
        total = total ** (1.0 / norm_type)
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads:
            g *= g.dtype.type(coef)
    return total
