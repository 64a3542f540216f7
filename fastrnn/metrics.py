"""Evaluation metrics for the four NLP tasks (plain functions over whole datasets).

classification (sentiment)   accuracy, confusion_matrix, per_class_prf, macro_f1,
                             mean_absolute_error
NER (IOB2 tags)              get_entities, ner_scores (conlleval / seqeval semantics)
translation                  bleu, token_bleu (sacrebleu's corpus BLEU)
language modelling           cross_entropy, perplexity, bits_per_char

(Streaming per-batch meters for ``fit()`` are in :mod:`fastrnn.meters`.)

Conventions: a ratio with a zero denominator is 0.0 (conlleval's and
scikit-learn's ``zero_division=0``); every input length mismatch is a
ValueError naming both lengths.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "accuracy", "confusion_matrix", "per_class_prf", "macro_f1", "mean_absolute_error",
    "get_entities", "ner_scores", "bleu", "token_bleu", "cross_entropy", "perplexity", "bits_per_char",
]


def _same_len(fn: str, a: Sequence, b: Sequence, an: str = "y_true", bn: str = "y_pred") -> None:
    if len(a) != len(b):
        raise ValueError(f"{fn}: {an} has {len(a)} items, {bn} has {len(b)}")
    if len(a) == 0:
        raise ValueError(f"{fn}: {an} and {bn} are empty")


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def _plain(seq: Sequence) -> list:
    """NumPy arrays -> lists of Python scalars (hashable, equal to plain ints)."""
    return seq.tolist() if isinstance(seq, np.ndarray) else list(seq)


# --------------------------------------------------------------------- classification
def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Fraction of positions where ``y_pred == y_true``."""
    _same_len("accuracy", y_true, y_pred)
    return sum(1 for a, b in zip(_plain(y_true), _plain(y_pred)) if a == b) / len(y_true)


def _labels(y_true: list, y_pred: list, labels: Optional[Sequence]) -> List:
    return _plain(labels) if labels is not None else sorted(set(y_true) | set(y_pred))


def confusion_matrix(y_true: Sequence[Hashable], y_pred: Sequence[Hashable],
                     labels: Optional[Sequence[Hashable]] = None) -> np.ndarray:
    """int64 ``(C, C)``: ``m[i, j]`` = count of true ``labels[i]`` predicted as ``labels[j]``.

    ``labels`` defaults to the sorted union of both sequences; pairs with a
    label outside ``labels`` are not counted.
    """
    _same_len("confusion_matrix", y_true, y_pred)
    y_true, y_pred = _plain(y_true), _plain(y_pred)
    labels = _labels(y_true, y_pred, labels)
    pos = {lab: i for i, lab in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for a, b in zip(y_true, y_pred):
        if a in pos and b in pos:
            m[pos[a], pos[b]] += 1
    return m


def per_class_prf(y_true: Sequence[Hashable], y_pred: Sequence[Hashable],
                  labels: Optional[Sequence[Hashable]] = None) -> Dict[Hashable, Dict[str, float]]:
    """``{label: {"precision", "recall", "f1", "support"}}`` (support = true count, int).

    ``labels`` defaults to the sorted union of both sequences.
    """
    _same_len("per_class_prf", y_true, y_pred)
    y_true, y_pred = _plain(y_true), _plain(y_pred)
    labels = _labels(y_true, y_pred, labels)
    n_true: Counter = Counter(y_true)
    n_pred: Counter = Counter(y_pred)
    tp: Counter = Counter(a for a, b in zip(y_true, y_pred) if a == b)
    out = {}
    for lab in labels:
        p, r = _div(tp[lab], n_pred[lab]), _div(tp[lab], n_true[lab])
        out[lab] = {"precision": p, "recall": r, "f1": _f1(p, r), "support": int(n_true[lab])}
    return out


def macro_f1(y_true: Sequence[Hashable], y_pred: Sequence[Hashable],
             labels: Optional[Sequence[Hashable]] = None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (default: the sorted union
    of both sequences, as scikit-learn's ``f1_score(average="macro")``). For star
    ratings pass ``labels=[1, 2, 3, 4, 5]`` so a never-seen class counts as 0."""
    rep = per_class_prf(y_true, y_pred, labels)
    return sum(v["f1"] for v in rep.values()) / len(rep)


def mean_absolute_error(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Mean ``|y_pred - y_true|`` (star ratings: how many stars off, on average)."""
    _same_len("mean_absolute_error", y_true, y_pred)
    return float(np.mean(np.abs(np.asarray(y_pred, np.float64) - np.asarray(y_true, np.float64))))


# --------------------------------------------------------------------- NER
def _split_tag(tag: str) -> Tuple[str, str]:
    if tag == "O":
        return "O", ""
    if "-" not in tag:
        return tag, ""
    prefix, typ = tag.split("-", 1)
    return prefix, typ


def get_entities(tags: Sequence[str]) -> List[Tuple[str, int, int]]:
    """Entity chunks of one IOB2 tag sequence: ``[(type, start, end)]``, ``end`` exclusive.

    conlleval's rules (seqeval's default mode, identical): a chunk starts at
    ``B-X``; at ``I-X`` after ``O``, the sentence start, or a tag of another
    type (so ``O I-PER`` is a PER chunk and ``I-PER I-LOC`` two chunks); it
    continues while ``I-X`` of the same type follows, and ends before the next
    ``B-``, ``O``, a type change, or the sentence end. ``B-X B-X`` is two chunks.
    """
    out: List[Tuple[str, int, int]] = []
    start, typ = None, ""
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, t = _split_tag(tag)
        if start is not None and (prefix in ("B", "O") or t != typ):   # end of the open chunk
            out.append((typ, start, i))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):          # start of a new chunk
            start, typ = i, t
    return out


def ner_scores(y_true: Sequence[Sequence[str]],
               y_pred: Sequence[Sequence[str]]) -> Dict[str, object]:
    """Entity-level precision / recall / F1 over sentences of IOB2 tags.

    An entity is correct when type, start and end all match (conlleval).
    Returns ``{"precision", "recall", "f1"}`` (floats in [0, 1]) micro-averaged
    over all types, ``"n_true"``, ``"n_pred"``, ``"n_correct"`` entity counts,
    and ``"per_type": {type: {"precision", "recall", "f1", "support"}}`` for
    every type seen on either side (support = true entities of that type).
    No predicted entity gives precision 0; no true entity, recall 0.
    """
    _same_len("ner_scores", y_true, y_pred)
    true_c: Counter = Counter()
    pred_c: Counter = Counter()
    corr_c: Counter = Counter()
    for k, (ts, ps) in enumerate(zip(y_true, y_pred)):
        if len(ts) != len(ps):
            raise ValueError(f"ner_scores: sentence {k}: y_true has {len(ts)} tags, "
                             f"y_pred has {len(ps)}")
        te, pe = set(get_entities(ts)), set(get_entities(ps))
        true_c.update(e[0] for e in te)
        pred_c.update(e[0] for e in pe)
        corr_c.update(e[0] for e in te & pe)
    per_type = {}
    for t in sorted(set(true_c) | set(pred_c)):
        p, r = _div(corr_c[t], pred_c[t]), _div(corr_c[t], true_c[t])
        per_type[t] = {"precision": p, "recall": r, "f1": _f1(p, r), "support": true_c[t]}
    nt, npred, nc = sum(true_c.values()), sum(pred_c.values()), sum(corr_c.values())
    p, r = _div(nc, npred), _div(nc, nt)
    return {"precision": p, "recall": r, "f1": _f1(p, r),
            "n_true": nt, "n_pred": npred, "n_correct": nc, "per_type": per_type}


# --------------------------------------------------------------------- translation
def bleu(hypotheses: Sequence[str], references: Sequence, tokenize: str = "13a",
         lowercase: bool = False, force: bool = False) -> float:
    """Corpus BLEU in [0, 100] by sacrebleu (``pip install sacrebleu``, in ``fastrnn[tasks]``).

    hypotheses  N detokenized strings
    references  N strings (one reference each) or N lists of strings (one or
                more references each; the counts may differ)
    tokenize    sacrebleu tokenizer ("13a" default, "intl", "none", ...)
    force       silence sacrebleu's "looks tokenized" warning

    This is standard sacreBLEU on raw text. A model that emits word_tokenize
    tokens should use :func:`token_bleu` instead: ``" ".join(["l'", "homme"])``
    is not the raw ``"l'homme"`` and would lose n-grams here.
    """
    try:
        import sacrebleu
    except ImportError as e:
        raise ImportError("bleu() needs sacrebleu: pip install sacrebleu "
                          "(or pip install 'fastrnn[tasks]')") from e
    _same_len("bleu", hypotheses, references, "hypotheses", "references")
    for k, h in enumerate(hypotheses):
        if not isinstance(h, str):
            raise TypeError(f"bleu: hypotheses[{k}] must be str (join tokens with spaces), "
                            f"got {type(h).__name__}")
    if all(isinstance(r, str) for r in references):
        streams = [list(references)]
    else:
        refs = []
        for k, r in enumerate(references):
            r = [r] if isinstance(r, str) else list(r)
            if not r or not all(isinstance(x, str) for x in r):
                raise TypeError(f"bleu: references[{k}] must be a str or a non-empty list of str, "
                                f"got {r!r:.80}")
            refs.append(r)
        m = max(len(r) for r in refs)
        streams = [[r[j] if j < len(r) else None for r in refs] for j in range(m)]
    res = sacrebleu.corpus_bleu(list(hypotheses), streams, tokenize=tokenize, lowercase=lowercase,
                                force=force)
    return float(res.score)


def token_bleu(hypotheses: Sequence[Sequence[str]], references: Sequence,
               lowercase: bool = False) -> float:
    """Corpus BLEU in [0, 100] on already-tokenized text (sacrebleu, ``tokenize="none"``).

    hypotheses  N token lists (the decoded model output, ``<eos>`` stripped)
    references  N token lists, or N lists of token lists (several references),
                tokenized the same way as the hypotheses (e.g.
                ``word_tokenize(french, lower=True)``)
    Both sides are joined with spaces and scored as they are, so hypothesis
    and reference tokenization agree by construction (a tokenized BLEU: close
    to, not identical with, sacreBLEU on raw text).
    """
    _same_len("token_bleu", hypotheses, references, "hypotheses", "references")

    def join(toks, what):
        if isinstance(toks, str):
            raise TypeError(f"token_bleu: {what} must be a list of tokens, got a str; "
                            f"use bleu() for raw strings")
        return " ".join(toks)

    hyps = [join(h, f"hypotheses[{k}]") for k, h in enumerate(hypotheses)]
    refs = []
    for k, r in enumerate(references):
        multi = len(r) > 0 and not isinstance(r[0], str)
        refs.append([join(x, f"references[{k}]") for x in r] if multi else join(r, f"references[{k}]"))
    return bleu(hyps, refs, tokenize="none", lowercase=lowercase, force=True)


# --------------------------------------------------------------------- language modelling
def cross_entropy(logits: np.ndarray, targets: np.ndarray,
                  mask: Optional[np.ndarray] = None) -> float:
    """Mean negative log-likelihood in nats per token.

    logits   (..., V) unnormalised scores (e.g. (T, B, V)); log-softmax is
             taken here, in float64, stably
    targets  (...) int ids in [0, V)
    mask     (...) bool, True where a position counts (e.g.
             ``fastrnn.data.length_mask(lengths, T)``); None: all positions
    For a char model this is nats per char: ``perplexity`` / ``bits_per_char`` convert.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"cross_entropy: logits (..., V) must match targets (...): "
                         f"got logits {logits.shape}, targets {targets.shape}")
    V = logits.shape[-1]
    if targets.size and (targets.min() < 0 or targets.max() >= V):
        raise ValueError(f"cross_entropy: targets must be in [0, {V}), got range "
                         f"[{targets.min()}, {targets.max()}]")
    mx = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - mx).sum(axis=-1)) + mx[..., 0]
    picked = np.take_along_axis(logits, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    nll = lse - picked
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != targets.shape:
            raise ValueError(f"cross_entropy: mask must have targets' shape {targets.shape}, "
                             f"got {mask.shape}")
        nll = nll[mask]
    if nll.size == 0:
        raise ValueError("cross_entropy: no positions to average (empty targets or all-False mask)")
    return float(nll.mean())


def perplexity(nats_per_token: float) -> float:
    """``exp(mean cross-entropy in nats)``."""
    return math.exp(nats_per_token)


def bits_per_char(nats_per_char: float) -> float:
    """Nats -> bits: ``nats / ln 2`` (the usual char-LM figure)."""
    return nats_per_char / math.log(2.0)
