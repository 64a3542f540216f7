"""The pointwise loops of the by-rows parts compile to vector code.

A loop LLVM leaves scalar still gives the right numbers, so the kernel
tests cannot see it; it only runs 5-10x slower (a training cell with two
more stores in its loop ran at 26.6 ns a unit against 3.3). Each division
in these loops (the sigmoid's and tanh's) must appear in vector form
wherever it appears in scalar form (the remainder loop LLVM keeps beside
each vector loop): a loop left scalar has scalar divisions only."""
import re

import numpy as np
import pytest
from numba import njit

from fastrnn._kernels.cpu import gru, lstm, rnn


@njit(cache=False)
def _lstm(t, n, gp, bias, hx, h0, cp, perm, training, y, Hs, Gs, Cs, TCs):
    lstm._cells_rows(t, n, gp, bias, hx, h0, cp, perm, training, y, Hs, Gs, Cs, TCs)


@njit(cache=False)
def _rnn(t, n, xg, gp, bias, hp, perm, relu, training, y, Hs, As):
    rnn._fwd_rows(t, n, xg, gp, bias, hp, perm, relu, training, y, Hs, As)


@njit(cache=False)
def _gru(t, n, xg, gp, bx, bhn, hp, perm, training, y, Hs, Gs, HNs):
    gru._fwd_rows(t, n, xg, gp, bx, bhn, hp, perm, training, y, Hs, Gs, HNs)


def _divisions(fn):
    ir = "\n".join(fn.inspect_llvm().values())
    vector = len(re.findall(r"fdiv[a-z ]*<\d+ x float>", ir))
    scalar = len(re.findall(r"fdiv[a-z ]* float ", ir))
    return vector, scalar


@pytest.mark.parametrize("name", ["lstm", "rnn", "gru"])
def test_row_cells_are_vectorised(name):
    f = np.float32
    a1, a2, a3 = np.zeros(16, f), np.zeros((2, 16), f), np.zeros((2, 2, 16), f)
    perm = np.arange(2)
    # training is a runtime flag: both of its loops are in the one function
    if name == "lstm":
        _lstm(0, 2, a2, a1, a2, 0, a2, perm, False, a3, a3, a3, a3, a3)
        fn = _lstm
    elif name == "rnn":
        _rnn(0, 2, a3, a2, a1, a2, perm, False, False, a3, a3, a3)
        fn = _rnn
    else:
        _gru(0, 2, a3, a2, a1, a1, a2, perm, False, a3, a3, a3, a3)
        fn = _gru
    vector, scalar = _divisions(fn)
    assert scalar > 0, "no divisions found: the test no longer sees the loops"
    assert vector >= scalar, f"{name}: {vector} vector against {scalar} scalar divisions (a loop left scalar)"
