"""Models and the training loop: Model, Sequential, fit, evaluate, predict, save/load.

A model is a Layer whose forward takes a *batch* and whose backward takes the
gradient of whatever forward returned:

    class Model(Layer):
        forward(batch, *, training=False) -> outputs     (e.g. logits (T, B, C))
        backward(doutputs) -> None                       accumulates into grads
        parameters() / gradients() / state_dict()         dotted names of sub-layers
        save(path, metadata=None);  Model.load(path)      (fastrnn.serialize)

A batch is whatever the model and loss read: a dict, or a NamedTuple such as
fastrnn.data.Batch (inputs, lengths, targets, target_lengths, indices);
fields are read with fastrnn.base.batch_get (key or attribute).

fit() runs, per training batch:

    model.clear_cache(); model.zero_grad()
    outputs = model.forward(batch, training=True)
    loss, doutputs, n = loss_fn(outputs, batch)   # e.g. losses.CrossEntropyLoss()
    model.backward(doutputs)
    clip_grad_norm(model, clip_norm)               # when clip_norm is given
    optimizer.step()

and after each epoch evaluate() on val_batches (loss_fn, and a streaming
metric from fastrnn.meters), early stopping on ``monitor`` with ``patience``,
and saves the best model to ``checkpoint``.

Example: a sentiment classifier and an encoder-decoder::

    from fastrnn.layers import Embedding, LSTM, GRU, Dense, Dropout
    from fastrnn.model import Model, Sequential, fit, load
    from fastrnn.losses import CrossEntropyLoss, softmax_cross_entropy
    from fastrnn.optim import Adam
    from fastrnn.meters import Accuracy

    rng = np.random.default_rng(0)
    clf = Sequential(Embedding(V, 64, padding_idx=0, seed=rng),
                     LSTM(64, 128, bidirectional=True, return_sequences=False, seed=rng),
                     Dropout(0.3, seed=rng), Dense(256, 5, seed=rng))
    hist = fit(clf, lambda ep: iterate_batches(X, y, 32, shuffle=True, seed=ep), epochs=10,
               optimizer=Adam(clf, 1e-3), loss_fn=CrossEntropyLoss(), val_batches=val,
               metric=Accuracy(), patience=3, checkpoint="clf.npz", clip_norm=5.0)

    class Seq2Seq(Model):
        def __init__(self, src_vocab, tgt_vocab, dim=128, seed=0):
            rng = np.random.default_rng(seed)
            self.src_emb = Embedding(src_vocab, dim, padding_idx=0, seed=rng)
            self.tgt_emb = Embedding(tgt_vocab, dim, padding_idx=0, seed=rng)
            self.enc = GRU(dim, dim, return_state=True, seed=rng)
            self.dec = GRU(dim, dim, seed=rng)
            self.out = Dense(dim, tgt_vocab, seed=rng)
        def forward(self, b, *, training=False):
            _, h = self.enc(self.src_emb(b.inputs, training=training), training=training, lengths=b.lengths)
            y = self.dec(self.tgt_emb(b.targets[:-1], training=training), training=training,
                         lengths=b.target_lengths - 1, h0=h)
            return self.out(y, training=training)            # (T'-1, B, V)
        def backward(self, dlogits):
            self.tgt_emb.backward(self.dec.backward(self.out.backward(dlogits)))
            self.src_emb.backward(self.enc.backward(None, dstate=self.dec.dh0))

    def shifted_ce(logits, b):                                 # predict targets[1:]
        m = np.arange(len(b.targets) - 1)[:, None] < (b.target_lengths - 1)[None]
        loss, d = softmax_cross_entropy(logits, b.targets[1:], mask=m)
        return loss, d, int(m.sum())
"""
from __future__ import annotations

import math
import numbers
import sys
import time

import numpy as np

from . import serialize
from .base import Layer, as_rng, batch_get
from .optim import clip_grad_norm

__all__ = ["Model", "Sequential", "fit", "evaluate", "predict", "save", "load"]

save = serialize.save
load = serialize.load


class Model(Layer):
    """Base for models: forward(batch, *, training=False) -> outputs and
    backward(doutputs).  Subclasses create their layers as attributes in
    __init__ (found by parameters(); constructor arguments are recorded for
    load()) and are registered by class name automatically."""

    metadata = None

    def forward(self, batch, *, training=False):
        raise NotImplementedError(f"{type(self).__name__}.forward(batch, *, training)")

    def backward(self, doutputs):
        raise NotImplementedError(f"{type(self).__name__}.backward(doutputs)")

    def save(self, path, *, metadata=None):
        """Atomically write this model to ``path`` (see fastrnn.serialize)."""
        return serialize.save(self, path, metadata=metadata)

    @classmethod
    def load(cls, path, *, backend=None):
        """Load a model saved from this class (or a subclass) from ``path``."""
        return serialize.load(path, backend=backend, cls=cls)


def _is_single_batch(b):
    return isinstance(b, (dict, np.ndarray)) or (isinstance(b, tuple) and hasattr(b, "_fields"))


class Sequential(Model):
    """Layers applied in order; sub-layers are named "0", "1", ... like torch.

    forward(batch_or_x, *, training=False, lengths=None): the input is an
    array, or a batch whose ``input_key`` field (default "inputs", else "x")
    is the input and whose "lengths" field (if any) goes to every layer that
    takes lengths (RNN layers, MeanPool, LastPool)."""

    def __init__(self, *layers, input_key="inputs"):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}]: expected a fastrnn Layer, got {type(layer).__name__}")
        if not layers:
            raise ValueError("layers: expected at least one layer, got none")
        self._layers = list(layers)
        self.input_key = input_key

    def children(self):
        for i, layer in enumerate(self._layers):
            yield str(i), layer

    def __len__(self):
        return len(self._layers)

    def __getitem__(self, i):
        return self._layers[i]

    def forward(self, batch, *, training=False, lengths=None):
        if isinstance(batch, np.ndarray):
            x = batch
        else:
            x = batch_get(batch, self.input_key)
            if x is None:
                x = batch_get(batch, "x")
            if x is None:
                raise ValueError(f"Sequential: the batch has no {self.input_key!r} (input_key=) or 'x'")
            if lengths is None:
                lengths = batch_get(batch, "lengths")
        for i, layer in enumerate(self._layers):
            kw = {"lengths": lengths} if layer.accepts_lengths else {}
            x = layer.forward(x, training=training, **kw)
            if isinstance(x, tuple):
                raise TypeError(f"Sequential: layer {i} ({type(layer).__name__}) returned a tuple; "
                                "use return_state=False inside a Sequential")
        return x

    def backward(self, dout):
        for i in range(len(self._layers) - 1, -1, -1):
            dout = self._layers[i].backward(dout)
            if dout is None and i > 0:
                raise TypeError(f"Sequential: layer {i} ({type(self._layers[i]).__name__}) returned no "
                                "input gradient but is not the first layer")
        return dout


# ---------------------------------------------------------------- the loop

def _batches_for(batches, epoch, arg, shuffle=False, rng=None):
    if callable(batches) and not _is_single_batch(batches):
        batches = batches(epoch)
    if _is_single_batch(batches):
        raise TypeError(f"{arg}: expected an iterable of batches (a list, or a callable epoch -> iterable), "
                        f"got a single {type(batches).__name__}")
    if shuffle:
        if not isinstance(batches, (list, tuple)):
            raise TypeError(f"{arg}: shuffle=True needs a list of batches, got {type(batches).__name__}")
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _bar(it, progress, desc):
    if progress is False:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return it
    total = len(it) if hasattr(it, "__len__") else None
    return tqdm(it, desc=desc, total=total, leave=False, disable=None if progress is None else not progress,
                file=sys.stderr, dynamic_ncols=True)


def evaluate(model, batches, *, loss_fn=None, metric=None, progress=False):
    """Run model.forward(batch, training=False) over ``batches`` (an iterable,
    or a callable () -> iterable) and return a dict: "loss" (mean over the
    n counted targets, when loss_fn is given), metric.name (when metric is
    given), "n" (counted targets), "seconds"."""
    t0 = time.perf_counter()
    if metric is not None:
        metric.reset()
    tot, n = 0.0, 0
    for batch in _bar(_batches_for(batches, 0, "batches"), progress, "eval"):
        out = model.forward(batch, training=False)
        if loss_fn is not None:
            loss, _, k = loss_fn(out, batch)
            tot += float(loss) * k
            n += int(k)
        if metric is not None:
            metric.update(out, batch)
    res = {}
    if loss_fn is not None:
        res["loss"] = tot / n if n else 0.0
        res["n"] = n
    if metric is not None:
        res[metric.name] = float(metric.result())
    res["seconds"] = time.perf_counter() - t0
    return res


def predict(model, batches, *, fn=None):
    """model.forward(batch, training=False) for each batch; a list of the
    outputs (or of fn(outputs, batch)).  A single batch (dict, Batch, array)
    gives a single result."""
    if _is_single_batch(batches):
        out = model.forward(batches, training=False)
        return fn(out, batches) if fn else out
    res = []
    for batch in _batches_for(batches, 0, "batches"):
        out = model.forward(batch, training=False)
        res.append(fn(out, batch) if fn else out)
    return res


def fit(model, train_batches, *, epochs, optimizer, loss_fn, val_batches=None, metric=None,
        monitor=None, patience=None, min_delta=0.0, checkpoint=None, restore_best=True,
        clip_norm=None, lr_schedule=None, shuffle=False, seed=None, progress=None, verbose=False,
        metadata=None, on_epoch_end=None):
    """Train ``model``; returns the history dict.

    train_batches   a list of batches, or a callable epoch -> iterable of
                    batches (e.g. ``lambda ep: iterate_batches(..., shuffle=True, seed=ep)``);
                    a one-shot generator only for epochs=1
    epochs          maximum number of epochs
    optimizer       fastrnn.optim SGD/Adam/AdamW over this model
    loss_fn         loss_fn(outputs, batch) -> (loss, doutputs, n) (fastrnn.losses)
    val_batches     like train_batches; evaluated after every epoch
    metric          a streaming meter (fastrnn.meters.Accuracy, MacroF1, ...)
    monitor         history key to select the best epoch: default
                    "val_<metric.name>" with a metric and val_batches, else
                    "val_loss" with val_batches, else "loss"
    patience        stop after this many epochs without improvement (None: never)
    min_delta       the improvement that counts
    checkpoint      path: the best model is saved there (atomically) whenever
                    ``monitor`` improves (model.save, with metadata
                    {"epoch", monitor, **metadata})
    restore_best    at the end, put the best epoch's weights back in the model
    clip_norm       clip the global gradient norm to this before each step
    lr_schedule     callable epoch -> learning rate, set before each epoch
    shuffle, seed   shuffle a list of train batches each epoch (seeded)
    progress        tqdm bar: None auto (only on a terminal), True, False
    verbose         print one line per epoch
    on_epoch_end    callable(epoch, history, model) -> truthy to stop early

    history: lists per epoch "loss", "seconds", "tokens_per_s" (loss targets
    per second: the counts loss_fn returns, i.e. tokens for a tagger or a
    language model, examples for a classifier), "lr", and
    "val_loss", "val_<metric>", "grad_norm" (mean pre-clip norm) when they
    apply; scalars "best_epoch" (0-based), "best", "monitor", "epochs_run",
    "stopped_early".
    """
    if not isinstance(epochs, numbers.Integral) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs: expected an int >= 1, got {epochs!r}")
    if not hasattr(optimizer, "step"):
        raise TypeError(f"optimizer: expected a fastrnn.optim optimiser, got {type(optimizer).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable (outputs, batch) -> (loss, doutputs, n), "
                        f"got {type(loss_fn).__name__}")
    if patience is not None and (not isinstance(patience, numbers.Integral) or patience < 0):
        raise ValueError(f"patience: expected None or an int >= 0, got {patience!r}")
    if epochs > 1 and not callable(train_batches) and iter(train_batches) is train_batches:
        raise TypeError("train_batches: a one-shot iterator/generator can feed only one epoch; pass a list "
                        "or a callable epoch -> iterable")
    rng = as_rng(seed)
    hist = {"loss": [], "seconds": [], "tokens_per_s": [], "lr": []}
    if val_batches is not None:
        hist["val_loss"] = []
        if metric is not None:
            hist["val_" + metric.name] = []
    if clip_norm is not None:
        hist["grad_norm"] = []
    if monitor is None:
        monitor = ("val_" + metric.name if metric is not None and val_batches is not None
                   else "val_loss" if val_batches is not None else "loss")
    if monitor not in hist:
        raise ValueError(f"monitor: expected one of {sorted(k for k in hist if k not in ('seconds', 'lr'))}, "
                         f"got {monitor!r}")
    higher = metric is not None and monitor == "val_" + metric.name and metric.higher_is_better
    best = best_epoch = best_state = None
    bad = 0
    stopped = False
    for epoch in range(epochs):
        if lr_schedule is not None:
            optimizer.lr = float(lr_schedule(epoch))
        batches = _batches_for(train_batches, epoch, "train_batches", shuffle, rng)
        t0 = time.perf_counter()
        tot, n, norms = 0.0, 0, []
        bar = _bar(batches, progress, f"epoch {epoch + 1}/{epochs}")
        for i, batch in enumerate(bar):
            model.clear_cache()
            model.zero_grad()
            out = model.forward(batch, training=True)
            loss, dout, k = loss_fn(out, batch)
            if not math.isfinite(loss):
                model.clear_cache()
                raise FloatingPointError(f"fit: loss is {loss} at epoch {epoch + 1}, batch {i + 1}")
            model.backward(dout)
            if clip_norm is not None:
                norms.append(clip_grad_norm(model, clip_norm))
            optimizer.step()
            tot += float(loss) * k
            n += int(k)
            if bar is not batches and i % 10 == 0:
                bar.set_postfix(loss=f"{tot / max(n, 1):.4f}", refresh=False)
        model.clear_cache()
        secs = time.perf_counter() - t0
        hist["loss"].append(tot / n if n else 0.0)
        hist["seconds"].append(secs)
        hist["tokens_per_s"].append(n / secs if secs > 0 else 0.0)
        hist["lr"].append(optimizer.lr)
        if clip_norm is not None:
            hist["grad_norm"].append(float(np.mean(norms)) if norms else 0.0)
        if val_batches is not None:
            ev = evaluate(model, _batches_for(val_batches, epoch, "val_batches"), loss_fn=loss_fn, metric=metric)
            hist["val_loss"].append(ev["loss"])
            if metric is not None:
                hist["val_" + metric.name].append(ev[metric.name])
        value = hist[monitor][-1]
        if best is None or (value > best + min_delta if higher else value < best - min_delta):
            best, best_epoch, bad = value, epoch, 0
            if restore_best:
                best_state = model.state_dict()
            if checkpoint is not None:
                model_meta = dict(metadata or {}, epoch=epoch)
                model_meta[monitor] = value
                serialize.save(model, checkpoint, metadata=model_meta)
        else:
            bad += 1
        if verbose:
            parts = [f"epoch {epoch + 1}/{epochs}"] + [f"{k} {hist[k][-1]:.4f}" for k in hist
                                                       if k.startswith("val_") or k == "loss"]
            print(" ".join(parts) + f" {secs:.1f}s {hist['tokens_per_s'][-1]:.0f} targets/s", flush=True)
        if on_epoch_end is not None and on_epoch_end(epoch, hist, model):
            stopped = True
            break
        if patience is not None and bad >= max(patience, 1) and epoch < epochs - 1:
            stopped = True
            break
    if restore_best and best_state is not None and best_epoch != len(hist["loss"]) - 1:
        model.load_state_dict(best_state)
    hist.update(best_epoch=best_epoch, best=best, monitor=monitor, epochs_run=len(hist["loss"]),
                stopped_early=stopped)
    return hist
