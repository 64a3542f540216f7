"""fastrnn.data: tokenizers, Vocab, padding/batching, loaders (real shared data + bad files)."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from fastrnn import data as D
from fastrnn.data import DataError, Vocab

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data folder {DATA} is absent")


# ------------------------------------------------------------------ tokenizers
def check_tokens(text, expected, lower=False):
    got = D.word_tokenize(text, lower=lower)
    assert got == expected, f"word_tokenize({text!r}, lower={lower}): got {got}, expected {expected}"


@pytest.mark.parametrize("text,expected", [
    ("L'homme est là.", ["L'", "homme", "est", "là", "."]),
    ("Je n'ai qu'un chat, c'est ça !", ["Je", "n'", "ai", "qu'", "un", "chat", ",", "c'", "est", "ça", "!"]),
    ("Jusqu'à aujourd'hui, quelqu'un", ["Jusqu'", "à", "aujourd'hui", ",", "quelqu'", "un"]),
    ("Qu'est-ce que c\u2019est\u202f?", ["Qu'", "est-ce", "que", "c'", "est", "?"]),
    ("Don't! I can't, we won't.", ["Do", "n't", "!", "I", "ca", "n't", ",", "we", "wo", "n't", "."]),
    ("I'm sure he's John's; we'll, they're, you've, I'd", ["I", "'m", "sure", "he", "'s", "John", "'s", ";",
                                                           "we", "'ll", ",", "they", "'re", ",", "you",
                                                           "'ve", ",", "I", "'d"]),
    ("o'clock y'all 'quoted' dogs'", ["o'clock", "y'all", "'", "quoted", "'", "dogs", "'"]),
    ("3.5 or 1,000 at 10:30...", ["3.5", "or", "1,000", "at", "10", ":", "30", ".", ".", "."]),
    ("ice-cream \"Hi\" a_b", ["ice-cream", '"', "Hi", '"', "a", "_", "b"]),
    ("", []),
])
def test_word_tokenize(text, expected):
    check_tokens(text, expected)


def test_word_tokenize_lower():
    check_tokens("L'Homme DON'T", ["l'", "homme", "do", "n't"], lower=True)


def test_char_tokenize():
    assert D.char_tokenize("Ab c\n") == ["A", "b", " ", "c", "\n"], "char_tokenize keeps every char"
    assert D.char_tokenize("Ab", lower=True) == ["a", "b"], "char_tokenize lower=True"


# ------------------------------------------------------------------ vocab
def test_vocab_build_order_and_limits():
    seqs = [["b", "a", "b", "c"], ["b", "a", "d"]]
    v = Vocab.build(seqs)
    assert v.itos == ["<pad>", "<unk>", "<bos>", "<eos>", "b", "a", "c", "d"], \
        f"Vocab order (specials, then count desc, ties alphabetical): {v.itos}"
    assert (v.pad_id, v.unk_id, v.bos_id, v.eos_id) == (0, 1, 2, 3), "special ids"
    assert Vocab.build(seqs, min_freq=2).itos[4:] == ["b", "a"], "min_freq=2 keeps b, a"
    assert len(Vocab.build(seqs, max_size=6)) == 6, "max_size counts specials"
    labels = Vocab.build([["O", "B-PER"]], specials=())
    assert labels.itos == ["B-PER", "O"] and labels.pad_id is None, "label vocab without specials"
    with pytest.raises(KeyError, match="'I-LOC'"):
        labels.encode(["I-LOC"])
    with pytest.raises(ValueError, match="<pad>"):
        Vocab(["a"], specials=("<unk>", "<pad>"))


def test_vocab_encode_decode_roundtrip():
    v = Vocab.build([["le", "chat", "dort"]])
    ids = v.encode(["le", "chien", "dort"], add_bos=True, add_eos=True)
    assert ids == [2, v["le"], 1, v["dort"], 3], f"encode with unk/bos/eos: {ids}"
    assert v.decode(ids + [0, 0]) == ["le", "<unk>", "dort"], "decode strips specials, keeps <unk>"
    assert v.decode([v["le"], 3, v["chat"]]) == ["le"], "decode stops at <eos>"
    assert v.decode(ids, strip_specials=False, stop_at_eos=False)[0] == "<bos>", "decode raw"
    v2 = Vocab.from_dict(json.loads(json.dumps(v.to_dict())))
    assert v2 == v and v2.encode(["chat"]) == v.encode(["chat"]), "to_dict/from_dict JSON round trip"
    with pytest.raises(ValueError, match="out of range"):
        v.decode([99])


# ------------------------------------------------------------------ padding and batching
def test_pad_sequences_shapes():
    x, n = D.pad_sequences([[1, 2, 3], [4], []], pad_id=0)
    assert x.shape == (3, 3) and x.dtype == np.int64, f"time-major (T, B) int64: {x.shape} {x.dtype}"
    assert n.tolist() == [3, 1, 0] and n.dtype == np.int64, f"lengths: {n}"
    assert x[:, 0].tolist() == [1, 2, 3] and x[:, 1].tolist() == [4, 0, 0], "columns are sequences"
    xb, _ = D.pad_sequences([[1, 2, 3], [4]], time_major=False, pad_id=9)
    assert xb.tolist() == [[1, 2, 3], [4, 9, 9]], "batch-major with pad_id 9"
    xt, nt = D.pad_sequences([[1, 2, 3], [4]], max_len=2)
    assert xt.shape == (2, 2) and nt.tolist() == [2, 1], "max_len truncates ids and lengths"
    xe, ne = D.pad_sequences([[], []])
    assert xe.shape == (1, 2) and ne.tolist() == [0, 0], "all-empty batch keeps T=1"
    m = D.length_mask(n, 3)
    assert m.tolist() == [[True, True, False], [True, False, False], [True, False, False]], "mask"


def check_batches(n_items, batch_size, **kw):
    rng = np.random.default_rng(1)
    seqs = [list(range(1, int(k) + 1)) for k in rng.integers(1, 30, n_items)]
    labels = list(rng.integers(0, 5, n_items))
    seen = []
    for b in D.iterate_batches(seqs, labels, batch_size=batch_size, **kw):
        T = b.inputs.shape[0]
        assert b.inputs.shape == (T, len(b.indices)), f"inputs (T, B): {b.inputs.shape}"
        assert T == b.lengths.max(), "T is the longest length in the batch"
        assert b.lengths.tolist() == [len(seqs[i]) for i in b.indices], "lengths match examples"
        assert b.targets.tolist() == [labels[i] for i in b.indices], "labels follow their examples"
        seen.extend(b.indices.tolist())
    return seqs, seen


@pytest.mark.parametrize("kw", [dict(), dict(shuffle=True, seed=3),
                                dict(shuffle=True, seed=3, bucket_size=40)])
def test_batches_cover_every_example_once(kw):
    _, seen = check_batches(203, 16, **kw)
    assert sorted(seen) == list(range(203)), f"each example exactly once with {kw}"


def test_bucketing_reduces_padding_and_is_seeded():
    def padding(**kw):
        rng = np.random.default_rng(1)
        seqs = [[1] * int(k) for k in rng.integers(1, 60, 500)]
        return sum(b.inputs.size - b.lengths.sum() for b in D.iterate_batches(seqs, batch_size=16, **kw))
    assert padding(shuffle=True, bucket_size=320) < padding(shuffle=True) / 3, "bucketing cuts padding"
    a = [b.indices.tolist() for b in D.iterate_batches([[1]] * 50, batch_size=8, shuffle=True, seed=7)]
    b = [b.indices.tolist() for b in D.iterate_batches([[1]] * 50, batch_size=8, shuffle=True, seed=7)]
    c = [b.indices.tolist() for b in D.iterate_batches([[1]] * 50, batch_size=8, shuffle=True, seed=8)]
    assert a == b and a != c, "same seed same order, other seed other order"
    assert len(list(D.iterate_batches([[1]] * 50, batch_size=8, drop_last=True))) == 6, "drop_last"


def test_sequence_targets_padded():
    b = next(D.iterate_batches([[1, 2], [3]], [[5, 6, 7], [8]], batch_size=2, target_pad_id=-1))
    assert b.targets.tolist() == [[5, 8], [6, -1], [7, -1]], f"targets (T', B): {b.targets.tolist()}"
    assert b.target_lengths.tolist() == [3, 1], "target_lengths"


def test_bptt_windows():
    ids = np.arange(103)
    data = D.batchify(ids, 4)
    assert data.shape == (25, 4) and data[:, 1].tolist() == list(range(25, 50)), "batchify columns"
    wins = list(D.bptt_batches(ids, batch_size=4, seq_len=10))
    assert [w.inputs.shape for w in wins] == [(10, 4), (10, 4), (4, 4)], "window shapes"
    for w in wins:
        assert np.array_equal(w.targets, w.inputs + 1), "targets are next tokens"
    assert np.array_equal(np.concatenate([w.inputs for w in wins]), data[:-1]), "windows tile the stream"
    r = D.random_windows(ids, batch_size=5, seq_len=8, seed=0)
    assert r.inputs.shape == (8, 5) and np.array_equal(r.targets, r.inputs + 1), "random windows"


def test_split_text_contiguous():
    text = "".join(f"line {i}\n" for i in range(100))
    tr, dv = D.split_text(text, 0.1)
    assert tr + dv == text and tr.endswith("\n"), "split_text cuts at a line end"
    assert abs(len(dv) / len(text) - 0.1) < 0.02, f"dev share {len(dv) / len(text)}"
    a, b = D.split_text(list(range(10)), 0.3)
    assert (a, b) == (list(range(7)), [7, 8, 9]), "exact cut for sequences"


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTRNN_DATA", str(tmp_path))
    assert D.default_data_dir() == tmp_path.resolve(), "FASTRNN_DATA wins"
    monkeypatch.setenv("FASTRNN_DATA", str(tmp_path / "nope"))
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="FASTRNN_DATA"):
        D.default_data_dir()
    monkeypatch.delenv("FASTRNN_DATA")
    found = D.default_data_dir()
    repo_data = Path(D.__file__).resolve().parent.parent.parent / "shared" / "data"
    assert found == (repo_data.resolve() if repo_data.is_dir() else None), f"repo-root fallback: {found}"


# ------------------------------------------------------------------ loaders on the real data
@needs_data
def test_load_text_real():
    text = D.load_text(DATA / D.DATA_FILES["autocomplete"])
    assert 1_000_000 < len(text) < 1_200_000, f"Tiny Shakespeare chars: {len(text)}"
    assert len(set(text)) == 65, f"distinct chars: {len(set(text))}"
    tr, dv = D.split_text(text, 0.1)
    assert tr + dv == text and 0.09 < len(dv) / len(text) < 0.11, "train/dev split"


@needs_data
def test_load_pairs_real():
    pairs = D.load_pairs(DATA / D.DATA_FILES["translation"])
    assert 67_000 < len(pairs) < 70_000, f"pairs: {len(pairs)}"
    assert pairs[0] == ("Go.", "Va !"), f"first pair: {pairs[0]}"
    train, dev = D.split_pairs(pairs, 0.1)
    assert len(train) + len(dev) == len(pairs) and 0.08 < len(dev) / len(pairs) < 0.12, "split share"
    assert not {e for e, _ in train} & {e for e, _ in dev}, "no English sentence in both splits"
    assert D.split_pairs(pairs[::-1], 0.1)[1] == dev[::-1], "split does not depend on order"
    short = D.load_pairs(DATA / D.DATA_FILES["translation"], max_words=5)
    assert 10_000 < len(short) < len(pairs), f"max_words=5 keeps {len(short)}"
    assert all(len(D.word_tokenize(f)) <= 5 for _, f in short), "max_words filters french too"


@needs_data
def test_load_conll_real():
    for key, lo in (("ner_train", 1500), ("ner_dev", 1000)):
        sents = D.load_conll(DATA / D.DATA_FILES[key])
        assert len(sents) > lo, f"{key} sentences: {len(sents)}"
        tags = {t for _, ts in sents for t in ts}
        assert tags <= {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"}, f"{key} tags {tags}"
        assert all(len(w) == len(t) > 0 for w, t in sents), f"{key}: tokens and tags align"
    assert sents[-1] == (["Sara"], ["B-PER"]), f"last dev sentence: {sents[-1]}"


@needs_data
def test_load_reviews_real():
    r = D.load_reviews(DATA / D.DATA_FILES["sentiment"])
    assert 13_500 < len(r.texts) < 14_000 and len(r.stars) == len(r.sources) == len(r.texts), "rows"
    assert r.stars.dtype == np.int64 and set(r.stars.tolist()) == {1, 2, 3, 4, 5}, "stars 1..5"
    assert set(r.sources) == {"amazon", "clothing", "movie"}, f"sources {set(r.sources)}"
    strata = list(zip(r.sources, r.stars.tolist()))
    tr, dv = D.stratified_split(strata, 0.1, seed=0)
    assert len(np.intersect1d(tr, dv)) == 0 and len(tr) + len(dv) == len(strata), "partition"
    for s in set(strata):
        n = sum(1 for x in strata if x == s)
        k = sum(1 for i in dv if strata[i] == s)
        assert k == round(0.1 * n), f"stratum {s}: {k} of {n} in dev"
    assert np.array_equal(D.stratified_split(strata, 0.1, seed=0)[1], dv), "seeded: same split"


# ------------------------------------------------------------------ loaders on bad files
def check_bad(tmp_path, loader, content, line, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(DataError) as e:
        loader(p)
    msg = str(e.value)
    where = f"{p}:{line}" if line else str(p)
    assert msg.startswith(where), f"{loader.__name__}: message names file and line {where}: {msg}"
    assert match in msg, f"{loader.__name__}: message says {match!r}: {msg}"
    assert isinstance(e.value, ValueError) and e.value.line == line, "DataError is a ValueError with .line"
    assert str(pickle.loads(pickle.dumps(e.value))) == msg, "DataError survives pickling"


CONLL_OK = "# c\n1\tJohn\tB-PER\t-\t-\n2\tlives\tO\t-\t-\n\n"


@pytest.mark.parametrize("loader,content,line,match", [
    (D.load_text, b"", None, "empty"),
    (D.load_text, b"ok\nbad \xff byte\n", 2, "not valid UTF-8"),
    (D.load_pairs, "Go.\tVa !\nRun!\n", 2, "expected 2 tab-separated columns"),
    (D.load_pairs, "Go.\tVa !\nRun!\t\n", 2, "empty french"),
    (D.load_pairs, "a\tb\n\xe9".encode("latin-1"), 2, "not valid UTF-8"),
    (D.load_pairs, "\n\n", None, "empty"),
    (D.load_conll, CONLL_OK + "1\tParis\tB-CITY\t-\t-\n", 5, "bad tag 'B-CITY'"),
    (D.load_conll, CONLL_OK + "1\tParis\n", 5, "expected at least 3 columns"),
    (D.load_conll, "# only comments\n", None, "no sentences"),
    (D.load_reviews, "source\tstars\ttext\nmovie\t6\tgreat\n", 2, "stars must be an integer 1..5, got '6'"),
    (D.load_reviews, "source\tstars\ttext\nmovie\t4.5\tgreat\n", 2, "got '4.5'"),
    (D.load_reviews, "source\tstars\ttext\nmovie\t4\tok\nmovie\t4\n", 3, "expected 3 tab-separated"),
    (D.load_reviews, "source\ttext\nmovie\tgreat\n", 1, "header lacks column(s) ['stars']"),
    (D.load_reviews, b"source\tstars\ttext\nmovie\t4\tgr\xe9at\n", 2, "not valid UTF-8"),
    (D.load_reviews, "source\tstars\ttext\n", None, "no reviews"),
])
def test_loader_errors(tmp_path, loader, content, line, match):
    check_bad(tmp_path, loader, content, line, match)


def test_conll_odd_tags_and_formats(tmp_path):
    p = tmp_path / "odd.iob2"
    p.write_text("1\tA\tB-O\t-\t-\n2\tB\tI-OTH\t-\t-\n3\tC\tI-LOC\t-\t-\r\n\r\n\n1\tD\tO\t-\t-", "utf-8")
    got = D.load_conll(p)
    assert got == [(["A", "B", "C"], ["O", "O", "I-LOC"]), (["D"], ["O"])], f"oddities -> O, I- kept: {got}"
    p.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n", "utf-8")
    got = D.load_conll(p, token_col=0, tag_col=3, sep=None)
    assert got == [(["EU", "rejects"], ["B-ORG", "O"])], f"CoNLL-2003 columns: {got}"


def test_group_references():
    src, refs = D.group_references([("Hi.", "Salut."), ("Go.", "Va !"), ("Hi.", "Bonjour.")])
    assert src == ["Hi.", "Go."] and refs == [["Salut.", "Bonjour."], ["Va !"]], "grouped refs"
