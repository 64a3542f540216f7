"""Bad input is a ValueError/TypeError naming the argument, raised before any
kernel runs; it never crashes the process."""
import numpy as np
import pytest

import fastrnn

T, B, I, H = 5, 3, 4, 6


def weights(mode="lstm", dtype=np.float32, H=H, I=I):
    G = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}[mode]
    r = np.random.default_rng(0)
    return [r.standard_normal(s).astype(dtype) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]


def x_(dtype=np.float32, shape=(T, B, I)):
    return np.random.default_rng(1).standard_normal(shape).astype(dtype)


def bad(exc, match, *args, **kw):
    with pytest.raises(exc, match=match):
        fastrnn.rnn_forward(*args, **kw)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_forward_errors_name_the_argument(backend):
    w = weights()
    kw = dict(backend=backend)
    bad(ValueError, r"mode: expected one of", "LSTM", x_(), w, **kw)
    bad(ValueError, r"mode: expected one of", None, x_(), w, **kw)
    bad(ValueError, r"x: expected 3 dimensions", "lstm", x_(shape=(T, I)), w, **kw)
    bad(TypeError, r"x: expected dtype float32 or float64, got int64", "lstm",
        np.zeros((T, B, I), np.int64), w, **kw)
    bad(TypeError, r"x: expected dtype", "lstm", x_().astype(np.float16), w, **kw)
    bad(TypeError, r"x: expected a \(T, B, I\)", "lstm", None, w, **kw)
    bad(ValueError, r"x: expected T, B, I >= 1", "lstm", np.zeros((0, B, I), np.float32), w, **kw)
    bad(TypeError, r"weights: expected a tuple", "lstm", x_(), w[:3], **kw)
    bad(TypeError, r"weights: expected a tuple", "lstm", x_(), {"w": 1}, **kw)
    bad(ValueError, r"weights\[0\] \(w_ih\): expected shape \(24, 4\), got \(24, 5\)", "lstm", x_(),
        [np.zeros((24, 5), np.float32)] + w[1:], **kw)
    bad(ValueError, r"weights\[1\] \(w_hh\): expected shape \(4\*H, H\)", "lstm", x_(),
        [w[0], np.zeros((18, 6), np.float32)] + w[2:], **kw)
    bad(ValueError, r"weights\[1\] \(w_hh\)", "gru", x_(), w, **kw)          # lstm weights, gru mode
    bad(ValueError, r"weights\[2\] \(b_ih\): expected shape \(24,\)", "lstm", x_(),
        w[:2] + [np.zeros(23, np.float32), w[3]], **kw)
    bad(TypeError, r"weights\[0\] \(w_ih\): expected dtype float32 \(the dtype of x\), got float64",
        "lstm", x_(), [w[0].astype(np.float64)] + w[1:], **kw)
    bad(TypeError, r"weights\[3\] \(b_hh\): expected dtype", "lstm", x_(np.float64),
        [a.astype(np.float64) for a in w[:3]] + [w[3]], **kw)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_state_and_lengths_errors(backend):
    w = weights()
    kw = dict(backend=backend)
    h = np.zeros((B, H), np.float32)
    bad(TypeError, r"h0: for lstm expected a pair", "lstm", x_(), w, h, **kw)
    bad(ValueError, r"h0\[1\]: expected shape \(3, 6\), got \(3, 5\)", "lstm", x_(), w,
        (h, np.zeros((B, 5), np.float32)), **kw)
    bad(TypeError, r"h0: expected one \(B, H\) array", "gru", x_(), weights("gru"), (h, h), **kw)
    bad(ValueError, r"h0: expected shape \(3, 6\), got \(1, 3, 6\)", "gru", x_(), weights("gru"),
        h[None], **kw)
    bad(TypeError, r"h0: expected dtype float32", "gru", x_(), weights("gru"), h.astype(np.float64), **kw)
    bad(ValueError, r"lengths: expected every value in \[0, T=5\], got 6", "lstm", x_(), w, None,
        [5, 6, 1], **kw)
    bad(ValueError, r"lengths: expected every value in \[0, T=5\], got -1", "lstm", x_(), w, None,
        [5, -1, 1], **kw)
    bad(ValueError, r"lengths: expected shape \(3,\)", "lstm", x_(), w, None, [5, 1], **kw)
    bad(TypeError, r"lengths: expected whole numbers", "lstm", x_(), w, None, [5, 1.5, 1], **kw)
    bad(TypeError, r"lengths: expected integers, got dtype bool", "lstm", x_(), w, None,
        np.array([True, False, True]), **kw)
    bad(TypeError, r"lengths: expected integers", "lstm", x_(), w, None, ["a", "b", "c"], **kw)
    bad(TypeError, r"reverse: expected a bool", "lstm", x_(), w, reverse="yes", **kw)
    bad(TypeError, r"training: expected a bool", "lstm", x_(), w, training=1, **kw)


def test_float_lengths_with_whole_values_are_accepted():
    y, _, _ = fastrnn.rnn_forward("gru", x_(), weights("gru"), None, np.array([5.0, 0.0, 2.0]))
    assert np.all(y[2:, 2] == 0) and np.all(y[:, 1] == 0)


def test_backward_errors():
    w = weights()
    y, hn, saved = fastrnn.rnn_forward("lstm", x_(), w, training=True)
    with pytest.raises(ValueError, match=r"saved: got None"):
        fastrnn.rnn_backward(None, y)
    with pytest.raises(TypeError, match=r"saved: expected the Saved"):
        fastrnn.rnn_backward({"a": 1}, y)
    with pytest.raises(ValueError, match=r"dy: expected shape \(5, 3, 6\), got \(5, 3, 5\)"):
        fastrnn.rnn_backward(saved, y[..., :5])
    with pytest.raises(TypeError, match=r"dy: expected dtype float32"):
        fastrnn.rnn_backward(saved, y.astype(np.float64))
    with pytest.raises(TypeError, match=r"dh_n: for lstm expected a pair"):
        fastrnn.rnn_backward(saved, y, hn[0])
    with pytest.raises(ValueError, match=r"dh_n\[0\]: expected shape"):
        fastrnn.rnn_backward(saved, y, (hn[0][:2], None))
    # None everywhere is allowed: zero upstream gradient
    dx, (dh0, dc0), dw = fastrnn.rnn_backward(saved, None, (None, None))
    assert not dx.any() and not dh0.any() and not dc0.any()


def test_no_bias_gives_none_bias_gradients():
    w = weights("gru")
    y, hn, saved = fastrnn.rnn_forward("gru", x_(), [w[0], w[1], None, None], training=True)
    dx, dh0, dw = fastrnn.rnn_backward(saved, np.ones_like(y))
    assert dw[2] is None and dw[3] is None and dw[0].shape == w[0].shape


def test_error_before_kernel_for_huge_lengths_does_not_crash():
    """Out-of-range lengths would index past the arrays in an unchecked kernel."""
    with pytest.raises(ValueError, match="lengths"):
        fastrnn.rnn_forward("rnn_tanh", x_(), weights("rnn_tanh"), None, [10**9, 0, 0],
                            backend="numba")
