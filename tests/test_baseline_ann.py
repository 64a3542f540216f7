"""fastrnn.tasks.baseline_ann: the one-hot feed-forward baseline."""
from __future__ import annotations

import numpy as np
import pytest

from fastrnn.data import Vocab, default_data_dir
from fastrnn.layers import GRU, Embedding
from fastrnn.tasks import baseline_ann as A

needs_data = pytest.mark.skipif(default_data_dir() is None,
                                reason="the shared data folder (../shared/data or $FASTRNN_DATA) is absent")


def test_one_hot_dense_equals_explicit_one_hot_matmul():
    V, W, H, B = 7, 3, 5, 4
    layer = A.OneHotDense(V, W, H, seed=0, dtype="float64")
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, (B, W))
    x = layer.one_hot(ids)
    assert x.shape == (B, V * W) == (B, layer.in_features) and np.all(x.sum(1) == W)
    y = layer.forward(ids, training=True)
    np.testing.assert_allclose(y, x @ layer.weight + layer.bias)
    dy = rng.standard_normal((B, H))
    assert layer.backward(dy) is None
    np.testing.assert_allclose(layer.grads["weight"], x.T @ dy)
    np.testing.assert_allclose(layer.grads["bias"], dy.sum(0))
    with pytest.raises(ValueError, match=r"expected shape \(B, 3\)"):
        layer.forward(ids[:, :2])
    with pytest.raises(ValueError, match="expected values in"):
        layer.forward(ids + V)


def test_shapes_and_parameter_count():
    V, W, H, C = 50, 8, 16, 5
    m = A.build_ann(V, W, H, C)
    assert m[0].in_features == A.input_width(V, W) == V * W
    assert m.num_parameters() == A.ann_num_parameters(V, W, H, C) == (V * W + 1) * H + (H + 1) * C
    out = m.forward({"inputs": np.zeros((3, W), np.int64)})
    assert out.shape == (3, C)


def test_parameters_grow_with_the_window_rnn_does_not():
    V, H, C, E = 100, 16, 5, 8
    ann = [A.build_ann(V, W, H, C).num_parameters() for W in (4, 8, 16, 32)]
    assert np.all(np.diff(ann) == np.diff([4, 8, 16, 32]) * V * H)      # + V*H per extra token
    rnn = Embedding(V, E).num_parameters() + GRU(E, H, bidirectional=True).num_parameters()
    assert rnn == V * E + 2 * (3 * H * (E + H) + 6 * H)                 # no window in it at all


def test_window_builders():
    vocab = Vocab.build([["a", "b", "c"]])
    X = A.ner_windows([["A", "b"], [], ["c"]], vocab, 1)
    a, b, c = vocab["a"], vocab["b"], vocab["c"]
    np.testing.assert_array_equal(X, [[0, a, b], [a, b, 0], [0, c, 0]])
    Xc, yc = A.char_windows([5, 6, 7], 2)
    np.testing.assert_array_equal(Xc, [[0, 0], [0, 5], [5, 6]])
    np.testing.assert_array_equal(yc, [5, 6, 7])
    S = A.sentiment_inputs([["a", "b", "c", "a"], ["zzz"]], vocab, 3)
    np.testing.assert_array_equal(S, [[a, b, c], [vocab.unk_id, 0, 0]])


@needs_data
def test_tiny_sentiment_training_run():
    r = A.train_sentiment(max_train=600, window=16, epochs=3, hidden=16, max_vocab=800, lr=3e-3, patience=None)
    loss = r["history"]["loss"]
    assert loss[-1] < loss[0]
    assert r["input_width"] == r["vocab_size"] * 16 == 800 * 16
    assert r["parameters"] == A.ann_num_parameters(800, 16, 16, 5)
    assert 0 <= r["accuracy"] <= 1 and len(r["dev_pred"]) == len(r["dev_lengths"])


@needs_data
def test_tiny_autocomplete_and_ner_runs():
    r = A.train_autocomplete(max_train_chars=20_000, max_dev_chars=2_000, epochs=2, k=4, hidden=32)
    assert r["history"]["loss"][-1] < r["history"]["loss"][0]
    assert r["input_width"] == r["vocab_size"] * 4 and 0 < r["bits_per_char"] < 8
    n = A.train_ner(max_train=150, epochs=2, k=1, hidden=16)
    assert n["history"]["loss"][-1] < n["history"]["loss"][0]
    assert n["input_width"] == n["vocab_size"] * 3 and len(n["dev_pred"]) == 1038
