"""Optimisers against torch.optim, clipping, save/load (atomic, corruption), fit()."""
import json
import os
import zipfile

import numpy as np
import pytest

import fastrnn.serialize as ser
from fastrnn.layers import GRU, LSTM, Dense, Dropout, Embedding, MeanPool
from fastrnn.losses import CrossEntropyLoss, softmax_cross_entropy
from fastrnn.meters import Accuracy, MacroF1
from fastrnn.model import Model, Sequential, evaluate, fit, load, predict, save
from fastrnn.optim import SGD, Adam, AdamW, clip_grad_norm


@pytest.fixture(autouse=True)
def _numpy_backend(monkeypatch):
    if not os.environ.get("FASTRNN_BACKEND"):
        monkeypatch.setenv("FASTRNN_BACKEND", "numpy")


# ---------------------------------------------------------------- optimisers

OPTS = [("sgd", SGD, dict(lr=0.1)),
        ("sgd momentum wd", SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
        ("sgd nesterov", SGD, dict(lr=0.05, momentum=0.8, nesterov=True)),
        ("adam", Adam, dict(lr=0.01)),
        ("adam wd amsgrad", Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True)),
        ("adamw", AdamW, dict(lr=0.01, weight_decay=0.1))]


@pytest.mark.parametrize("name,cls,kw", OPTS, ids=[o[0] for o in OPTS])
def test_optimizer_matches_torch(name, cls, kw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal((3, 4)), "b.c": rng.standard_normal(5)}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    tparams = [torch.tensor(params[k].copy(), requires_grad=True) for k in params]
    ours = cls((params, grads), **kw)
    ref = getattr(torch.optim, cls.__name__)(tparams, **kw)
    for step in range(5):
        for (k, g), tp in zip(grads.items(), tparams):
            g[...] = rng.standard_normal(g.shape)
            tp.grad = torch.tensor(g.copy())
        ours.step()
        ref.step()
        for k, tp in zip(params, tparams):
            np.testing.assert_allclose(params[k], tp.detach().numpy(), rtol=1e-12, atol=1e-13,
                                       err_msg=f"{name}: parameter {k} after step {step + 1} vs torch")


def test_optimizer_updates_model_in_place_and_zero_grad():
    model = Dense(3, 2, seed=0)
    w = model.weight
    opt = SGD(model, lr=1.0)
    model.grads["weight"][...] = 1
    opt.step()
    assert model.weight is w, "the parameter array is updated in place"
    opt.zero_grad()
    assert not model.grads["weight"].any(), "zero_grad zeroes the gradients in place"
    with pytest.raises(ValueError, match="lr"):
        Adam(model, lr=-1)
    with pytest.raises(TypeError, match="params"):
        Adam([1, 2, 3])


def test_clip_grad_norm():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    total = clip_grad_norm(g, 1.0)
    assert total == 5.0, f"total norm before clipping: {total}"
    np.testing.assert_allclose(np.sqrt(sum((v ** 2).sum() for v in g.values())), 1.0, rtol=1e-5,
                               err_msg="norm after clipping to 1")
    g2 = {"a": np.array([0.3, 0.4])}
    assert abs(clip_grad_norm(g2, 1.0) - 0.5) < 1e-12 and g2["a"][0] == 0.3, "below max_norm: untouched"
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal((3, 4)), rng.standard_normal(7)]
    ts = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    for t, a in zip(ts, arrays):
        t.grad = torch.tensor(a.copy())
    for norm_type in (2.0, 1.0):
        mine = [a.copy() for a in arrays]
        tn = torch.nn.utils.clip_grad_norm_(ts, 0.7, norm_type=norm_type)
        n = clip_grad_norm(mine, 0.7, norm_type=norm_type)
        assert abs(n - tn.item()) < 1e-9, f"total {norm_type}-norm {n} vs torch {tn.item()}"
        for a, t in zip(mine, ts):
            np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-12, err_msg=f"clipped grads ({norm_type}) vs torch")
        for t, a in zip(ts, arrays):
            t.grad = torch.tensor(a.copy())


# ---------------------------------------------------------------- models used below

class TinySeq2Seq(Model):
    """Encoder-decoder (no attention): the encoder's final state starts the decoder."""

    def __init__(self, src_vocab, tgt_vocab, dim=6, seed=0):
        rng = np.random.default_rng(seed)
        self.src_emb = Embedding(src_vocab, dim, padding_idx=0, seed=rng)
        self.tgt_emb = Embedding(tgt_vocab, dim, padding_idx=0, seed=rng)
        self.enc = LSTM(dim, dim, return_state=True, seed=rng)
        self.dec = LSTM(dim, dim, seed=rng)
        self.out = Dense(dim, tgt_vocab, seed=rng)

    def forward(self, b, *, training=False):
        _, state = self.enc(self.src_emb(b["inputs"], training=training), training=training, lengths=b["lengths"])
        y = self.dec(self.tgt_emb(b["targets"][:-1], training=training), training=training,
                     lengths=b["target_lengths"] - 1, h0=state)
        return self.out(y, training=training)

    def backward(self, dlogits):
        self.tgt_emb.backward(self.dec.backward(self.out.backward(dlogits)))
        self.src_emb.backward(self.enc.backward(None, dstate=self.dec.dh0))


def shifted_ce(logits, b):
    m = np.arange(len(b["targets"]) - 1)[:, None] < (b["target_lengths"] - 1)[None]
    loss, d = softmax_cross_entropy(logits, b["targets"][1:], mask=m)
    return loss, d, int(m.sum())


def copy_batches(n, B=8, V=7, seed=0):
    """Copy task: target = [1] + source (1 = BOS)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        L = rng.integers(1, 5, B)
        src = np.zeros((4, B), np.int64)
        tgt = np.zeros((5, B), np.int64)
        tgt[0] = 1
        for b in range(B):
            src[:L[b], b] = rng.integers(2, V, L[b])
            tgt[1:L[b] + 1, b] = src[:L[b], b]
        out.append({"inputs": src, "lengths": L, "targets": tgt, "target_lengths": L + 1})
    return out


def classify_batches(n, B=16, T=6, V=8, seed=0):
    """Label = whether token 2 occurs in the sequence."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.integers(1, V, (T, B))
        L = rng.integers(1, T + 1, B)
        x[np.arange(T)[:, None] >= L[None]] = 0
        y = (x == 2).any(0).astype(np.int64)
        out.append({"inputs": x, "lengths": L, "targets": y})
    return out


def classifier(seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return Sequential(Embedding(8, 8, padding_idx=0, seed=rng, dtype=dtype),
                      GRU(8, 12, bidirectional=True, return_sequences=False, seed=rng, dtype=dtype),
                      Dropout(0.1, seed=rng), Dense(24, 2, seed=rng, dtype=dtype))


# ---------------------------------------------------------------- save / load

def test_save_load_round_trip(tmp_path):
    m = classifier(dtype="float64")
    path = tmp_path / "clf.npz"
    m.save(path, metadata={"vocab": ["<pad>", "a"], "classes": 2})
    m2 = load(path)
    assert type(m2) is Sequential and len(m2) == 4, f"rebuilt {m2!r}"
    for k, v in m.parameters().items():
        np.testing.assert_array_equal(m2.parameters()[k], v, err_msg=f"parameter {k} after load")
        assert m2.parameters()[k].dtype == v.dtype, f"dtype of {k}: {m2.parameters()[k].dtype} vs {v.dtype}"
    assert m2.metadata == {"vocab": ["<pad>", "a"], "classes": 2}, f"metadata {m2.metadata}"
    b = classify_batches(1)[0]
    np.testing.assert_array_equal(predict(m2, b), predict(m, b), err_msg="predictions after load")
    s2s = TinySeq2Seq(9, 7, dim=5, seed=3)
    s2s.save(tmp_path / "s2s.npz")
    back = TinySeq2Seq.load(tmp_path / "s2s.npz")
    assert isinstance(back, TinySeq2Seq) and back.out.weight.shape == (7, 5), "custom model rebuilt by name"
    np.testing.assert_array_equal(back.enc.weight_hh_l0, s2s.enc.weight_hh_l0, err_msg="enc.weight_hh_l0")
    with pytest.raises(ValueError, match="expected a TinySeq2Seq"):
        TinySeq2Seq.load(path)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    m = classifier()
    m.save(path)
    before = path.read_bytes()
    m.parameters()["3.weight"][...] += 1

    def crash_mid_write(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(ser.np, "savez", crash_mid_write)
    with pytest.raises(OSError, match="simulated"):
        m.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before, "a crash during the write leaves the old file in place"
    assert os.listdir(tmp_path) == ["m.npz"], f"no temporary file left behind: {os.listdir(tmp_path)}"

    def crash_replace(src, dst):
        raise OSError("power cut before rename (simulated)")
    monkeypatch.setattr(ser.os, "replace", crash_replace)
    with pytest.raises(OSError, match="simulated"):
        m.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before, "a crash before the rename leaves the old file in place"
    assert os.listdir(tmp_path) == ["m.npz"], f"no temporary file left behind: {os.listdir(tmp_path)}"
    load(path)


def _rewrite(src, dst, edit_header=None, edit_arrays=None):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    h = json.loads(str(arrays.pop("__fastrnn__")[()]))
    if edit_header:
        edit_header(h)
    if edit_arrays:
        edit_arrays(arrays)
    np.savez(dst, __fastrnn__=np.array(json.dumps(h)), **arrays)


def test_load_rejects_bad_files(tmp_path):
    good = tmp_path / "good.npz"
    classifier().save(good)
    data = good.read_bytes()
    cases = {}
    (tmp_path / "trunc.npz").write_bytes(data[:len(data) // 2])
    cases["trunc.npz"] = "truncated or corrupted"
    flipped = bytearray(data)
    i = data.index(b"weight_ih_l0") + 200
    flipped[i:i + 16] = bytes(16)
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    cases["flip.npz"] = "truncated or corrupted|corrupted"
    np.savez(tmp_path / "foreign.npz", weights=np.ones(3))
    cases["foreign.npz"] = "not a fastrnn model file"
    (tmp_path / "text.npz").write_text("hello, not a model")
    cases["text.npz"] = "load: .*text.npz"
    np.save(tmp_path / "single.npy", np.ones(3))
    cases["single.npy"] = "single .npy array"
    _rewrite(good, tmp_path / "newer.npz", lambda h: h.update(format_version=99))
    cases["newer.npz"] = "format_version 99"
    _rewrite(good, tmp_path / "cls.npz", lambda h: h.update(**{"class": "NoSuchModel", "module": "x.y"}))
    cases["cls.npz"] = "NoSuchModel.*not registered"

    def shrink(a):
        a["param:3.weight"] = np.zeros((2, 5), np.float32)

    def fix_header(h):
        h["params"]["3.weight"] = [[2, 5], "float32"]
    _rewrite(good, tmp_path / "shape.npz", fix_header, shrink)
    cases["shape.npz"] = "3.weight.*expected shape"
    _rewrite(good, tmp_path / "names.npz", None, lambda a: a.pop("param:3.bias"))
    cases["names.npz"] = "3.bias"
    for name, pattern in cases.items():
        with pytest.raises(ValueError, match=pattern) as info:
            load(tmp_path / name)
        assert name in str(info.value), f"{name}: the error names the file: {info.value}"
    with zipfile.ZipFile(good) as z:
        assert "__fastrnn__.npy" in z.namelist(), "header stored as an .npy member"


def test_save_rejects_unserialisable_config(tmp_path):
    class Odd(Model):
        def __init__(self, thing):
            self.d = Dense(2, 2)

    with pytest.raises(TypeError, match="thing|args"):
        Odd(object()).save(tmp_path / "odd.npz")
    assert not (tmp_path / "odd.npz").exists(), "nothing written when the config cannot be saved"


# ---------------------------------------------------------------- fit / evaluate

def test_fit_classifier_loss_falls():
    train, val = classify_batches(8, seed=1), classify_batches(3, seed=2)
    m = classifier()
    hist = fit(m, train, epochs=6, optimizer=Adam(m, 0.02), loss_fn=CrossEntropyLoss(), val_batches=val,
               metric=Accuracy(), clip_norm=5.0, shuffle=True, seed=0, progress=False)
    assert hist["loss"][-1] < 0.6 * hist["loss"][0], f"training loss falls: {hist['loss']}"
    assert hist["val_accuracy"][hist["best_epoch"]] >= 0.8, f"val accuracy: {hist['val_accuracy']}"
    for key in ("val_loss", "seconds", "tokens_per_s", "grad_norm", "lr"):
        assert len(hist[key]) == hist["epochs_run"] == 6, f"history[{key!r}] per epoch: {hist[key]}"
    assert hist["tokens_per_s"][0] > 0 and hist["monitor"] == "val_accuracy", f"history {hist}"
    ev = evaluate(m, val, loss_fn=CrossEntropyLoss(), metric=MacroF1(2))
    assert ev["n"] == 48 and 0 <= ev["macro_f1"] <= 1, f"evaluate: {ev}"


def test_meters_match_metrics_functions():
    from fastrnn import metrics
    y = np.array([1, 1, 2, 3, 3, 3, 0])
    p = np.array([1, 2, 2, 3, 3, 1, 0])
    mask = np.array([1, 1, 1, 1, 1, 1, 0], bool)           # the last pair is not counted
    batch = {"targets": y, "mask": mask}
    logits = np.eye(5)[p]
    f1, acc = MacroF1(5), Accuracy()
    for meter in (f1, acc):
        meter.update(logits[:3], {"targets": y[:3], "mask": mask[:3]})
        meter.update(logits[3:], {"targets": y[3:], "mask": mask[3:]})
    assert abs(f1.result() - metrics.macro_f1(y[:6].tolist(), p[:6].tolist())) < 1e-12, \
        f"MacroF1 meter {f1.result()} vs metrics.macro_f1 (classes seen only)"
    assert abs(acc.result() - 4 / 6) < 1e-12, f"Accuracy meter {acc.result()} vs 4/6"
    assert MacroF1(5, labels=[1, 2, 3, 4]).update(logits, batch) is None


def test_fit_encoder_decoder_loss_falls():
    m = TinySeq2Seq(7, 7, dim=12, seed=0)
    hist = fit(m, copy_batches(6), epochs=5, optimizer=Adam(m, 0.03), loss_fn=shifted_ce, progress=False)
    assert hist["loss"][-1] < 0.75 * hist["loss"][0], f"seq2seq training loss falls: {hist['loss']}"


class Scripted:
    """A meter returning scripted values, one per evaluation."""
    name, higher_is_better = "score", True

    def __init__(self, values):
        self.values, self.i = list(values), -1

    def reset(self):
        self.i += 1

    def update(self, outputs, batch):
        pass

    def result(self):
        return self.values[self.i]


def test_early_stopping_and_best_checkpoint(tmp_path):
    m = classifier()
    train, val = classify_batches(2), classify_batches(1)
    snapshots = []
    ckpt = tmp_path / "best.npz"
    hist = fit(m, train, epochs=10, optimizer=SGD(m, 0.1), loss_fn=CrossEntropyLoss(), val_batches=val,
               metric=Scripted([0.5, 0.7, 0.6, 0.65, 0.9]), patience=2, checkpoint=ckpt, progress=False,
               metadata={"task": "test"}, on_epoch_end=lambda e, h, mod: snapshots.append(mod.state_dict()))
    assert hist["epochs_run"] == 4 and hist["stopped_early"], f"stops 2 epochs after the best: {hist}"
    assert hist["best_epoch"] == 1 and hist["best"] == 0.7, f"best epoch/value: {hist['best_epoch']} {hist['best']}"
    best = load(ckpt)
    assert best.metadata == {"task": "test", "epoch": 1, "val_score": 0.7}, f"checkpoint metadata {best.metadata}"
    for k, v in snapshots[1].items():
        np.testing.assert_array_equal(best.parameters()[k], v, err_msg=f"checkpoint {k} = epoch-1 weights")
        np.testing.assert_array_equal(m.parameters()[k], v, err_msg=f"restore_best: {k} = epoch-1 weights")


def test_seeded_runs_reproduce():
    def run(seed):
        m = classifier(seed)
        h = fit(m, classify_batches(4), epochs=2, optimizer=Adam(m, 0.01), loss_fn=CrossEntropyLoss(),
                shuffle=True, seed=seed, progress=False)
        return m.state_dict(), h["loss"]
    (a, la), (b, lb), (c, lc) = run(3), run(3), run(4)
    assert la == lb, f"same seed, same losses: {la} vs {lb}"
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"same seed: {k} identical")
    assert la != lc, "another seed gives another run"


def test_fit_argument_errors():
    m = classifier()
    with pytest.raises(ValueError, match="epochs"):
        fit(m, [], epochs=0, optimizer=SGD(m, 0.1), loss_fn=CrossEntropyLoss())
    with pytest.raises(TypeError, match="one-shot"):
        fit(m, iter(classify_batches(1)), epochs=2, optimizer=SGD(m, 0.1), loss_fn=CrossEntropyLoss())
    with pytest.raises(TypeError, match="single"):
        fit(m, classify_batches(1)[0], epochs=1, optimizer=SGD(m, 0.1), loss_fn=CrossEntropyLoss())
    with pytest.raises(ValueError, match="monitor"):
        fit(m, classify_batches(1), epochs=1, optimizer=SGD(m, 0.1), loss_fn=CrossEntropyLoss(), monitor="val_x")
    with pytest.raises(FloatingPointError, match="epoch 1, batch 1"):
        fit(m, classify_batches(1), epochs=1, optimizer=SGD(m, 0.1), progress=False,
            loss_fn=lambda o, b: (float("nan"), o * 0, 1))


def test_fit_without_tqdm_and_predict(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "tqdm", None)         # import tqdm -> ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    m = classifier()
    hist = fit(m, lambda epoch: classify_batches(2, seed=epoch), epochs=2, optimizer=Adam(m, 0.01),
               loss_fn=CrossEntropyLoss(), progress=True)
    assert hist["epochs_run"] == 2, f"fit runs with no tqdm installed: {hist}"
    preds = predict(m, classify_batches(2), fn=lambda out, b: out.argmax(-1))
    assert len(preds) == 2 and preds[0].shape == (16,), f"predict: one result per batch, got {len(preds)}"
