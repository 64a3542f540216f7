"""fastrnn.tasks.sentiment: a quick training run, save/load, predict, evaluate, bad data."""
from __future__ import annotations

import numpy as np
import pytest

from fastrnn.data import DataError, default_data_dir
from fastrnn.model import load
from fastrnn.tasks import sentiment as S
from fastrnn.tasks.common import MeanMaxPool, class_weights

needs_data = pytest.mark.skipif(default_data_dir() is None,
                                reason="the shared data folder (../shared/data or $FASTRNN_DATA) is absent")

TINY = dict(max_train=400, max_dev=120, epochs=3, emb=16, hidden=16, max_len=30, batch_size=32, lr=5e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if default_data_dir() is None:
        pytest.skip("the shared data folder (../shared/data or $FASTRNN_DATA) is absent")
    out = tmp_path_factory.mktemp("sent") / "sent.npz"
    return S.train(out=str(out), quick=True, progress=False, **TINY)


@needs_data
def test_quick_training_loss_falls(trained):
    loss = trained["history"]["loss"]
    assert len(loss) == 3 and loss[-1] < loss[0]
    m = trained["metrics"]
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1 and 0 <= m["mae"] <= 4
    assert m["n"] == 120 and trained["tokens_per_s"] > 0 and trained["seconds"] > 0


@needs_data
def test_save_load_round_trip_identical_predictions(trained):
    texts = ["Great fit, I love it!", "Terrible. Broke after a day and support never answered.",
             "It is okay I guess", "unseenwordxyz"]
    model = load(trained["model"])
    assert isinstance(model, S.SentimentClassifier)
    p1 = S.predict_proba(trained["model"], texts)
    p2 = S.predict_proba(model, texts)
    np.testing.assert_array_equal(p1, p2)
    again = load(trained["model"])
    np.testing.assert_array_equal(S.predict_proba(again, texts), p1)


@needs_data
def test_predict_format(trained):
    r = S.predict(trained["model"], "This dress is beautiful and fits perfectly.")
    assert set(r) == {"stars", "probabilities"}
    assert r["stars"] in (1, 2, 3, 4, 5)
    assert len(r["probabilities"]) == 5 and abs(sum(r["probabilities"]) - 1) < 1e-4
    assert r["stars"] == int(np.argmax(r["probabilities"])) + 1
    many = S.predict(trained["model"], ["good", "bad", "!!!"])
    assert isinstance(many, list) and len(many) == 3


@needs_data
def test_evaluate_rebuilds_the_dev_split(trained):
    res = S.evaluate(trained["model"])
    assert res["split"] == "dev" and res["n"] == 120
    assert res["accuracy"] == pytest.approx(trained["metrics"]["accuracy"])
    assert np.asarray(res["confusion"]).sum() == 120


def test_bad_data_file_raises_data_error_with_file_and_line(tmp_path):
    bad = tmp_path / "reviews.tsv"
    bad.write_text("source\tstars\ttext\nmovie\t4\tfine film\nmovie\tsix\tbad stars here\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        S.train(data=bad, out=str(tmp_path / "m.npz"), quick=True, progress=False)
    assert e.value.path == str(bad) and e.value.line == 3
    assert str(e.value).startswith(f"{bad}:3:")


def test_unknown_option_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="unknown option"):
        S.train(data=tmp_path / "x.tsv", quick=True, progress=False, hiden=3)


def test_class_weights():
    w = class_weights([10, 30, 60], "balanced")
    np.testing.assert_allclose(w * np.array([10, 30, 60]), [100 / 3] * 3)
    np.testing.assert_allclose(class_weights([10, 30, 60], "sqrt"), np.sqrt(w))
    assert class_weights([1, 2], "none") is None


def test_mean_max_pool_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4))
    lengths = np.array([5, 2, 0])
    pool = MeanMaxPool()
    y = pool.forward(x, training=True, lengths=lengths)
    assert y.shape == (3, 8)
    np.testing.assert_allclose(y[1, :4], x[:2, 1].mean(0))
    np.testing.assert_allclose(y[1, 4:], x[:2, 1].max(0))
    assert np.all(y[2] == 0)
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(dy)
    num = np.zeros_like(x)
    eps = 1e-6
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        num[idx] = ((pool.forward(xp, lengths=lengths) - pool.forward(xm, lengths=lengths)) * dy).sum() / (2 * eps)
    np.testing.assert_allclose(dx, num, atol=1e-6)


def test_model_gradient_finite_differences():
    from fastrnn.data import iterate_batches
    from fastrnn.losses import CrossEntropyLoss
    m = S.SentimentClassifier(12, 5, 4, dropout=0.0, emb_dropout=0.0, seed=1).astype("float64")
    b = next(iterate_batches([[1, 4, 5], [2, 7], [3, 3, 9, 11]], [0, 3, 4], 3))
    loss_fn = CrossEntropyLoss()

    def loss():
        return loss_fn(m.forward(b, training=False), b)[0]

    m.zero_grad()
    _, d, _ = loss_fn(m.forward(b, training=True), b)
    m.backward(d)
    params, grads = m.parameters(), m.gradients()
    rng = np.random.default_rng(0)
    for name in ("embed.weight", "rnn.weight_ih_l0_reverse", "out.weight"):
        p = params[name]
        for _ in range(3):
            i = tuple(rng.integers(0, s) for s in p.shape)
            if name == "embed.weight":
                i = (int(rng.choice([1, 4, 9])),) + i[1:]
            old = p[i]
            p[i] = old + 1e-6
            lp = loss()
            p[i] = old - 1e-6
            lm = loss()
            p[i] = old
            assert grads[name][i] == pytest.approx((lp - lm) / 2e-6, rel=1e-4, abs=1e-8), name
