"""fastrnn.metrics against hand-worked values, seqeval, scikit-learn and sacrebleu."""
import math

import numpy as np
import pytest

from fastrnn import metrics as M


def close(name, got, expected, tol=1e-9):
    assert abs(got - expected) <= tol, f"{name}: got {got}, expected {expected}"


# ------------------------------------------------------------------ classification
def test_classification_hand_worked():
    y = [1, 1, 2, 3, 3, 3]
    p = [1, 2, 2, 3, 3, 1]
    close("accuracy", M.accuracy(y, p), 4 / 6)
    cm = M.confusion_matrix(y, p)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]], f"confusion matrix rows=true: {cm.tolist()}"
    rep = M.per_class_prf(y, p)
    # class 1: tp 1, pred 2, true 2 -> P .5 R .5; class 2: tp 1, pred 2, true 1 -> P .5 R 1;
    # class 3: tp 2, pred 2, true 3 -> P 1 R 2/3
    close("P(2)", rep[2]["precision"], 0.5)
    close("R(2)", rep[2]["recall"], 1.0)
    close("F1(3)", rep[3]["f1"], 0.8)
    assert rep[3]["support"] == 3, "support = true count"
    close("macro_f1", M.macro_f1(y, p), (0.5 + 2 / 3 + 0.8) / 3)
    close("macro_f1 with unseen label 4 and 5", M.macro_f1(y, p, labels=[1, 2, 3, 4, 5]),
          (0.5 + 2 / 3 + 0.8) / 5)
    close("MAE", M.mean_absolute_error(y, p), (0 + 1 + 0 + 0 + 0 + 2) / 6)
    with pytest.raises(ValueError, match="y_true has 2 items, y_pred has 1"):
        M.accuracy([1, 2], [1])


def test_macro_f1_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, p = rng.integers(1, 6, 50).tolist(), rng.integers(1, 6, 50).tolist()
        close("macro_f1 vs sklearn", M.macro_f1(y, p), sk.f1_score(y, p, average="macro", zero_division=0))
        assert np.array_equal(M.confusion_matrix(y, p), sk.confusion_matrix(y, p)), "confusion vs sklearn"


# ------------------------------------------------------------------ NER
@pytest.mark.parametrize("tags,entities", [
    (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),              # adjacent, same type
    (["O", "I-PER", "I-PER", "O"], [("PER", 1, 3)]),                    # I- after O starts a chunk
    (["I-LOC"], [("LOC", 0, 1)]),                                       # I- at sentence start
    (["B-PER", "I-PER", "I-LOC", "I-LOC"], [("PER", 0, 2), ("LOC", 2, 4)]),  # type change inside
    (["B-PER", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 2)]),
    (["O", "B-ORG", "I-ORG"], [("ORG", 1, 3)]),                         # entity at the end
    (["B-LOC", "I-LOC", "B-LOC", "O", "B-ORG", "O", "I-ORG"],
     [("LOC", 0, 2), ("LOC", 2, 3), ("ORG", 4, 5), ("ORG", 6, 7)]),
    (["O", "O"], []),
])
def test_get_entities(tags, entities):
    got = M.get_entities(tags)
    assert got == entities, f"get_entities({tags}): got {got}, expected {entities}"


def check_ner(y_true, y_pred, p, r, f1):
    s = M.ner_scores(y_true, y_pred)
    close("precision", s["precision"], p)
    close("recall", s["recall"], r)
    close("f1", s["f1"], f1)
    return s


def test_ner_scores_hand_worked():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    # all correct
    check_ner(gold, gold, 1.0, 1.0, 1.0)
    # empty predictions: nothing found -> P = R = F1 = 0 (conlleval)
    check_ner(gold, [["O"] * 4, ["O"] * 2], 0.0, 0.0, 0.0)
    # wrong span (PER cut short) counts as both a miss and a false positive
    s = check_ner(gold, [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]], 2 / 3, 2 / 3, 2 / 3)
    assert s["per_type"]["PER"]["f1"] == 0.0 and s["per_type"]["LOC"]["f1"] == 1.0, "per type"
    # I-PER after O predicted where gold has B-PER I-PER at the same span: correct
    check_ner([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]], 1.0, 1.0, 1.0)
    # B-PER B-PER predicted for one 2-token PER: 0 correct of 2 predicted, 0 of 1 gold
    check_ner([["B-PER", "I-PER"]], [["B-PER", "B-PER"]], 0.0, 0.0, 0.0)
    # type change inside a chunk: predicted PER(0,1) LOC(1,2) vs gold PER(0,2); plus a correct ORG
    s = check_ner([["B-PER", "I-PER", "B-ORG"]], [["B-PER", "I-LOC", "B-ORG"]], 1 / 3, 1 / 2, 0.4)
    assert (s["n_true"], s["n_pred"], s["n_correct"]) == (2, 3, 1), "entity counts"
    assert s["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}, "LOC row"
    with pytest.raises(ValueError, match="sentence 0: y_true has 2 tags, y_pred has 1"):
        M.ner_scores([["O", "O"]], [["O"]])


def test_ner_scores_match_seqeval():
    sm = pytest.importorskip("seqeval.metrics")
    rng = np.random.default_rng(0)
    tagset = ["O", "O", "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    for trial in range(200):
        lens = rng.integers(1, 9, rng.integers(1, 5))
        yt = [[tagset[k] for k in rng.integers(0, 9, n)] for n in lens]
        yp = [[tagset[k] for k in rng.integers(0, 9, n)] for n in lens]
        s = M.ner_scores(yt, yp)
        for name, fn in (("precision", sm.precision_score), ("recall", sm.recall_score),
                         ("f1", sm.f1_score)):
            close(f"trial {trial} {name} vs seqeval", s[name], fn(yt, yp, zero_division=0))
        rep = sm.classification_report(yt, yp, output_dict=True, zero_division=0)
        for t, row in s["per_type"].items():
            if t in rep:
                close(f"trial {trial} {t} f1 vs seqeval", row["f1"], rep[t]["f1-score"])
                assert row["support"] == rep[t]["support"], f"trial {trial} {t} support vs seqeval"


# ------------------------------------------------------------------ BLEU
def test_bleu():
    pytest.importorskip("sacrebleu")
    hyps = ["the cat sat on the mat", "a dog runs in the park today"]
    close("perfect BLEU", M.bleu(hyps, hyps), 100.0)
    # hand-worked: hyp "the cat sat on a mat" vs ref "the cat sat on the mat": 1-4 gram
    # precisions 5/6, 3/5, 2/4, 1/3, equal lengths (BP = 1) -> geometric mean
    expected = 100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    close("known BLEU", M.bleu(["the cat sat on a mat"], ["the cat sat on the mat"]), expected, 1e-6)
    multi = M.bleu(["the cat sat on a mat"], [["the cat sat on the mat", "the cat sat on a mat"]])
    close("second reference matches exactly", multi, 100.0)
    mixed = M.bleu(hyps, [["the cat sat on the mat"], ["x", "a dog runs in the park today"]])
    close("variable reference counts", mixed, 100.0)
    with pytest.raises(ValueError, match="hypotheses has 1 items, references has 2"):
        M.bleu(["a"], ["a", "b"])


# ------------------------------------------------------------------ language modelling
def test_cross_entropy_and_perplexity():
    V = 4
    uniform = np.zeros((3, 2, V))
    targets = np.array([[0, 1], [2, 3], [1, 1]])
    close("uniform CE = ln V", M.cross_entropy(uniform, targets), math.log(V))
    close("perplexity of uniform = V", M.perplexity(M.cross_entropy(uniform, targets)), V)
    close("bits_per_char of ln 2", M.bits_per_char(math.log(2)), 1.0)
    logits = np.log(np.array([[0.5, 0.25, 0.25, 1e-300]]))
    close("CE picks the target's prob", M.cross_entropy(logits + 1000.0, np.array([1])), math.log(4), 1e-9)
    mask = np.array([[True, True], [True, False], [False, False]])
    lg = np.zeros((3, 2, V))
    lg[2, :, :] = np.array([100.0, 0, 0, 0])  # masked-out steps would change the mean
    close("mask excludes padding", M.cross_entropy(lg, targets, mask), math.log(V))
    with pytest.raises(ValueError, match="must match targets"):
        M.cross_entropy(np.zeros((2, 3, V)), np.zeros((3, 2), dtype=int))


def test_token_bleu():
    pytest.importorskip("sacrebleu")
    ref = ["l'", "homme", "est", "là", "."]
    close("perfect token BLEU", M.token_bleu([ref], [ref]), 100.0)
    close("token BLEU with several references", M.token_bleu([ref], [[["x"], ref]]), 100.0)
    hyp = "the cat sat on a mat".split()
    close("token BLEU = raw BLEU on space-split text",
          M.token_bleu([hyp], ["the cat sat on the mat".split()]),
          M.bleu(["the cat sat on a mat"], ["the cat sat on the mat"]), 1e-9)
    with pytest.raises(TypeError, match="got a str"):
        M.token_bleu(["a b"], [["a", "b"]])


def test_bleu_without_sacrebleu(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "sacrebleu", None)  # import now fails
    with pytest.raises(ImportError, match="pip install sacrebleu"):
        M.bleu(["a"], ["a"])
