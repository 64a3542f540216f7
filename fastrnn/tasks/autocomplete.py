"""Autocomplete: a character-level language model over Tiny Shakespeare, with
beam-search completion of a half-typed text.

    fastrnn train autocomplete [--quick] [--hidden 512 ...]   -> models/autocomplete.npz
    fastrnn eval autocomplete --model M                        dev cross-entropy (nats/char)
    fastrnn predict autocomplete --model M "To be or no"       the k best continuations

Model (:class:`CharLM`): Embedding(V, E) -> LSTM(E, H, L) -> Dropout -> Dense(H, V),
trained with truncated BPTT: the text is cut into B parallel streams
(fastrnn.data.bptt_batches) read in windows of T characters, and each
window starts from the previous window's final state (carried, not
back-propagated through).  Each epoch shifts the streams by a random offset
so the window boundaries move.  The dev split is the last 10 % of the text
(fastrnn.data.split_text, contiguous); its cross-entropy is measured the
same way, state carried across windows.

Completion (:func:`complete`): the prefix (after a "\\n", so the model reads
it as the start of a line) runs through the model in one call; beam search
(fastrnn.tasks.decoding) then extends it character by character until the
unit asked for ends: the rest of the current word (``until="word"``), ``n``
more words (``"words"``), the rest of the line (``"line"``) or ``n``
characters (``"chars"``).  Each continuation comes with its log-probability
(the terminating space/punctuation/newline included, so it is the
probability that the unit is exactly that text); results are sorted, best
first.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..data import DataError, Vocab, batchify, load_text, split_text
from ..layers import GRU, LSTM, Dense, Dropout, Embedding
from ..losses import CrossEntropyLoss, log_softmax
from ..model import Model, fit
from ..optim import Adam
from .decoding import (TimeBudget, beam_search, blas_threads, greedy_search, load_model, merge_options,
                       resolve_data, take_rows)

__all__ = ["CharLM", "complete", "add_arguments", "train", "evaluate", "predict", "DEFAULTS", "QUICK"]

UNK = "<unk>"

# Full default run: max_minutes bounds the whole train() call (data, training, the final
# dev evaluation) on a 2-core CPU; see docs/tasks_generate.md for measured runs.
DEFAULTS = dict(
    hidden=512, layers=1, embed=64, cell="lstm", dropout=0.1,
    seq_len=100, batch_size=64, epochs=12, lr=2e-3, lr_decay=0.85, clip=5.0,
    patience=2, max_minutes=14.0, dev_fraction=0.1, max_train_chars=None, eval_batch_size=32,
    threads=1,          # BLAS threads (see decoding.blas_threads); 0 leaves them alone
)
# --quick: a smoke run, under 30 s in all.
QUICK = dict(hidden=128, embed=32, seq_len=50, batch_size=32, epochs=2, max_train_chars=200_000,
             max_minutes=0.4, dropout=0.0)

_UNITS = ("word", "words", "line", "chars")


class CharLM(Model):
    """Character language model.

    CharLM(vocab, embed=64, hidden=512, layers=1, cell="lstm", dropout=0.1, seed=0)
        vocab   Vocab.to_dict() of the characters (saved with the model)

    forward(batch, training) with batch {"inputs": (T, B) ids, "carry": bool}
    -> logits (T, B, V).  With ``carry`` true (and the same B) the window
    starts from the final state of the previous forward, else from zeros.
    step(ids (N,), state) -> (log-probs (N, V), state): one decoding step.
    """

    def __init__(self, vocab, embed=64, hidden=512, layers=1, cell="lstm", dropout=0.1, seed=0):
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell: expected 'lstm' or 'gru', got {cell!r}")
        self.vocab = Vocab.from_dict(vocab)
        V = len(self.vocab)
        rng = np.random.default_rng(seed)
        self.emb = Embedding(V, embed, seed=rng)
        rnn = LSTM if cell == "lstm" else GRU
        self.rnn = rnn(embed, hidden, layers, dropout=dropout if layers > 1 else 0.0,
                       return_state=True, seed=rng)
        self.drop = Dropout(dropout, seed=rng)
        self.out = Dense(hidden, V, seed=rng)
        self._carry = None

    def reset_state(self):
        self._carry = None

    def _h0(self, B):
        s = self._carry
        if s is None:
            return None
        h = s[0] if isinstance(s, tuple) else s
        return s if h.shape[1] == B else None

    def forward(self, batch, *, training=False):
        x = np.asarray(batch["inputs"])
        h0 = self._h0(x.shape[1]) if batch.get("carry") else None
        y, state = self.rnn(self.emb(x, training=training), training=training, h0=h0)
        self._carry = state                     # carried to the next window, not back-propagated
        T, B, H = y.shape
        y = self.drop(y.reshape(T * B, H), training=training)      # 2-D: one GEMM
        return self.out(y, training=training).reshape(T, B, -1)

    def backward(self, dlogits):
        T, B, V = dlogits.shape
        d = self.drop.backward(self.out.backward(dlogits.reshape(T * B, V)))
        self.emb.backward(self.rnn.backward(d.reshape(T, B, -1)))

    # ---------------------------------------------------------- inference
    def encode(self, text):
        return np.asarray(self.vocab.encode(list(text)), dtype=np.int64)

    def run(self, ids, state=None):
        """Feed ids (T,) (one sequence) -> (log-probs after the last id (V,), state)."""
        x = np.asarray(ids, dtype=np.int64)[:, None]
        y, state = self.rnn(self.emb(x), h0=state)
        return log_softmax(self.out(y[-1]).astype(np.float64))[0], state

    def step(self, ids, state):
        y, state = self.rnn(self.emb(np.asarray(ids, dtype=np.int64)[None]), h0=state)
        logp = log_softmax(self.out(y[0])).astype(np.float64)
        if self.vocab.unk_id is not None:
            logp[:, self.vocab.unk_id] = -np.inf        # never suggest an unknown character
        return logp, state

    @staticmethod
    def reorder(state, rows):
        return take_rows(state, rows, axis=1)      # (L, N, H) or the LSTM pair


# ------------------------------------------------------------------ completion

def _is_word_char(c):
    return c.isalpha() or c in "'-"


def _stopper(vocab, prefix, until, n):
    """is_final(b, prev_ids, tok) for a unit; the final char is not shown."""
    chars = vocab.itos
    word_chars = np.array([_is_word_char(c) and c != UNK for c in chars])
    started = bool(prefix) and _is_word_char(prefix[-1])
    if until == "chars":
        return lambda b, prev, tok: len(prev) + 1 >= n
    if until == "line":
        nl = vocab.stoi.get("\n")
        return lambda b, prev, tok: tok == nl

    nl = vocab.stoi.get("\n")

    def ends(b, prev, tok):
        if word_chars[tok]:
            return False
        if tok == nl:                       # a suggestion never runs into the next line
            return True
        # words completed so far: word-char runs closed by a non-word char
        done, inword = 0, started
        for t in prev:
            w = word_chars[t]
            if inword and not w:
                done += 1
            inword = w
        return inword and done + 1 >= n
    return ends


def complete(model, prefix, k=5, *, until="word", n=None, beam_width=None, max_chars=None,
             greedy=False):
    """The k most likely continuations of ``prefix`` by beam search.

    until       "word" (the rest of the current word, or the next word after a
                space), "words" (n words, or fewer before a line end), "line"
                (to the end of the line), "chars" (exactly n characters); a
                word is letters, ' and -; anything else ends it.  The empty
                text is a valid answer: the prefix's word may be complete.
    n           words for "words" (default 3), characters for "chars" (default 20)
    beam_width  default max(2k, 8); 1 with greedy=True
    max_chars   cap on a continuation's length (default 30 per word, 100 a line)
    Returns [{"text": continuation, "completion": prefix + continuation,
              "logprob": float, "prob": float, "finished": bool}], best first.
    """
    if not isinstance(model, CharLM):
        raise TypeError(f"model: expected a CharLM, got {type(model).__name__}")
    if until not in _UNITS:
        raise ValueError(f"until: expected one of {_UNITS}, got {until!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected an int >= 1, got {k!r}")
    if n is None:
        n = 3 if until == "words" else 20 if until == "chars" else 1
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    if max_chars is None:
        max_chars = n if until == "chars" else 100 if until == "line" else 30 * n
    context = prefix if prefix.startswith("\n") else "\n" + prefix
    ids = model.encode(context)
    state = None
    if len(ids) > 1:
        _, state = model.run(ids[:-1])
    stop = _stopper(model.vocab, prefix, until, n)
    start = ids[-1:]
    if greedy:
        hyps = [greedy_search(model.step, state, start, max_len=max_chars, is_final=stop,
                              reorder=model.reorder)[0]]
    else:
        K = max(2 * k, 8) if beam_width is None else max(int(beam_width), 1)
        # "word"/"words": the same text can end with different characters (a
        # space, a comma ...): ask for more and add up their probabilities
        n_best = k if until in ("line", "chars") else 4 * k
        hyps = beam_search(model.step, state, start, beam_width=K, n_best=n_best, max_len=max_chars,
                           is_final=stop, reorder=model.reorder)[0]
    merged = {}
    for h in hyps:
        toks = h.tokens[:-1] if h.finished and until != "chars" else h.tokens
        key = ("".join(model.vocab.itos[t] for t in toks), h.finished)
        merged[key] = np.logaddexp(merged.get(key, -np.inf), h.logprob)
    best = sorted(merged.items(), key=lambda kv: (not kv[0][1], -kv[1]))[:k]   # finished first
    return [{"text": text, "completion": prefix + text, "logprob": round(float(lp), 4),
             "prob": round(math.exp(lp), 6), "finished": fin} for (text, fin), lp in best]


# ------------------------------------------------------------------ data

def _stream_batches(ids, B, T, offset=0):
    """Truncated-BPTT windows as dicts: consecutive windows carry the state."""
    data = batchify(ids[offset:], B)
    out = []
    for i in range(0, data.shape[0] - 1, T):
        t = min(T, data.shape[0] - 1 - i)
        out.append({"inputs": data[i:i + t], "targets": data[i + 1:i + 1 + t], "carry": i > 0})
    return out


def _prepare(path, cfg):
    text = load_text(path)
    train_text, dev_text = split_text(text, cfg["dev_fraction"])
    if cfg["max_train_chars"]:
        train_text = train_text[:int(cfg["max_train_chars"])]
    need = 2 * cfg["batch_size"] * (cfg["seq_len"] + 1)
    if len(train_text) < need or len(dev_text) < 4:
        raise DataError(path, None, f"text too short for a language model: {len(text)} characters "
                                    f"(train {len(train_text)}, dev {len(dev_text)}); need at least {need} "
                                    f"training characters for batch_size={cfg['batch_size']}, "
                                    f"seq_len={cfg['seq_len']}")
    return train_text, dev_text


def _eval_ce(model, ids, B, T):
    """Mean cross-entropy (nats per char) over a char stream, state carried."""
    B = max(1, min(B, len(ids) // (2 * T)))
    batches = _stream_batches(ids, B, T)
    loss_fn = CrossEntropyLoss(mask=None)
    model.reset_state()
    tot, n = 0.0, 0
    for b in batches:
        loss, _, k = loss_fn(model.forward(b), b)
        tot += loss * k
        n += k
    model.reset_state()
    return tot / max(n, 1), n


# ------------------------------------------------------------------ task interface

def add_arguments(parser):
    """Options of ``fastrnn train|eval|predict autocomplete`` (defaults: DEFAULTS)."""
    g = parser.add_argument_group("autocomplete")
    g.add_argument("--hidden", type=int, help=f"LSTM hidden size (default {DEFAULTS['hidden']})")
    g.add_argument("--layers", type=int, help=f"LSTM layers (default {DEFAULTS['layers']})")
    g.add_argument("--embed", type=int, help=f"character embedding size (default {DEFAULTS['embed']})")
    g.add_argument("--cell", choices=("lstm", "gru"), help="recurrent cell (default lstm)")
    g.add_argument("--dropout", type=float, help=f"dropout before the output layer (default {DEFAULTS['dropout']})")
    g.add_argument("--seq-len", dest="seq_len", type=int, help=f"BPTT window (default {DEFAULTS['seq_len']})")
    g.add_argument("--batch-size", dest="batch_size", type=int,
                   help=f"parallel streams (default {DEFAULTS['batch_size']})")
    g.add_argument("--epochs", type=int, help=f"maximum epochs (default {DEFAULTS['epochs']})")
    g.add_argument("--lr", type=float, help=f"Adam learning rate (default {DEFAULTS['lr']})")
    g.add_argument("--max-minutes", dest="max_minutes", type=float,
                   help=f"training time budget in minutes, 0 for none; the best epoch so far is kept "
                        f"(default {DEFAULTS['max_minutes']})")
    g.add_argument("--k", type=int, help="predict: number of continuations (default 5)")
    g.add_argument("--until", choices=_UNITS, help="predict: what to complete (default word)")
    g.add_argument("--n", type=int, help="predict: words for --until words, characters for --until chars")
    g.add_argument("--beam-width", dest="beam_width", type=int, help="predict: beam width (default max(2k, 8))")
    return parser


def train(*, data=None, out=None, quick=False, seed=0, progress=True, **options):
    """Train the character LM; save the best epoch (lowest dev loss) to ``out``
    (default models/autocomplete.npz).  Returns {"metrics": {"dev_loss"
    (nats/char), "dev_bits_per_char", "dev_perplexity"}, "seconds",
    "tokens_per_s" (training chars/s), "history", "model", "config"}."""
    cfg = merge_options(DEFAULTS, QUICK, quick, options, "autocomplete")
    with blas_threads(cfg["threads"]):
        return _train(cfg, data, out, seed, progress)


def _train(cfg, data, out, seed, progress):
    t_start = time.perf_counter()
    path = resolve_data(data, "autocomplete")
    train_text, dev_text = _prepare(path, cfg)
    vocab = Vocab.build([list(train_text)], specials=(UNK,))
    train_ids = np.asarray(vocab.encode(train_text), np.int64)
    dev_ids = np.asarray(vocab.encode(dev_text), np.int64)
    model = CharLM(vocab.to_dict(), cfg["embed"], cfg["hidden"], cfg["layers"], cfg["cell"],
                   cfg["dropout"], seed)
    out = Path(out) if out is not None else Path("models") / "autocomplete.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    B, T = cfg["batch_size"], cfg["seq_len"]
    budget = TimeBudget(cfg["max_minutes"], reserve=30.0)   # resized from the measured dev pass
    rng = np.random.default_rng(seed)

    def train_batches(epoch):
        model.reset_state()
        return budget.wrap(_stream_batches(train_ids, B, T, int(rng.integers(0, T)) if epoch else 0))

    val = _stream_batches(dev_ids, max(1, min(cfg["eval_batch_size"], len(dev_ids) // (2 * T))), T)
    meta = {"task": "autocomplete", "config": cfg, "data": str(path)}

    def epoch_end(epoch, hist, model):
        # the dev pass after the last batch, and saving
        budget.reserve = 1.5 * budget.last_pass + min(10.0, 0.05 * (budget.total or 0))
        return budget.expired()

    hist = fit(model, train_batches, epochs=cfg["epochs"], optimizer=Adam(model, cfg["lr"]),
               loss_fn=CrossEntropyLoss(mask=None), val_batches=lambda ep: budget.timed(val),
               patience=cfg["patience"], checkpoint=out, clip_norm=cfg["clip"],
               lr_schedule=lambda ep: cfg["lr"] * cfg["lr_decay"] ** ep, progress=progress,
               verbose=bool(progress), metadata=meta, on_epoch_end=epoch_end)
    model.reset_state()
    dev_loss = float(hist["best"])        # the best epoch's dev loss: the weights in the model now
    n_dev = int(sum(b["targets"].size for b in val))
    train_s = float(sum(hist["seconds"]))
    n_train = sum(r * s for r, s in zip(hist["tokens_per_s"], hist["seconds"]))
    metrics = {"dev_loss": dev_loss, "dev_bits_per_char": dev_loss / math.log(2),
               "dev_perplexity": math.exp(dev_loss), "dev_chars": n_dev,
               "best_epoch": hist["best_epoch"] + 1, "epochs_run": hist["epochs_run"],
               "time_budget_hit": budget.hit and hist["epochs_run"] < cfg["epochs"],
               "parameters": model.num_parameters()}
    tps = n_train / train_s if train_s > 0 else 0.0
    seconds = time.perf_counter() - t_start
    history = {k: v for k, v in hist.items()}
    model.save(out, metadata=dict(meta, metrics=metrics, tokens_per_s=tps, seconds=seconds,
                                  history=history))
    return {"metrics": metrics, "seconds": seconds, "train_seconds": train_s, "tokens_per_s": tps,
            "history": history, "model": str(out), "config": cfg}


def evaluate(model, *, data=None, split="dev", dev_fraction=None, batch_size=None, seq_len=None, **options):
    """Cross-entropy of ``model`` (a CharLM or a path) on the dev split of
    ``data`` (default the shared Tiny Shakespeare; ``split="all"`` scores the
    whole file, e.g. a held-out text).  Returns {"loss" (nats/char),
    "bits_per_char", "perplexity", "chars", "seconds", "chars_per_s"}."""
    model = load_model(model, CharLM)
    if split not in ("dev", "all"):
        raise ValueError(f"split: expected 'dev' or 'all', got {split!r}")
    cfg = dict(DEFAULTS, **((model.metadata or {}).get("config") or {}))
    path = resolve_data(data, "autocomplete")
    text = load_text(path)
    if split == "dev":
        text = split_text(text, dev_fraction or cfg["dev_fraction"])[1]
    if len(text) < 2:
        raise DataError(path, None, f"too little text to evaluate: {len(text)} characters")
    ids = model.encode(text)
    t0 = time.perf_counter()
    with blas_threads(cfg["threads"]):
        loss, n = _eval_ce(model, ids, batch_size or cfg["eval_batch_size"], seq_len or cfg["seq_len"])
    secs = time.perf_counter() - t0
    return {"loss": loss, "bits_per_char": loss / math.log(2), "perplexity": math.exp(loss),
            "chars": n, "seconds": secs, "chars_per_s": n / secs if secs > 0 else 0.0, "data": str(path),
            "split": split}


def predict(model, text, *, k=None, until=None, n=None, beam_width=None, max_chars=None, greedy=False,
            **options):
    """The k best continuations of ``text`` (see :func:`complete`)."""
    model = load_model(model, CharLM)
    return complete(model, text, k or 5, until=until or "word", n=n, beam_width=beam_width,
                    max_chars=max_chars, greedy=greedy)
