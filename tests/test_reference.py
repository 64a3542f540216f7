"""The oracle itself: float64 reference against central finite differences
and, where torch is installed, against torch.nn with packed sequences."""
import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn.cells import spec

from .helpers import assert_close, make_problem

MODES = fastrnn.MODES


def _loss(mode, prob, reverse, x=None, w=None, h0=None):
    x = prob["x"] if x is None else x
    w = prob["w"] if w is None else w
    h0 = prob["h0"] if h0 is None else h0
    y, hn, _ = fastrnn.rnn_forward(mode, x, w, h0, prob["lengths"], reverse=reverse, backend="numpy")
    total = float((y * prob["dy"]).sum())
    if spec(mode).has_cell:
        total += float((hn[0] * prob["dhn"][0]).sum() + (hn[1] * prob["dhn"][1]).sum())
    else:
        total += float((hn * prob["dhn"]).sum())
    return total


def _fd_grad(f, a, eps=1e-6):
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_reference_against_finite_differences(mode, reverse):
    prob = make_problem(mode, 4, 3, 3, 4, lengths=np.array([4, 0, 2]), seed=3)
    if mode == "rnn_relu":   # keep away from relu's kink
        prob["x"] += 0.05
    y, hn, saved = fastrnn.rnn_forward(mode, prob["x"], prob["w"], prob["h0"], prob["lengths"],
                                       reverse=reverse, training=True, backend="numpy")
    dx, dh0, dw = fastrnn.rnn_backward(saved, prob["dy"], prob["dhn"])
    f = lambda: _loss(mode, prob, reverse)
    assert_close("dx", dx, _fd_grad(f, prob["x"]), 1e-6)
    for name, g, a in zip(("dw_ih", "dw_hh", "db_ih", "db_hh"), dw, prob["w"]):
        assert_close(name, g, _fd_grad(f, a), 1e-6)
    if spec(mode).has_cell:
        assert_close("dh0", dh0[0], _fd_grad(f, prob["h0"][0]), 1e-6)
        assert_close("dc0", dh0[1], _fd_grad(f, prob["h0"][1]), 1e-6)
    else:
        assert_close("dh0", dh0, _fd_grad(f, prob["h0"]), 1e-6)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_reference_against_torch(mode, reverse):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    T, B, I, H = 6, 4, 3, 5
    lengths = np.array([6, 1, 3, 6])      # torch's packing needs lengths >= 1
    prob = make_problem(mode, T, B, I, H, lengths=lengths, seed=7)
    cls = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}.get(mode)
    kw = {} if cls else {"nonlinearity": mode[4:]}
    m = (cls or torch.nn.RNN)(I, H, bidirectional=reverse, dtype=torch.float64, **kw)
    sfx = "_l0_reverse" if reverse else "_l0"
    with torch.no_grad():
        for name, a in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), prob["w"]):
            getattr(m, name + sfx).copy_(torch.from_numpy(a))
    x = torch.tensor(prob["x"], requires_grad=True)
    D = 2 if reverse else 1
    if spec(mode).has_cell:
        h0 = torch.tensor(np.stack([prob["h0"][0]] * D), requires_grad=True)
        c0 = torch.tensor(np.stack([prob["h0"][1]] * D), requires_grad=True)
        state = (h0, c0)
    else:
        h0 = torch.tensor(np.stack([prob["h0"]] * D), requires_grad=True)
        state = h0
    out, st = m(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False), state)
    yt, _ = pad_packed_sequence(out, total_length=T)
    yt = yt[..., H:] if reverse else yt
    hn_t = st[0][-1] if spec(mode).has_cell else st[-1]
    loss = (yt * torch.from_numpy(prob["dy"])).sum()
    if spec(mode).has_cell:
        loss = loss + (hn_t * torch.from_numpy(prob["dhn"][0])).sum() + \
            (st[1][-1] * torch.from_numpy(prob["dhn"][1])).sum()
    else:
        loss = loss + (hn_t * torch.from_numpy(prob["dhn"])).sum()
    loss.backward()

    y, hn, saved = fastrnn.rnn_forward(mode, prob["x"], prob["w"], prob["h0"], lengths,
                                       reverse=reverse, training=True, backend="numpy")
    dx, dh0, dw = fastrnn.rnn_backward(saved, prob["dy"], prob["dhn"])
    tol = 1e-12
    assert_close("y", y, yt.detach().numpy(), tol)
    assert_close("h_n", hn[0] if spec(mode).has_cell else hn, hn_t.detach().numpy(), tol)
    assert_close("dx", dx, x.grad.numpy(), tol)
    for name, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), dw):
        assert_close("d" + name, g, getattr(m, name + sfx).grad.numpy(), tol)
    if spec(mode).has_cell:
        assert_close("c_n", hn[1], st[1][-1].detach().numpy(), tol)
        assert_close("dh0", dh0[0], h0.grad[-1].numpy(), tol)
        assert_close("dc0", dh0[1], c0.grad[-1].numpy(), tol)
    else:
        assert_close("dh0", dh0, h0.grad[-1].numpy(), tol)


def test_reference_module_directly_matches_functional():
    prob = make_problem("gru", 3, 2, 3, 4)
    w = prob["w"]
    y, h, c, cache = reference.forward("gru", prob["x"], *w, prob["h0"], None, None, False, True)
    y2, h2, _ = fastrnn.rnn_forward("gru", prob["x"], w, prob["h0"], backend="numpy")
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(h, h2)
