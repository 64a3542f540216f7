"""Tokenizers and the vocabulary (token <-> id), for the four NLP tasks.

Everything here is re-exported by :mod:`fastrnn.data`; import it from there.

Word tokenizer rules (:func:`word_tokenize`), in order:

1. The typographic apostrophe ``’`` (U+2019) and ``‘`` (U+2018) are read as ``'``.
   Every Unicode space (incl. the French narrow no-break space U+202F before
   ``! ? ; :``) separates tokens.
2. Numbers keep their inner ``.`` / ``,``: ``3.5``, ``1,000``, ``10:30`` -> ``10 : 30``.
3. A word is a run of letters/digits, joined by inner hyphens or apostrophes:
   ``ice-cream``, ``est-ce``, ``aujourd'hui``, ``o'clock`` stay one token.
4. Inside such a word, apostrophes are then split:

   * French elision (clitic prefix, case-insensitive): ``l' d' j' m' n' s' t'
     c' ç' qu' jusqu' lorsqu' puisqu' quoiqu' presqu' quelqu'`` are split off
     *with* their apostrophe: ``l'homme`` -> ``l'  homme``, ``qu'il`` ->
     ``qu'  il``, ``n'est`` -> ``n'  est``.
   * English contractions (Penn Treebank convention, the one the EWT NER data
     uses): ``n't 's 'm 'd 'll 're 've`` are split off as suffixes:
     ``don't`` -> ``do  n't``, ``can't`` -> ``ca  n't``, ``won't`` -> ``wo  n't``,
     ``I'm`` -> ``I  'm``, ``John's`` -> ``John  's``.
   * Any other inner apostrophe is kept (``aujourd'hui``, ``o'clock``, ``y'all``).

5. Every other non-space, non-word character is a token on its own:
   ``"Hello!!"`` -> ``"  Hello  !  !  "``; an apostrophe not inside a word
   (a quote mark, ``dogs'``) is a token ``'`` by itself. ``_`` is punctuation.

``lower=True`` lowercases (``str.lower``) before tokenizing.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

__all__ = [
    "word_tokenize", "char_tokenize", "detokenize",
    "Vocab", "PAD", "UNK", "BOS", "EOS", "DEFAULT_SPECIALS",
]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
DEFAULT_SPECIALS = (PAD, UNK, BOS, EOS)

_APOS = str.maketrans({"\u2019": "'", "\u2018": "'"})
_L = r"[^\W_]"  # a letter or digit (any script)
_TOKEN_RE = re.compile(
    rf"\d+(?:[.,]\d+)+"                  # number with inner . or ,
    rf"|{_L}+(?:[-']{_L}+)*"             # word with inner hyphens/apostrophes
    rf"|[^\w\s]|_",                      # one punctuation/symbol character
)
_ELISION_RE = re.compile(
    r"(?:jusqu|lorsqu|puisqu|quoiqu|presqu|quelqu|qu|[ldjmnstcç])'(?=[^\W_])",
    re.IGNORECASE,
)
_CONTRACTION_RE = re.compile(r"(?:n't|'s|'m|'d|'ll|'re|'ve)$", re.IGNORECASE)


def _split_word(word: str, out: List[str]) -> None:
    if "'" not in word:
        out.append(word)
        return
    while True:  # French elision prefixes, possibly chained
        m = _ELISION_RE.match(word)
        if not m:
            break
        out.append(m.group(0))
        word = word[m.end():]
    m = _CONTRACTION_RE.search(word)
    if m and m.start() > 0:
        out.append(word[:m.start()])
        out.append(word[m.start():])
    else:
        out.append(word)


def word_tokenize(text: str, lower: bool = False) -> List[str]:
    """Split ``text`` into word and punctuation tokens (rules in the module docstring).

    >>> word_tokenize("L'homme n'est pas là, don't worry!")
    ["L'", 'homme', "n'", 'est', 'pas', 'là', ',', 'do', "n't", 'worry', '!']
    """
    if not isinstance(text, str):
        raise TypeError(f"word_tokenize: text must be str, got {type(text).__name__}")
    text = text.translate(_APOS)
    if lower:
        text = text.lower()
    out: List[str] = []
    for tok in _TOKEN_RE.findall(text):
        _split_word(tok, out)
    return out


def char_tokenize(text: str, lower: bool = False) -> List[str]:
    """One token per Unicode code point, spaces and newlines included."""
    if not isinstance(text, str):
        raise TypeError(f"char_tokenize: text must be str, got {type(text).__name__}")
    return list(text.lower() if lower else text)


def detokenize(tokens: Iterable[str]) -> str:
    """Join word tokens with single spaces (what BLEU's own tokenizer expects)."""
    return " ".join(tokens)


class Vocab:
    """Token <-> id mapping.

    Ids are dense ``0..len-1``: the special tokens first, in the order given
    (``<pad>``, when present, must be first so that its id is 0), then the
    other tokens by descending count, ties broken alphabetically, so the same
    counts always give the same ids.

    ``<unk>``: when it is a special, unknown tokens encode to ``unk_id``;
    without it (e.g. a label vocabulary) encoding an unknown token raises
    KeyError naming it.

    Build with :meth:`build`; save with ``json.dump(vocab.to_dict(), f)`` and
    reload with ``Vocab.from_dict(json.load(f))``.
    """

    def __init__(self, tokens: Sequence[str], specials: Sequence[str] = DEFAULT_SPECIALS):
        specials = tuple(specials)
        if PAD in specials and specials[0] != PAD:
            raise ValueError(f"Vocab: specials must start with {PAD!r} (id 0) when it is present, "
                             f"got {specials!r}")
        itos = list(specials) + [t for t in tokens if t not in set(specials)]
        stoi: Dict[str, int] = {}
        for i, t in enumerate(itos):
            if not isinstance(t, str):
                raise TypeError(f"Vocab: tokens must be str, got {type(t).__name__} {t!r} at id {i}")
            if t in stoi:
                raise ValueError(f"Vocab: token {t!r} appears twice (ids {stoi[t]} and {i})")
            stoi[t] = i
        self.specials = specials
        self.itos: List[str] = itos
        self.stoi: Dict[str, int] = stoi

    @classmethod
    def build(cls, data: "Iterable[Iterable[str]] | Mapping[str, int]", min_freq: int = 1,
              max_size: Optional[int] = None,
              specials: Sequence[str] = DEFAULT_SPECIALS) -> "Vocab":
        """Build from token sequences (e.g. a list of token lists) or from a
        ``{token: count}`` mapping (e.g. a ``collections.Counter``).

        ``min_freq``: keep tokens seen at least this many times.
        ``max_size``: cap on the total size, specials included (the embedding's
        row count); the most frequent tokens are kept.
        """
        if min_freq < 1:
            raise ValueError(f"Vocab.build: min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size < len(specials):
            raise ValueError(f"Vocab.build: max_size must be >= the {len(specials)} specials, "
                             f"got {max_size}")
        if isinstance(data, Mapping):
            counts = Counter(data)
        else:
            counts = Counter()
            for seq in data:
                if isinstance(seq, str):
                    raise TypeError("Vocab.build: data must be token sequences (lists of str) or a "
                                    "{token: count} mapping, got a str; wrap a single list as [tokens] "
                                    "or use char_tokenize")
                counts.update(seq)
        spec = set(specials)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq and t not in spec),
                        key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[:max_size - len(specials)]
        return cls(ranked, specials)

    # ---- lookup ----
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __getitem__(self, token: str) -> int:
        i = self.stoi.get(token)
        if i is None:
            if UNK in self.stoi:
                return self.stoi[UNK]
            raise KeyError(f"Vocab: token {token!r} is not in the vocabulary and it has no {UNK}")
        return i

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos and self.specials == other.specials

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, specials={self.specials!r})"

    def _special(self, tok: str) -> Optional[int]:
        return self.stoi.get(tok) if tok in self.specials else None

    pad_id = property(lambda self: self._special(PAD), doc="id of <pad> (0) or None")
    unk_id = property(lambda self: self._special(UNK), doc="id of <unk> or None")
    bos_id = property(lambda self: self._special(BOS), doc="id of <bos> or None")
    eos_id = property(lambda self: self._special(EOS), doc="id of <eos> or None")

    def token(self, i: int) -> str:
        return self.itos[i]

    # ---- encode / decode ----
    def encode(self, tokens: Iterable[str], add_bos: bool = False, add_eos: bool = False) -> List[int]:
        """Token sequence -> list of ids, optionally wrapped in <bos> ... <eos>."""
        ids = [self[t] for t in tokens]
        if add_bos:
            if self.bos_id is None:
                raise ValueError(f"Vocab.encode: add_bos=True but the vocabulary has no {BOS}")
            ids.insert(0, self.bos_id)
        if add_eos:
            if self.eos_id is None:
                raise ValueError(f"Vocab.encode: add_eos=True but the vocabulary has no {EOS}")
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], strip_specials: bool = True,
               stop_at_eos: bool = True) -> List[str]:
        """Ids -> tokens. ``stop_at_eos``: drop everything from the first <eos>.
        ``strip_specials``: drop <pad>/<bos>/<eos> (``<unk>`` is kept: it is content)."""
        eos, out = self.eos_id, []
        drop = {self.stoi[s] for s in self.specials if s != UNK} if strip_specials else set()
        n = len(self.itos)
        for i in ids:
            i = int(i)
            if stop_at_eos and eos is not None and i == eos:
                break
            if not 0 <= i < n:
                raise ValueError(f"Vocab.decode: id {i} is out of range [0, {n})")
            if i not in drop:
                out.append(self.itos[i])
        return out

    # ---- serialisation ----
    def to_dict(self) -> dict:
        """JSON-serialisable form: ``{"tokens": [...all, by id...], "specials": [...]}``."""
        return {"tokens": list(self.itos), "specials": list(self.specials)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Vocab":
        if not isinstance(d, Mapping) or "tokens" not in d or "specials" not in d:
            raise ValueError("Vocab.from_dict: expected a dict with keys 'tokens' and 'specials' "
                             f"(from Vocab.to_dict), got {type(d).__name__} "
                             f"{sorted(d) if isinstance(d, Mapping) else ''}")
        tokens, specials = list(d["tokens"]), list(d["specials"])
        if tokens[:len(specials)] != specials:
            raise ValueError(f"Vocab.from_dict: 'tokens' must start with the specials {specials!r}, "
                             f"got {tokens[:len(specials)]!r}")
        return cls(tokens[len(specials):], specials)
