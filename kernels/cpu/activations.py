"""Activations for the Numba kernels, chosen by dtype at compile time.

float32: a [13/6] rational approximation of tanh (the minimax form Eigen
popularised; max abs error 3.9e-7 over all float32, |tanh| <= 1 exactly at
the clamp), written with no branches and no libm calls so LLVM vectorises
the loops that use it.  sigmoid(x) = 0.5 + 0.5 * tanh(x / 2).
PyPI's llvmlite has no SVML, so np.tanh / math.exp inside @njit are scalar
libm calls (~16 ns/element measured here, vs ~2 ns for this form): at an
LSTM's 4 activations per hidden unit and step, that alone would cost more
than torch's whole forward+backward.

float64: the exact libm functions, so float64 results agree with the
float64 reference (and torch.nn) to ~1e-15 relative.
"""
import math

import numpy as np
from numba import types
from numba.extending import overload

_CLAMP = 7.90531110763549805  # tanh(x) rounds to +-1 in float32 beyond this
_A1, _A3, _A5 = 4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05
_A7, _A9 = 5.12229709037114e-08, -8.60467152213735e-11
_A11, _A13 = 2.00018790482477e-13, -2.76076847742355e-16
_B0, _B2 = 4.89352518554385e-03, 2.26843463243900e-03
_B4, _B6 = 1.18534705686654e-04, 1.19825839466702e-06


def tanh_(x):
    """tanh for the kernels (see module docstring); scalar argument."""
    return math.tanh(x)


def sigmoid_(x):
    """logistic sigmoid for the kernels; scalar argument."""
    return 1.0 / (1.0 + math.exp(-x))


@overload(tanh_)
def _tanh_impl(x):
    if x == types.float32:
        clamp = np.float32(_CLAMP)
        a1, a3, a5, a7 = np.float32(_A1), np.float32(_A3), np.float32(_A5), np.float32(_A7)
        a9, a11, a13 = np.float32(_A9), np.float32(_A11), np.float32(_A13)
        b0, b2, b4, b6 = np.float32(_B0), np.float32(_B2), np.float32(_B4), np.float32(_B6)

        def impl(x):
            # Written so that NaN passes through (both comparisons are
            # false for NaN): the kernels must not turn NaN into +-1.
            xc = clamp if x > clamp else x
            xc = -clamp if xc < -clamp else xc
            u = xc * xc
            p = xc * (a1 + u * (a3 + u * (a5 + u * (a7 + u * (a9 + u * (a11 + u * a13))))))
            q = b0 + u * (b2 + u * (b4 + u * b6))
            return p / q
        return impl
    if x == types.float64:
        def impl(x):
            return math.tanh(x)
        return impl


@overload(sigmoid_)
def _sigmoid_impl(x):
    if x == types.float32:
        half = np.float32(0.5)

        def impl(x):
            return half + half * tanh_(half * x)
        return impl
    if x == types.float64:
        def impl(x):
            # exp(-x) overflows to inf for x < -709: 1/(1+inf) = 0, no NaN.
            return 1.0 / (1.0 + math.exp(-x))
        return impl
