"""Translation: English -> French, an encoder-decoder with Luong attention.

    fastrnn train translation [--quick] [--hidden 256 ...]    -> models/translation.npz
    fastrnn eval translation --model M                        BLEU (greedy and beam) on dev
    fastrnn predict translation --model M "How are you?"      the beam's best translations

Data: the Tatoeba pairs (fastrnn.data.load_pairs), both sides at most
``max_words`` word_tokenize tokens (default 8), lowercased, split by
fastrnn.data.split_pairs (a hash of the English side, so every translation
of a dev sentence is in dev).  BLEU is fastrnn.metrics.token_bleu of the
decoded tokens against *all* references of each dev source
(fastrnn.data.group_references), tokenized the same way.

Model (:class:`Seq2Seq`), shapes T source steps, T' target steps, B batch:

    encoder   Embedding(Vs, E) -> bidirectional GRU(E, H/2)   -> keys (T, B, H);
              the two final states concatenated are the decoder's h0 (1, B, H)
    decoder   Embedding(Vt, E) -> GRU(E, H), h0 from the encoder -> y (T', B, H)
    head      c = Attention(y, keys) (Luong "general", source padding masked);
              h~ = tanh(W_c [c; y]); logits = W_o Dropout(h~)

Training is teacher forcing: the decoder reads <bos> + target in ONE fused
rnn_forward over all T' steps, and attention runs for all steps at once (the
attention comes after the RNN, Luong-style, so nothing feeds back).
Inference runs the same layers one step at a time, carrying the decoder
state, for greedy or beam search (fastrnn.tasks.decoding); <pad>, <bos> and
<unk> are never emitted.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..data import (Batch, DataError, Vocab, group_references, load_pairs, pad_sequences, split_pairs, word_tokenize)
from ..layers import GRU, LSTM, Attention, Dense, Dropout, Embedding, Tanh
from ..losses import log_softmax, softmax_cross_entropy
from ..metrics import token_bleu
from ..model import Model, evaluate as evaluate_model, fit
from ..optim import Adam
from .decoding import (TimeBudget, beam_search, blas_threads, greedy_search, load_model, merge_options,
                       resolve_data, take_rows)

__all__ = ["Seq2Seq", "translate", "detokenize_fr", "seq_loss", "target_mask", "make_batches", "bleu_score",
           "add_arguments", "train", "evaluate", "predict", "DEFAULTS", "QUICK"]

# Full default run: max_minutes bounds the whole train() call (data, training, the final
# dev evaluation) on a 2-core CPU; see docs/tasks_generate.md for measured runs.
DEFAULTS = dict(
    embed=128, hidden=256, cell="gru", bidirectional=True, dropout=0.2, attention="general",
    batch_size=64, epochs=12, lr=2e-3, lr_decay=0.85, clip=5.0, patience=2, max_minutes=14.0,
    max_words=8, min_freq=2, lower=True, dev_fraction=0.1, max_train_pairs=None,
    beam_width=5, length_penalty=1.0, max_len=30, eval_batch_size=64,
    max_dev_sources=None,    # cap on the dev sources of the BLEU computed at the end of train()
    threads=1,               # BLAS threads (see decoding.blas_threads); 0 leaves them alone
)
# --quick: a smoke run, under 30 s in all.
QUICK = dict(embed=64, hidden=96, epochs=3, max_train_pairs=8000, max_minutes=0.45, dropout=0.0, lr=5e-3,
             max_dev_sources=300)


class Seq2Seq(Model):
    """Encoder-decoder with Luong attention (see the module docstring).

    Seq2Seq(src_vocab, tgt_vocab, embed=128, hidden=256, cell="gru",
            bidirectional=True, dropout=0.2, attention="general", seed=0)
        src_vocab, tgt_vocab   Vocab.to_dict() (saved with the model)

    forward(batch) with a fastrnn.data.Batch: inputs (T, B) source ids,
    lengths (B,), targets (T', B) <bos> ... <eos>, target_lengths (B,)
    -> logits (N, Vt) predicting targets[1:] at the N steps of
    target_mask(batch), t-major (see :func:`seq_loss`).
    """

    def __init__(self, src_vocab, tgt_vocab, embed=128, hidden=256, cell="gru", bidirectional=True,
                 dropout=0.2, attention="general", seed=0):
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell: expected 'gru' or 'lstm', got {cell!r}")
        if bidirectional and hidden % 2:
            raise ValueError(f"hidden: expected an even size with bidirectional=True, got {hidden}")
        self.src_vocab = Vocab.from_dict(src_vocab)
        self.tgt_vocab = Vocab.from_dict(tgt_vocab)
        self.hidden = H = hidden
        self.lstm = cell == "lstm"
        self.bidirectional = bool(bidirectional)
        rnn = LSTM if self.lstm else GRU
        rng = np.random.default_rng(seed)
        self.src_emb = Embedding(len(self.src_vocab), embed, padding_idx=0, seed=rng)
        self.tgt_emb = Embedding(len(self.tgt_vocab), embed, padding_idx=0, seed=rng)
        self.drop_src = Dropout(dropout, seed=rng)
        self.drop_tgt = Dropout(dropout, seed=rng)
        self.enc = rnn(embed, H // 2 if bidirectional else H, bidirectional=bidirectional,
                       return_state=True, seed=rng)
        self.dec = rnn(embed, H, return_state=True, seed=rng)
        self.att = Attention(H, H, attention, seed=rng)
        self.comb = Dense(2 * H, H, seed=rng)
        self.tanh = Tanh()
        self.drop_out = Dropout(dropout, seed=rng)
        self.out = Dense(H, len(self.tgt_vocab), seed=rng)
        v = self.tgt_vocab
        self._banned = [i for i in (v.pad_id, v.bos_id, v.unk_id) if i is not None]

    # ------------------------------------------------ encoder state <-> decoder h0
    def _bridge(self, s):
        """Encoder final state (D, B, H/D) -> decoder h0 (1, B, H) (LSTM: both parts)."""
        if self.lstm:
            return tuple(self._bridge_one(x) for x in s)
        return self._bridge_one(s)

    def _bridge_one(self, x):
        return np.concatenate(list(x), axis=-1)[None] if self.bidirectional else x

    def _unbridge(self, d):
        if d is None:
            return None
        if self.lstm:
            return tuple(self._unbridge_one(x) for x in d)
        return self._unbridge_one(d)

    def _unbridge_one(self, x):
        if not self.bidirectional:
            return x
        h = self.hidden // 2
        return np.stack([x[0, :, :h], x[0, :, h:]])

    # ------------------------------------------------ pieces
    def encode(self, src, lengths, *, training=False):
        """(keys (T, B, H), decoder h0) of source ids (T, B) with lengths (B,)."""
        e = self.drop_src(self.src_emb(src, training=training), training=training)
        keys, state = self.enc(e, training=training, lengths=lengths)
        return keys, self._bridge(state)

    def head(self, y, keys, src_lengths, *, training=False, rows=None):
        """Decoder outputs y (T', B, H) -> logits (N, Vt) through attention, for
        the N = T'*B steps (t-major), or only the steps ``rows`` = (t, b)
        index arrays (training scores the valid, unpadded steps only: the
        output layer is most of the cost)."""
        ctx = self.att(y, keys, training=training, key_lengths=src_lengths)
        T, B, H = y.shape
        cat = np.concatenate([ctx, y], axis=-1)
        cat = cat.reshape(T * B, 2 * H) if rows is None else cat[rows]        # 2-D: one GEMM each
        a = self.tanh(self.comb(cat, training=training), training=training)
        return self.out(self.drop_out(a, training=training), training=training)

    def forward(self, batch, *, training=False):
        src, sl = np.asarray(batch.inputs), np.asarray(batch.lengths)
        tgt = np.asarray(batch.targets)
        keys, h0 = self.encode(src, sl, training=training)
        d = self.drop_tgt(self.tgt_emb(tgt[:-1], training=training), training=training)
        y, _ = self.dec(d, training=training, lengths=np.asarray(batch.target_lengths) - 1, h0=h0)
        rows = np.nonzero(target_mask(batch))
        if training:
            self._push((rows, y.shape))
        return self.head(y, keys, sl, training=training, rows=rows)

    def backward(self, dlogits):
        rows, shape = self._pop()
        H = self.hidden
        d = self.tanh.backward(self.drop_out.backward(self.out.backward(dlogits)))
        dcat = np.zeros(shape[:2] + (2 * H,), dtype=d.dtype)
        dcat[rows] = self.comb.backward(d)
        dctx, dy = dcat[..., :H], dcat[..., H:]
        dq, dkeys = self.att.backward(dctx)
        dd = self.dec.backward(dy + dq)
        self.tgt_emb.backward(self.drop_tgt.backward(dd))
        de = self.enc.backward(dkeys, dstate=self._unbridge(self.dec.dh0))
        self.src_emb.backward(self.drop_src.backward(de))

    # ------------------------------------------------ step-by-step decoding
    def step(self, ids, state):
        """One decoder step: ids (N,) -> (log-probs (N, Vt), state); state is
        (decoder h, keys (T, N, H), source lengths (N,))."""
        h, keys, sl = state
        y, h = self.dec(self.tgt_emb(np.asarray(ids, np.int64)[None]), h0=h)
        logp = log_softmax(self.head(y, keys, sl)).astype(np.float64)    # in the model's dtype: fast
        logp[:, self._banned] = -np.inf
        return logp, (h, keys, sl)

    @staticmethod
    def reorder(state, rows):
        h, keys, sl = state
        return take_rows(h, rows, axis=1), keys[:, rows], sl[rows]


def target_mask(batch):
    """(T'-1, B) bool: the decoder steps that predict a real token (targets[1:]
    before each target's end)."""
    tgt = np.asarray(batch.targets)
    return np.arange(tgt.shape[0] - 1)[:, None] < (np.asarray(batch.target_lengths) - 1)[None, :]


def seq_loss(logits, batch):
    """loss_fn for fit(): cross-entropy of Seq2Seq.forward's logits (N, V),
    one row per True of target_mask(batch) in t-major order, against those
    targets (targets[1:] at the mask)."""
    tgt = np.asarray(batch.targets)[1:][target_mask(batch)]
    loss, d = softmax_cross_entropy(logits, tgt)
    return loss, d, int(tgt.size)


def make_batches(xs, ys, batch_size, *, shuffle=False, seed=0, chunk=50):
    """Batches of (source ids, target ids) pairs with little padding: the
    (shuffled) pairs are cut into chunks of ``chunk`` batches, each chunk is
    sorted by target then source length, cut into batches, and (when
    shuffling) the batch order is shuffled.  Yields fastrnn.data.Batch."""
    n = len(xs)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    sl = np.fromiter((len(x) for x in xs), np.int64, n)
    tl = np.fromiter((len(y) for y in ys), np.int64, n)
    step = batch_size * chunk
    parts = []
    for i in range(0, n, step):
        c = order[i:i + step]
        parts.append(c[np.lexsort((sl[c], tl[c]))])
    order = np.concatenate(parts) if parts else order
    idxs = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if shuffle:
        idxs = [idxs[i] for i in rng.permutation(len(idxs))]
    for idx in idxs:
        x, xl = pad_sequences([xs[i] for i in idx])
        y, yl = pad_sequences([ys[i] for i in idx])
        yield Batch(x, xl, y, yl, idx.astype(np.int64))


# ------------------------------------------------------------------ text

def _tok(text, lower):
    return word_tokenize(text, lower=lower)


_NO_SPACE_BEFORE = {".", ",", ")", "]", "}", "»", "%", "…"}
_NO_SPACE_AFTER = {"(", "[", "{", "«", "-"}


def detokenize_fr(tokens):
    """Join French word tokens for display: elisions (``l'`` ``homme`` ->
    ``l'homme``), no space before ``. ,``; ``? ! : ;`` keep their French space."""
    out = ""
    prev = None
    for t in tokens:
        if prev is None:
            out = t
        elif t in _NO_SPACE_BEFORE or prev.endswith("'") or prev in _NO_SPACE_AFTER or t.startswith("-"):
            out += t
        else:
            out += " " + t
        prev = t
    if out[:1].isalpha():
        out = out[0].upper() + out[1:]
    return out


def translate(model, sentences, *, beam_width=5, greedy=False, length_penalty=1.0, max_len=30,
              batch_size=64, n_best=1, lower=None):
    """Translate English sentences (str) with ``model`` (a Seq2Seq).

    Greedy (``greedy=True`` or beam_width 1 with n_best 1) or beam search.
    Returns, per sentence, a list of n_best dicts {"tokens", "logprob",
    "score"} best first (n_best=1 for greedy)."""
    if lower is None:
        lower = bool(((model.metadata or {}).get("config") or {}).get("lower", True))
    srcs = [model.src_vocab.encode(_tok(s, lower)) or [model.src_vocab.unk_id] for s in sentences]
    order = np.argsort([-len(s) for s in srcs], kind="stable")
    res = [None] * len(srcs)
    bos, eos = model.tgt_vocab.bos_id, model.tgt_vocab.eos_id
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        lens = np.array([len(srcs[j]) for j in idx], np.int64)
        T = int(lens.max())
        src = np.zeros((T, len(idx)), np.int64)
        for c, j in enumerate(idx):
            src[:len(srcs[j]), c] = srcs[j]
        keys, h0 = model.encode(src, lens)
        state = (h0, keys, lens)
        start = np.full(len(idx), bos, np.int64)
        cap = int(min(max_len, 2 * T + 5))
        final = lambda b, prev, tok: tok == eos  # noqa: E731
        if greedy:
            hyps = [[h] for h in greedy_search(model.step, state, start, max_len=cap, is_final=final,
                                               reorder=model.reorder)]
        else:
            hyps = beam_search(model.step, state, start, beam_width=beam_width, n_best=n_best, max_len=cap,
                               is_final=final, reorder=model.reorder, length_penalty=length_penalty)
        for c, j in enumerate(idx):
            res[j] = [{"tokens": model.tgt_vocab.decode(h.tokens), "logprob": h.logprob, "score": h.score}
                      for h in hyps[c]]
    return res


def bleu_score(hyp_tokens, references, lower=True):
    """token_bleu of hypotheses (token lists) against lists of reference
    strings, tokenized like the training targets."""
    refs = [[_tok(r, lower) for r in rs] for rs in references]
    return token_bleu(hyp_tokens, refs)


# ------------------------------------------------------------------ data

def _load(path, cfg):
    pairs = load_pairs(path, max_words=cfg["max_words"] or None)
    if not pairs:
        raise DataError(path, None, f"no pairs with at most {cfg['max_words']} words on both sides")
    return split_pairs(pairs, cfg["dev_fraction"])


def _encode_pairs(pairs, sv, tv, lower):
    src = [sv.encode(_tok(e, lower)) for e, _ in pairs]
    tgt = [tv.encode(_tok(f, lower), add_bos=True, add_eos=True) for _, f in pairs]
    return src, tgt


def _dev_sources(dev, cfg, max_sources=None):
    sources, refs = group_references(dev)
    if max_sources:
        sources, refs = sources[:max_sources], refs[:max_sources]
    return sources, refs


# ------------------------------------------------------------------ task interface

def add_arguments(parser):
    """Options of ``fastrnn train|eval|predict translation`` (defaults: DEFAULTS)."""
    g = parser.add_argument_group("translation")
    g.add_argument("--hidden", type=int, help=f"encoder/decoder size (default {DEFAULTS['hidden']})")
    g.add_argument("--embed", type=int, help=f"word embedding size (default {DEFAULTS['embed']})")
    g.add_argument("--cell", choices=("gru", "lstm"), help="recurrent cell (default gru)")
    g.add_argument("--dropout", type=float, help=f"dropout (default {DEFAULTS['dropout']})")
    g.add_argument("--batch-size", dest="batch_size", type=int,
                   help=f"pairs per batch (default {DEFAULTS['batch_size']})")
    g.add_argument("--epochs", type=int, help=f"maximum epochs (default {DEFAULTS['epochs']})")
    g.add_argument("--lr", type=float, help=f"Adam learning rate (default {DEFAULTS['lr']})")
    g.add_argument("--max-words", dest="max_words", type=int,
                   help=f"keep pairs with at most this many tokens a side, 0 for all "
                        f"(default {DEFAULTS['max_words']})")
    g.add_argument("--max-minutes", dest="max_minutes", type=float,
                   help=f"training time budget in minutes, 0 for none; the best epoch so far is kept "
                        f"(default {DEFAULTS['max_minutes']})")
    g.add_argument("--beam-width", dest="beam_width", type=int, help=f"beam width (default {DEFAULTS['beam_width']})")
    g.add_argument("--length-penalty", dest="length_penalty", type=float,
                   help=f"GNMT length penalty alpha (default {DEFAULTS['length_penalty']})")
    g.add_argument("--greedy", action="store_true", default=None, help="eval/predict: greedy decoding only")
    g.add_argument("--k", type=int, help="predict: number of translations (default 1)")
    return parser


def train(*, data=None, out=None, quick=False, seed=0, progress=True, **options):
    """Train the encoder-decoder; save the best epoch (lowest dev loss) to
    ``out`` (default models/translation.npz).  Returns {"metrics": {"dev_loss",
    "dev_bleu_greedy", "dev_bleu_beam", ...}, "seconds", "tokens_per_s"
    (target tokens/s in training), "history", "model", "config"}."""
    cfg = merge_options(DEFAULTS, QUICK, quick, options, "translation")
    with blas_threads(cfg["threads"]):
        return _train(cfg, data, out, seed, progress)


def _train(cfg, data, out, seed, progress):
    t_start = time.perf_counter()
    path = resolve_data(data, "translation")
    train_pairs, dev = _load(path, cfg)
    if cfg["max_train_pairs"]:
        rs = np.random.default_rng(seed)
        keep = np.sort(rs.permutation(len(train_pairs))[:int(cfg["max_train_pairs"])])
        train_pairs = [train_pairs[i] for i in keep]
    lower = bool(cfg["lower"])
    sv = Vocab.build([_tok(e, lower) for e, _ in train_pairs], min_freq=cfg["min_freq"])
    tv = Vocab.build([_tok(f, lower) for _, f in train_pairs], min_freq=cfg["min_freq"])
    xs, ys = _encode_pairs(train_pairs, sv, tv, lower)
    dxs, dys = _encode_pairs(dev, sv, tv, lower)
    model = Seq2Seq(sv.to_dict(), tv.to_dict(), cfg["embed"], cfg["hidden"], cfg["cell"], cfg["bidirectional"],
                    cfg["dropout"], cfg["attention"], seed)
    out = Path(out) if out is not None else Path("models") / "translation.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    B = cfg["batch_size"]
    budget = TimeBudget(cfg["max_minutes"], reserve=150.0)  # resized from the measured dev pass

    def train_batches(epoch):
        return budget.wrap(make_batches(xs, ys, B, shuffle=True, seed=seed * 1000 + epoch))

    val = list(make_batches(dxs, dys, cfg["eval_batch_size"]))
    meta = {"task": "translation", "config": cfg, "data": str(path),
            "pairs": {"train": len(train_pairs), "dev": len(dev)}}
    model.metadata = meta

    n_src = len(group_references(dev)[0])
    share = min(1.0, (cfg["max_dev_sources"] or n_src) / max(n_src, 1))

    def epoch_end(epoch, hist, model):
        # after the last batch come a dev-loss pass, greedy and beam decoding of
        # the dev sources (about 8 dev-loss passes for all of them), and saving
        budget.reserve = (1.5 + 8.5 * share) * budget.last_pass + min(15.0, 0.05 * (budget.total or 0))
        return budget.expired()

    hist = fit(model, train_batches, epochs=cfg["epochs"], optimizer=Adam(model, cfg["lr"]), loss_fn=seq_loss,
               val_batches=lambda ep: budget.timed(val), patience=cfg["patience"], checkpoint=out,
               clip_norm=cfg["clip"], lr_schedule=lambda ep: cfg["lr"] * cfg["lr_decay"] ** ep,
               progress=progress, verbose=bool(progress), metadata=meta, on_epoch_end=epoch_end)
    train_s = float(sum(hist["seconds"]))
    n_train = sum(r * s for r, s in zip(hist["tokens_per_s"], hist["seconds"]))
    tps = n_train / train_s if train_s > 0 else 0.0
    ev = _bleu(model, dev, cfg, max_sources=cfg["max_dev_sources"])
    metrics = {"dev_loss": float(hist["best"]), "dev_bleu_greedy": ev["bleu_greedy"],
               "dev_bleu_beam": ev["bleu_beam"], "dev_sources": ev["sources"],
               "best_epoch": hist["best_epoch"] + 1, "epochs_run": hist["epochs_run"],
               "time_budget_hit": budget.hit and hist["epochs_run"] < cfg["epochs"],
               "parameters": model.num_parameters(),
               "vocab": {"en": len(sv), "fr": len(tv)}}
    seconds = time.perf_counter() - t_start
    history = dict(hist)
    model.save(out, metadata=dict(meta, metrics=metrics, tokens_per_s=tps, seconds=seconds, history=history))
    return {"metrics": metrics, "seconds": seconds, "train_seconds": train_s, "tokens_per_s": tps,
            "history": history, "model": str(out), "config": cfg, "examples": ev["examples"]}


def _bleu(model, dev, cfg, *, max_sources=None, greedy=True, beam=True, beam_width=None, length_penalty=None):
    sources, refs = _dev_sources(dev, cfg, max_sources)
    res = {"sources": len(sources), "references": sum(len(r) for r in refs)}
    lower = bool(cfg["lower"])
    kw = dict(max_len=cfg["max_len"], batch_size=cfg["eval_batch_size"], lower=lower)
    examples = None
    if greedy:
        t0 = time.perf_counter()
        hyps = [r[0]["tokens"] for r in translate(model, sources, greedy=True, **kw)]
        res["greedy_seconds"] = time.perf_counter() - t0
        res["bleu_greedy"] = bleu_score(hyps, refs, lower)
        examples = hyps
    if beam:
        t0 = time.perf_counter()
        hyps = [r[0]["tokens"] for r in translate(
            model, sources, beam_width=beam_width or cfg["beam_width"],
            length_penalty=cfg["length_penalty"] if length_penalty is None else length_penalty, **kw)]
        res["beam_seconds"] = time.perf_counter() - t0
        res["bleu_beam"] = bleu_score(hyps, refs, lower)
        examples = hyps
    step = max(1, len(sources) // 8)
    res["examples"] = [{"en": sources[i], "fr": detokenize_fr(examples[i]), "refs": refs[i]}
                       for i in range(0, len(sources), step)][:8]
    return res


def evaluate(model, *, data=None, split="dev", max_words=None, beam_width=None, length_penalty=None,
             greedy=None, max_sources=None, **options):
    """BLEU of ``model`` (a Seq2Seq or a path) on the dev pairs of ``data``
    (default the shared eng-fra file; ``split="all"`` scores every pair of the
    file, e.g. a held-out set) with at most ``max_words`` tokens a side
    (default: the model's, 8; 0: every pair), against all references of
    each source.  Returns {"bleu_greedy",
    "bleu_beam" (unless greedy=True), "loss" (dev cross-entropy per target
    token), "sources", "seconds", "examples"}."""
    model = load_model(model, Seq2Seq)
    if split not in ("dev", "all"):
        raise ValueError(f"split: expected 'dev' or 'all', got {split!r}")
    cfg = dict(DEFAULTS, **((model.metadata or {}).get("config") or {}))
    if max_words is not None:
        cfg["max_words"] = max_words
    path = resolve_data(data, "translation")
    t0 = time.perf_counter()
    if split == "dev":
        dev = _load(path, cfg)[1]
    else:
        dev = load_pairs(path, max_words=cfg["max_words"] or None)
    if not dev:
        raise DataError(path, None, f"no {split} pairs with at most {cfg['max_words']} words")
    dxs, dys = _encode_pairs(dev, model.src_vocab, model.tgt_vocab, bool(cfg["lower"]))
    val = make_batches(dxs, dys, cfg["eval_batch_size"])
    with blas_threads(cfg["threads"]):
        loss = evaluate_model(model, val, loss_fn=seq_loss)["loss"]
        res = _bleu(model, dev, cfg, max_sources=max_sources, beam=not greedy, beam_width=beam_width,
                    length_penalty=length_penalty)
    res.update(loss=loss, pairs=len(dev), data=str(path), split=split, seconds=time.perf_counter() - t0)
    return res


def predict(model, text, *, k=None, beam_width=None, greedy=None, length_penalty=None, **options):
    """Translations of ``text`` (one English sentence): [{"text", "tokens",
    "logprob", "score"}], best first (k of them, default 1)."""
    model = load_model(model, Seq2Seq)
    cfg = dict(DEFAULTS, **((model.metadata or {}).get("config") or {}))
    k = k or 1
    res = translate(model, [text], greedy=bool(greedy), beam_width=max(beam_width or cfg["beam_width"], k),
                    n_best=k, length_penalty=cfg["length_penalty"] if length_penalty is None else length_penalty,
                    max_len=cfg["max_len"], lower=bool(cfg["lower"]))[0]
    return [{"text": detokenize_fr(r["tokens"]), "tokens": r["tokens"], "logprob": round(r["logprob"], 4),
             "score": round(r["score"], 4)} for r in res]
