"""Layers and losses: every backward against central finite differences (float64),
the RNN layers against torch.nn with the same weights (where torch is installed)."""
import numpy as np
import pytest

from fastrnn.layers import (GRU, LSTM, RNN, Attention, Dense, Dropout, Embedding, Flatten, LastPool, MeanPool, ReLU,
                            Recurrent, Tanh)
from fastrnn.losses import CrossEntropyLoss, log_softmax, softmax_cross_entropy
from fastrnn.model import Sequential

F64 = "float64"


@pytest.fixture(autouse=True)
def _numpy_backend(monkeypatch):
    # The NumPy reference unless the caller picked a backend (FASTRNN_BACKEND=numba pytest ...).
    import os
    if not os.environ.get("FASTRNN_BACKEND"):
        monkeypatch.setenv("FASTRNN_BACKEND", "numpy")


def check_grads(name, tensors, run, back, *, seed=0, eps=1e-6, tol=1e-6, dirs=2):
    """Directional central differences.  ``tensors``: name -> float64 array that
    run() reads (perturbed in place); run(training) -> list of outputs;
    back(list of output gradients) -> name -> analytic gradient.  The loss is
    sum_i <outputs_i, R_i> for fixed random R."""
    rng = np.random.default_rng(seed)
    outs = run(True)
    R = [rng.standard_normal(np.shape(o)) for o in outs]
    grads = back(R)

    def loss():
        return sum(float(np.sum(np.asarray(o) * r)) for o, r in zip(run(False), R))

    for k, p in tensors.items():
        assert k in grads and grads[k] is not None, f"{name}: backward gave no gradient for {k}"
        g = np.asarray(grads[k])
        assert g.shape == p.shape, f"{name}: d{k} shape {g.shape} vs {k} shape {p.shape}"
        for _ in range(dirs):
            v = rng.standard_normal(p.shape)
            p += eps * v
            lp = loss()
            p -= 2 * eps * v
            lm = loss()
            p += eps * v
            num, ana = (lp - lm) / (2 * eps), float(np.sum(g * v))
            assert abs(num - ana) <= tol * max(1.0, abs(num)), \
                f"{name}: d/d{k} along a random direction: finite difference {num!r} vs backward {ana!r}"


def check_layer(name, layer, x, *, fd_training=False, **kw):
    """check_grads over a layer's parameters and its float input x."""
    tensors = dict(layer.params)
    tensors["x"] = x

    def run(training):
        if fd_training or training:
            layer.reseed(7)
        out = layer.forward(x, training=training or fd_training, **kw)
        if not training:
            layer.clear_cache()
        return [out]

    def back(R):
        layer.zero_grad()
        dx = layer.backward(R[0])
        return dict(layer.grads, x=dx)

    check_grads(name, tensors, run, back)


# ---------------------------------------------------------------- simple layers

def test_dense_backward():
    rng = np.random.default_rng(1)
    check_layer("Dense (T,B,F)", Dense(5, 3, seed=0, dtype=F64), rng.standard_normal((4, 2, 5)))
    check_layer("Dense no bias (B,F)", Dense(5, 3, bias=False, seed=0, dtype=F64), rng.standard_normal((2, 5)))


def test_dense_matches_torch_linear_layout():
    d = Dense(4, 3, seed=0)
    assert d.weight.shape == (3, 4) and d.bias.shape == (3,), f"Dense weight/bias shapes {d.weight.shape} {d.bias.shape}"
    assert np.abs(d.weight).max() <= 0.5, "Dense init bound 1/sqrt(in_features) = 0.5"
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(d(x), x @ d.weight.T + d.bias, rtol=1e-6, err_msg="Dense forward vs x W^T + b")


def test_embedding_backward_and_padding():
    emb = Embedding(7, 3, padding_idx=0, seed=0, dtype=F64)
    assert np.all(emb.weight[0] == 0), "padding row starts at zero"
    ids = np.array([[1, 0, 3], [3, 6, 0]])               # (T, B) with padding and a repeated id
    out = emb(ids, training=True)
    assert out.shape == (2, 3, 3), f"Embedding output shape {out.shape}"
    R = np.random.default_rng(0).standard_normal(out.shape)
    emb.zero_grad()
    assert emb.backward(R) is None, "Embedding.backward returns None (ids have no gradient)"
    expect = np.zeros((7, 3))
    for (t, b), i in np.ndenumerate(ids):
        if i != 0:
            expect[i] += R[t, b]
    np.testing.assert_allclose(emb.grads["weight"], expect, err_msg="Embedding weight gradient (scatter-add)")
    assert np.all(emb.grads["weight"][0] == 0), "padding_idx row gets no gradient"
    # finite differences through the lookup (ids without the padding row, whose
    # forward value is used but which by design gets no gradient)
    ids = np.array([[1, 2, 3], [3, 6, 5]])
    check_grads("Embedding", {"weight": emb.params["weight"]},
                lambda tr: [emb(ids, training=tr)],
                lambda R: (emb.zero_grad(), emb.backward(R[0]), dict(emb.grads))[2])


def test_embedding_rejects_bad_ids():
    emb = Embedding(5, 2)
    with pytest.raises(ValueError, match="ids"):
        emb(np.array([0, 5]))
    with pytest.raises(TypeError, match="ids"):
        emb(np.array([0.0, 1.0]))


def test_dropout_fixed_mask_backward_and_scaling():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4, 5))
    d = Dropout(0.4, seed=0)
    check_layer("Dropout (fixed mask)", d, x, fd_training=True)
    assert d(x, training=False) is x or np.array_equal(d(x, training=False), x), "Dropout is identity in eval"
    y = Dropout(0.25, seed=1)(np.ones((200, 200)), training=True)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75, err_msg="inverted dropout scales kept units by 1/(1-p)")
    assert abs(kept.mean() - 0.75) < 0.01, f"keep fraction {kept.mean()} vs 1-p = 0.75"


def test_activations_flatten_pools_backward():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 4))
    check_layer("ReLU", ReLU(), x)
    check_layer("Tanh", Tanh(), x)
    check_layer("Flatten", Flatten(1), x)
    lengths = np.array([5, 0, 2])
    check_layer("MeanPool", MeanPool(), x, lengths=lengths)
    check_layer("MeanPool no lengths", MeanPool(), x)
    check_layer("LastPool", LastPool(), x, lengths=lengths)
    check_layer("MeanPool batch_first", MeanPool(batch_first=True), x.transpose(1, 0, 2).copy(), lengths=lengths)
    check_layer("LastPool batch_first", LastPool(batch_first=True), x.transpose(1, 0, 2).copy(), lengths=lengths)
    m = MeanPool()(x, lengths=lengths)
    np.testing.assert_allclose(m[0], x.mean(0)[0], err_msg="MeanPool full length = plain mean")
    np.testing.assert_allclose(m[2], x[:2, 2].mean(0), err_msg="MeanPool over the 2 valid steps")
    assert np.all(m[1] == 0), "MeanPool of a zero-length sequence is zero"
    last = LastPool()(x, lengths=lengths)
    np.testing.assert_array_equal(last[2], x[1, 2], err_msg="LastPool picks step lengths-1")


# ---------------------------------------------------------------- recurrent layers

MODES = [("rnn_tanh", dict(nonlinearity="tanh"), RNN), ("rnn_relu", dict(nonlinearity="relu"), RNN),
         ("gru", {}, GRU), ("lstm", {}, LSTM)]


def check_rnn(name, cls, extra, *, T=5, B=3, I=3, H=4, L=2, bidirectional=True, batch_first=False,
              lengths=(5, 0, 2), with_h0=True, return_sequences=True, dropout=0.0, bias=True):
    rng = np.random.default_rng(4)
    layer = cls(I, H, L, bidirectional=bidirectional, batch_first=batch_first, dropout=dropout, bias=bias,
                return_sequences=return_sequences, return_state=True, seed=0, dtype=F64, **extra)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    lstm = layer.mode == "lstm"
    tensors = dict(layer.params, x=x)
    h0 = None
    if with_h0:
        h0 = rng.standard_normal((L * D, B, H))
        tensors["h0"] = h0
        if lstm:
            c0 = rng.standard_normal((L * D, B, H))
            tensors["c0"] = c0
            h0 = (h0, c0)
    lens = None if lengths is None else np.array(lengths)

    def run(training):
        layer.reseed(11)
        out, state = layer.forward(x, training=training or dropout > 0, lengths=lens, h0=h0)
        if not training:
            layer.clear_cache()
        return [out] + (list(state) if lstm else [state])

    def back(R):
        layer.zero_grad()
        dx = layer.backward(R[0], dstate=(R[1], R[2]) if lstm else R[1])
        g = dict(layer.grads, x=dx)
        if with_h0:
            g["h0"], g["c0"] = layer.dh0 if lstm else (layer.dh0, None)
        return g

    check_grads(name, tensors, run, back)
    return layer


@pytest.mark.parametrize("mode,extra,cls", MODES, ids=[m[0] for m in MODES])
def test_rnn_backward_two_layers_bidirectional_lengths(mode, extra, cls):
    layer = check_rnn(f"{mode} L=2 bidirectional lengths (5,0,2) h0", cls, extra)
    assert layer.mode == mode, f"layer mode {layer.mode} vs {mode}"


@pytest.mark.parametrize("mode,extra,cls", [MODES[1], MODES[2], MODES[3]], ids=["rnn_relu", "gru", "lstm"])
def test_rnn_backward_batch_first_final_state_output(mode, extra, cls):
    check_rnn(f"{mode} batch_first return_sequences=False", cls, extra, batch_first=True,
              return_sequences=False, lengths=(2, 5, 0), with_h0=False)


def test_rnn_backward_dropout_between_layers_and_no_bias():
    check_rnn("gru dropout=0.3 (fixed masks)", GRU, {}, dropout=0.3, bidirectional=False, L=3)
    check_rnn("lstm bias=False unidirectional", LSTM, {}, bias=False, bidirectional=False, lengths=None)


def test_rnn_parameter_names_shapes_and_init_like_torch():
    layer = LSTM(3, 4, 2, bidirectional=True, seed=0)
    assert layer.weight_ih_l0.shape == (16, 3), f"weight_ih_l0 {layer.weight_ih_l0.shape}"
    assert layer.weight_ih_l1_reverse.shape == (16, 8), f"weight_ih_l1_reverse {layer.weight_ih_l1_reverse.shape}"
    assert layer.bias_hh_l1_reverse.shape == (16,), f"bias_hh_l1_reverse {layer.bias_hh_l1_reverse.shape}"
    assert len(layer.params) == 16, f"16 tensors for 2 layers x 2 directions, got {len(layer.params)}"
    assert max(np.abs(v).max() for v in layer.params.values()) <= 0.5, "init within 1/sqrt(H) = 0.5"
    y = layer(np.zeros((3, 2, 3), np.float32), lengths=np.array([3, 1]))
    assert y.shape == (3, 2, 8) and y.dtype == np.float32, f"output {y.shape} {y.dtype}"
    assert np.all(y[1:, 1] == 0), "steps past a sequence's length are zero"


def test_rnn_argument_errors():
    with pytest.raises(ValueError, match="x"):
        GRU(3, 4)(np.zeros((2, 2, 5)))
    with pytest.raises(ValueError, match="h0"):
        GRU(3, 4, 2)(np.zeros((2, 2, 3)), h0=np.zeros((1, 2, 4)))
    with pytest.raises(TypeError, match="h0"):
        LSTM(3, 4)(np.zeros((2, 2, 3)), h0=np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="dropout"):
        LSTM(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="mode"):
        Recurrent("elman", 3, 4)
    with pytest.raises(RuntimeError, match="forward"):
        GRU(3, 4).backward(np.zeros((2, 2, 4)))


def test_rnn_layers_match_torch():
    torch = pytest.importorskip("torch")
    T, B, I, H = 6, 3, 3, 4
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([6, 1, 4])
    for mode, extra, cls in MODES:
        ours = cls(I, H, 2, bidirectional=True, return_state=True, seed=1, dtype=F64, **extra)
        tcls = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}.get(mode, torch.nn.RNN)
        targs = {"nonlinearity": extra["nonlinearity"]} if extra else {}
        ref = tcls(I, H, 2, bidirectional=True, **targs).double()
        ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
        y, state = ours(x, training=True, lengths=lengths)
        xt = torch.tensor(x, requires_grad=True)
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
        yt, st = ref(packed)
        yt = torch.nn.utils.rnn.pad_packed_sequence(yt, total_length=T)[0]
        hs = st if mode == "lstm" else (st,)
        ours_s = state if mode == "lstm" else (state,)
        np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-10, err_msg=f"{mode}: output y vs torch")
        for i, (a, b) in enumerate(zip(ours_s, hs)):
            np.testing.assert_allclose(a, b.detach().numpy(), atol=1e-10, err_msg=f"{mode}: final state[{i}] vs torch")
        R = rng.standard_normal(y.shape)
        S = [rng.standard_normal(s.shape) for s in ours_s]
        loss = (yt * torch.from_numpy(R)).sum() + sum((h * torch.from_numpy(s)).sum() for h, s in zip(hs, S))
        loss.backward()
        ours.zero_grad()
        dx = ours.backward(R, dstate=tuple(S) if mode == "lstm" else S[0])
        np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-10, err_msg=f"{mode}: dx vs torch")
        for k, p in ref.named_parameters():
            np.testing.assert_allclose(ours.grads[k], p.grad.numpy(), atol=1e-10, err_msg=f"{mode}: d{k} vs torch")
        back = cls(I, H, 2, bidirectional=True, seed=9, dtype=F64, **extra).load_state_dict(ref.state_dict())
        np.testing.assert_allclose(back(x, lengths=lengths), y, atol=1e-12,
                                   err_msg=f"{mode}: output after loading torch's state_dict")


# ---------------------------------------------------------------- losses

def test_cross_entropy_backward_mask_weights_ignore_index():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((4, 3, 5)) * 3
    targets = rng.integers(0, 5, (4, 3))
    targets[0, 0] = -100
    mask = rng.random((4, 3)) > 0.3
    weight = rng.random(5) + 0.5
    for name, kw in [("plain", {}), ("mask", dict(mask=mask)), ("weights+mask", dict(mask=mask, weight=weight)),
                     ("ignore_index", dict(ignore_index=-100)), ("sum", dict(reduction="sum", weight=weight))]:
        t = targets if "ignore_index" in kw else np.where(targets < 0, 0, targets)
        check_grads(f"softmax_cross_entropy {name}", {"logits": logits},
                    lambda tr, t=t, kw=kw: [np.array(softmax_cross_entropy(logits, t, **kw)[0])],
                    lambda R, t=t, kw=kw: {"logits": R[0] * softmax_cross_entropy(logits, t, **kw)[1]})
    # the weighted mean, by hand
    t = np.where(targets < 0, 0, targets)
    nll = -np.take_along_axis(log_softmax(logits), t[..., None], -1)[..., 0]
    w = weight[t] * mask
    loss, _ = softmax_cross_entropy(logits, t, mask=mask, weight=weight)
    np.testing.assert_allclose(loss, (w * nll).sum() / w.sum(), rtol=1e-12, err_msg="weighted masked mean")
    loss0, d0 = softmax_cross_entropy(logits, t, mask=np.zeros_like(mask))
    assert loss0 == 0 and not d0.any(), "nothing counted: loss and gradient are zero"
    big, _ = softmax_cross_entropy(np.array([[1000.0, -1000.0]], np.float32), np.array([1]))
    assert np.isfinite(big) and abs(big - 2000) < 1e-2, f"stable log-softmax at +-1000: {big}"


def test_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((10, 4))
    t = rng.integers(0, 4, 10)
    t[3] = -1
    w = rng.random(4) + 0.1
    loss, d = softmax_cross_entropy(logits, t, weight=w, ignore_index=-1)
    lt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.CrossEntropyLoss(weight=torch.tensor(w), ignore_index=-1)(lt, torch.tensor(t))
    ref.backward()
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-12, err_msg="loss vs torch CrossEntropyLoss(weight)")
    np.testing.assert_allclose(d, lt.grad.numpy(), atol=1e-12, err_msg="dlogits vs torch")


def test_cross_entropy_loss_fn_uses_batch_lengths():
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((4, 2, 3))
    batch = {"targets": rng.integers(0, 3, (4, 2)), "lengths": np.array([4, 1])}
    loss, d, n = CrossEntropyLoss()(logits, batch)
    assert n == 5, f"counted targets from lengths (4+1), got {n}"
    assert not d[1:, 1].any(), "no gradient past a sequence's length"
    with pytest.raises(ValueError, match="targets"):
        softmax_cross_entropy(logits, np.zeros((4, 3), int))


def test_sequential_backward_dotted_names():
    rng = np.random.default_rng(9)
    model = Sequential(Dense(3, 4, seed=0, dtype=F64), Tanh(), GRU(4, 5, seed=1, dtype=F64),
                       MeanPool(), Dense(5, 2, seed=2, dtype=F64))
    assert "2.weight_hh_l0" in model.parameters(), f"dotted names: {sorted(model.parameters())}"
    check_layer("Sequential Dense-Tanh-GRU-MeanPool-Dense", model, rng.standard_normal((4, 3, 3)),
                lengths=np.array([4, 2, 0]))
    out = model({"inputs": np.ones((4, 3, 3)), "lengths": np.array([4, 2, 0])})
    assert out.shape == (3, 2), f"Sequential on a batch dict: output shape {out.shape}"


@pytest.mark.parametrize("score", ["general", "dot"])
def test_attention_backward_with_key_lengths(score):
    rng = np.random.default_rng(10)
    att = Attention(4, 4 if score == "dot" else 3, score, seed=0, dtype=F64)
    q = rng.standard_normal((5, 3, 4))
    k = rng.standard_normal((6, 3, att.key_size))
    kl = np.array([6, 0, 2])
    tensors = dict(att.params, q=q, k=k)

    def run(training):
        out = att(q, k, training=training, key_lengths=kl)
        return [out]

    def back(R):
        att.zero_grad()
        dq, dk = att.backward(R[0])
        return dict(att.grads, q=dq, k=dk)

    check_grads(f"Attention {score}", tensors, run, back)
    w = att.last_weights
    np.testing.assert_allclose(w[:, 0].sum(-1), 1, err_msg="weights sum to 1 over the keys")
    assert not w[:, 2, 2:].any() and not w[:, 1].any(), "no weight on keys past key_lengths (none for length 0)"
