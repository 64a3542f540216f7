"""The pointwise loops of the by-rows parts compile to vector code.

A loop LLVM leaves scalar still gives the right numbers, so the kernel
tests cannot see it; it only runs 5-10x slower (an LSTM training cell
with its two saved-state stores in the same loop ran at 26.6 ns a unit
against 3.3). Each wrapper below fixes the training flag, so that only
one branch's loop survives LLVM's constant folding; the divisions in that
loop (the sigmoid's and tanh's) must then appear in vector form: a loop
left scalar has none."""
import re

import numpy as np
import pytest
from numba import njit

from fastrnn._kernels.cpu import gru, lstm, rnn


def _wrappers(training):
    # sg an argument, not made inside: the cells are inlined into their
    # callers (common.inner_inline), and with a (0, 0) sg made here LLVM
    # would fold the streamed-saves loop away
    @njit(cache=False)
    def lstm_cells(t, n, gp, bias, hx, h0, cp, perm, y, Hs, Gs, Cs, TCs, sg):
        lstm._cells_rows(t, n, gp, bias, hx, h0, cp, perm, training, y, Hs, Gs, Cs, TCs, sg)

    @njit(cache=False)
    def rnn_tanh(t, n, xg, gp, bias, hp, perm, y, Hs, As):
        rnn._fwd_rows(t, n, xg, gp, bias, hp, perm, False, training, y, Hs, As)

    @njit(cache=False)
    def gru_cells(t, n, xg, gp, bx, bhn, hp, perm, y, Hs, Gs, HNs, sg):
        gru._fwd_rows(t, n, xg, gp, bx, bhn, hp, perm, training, y, Hs, Gs, HNs, sg)
    return lstm_cells, rnn_tanh, gru_cells


def _divisions(fn):
    ir = "\n".join(fn.inspect_llvm().values())
    return len(re.findall(r"fdiv[a-z ]*<\d+ x float>", ir)), len(re.findall(r"fdiv[a-z ]* float ", ir))


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", ["lstm", "rnn_tanh", "gru"])
def test_row_cells_are_vectorised(name, training):
    H, B = 16, 2

    def z(*shape):
        return np.zeros(shape, np.float32)
    perm = np.arange(B)
    lstm_cells, rnn_tanh, gru_cells = _wrappers(training)
    # every array the shape the kernels give it (nothing is bounds-checked)
    if name == "lstm":
        fn = lstm_cells
        fn(0, B, z(B, 4 * H), z(4 * H), z(B, H), 0, z(B, H), perm, z(1, B, H), z(1, B, H), z(1, B, 4 * H),
           z(1, B, H), z(1, B, H), z(0, 0))
    elif name == "rnn_tanh":
        fn = rnn_tanh
        fn(0, B, z(1, B, H), z(B, H), z(H), z(B, H), perm, z(1, B, H), z(1, B, H), z(1, B, H))
    else:
        fn = gru_cells
        fn(0, B, z(1, B, 3 * H), z(B, 3 * H), z(3 * H), z(H), z(B, H), perm, z(1, B, H), z(1, B, H),
           z(1, B, 3 * H), z(1, B, H), z(0, 0))
    vector, scalar = _divisions(fn)
    assert vector + scalar > 0, "no divisions found: the test no longer sees the loop"
    assert vector > 0, f"{name}, training={training}: {scalar} scalar divisions and no vector ones (the loop ran scalar)"
    if name in ("lstm", "gru") and training:
        # two training loops, the saves by plain stores and by streaming
        # stores through a scratch row (kernels/cpu/stream.py): both in
        # vector form, twice the inference loop's vector divisions
        lstm_infer, _, gru_infer = _wrappers(False)
        if name == "lstm":
            infer = lstm_infer
            infer(0, B, z(B, 4 * H), z(4 * H), z(B, H), 0, z(B, H), perm, z(1, B, H), z(1, B, H),
                  z(1, B, 4 * H), z(1, B, H), z(1, B, H), z(0, 0))
        else:
            infer = gru_infer
            infer(0, B, z(1, B, 3 * H), z(B, 3 * H), z(3 * H), z(H), z(B, H), perm, z(1, B, H), z(1, B, H),
                  z(1, B, 3 * H), z(1, B, H), z(0, 0))
        assert vector >= 2 * _divisions(infer)[0], (vector, _divisions(infer))
