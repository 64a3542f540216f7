"""The naive one-hot feed-forward network (ANN) beside the RNN, on the same data, for
sentiment, NER and autocomplete: why sequence models exist, in numbers.

For each task, on the same train/dev data:

* the metric (sentiment dev accuracy and macro-F1; NER dev entity F1;
  autocomplete dev bits per character, lower is better);
* parameter count and input-layer width (the ANN: vocabulary x window, one-hot;
  the RNN: one id per step, any number of steps);
* training time per epoch and tokens/s;
* what happens to inputs longer than the ANN's fixed size: the ANN cannot see
  past its window, so the RNN is also measured when it is shown only what the
  ANN sees (sentiment: the first N tokens; NER: the +-k words around each word;
  autocomplete: the previous k characters) -- the gap between "RNN, ANN's view"
  and "RNN, whole input" is what the longer context is worth;
* how the ANN's parameters grow with the window while the RNN's do not.

Models: sentiment and NER use fastrnn.tasks.sentiment / fastrnn.tasks.ner
(trained here with a shorter budget than their default runs, or loaded with
--models DIR from `fastrnn train` outputs); autocomplete uses a small character
GRU language model defined here (Embedding -> GRU -> Dense, truncated BPTT
with the state carried), so both models see exactly the same characters.
The ANNs are fastrnn.tasks.baseline_ann.

As a script it prints a markdown table and writes JSON to bench_results/:

    PYTHONPATH=. python3 benchmarks/bench_ann_vs_rnn.py            # ~10 min on a 2-core CPU
    PYTHONPATH=. python3 benchmarks/bench_ann_vs_rnn.py --quick    # seconds (tiny data, numbers meaningless)
    PYTHONPATH=. python3 benchmarks/bench_ann_vs_rnn.py --models models   # reuse models/{sentiment,ner}.npz

Under pytest-benchmark (small timed pieces: one training step of each model):

    pytest benchmarks/bench_ann_vs_rnn.py --benchmark-group-by=group
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import fastrnn
from fastrnn import metrics as M
from fastrnn.data import (Vocab, bptt_batches, char_tokenize, data_file, load_conll, load_reviews, load_text,
                          split_text)
from fastrnn.layers import GRU, Dense, Embedding
from fastrnn.losses import CrossEntropyLoss
from fastrnn.model import Model, fit, load
from fastrnn.optim import Adam
from fastrnn.tasks import baseline_ann as A
from fastrnn.tasks import ner as N
from fastrnn.tasks import sentiment as S

# budgets: (RNN options, ANN options) per task
FULL = {   # the RNN task models at their default configuration (the same runs as `fastrnn train`)
    "sentiment": (dict(), dict(window=32, epochs=6)),
    "ner": (dict(), dict(k=2, epochs=10)),
    "autocomplete": (dict(hidden=128, emb=32, epochs=2, batch_size=32, seq_len=64, lr=3e-3),
                     dict(k=16, hidden=256, epochs=2)),
    "max_train_chars": None, "max_dev_chars": 50_000,
}
QUICK = {
    "sentiment": (dict(quick=True, max_train=600, max_dev=200, epochs=1),
                  dict(window=16, epochs=1, max_train=600, max_vocab=1000, hidden=16)),
    "ner": (dict(quick=True, max_train=100, max_dev=1038, epochs=1), dict(k=1, epochs=1, max_train=100, hidden=16)),
    "autocomplete": (dict(hidden=32, emb=16, epochs=1, batch_size=16, seq_len=32, lr=3e-3),
                     dict(k=8, hidden=32, epochs=1)),
    "max_train_chars": 20_000, "max_dev_chars": 3_000,
}
WINDOWS = (8, 16, 32, 64, 128, 256, 512)


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(), numpy=np.__version__,
                fastrnn=fastrnn.__version__)
    try:
        info["loadavg_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    try:
        from fastrnn import dispatch
        info["fastrnn_backend"] = dispatch.select(None, "numpy", "gru", "float32").name
    except Exception as exc:  # pragma: no cover
        info["fastrnn_backend"] = f"unknown ({exc})"
    return info


def _row(model, metric, params, width, epoch_s, tok_s, **extra):
    return dict(model=model, metric=metric, parameters=int(params), input_width=width, epoch_seconds=epoch_s,
                tokens_per_s=tok_s, **extra)


def _task_model(task, models, workdir, rnn_opts):
    """(model, seconds per epoch, tokens/s, source) of a task's RNN: loaded
    from models/<task>.npz when --models names a folder holding it, else
    trained here with rnn_opts."""
    path = Path(models) / f"{task.NAME}.npz" if models else None
    if path is not None and path.is_file():
        model = load(path)
        hist = model.metadata.get("history_seconds")
        ep_s = float(np.mean(hist)) if hist else float("nan")
        return model, ep_s, model.metadata.get("tokens_per_s", float("nan")), str(path)
    r = task.train(out=str(Path(workdir) / f"{task.NAME}_bench.npz"), progress=False, **rnn_opts)
    return load(r["model"]), float(np.mean(r["history"]["seconds"])), r["tokens_per_s"], "trained here"


# ---------------------------------------------------------------- sentiment

def bench_sentiment(rnn_opts, ann_opts, models=None, workdir="."):
    ann = A.train_sentiment(**ann_opts)
    W = ann["window"]
    reviews = load_reviews(data_file("sentiment"))
    model, ep_s, tok_s, source = _task_model(S, models, workdir, rnn_opts)
    dv = ann["dev_index"]
    texts = [reviews.texts[i] for i in dv]
    true = reviews.stars[dv]
    full = S.predict_proba(model, texts).argmax(1) + 1
    cut = S.predict_proba(model, texts, max_tokens=W).argmax(1) + 1
    long_ = ann["dev_lengths"] > W

    def acc(p, m=None):
        m = np.ones(len(true), bool) if m is None else m
        return M.accuracy(true[m], p[m]) if m.any() else float("nan")

    V = len(model.metadata["vocab"]["tokens"])
    rnn_row = _row(f"RNN (BiGRU, {source})", acc(full), model.num_parameters(), f"{V} per step (any length)",
                   ep_s, tok_s, macro_f1=M.macro_f1(true, full, labels=[1, 2, 3, 4, 5]))
    ann_row = _row(f"ANN (one-hot, first {W} tokens)", ann["accuracy"], ann["parameters"],
                   f"{ann['vocab_size']} x {W} = {ann['input_width']}", ann["epoch_seconds"], ann["tokens_per_s"],
                   macro_f1=ann["macro_f1"])
    longer = dict(what=f"dev reviews longer than N={W} tokens: accuracy", n=int(long_.sum()),
                  ann=acc(ann["dev_pred"], long_), rnn_ann_view=acc(cut, long_), rnn_full=acc(full, long_),
                  short_n=int((~long_).sum()), short_ann=acc(ann["dev_pred"], ~long_), short_rnn=acc(full, ~long_))
    hid = ann_opts.get("hidden", A.SENTIMENT["hidden"])
    growth = [dict(window=w, ann_parameters=A.ann_num_parameters(ann["vocab_size"], w, hid, 5),
                   rnn_parameters=model.num_parameters()) for w in WINDOWS]
    return dict(task="sentiment", metric_name="dev accuracy", rows=[ann_row, rnn_row], longer=longer, growth=growth,
                better="higher")


# ---------------------------------------------------------------- NER

def bench_ner(rnn_opts, ann_opts, models=None, workdir="."):
    ann = A.train_ner(**ann_opts)
    k = (ann["window"] - 1) // 2
    model, ep_s, tok_s, source = _task_model(N, models, workdir, rnn_opts)
    dv = load_conll(data_file("ner_dev"))
    sents = [t for t, _ in dv]
    true = [g for _, g in dv]
    full_argmax = N.tag_sentences(model, sents, mode="argmax")
    full = N.tag_sentences(model, sents)
    # the RNN shown only the +-k words the ANN sees: tag each window, keep its centre
    windows, centre = [], []
    for toks in sents:
        for i in range(len(toks)):
            lo = max(0, i - k)
            windows.append(toks[lo:i + k + 1])
            centre.append(i - lo)
    wtags = N.tag_sentences(model, windows, mode="argmax", batch_size=256)
    view, j = [], 0
    for toks in sents:
        view.append([wtags[j + i][centre[j + i]] for i in range(len(toks))])
        j += len(toks)
    f1 = lambda pred: M.ner_scores(true, pred)["f1"]  # noqa: E731
    V = len(model.metadata["encoder"]["words"]["tokens"])
    rnn_row = _row(f"RNN (char-GRU + BiLSTM, {source})", f1(full), model.num_parameters(),
                   f"{V} words + chars per step (any length)", ep_s, tok_s, f1_argmax=f1(full_argmax))
    ann_row = _row(f"ANN (one-hot, +-{k} words)", ann["f1"], ann["parameters"],
                   f"{ann['vocab_size']} x {ann['window']} = {ann['input_width']}", ann["epoch_seconds"],
                   ann["tokens_per_s"])
    longer = dict(what=f"context beyond +-{k} words: dev entity F1 (argmax decoding)", n=len(sents),
                  ann=ann["f1"], rnn_ann_view=f1(view), rnn_full=f1(full_argmax))
    growth = [dict(window=2 * kk + 1, ann_parameters=A.ann_num_parameters(ann["vocab_size"], 2 * kk + 1,
                                                                          ann_opts.get("hidden", A.NER["hidden"]), 7),
                   rnn_parameters=model.num_parameters()) for kk in (1, 2, 4, 8, 16)]
    return dict(task="ner", metric_name="dev entity F1", rows=[ann_row, rnn_row], longer=longer, growth=growth,
                better="higher")


# ---------------------------------------------------------------- autocomplete

class CharGRULM(Model):
    """Embedding(V, E) -> GRU(E, H) -> Dense(H, V); the final state of one
    forward call is the initial state of the next (truncated BPTT) while
    ``carry`` is on and the batch size matches."""

    def __init__(self, vocab_size, emb=32, hidden=128, *, seed=0):
        rng = np.random.default_rng(seed)
        self.embed = Embedding(vocab_size, emb, seed=rng)
        self.rnn = GRU(emb, hidden, return_state=True, seed=rng)
        self.out = Dense(hidden, vocab_size, seed=rng)
        self._h = None
        self.carry = True

    def reset(self):
        self._h = None

    def forward(self, b, *, training=False):
        ids = b.inputs if hasattr(b, "inputs") else b["inputs"]
        h0 = self._h if (self.carry and self._h is not None and self._h.shape[1] == ids.shape[1]) else None
        y, hn = self.rnn(self.embed(ids, training=training), training=training, h0=h0)
        self._h = hn.copy() if self.carry else None
        return self.out(y, training=training)

    def backward(self, d):
        self.embed.backward(self.rnn.backward(self.out.backward(d)))

    def last_logits(self, X, chunk=4096):
        """(N, V) next-char logits after reading each row of X (N, k) from a zero state."""
        out = []
        carry, self.carry = self.carry, False
        for i in range(0, len(X), chunk):
            x = np.ascontiguousarray(X[i:i + chunk].T)                       # (k, n)
            y, _ = self.rnn(self.embed(x), h0=None)
            out.append(self.out(y[-1]))
        self.carry = carry
        return np.concatenate(out)


def bench_autocomplete(rnn_opts, ann_opts, max_train_chars, max_dev_chars, seed=0):
    ann = A.train_autocomplete(max_train_chars=max_train_chars, max_dev_chars=max_dev_chars, **ann_opts)
    k = ann["window"]
    text = load_text(data_file("autocomplete"))
    train_text, dev_text = split_text(text, 0.1)
    train_text, dev_text = train_text[:max_train_chars or None], dev_text[:max_dev_chars or None]
    vocab = Vocab.build([char_tokenize(train_text)], specials=("<pad>", "<unk>"))
    assert vocab == ann["vocab"], "the ANN and the RNN must share the character vocabulary"
    V = len(vocab)
    ids = np.asarray(vocab.encode(char_tokenize(train_text)), np.int64)
    dev = np.asarray(vocab.encode(char_tokenize(dev_text)), np.int64)
    o = dict(rnn_opts)
    lm = CharGRULM(V, o["emb"], o["hidden"], seed=seed)
    batches = list(bptt_batches(ids, o["batch_size"], o["seq_len"]))

    def epoch_batches(ep):
        lm.reset()
        return batches

    hist = fit(lm, epoch_batches, epochs=o["epochs"], optimizer=Adam(lm, o["lr"]), loss_fn=CrossEntropyLoss(),
               clip_norm=5.0, progress=False)
    lm.reset()
    full_logits = lm.forward({"inputs": dev[:-1, None]})[:, 0]                 # whole dev text, one stream
    lm.reset()
    bpc_full = M.bits_per_char(M.cross_entropy(full_logits, dev[1:]))
    Xd, yd = A.char_windows(dev, k)
    view_logits = lm.last_logits(Xd[1:])
    bpc_view = M.bits_per_char(M.cross_entropy(view_logits, yd[1:]))
    ann_bpc_same = M.bits_per_char(M.cross_entropy(A._logits(ann["model_obj"], Xd[1:]), yd[1:]))
    rnn_row = _row("RNN (char GRU LM)", bpc_full, lm.num_parameters(), f"{V} per step (any length)",
                   float(np.mean(hist["seconds"])), float(np.mean(hist["tokens_per_s"])),
                   accuracy=float((full_logits.argmax(1) == dev[1:]).mean()))
    ann_row = _row(f"ANN (one-hot, previous {k} chars)", ann_bpc_same, ann["parameters"],
                   f"{V} x {k} = {ann['input_width']}", ann["epoch_seconds"], ann["tokens_per_s"],
                   accuracy=ann["accuracy"])
    longer = dict(what=f"context beyond the previous k={k} characters: dev bits/char (lower is better)",
                  n=int(len(dev) - 1), ann=ann_bpc_same, rnn_ann_view=bpc_view, rnn_full=bpc_full)
    growth = [dict(window=w, ann_parameters=A.ann_num_parameters(V, w, ann_opts.get("hidden", A.AUTOCOMPLETE["hidden"]), V),
                   rnn_parameters=lm.num_parameters()) for w in WINDOWS]
    return dict(task="autocomplete", metric_name="dev bits/char", rows=[ann_row, rnn_row], longer=longer,
                growth=growth, better="lower", train_chars=len(train_text), dev_chars=len(dev_text))


# ---------------------------------------------------------------- report

def _fmt(x, nd=3):
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def markdown(res):
    lines = [f"ANN (one-hot feed-forward) vs RNN on the same data -- {res['machine']['cpu']}, "
             f"{res['machine']['cores']} cores (load avg {res['machine'].get('loadavg_1min', 0):.1f} at start), "
             f"fastrnn {res['machine']['fastrnn']} ({res['machine']['fastrnn_backend']} backend)", "",
             "| task | model | metric | params | input-layer width | s/epoch | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for t in res["tasks"]:
        for r in t["rows"]:
            lines.append(f"| {t['task']} | {r['model']} | {t['metric_name']} {_fmt(r['metric'])} | "
                         f"{r['parameters']:,} | {r['input_width']} | {_fmt(r['epoch_seconds'], 1)} | "
                         f"{r['tokens_per_s']:,.0f} |")
    lines += ["", "Inputs longer than the ANN's fixed size (the RNN also shown only the ANN's view):", "",
              "| task | measured on | n | ANN | RNN, ANN's view | RNN, whole input |", "|---|---|---|---|---|---|"]
    for t in res["tasks"]:
        g = t["longer"]
        lines.append(f"| {t['task']} | {g['what']} | {g['n']} | {_fmt(g['ann'])} | {_fmt(g['rnn_ann_view'])} | "
                     f"{_fmt(g['rnn_full'])} |")
    lines += ["", "Parameters as the window grows (the RNN reads any length with the same weights):", "",
              "| task | window | ANN params | RNN params |", "|---|---|---|---|"]
    for t in res["tasks"]:
        for g in t["growth"]:
            lines.append(f"| {t['task']} | {g['window']} | {g['ann_parameters']:,} | {g['rnn_parameters']:,} |")
    verdict = []
    for t in res["tasks"]:
        a, r = t["rows"][0]["metric"], t["rows"][1]["metric"]
        ok = r > a if t["better"] == "higher" else r < a
        verdict.append(f"{t['task']}: RNN {'beats' if ok else 'does NOT beat'} ANN ({_fmt(r)} vs {_fmt(a)})")
    lines += ["", "; ".join(verdict), ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny data and budgets (smoke run; numbers meaningless)")
    ap.add_argument("--tasks", default="sentiment,ner,autocomplete")
    ap.add_argument("--models", default=None,
                    help="folder with sentiment.npz / ner.npz from `fastrnn train` to use instead of training here")
    ap.add_argument("--out", default="bench_results/ann_vs_rnn.json")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    res = dict(machine=machine(), quick=args.quick,
               command=" ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
               config={k: v for k, v in cfg.items()}, tasks=[])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            t1 = time.perf_counter()
            if task == "sentiment":
                r = bench_sentiment(*cfg["sentiment"], models=args.models, workdir=tmp)
            elif task == "ner":
                r = bench_ner(*cfg["ner"], models=args.models, workdir=tmp)
            elif task == "autocomplete":
                r = bench_autocomplete(*cfg["autocomplete"], cfg["max_train_chars"], cfg["max_dev_chars"])
            else:
                raise SystemExit(f"--tasks: unknown task {task!r}")
            r["wall_s"] = time.perf_counter() - t1
            res["tasks"].append(r)
            print(f"[{task}: {r['wall_s']:.0f} s]", file=sys.stderr, flush=True)
    res["wall_s"] = time.perf_counter() - t0
    text = markdown(res)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {out} ({res['wall_s']:.0f} s)")
    return res


# ---------------------------------------------------------------- pytest-benchmark

try:
    import pytest
except ImportError:  # pragma: no cover - running as a script without pytest
    pytest = None

if pytest is not None:
    def _step_fn(model, batch, loss_fn=CrossEntropyLoss()):
        opt = Adam(model, 1e-3)

        def step():
            model.clear_cache()
            model.zero_grad()
            out = model.forward(batch, training=True)
            _, d, _ = loss_fn(out, batch)
            model.backward(d)
            opt.step()
        return step

    def _sentiment_batch(B=32, T=32, V=5000, seed=0):
        from fastrnn.data import iterate_batches
        rng = np.random.default_rng(seed)
        seqs = [rng.integers(1, V, T) for _ in range(B)]
        return next(iterate_batches(seqs, rng.integers(0, 5, B), B))

    @pytest.mark.parametrize("model", ["ann", "rnn"])
    def test_sentiment_train_step(benchmark, model):
        """One Adam step on a (32 reviews x 32 tokens) batch, vocabulary 5000."""
        benchmark.group = "sentiment-train-step-B32-T32-V5000"
        b = _sentiment_batch()
        if model == "ann":
            m = A.build_ann(5000, 32, 64, 5)
            batch = {"inputs": np.ascontiguousarray(b.inputs.T), "targets": b.targets}
        else:
            m = S.SentimentClassifier(5000, 100, 64, seed=0)
            batch = b
        step = _step_fn(m, batch)
        benchmark.extra_info.update(parameters=m.num_parameters())
        benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)

    @pytest.mark.parametrize("model", ["ann", "rnn"])
    def test_autocomplete_train_step(benchmark, model):
        """One Adam step on 32 x 64 characters, vocabulary 67 (ANN: k=16 one-hot window)."""
        benchmark.group = "autocomplete-train-step-2048-chars"
        rng = np.random.default_rng(0)
        ids = rng.integers(2, 67, 32 * 64 + 1)
        if model == "ann":
            X, y = A.char_windows(ids[:-1], 16)
            m, batch = A.build_ann(67, 16, 256, 67), {"inputs": X, "targets": ids[1:]}
        else:
            m = CharGRULM(67, 32, 128)
            batch = next(bptt_batches(ids, 32, 64))
        step = _step_fn(m, batch)
        benchmark.extra_info.update(parameters=m.num_parameters())
        benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)

    def test_ann_parameter_growth(benchmark):
        """Building the one-hot ANN for growing windows: parameters grow as V*W*H (timed: the W=256 build)."""
        benchmark.group = "ann-build"
        counts = {w: A.ann_num_parameters(5000, w, 64, 5) for w in WINDOWS}
        assert all(counts[b] - counts[a] == (b - a) * 5000 * 64 for a, b in zip(WINDOWS, WINDOWS[1:]))
        m = benchmark.pedantic(lambda: A.build_ann(5000, 256, 64, 5), rounds=2, iterations=1)
        assert m.num_parameters() == counts[256]
        benchmark.extra_info.update(parameters=counts)


if __name__ == "__main__":
    main()
