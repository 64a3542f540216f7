"""fastrnn.tasks.autocomplete and the shared decoders (fastrnn.tasks.decoding):
beam search against brute force on toy models, width 1 == greedy, gradient
check of the char LM, quick training, save/load round trip, bad data."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fastrnn.data import DataError, Vocab, data_file, default_data_dir
from fastrnn.model import load
from fastrnn.tasks import autocomplete as A
from fastrnn.tasks.decoding import beam_search, greedy_search, length_penalty_factor

needs_data = pytest.mark.skipif(default_data_dir() is None,
                                reason="the shared data folder (../shared/data or $FASTRNN_DATA) is absent")


# ------------------------------------------------------------------ toy models for the decoders

def markov_step(table):
    """step() of a first-order Markov chain: log P(next | last) = table[last]."""
    def step(tokens, state):
        return table[np.asarray(tokens)], state
    return step


def normalised(logits):
    logits = np.asarray(logits, dtype=np.float64)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def brute_force(table, start, eos, max_len, alpha=0.0):
    """Every sequence ending in eos within max_len, scored; best first."""
    V = table.shape[1]
    out = []
    for n in range(1, max_len + 1):
        for body in itertools.product([v for v in range(V) if v != eos], repeat=n - 1):
            seq = list(body) + [eos]
            lp, last = 0.0, start
            for t in seq:
                lp += table[last, t]
                last = t
            out.append((lp / length_penalty_factor(n, alpha), lp, seq))
    out.sort(key=lambda s: -s[0])
    return out


def test_beam_beats_greedy_on_known_distribution():
    # tokens: 0 = eos, 1 = a, 2 = b, 3 = c, start token 4 (never emitted).
    # Greedy takes "a" (0.6) but everything after it is spread thin; "b eos" is the best sequence.
    p = np.full((5, 5), 1e-12)
    p[4, [1, 2]] = [0.6, 0.4]                  # start -> a | b
    p[1, [1, 2, 3]] = 1 / 3                    # a -> a | b | c, never eos directly
    p[2, 0] = 0.9                              # b -> eos
    p[2, 3] = 0.1
    p[3, 0] = 1.0                              # c -> eos
    table = np.log(p / p.sum(1, keepdims=True))
    step = markov_step(table)
    final = lambda b, prev, tok: tok == 0  # noqa: E731
    g = greedy_search(step, None, [4], max_len=6, is_final=final)[0]
    best = beam_search(step, None, [4], beam_width=3, n_best=3, max_len=6, is_final=final)[0]
    assert g.tokens[0] == 1 and g.logprob < best[0].logprob
    assert best[0].tokens == [2, 0]
    assert math.isclose(best[0].logprob, math.log(0.4 * 0.9), rel_tol=1e-9)
    exact = brute_force(table, 4, 0, 6)
    assert [h.tokens for h in best] == [s[2] for s in exact[:3]]
    assert np.allclose([h.logprob for h in best], [s[1] for s in exact[:3]])


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_wide_beam_equals_brute_force_top_k(alpha):
    rng = np.random.default_rng(1)
    V, L = 4, 4                                   # 3 content tokens + eos: 1 + 3 + 9 + 27 sequences
    table = normalised(rng.standard_normal((V + 1, V)) * 1.5)
    final = lambda b, prev, tok: tok == 0  # noqa: E731
    # a beam as wide as the whole search space at every step is exhaustive
    hyps = beam_search(markov_step(table), None, [V], beam_width=27, n_best=5, max_len=L,
                       is_final=final, length_penalty=alpha)[0]
    exact = brute_force(table, V, 0, L, alpha)[:5]
    assert [h.tokens for h in hyps] == [s[2] for s in exact]
    assert np.allclose([h.score for h in hyps], [s[0] for s in exact])
    assert all(h.finished for h in hyps)


def test_beam_width_one_is_greedy_batched():
    rng = np.random.default_rng(2)
    V = 7
    table = normalised(rng.standard_normal((V, V)) * 2)
    final = lambda b, prev, tok: tok == 0  # noqa: E731
    start = np.arange(1, V)
    g = greedy_search(markov_step(table), None, start, max_len=12, is_final=final)
    b = beam_search(markov_step(table), None, start, beam_width=1, max_len=12, is_final=final)
    for gh, bh in zip(g, b):
        assert len(bh) == 1
        assert gh.tokens == bh[0].tokens and gh.finished == bh[0].finished
        assert math.isclose(gh.logprob, bh[0].logprob, rel_tol=1e-12)


def test_beam_state_follows_parents():
    # state = the sum of tokens so far (one row per hypothesis); the step
    # only allows eos once the sum reaches 5, so a mixed-up reorder breaks it
    V = 4

    def step(tokens, state):
        s = state + tokens
        lp = np.log(np.full((len(tokens), V), 1.0 / V))
        lp[s < 5, 0] = -np.inf
        return lp - np.log(np.exp(lp).sum(1, keepdims=True)), s

    hyps = beam_search(step, np.zeros(1, np.int64), [0], beam_width=6, n_best=6, max_len=8,
                       is_final=lambda b, prev, tok: tok == 0)[0]
    assert hyps and all(h.finished for h in hyps)
    for h in hyps:
        assert sum(h.tokens[:-1]) >= 5


# ------------------------------------------------------------------ the char LM

CHARS = ["a", "b", " ", "\n"]


def tiny_lm(seed=0, dtype="float32"):
    vocab = Vocab.build([CHARS], specials=("<unk>",))
    m = A.CharLM(vocab.to_dict(), embed=5, hidden=6, layers=1, dropout=0.0, seed=seed)
    for p in m.parameters().values():            # sharper distributions than the default init
        p *= 3
    return m.astype(dtype)


def seq_logprob(model, context, cont):
    ids = model.encode(context + cont)
    lp, state = model.run(ids[:len(context)])
    total = 0.0
    for i in range(len(context), len(ids)):
        total += lp[ids[i]]
        lp, state = model.run(ids[i:i + 1], state)
    return total


def test_complete_equals_brute_force_on_tiny_lm():
    m = tiny_lm(3, "float64")
    prefix = "ab ba"
    # "word": letters, then a space or a newline ends the word (not shown; the
    # two endings of one text add up).  max_chars=3: every continuation of up
    # to 3 characters, and the unfinished 3-letter ones, scored exactly.
    exact = {}
    for n in range(0, 3):
        for body in itertools.product("ab", repeat=n):
            text = "".join(body)
            exact[text, True] = np.logaddexp(seq_logprob(m, "\n" + prefix, text + " "),
                                             seq_logprob(m, "\n" + prefix, text + "\n"))
    for body in itertools.product("ab", repeat=3):
        exact["".join(body), False] = seq_logprob(m, "\n" + prefix, "".join(body))
    top = sorted(exact.items(), key=lambda kv: (not kv[0][1], -kv[1]))[:4]
    got = A.complete(m, prefix, k=4, until="word", beam_width=64, max_chars=3)
    assert [(g["text"], g["finished"]) for g in got] == [key for key, _ in top]
    assert np.allclose([g["logprob"] for g in got], [lp for _, lp in top], atol=1e-4)
    assert all(g["completion"] == prefix + g["text"] for g in got)


def test_complete_k_sorted_and_width_one_is_greedy():
    m = tiny_lm(1)
    for until, n in (("word", None), ("words", 2), ("line", None), ("chars", 4)):
        res = A.complete(m, "ab b", k=3, until=until, n=n, max_chars=12)
        assert 1 <= len(res) <= 3
        fin = [r["finished"] for r in res]
        assert fin == sorted(fin, reverse=True)              # finished first
        for f in (True, False):
            lps = [r["logprob"] for r in res if r["finished"] == f]
            assert lps == sorted(lps, reverse=True)
        assert len({r["text"] for r in res}) == len(res)
        g = A.complete(m, "ab b", k=1, until=until, n=n, greedy=True, max_chars=12)
        b1 = A.complete(m, "ab b", k=1, until=until, n=n, beam_width=1, max_chars=12)
        assert g == b1
    assert all(len(r["text"]) == 4 for r in A.complete(m, "a", k=3, until="chars", n=4))


def test_stop_rules():
    vocab = Vocab.build([list("To be ornt,\n")], specials=("<unk>",))
    ids = {c: vocab.stoi[c] for c in "To be ornt,\n"}
    ends = A._stopper(vocab, "To be or no", "word", 1)
    assert not ends(0, [], ids["t"]) and ends(0, [ids["t"]], ids[" "]) and ends(0, [], ids[","])
    ends = A._stopper(vocab, "To be or ", "word", 1)
    assert not ends(0, [], ids[" "])              # no word started yet: keep going
    assert ends(0, [ids["n"], ids["o"]], ids[" "])
    ends = A._stopper(vocab, "To be", "words", 2)
    assert not ends(0, [], ids[" "]) and ends(0, [ids[" "], ids["o"], ids["r"]], ids[" "])
    assert ends(0, [], ids["\n"]) and ends(0, [ids[" "], ids["o"]], ids["\n"])     # never past a line end
    ends = A._stopper(vocab, "To", "line", 1)
    assert ends(0, [], ids["\n"]) and not ends(0, [], ids[" "])


def test_charlm_gradients_finite_differences():
    m = tiny_lm(4, "float64")
    rng = np.random.default_rng(0)
    x = rng.integers(0, len(m.vocab), (5, 3))
    y = rng.integers(0, len(m.vocab), (5, 3))
    # a carried state enters as h0; its gradient is not propagated, the weights' are
    m.forward({"inputs": rng.integers(0, len(m.vocab), (4, 3))})
    batch = {"inputs": x, "targets": y, "carry": True}
    loss_fn = A.CrossEntropyLoss(mask=None)
    carry = m._carry

    def loss():
        m._carry = carry
        return loss_fn(m.forward(batch), batch)[0]

    m.zero_grad()
    m._carry = carry
    out = m.forward(batch, training=True)
    m.backward(loss_fn(out, batch)[1])
    for name, p in m.parameters().items():
        g = m.gradients()[name]
        for idx in [tuple(rng.integers(0, s) for s in p.shape) for _ in range(3)]:
            old = p[idx]
            p[idx] = old + 1e-6
            up = loss()
            p[idx] = old - 1e-6
            down = loss()
            p[idx] = old
            assert abs((up - down) / 2e-6 - g[idx]) < 1e-6 + 1e-4 * abs(g[idx]), name


# ------------------------------------------------------------------ the task on real data

@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    if default_data_dir() is None:
        pytest.skip("the shared data folder (../shared/data or $FASTRNN_DATA) is absent")
    text = data_file("autocomplete").read_text(encoding="utf-8")[:40_000]
    p = tmp_path_factory.mktemp("ac") / "small.txt"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def trained(small_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("ac_model") / "ac.npz"
    return A.train(data=str(small_text), out=str(out), quick=True, progress=False, epochs=3,
                   hidden=48, embed=16, seq_len=32, batch_size=16, max_minutes=0, lr=1e-2)


@needs_data
def test_quick_training_loss_falls(trained):
    h = trained["history"]
    assert h["epochs_run"] == 3
    assert h["loss"][-1] < h["loss"][0] < math.log(70)
    m = trained["metrics"]
    assert m["dev_loss"] < 3.0 and math.isclose(m["dev_bits_per_char"], m["dev_loss"] / math.log(2))
    assert trained["tokens_per_s"] > 0 and trained["seconds"] > 0


@needs_data
def test_save_load_round_trip(trained, small_text, tmp_path):
    m1 = load(trained["model"])
    assert isinstance(m1, A.CharLM) and m1.metadata["task"] == "autocomplete"
    # the file holds the model that was scored at the end of training
    ev = A.evaluate(trained["model"], data=str(small_text))
    assert math.isclose(ev["loss"], trained["metrics"]["dev_loss"], rel_tol=1e-6)
    m1.save(tmp_path / "again.npz", metadata=m1.metadata)
    m2 = load(tmp_path / "again.npz")
    for k, v in m1.parameters().items():
        np.testing.assert_array_equal(v, m2.parameters()[k])
    p1 = A.predict(m1, "To be or no", k=3)
    p2 = A.predict(str(tmp_path / "again.npz"), "To be or no", k=3)
    assert p1 == p2 and len(p1) == 3
    assert [r["logprob"] for r in p1] == sorted((r["logprob"] for r in p1), reverse=True)


@needs_data
def test_evaluate_all_split(trained, tmp_path):
    p = tmp_path / "held.txt"
    p.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n", encoding="utf-8")
    ev = A.evaluate(trained["model"], data=str(p), split="all", seq_len=16)
    assert ev["chars"] > 40 and 0 < ev["loss"] < 5


def test_bad_data_files_raise_data_error(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"To be or not\nto be, that is\nthe qu\xe9stion\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: not valid UTF-8"):
        A.train(data=str(bad), out=str(tmp_path / "m.npz"), quick=True, progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty.txt: file is empty"):
        A.train(data=str(empty), out=str(tmp_path / "m.npz"), quick=True, progress=False)
    short = tmp_path / "short.txt"
    short.write_text("To be or not to be.\n" * 10)
    with pytest.raises(DataError, match="too short"):
        A.train(data=str(short), out=str(tmp_path / "m.npz"), quick=True, progress=False)
    assert not (tmp_path / "m.npz").exists()


def test_options_from_the_command_line(tmp_path):
    import argparse
    parser = argparse.ArgumentParser()
    A.add_arguments(parser)
    args = vars(parser.parse_args(["--hidden", "64", "--max-minutes", "2"]))
    # the CLI may pass every flag, unset ones as None: they leave the defaults alone
    cfg = A.merge_options(A.DEFAULTS, A.QUICK, True, args, "autocomplete")
    assert cfg["hidden"] == 64 and cfg["max_minutes"] == 2 and cfg["seq_len"] == A.QUICK["seq_len"]
    with pytest.raises(TypeError, match="hiden"):
        A.train(data=str(tmp_path), quick=True, hiden=3)
