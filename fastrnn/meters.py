"""Streaming metrics ("meters") for fit()/evaluate(): accumulate over batches, then result().

(fastrnn.metrics holds the plain functions on label lists: accuracy, macro_f1,
bleu, ner_scores; a meter is the batch-streaming wrapper fit() drives.)

Protocol (any object with these works):
    name                 str, the history key is "val_" + name
    higher_is_better     bool, for early stopping on it
    reset()              start a new pass
    update(outputs, batch)   outputs as model.forward returned them
    result() -> float

    Accuracy(*, targets="targets", mask="auto", ignore_index=None, time_major=True)
    MacroF1(num_classes, *, labels=None, targets="targets", mask="auto", ...)

Both take the argmax of outputs (..., C) and compare with batch[targets]
(mask as fastrnn.losses.resolve_mask finds it).  Entity-level F1 for NER
(spans, not tokens) is task code: write a class with the same five members.
"""
from __future__ import annotations

import numpy as np

from .base import batch_get, check_int
from .losses import resolve_mask

__all__ = ["Metric", "Accuracy", "MacroF1"]


def _confusion(pred, true, num_classes):
    """(C, C) counts, rows true class, columns predicted class."""
    idx = np.asarray(true, np.int64) * num_classes + np.asarray(pred, np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


class Metric:
    name = "metric"
    higher_is_better = True

    def __init__(self, *, targets="targets", mask="auto", ignore_index=None, time_major=True):
        self.targets, self.mask, self.ignore_index, self.time_major = targets, mask, ignore_index, time_major
        self.reset()

    def _pairs(self, outputs, batch):
        """(predicted, true) 1-D arrays of the counted positions."""
        y = batch_get(batch, self.targets)
        if y is None:
            raise ValueError(f"{type(self).__name__}: the batch has no {self.targets!r} (targets=)")
        y = np.asarray(y)
        out = np.asarray(outputs)
        if out.shape[:-1] != y.shape:
            raise ValueError(f"{type(self).__name__}: outputs: expected shape {y.shape + ('C',)} "
                             f"(targets' shape + classes), got {out.shape}")
        pred = out.argmax(axis=-1)
        valid = np.ones(y.shape, bool)
        m = resolve_mask(batch, y, self.mask, self.time_major, type(self).__name__)
        if m is not None:
            valid &= np.asarray(m, bool)
        if self.ignore_index is not None:
            valid &= y != self.ignore_index
        return pred[valid], y[valid]

    def reset(self):
        raise NotImplementedError

    def update(self, outputs, batch):
        raise NotImplementedError

    def result(self):
        raise NotImplementedError


class Accuracy(Metric):
    """Fraction of counted targets whose argmax prediction is right."""
    name = "accuracy"

    def reset(self):
        self.correct = self.total = 0

    def update(self, outputs, batch):
        p, y = self._pairs(outputs, batch)
        self.correct += int((p == y).sum())
        self.total += int(y.size)

    def result(self):
        return self.correct / self.total if self.total else 0.0


class MacroF1(Metric):
    """Unweighted mean of per-class F1 over ``labels`` (default: the classes
    that occur among the true or predicted labels seen, like sklearn's
    f1_score(average="macro") and fastrnn.metrics.macro_f1; a listed class
    never seen scores 0).  ``confusion`` holds the (C, C) counts, rows true."""
    name = "macro_f1"

    def __init__(self, num_classes, *, labels=None, **kwargs):
        self.num_classes = check_int(num_classes, "num_classes", 1)
        self.labels = None if labels is None else [int(c) for c in labels]
        super().__init__(**kwargs)

    def reset(self):
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, outputs, batch):
        p, y = self._pairs(outputs, batch)
        self.confusion += _confusion(p, y, self.num_classes)

    def per_class(self):
        cm = self.confusion
        tp = np.diag(cm).astype(float)
        denom = cm.sum(0) + cm.sum(1)          # predicted + true
        return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)

    def result(self):
        f1 = self.per_class()
        if self.labels is not None:
            return float(f1[self.labels].mean())
        seen = (self.confusion.sum(0) + self.confusion.sum(1)) > 0
        return float(f1[seen].mean()) if seen.any() else 0.0
