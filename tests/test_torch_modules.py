"""fastrnn.torch against torch.nn (the oracle): outputs, final states and every
gradient, float64 exactly (to 1e-10) and float32 to rounding.

Runs on whatever backend fastrnn selects ($FASTRNN_BACKEND, else auto), so the
same file checks the NumPy reference and, once it exists, Numba.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastrnn.torch needs PyTorch (pip install fastrnn[torch])")
nn = torch.nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

import fastrnn.torch as frt  # noqa: E402

T, B, I, H = 5, 3, 3, 4          # odd on purpose
LENGTHS = [3, 5, 1]              # unsorted, includes T and 1
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-6)}
CELLS = {"rnn_tanh": (nn.RNN, dict(nonlinearity="tanh")), "rnn_relu": (nn.RNN, dict(nonlinearity="relu")),
         "gru": (nn.GRU, {}), "lstm": (nn.LSTM, {})}


def assert_close(name, got, want, **tol):
    """Compare two tensors (or None) and name them in the failure."""
    if want is None or got is None:
        assert got is None and want is None, f"{name}: got {got is None and 'None' or 'a tensor'}, " \
                                             f"want {want is None and 'None' or 'a tensor'}"
        return
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    torch.testing.assert_close(got, want, msg=lambda m: f"{name}: {m}", **tol)


def make_pair(cell, dtype, seed=0, **kw):
    """(torch.nn module, fastrnn.torch module with the same weights)."""
    cls, extra = CELLS[cell]
    torch.manual_seed(seed)
    ref = cls(I, H, **extra, **kw).to(dtype)
    return ref, frt.from_torch(ref)


def run(module, x, hx, packed, batch_first, weights):
    """Forward, then a weighted sum of every output as the loss; returns
    (output as a padded-or-packed-data tensor, h_n, c_n or None, loss)."""
    out, hn = module(x, hx)
    data = out.data if packed else out
    h, c = hn if isinstance(hn, tuple) else (hn, None)
    loss = (data * weights[0][:data.shape[0]] if packed else data * weights[0]).sum() + (h * weights[1]).sum()
    if c is not None:
        loss = loss + (c * weights[2]).sum()
    return out, h, c, loss


def check_against_torch(cell, dtype, num_layers=1, bidirectional=False, batch_first=False, packed=False,
                        with_hx=False, bias=True, dropout=0.0, train=True, noncontig=False, seed=0, device="cpu",
                        maxref=None):
    """The one helper every comparison test calls (device="cuda": both modules
    and every tensor on the GPU, torch.nn on cuDNN, fastrnn on its CuPy backend).
    maxref: compare each array norm-wise, |got - want| <= maxref * max|want|
    (the kernel tests' float32 criterion), instead of element by element."""
    what = (f"[{cell} {str(dtype)[6:]} L={num_layers} bidir={bidirectional} bf={batch_first} "
            f"packed={packed} hx={with_hx} bias={bias} noncontig={noncontig}]")
    ref, fast = make_pair(cell, dtype, seed, num_layers=num_layers, bias=bias, batch_first=batch_first,
                          dropout=dropout, bidirectional=bidirectional)
    ref.to(device)
    fast.to(device)
    ref.train(train)
    fast.train(train)
    D = 2 if bidirectional else 1
    g = torch.Generator().manual_seed(seed + 1)
    shape = (B, T, I) if batch_first else (T, B, I)
    if noncontig:   # a strided view: every other feature of a wider tensor
        base = torch.randn(*shape[:-1], 2 * I, generator=g, dtype=dtype).to(device)
        x0 = base[..., ::2]
        assert not x0.is_contiguous(), "the strided test input is really non-contiguous"
    else:
        x0 = torch.randn(*shape, generator=g, dtype=dtype).to(device)
    hx0 = None
    if with_hx:
        hx0 = [torch.randn(num_layers * D, B, H, generator=g, dtype=dtype).to(device)
               for _ in range(2 if cell == "lstm" else 1)]
    weights = (torch.randn(*shape[:-1], D * H, generator=g, dtype=dtype),
               torch.randn(num_layers * D, B, H, generator=g, dtype=dtype),
               torch.randn(num_layers * D, B, H, generator=g, dtype=dtype))
    if packed:
        weights = (torch.randn(sum(LENGTHS), D * H, generator=g, dtype=dtype),) + weights[1:]
    weights = tuple(w.to(device) for w in weights)

    results = []
    for module in (ref, fast):
        x = x0.detach().clone().requires_grad_() if not noncontig else x0.detach().requires_grad_()
        hxs = None if hx0 is None else [h.clone().requires_grad_() for h in hx0]
        hx = None if hxs is None else (tuple(hxs) if cell == "lstm" else hxs[0])
        inp = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=batch_first, enforce_sorted=False) \
            if packed else x
        out, h, c, loss = run(module, inp, hx, packed, batch_first, weights)
        loss.backward()
        grads = {"dx": x.grad}
        if hxs is not None:
            grads["dh0"] = hxs[0].grad
            if cell == "lstm":
                grads["dc0"] = hxs[1].grad
        for n, p in module.named_parameters():
            grads[f"d{n}"] = p.grad
        results.append((out, h, c, grads))

    (o_r, h_r, c_r, g_r), (o_f, h_f, c_f, g_f) = results
    tol = TOL[dtype]
    close = assert_close
    if maxref is not None:
        def close(name, got, want, **_):   # norm-wise, see maxref
            if want is None or got is None:
                return assert_close(name, got, want)
            scale = float(want.detach().abs().max()) if want.numel() else 0.0
            return assert_close(name, got, want, rtol=0.0, atol=maxref * max(scale, 1e-30))
    if packed:
        assert isinstance(o_f, PackedSequence), f"{what} output: expected a PackedSequence, got {type(o_f).__name__}"
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            assert torch.equal(getattr(o_f, field), getattr(o_r, field)), f"{what} output.{field}"
        close(f"{what} output.data", o_f.data, o_r.data, **tol)
    else:
        close(f"{what} output", o_f, o_r, **tol)
    close(f"{what} h_n", h_f, h_r, **tol)
    close(f"{what} c_n", c_f, c_r, **tol)
    assert set(g_f) == set(g_r), f"{what} gradient names: {sorted(g_f)} != {sorted(g_r)}"
    for n in g_r:
        assert g_r[n] is not None, f"{what} {n}: torch.nn produced no gradient"
        close(f"{what} {n}", g_f[n], g_r[n], **tol)


# ---------------------------------------------------------------- the grid

FLAGS = ("num_layers", "bidirectional", "batch_first", "packed", "with_hx", "bias")


def grid(n_configs, salt):
    """A seeded sample of the 2**6 flag combinations, always including the
    all-off and all-on corners."""
    combos = list(itertools.product((1, 2), (False, True), (False, True), (False, True), (False, True),
                                    (True, False)))
    rng = np.random.default_rng(salt)
    picks = [0, len(combos) - 1] + list(rng.choice(np.arange(1, len(combos) - 1), n_configs - 2, replace=False))
    return [dict(zip(FLAGS, combos[i])) for i in picks]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("cfg", grid(20, 0), ids=lambda c: "-".join(f"{k[:4]}{int(v)}" for k, v in c.items()))
def test_matches_torch_float64(cell, cfg):
    check_against_torch(cell, torch.float64, **cfg)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("cfg", grid(10, 1), ids=lambda c: "-".join(f"{k[:4]}{int(v)}" for k, v in c.items()))
def test_matches_torch_float32(cell, cfg):
    check_against_torch(cell, torch.float32, **cfg)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("cfg", [dict(batch_first=True), dict(batch_first=True, num_layers=2, bidirectional=True,
                                                               with_hx=True),
                                 dict(batch_first=True, packed=True), dict(batch_first=False, bidirectional=True)],
                         ids=["bf", "bf-L2-bidir-hx", "bf-packed", "tm-bidir"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", ["rows", "units"])
def test_matches_torch_by_rows_on_torch_blas(monkeypatch, cell, cfg, dtype, form):
    """The forms big calls take, forced at this size: the loops by rows (or
    by units, S5's form) on two threads and, for float32, the input
    projection and the GEMMs after BPTT on torch's BLAS.  There a
    batch_first input and output gradient are read where they lie and dx
    comes back batch-major (numba_cpu.DX_LIKE_X)."""
    from fastrnn import _threads
    from fastrnn._backends import numba_cpu

    from .helpers import force_by_rows, force_by_units, torch_threads
    if _threads.available_threads() < 2:
        pytest.skip(f"threaded kernels cannot run here: {_threads.why_single()}")
    (force_by_rows if form == "rows" else force_by_units)(monkeypatch)
    monkeypatch.setattr(numba_cpu, "TORCH_AFTER_MIN_MACS", 0)
    monkeypatch.setattr(numba_cpu, "FUSED_GRADS_MAX_ROWS", 0)
    monkeypatch.setattr(numba_cpu, "OWN_AFTER", False)
    with torch_threads(2):
        check_against_torch(cell, dtype, **cfg)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_non_contiguous_input(cell):
    check_against_torch(cell, torch.float64, num_layers=2, bidirectional=True, noncontig=True)
    check_against_torch(cell, torch.float64, batch_first=True, with_hx=True, noncontig=True)


def test_eval_mode_and_dropout_one_match_torch():
    # eval: dropout off; train with p=1: layer 2 sees zeros in both (RNG-free)
    check_against_torch("lstm", torch.float64, num_layers=2, dropout=0.5, train=False)
    check_against_torch("gru", torch.float64, num_layers=2, dropout=1.0, train=True)


def test_dropout_between_layers_in_training():
    torch.manual_seed(0)
    m = frt.LSTM(I, H, num_layers=2, dropout=0.5).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    y_train = [m(x)[0] for _ in range(2)]
    m.eval()
    y_eval = m(x)[0]
    assert not torch.allclose(y_train[0], y_train[1]), "dropout: two training passes should differ"
    assert not torch.allclose(y_train[0], y_eval), "dropout: training vs eval outputs should differ"
    m1 = frt.LSTM(I, H, num_layers=1).double()
    with pytest.warns(UserWarning, match="dropout"):
        frt.LSTM(I, H, num_layers=1, dropout=0.5)
    assert torch.equal(m1(x)[0], m1(x)[0]), "one layer, no dropout: deterministic output"


# ---------------------------------------------------------------- gradcheck on the Function

@pytest.mark.parametrize("mode", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_function(mode, reverse):
    Gs = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}
    t, b, i, h = 3, 2, 2, 2
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    x, h0 = r(t, b, i), r(b, h)
    c0 = r(b, h) if mode == "lstm" else None
    w = (r(Gs[mode] * h, i), r(Gs[mode] * h, h), r(Gs[mode] * h), r(Gs[mode] * h))
    lengths = np.array([3, 2], dtype=np.int64)
    cfg = (mode, reverse, lengths, None, None)

    def f(x, h0, c0, *w):
        return frt.RNNFunction.apply(cfg, x, h0, c0, *w)

    inputs = (x, h0, c0) + w
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5), f"gradcheck {mode} reverse={reverse}"
    # no bias, no initial state
    assert torch.autograd.gradcheck(lambda x, a, b_: frt.RNNFunction.apply(cfg, x, None, None, a, b_, None, None),
                                    (x, w[0], w[1]), eps=1e-6, atol=1e-7, rtol=1e-5), f"gradcheck {mode} no bias"


# ---------------------------------------------------------------- module API

def test_same_class_names_init_and_repr():
    for cell, (cls, extra) in CELLS.items():
        torch.manual_seed(5)
        ref = cls(I, H, num_layers=2, bidirectional=True, **extra)
        torch.manual_seed(5)
        fast = getattr(frt, cls.__name__)(I, H, num_layers=2, bidirectional=True, **extra)
        assert isinstance(fast, cls), f"{cell}: isinstance(fastrnn module, {cls.__name__})"
        assert repr(fast) == repr(ref), f"{cell} repr: {fast!r} != {ref!r}"
        names_f = [(n, tuple(p.shape)) for n, p in fast.named_parameters()]
        names_r = [(n, tuple(p.shape)) for n, p in ref.named_parameters()]
        assert names_f == names_r, f"{cell} parameter names and shapes: {names_f} != {names_r}"
        for (n, pf), pr in zip(fast.named_parameters(), ref.parameters()):
            assert torch.equal(pf, pr), f"{cell} init of {n}: same seed should give the same values"
            bound = 1 / H ** 0.5
            assert pf.abs().max() <= bound, f"{cell} init of {n}: within uniform(-1/sqrt(H), 1/sqrt(H))"


def test_device_dtype_kwargs():
    m = frt.GRU(I, H, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters()), "GRU(dtype=float64): parameter dtypes"
    y, h = m(torch.randn(T, B, I, dtype=torch.float64))
    assert y.dtype == torch.float64 and h.shape == (1, B, H), "GRU float64 output dtype and h_n shape"


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_state_dict_round_trips_strict(cell):
    cls, extra = CELLS[cell]
    kw = dict(num_layers=2, bidirectional=True, **extra)
    torch.manual_seed(1)
    ref = cls(I, H, **kw).double()
    fast = getattr(frt, cls.__name__)(I, H, **kw).double()
    fast.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    assert_close(f"{cell} torch->fastrnn output", fast(x)[0], ref(x)[0], **TOL[torch.float64])
    with torch.no_grad():
        for p in fast.parameters():
            p.mul_(0.5)
    back = cls(I, H, **kw).double()
    back.load_state_dict(fast.state_dict(), strict=True)
    for (n, pb), pf in zip(back.named_parameters(), fast.parameters()):
        assert torch.equal(pb, pf), f"{cell} fastrnn->torch {n}"
    assert_close(f"{cell} fastrnn->torch output", back(x)[0], fast(x)[0], **TOL[torch.float64])


def test_from_torch_and_swap_rnns():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, I)
            self.body = nn.Sequential(nn.Identity())
            self.body.rnn = nn.GRU(I, H, batch_first=True)
            self.heads = nn.ModuleDict({"lstm": nn.LSTM(H, H, num_layers=2, bidirectional=True),
                                        "rnn": nn.RNN(I, H, nonlinearity="relu"),
                                        "done": frt.LSTM(I, H)})
            self.out = nn.Linear(2 * H, 2)

        def forward(self, tok):
            y, _ = self.body.rnn(self.emb(tok))
            y, _ = self.heads["lstm"](y.transpose(0, 1))
            return self.out(y).sum()

    torch.manual_seed(0)
    net = Net().double().eval()
    net.alias = net.heads["lstm"]       # one module under two names
    tok = torch.randint(0, 10, (B, T))
    want = net(tok)
    done = net.heads["done"]
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    params_before = dict(net.named_parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)     # built before the swap
    rng = torch.get_rng_state()
    assert frt.swap_rnns(net) is net, "swap_rnns returns the model"
    assert torch.equal(torch.get_rng_state(), rng), "swap_rnns draws nothing from torch's RNG"
    assert net.alias is net.heads["lstm"], "a module under two names stays one module after the swap"
    assert type(net.body.rnn) is frt.GRU, f"nested GRU swapped: {type(net.body.rnn)}"
    assert type(net.heads["lstm"]) is frt.LSTM, f"LSTM in ModuleDict swapped: {type(net.heads['lstm'])}"
    assert type(net.heads["rnn"]) is frt.RNN and net.heads["rnn"].nonlinearity == "relu", "RNN relu swapped"
    assert net.heads["done"] is done, "an existing fastrnn module is left alone"
    assert not net.heads["lstm"].training, "from_torch keeps eval mode"
    after = dict(net.named_parameters())
    assert set(after) == set(before), "parameter names unchanged by swap"
    for n, p in before.items():
        assert torch.equal(after[n], p), f"weights of {n} unchanged by swap"
        assert after[n] is params_before[n], f"{n}: swap_rnns keeps the same Parameter object"
    assert_close("swapped model output", net(tok), want, **TOL[torch.float64])
    net(tok).backward()
    opt.step()
    assert not torch.equal(net.heads["lstm"].weight_hh_l0, before["heads.lstm.weight_hh_l0"]), \
        "an optimizer built before the swap updates the swapped module"

    ref = nn.GRU(I, H, num_layers=2).double()
    ref.weight_hh_l1.requires_grad_(False)
    rng = torch.get_rng_state()
    twin = frt.from_torch(ref)
    assert torch.equal(torch.get_rng_state(), rng), "from_torch draws nothing from torch's RNG"
    assert not twin.weight_hh_l1.requires_grad, "from_torch keeps requires_grad flags"
    assert twin.weight_ih_l0 is not ref.weight_ih_l0 and twin.weight_ih_l0.data_ptr() != ref.weight_ih_l0.data_ptr(), \
        "from_torch copies by default"
    assert frt.from_torch(ref, share_parameters=True).weight_ih_l0 is ref.weight_ih_l0, \
        "from_torch(share_parameters=True) shares the Parameter objects"

    class MyLSTM(nn.LSTM):
        pass
    mine = nn.Sequential(MyLSTM(I, H))
    frt.swap_rnns(mine)
    assert type(mine[0]) is MyLSTM, "a user subclass of nn.LSTM is not swapped (it may override forward)"

    lone = nn.LSTM(I, H)
    assert type(frt.swap_rnns(lone)) is frt.LSTM, "swap_rnns on an LSTM itself returns its fastrnn twin"
    with pytest.raises(TypeError, match="RNN, GRU or LSTM"):
        frt.from_torch(nn.Linear(2, 2))


def test_proj_size_not_implemented():
    with pytest.raises(NotImplementedError, match="proj_size"):
        frt.LSTM(I, H, proj_size=2)
    with pytest.raises(NotImplementedError, match="proj_size"):
        frt.from_torch(nn.LSTM(I, H, proj_size=2))


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
def test_unbatched_input(cell):
    ref, fast = make_pair(cell, torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(T, I, dtype=torch.float64)
    for hx in (None, "given"):
        if hx is not None:
            hx = (torch.randn(4, H, dtype=torch.float64),) * (2 if cell == "lstm" else 1)
            hx = hx if cell == "lstm" else hx[0]
        (o_r, h_r), (o_f, h_f) = ref(x, hx), fast(x, hx)
        assert_close(f"{cell} unbatched hx={hx is not None} output", o_f, o_r, **TOL[torch.float64])
        for k, (a, b_) in enumerate(zip(h_f if cell == "lstm" else (h_f,), h_r if cell == "lstm" else (h_r,))):
            assert_close(f"{cell} unbatched state[{k}]", a, b_, **TOL[torch.float64])
    with pytest.raises(RuntimeError, match="2-D"):
        fast(x, (torch.zeros(4, 1, H, dtype=torch.float64),) * 2 if cell == "lstm"
             else torch.zeros(4, 1, H, dtype=torch.float64))


def test_input_errors_are_clear():
    m = frt.LSTM(I, H)
    with pytest.raises(ValueError, match="dtype"):
        m(torch.randn(T, B, I, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="input_size"):
        m(torch.randn(T, B, I + 1))
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        m(torch.randn(T, B, I), (torch.zeros(2, B, H), torch.zeros(2, B, H)))
    with pytest.raises(ValueError, match="2D or 3D"):
        m(torch.randn(T))
    m16 = frt.GRU(I, H).to(torch.bfloat16)
    with pytest.raises(TypeError, match="float32 and float64"):
        m16(torch.randn(T, B, I, dtype=torch.bfloat16))


def test_cuda_tensor_without_cupy_is_a_clear_error(monkeypatch):
    import sys
    monkeypatch.setattr(frt, "_CUPY", None)
    monkeypatch.setitem(sys.modules, "cupy", None)   # import cupy -> ImportError
    with pytest.raises(RuntimeError, match="CuPy cannot be imported"):
        frt._cupy_for(torch.empty(0))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (and fastrnn's cupy backend)")


@CUDA
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cell", list(CELLS))
def test_cuda_modules_match_cudnn(cell, dtype, monkeypatch):
    """CUDA tensors (through DLPack to the CuPy backend) against torch.nn on
    cuDNN: outputs, states and every gradient; TF32 off on both sides."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    # float32: two float32 implementations with different summation orders
    # (cuDNN's and cuBLAS's), so the kernel tests' norm-wise criterion
    maxref = 2e-5 if dtype == torch.float32 else None
    check_against_torch(cell, dtype, num_layers=2, bidirectional=True, packed=True, with_hx=True, device="cuda",
                        maxref=maxref)
    check_against_torch(cell, dtype, batch_first=True, noncontig=True, device="cuda", maxref=maxref)


@CUDA
def test_cuda_runs_on_the_current_stream():
    """The kernels run on torch's current stream: an input still being computed
    on a side stream (behind a sleep) must not be read early."""
    torch.manual_seed(0)
    ref = nn.GRU(I, H).cuda().double()
    fast = frt.from_torch(ref)
    x = torch.randn(T, B, I, dtype=torch.float64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)        # ~tens of ms of GPU time on this stream
        xs = x * 1.0                         # written only after the sleep
        out, h = fast(xs)
    side.synchronize()
    want, hw = ref(x)
    assert_close("side-stream output", out, want, **TOL[torch.float64])
    assert_close("side-stream h_n", h, hw, **TOL[torch.float64])


@CUDA
def test_cuda_scope_wraps_the_current_stream_without_deprecated_api():
    """CuPy's wrapper is of torch's current stream on the tensor's device, on
    the default stream and inside torch.cuda.stream(side); it is made once per
    stream, through the API CuPy does not deprecate."""
    import warnings
    x = torch.randn(2, 3, device="cuda")
    side = torch.cuda.Stream()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for ctx in (torch.cuda.stream(torch.cuda.current_stream()), torch.cuda.stream(side)):
            with ctx:
                want = torch.cuda.current_stream().cuda_stream
                with frt._CudaScope(x) as s:
                    assert s.stream.ptr == want
                    assert s.cp.cuda.get_current_stream().ptr == want
                    first = s.stream
                with frt._CudaScope(x) as s:
                    assert s.stream is first


@CUDA
def test_cuda_matches_torch():
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, num_layers=2, bidirectional=True).cuda().double()
    fast = frt.from_torch(ref)
    x = torch.randn(T, B, I, dtype=torch.float64, device="cuda", requires_grad=True)
    (o_r, _), (o_f, _) = ref(x), fast(x)
    assert_close("cuda output", o_f, o_r, **TOL[torch.float64])
    gx_r, = torch.autograd.grad(o_r.sum(), x)
    gx_f, = torch.autograd.grad(o_f.sum(), x)
    assert_close("cuda dx", gx_f, gx_r, **TOL[torch.float64])


# ---------------------------------------------------------------- autograd details

def test_needs_input_grad_frozen_parameters_and_no_grad():
    ref, fast = make_pair("lstm", torch.float64, num_layers=2)
    for m in (ref, fast):
        m.weight_ih_l0.requires_grad_(False)
        m.bias_hh_l1.requires_grad_(False)
    x = torch.randn(T, B, I, dtype=torch.float64)        # no grad for x
    for m in (ref, fast):
        m(x)[0].pow(2).sum().backward()
    assert fast.weight_ih_l0.grad is None and fast.bias_hh_l1.grad is None, "frozen parameters get no .grad"
    for (n, pf), pr in zip(fast.named_parameters(), ref.parameters()):
        if pr.requires_grad:
            assert_close(f"frozen-params d{n}", pf.grad, pr.grad, **TOL[torch.float64])
    with torch.no_grad():
        y, (h, c) = fast(x)
    assert y.grad_fn is None and not y.requires_grad, "no_grad forward builds no graph"
    assert_close("no_grad output", y, ref(x)[0].detach(), **TOL[torch.float64])


def test_saved_state_freed_after_backward_and_kept_with_retain_graph():
    _, fast = make_pair("gru", torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    y, _ = fast(x)
    node = y.grad_fn
    assert node.fr[0] is not None, "the backend's saved state is alive before backward"
    y.sum().backward(retain_graph=True)
    g1 = x.grad.clone()
    assert node.fr[0] is not None, "retain_graph=True keeps the saved state"
    y.sum().backward()
    assert_close("second backward with retain_graph dx", x.grad, 2 * g1, **TOL[torch.float64])
    assert node.fr[0] is None, "the saved state is dropped by a backward that frees the graph"
    with pytest.raises(RuntimeError, match="second time"):
        y.sum().backward()


def test_in_place_edit_before_backward_is_caught():
    _, fast = make_pair("lstm", torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    y, _ = fast(x)
    with torch.no_grad():
        fast.weight_hh_l0.add_(1.0)     # shares memory with what backward would read
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("with_hx", [False, True])
def test_batch_first_with_transposes_outside_the_function(monkeypatch, num_layers, bidirectional, with_hx):
    # CUDA tensors take batch_first through transposes around the Function
    # (not BF_IN/BF_OUT); the same form, forced on the CPU, against torch.nn
    monkeypatch.setattr(frt, "_BATCH_MAJOR_INSIDE", False)
    for cell in ("gru", "lstm"):
        check_against_torch(cell, torch.float64, num_layers=num_layers, bidirectional=bidirectional,
                            batch_first=True, with_hx=with_hx)


def test_create_graph_gives_first_order_grads_and_refuses_a_second_order():
    # backward runs under grad mode with create_graph=True: the gradients are
    # still the first-order ones, and differentiating them again raises
    # (the kernels have no double backward) instead of returning zeros
    ref, fast = make_pair("lstm", torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    # (y**2).sum(): the gradient reaching the layer, 2y, itself needs grad
    (g_fast,) = torch.autograd.grad(fast(x)[0].pow(2).sum(), x, create_graph=True)
    (g_ref,) = torch.autograd.grad(ref(x)[0].pow(2).sum(), x)
    assert_close("create_graph dx", g_fast.detach(), g_ref, **TOL[torch.float64])
    assert g_fast.requires_grad, "with create_graph the gradient carries a graph"
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g_fast.sum().backward()


def test_batch_first_single_layer_graph_has_no_transpose_nodes():
    # batch_first input and output cross the Function as batch-major views
    # (no TransposeBackward nodes before and after it), with the same values
    # and gradients as torch.nn, and the output is an ordinary tensor that
    # may be edited in place
    ref, fast = make_pair("gru", torch.float64, batch_first=True)
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    y, h = fast(x)
    assert type(y.grad_fn).__name__ == "RNNFunctionBackward", type(y.grad_fn).__name__
    assert [type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None][0] == "AccumulateGrad"
    xr = x.detach().clone().requires_grad_(True)
    yr, hr = ref(xr)
    assert_close("batch_first y", y, yr, **TOL[torch.float64])
    (y * y).sum().backward()
    (yr * yr).sum().backward()
    assert_close("batch_first dx", x.grad, xr.grad, **TOL[torch.float64])
    with torch.no_grad():
        y.add_(1.0)         # an output, not a view of the kernel's buffer as torch sees it


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_empty_batch_runs_like_torch_and_empty_sequence_raises_like_torch(cell, batch_first):
    # B = 0 (an empty shard or filtered batch) runs in torch.nn: empty
    # outputs, zero weight gradients (not None); T = 0 is torch.nn's error
    ref, fast = make_pair(cell, torch.float64, num_layers=2, bidirectional=True, batch_first=batch_first)
    shape = (0, T, I) if batch_first else (T, 0, I)
    lstm = cell == "lstm"
    h0 = torch.randn(4, 0, H, dtype=torch.float64, requires_grad=True)
    res = []
    for m in (ref, fast):
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        hx = (h0, h0) if lstm else h0
        y, h = m(x, hx)
        hn = h[0] if lstm else h
        (y.sum() + hn.sum() + (h[1].sum() if lstm else 0)).backward()
        res.append((y.shape, hn.shape, x.grad.shape, [p.grad for p in m.parameters()]))
    assert res[1][:3] == res[0][:3], res
    for gr, gf in zip(res[0][3], res[1][3]):
        assert gf is not None and gf.shape == gr.shape and not gf.abs().sum(), "zero weight gradients"
    bad = torch.randn(*((B, 0, I) if batch_first else (0, B, I)), dtype=torch.float64)
    for m in (ref, fast):
        with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
            m(bad)


def test_parameter_replaced_after_forward_is_used():
    # weight caching must notice new parameter memory (e.g. .data assignment, model.to())
    ref, fast = make_pair("gru", torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    fast(x)
    new = torch.randn_like(fast.weight_hh_l0)
    fast.weight_hh_l0.data = new.clone()
    ref.weight_hh_l0.data = new.clone()
    assert_close("output after .data assignment", fast(x)[0], ref(x)[0], **TOL[torch.float64])
    fast.float()
    ref.float()
    assert_close("output after .float()", fast(x.float())[0], ref(x.float())[0], **TOL[torch.float32])


def test_weights_checked_once_per_parameter_set():
    # the modules check the weights when their memory or shape changes, then
    # skip rnn_forward's per-call checks: a wrong shape must still be a clear
    # error, and a non-contiguous weight (a transposed view) must still work
    ref, fast = make_pair("gru", torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    fast(x)
    with torch.no_grad():
        w = torch.randn(H, 3 * H, dtype=torch.float64)
        ref.weight_hh_l0.copy_(w.t())
    fast.weight_hh_l0 = torch.nn.Parameter(w.t())                     # same values, transposed strides
    assert not fast.weight_hh_l0.is_contiguous()
    assert_close("output with a non-contiguous weight", fast(x)[0], ref(x)[0], **TOL[torch.float64])
    fast.weight_hh_l0 = torch.nn.Parameter(torch.randn(3 * H, H + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"weights\[1\] \(w_hh\)"):
        fast(x)
    fast.bias_ih_l0 = torch.nn.Parameter(torch.randn(3 * H, dtype=torch.float32))
    fast.weight_hh_l0 = torch.nn.Parameter(torch.randn(3 * H, H, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"weights\[2\] \(b_ih\)"):
        fast(x)


def test_functional_call_uses_given_parameters():
    ref, fast = make_pair("lstm", torch.float64)
    params = {n: torch.randn_like(p) * 0.3 for n, p in ref.named_parameters()}
    x = torch.randn(T, B, I, dtype=torch.float64)
    want = torch.func.functional_call(ref, params, (x,))[0]
    got = torch.func.functional_call(fast, params, (x,))[0]
    assert_close("functional_call output", got, want, **TOL[torch.float64])


# ---------------------------------------------------------------- training

def test_small_model_trains_to_the_same_loss_curve():
    V, E, C, steps = 12, 5, 3, 5

    class Tagger(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.emb = nn.Embedding(V, E)
            self.rnn = rnn
            self.out = nn.Linear(2 * H, C)

        def forward(self, tok):
            y, _ = self.rnn(self.emb(tok))
            return self.out(y)

    g = torch.Generator().manual_seed(0)
    batch = (torch.randint(0, V, (B, T), generator=g), torch.randint(0, C, (B, T), generator=g))
    data = [batch] * steps     # one batch, fitted: the loss must fall
    curves = {}
    for name, cls in (("torch.nn", nn.LSTM), ("fastrnn", frt.LSTM)):
        torch.manual_seed(42)
        model = Tagger(cls(E, H, batch_first=True, bidirectional=True)).double()
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        losses = []
        for tok, tag in data:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(tok).reshape(-1, C), tag.reshape(-1))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves[name] = losses
    assert curves["fastrnn"][-1] < curves["fastrnn"][0], f"loss decreases: {curves['fastrnn']}"
    np.testing.assert_allclose(curves["fastrnn"], curves["torch.nn"], rtol=0, atol=1e-10,
                               err_msg="loss curve fastrnn vs torch.nn (float64, Adam, same seed)")


def test_pickle_and_deepcopy():
    import copy
    import pickle
    _, fast = make_pair("lstm", torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    y = fast(x)[0]
    clone = pickle.loads(pickle.dumps(fast))
    dup = copy.deepcopy(fast)
    assert_close("pickled module output", clone(x)[0], y, **TOL[torch.float64])
    assert_close("deep-copied module output", dup(x)[0], y, **TOL[torch.float64])
    with torch.no_grad():
        dup.weight_ih_l0.zero_()
    assert_close("original unaffected by its deep copy", fast(x)[0], y, **TOL[torch.float64])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.jit internals, imported by dynamo
def test_torch_compile_of_a_parent_model_runs_the_layer_eagerly():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = frt.GRU(I, H, batch_first=True)
            self.lin = nn.Linear(H, 2)

        def forward(self, x):
            return self.lin(self.rnn(x)[0]).sum()

    torch.manual_seed(0)
    net = Net().double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    want = net(x)
    want.backward()
    want_grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    got = torch.compile(net)(x)
    got.backward()
    assert_close("torch.compile output", got, want, **TOL[torch.float64])
    for n, p in net.named_parameters():
        assert_close(f"torch.compile d{n}", p.grad, want_grads[n], **TOL[torch.float64])


def test_functional_call_with_tensors_sharing_the_parameters_memory():
    # same memory as the module's parameters, different tensor objects: the
    # gradients must reach the tensors that were passed, not the parameters
    _, fast = make_pair("lstm", torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    fast(x)                                                  # warm the weight cache
    params = {n: p.detach().requires_grad_() for n, p in fast.named_parameters()}
    torch.func.functional_call(fast, params, (x,))[0].sum().backward()
    for n, p in params.items():
        assert p.grad is not None, f"functional_call gradient reaches the passed tensor {n}"
    assert all(p.grad is None for p in fast.parameters()), "module parameters get no gradient"


def test_import_fastrnn_does_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path
    code = "import sys, fastrnn; print('torch' in sys.modules, 'fastrnn.torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, f"import fastrnn failed: {out.stderr[-2000:]}"
    assert out.stdout.split() == ["False", "False"], f"import fastrnn imported (torch, fastrnn.torch): {out.stdout}"
