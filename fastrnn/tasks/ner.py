"""Named-entity recognition (PER, ORG, LOC; IOB2) with a char-GRU + word-BiLSTM tagger.

Model (NERTagger), shapes T words, B sentences, N = words in the batch, L chars:

    word ids (T, B)      -> Embedding(Vw, Ew)   lowercased word vocabulary     (T, B, Ew)
    chars (L, N)         -> Embedding(Vc, Ec) -> BiGRU(Ec, Hc), final states   (N, 2Hc) -> (T, B, 2Hc)
    word shape (T, B)    -> Embedding(S, Es)    capitalisation/digit/punct class (T, B, Es)
    concat -> Dropout -> BiLSTM(Ew+2Hc+Es, H) -> Dropout -> Dense(2H, 7) -> tag logits (T, B, 7)

Tags: O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC.  Trained with a (optionally
class-weighted) cross-entropy over the valid words, word dropout on training
words seen once (they become <unk> with probability alpha/(alpha+count)), early
stopping on dev entity F1 (fastrnn.metrics.ner_scores, conlleval semantics).

Decoding (``decode=``): "argmax" per word; "repair" (an I-X that does not
follow B-X/I-X becomes B-X); "viterbi" (the best tag path whose transitions
are valid IOB2, from the per-word log-probabilities; the default).  The
measured effect of each is in docs/tasks_classify.md.

Data: UNER English-EWT, en_ewt-train.iob2 / en_ewt-dev.iob2 (fastrnn.data.load_conll).

Interface (fastrnn.tasks): add_arguments, train, evaluate, predict.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .. import metrics as M
from ..data import Vocab, data_file, iterate_batches, load_conll, pad_sequences, word_tokenize
from ..layers import GRU, LSTM, Dense, Dropout, Embedding
from ..losses import CrossEntropyLoss, log_softmax
from ..model import Model, fit
from ..optim import Adam
from .common import class_weights, default_out, load_model, merge_options, save_trained, word_dropout

NAME = "ner"
TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
TAG_ID = {t: i for i, t in enumerate(TAGS)}
TRAIN_NAME, DEV_NAME = "en_ewt-train.iob2", "en_ewt-dev.iob2"
MAX_WORD_CHARS = 20            # longer words keep their first 12 and last 8 characters

DEFAULTS = dict(
    epochs=30, batch_size=16, lr=2e-3, word_dim=64, char_dim=24, char_hidden=24, shape_dim=8, hidden=96,
    cell="lstm", dropout=0.5, unk_alpha=0.25, class_weight="none", decode="viterbi", patience=6,
    clip_norm=5.0, max_train=None, max_dev=None, dev=None,
)
QUICK = dict(epochs=3, max_train=300, max_dev=150, hidden=32, word_dim=32, char_hidden=16, patience=None)
DECODES = ("argmax", "repair", "viterbi")


# --------------------------------------------------------------------- features
SHAPES = ["<pad>", "lower", "Title", "UPPER", "U", "miXed", "digits", "alnum", "punct", "other"]


def word_shape(w):
    """Index into SHAPES of a word's coarse shape."""
    if w.isalpha():
        if w.islower():
            return 1
        if w.isupper():
            return 4 if len(w) == 1 else 3
        if w[0].isupper() and w[1:].islower():
            return 2
        return 5
    if w.isdigit():
        return 6
    if w.isalnum():
        return 7
    if not any(c.isalnum() for c in w):
        return 8
    return 9


def _clip_word(w):
    return w if len(w) <= MAX_WORD_CHARS else w[:12] + w[-8:]


class Encoder:
    """Tokens -> the model's inputs: word ids (lowercased), shape ids, char ids."""

    def __init__(self, words: Vocab, chars: Vocab):
        self.words, self.chars = words, chars

    @classmethod
    def build(cls, sents):
        words = Vocab.build([[w.lower() for w in toks] for toks in sents])
        chars = Vocab.build([list(w) for toks in sents for w in toks])
        return cls(words, chars)

    def encode(self, toks):
        w = np.asarray(self.words.encode([t.lower() for t in toks]), np.int64)
        s = np.asarray([word_shape(t) for t in toks], np.int64)
        c = [np.asarray(self.chars.encode(_clip_word(t)), np.int64) for t in toks]
        return w, s, c

    def to_dict(self):
        return {"words": self.words.to_dict(), "chars": self.chars.to_dict()}

    @classmethod
    def from_dict(cls, d):
        return cls(Vocab.from_dict(d["words"]), Vocab.from_dict(d["chars"]))


def make_batches(enc_sents, tags=None, batch_size=32, *, shuffle=False, seed=0, bucket_size=None):
    """Dict batches: inputs (T, B) word ids, lengths (B,), shapes (T, B), chars
    (L, N) and char_lengths (N,) of the N real words, positions (N,) = t*B + b,
    targets (T, B) and target_lengths (B,) when ``tags`` (lists of tag ids) are given, indices (B,)."""
    W = [e[0] for e in enc_sents]
    for b in iterate_batches(W, tags, batch_size, shuffle=shuffle, seed=seed, bucket_size=bucket_size):
        idx = b.indices
        T, B = b.inputs.shape
        shapes, _ = pad_sequences([enc_sents[i][1] for i in idx])
        shapes = np.pad(shapes, ((0, T - shapes.shape[0]), (0, 0)))
        pos, chars = [], []
        for j, i in enumerate(idx):
            cs = enc_sents[i][2]
            pos.extend(t * B + j for t in range(len(cs)))
            chars.extend(cs)
        if not chars:                                   # only empty sentences
            chars, pos = [np.zeros(1, np.int64)], [0]
        c, cl = pad_sequences(chars)
        batch = {"inputs": b.inputs, "lengths": b.lengths, "shapes": shapes, "chars": c,
                 "char_lengths": np.maximum(cl, 1), "positions": np.asarray(pos, np.int64), "indices": idx}
        if tags is not None:
            batch["targets"], batch["target_lengths"] = b.targets, b.target_lengths
        yield batch


# --------------------------------------------------------------------- model
class NERTagger(Model):
    """Char-BiGRU + word/shape embeddings -> BiLSTM -> per-word tag logits (T, B, n_tags)."""

    def __init__(self, n_words, n_chars, n_shapes=len(SHAPES), n_tags=len(TAGS), *, word_dim=64, char_dim=24,
                 char_hidden=24, shape_dim=8, hidden=96, cell="lstm", dropout=0.5, seed=0):
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell: expected 'gru' or 'lstm', got {cell!r}")
        rng = np.random.default_rng(seed)
        self.wemb = Embedding(n_words, word_dim, padding_idx=0, seed=rng)
        self.wemb.params["weight"] *= np.float32(0.3)
        self.cemb = Embedding(n_chars, char_dim, padding_idx=0, seed=rng)
        self.cemb.params["weight"] *= np.float32(0.3)
        self.crnn = GRU(char_dim, char_hidden, bidirectional=True, return_sequences=False, seed=rng)
        self.semb = Embedding(n_shapes, shape_dim, padding_idx=0, seed=rng)
        self.in_drop = Dropout(dropout, seed=rng)
        self.rnn = (GRU if cell == "gru" else LSTM)(word_dim + 2 * char_hidden + shape_dim, hidden,
                                                    bidirectional=True, seed=rng)
        self.out_drop = Dropout(dropout, seed=rng)
        self.out = Dense(2 * hidden, n_tags, seed=rng)
        self._dims = (word_dim, 2 * char_hidden, shape_dim)

    def forward(self, b, *, training=False):
        ids, lengths = b["inputs"], b["lengths"]
        T, B = ids.shape
        we = self.wemb(ids, training=training)
        cr = self.crnn(self.cemb(b["chars"], training=training), training=training, lengths=b["char_lengths"])
        cf = np.zeros((T * B, cr.shape[1]), cr.dtype)
        cf[b["positions"]] = cr
        se = self.semb(b["shapes"], training=training)
        x = np.concatenate([we, cf.reshape(T, B, -1), se.astype(we.dtype)], axis=2)
        x = self.in_drop(x, training=training)
        h = self.out_drop(self.rnn(x, training=training, lengths=lengths), training=training)
        if training:
            self._push((T, B, b["positions"]))
        return self.out(h, training=training)

    def backward(self, dlogits):
        T, B, pos = self._pop()
        d = self.in_drop.backward(self.rnn.backward(self.out_drop.backward(self.out.backward(dlogits))))
        ew, ec, _ = self._dims
        self.semb.backward(d[..., ew + ec:])
        dcr = d[..., ew:ew + ec].reshape(T * B, ec)[pos]
        self.cemb.backward(self.crnn.backward(np.ascontiguousarray(dcr)))
        self.wemb.backward(d[..., :ew])


# --------------------------------------------------------------------- decoding
def _allowed():
    """(C, C) bool: transition prev -> cur valid in IOB2; (C,) valid first tags."""
    C = len(TAGS)
    ok = np.ones((C, C), bool)
    start = np.ones(C, bool)
    for j, t in enumerate(TAGS):
        if t.startswith("I-"):
            typ = t[2:]
            start[j] = False
            for i, p in enumerate(TAGS):
                ok[i, j] = p in ("B-" + typ, "I-" + typ)
    return ok, start


_OK, _START = _allowed()


def viterbi(logp):
    """Best valid-IOB2 tag-id path for one sentence's (T, C) log-probabilities."""
    T, C = logp.shape
    if T == 0:
        return np.zeros(0, np.int64)
    trans = np.where(_OK, 0.0, -np.inf)
    score = np.where(_START, logp[0], -np.inf)
    back = np.zeros((T, C), np.int64)
    for t in range(1, T):
        cand = score[:, None] + trans                   # (prev, cur)
        back[t] = cand.argmax(axis=0)
        score = cand[back[t], np.arange(C)] + logp[t]
    path = np.zeros(T, np.int64)
    path[-1] = score.argmax()
    for t in range(T - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def repair(tags):
    """IOB2 repair: an I-X not after B-X or I-X becomes B-X (tag strings)."""
    out, prev = [], "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out


def decode(logits, lengths, mode="viterbi"):
    """Tag-string lists of each sentence from (T, B, C) logits."""
    if mode not in DECODES:
        raise ValueError(f"decode: expected one of {DECODES}, got {mode!r}")
    logp = log_softmax(np.asarray(logits, np.float64))
    out = []
    for j, n in enumerate(np.asarray(lengths)):
        lp = logp[:n, j]
        ids = viterbi(lp) if mode == "viterbi" else lp.argmax(axis=1)
        tags = [TAGS[i] for i in ids]
        out.append(repair(tags) if mode == "repair" else tags)
    return out


class EntityF1:
    """Streaming entity-level F1 (conlleval) for fit(): decodes each batch with ``mode``."""
    name = "entity_f1"
    higher_is_better = True

    def __init__(self, mode="viterbi"):
        self.mode = mode
        self.reset()

    def reset(self):
        self.true, self.pred = [], []

    def update(self, outputs, batch):
        lens = batch["lengths"]
        self.pred.extend(decode(outputs, lens, self.mode))
        y = batch["targets"]
        self.true.extend([TAGS[i] for i in y[:n, j]] for j, n in enumerate(lens))

    def result(self):
        return M.ner_scores(self.true, self.pred)["f1"] if self.true else 0.0


# --------------------------------------------------------------------- data files
def _files(data, dev):
    """(train file, dev file) from --data (None, a folder or a train file) and --dev."""
    if data is None:
        train = data_file("ner_train")
        devf = dev if dev is not None else data_file("ner_dev")
    else:
        p = Path(os.fspath(data)).expanduser()
        if p.is_dir():
            train, devf = p / TRAIN_NAME, (dev if dev is not None else p / DEV_NAME)
        else:
            train = p
            sib = p.with_name(p.name.replace("train", "dev"))
            devf = dev if dev is not None else (sib if sib != p and sib.is_file() else data_file("ner_dev"))
    for f in (train, devf):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: no such file")
    return Path(train), Path(devf)


def _dev_file(data):
    if data is None:
        return data_file("ner_dev")
    p = Path(os.fspath(data)).expanduser()
    if p.is_dir():
        p = p / DEV_NAME
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    return p


def _subset(sents, n, seed):
    if not n or n >= len(sents):
        return sents
    keep = np.sort(np.random.default_rng(seed).permutation(len(sents))[:n])
    return [sents[i] for i in keep]


# --------------------------------------------------------------------- inference
def _encoder(model):
    enc = getattr(model, "_encoder_cache", None)
    if enc is None:
        meta = model.metadata or {}
        if "encoder" not in meta:
            raise ValueError("model: no vocabularies in its metadata; not a model saved by fastrnn.tasks.ner")
        enc = model._encoder_cache = Encoder.from_dict(meta["encoder"])
    return enc


def tag_sentences(model, sentences, *, mode=None, batch_size=64):
    """IOB2 tag lists for token lists ``sentences`` (``mode``: a decode mode, default the model's)."""
    model = load_model(model, NERTagger)
    mode = mode or (model.metadata or {}).get("decode", "viterbi")
    return tag_sentences_modes(model, sentences, (mode,), batch_size=batch_size)[mode]


def tag_sentences_modes(model, sentences, modes=DECODES, *, batch_size=64):
    """{mode: tag lists} for several decode modes from one forward pass."""
    model = load_model(model, NERTagger)
    enc = _encoder(model)
    encoded = [enc.encode(toks) for toks in sentences]
    out = {m: [None] * len(sentences) for m in modes}
    for b in make_batches(encoded, None, batch_size, bucket_size=batch_size * 8):
        logits = model.forward(b, training=False)
        for m in modes:
            for i, tags in zip(b["indices"], decode(logits, b["lengths"], m)):
                out[m][i] = tags
    return out


def _scores(true_tags, pred_tags):
    s = M.ner_scores(true_tags, pred_tags)
    flat_t = [t for ts in true_tags for t in ts]
    flat_p = [t for ts in pred_tags for t in ts]
    s["token_accuracy"] = M.accuracy(flat_t, flat_p) if flat_t else 0.0
    return s


# --------------------------------------------------------------------- interface
def add_arguments(parser):
    g = parser.add_argument_group("ner")
    g.add_argument("--dev", help="dev file for train (default: en_ewt-dev.iob2 beside the training data)")
    g.add_argument("--epochs", type=int, help=f"maximum epochs (default {DEFAULTS['epochs']})")
    g.add_argument("--batch-size", dest="batch_size", type=int, help=f"default {DEFAULTS['batch_size']}")
    g.add_argument("--lr", type=float, help=f"Adam learning rate (default {DEFAULTS['lr']})")
    g.add_argument("--hidden", type=int, help=f"word BiLSTM hidden size per direction (default {DEFAULTS['hidden']})")
    g.add_argument("--cell", choices=("gru", "lstm"), help="word-level recurrent cell (default lstm)")
    g.add_argument("--dropout", type=float, help=f"default {DEFAULTS['dropout']}")
    g.add_argument("--class-weight", dest="class_weight", choices=("balanced", "sqrt", "none"),
                   help="class-weighted loss over the tags (default none; see docs)")
    g.add_argument("--decode", choices=DECODES, help="argmax, IOB2 repair, or IOB2-constrained viterbi (default)")
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs on dev entity F1")
    g.add_argument("--max-train", dest="max_train", type=int, help="use only this many training sentences")


def train(*, data=None, out=None, quick=False, seed=0, progress=True, **options):
    """Train on en_ewt-train.iob2, select on en_ewt-dev.iob2 entity F1, save to ``out``.

    ``data``: None (the shared data), a folder holding both files, or a
    training file (its dev file: ``dev=``, else the sibling *dev* file, else
    the shared one).  Returns {"metrics": ner_scores on dev (+ token_accuracy,
    + f1 of each decode mode), "seconds", "tokens_per_s", "history", "model"}."""
    cfg = merge_options(DEFAULTS, QUICK, quick, options)
    if cfg["decode"] not in DECODES:
        raise ValueError(f"decode: expected one of {DECODES}, got {cfg['decode']!r}")
    t_start = time.perf_counter()
    train_file, dev_file = _files(data, cfg["dev"])
    tr = _subset(load_conll(train_file), cfg["max_train"], seed)   # DataError "file:line: ..." on bad data
    dv = _subset(load_conll(dev_file), cfg["max_dev"], seed)
    enc = Encoder.build([toks for toks, _ in tr])
    x_tr = [enc.encode(toks) for toks, _ in tr]
    y_tr = [[TAG_ID[t] for t in tags] for _, tags in tr]
    x_dv = [enc.encode(toks) for toks, _ in dv]
    y_dv = [[TAG_ID[t] for t in tags] for _, tags in dv]
    counts = np.bincount(np.concatenate([np.asarray(y, np.int64) for y in y_tr]), minlength=len(TAGS))
    weight = class_weights(counts, cfg["class_weight"])
    wfreq = Counter(w for toks, _ in tr for w in (t.lower() for t in toks))
    pdrop = np.zeros(len(enc.words))
    for w, c in wfreq.items():
        pdrop[enc.words[w]] = cfg["unk_alpha"] / (cfg["unk_alpha"] + c) if c == 1 else 0.0

    model = NERTagger(len(enc.words), len(enc.chars), word_dim=cfg["word_dim"], char_dim=cfg["char_dim"],
                      char_hidden=cfg["char_hidden"], shape_dim=cfg["shape_dim"], hidden=cfg["hidden"],
                      cell=cfg["cell"], dropout=cfg["dropout"], seed=seed)
    model.reseed(seed)
    noise = np.random.default_rng(seed + 1)
    bs = cfg["batch_size"]
    unk = enc.words.unk_id

    def train_batches(epoch):
        for b in make_batches(x_tr, y_tr, bs, shuffle=True, seed=seed * 1000 + epoch, bucket_size=bs * 20):
            b["inputs"] = word_dropout(b["inputs"], pdrop[b["inputs"]], unk, noise)
            yield b

    val = list(make_batches(x_dv, y_dv, 64, bucket_size=64 * 8))
    meta = {"task": NAME, "encoder": enc.to_dict(), "tags": TAGS, "decode": cfg["decode"],
            "config": {k: (str(v) if k == "dev" and v is not None else v) for k, v in cfg.items()},
            "seed": seed, "data": {"train": str(train_file), "dev": str(dev_file), "n_train": len(tr),
                                   "n_dev": len(dv)},
            "class_weight": None if weight is None else weight.tolist()}
    out = default_out(NAME, out)
    hist = fit(model, train_batches, epochs=cfg["epochs"], optimizer=Adam(model, cfg["lr"]),
               loss_fn=CrossEntropyLoss(weight=weight), val_batches=val, metric=EntityF1(cfg["decode"]),
               patience=cfg["patience"], checkpoint=out, clip_norm=cfg["clip_norm"], progress=progress,
               verbose=progress is not False, metadata=meta)
    model.metadata = meta
    model._encoder_cache = enc
    true = [tags for _, tags in dv]
    res = None
    by_mode = {}
    tagged = tag_sentences_modes(model, [toks for toks, _ in dv])
    for mode in DECODES:
        s = _scores(true, tagged[mode])
        by_mode[mode] = s["f1"]
        if mode == cfg["decode"]:
            res = s
    res["f1_by_decode"] = by_mode
    tokens_per_epoch = sum(len(toks) for toks, _ in tr)
    return save_trained(model, out, meta, hist, res, tokens_per_epoch, t_start, cfg)


def evaluate(model, *, data=None, decode=None, batch_size=64, **options):
    """Entity precision/recall/F1 (conlleval), per type, and token accuracy on
    ``data`` (default: the shared en_ewt-dev.iob2; a folder means its dev
    file; a file is read whole)."""
    model = load_model(model, NERTagger)
    path = _dev_file(data)
    sents = load_conll(path)
    t0 = time.perf_counter()
    pred = tag_sentences(model, [toks for toks, _ in sents], mode=decode, batch_size=batch_size)
    secs = time.perf_counter() - t0
    res = _scores([tags for _, tags in sents], pred)
    n_tok = sum(len(t) for t, _ in sents)
    res.update(decode=decode or (model.metadata or {}).get("decode", "viterbi"), sentences=len(sents),
               seconds=secs, tokens_per_s=n_tok / max(secs, 1e-9), file=str(path))
    return res


def _char_offsets(text, tokens):
    """(start, end) character offsets of each token in ``text`` (None where not found)."""
    norm = text.replace("\u2019", "'").replace("\u2018", "'")
    out, pos = [], 0
    for tok in tokens:
        i = norm.find(tok, pos)
        if i < 0:
            i = norm.lower().find(tok.lower(), pos)
        if i < 0:
            out.append(None)
            continue
        out.append((i, i + len(tok)))
        pos = i + len(tok)
    return out


def entity_spans(tokens, tags, text=None):
    """[{"type", "start", "end" (token indices, end exclusive), "text"}] of an
    IOB2 tag sequence; with the original ``text`` also "char_start"/"char_end"
    and "text" as written there."""
    offs = _char_offsets(text, tokens) if text is not None else None
    spans = []
    for typ, s, e in M.get_entities(tags):
        d = {"type": typ, "start": s, "end": e, "text": " ".join(tokens[s:e])}
        if offs is not None and offs[s] is not None and offs[e - 1] is not None:
            d["char_start"], d["char_end"] = offs[s][0], offs[e - 1][1]
            d["text"] = text[d["char_start"]:d["char_end"]]
        spans.append(d)
    return spans


def predict(model, text, *, decode=None, **options):
    """Entities of a sentence: {"tokens", "tags", "entities": [{"type", "start",
    "end", "text", "char_start", "char_end"}]}.  ``text``: a str (tokenized
    with fastrnn.data.word_tokenize) or a list of tokens."""
    if isinstance(text, str):
        toks, raw = word_tokenize(text), text
    else:
        toks, raw = [str(t) for t in text], None
    tags = tag_sentences(model, [toks], mode=decode)[0] if toks else []
    return {"tokens": toks, "tags": tags, "entities": entity_spans(toks, tags, raw)}
