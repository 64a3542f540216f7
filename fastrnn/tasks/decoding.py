"""Greedy and beam-search decoding over a step function (autocomplete, translation).

A model exposes one decoding step as

    step(tokens, state) -> (logprobs, new_state)
        tokens    (N,) int ids: the last token of each of N rows
        state     the rows' recurrent state (any structure)
        logprobs  (N, V) float log-probabilities of the next token

and the search reorders rows with

    reorder(state, rows) -> state       rows (M,) int: row i of the result is
                                        row rows[i] of ``state`` (gather)

Both searches decode B items at once (a batch of sources, or one prefix):
``state`` has B rows on entry; beam_search expands it to B*K rows, row
``b*K + k`` holding beam k of item b.

``is_final(b, tokens, tok) -> bool`` says whether appending ``tok`` to the
tokens generated so far for item b (a list) ends the hypothesis (an <eos>,
the end of a word, a newline ...).  The final token is part of the
hypothesis' tokens and of its log-probability; callers strip it for display.

Scores.  A hypothesis' ``logprob`` is the sum of its tokens' log-probs;
its ``score`` is ``logprob / lp(len)`` with GNMT's length penalty
``lp(n) = ((5 + n) / 6) ** length_penalty`` (0 gives the plain logprob,
the exact sequence probability ranking).

beam_search keeps K = beam_width alive hypotheses per item.  At each step the
top 2K expansions are ranked; a final expansion is kept only if it ranks
within the top K (so a width-1 beam search is exactly greedy search), the
others fill the K alive slots.  An item is done once it has max(K, n_best)
finished hypotheses and no alive one can still beat the worst of them (exact
for length_penalty 0, since log-probabilities only fall; with a length
penalty the best alive beam is judged at its current length, a heuristic);
done items leave the batch, so the step function sees fewer rows.  At
``max_len``, items with fewer than n_best finished hypotheses are filled up
with the best alive ones, marked ``finished=False`` (finished ones first).
"""
from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Sequence

import numpy as np

__all__ = ["Hypothesis", "beam_search", "greedy_search", "take_rows", "length_penalty_factor"]


class Hypothesis(NamedTuple):
    tokens: List[int]     # generated ids, the final token (e.g. <eos>) included when finished
    logprob: float        # sum of the tokens' log-probabilities
    score: float          # logprob / lp(len(tokens)): the ranking key
    finished: bool        # False when cut at max_len


def length_penalty_factor(n, alpha):
    """GNMT length penalty lp(n) = ((5 + n) / 6) ** alpha (1 for alpha 0)."""
    return 1.0 if alpha == 0 else ((5.0 + n) / 6.0) ** alpha


def take_rows(state, rows, axis=0):
    """Gather ``rows`` along ``axis`` in every array of a nested tuple/list/dict
    ``state`` (None entries stay None): a ready-made ``reorder``."""
    if state is None:
        return None
    if isinstance(state, np.ndarray):
        return np.take(state, rows, axis=axis)
    if isinstance(state, dict):
        return {k: take_rows(v, rows, axis) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return type(state)(take_rows(v, rows, axis) for v in state)
    raise TypeError(f"take_rows: expected arrays in nested tuples/lists/dicts, got {type(state).__name__}")


def _check(start, max_len, width=1):
    start = np.asarray(start)
    if start.ndim != 1 or not np.issubdtype(start.dtype, np.integer) or start.size == 0:
        raise ValueError(f"start: expected a non-empty (B,) integer array, got shape {start.shape} "
                         f"dtype {start.dtype}")
    if not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len: expected an int >= 1, got {max_len!r}")
    if not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"beam_width: expected an int >= 1, got {width!r}")
    return start.astype(np.int64)


def _logprobs(step, tokens, state, n):
    logp, state = step(tokens, state)
    logp = np.asarray(logp, dtype=np.float64)
    if logp.ndim != 2 or logp.shape[0] != n:
        raise ValueError(f"step: expected logprobs of shape ({n}, V), got {logp.shape}")
    return logp, state


def greedy_search(step: Callable, state: Any, start: Sequence[int], *, max_len: int,
                  is_final: Callable, reorder: Callable = take_rows) -> List[Hypothesis]:
    """Most likely next token at every step, for B items at once; one
    Hypothesis per item (``finished`` False when cut at ``max_len``).
    ``reorder`` is used to drop finished rows from the batch."""
    start = _check(start, max_len)
    B = len(start)
    toks: List[List[int]] = [[] for _ in range(B)]
    lp = np.zeros(B)
    fin = np.zeros(B, bool)
    live = np.arange(B)            # items still decoding, in state row order
    last = start
    for _ in range(max_len):
        logp, state = _logprobs(step, last, state, len(live))
        best = logp.argmax(axis=1)
        keep = []
        for r, b in enumerate(live):
            tok = int(best[r])
            lp[b] += logp[r, tok]
            done = is_final(int(b), toks[b], tok)
            toks[b].append(tok)
            if done:
                fin[b] = True
            else:
                keep.append(r)
        if not keep:
            break
        if len(keep) < len(live):
            keep = np.asarray(keep)
            state = reorder(state, keep)
            live = live[keep]
            best = best[keep]
        last = best.astype(np.int64)
    return [Hypothesis(toks[b], float(lp[b]), float(lp[b]), bool(fin[b])) for b in range(B)]


def beam_search(step: Callable, state: Any, start: Sequence[int], *, beam_width: int = 5,
                n_best: int = None, max_len: int, is_final: Callable, reorder: Callable = take_rows,
                length_penalty: float = 0.0) -> List[List[Hypothesis]]:
    """Beam search for B items at once (see the module docstring).

    state       B rows (expanded here to B*K with ``reorder``)
    start       (B,) the first input token of each item (e.g. <bos>, or the
                last character of a prefix)
    beam_width  K alive hypotheses per item
    n_best      hypotheses returned per item (default K)
    Returns, per item, up to n_best Hypothesis: the finished ones sorted by
    score, best first, then (only to fill up n_best) unfinished ones.
    """
    K = beam_width
    start = _check(start, max_len, K)
    n_best = K if n_best is None else int(n_best)
    if n_best < 1:
        raise ValueError(f"n_best: expected an int >= 1, got {n_best!r}")
    B = len(start)
    alpha = float(length_penalty)
    state = reorder(state, np.repeat(np.arange(B), K))
    last = np.repeat(start, K)
    scores = np.full((B, K), -np.inf)       # per item, its K alive beams
    scores[:, 0] = 0.0                      # one live beam per item at first: no duplicates
    seqs: List[List[List[int]]] = [[[] for _ in range(K)] for _ in range(B)]
    finished: List[List[Hypothesis]] = [[] for _ in range(B)]
    done = np.zeros(B, bool)
    need = max(n_best, K)                   # finished hypotheses kept before an item can stop
    act = np.arange(B)                      # items still searching; state rows i*K + k
    for t in range(max_len):
        A = len(act)
        logp, state = _logprobs(step, last, state, A * K)
        V = logp.shape[1]
        n_cand = min(2 * K, K * V)
        total = (scores[act][:, :, None] + logp.reshape(A, K, V)).reshape(A, K * V)
        part = np.argpartition(-total, n_cand - 1, axis=1)[:, :n_cand]
        parents = np.zeros((A, K), np.int64)
        new_last = np.zeros((A, K), np.int64)
        n = t + 1
        for i, b in enumerate(act):
            cand = part[i]
            # best first; ties by flat index (what argmax picks), so width 1 == greedy
            cand = cand[np.lexsort((cand, -total[i, cand]))]
            new_scores = np.full(K, -np.inf)
            new_seqs: List[List[int]] = [[] for _ in range(K)]
            alive = 0
            for rank, c in enumerate(cand):
                sc = total[i, c]
                if not np.isfinite(sc):
                    break
                k, tok = divmod(int(c), V)
                prev = seqs[b][k]
                if is_final(int(b), prev, tok):
                    if rank < K:
                        finished[b].append(Hypothesis(prev + [tok], float(sc),
                                                      float(sc) / length_penalty_factor(n, alpha), True))
                    continue
                new_scores[alive] = sc
                parents[i, alive] = k
                new_last[i, alive] = tok
                new_seqs[alive] = prev + [tok]
                alive += 1
                if alive == K:
                    break
            scores[b] = new_scores
            seqs[b] = new_seqs
            # done when n_best are finished and no alive beam can beat the worst kept one:
            # exact for length_penalty 0 (log-probs only fall); with a length penalty the
            # best alive beam is normalised at its current length (a heuristic, like
            # Hugging Face's default)
            best_alive = new_scores.max()
            if len(finished[b]) >= need:
                finished[b].sort(key=lambda h: -h.score)
                del finished[b][need:]
                bound = best_alive / length_penalty_factor(n, alpha)
                if not np.isfinite(best_alive) or bound <= finished[b][-1].score:
                    done[b] = True
            elif not np.isfinite(best_alive):
                done[b] = True              # nothing left to expand
        keep = np.flatnonzero(~done[act])
        if keep.size == 0:
            break
        state = reorder(state, (keep[:, None] * K + parents[keep]).reshape(-1))   # finished items drop out
        last = new_last[keep].reshape(-1)
        act = act[keep]
    out = []
    for b in range(B):
        hyps = sorted(finished[b], key=lambda h: -h.score)[:n_best]
        if len(hyps) < n_best:              # fill up with the best unfinished ones
            alive = [Hypothesis(seqs[b][k], float(scores[b, k]),
                                float(scores[b, k]) / length_penalty_factor(len(seqs[b][k]), alpha), False)
                     for k in range(K) if np.isfinite(scores[b, k])]
            hyps += sorted(alive, key=lambda h: -h.score)[:n_best - len(hyps)]
        out.append(hyps)
    return out


# ----------------------------------------------------------------- task plumbing
# Small helpers the two generation tasks (autocomplete, translation) share.

def resolve_data(data, key):
    """The data file of task ``key`` (a fastrnn.data.DATA_FILES key): ``data``
    None -> the shared data file; a folder -> its DATA_FILES[key] (or a file of
    that base name directly inside it); a file -> itself.  FileNotFoundError
    naming what was looked for otherwise."""
    from pathlib import Path

    from ..data import DATA_FILES, data_file
    if data is None:
        return data_file(key)
    p = Path(data).expanduser()
    if p.is_dir():
        rel = Path(DATA_FILES[key])
        for cand in (p / rel, p / rel.name):
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"data: {p} is a folder without {rel} or {rel.name}")
    if not p.is_file():
        raise FileNotFoundError(f"data: {p} does not exist")
    return p


def merge_options(defaults, quick_overrides, quick, options, task):
    """defaults, updated with quick_overrides when ``quick``, then with every
    option that is not None; TypeError naming an unknown option (unknown
    options that are None, e.g. another command's unset flags, are ignored)."""
    cfg = dict(defaults)
    if quick:
        cfg.update(quick_overrides)
    unknown = sorted(k for k, v in options.items() if k not in defaults and v is not None)
    if unknown:
        raise TypeError(f"{task}: unknown option(s) {unknown}; expected some of {sorted(defaults)}")
    cfg.update({k: v for k, v in options.items() if v is not None and k in defaults})
    return cfg


def load_model(model, cls):
    """``model`` itself when it is a ``cls``, else load it from a path."""
    if isinstance(model, cls):
        return model
    from ..model import load
    return load(model, cls=cls)


class TimeBudget:
    """A wall-clock budget for a whole train() call.

    TimeBudget(minutes, reserve=0.0): training must stop ``reserve`` seconds
    before ``minutes`` have passed since the budget was made (None or 0: no
    limit), leaving time for what follows the last batch (the dev pass,
    the final evaluation); ``reserve`` may be updated as it is measured.
    ``wrap(batches)`` yields batches until the deadline, then stops the
    epoch early and sets ``hit``; ``expired()`` for fit's on_epoch_end;
    ``timed(batches)`` yields batches and records the pass in ``last_pass``
    (seconds), e.g. to size the reserve from the dev pass.  The wrapped
    lists keep their len() for the progress bar."""

    def __init__(self, minutes, reserve=0.0):
        import time
        self.start = time.perf_counter()
        self.total = 60.0 * float(minutes) if minutes else None
        # a first guess, at most a fifth of the budget (a quick run has little to follow it)
        self.reserve = min(float(reserve), 0.2 * self.total) if self.total else 0.0
        self.hit = False
        self.last_pass = None

    @property
    def deadline(self):
        return None if self.total is None else self.start + self.total - self.reserve

    def expired(self):
        import time
        if self.total is not None and time.perf_counter() > self.deadline:
            self.hit = True
        return self.hit

    def wrap(self, batches):
        return _Budgeted(list(batches), self)

    def timed(self, batches):
        return _Timed(list(batches), self)


class _Budgeted:
    def __init__(self, batches, budget):
        self.batches, self.budget = batches, budget

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            if self.budget.expired():
                return
            yield b


class _Timed(_Budgeted):
    def __iter__(self):
        import time
        t0 = time.perf_counter()
        yield from self.batches
        self.budget.last_pass = time.perf_counter() - t0


def blas_threads(n):
    """Context manager limiting the BLAS thread pools (numpy's and the one
    behind np.dot in the Numba kernels) to ``n`` threads; None or 0 leaves
    them alone, and so does a missing threadpoolctl.  On a small CPU shared
    with other jobs, multi-threaded OpenBLAS spins against them and an epoch
    can take many times longer; one thread per process is far more robust."""
    import contextlib
    if not n:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    try:        # load the BLAS that Numba's np.dot calls first: threadpoolctl limits loaded ones only
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:
        pass
    return threadpool_limits(limits=int(n), user_api="blas")
