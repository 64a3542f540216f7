"""The NumPy reference backend: the oracle, exposed through the dispatcher."""
from __future__ import annotations

from .. import reference
from ..cells import MODES


class NumpyReference:
    name = "numpy"
    priority = 0
    modes = MODES
    dtypes = ("float32", "float64")
    array_module_name = "numpy"

    def probe(self):
        return True, "plain NumPy (the reference; slow, float64-capable)"

    def forward(self, mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training):
        return reference.forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training)

    def backward(self, payload, dy, dh_n, dc_n):
        return reference.backward(payload, dy, dh_n, dc_n)


BACKEND = NumpyReference()
