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
  tanh(x)     sign(x) e / (e + 2) with e = expm1(2|x|), |x| clamped to 9
              (tanh is +-1 in float32 beyond): one form over the whole
              range, no select between two.  From |x|, not x: for large |x|
              e is big and 1 - e / (e + 2) = 2 / (e + 2) is accurate, so a
              saturated unit's 1 - tanh^2 (its gradient) is too; with x
              itself, e -> -1 in the negative tail and e + 2 loses it (the
              float32 gradient of a unit at tanh = -0.9992 was 2.4x further
              from float64's).  expm1 reuses exp's range reduction:
              expm1(z) = 2^n expm1(r) + (2^n - 1), with expm1(r) =
              r + r^2 (1/2! + ... + r^5/7!) (the r^8/8! term left out is
              under 2e-8 relative at |r| <= ln2/2), so near 0 (n = 0) it is
              r itself plus a small correction: relatively accurate where
              e - 1 would cancel.  Max relative error 1.9e-7, against 2.8e-7
              for the form it replaced (a [13/6] rational form near 0 and
              (e^{2|x|} - 1) / (e^{2|x|} + 1) beyond, both computed and one
              chosen), whose two forms made the LSTM cell 19-24 % slower
              (2.9-3.1 against 2.3-2.6 ns a unit, one thread, 16 rows;
              tanh alone 0.67-0.74 against 0.55 ns an element).

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

_TANH_CLAMP = f32(9.0)              # tanh(9) = 1 - 3e-8: 1 in float32
_E7 = f32(1.0 / math.factorial(7))


@intrinsic
def _bits_as_f32(typingctx, x):
    """Reinterpret an int32 as a float32 (an LLVM bitcast, vectorisable)."""
    if x != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


def exp_(x):
    """exp for the kernels (see module docstring); scalar argument."""
    return math.exp(x)


def tanh_(x):
    """tanh for the kernels (see module docstring); scalar argument."""
    return math.tanh(x)


def sigmoid_(x):
    """logistic sigmoid for the kernels; scalar argument."""
    return 1.0 / (1.0 + math.exp(-x))


# The range reduction exp and tanh share (float32): x = n ln2 + r with n
# the nearest integer to x / ln2 (_nearest_n), r = x - n ln2 in two parts
# (_reduced), and 2^n built in the exponent bits (_pow2, for |n| <= 126).
def _nearest_n(x):
    return np.floor(x / math.log(2) + 0.5)


def _reduced(x, n):
    return x - n * math.log(2)


def _pow2(n):
    return 2.0 ** n


@overload(_nearest_n, jit_options=_EXACT_ORDER)
def _nearest_n_impl(x):
    if x == types.float32:
        return lambda x: f32(np.floor(x * _LOG2E + f32(0.5)))


@overload(_reduced, jit_options=_EXACT_ORDER)
def _reduced_impl(x, n):
    if x == types.float32 and n == types.float32:
        def impl(x, n):
            r = x - n * _LN2_HI
            return r - n * _LN2_LO
        return impl


@overload(_pow2, jit_options=_EXACT_ORDER)
def _pow2_impl(n):
    if n == types.float32:
        return lambda n: _bits_as_f32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))


@overload(exp_, jit_options=_EXACT_ORDER)
def _exp_impl(x):
    if x == types.float32:
        def impl(x):
            x = max(min(x, _XMAX), _XMIN)
            n = _nearest_n(x)
            r = _reduced(x, n)
            p = _E0 + r * (_E1 + r * (_E2 + r * (_E3 + r * (_E4 + r * (_E5 + r * _E6)))))
            return p * _pow2(n)
        return impl
    if x == types.float64:
        return lambda x: math.exp(x)


@overload(tanh_, jit_options=_EXACT_ORDER)
def _tanh_impl(x):
    if x == types.float32:
        def impl(x):
            # compiled with _EXACT_ORDER's flags (no 'reassoc', like exp_;
            # LLVM inlines it into the kernels' loops); numba's min/max
            # propagate NaN
            z = f32(2) * min(abs(x), _TANH_CLAMP)
            n = _nearest_n(z)
            r = _reduced(z, n)
            em1r = r + (r * r) * (_E2 + r * (_E3 + r * (_E4 + r * (_E5 + r * (_E6 + r * _E7)))))
            s = _pow2(n)
            e = s * em1r + (s - f32(1))         # expm1(z)
            return math.copysign(e / (e + f32(2)), x)
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
