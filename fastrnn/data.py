"""Data layer of the four NLP tasks: tokenizing, vocabularies, batching, file loaders.

One import for everything::

    from fastrnn.data import (word_tokenize, char_tokenize, Vocab, pad_sequences,
                              iterate_batches, bptt_batches, load_text, load_pairs,
                              load_conll, load_reviews, default_data_dir, DataError)

Tokenizers and :class:`Vocab` live in :mod:`fastrnn.text`, padding and
batching in :mod:`fastrnn.batching`; they are re-exported here. This module
holds the file loaders, the train/dev splits and where the data is.

Loaders read plain UTF-8 text (a leading BOM and CRLF line ends are accepted)
and raise :class:`DataError` ``"<file>:<line>: <what was expected, what was found>"``
on bad data. A missing file raises FileNotFoundError.

Data files (``default_data_dir()`` / ``DATA_FILES[task]``):

=============  ====================================  =======================================
task           file                                  format
=============  ====================================  =======================================
autocomplete   autocomplete/tinyshakespeare.txt      plain text             -> load_text
translation    translation/eng-fra.tsv               ``english<TAB>french`` -> load_pairs
ner_train/dev  ner/en_ewt-{train,dev}.iob2           ``id token tag ...``   -> load_conll
sentiment      sentiment/reviews.tsv                 ``source stars text``  -> load_reviews
=============  ====================================  =======================================
"""
from __future__ import annotations

import codecs
import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Hashable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .batching import (Batch, batchify, bptt_batches, iterate_batches, length_mask,  # noqa: F401
                       pad_sequences, random_windows)
from .text import (BOS, DEFAULT_SPECIALS, EOS, PAD, UNK, Vocab, char_tokenize,  # noqa: F401
                   detokenize, word_tokenize)

__all__ = [
    # errors and locations
    "DataError", "default_data_dir", "data_file", "DATA_FILES",
    # text (re-exported)
    "word_tokenize", "char_tokenize", "detokenize", "Vocab", "PAD", "UNK", "BOS", "EOS",
    "DEFAULT_SPECIALS",
    # batching (re-exported)
    "pad_sequences", "length_mask", "Batch", "iterate_batches", "batchify", "bptt_batches",
    "random_windows",
    # loaders and splits
    "load_text", "split_text", "load_pairs", "split_pairs", "group_references",
    "load_conll", "NER_TYPES", "load_reviews", "Reviews", "stratified_split",
]

PathLike = Union[str, "os.PathLike[str]"]


class DataError(ValueError):
    """Bad data in a file: ``str(e)`` is ``"<path>:<line>: <message>"``.

    Attributes ``path`` (str), ``line`` (1-based int, or None for the whole file).
    """

    def __init__(self, path: PathLike, line: Optional[int], message: str):
        self.path, self.line, self.message = str(path), line, message
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # picklable (e.g. raised in a worker process)
        return (type(self), (self.path, self.line, self.message))


# --------------------------------------------------------------------- where
DATA_FILES = {
    "autocomplete": "autocomplete/tinyshakespeare.txt",
    "translation": "translation/eng-fra.tsv",
    "ner_train": "ner/en_ewt-train.iob2",
    "ner_dev": "ner/en_ewt-dev.iob2",
    "sentiment": "sentiment/reviews.tsv",
}
_REPO_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Optional[Path]:
    """The shared data folder, or None when there is none.

    Looked up in order: ``$FASTRNN_DATA`` (a warning when it is set but is not
    a folder); ``../shared/data`` from the current directory; ``../shared/data``
    from the repository root (the parent of the ``fastrnn`` package folder).
    """
    env = os.environ.get("FASTRNN_DATA")
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            return p.resolve()
        warnings.warn(f"FASTRNN_DATA={env!r} is not a folder; looking in ../shared/data instead",
                      stacklevel=2)
    for base in (Path.cwd(), _REPO_ROOT):
        p = base.parent / "shared" / "data"
        if p.is_dir():
            return p.resolve()
    return None


def data_file(task: str) -> Path:
    """Path of a shared data file: ``task`` is a key of ``DATA_FILES``.

    Raises FileNotFoundError saying where it looked when there is no data folder
    or the file is missing from it.
    """
    if task not in DATA_FILES:
        raise ValueError(f"data_file: task must be one of {sorted(DATA_FILES)}, got {task!r}")
    d = default_data_dir()
    if d is None:
        raise FileNotFoundError(
            f"data_file({task!r}): no data folder: set FASTRNN_DATA, or put it at ../shared/data "
            f"from the current directory ({Path.cwd()}) or from the repository root ({_REPO_ROOT})")
    p = d / DATA_FILES[task]
    if not p.is_file():
        raise FileNotFoundError(f"data_file({task!r}): {p} does not exist")
    return p


# --------------------------------------------------------------------- reading
def _read_lines(path: PathLike, expected: str) -> List[str]:
    """UTF-8 file -> lines (no line ends). DataError if empty or not UTF-8."""
    p = Path(path)
    raw = p.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    if not raw.strip():
        raise DataError(p, None, f"file is empty; expected {expected}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(p, line, f"not valid UTF-8: byte 0x{raw[e.start]:02x} at column {col} "
                                 f"(expected UTF-8 text; re-save the file as UTF-8)") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


# --------------------------------------------------------------------- autocomplete
def load_text(path: PathLike) -> str:
    """Whole UTF-8 text file as one str, ``\\n`` line ends (autocomplete corpus).

    Tokenize with ``char_tokenize`` (or ``word_tokenize``), build a ``Vocab``,
    encode, then ``bptt_batches`` / ``random_windows``.
    """
    lines = _read_lines(path, "UTF-8 text")
    return "\n".join(lines) + "\n"


def split_text(text: Union[str, Sequence], dev_fraction: float = 0.1) -> Tuple:
    """Contiguous split: the first ``1 - dev_fraction`` is train, the rest dev.

    Deterministic (no seed). For a str the cut moves forward to just after the
    next newline, so no line is split; for a sequence (e.g. ids) it is exact
    at ``round(len * (1 - dev_fraction))``.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"split_text: dev_fraction must be in (0, 1), got {dev_fraction}")
    cut = int(round(len(text) * (1.0 - dev_fraction)))
    if isinstance(text, str):
        nl = text.find("\n", cut - 1 if cut > 0 else 0)
        if nl != -1 and nl + 1 < len(text):
            cut = nl + 1
    return text[:cut], text[cut:]


# --------------------------------------------------------------------- translation
def load_pairs(path: PathLike, max_words: Optional[int] = None) -> List[Tuple[str, str]]:
    """``english<TAB>french`` lines -> list of ``(english, french)`` str pairs (stripped).

    Blank lines are skipped. ``max_words``: keep only pairs whose both sides
    have at most this many ``word_tokenize`` tokens (punctuation counts).
    DataError for a line without exactly 2 tab-separated columns or with an
    empty side.
    """
    what = "lines of 'english<TAB>french'"
    pairs: List[Tuple[str, str]] = []
    for i, line in enumerate(_read_lines(path, what), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 2:
            raise DataError(path, i, f"expected 2 tab-separated columns (english, french), "
                                     f"got {len(cols)}: {line[:60]!r}")
        en, fr = cols[0].strip(), cols[1].strip()
        if not en or not fr:
            raise DataError(path, i, f"empty {'english' if not en else 'french'} side: {line[:60]!r}")
        pairs.append((en, fr))
    if not pairs:
        raise DataError(path, None, f"no pairs; expected {what}")
    if max_words is not None:
        pairs = [(e, f) for e, f in pairs
                 if len(word_tokenize(e)) <= max_words and len(word_tokenize(f)) <= max_words]
    return pairs


def _unit_hash(key: str, salt: str) -> float:
    h = hashlib.blake2b((salt + "\x00" + key).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


def split_pairs(pairs: Sequence[Tuple[str, str]], dev_fraction: float = 0.1,
                salt: str = "fastrnn") -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """Deterministic train/dev split by a hash of the English side.

    A pair goes to dev when ``blake2b(salt, lowercased whitespace-normalised
    english)`` as a number in [0, 1) is below ``dev_fraction``. The split does
    not depend on file order, machine or Python's hash seed, and every
    translation of the same English sentence lands on the same side (no
    source-sentence leak from train into dev). The dev share is about
    ``dev_fraction``, not exact. Order within each side is the input order.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"split_pairs: dev_fraction must be in (0, 1), got {dev_fraction}")
    train, dev = [], []
    for p in pairs:
        key = " ".join(p[0].lower().split())
        (dev if _unit_hash(key, salt) < dev_fraction else train).append(p)
    return train, dev


def group_references(pairs: Sequence[Tuple[str, str]]) -> Tuple[List[str], List[List[str]]]:
    """Group pairs by English sentence: ``(sources, references)``, where
    ``references[k]`` lists every French translation of ``sources[k]`` (first
    appearance order). Feed to ``fastrnn.metrics.bleu(hyps, references)`` for
    multi-reference BLEU (Tatoeba often has several translations)."""
    index: dict = {}
    sources: List[str] = []
    refs: List[List[str]] = []
    for en, fr in pairs:
        k = index.get(en)
        if k is None:
            index[en] = k = len(sources)
            sources.append(en)
            refs.append([])
        refs[k].append(fr)
    return sources, refs


# --------------------------------------------------------------------- NER
NER_TYPES = ("PER", "ORG", "LOC")
_ODD_TAG = re.compile(r"^[BI]-(?:O|OTH)$")


def load_conll(path: PathLike, token_col: int = 1, tag_col: int = 2, sep: Optional[str] = "\t",
               types: Sequence[str] = NER_TYPES) -> List[Tuple[List[str], List[str]]]:
    """CoNLL-style NER file -> list of ``(tokens, tags)`` sentences.

    Lines: ``#`` comments; a blank line ends a sentence; other lines are
    columns split on ``sep`` (None: any whitespace), default
    ``id token tag - annotator`` (token column 1, tag column 2; for CoNLL-2003
    files use ``token_col=0, tag_col=3, sep=None``).

    Tags: ``O`` or ``B-X`` / ``I-X`` with X in ``types``. The oddities ``B-O``,
    ``I-O``, ``B-OTH``, ``I-OTH`` become ``O``. Any other tag is a DataError
    naming file and line. Invalid IOB2 sequences (``I-X`` after ``O`` or
    after another type) are kept as given; ``fastrnn.metrics.ner_scores``
    reads them as conlleval does (such an ``I-X`` starts a new entity).
    """
    type_alt = "|".join(re.escape(t) for t in types)
    valid = re.compile(rf"^(?:O|[BI]-(?:{type_alt}))$")
    ncols = max(token_col, tag_col) + 1
    what = f"sentences of lines 'id<TAB>token<TAB>tag...' with tags O|B-X|I-X, X in {tuple(types)}"
    sents: List[Tuple[List[str], List[str]]] = []
    toks: List[str] = []
    tags: List[str] = []
    for i, line in enumerate(_read_lines(path, what), 1):
        if not line.strip():
            if toks:
                sents.append((toks, tags))
                toks, tags = [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split(sep) if sep is not None else line.split()
        if len(cols) < ncols:
            raise DataError(path, i, f"expected at least {ncols} columns (token in column "
                                     f"{token_col + 1}, tag in column {tag_col + 1}), "
                                     f"got {len(cols)}: {line[:60]!r}")
        tok, tag = cols[token_col].strip(), cols[tag_col].strip()
        if _ODD_TAG.match(tag):
            tag = "O"
        elif not valid.match(tag):
            raise DataError(path, i, f"bad tag {tag!r}; expected O, B-X or I-X with X in "
                                     f"{tuple(types)} (B-O, I-O, *-OTH are read as O)")
        if not tok:
            raise DataError(path, i, f"empty token in column {token_col + 1}: {line[:60]!r}")
        toks.append(tok)
        tags.append(tag)
    if toks:
        sents.append((toks, tags))
    if not sents:
        raise DataError(path, None, f"no sentences; expected {what}")
    return sents


# --------------------------------------------------------------------- sentiment
class Reviews(NamedTuple):
    """``load_reviews`` result: N texts (str), stars int64 (N,) in 1..5, N sources (str)."""
    texts: List[str]
    stars: np.ndarray
    sources: List[str]


def load_reviews(path: PathLike) -> Reviews:
    """TSV with a header naming the columns ``source``, ``stars``, ``text`` (any
    order; extra columns ignored; no quoting: a text holds no tab).

    DataError for a missing header column, a row with a different column
    count than the header, a ``stars`` that is not an integer in 1..5, or an
    empty text. Blank lines are skipped.
    """
    what = "a header 'source<TAB>stars<TAB>text' then one review a line"
    lines = _read_lines(path, what)
    header = lines[0].split("\t")
    names = [h.strip().lower() for h in header]
    missing = [c for c in ("source", "stars", "text") if c not in names]
    if missing:
        raise DataError(path, 1, f"header lacks column(s) {missing}; expected {what}, "
                                 f"got {lines[0][:60]!r}")
    si, ki, ti = names.index("source"), names.index("stars"), names.index("text")
    texts: List[str] = []
    stars: List[int] = []
    sources: List[str] = []
    for i, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != len(header):
            raise DataError(path, i, f"expected {len(header)} tab-separated columns "
                                     f"({', '.join(names)}), got {len(cols)}: {line[:60]!r}")
        s = cols[ki].strip()
        if not re.fullmatch(r"[1-5]", s):
            raise DataError(path, i, f"stars must be an integer 1..5, got {s!r}")
        text = cols[ti].strip()
        if not text:
            raise DataError(path, i, "empty text")
        texts.append(text)
        stars.append(int(s))
        sources.append(cols[si].strip())
    if not texts:
        raise DataError(path, None, f"no reviews after the header; expected {what}")
    return Reviews(texts, np.asarray(stars, dtype=np.int64), sources)


def stratified_split(labels: Sequence[Hashable], dev_fraction: float = 0.1,
                     seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split -> ``(train_idx, dev_idx)``, sorted int64 index arrays.

    Each class (distinct label; pass ``list(zip(sources, stars))`` to stratify
    by both) sends ``round(dev_fraction * count)`` of its examples, drawn by a
    permutation seeded with ``seed``, to dev. Same labels and seed, same split.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"stratified_split: dev_fraction must be in (0, 1), got {dev_fraction}")
    groups: dict = {}
    for i, y in enumerate(labels):
        groups.setdefault(y, []).append(i)
    rng = np.random.default_rng(seed)
    dev: List[np.ndarray] = []
    for key in sorted(groups, key=repr):
        idx = np.asarray(groups[key], dtype=np.int64)
        k = int(round(dev_fraction * len(idx)))
        dev.append(rng.permutation(idx)[:k])
    dev_idx = np.sort(np.concatenate(dev)) if dev else np.zeros(0, np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[dev_idx] = False
    return np.flatnonzero(mask).astype(np.int64), dev_idx.astype(np.int64)
