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
others fill the K alive slots.  An item is done once it has ``n_best``
finished hypotheses and no alive one can still beat the worst of them.  At
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
    rows = np.repeat(np.arange(B), K)
    state = reorder(state, rows)
    last = start[rows]
    scores = np.full((B, K), -np.inf)
    scores[:, 0] = 0.0                      # one live beam per item at first: no duplicates
    seqs: List[List[List[int]]] = [[[] for _ in range(K)] for _ in range(B)]
    finished: List[List[Hypothesis]] = [[] for _ in range(B)]
    done = np.zeros(B, bool)
    for t in range(max_len):
        logp, state = _logprobs(step, last, state, B * K)
        V = logp.shape[1]
        n_cand = min(2 * K, K * V)
        total = (scores[:, :, None] + logp.reshape(B, K, V)).reshape(B, K * V)
        part = np.argpartition(-total, n_cand - 1, axis=1)[:, :n_cand]
        new_scores = np.full((B, K), -np.inf)
        parents = np.zeros((B, K), np.int64)
        new_last = np.zeros((B, K), np.int64)
        new_seqs: List[List[List[int]]] = [[[] for _ in range(K)] for _ in range(B)]
        n = t + 1
        for b in range(B):
            if done[b]:
                continue
            cand = part[b]
            # best first; ties by flat index (what argmax picks), so width 1 == greedy
            cand = cand[np.lexsort((cand, -total[b, cand]))]
            alive = 0
            for rank, c in enumerate(cand):
                s = total[b, c]
                if not np.isfinite(s):
                    break
                k, tok = divmod(int(c), V)
                prev = seqs[b][k]
                if is_final(b, prev, tok):
                    if rank < K:
                        finished[b].append(Hypothesis(prev + [tok], float(s),
                                                      float(s) / length_penalty_factor(n, alpha), True))
                    continue
                new_scores[b, alive] = s
                parents[b, alive] = k
                new_last[b, alive] = tok
                new_seqs[b][alive] = prev + [tok]
                alive += 1
                if alive == K:
                    break
            # done when n_best are finished and no alive beam can beat the worst kept one
            if len(finished[b]) >= n_best:
                finished[b].sort(key=lambda h: -h.score)
                del finished[b][n_best:]
                worst = finished[b][-1].score
                best_alive = new_scores[b].max()
                if alpha > 0:
                    bound = best_alive / length_penalty_factor(max_len, alpha) if best_alive < 0 else best_alive
                else:
                    bound = best_alive
                if not np.isfinite(best_alive) or bound <= worst:
                    done[b] = True
            elif not np.isfinite(new_scores[b]).any():
                done[b] = True              # nothing left to expand
        scores = new_scores
        seqs = new_seqs
        if done.all():
            break
        idx = (np.arange(B)[:, None] * K + parents).reshape(-1)
        state = reorder(state, idx)
        last = new_last.reshape(-1)
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
    """A wall-clock training budget: ``wrap(batches)`` yields batches until
    ``minutes`` have passed since the budget was made (None: no limit), then
    stops the epoch early and sets ``hit``; ``expired()`` for fit's
    on_epoch_end.  The wrapped list keeps its len() for the progress bar."""

    def __init__(self, minutes):
        import time
        self.deadline = None if not minutes else time.perf_counter() + 60.0 * float(minutes)
        self.hit = False

    def expired(self):
        import time
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.hit = True
        return self.hit

    def wrap(self, batches):
        return _Budgeted(list(batches), self)


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
    return threadpool_limits(limits=int(n), user_api="blas")
