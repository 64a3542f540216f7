"""Activations for the Numba kernels, chosen by dtype at compile time.

PyPI's llvmlite has no SVML, so np.tanh / math.exp inside @njit are scalar
libm calls (~16 ns/element measured here).  At an LSTM's 5 transcendental
functions per hidden unit and step that alone would cost more than torch's
whole forward+backward, so float32 gets branch-free, call-free forms that
LLVM vectorises (AVX2: ~0.4 ns per exp):

  exp(x)      Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, a
              degree-6 Taylor polynomial for e^r, and 2^n built directly in
              the exponent bits.  Max relative error 2.3e-7 on [-87, 88].
  sigmoid(x)  1 / (1 + exp(-x)): relatively accurate in both tails, so a
              gate saturated near 0 or 1 (and its derivative s(1-s)) is as
              accurate as with libm.
  tanh(x)     |x| >= 0.625: sign(x) (e - 1) / (e + 1) with e = exp(2|x|),
              accurate in the tails; |x| < 0.625: a [13/6] rational minimax
              form p / q (the one Eigen popularised), accurate to 2.2e-7
              relative near 0.  One division for both: the numerator and
              denominator are chosen, then divided (two divisions, one per
              form, cost an LSTM cell 8 % more time).

Every form lets NaN through (numba's min/max propagate NaN), and the range-reduction code is compiled without
'reassoc' so LLVM cannot fold the two-part ln2 back together.

float64: the exact libm functions, so float64 results agree with the
float64 reference (and torch.nn) to ~1e-15 relative.
"""
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

# compiled into the callers, without 'reassoc' (see above)
_EXACT_ORDER = {"fastmath": {"nsz", "arcp", "contract", "afn"}, "error_model": "numpy"}

f32 = np.float32
_LOG2E = f32(1.4426950408889634)
_LN2_HI = f32(0.693359375)          # few significant bits: n * _LN2_HI is exact
_LN2_LO = f32(-2.12194440e-4)       # ln2 - _LN2_HI
_XMAX, _XMIN = f32(88.0), f32(-87.0)
_E0, _E1, _E2, _E3, _E4, _E5, _E6 = (f32(1.0 / math.factorial(k)) for k in range(7))

_CLAMP = f32(7.90531110763549805)
_A1, _A3, _A5 = f32(4.89352455891786e-03), f32(6.37261928875436e-04), f32(1.48572235717979e-05)
_A7, _A9 = f32(5.12229709037114e-08), f32(-8.60467152213735e-11)
_A11, _A13 = f32(2.00018790482477e-13), f32(-2.76076847742355e-16)
_B0, _B2 = f32(4.89352518554385e-03), f32(2.26843463243900e-03)
_B4, _B6 = f32(1.18534705686654e-04), f32(1.19825839466702e-06)


@intrinsic
def _bits_as_f32(typingctx, x):
    """Reinterpret an int32 as a float32 (an LLVM bitcast, vectorisable)."""
    if x != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _select(typingctx, c, a, b):
    """a if c else b for float32 a, b: an LLVM select, which vectorises as
    a blend (a conditional expression in the inlined bodies below would
    reach Numba's IR as branches; see _tanh_impl)."""
    if not (isinstance(c, types.Boolean) and a == types.float32 and b == types.float32):
        return None

    def codegen(context, builder, sig, args):
        return builder.select(args[0], args[1], args[2])
    return types.float32(c, a, b), codegen


def exp_(x):
    """exp for the kernels (see module docstring); scalar argument."""
    return math.exp(x)


def tanh_(x):
    """tanh for the kernels (see module docstring); scalar argument."""
    return math.tanh(x)


def sigmoid_(x):
    """logistic sigmoid for the kernels; scalar argument."""
    return 1.0 / (1.0 + math.exp(-x))


@overload(exp_, jit_options=_EXACT_ORDER)
def _exp_impl(x):
    if x == types.float32:
        def impl(x):
            x = max(min(x, _XMAX), _XMIN)
            n = f32(np.floor(x * _LOG2E + f32(0.5)))
            r = x - n * _LN2_HI
            r = r - n * _LN2_LO
            p = _E0 + r * (_E1 + r * (_E2 + r * (_E3 + r * (_E4 + r * (_E5 + r * _E6)))))
            return p * _bits_as_f32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
        return impl
    if x == types.float64:
        return lambda x: math.exp(x)


@overload(tanh_, jit_options=_EXACT_ORDER, inline="always")
def _tanh_impl(x):
    if x == types.float32:
        def impl(x):
            # Written without conditional expressions (this body is inlined into
            # the kernels' IR); numba's min/max propagate NaN.
            # near 0: the rational form (clamped so the polynomial cannot run away)
            xc = max(min(x, _CLAMP), -_CLAMP)
            u = xc * xc
            p = xc * (_A1 + u * (_A3 + u * (_A5 + u * (_A7 + u * (_A9 + u * (_A11 + u * _A13))))))
            q = _B0 + u * (_B2 + u * (_B4 + u * _B6))
            # tails: (e^{2|x|} - 1) / (e^{2|x|} + 1), with x's sign; one
            # division for both forms (numerator and denominator chosen
            # first): e^{2|x|} >= e^1.25 there, so e - 1 cancels nothing
            ax = abs(x)
            e = exp_(f32(2) * ax)
            small = ax < f32(0.625)
            num = _select(small, p, math.copysign(e - f32(1), x))
            den = _select(small, q, e + f32(1))
            return num / den
        return impl
    if x == types.float64:
        return lambda x: math.tanh(x)


@overload(sigmoid_, jit_options=_EXACT_ORDER)
def _sigmoid_impl(x):
    if x == types.float32:
        def impl(x):
            return f32(1) / (f32(1) + exp_(-x))
        return impl
    if x == types.float64:
        # exp(-x) overflows to inf for x < -709: 1/(1+inf) = 0, no NaN.
        return lambda x: 1.0 / (1.0 + math.exp(-x))
