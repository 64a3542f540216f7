"""fastrnn.tasks.ner: quick training, save/load, predict, span extraction, IOB2 decoding, bad data."""
from __future__ import annotations

import numpy as np
import pytest

from fastrnn import metrics as M
from fastrnn.data import DataError, default_data_dir
from fastrnn.model import load
from fastrnn.tasks import ner as N

needs_data = pytest.mark.skipif(default_data_dir() is None,
                                reason="the shared data folder (../shared/data or $FASTRNN_DATA) is absent")

TINY = dict(max_train=200, max_dev=60, epochs=3, hidden=16, word_dim=16, char_dim=8, char_hidden=8,
            batch_size=16, lr=5e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if default_data_dir() is None:
        pytest.skip("the shared data folder (../shared/data or $FASTRNN_DATA) is absent")
    out = tmp_path_factory.mktemp("ner") / "ner.npz"
    return N.train(out=str(out), quick=True, progress=False, **TINY)


@needs_data
def test_quick_training_loss_falls(trained):
    loss = trained["history"]["loss"]
    assert len(loss) == 3 and loss[-1] < loss[0]
    m = trained["metrics"]
    assert {"precision", "recall", "f1", "per_type", "token_accuracy", "f1_by_decode"} <= set(m)
    assert set(m["f1_by_decode"]) == {"argmax", "repair", "viterbi"}
    assert trained["tokens_per_s"] > 0


@needs_data
def test_save_load_round_trip_identical_predictions(trained):
    sents = [["John", "lives", "in", "New", "York", "."], ["Apple", "hired", "Mary", "Smith"], ["ok"]]
    model = load(trained["model"])
    assert isinstance(model, N.NERTagger)
    a = N.tag_sentences(trained["model"], sents, mode="argmax")
    b = N.tag_sentences(model, sents, mode="argmax")
    assert a == b and [len(t) for t in a] == [6, 4, 1]
    enc = N.Encoder.from_dict(model.metadata["encoder"])
    batch = next(N.make_batches([enc.encode(s) for s in sents], None, 8))
    np.testing.assert_array_equal(model.forward(batch), load(trained["model"]).forward(batch))


@needs_data
def test_predict_format(trained):
    text = "Barack Obama visited the Microsoft offices in Seattle."
    r = N.predict(trained["model"], text)
    assert set(r) == {"tokens", "tags", "entities"}
    assert r["tokens"][:2] == ["Barack", "Obama"] and len(r["tags"]) == len(r["tokens"])
    assert all(t in N.TAGS for t in r["tags"])
    for e in r["entities"]:
        assert {"type", "start", "end", "text"} <= set(e) and e["type"] in ("PER", "ORG", "LOC")
        assert 0 <= e["start"] < e["end"] <= len(r["tokens"])
        assert e["text"] == text[e["char_start"]:e["char_end"]]
    assert N.predict(trained["model"], "")["entities"] == []
    assert len(N.predict(trained["model"], ["Paris", "is", "big"])["tags"]) == 3


@needs_data
def test_evaluate(trained):
    res = N.evaluate(trained["model"], decode="repair")
    assert res["decode"] == "repair" and res["sentences"] == 1038
    assert 0 <= res["f1"] <= 1 and res["tokens_per_s"] > 0


def test_entity_spans_with_char_offsets():
    text = "I met John Smith at Google’s office in New York."
    toks = ["I", "met", "John", "Smith", "at", "Google", "'s", "office", "in", "New", "York", "."]
    tags = ["O", "O", "B-PER", "I-PER", "O", "B-ORG", "O", "O", "O", "B-LOC", "I-LOC", "O"]
    spans = N.entity_spans(toks, tags, text)
    assert [(s["type"], s["start"], s["end"], s["text"]) for s in spans] == [
        ("PER", 2, 4, "John Smith"), ("ORG", 5, 6, "Google"), ("LOC", 9, 11, "New York")]
    assert text[spans[2]["char_start"]:spans[2]["char_end"]] == "New York"
    # conlleval reading of an invalid I- start, no text given
    assert [(s["type"], s["start"], s["end"]) for s in N.entity_spans(["a", "b"], ["I-LOC", "I-LOC"])] == [
        ("LOC", 0, 2)]


def _valid(tags):
    prev = "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            return False
        prev = t
    return True


def test_repair_and_viterbi_give_valid_iob2():
    assert N.repair(["O", "I-PER", "I-PER", "I-LOC", "B-ORG", "I-ORG"]) == [
        "O", "B-PER", "I-PER", "B-LOC", "B-ORG", "I-ORG"]
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((9, 40, len(N.TAGS))) * 3
    lengths = rng.integers(0, 10, 40)
    arg = N.decode(logits, lengths, "argmax")
    vit = N.decode(logits, lengths, "viterbi")
    logp = np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    for j, (a, v) in enumerate(zip(arg, vit)):
        assert len(a) == len(v) == lengths[j] and _valid(v)
        if _valid(a):
            assert a == v                                   # argmax already valid: viterbi keeps it
        ids = [N.TAG_ID[t] for t in v]
        ida = [N.TAG_ID[t] for t in a]
        assert logp[np.arange(len(ids)), j, ids].sum() <= logp[np.arange(len(ida)), j, ida].sum() + 1e-9
    # brute force on a short sentence: viterbi is the best valid path
    import itertools
    lp = logp[:4, 0]
    best = max((p for p in itertools.product(range(len(N.TAGS)), repeat=4)
                if _valid([N.TAGS[i] for i in p])), key=lambda p: lp[np.arange(4), list(p)].sum())
    assert list(N.viterbi(lp)) == list(best)


def test_word_shape():
    assert [N.SHAPES[N.word_shape(w)] for w in ["the", "Paris", "USA", "I", "iPhone", "2019", "A4", ",", "e-mail"]] == [
        "lower", "Title", "UPPER", "U", "miXed", "digits", "alnum", "punct", "other"]


def test_model_gradient_finite_differences():
    sents = [["Ann", "met", "Bob"], ["in", "Rome", "today", "!"]]
    enc = N.Encoder.build(sents)
    b = next(N.make_batches([enc.encode(s) for s in sents], [[1, 0, 1], [0, 5, 0, 0]], 2))
    m = N.NERTagger(len(enc.words), len(enc.chars), word_dim=4, char_dim=3, char_hidden=2, shape_dim=2,
                    hidden=3, dropout=0.0, seed=2).astype("float64")
    from fastrnn.losses import CrossEntropyLoss
    loss_fn = CrossEntropyLoss()
    m.zero_grad()
    _, d, n = loss_fn(m.forward(b, training=True), b)
    assert n == 7
    m.backward(d)
    params, grads = m.parameters(), m.gradients()
    rng = np.random.default_rng(0)
    for name in ("wemb.weight", "cemb.weight", "crnn.weight_ih_l0_reverse", "semb.weight", "rnn.weight_hh_l0",
                 "out.bias"):
        p = params[name]
        nz = np.argwhere(grads[name] != 0)
        assert len(nz), name
        for i in nz[rng.permutation(len(nz))[:3]]:
            i = tuple(i)
            old = p[i]
            p[i] = old + 1e-6
            lp = loss_fn(m.forward(b), b)[0]
            p[i] = old - 1e-6
            lm = loss_fn(m.forward(b), b)[0]
            p[i] = old
            assert grads[name][i] == pytest.approx((lp - lm) / 2e-6, rel=1e-4, abs=1e-8), name


def test_bad_data_file_raises_data_error_with_file_and_line(tmp_path):
    bad = tmp_path / "en_ewt-train.iob2"
    bad.write_text("# sent_id = 1\n1\tJohn\tB-PER\t-\t-\n2\tran\tX-TAG\t-\t-\n\n", encoding="utf-8")
    dev = tmp_path / "en_ewt-dev.iob2"
    dev.write_text("1\tJohn\tB-PER\t-\t-\n\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        N.train(data=tmp_path, out=str(tmp_path / "m.npz"), quick=True, progress=False)
    assert e.value.path == str(bad) and e.value.line == 3
    with pytest.raises(DataError) as e:
        N.train(data=dev, dev=bad, out=str(tmp_path / "m.npz"), quick=True, progress=False)
    assert e.value.line == 3


def test_scores_match_metrics():
    true = [["B-PER", "I-PER", "O"], ["B-LOC"]]
    pred = [["B-PER", "I-PER", "O"], ["O"]]
    s = N._scores(true, pred)
    assert s["f1"] == pytest.approx(M.ner_scores(true, pred)["f1"]) and s["token_accuracy"] == 0.75
