"""Sentiment: a review -> 1-5 stars, with a bidirectional GRU over word embeddings.

Model (SentimentClassifier), shapes T time, B batch, E embedding, H hidden:

    ids (T, B) -> Embedding(V, E) -> Dropout -> BiGRU(E, H), all steps (T, B, 2H)
        -> MeanMaxPool over the valid steps (B, 4H) -> Dropout -> Dense(4H, 5) -> logits (B, 5)

Data: ``reviews.tsv`` (fastrnn.data.load_reviews), lowercased word tokens
(fastrnn.data.word_tokenize); dev = ``stratified_split`` by (source, stars),
10 %, seed 0 (recorded in the model, so evaluate() rebuilds the same split).

Class imbalance (1: 14 %, 2: 27 %, 3: 9 %, 4: 27 %, 5: 22 %): early stopping
and model selection use dev macro-F1, and ``class_weight`` can weight the
cross-entropy ("balanced": N/(5 n_c); "sqrt": its square root; "none": plain).
Measured over 3 seeds (docs/tasks_classify.md), weighting raises the F1 of the
rare 3-star class by ~0.03 but costs ~2 points of accuracy and does not raise
macro-F1, so the default is "none".

Training noise: word dropout (a token becomes <unk> with probability
``word_dropout``), embedding dropout, dropout before the classifier; training
reviews are cut to ``max_len`` tokens (evaluation and prediction read the whole
review).

Interface (fastrnn.tasks): add_arguments, train, evaluate, predict.
"""
from __future__ import annotations

import time

import numpy as np

from .. import metrics as M
from ..data import Vocab, iterate_batches, load_reviews, stratified_split, word_tokenize
from ..layers import GRU, LSTM, Dense, Dropout, Embedding
from ..losses import CrossEntropyLoss, softmax
from ..meters import MacroF1
from ..model import Model, fit
from ..optim import Adam
from .common import (MeanMaxPool, class_weights, data_path, default_out, file_fingerprint, load_model,
                     merge_options, save_trained, word_dropout)

NAME = "sentiment"
NUM_CLASSES = 5
STARS = [1, 2, 3, 4, 5]

DEFAULTS = dict(
    epochs=6, batch_size=64, lr=3e-3, emb=100, hidden=64, cell="gru", dropout=0.4, emb_dropout=0.25,
    word_dropout=0.05, min_freq=2, max_vocab=20000, max_len=100, class_weight="none", patience=2,
    dev_fraction=0.1, split_seed=0, clip_norm=5.0, max_train=None, max_dev=None,
)
QUICK = dict(epochs=2, emb=32, hidden=32, batch_size=32, max_train=1200, max_dev=300, max_len=40, patience=None)


# --------------------------------------------------------------------- model
class SentimentClassifier(Model):
    """Embedding -> Dropout -> bidirectional GRU/LSTM -> mean+max pool -> Dropout -> Dense(5).

    forward(batch) with batch.inputs (T, B) ids and batch.lengths (B,) -> logits (B, C)."""

    def __init__(self, vocab_size, emb=100, hidden=64, num_classes=NUM_CLASSES, *, cell="gru",
                 dropout=0.4, emb_dropout=0.25, seed=0):
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell: expected 'gru' or 'lstm', got {cell!r}")
        rng = np.random.default_rng(seed)
        self.embed = Embedding(vocab_size, emb, padding_idx=0, seed=rng)
        self.embed.params["weight"] *= np.float32(0.3)        # smaller start than N(0, 1): steadier training
        self.emb_drop = Dropout(emb_dropout, seed=rng)
        self.rnn = (GRU if cell == "gru" else LSTM)(emb, hidden, bidirectional=True, seed=rng)
        self.pool = MeanMaxPool()
        self.drop = Dropout(dropout, seed=rng)
        self.out = Dense(4 * hidden, num_classes, seed=rng)

    def forward(self, batch, *, training=False):
        ids, lengths = batch.inputs, batch.lengths
        x = self.emb_drop(self.embed(ids, training=training), training=training)
        h = self.rnn(x, training=training, lengths=lengths)
        z = self.drop(self.pool(h, training=training, lengths=lengths), training=training)
        return self.out(z, training=training)

    def backward(self, dlogits):
        d = self.pool.backward(self.drop.backward(self.out.backward(dlogits)))
        self.embed.backward(self.emb_drop.backward(self.rnn.backward(d)))


# --------------------------------------------------------------------- data
def tokenize(text):
    return word_tokenize(text, lower=True)


def _encode(vocab, texts, max_tokens=None):
    out = []
    for t in texts:
        ids = vocab.encode(tokenize(t)[:max_tokens])
        out.append(ids if ids else [vocab.unk_id])
    return out


def _split(reviews, cfg, seed_offset=0):
    tr, dv = stratified_split(list(zip(reviews.sources, reviews.stars.tolist())), cfg["dev_fraction"],
                              seed=cfg["split_seed"])
    rng = np.random.default_rng(cfg["split_seed"] + seed_offset)
    if cfg.get("max_train"):
        tr = np.sort(rng.permutation(tr)[:cfg["max_train"]])
    if cfg.get("max_dev"):
        dv = np.sort(rng.permutation(dv)[:cfg["max_dev"]])
    return tr, dv


def _vocab(model):
    v = getattr(model, "_vocab_cache", None)
    if v is None:
        meta = model.metadata or {}
        if "vocab" not in meta:
            raise ValueError("model: no vocabulary in its metadata; not a model saved by fastrnn.tasks.sentiment")
        v = Vocab.from_dict(meta["vocab"])
        model._vocab_cache = v
    return v


def predict_proba(model, texts, *, batch_size=128, max_tokens=None):
    """(N, 5) class probabilities (stars 1..5) of ``texts`` (a list of str);
    ``max_tokens`` reads only the first that many tokens of each."""
    model = load_model(model, SentimentClassifier)
    ids = _encode(_vocab(model), texts, max_tokens)
    probs = np.zeros((len(ids), NUM_CLASSES))
    for b in iterate_batches(ids, None, batch_size, bucket_size=batch_size * 8):
        probs[b.indices] = softmax(model.forward(b, training=False).astype(np.float64))
    return probs


def scores(stars_true, probs):
    """accuracy, macro_f1, mae (in stars) and per-class F1 of argmax(probs) vs stars 1..5."""
    pred = probs.argmax(axis=1) + 1
    y = np.asarray(stars_true)
    prf = M.per_class_prf(y.tolist(), pred.tolist(), labels=STARS)
    return {"accuracy": M.accuracy(y, pred), "macro_f1": M.macro_f1(y, pred, labels=STARS),
            "mae": M.mean_absolute_error(y, pred),
            "per_class_f1": {str(k): prf[k]["f1"] for k in STARS},
            "n": int(len(y))}


# --------------------------------------------------------------------- interface
def add_arguments(parser):
    g = parser.add_argument_group("sentiment")
    g.add_argument("--epochs", type=int, help=f"maximum epochs (default {DEFAULTS['epochs']})")
    g.add_argument("--batch-size", dest="batch_size", type=int, help=f"default {DEFAULTS['batch_size']}")
    g.add_argument("--lr", type=float, help=f"Adam learning rate (default {DEFAULTS['lr']})")
    g.add_argument("--emb", type=int, help=f"embedding size (default {DEFAULTS['emb']})")
    g.add_argument("--hidden", type=int, help=f"RNN hidden size per direction (default {DEFAULTS['hidden']})")
    g.add_argument("--cell", choices=("gru", "lstm"), help="recurrent cell (default gru)")
    g.add_argument("--dropout", type=float, help=f"default {DEFAULTS['dropout']}")
    g.add_argument("--class-weight", dest="class_weight", choices=("balanced", "sqrt", "none"),
                   help="class-weighted loss against the star imbalance (default none; see docs)")
    g.add_argument("--max-len", dest="max_len", type=int,
                   help=f"cut training reviews to this many tokens (default {DEFAULTS['max_len']})")
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs on dev macro-F1")
    g.add_argument("--max-train", dest="max_train", type=int, help="use only this many training reviews")
    g.add_argument("--split", choices=("auto", "dev", "all"),
                   help="eval: the dev split (auto: when --data is the training file) or the whole file")


def train(*, data=None, out=None, quick=False, seed=0, progress=True, **options):
    """Train on reviews.tsv (``data``), save the best dev-macro-F1 model to ``out``.

    Returns {"metrics": {accuracy, macro_f1, mae, ...} on dev, "seconds",
    "tokens_per_s" (training input tokens/s), "history", "model", "config"}."""
    options.pop("split", None)
    cfg = merge_options(DEFAULTS, QUICK, quick, options)
    t_start = time.perf_counter()
    path = data_path(data, "sentiment")
    reviews = load_reviews(path)                 # DataError "file:line: ..." on bad data
    tr, dv = _split(reviews, cfg)
    if len(tr) == 0 or len(dv) == 0:
        raise ValueError(f"{path}: too few reviews ({len(reviews.texts)}) for a train/dev split")
    tok_tr = [tokenize(reviews.texts[i]) for i in tr]
    vocab = Vocab.build(tok_tr, min_freq=cfg["min_freq"], max_size=cfg["max_vocab"])
    x_tr = [vocab.encode(t) or [vocab.unk_id] for t in tok_tr]
    x_dv = _encode(vocab, [reviews.texts[i] for i in dv])
    y_tr, y_dv = reviews.stars[tr] - 1, reviews.stars[dv] - 1
    counts = np.bincount(y_tr, minlength=NUM_CLASSES)
    weight = class_weights(counts, cfg["class_weight"])

    model = SentimentClassifier(len(vocab), cfg["emb"], cfg["hidden"], cell=cfg["cell"], dropout=cfg["dropout"],
                                emb_dropout=cfg["emb_dropout"], seed=seed)
    model.reseed(seed)
    bs, max_len = cfg["batch_size"], cfg["max_len"]
    noise = np.random.default_rng(seed + 1)

    def train_batches(epoch):
        for b in iterate_batches(x_tr, y_tr, bs, shuffle=True, seed=seed * 1000 + epoch,
                                 bucket_size=bs * 50, max_len=max_len):
            yield b._replace(inputs=word_dropout(b.inputs, cfg["word_dropout"], vocab.unk_id, noise))

    val = list(iterate_batches(x_dv, y_dv, 128, bucket_size=128 * 8))
    tokens_per_epoch = int(sum(min(len(s), max_len) for s in x_tr))
    meta = {"task": NAME, "vocab": vocab.to_dict(), "lower": True, "stars": STARS,
            "config": {k: v for k, v in cfg.items()}, "seed": seed,
            "data": {"file": str(path), "fingerprint": file_fingerprint(path), "n_train": len(tr),
                     "n_dev": len(dv), "dev_fraction": cfg["dev_fraction"], "split_seed": cfg["split_seed"],
                     "max_train": cfg["max_train"], "max_dev": cfg["max_dev"]},
            "class_counts": counts.tolist(), "class_weight": None if weight is None else weight.tolist()}
    out = default_out(NAME, out)
    hist = fit(model, train_batches, epochs=cfg["epochs"], optimizer=Adam(model, cfg["lr"]),
               loss_fn=CrossEntropyLoss(weight=weight), val_batches=val, metric=MacroF1(NUM_CLASSES, labels=range(NUM_CLASSES)),
               patience=cfg["patience"], checkpoint=out, clip_norm=cfg["clip_norm"], progress=progress,
               verbose=progress is not False, metadata=meta)
    model.metadata = meta
    model._vocab_cache = vocab
    probs = predict_proba(model, [reviews.texts[i] for i in dv])
    res = scores(reviews.stars[dv], probs)
    return save_trained(model, out, meta, hist, res, tokens_per_epoch, t_start, cfg)


def evaluate(model, *, data=None, split="auto", batch_size=128, **options):
    """Accuracy, macro-F1 and MAE on the dev split of ``data`` (default: the
    shared reviews.tsv).  split "auto": the dev split the model was trained
    with when ``data`` is the training file (same content), else every review
    of the file; "dev" or "all" force it."""
    model = load_model(model, SentimentClassifier)
    meta = model.metadata or {}
    path = data_path(data, "sentiment")
    reviews = load_reviews(path)
    dmeta = meta.get("data", {})
    if split in (None, "auto"):
        split = "dev" if dmeta.get("fingerprint") == file_fingerprint(path) else "all"
    if split == "dev":
        cfg = dict(DEFAULTS)
        cfg.update({k: dmeta[k] for k in ("dev_fraction", "split_seed", "max_train", "max_dev") if k in dmeta})
        _, idx = _split(reviews, cfg)
    elif split == "all":
        idx = np.arange(len(reviews.texts))
    else:
        raise ValueError(f"split: expected 'auto', 'dev' or 'all', got {split!r}")
    t0 = time.perf_counter()
    texts = [reviews.texts[i] for i in idx]
    probs = predict_proba(model, texts, batch_size=batch_size)
    secs = time.perf_counter() - t0
    res = scores(reviews.stars[idx], probs)
    srcs = np.asarray(reviews.sources)[idx]
    pred = probs.argmax(1) + 1
    res["per_source_accuracy"] = {s: M.accuracy(reviews.stars[idx][srcs == s], pred[srcs == s])
                                  for s in sorted(set(srcs.tolist()))}
    res["confusion"] = M.confusion_matrix(reviews.stars[idx].tolist(), pred.tolist(), labels=STARS).tolist()
    res.update(split=split, seconds=secs, tokens_per_s=sum(len(tokenize(t)) for t in texts) / max(secs, 1e-9))
    return res


def predict(model, text, **options):
    """{"stars": 1..5, "probabilities": [p(1 star), ..., p(5 stars)]} for ``text``
    (a str); a list of str gives a list of those."""
    single = isinstance(text, str)
    texts = [text] if single else list(text)
    probs = predict_proba(model, texts)
    res = [{"stars": int(p.argmax()) + 1, "probabilities": [round(float(q), 6) for q in p]} for p in probs]
    return res[0] if single else res
