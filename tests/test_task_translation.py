"""fastrnn.tasks.translation: Seq2Seq gradients (finite differences), quick
training, save/load round trip, greedy == beam width 1, k sorted beams, BLEU
plumbing, bad data."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fastrnn.data import Batch, DataError, Vocab, data_file, default_data_dir, pad_sequences, word_tokenize
from fastrnn.model import load
from fastrnn.tasks import translation as TR

needs_data = pytest.mark.skipif(default_data_dir() is None,
                                reason="the shared data folder (../shared/data or $FASTRNN_DATA) is absent")


# ------------------------------------------------------------------ model mechanics (no data)

def tiny_model(cell="gru", bidirectional=True, seed=0):
    sv = Vocab.build([["i", "am", "you", "are", "."]])
    tv = Vocab.build([["je", "suis", "tu", "es", "."]])
    m = TR.Seq2Seq(sv.to_dict(), tv.to_dict(), embed=6, hidden=8, cell=cell, bidirectional=bidirectional,
                   dropout=0.0, seed=seed)
    return m.astype("float64"), sv, tv


def tiny_batch(sv, tv):
    src = [sv.encode(["i", "am", "."]), sv.encode(["you", "are"]), sv.encode(["you"])]
    tgt = [tv.encode(t, add_bos=True, add_eos=True) for t in (["je", "suis", "."], ["tu", "es"], ["tu"])]
    x, xl = pad_sequences(src)
    y, yl = pad_sequences(tgt)
    return Batch(x, xl, y, yl, np.arange(3))


def test_make_batches_cover_every_pair_once_with_little_padding():
    rng = np.random.default_rng(0)
    xs = [list(rng.integers(1, 9, rng.integers(1, 9))) for _ in range(500)]
    ys = [list(rng.integers(1, 9, rng.integers(3, 11))) for _ in range(500)]
    seen = []
    pad = 0
    for b in TR.make_batches(xs, ys, 32, shuffle=True, seed=1):
        seen += list(b.indices)
        for c, i in enumerate(b.indices):
            assert list(b.inputs[:b.lengths[c], c]) == xs[i] and list(b.targets[:b.target_lengths[c], c]) == ys[i]
        pad += b.targets.size - b.target_lengths.sum()
    assert sorted(seen) == list(range(500))
    # one chunk sorted by target length: only the batches that straddle two lengths pad
    assert pad <= 7 * 32


@pytest.mark.parametrize("cell,bidirectional", [("gru", True), ("lstm", True), ("gru", False)])
def test_seq2seq_gradients_finite_differences(cell, bidirectional):
    m, sv, tv = tiny_model(cell, bidirectional)
    b = tiny_batch(sv, tv)
    m.zero_grad()
    loss, d, n = TR.seq_loss(m.forward(b, training=True), b)
    assert n == 4 + 3 + 2
    m.backward(d)
    rng = np.random.default_rng(0)
    grads = m.gradients()
    for name, p in m.parameters().items():
        g = grads[name]
        for idx in [tuple(rng.integers(0, s) for s in p.shape) for _ in range(3)]:
            if name.endswith("emb.weight") and idx[0] == 0:
                continue                                    # padding row: no gradient by design
            old = p[idx]
            p[idx] = old + 1e-6
            up = TR.seq_loss(m.forward(b), b)[0]
            p[idx] = old - 1e-6
            down = TR.seq_loss(m.forward(b), b)[0]
            p[idx] = old
            num = (up - down) / 2e-6
            assert abs(num - g[idx]) < 1e-6 + 1e-4 * abs(num), (name, idx, num, g[idx])


def test_step_by_step_decoder_matches_teacher_forcing():
    m, sv, tv = tiny_model("lstm")
    b = tiny_batch(sv, tv)
    mask = TR.target_mask(b)
    flat = m.forward(b)                                     # (N, V): the valid steps, all at once
    logits = np.zeros(mask.shape + (flat.shape[1],))
    logits[mask] = flat
    keys, h = m.encode(b.inputs, b.lengths)
    state = (h, keys, b.lengths)
    for t in range(logits.shape[0]):
        logp, state = m.step(b.targets[t], state)
        ref = TR.log_softmax(logits[t].astype(np.float64))
        ok = np.arange(3)[mask[t]]
        allowed = [i for i in range(len(tv)) if i not in m._banned]
        np.testing.assert_allclose(logp[ok][:, allowed], ref[ok][:, allowed], atol=1e-10)
        assert np.all(np.isneginf(logp[:, m._banned]))


def test_greedy_equals_beam_width_one_and_k_sorted():
    m, sv, tv = tiny_model("gru", seed=3)
    m.metadata = {"config": {"lower": True}}
    sents = ["I am.", "you are", "You", "am am am i you", "."]
    g = TR.translate(m, sents, greedy=True, max_len=8)
    b1 = TR.translate(m, sents, beam_width=1, length_penalty=0.0, max_len=8)
    for x, y in zip(g, b1):
        assert x[0]["tokens"] == y[0]["tokens"]
        assert math.isclose(x[0]["logprob"], y[0]["logprob"], rel_tol=1e-9)
    k = TR.translate(m, sents, beam_width=4, n_best=3, length_penalty=0.6, max_len=8)
    for hyps in k:
        assert 1 <= len(hyps) <= 3
        s = [h["score"] for h in hyps]
        assert s == sorted(s, reverse=True)
        assert len({tuple(h["tokens"]) for h in hyps}) == len(hyps)
        assert all("<unk>" not in h["tokens"] and "<bos>" not in h["tokens"] for h in hyps)


def test_bleu_plumbing_multi_reference():
    refs = [["Je suis content.", "Je suis heureux."], ["Tu es là."], ["Il l'aime."]]
    perfect = [word_tokenize(r[-1], lower=True) for r in refs]
    assert TR.bleu_score(perfect, refs) == pytest.approx(100.0)
    # matching the second reference of the first source still counts in full
    assert TR.bleu_score([["je", "suis", "heureux", "."], ["tu", "es", "là", "."], ["il", "l'", "aime", "."]],
                         refs) == pytest.approx(100.0)
    worse = TR.bleu_score([["je", "suis", "heureux", "."], ["tu", "es", "là", "."], ["il", "l'", "aime", "bien", "."]],
                          refs)
    assert 0 < worse < 100
    assert TR.detokenize_fr(["j'", "ai", "l'", "homme", ",", "c'", "est", "ça", "!"]) == "J'ai l'homme, c'est ça !"


# ------------------------------------------------------------------ the task on real data

@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory):
    if default_data_dir() is None:
        pytest.skip("the shared data folder (../shared/data or $FASTRNN_DATA) is absent")
    lines = data_file("translation").read_text(encoding="utf-8").splitlines()
    rng = np.random.default_rng(0)
    keep = sorted(rng.permutation(min(len(lines), 30000))[:2500])      # short pairs: the file is sorted
    p = tmp_path_factory.mktemp("tr") / "small.tsv"
    p.write_text("\n".join(lines[i] for i in keep) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def trained(small_pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tr_model") / "tr.npz"
    return TR.train(data=str(small_pairs), out=str(out), quick=True, progress=False, epochs=3, embed=32,
                    hidden=48, max_minutes=0, lr=5e-3, max_dev_sources=80)


@needs_data
def test_quick_training_loss_falls(trained):
    h = trained["history"]
    assert h["epochs_run"] == 3
    assert h["loss"][-1] < h["loss"][0]
    assert h["val_loss"][-1] < h["val_loss"][0]
    m = trained["metrics"]
    for k in ("dev_bleu_greedy", "dev_bleu_beam"):
        assert 0.0 <= m[k] <= 100.0
    assert m["dev_sources"] == 80 and trained["tokens_per_s"] > 0
    assert trained["examples"] and {"en", "fr", "refs"} <= set(trained["examples"][0])


@needs_data
def test_save_load_round_trip(trained, small_pairs, tmp_path):
    m1 = load(trained["model"])
    assert isinstance(m1, TR.Seq2Seq) and m1.metadata["task"] == "translation"
    ev = TR.evaluate(trained["model"], data=str(small_pairs), max_sources=80)
    assert math.isclose(ev["loss"], trained["metrics"]["dev_loss"], rel_tol=1e-6)
    assert ev["bleu_beam"] == pytest.approx(trained["metrics"]["dev_bleu_beam"])
    assert ev["bleu_greedy"] == pytest.approx(trained["metrics"]["dev_bleu_greedy"])
    m1.save(tmp_path / "again.npz", metadata=m1.metadata)
    p1 = TR.predict(m1, "I am hungry.", k=3)
    p2 = TR.predict(str(tmp_path / "again.npz"), "I am hungry.", k=3)
    assert p1 == p2 and 1 <= len(p1) <= 3
    assert [r["score"] for r in p1] == sorted((r["score"] for r in p1), reverse=True)
    assert TR.predict(m1, "I am hungry.", greedy=True)[0]["tokens"] == \
        TR.predict(m1, "I am hungry.", beam_width=1, length_penalty=0.0)[0]["tokens"]


@needs_data
def test_evaluate_all_split(trained, tmp_path):
    p = tmp_path / "held.tsv"
    p.write_text("I am hungry.\tJ'ai faim.\nI am hungry.\tJe meurs de faim.\nGo away!\tVa-t'en !\n",
                 encoding="utf-8")
    ev = TR.evaluate(trained["model"], data=str(p), split="all", greedy=True)
    assert ev["sources"] == 2 and ev["pairs"] == 3 and "bleu_beam" not in ev
    assert 0.0 <= ev["bleu_greedy"] <= 100.0
    p.write_text("I am hungry.\tJ'ai faim.\nI think that Tom is going to be late again.\t"
                 "Je pense que Tom va encore être en retard.\n", encoding="utf-8")
    assert TR.evaluate(trained["model"], data=str(p), split="all", greedy=True)["pairs"] == 1      # <= 8 words
    assert TR.evaluate(trained["model"], data=str(p), split="all", greedy=True, max_words=0)["pairs"] == 2


def test_bad_data_file_raises_data_error(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("Go.\tVa !\nHi.\tSalut !\nRun!\tCours !\textra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.tsv:3: expected 2 tab-separated columns"):
        TR.train(data=str(bad), out=str(tmp_path / "m.npz"), quick=True, progress=False)
    empty = tmp_path / "one.tsv"
    empty.write_text("Go.\t\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"one\.tsv:1: empty french side"):
        TR.train(data=str(empty), out=str(tmp_path / "m.npz"), quick=True, progress=False)
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TR.train(data=str(tmp_path / "missing.tsv"), quick=True, progress=False)
