"""The naive feed-forward (ANN) baseline: Dense layers over a fixed-length ONE-HOT input.

What the network is (and what its parameter count and input width report):

    x = concat(one_hot(id_1, V), ..., one_hot(id_W, V))          input width V * W
    h = ReLU(x @ W1 + b1)          W1: (V*W, H)                  V*W*H + H parameters
    logits = h @ W2 + b2           Dense(H, C)                   H*C + C parameters

for a window of W tokens over a vocabulary of V ids (<pad> and <unk> are
ids like any other, so padding is one-hot too).  OneHotDense computes the
first layer without building x: the product of a one-hot row block with
W1 is row ``k*V + id_k`` of W1, so h = ReLU(sum_k W1[k*V + id_k] + b1) -- an
embedding lookup summed over the window, mathematically identical to the
one-hot matmul (tests check it against the explicit one) and O(W*H) per
example instead of O(V*W*H).

The three inputs:

    sentiment      the first N word tokens of the review (lowercased), padded
                   or truncated to N: a review longer than N is cut
    ner            a window of +-k words around each word (lowercased; <pad>
                   beyond the sentence), one prediction per word
    autocomplete   the previous k characters of Tiny Shakespeare, predicting
                   the next one

The RNN models of the tasks (fastrnn.tasks.sentiment, ner) read whole
sequences with a parameter count that does not depend on their length;
benchmarks/bench_ann_vs_rnn.py puts the two side by side.

    train_sentiment(...), train_ner(...), train_autocomplete(...) -> dict of results
    ann_num_parameters(V, window, hidden, num_classes) == build_ann(...).num_parameters()
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse

from .. import metrics as M
from ..base import Layer, as_rng, check_dtype, check_int
from ..data import (Vocab, char_tokenize, data_file, load_conll, load_reviews, load_text, split_text,
                    stratified_split, word_tokenize)
from ..layers import Dense, Dropout, ReLU
from ..losses import CrossEntropyLoss
from ..meters import MacroF1
from ..model import Sequential, fit
from ..optim import Adam
from .common import class_weights, data_path

__all__ = ["OneHotDense", "build_ann", "ann_num_parameters", "input_width", "sentiment_inputs",
           "ner_windows", "char_windows", "train_sentiment", "train_ner", "train_autocomplete",
           "SENTIMENT", "NER", "AUTOCOMPLETE"]


class OneHotDense(Layer):
    """Dense layer applied to the one-hot encoding of a window of ``window`` ids
    from a vocabulary of ``vocab_size``: ids (B, W) ints -> (B, out_features).

    weight (W*V, out) -- row k*V + v is the weight of "position k holds id v",
    i.e. the transpose of Dense's (out, in) layout, so that a one-hot row is a
    row lookup; bias (out,).  in_features = V*W is the one-hot input width.
    Initialised uniform(-1/sqrt(W), 1/sqrt(W)): W inputs are 1 in each example,
    so W, not V*W, is the fan-in that keeps the pre-activations O(1)."""

    def __init__(self, vocab_size, window, out_features, bias=True, *, seed=None, dtype="float32"):
        self.vocab_size = check_int(vocab_size, "vocab_size", 1)
        self.window = check_int(window, "window", 1)
        self.out_features = check_int(out_features, "out_features", 1)
        self.dtype = check_dtype(dtype)
        rng = as_rng(seed)
        bound = 1.0 / math.sqrt(window)
        self.add_param("weight", rng.uniform(-bound, bound, (window * vocab_size, out_features)).astype(self.dtype))
        if bias:
            self.add_param("bias", rng.uniform(-bound, bound, out_features).astype(self.dtype))

    @property
    def in_features(self):
        """Width of the one-hot input: vocab_size * window."""
        return self.vocab_size * self.window

    def _rows(self, ids):
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"OneHotDense: ids: expected an integer array, got dtype {ids.dtype}")
        if ids.ndim != 2 or ids.shape[1] != self.window:
            raise ValueError(f"OneHotDense: ids: expected shape (B, {self.window}), got {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"OneHotDense: ids: expected values in [0, {self.vocab_size}), got "
                             f"[{ids.min()}, {ids.max()}]")
        return ids + (np.arange(self.window, dtype=np.int64) * self.vocab_size)[None, :]

    def forward(self, ids, *, training=False):
        rows = self._rows(ids)
        y = self.params["weight"][rows].sum(axis=1)
        if "bias" in self.params:
            y += self.params["bias"]
        if training:
            self._push(rows)
        return y

    def backward(self, dout):
        rows = self._pop()
        B, W = rows.shape
        d = np.asarray(dout, self.dtype)
        # dW = onehot(ids)^T @ dout, touching only the rows present: a sparse (rows x B) matmul
        # (np.add.at over the B*W rows is ~10x slower)
        uniq, inv = np.unique(rows.reshape(-1), return_inverse=True)
        sel = scipy.sparse.csr_matrix((np.ones(B * W, self.dtype), (inv.reshape(-1), np.repeat(np.arange(B), W))),
                                      shape=(len(uniq), B))
        self.grads["weight"][uniq] += sel @ d
        if "bias" in self.params:
            self.grads["bias"] += d.sum(axis=0)
        return None

    def one_hot(self, ids):
        """The explicit (B, V*W) one-hot input (for checks on small sizes only)."""
        rows = self._rows(ids)
        x = np.zeros((rows.shape[0], self.in_features), self.dtype)
        np.put_along_axis(x, rows, 1, axis=1)
        return x


def build_ann(vocab_size, window, hidden, num_classes, *, dropout=0.0, seed=0):
    """Sequential(OneHotDense(V, W, H), ReLU, Dropout, Dense(H, C)) reading batch["inputs"] (B, W)."""
    rng = np.random.default_rng(seed)
    return Sequential(OneHotDense(vocab_size, window, hidden, seed=rng), ReLU(), Dropout(dropout, seed=rng),
                      Dense(hidden, num_classes, seed=rng))


def input_width(vocab_size, window):
    """One-hot input width of the ANN: V * W."""
    return vocab_size * window


def ann_num_parameters(vocab_size, window, hidden, num_classes):
    """Parameters of build_ann(V, W, H, C): (V*W + 1)*H + (H + 1)*C."""
    return (vocab_size * window + 1) * hidden + (hidden + 1) * num_classes


def _batches(X, y, batch_size, *, shuffle=False, seed=0):
    idx = np.random.default_rng(seed).permutation(len(X)) if shuffle else np.arange(len(X))
    return [{"inputs": X[idx[i:i + batch_size]], "targets": y[idx[i:i + batch_size]]}
            for i in range(0, len(X), batch_size)]


def _logits(model, X, batch_size=1024):
    return np.concatenate([model.forward(X[i:i + batch_size], training=False)
                           for i in range(0, len(X), batch_size)]) if len(X) else np.zeros((0, 1))


def _fit(model, X, y, cfg, *, seed, progress, weight=None, metric=None, Xv=None, yv=None):
    opt = Adam(model, cfg["lr"])
    val = _batches(Xv, yv, 1024) if Xv is not None else None
    hist = fit(model, lambda ep: _batches(X, y, cfg["batch_size"], shuffle=True, seed=seed * 1000 + ep),
               epochs=cfg["epochs"], optimizer=opt, loss_fn=CrossEntropyLoss(weight=weight),
               val_batches=val, metric=metric, patience=cfg.get("patience"), progress=progress)
    return hist


def _summary(model, V, W, hist, n_train_items, *, task, metric_name, metric):
    secs = hist["seconds"]
    return {"task": task, "model": "ANN (one-hot feed-forward)", "metric_name": metric_name, "metric": metric,
            "parameters": model.num_parameters(), "input_width": input_width(V, W), "vocab_size": V,
            "window": W, "epoch_seconds": float(np.mean(secs)), "epochs": len(secs),
            "tokens_per_s": n_train_items * len(secs) / max(sum(secs), 1e-9), "history": hist}


# --------------------------------------------------------------------- sentiment
SENTIMENT = dict(window=32, max_vocab=5000, min_freq=2, hidden=64, dropout=0.5, epochs=6, batch_size=64,
                 lr=1e-3, class_weight="balanced", patience=2, dev_fraction=0.1, split_seed=0, max_train=None)


def sentiment_inputs(token_lists, vocab, window):
    """(N, window) int64: the first ``window`` token ids of each list, <pad> (0) after its end."""
    X = np.zeros((len(token_lists), window), np.int64)
    for i, toks in enumerate(token_lists):
        ids = vocab.encode(toks[:window])
        X[i, :len(ids)] = ids
    return X


def train_sentiment(*, data=None, seed=0, progress=False, **options):
    """Train the one-hot ANN on the first ``window`` tokens of each review, on the
    same split as fastrnn.tasks.sentiment (stratified by (source, stars), seed 0).

    Returns the summary dict plus "accuracy", "macro_f1", "mae" on dev, the dev
    predictions ("dev_pred", stars) and dev token counts ("dev_lengths")."""
    cfg = dict(SENTIMENT, **{k: v for k, v in options.items() if v is not None})
    reviews = load_reviews(data_path(data, "sentiment"))
    tr, dv = stratified_split(list(zip(reviews.sources, reviews.stars.tolist())), cfg["dev_fraction"],
                              seed=cfg["split_seed"])
    if cfg["max_train"]:
        tr = np.sort(np.random.default_rng(cfg["split_seed"]).permutation(tr)[:cfg["max_train"]])
    toks = [word_tokenize(t, lower=True) for t in reviews.texts]
    vocab = Vocab.build([toks[i] for i in tr], min_freq=cfg["min_freq"], max_size=cfg["max_vocab"])
    W, V = cfg["window"], len(vocab)
    X, y = sentiment_inputs([toks[i] for i in tr], vocab, W), reviews.stars[tr] - 1
    Xd, yd = sentiment_inputs([toks[i] for i in dv], vocab, W), reviews.stars[dv] - 1
    model = build_ann(V, W, cfg["hidden"], 5, dropout=cfg["dropout"], seed=seed)
    model.reseed(seed)
    weight = class_weights(np.bincount(y, minlength=5), cfg["class_weight"])
    hist = _fit(model, X, y, cfg, seed=seed, progress=progress, weight=weight,
                metric=MacroF1(5, labels=range(5)), Xv=Xd, yv=yd)
    pred = _logits(model, Xd).argmax(1) + 1
    true = reviews.stars[dv]
    res = _summary(model, V, W, hist, int(np.minimum([len(toks[i]) for i in tr], W).sum()),
                   task="sentiment", metric_name="accuracy", metric=M.accuracy(true, pred))
    res.update(accuracy=res["metric"], macro_f1=M.macro_f1(true, pred, labels=[1, 2, 3, 4, 5]),
               mae=M.mean_absolute_error(true, pred), dev_pred=pred, dev_true=true,
               dev_lengths=np.array([len(toks[i]) for i in dv]), dev_index=dv, model_obj=model, vocab=vocab)
    return res


# --------------------------------------------------------------------- NER
NER = dict(k=2, min_freq=1, hidden=128, dropout=0.5, epochs=10, batch_size=64, lr=1e-3, class_weight="none",
           patience=3, max_train=None)
NER_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def ner_windows(sentences, vocab, k):
    """(N_words, 2k+1) int64 windows of lowercased word ids centred on each word
    of each sentence (<pad> = 0 beyond the sentence edges)."""
    rows = []
    for toks in sentences:
        ids = np.asarray(vocab.encode([t.lower() for t in toks]), np.int64)
        padded = np.concatenate([np.zeros(k, np.int64), ids, np.zeros(k, np.int64)])
        if len(ids):
            rows.append(np.lib.stride_tricks.sliding_window_view(padded, 2 * k + 1))
    return np.concatenate(rows) if rows else np.zeros((0, 2 * k + 1), np.int64)


def train_ner(*, train_file=None, dev_file=None, seed=0, progress=False, **options):
    """Train the one-hot ANN tagger on +-k word windows (en_ewt train), evaluate
    entity F1 on en_ewt dev (argmax tags, conlleval scoring)."""
    cfg = dict(NER, **{k: v for k, v in options.items() if v is not None})
    tr = load_conll(train_file or data_file("ner_train"))
    dv = load_conll(dev_file or data_file("ner_dev"))
    if cfg["max_train"]:
        tr = tr[:cfg["max_train"]]
    vocab = Vocab.build([[t.lower() for t in toks] for toks, _ in tr], min_freq=cfg["min_freq"])
    k = cfg["k"]
    W, V = 2 * k + 1, len(vocab)
    tag_id = {t: i for i, t in enumerate(NER_TAGS)}
    X = ner_windows([t for t, _ in tr], vocab, k)
    y = np.array([tag_id[g] for _, tags in tr for g in tags], np.int64)
    Xd = ner_windows([t for t, _ in dv], vocab, k)
    yd = np.array([tag_id[g] for _, tags in dv for g in tags], np.int64)
    model = build_ann(V, W, cfg["hidden"], len(NER_TAGS), dropout=cfg["dropout"], seed=seed)
    model.reseed(seed)
    weight = class_weights(np.bincount(y, minlength=len(NER_TAGS)), cfg["class_weight"])
    hist = _fit(model, X, y, cfg, seed=seed, progress=progress, weight=weight,
                metric=MacroF1(len(NER_TAGS)), Xv=Xd, yv=yd)
    flat = _logits(model, Xd).argmax(1)
    pred, true, i = [], [], 0
    for toks, tags in dv:
        pred.append([NER_TAGS[j] for j in flat[i:i + len(toks)]])
        true.append(list(tags))
        i += len(toks)
    s = M.ner_scores(true, pred)
    res = _summary(model, V, W, hist, len(X), task="ner", metric_name="entity F1", metric=s["f1"])
    res.update(precision=s["precision"], recall=s["recall"], f1=s["f1"], dev_pred=pred, dev_true=true,
               model_obj=model, vocab=vocab)
    return res


# --------------------------------------------------------------------- autocomplete
AUTOCOMPLETE = dict(k=16, hidden=256, dropout=0.0, epochs=2, batch_size=256, lr=2e-3, max_train_chars=None,
                    max_dev_chars=None, dev_fraction=0.1, patience=None)


def char_windows(ids, k, pad_id=0):
    """(N, k) windows of the k ids before each position and (N,) the ids at it:
    X[i] = ids[i-k:i] (<pad> before the start), y[i] = ids[i]."""
    ids = np.asarray(ids, np.int64)
    padded = np.concatenate([np.full(k, pad_id, np.int64), ids])
    X = np.lib.stride_tricks.sliding_window_view(padded, k)[:len(ids)]
    return np.ascontiguousarray(X), ids


def train_autocomplete(*, data=None, seed=0, progress=False, **options):
    """Train the one-hot ANN next-character model on windows of the previous
    k characters of Tiny Shakespeare (the first 90 % of the text; dev = the
    last 10 %, fastrnn.data.split_text).  Metric: dev bits per character (and
    next-character accuracy)."""
    cfg = dict(AUTOCOMPLETE, **{k: v for k, v in options.items() if v is not None})
    text = load_text(data_path(data, "autocomplete"))
    train_text, dev_text = split_text(text, cfg["dev_fraction"])
    if cfg["max_train_chars"]:
        train_text = train_text[:cfg["max_train_chars"]]
    if cfg["max_dev_chars"]:
        dev_text = dev_text[:cfg["max_dev_chars"]]
    vocab = Vocab.build([char_tokenize(train_text)], specials=("<pad>", "<unk>"))
    k, V = cfg["k"], len(vocab)
    X, y = char_windows(vocab.encode(char_tokenize(train_text)), k)
    Xd, yd = char_windows(vocab.encode(char_tokenize(dev_text)), k)
    model = build_ann(V, k, cfg["hidden"], V, dropout=cfg["dropout"], seed=seed)
    model.reseed(seed)
    hist = _fit(model, X, y, cfg, seed=seed, progress=progress)
    logits = _logits(model, Xd)
    nats = M.cross_entropy(logits, yd)
    res = _summary(model, V, k, hist, len(X), task="autocomplete", metric_name="bits/char",
                   metric=M.bits_per_char(nats))
    res.update(bits_per_char=res["metric"], accuracy=float((logits.argmax(1) == yd).mean()), model_obj=model,
               vocab=vocab)
    return res


def main(argv=None):
    """python -m fastrnn.tasks.baseline_ann {sentiment,ner,autocomplete} [--quick]"""
    import argparse
    import json
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("task", choices=("sentiment", "ner", "autocomplete"))
    ap.add_argument("--window", type=int, help="sentiment: N tokens; ner/autocomplete: k")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    quick = dict(epochs=1, max_train=1500) if a.quick else {}
    if a.task == "sentiment":
        r = train_sentiment(window=a.window, epochs=a.epochs, progress=True, **quick)
    elif a.task == "ner":
        r = train_ner(k=a.window, epochs=a.epochs, progress=True, **quick)
    else:
        q = dict(epochs=1, max_train_chars=100_000, max_dev_chars=20_000) if a.quick else {}
        if a.epochs:
            q["epochs"] = a.epochs
        r = train_autocomplete(k=a.window, progress=True, **q)
    keep = {k: v for k, v in r.items() if isinstance(v, (int, float, str))}
    print(json.dumps(keep, indent=1))


if __name__ == "__main__":
    main()
