"""Hypothesis: random shapes, lengths, directions and initial states, every
output and gradient of the Numba backend against the float64 oracle."""
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fastrnn

from .helpers import _rel_err, check_backend, make_problem, run, run_stored_float32


@st.composite
def problems(draw):
    T = draw(st.integers(1, 12))
    B = draw(st.integers(1, 5))
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(0, T), min_size=B, max_size=B)))
    return dict(mode=draw(st.sampled_from(fastrnn.MODES)), T=T, B=B, I=draw(st.integers(1, 9)),
                H=draw(st.integers(1, 17)), lengths=None if lengths is None else np.array(lengths),
                reverse=draw(st.booleans()), h0=draw(st.booleans()),
                dtype=draw(st.sampled_from(["float64", "float32"])),
                seed=draw(st.integers(0, 2**31 - 1)))


# A draw Hypothesis found: y = -0.99921 at the one valid step, so 1 - y^2
# magnifies y's float32 rounding ~1270x in every gradient.  The kernel
# (1 - a*a in one fused multiply-add) is off 2.25e-5, the plain float32
# oracle 9.4e-6 by lucky rounding; the float32-stored-activation floor
# (run_stored_float32) is 2.26e-5.
ILL = dict(mode="rnn_tanh", T=5, B=2, I=9, H=1, lengths=np.array([0, 1]), reverse=False,
           h0=True, dtype="float32", seed=329)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
@example(ILL)
def test_numba_matches_oracle_on_random_problems(p):
    p = dict(p)
    mode = p.pop("mode")
    lengths = p.pop("lengths")
    check_backend(mode, "numba", lengths="full" if lengths is None else lengths, **p)


def _errors(mode, prob, reverse=False):
    ref = run(mode, prob, backend="numpy", dtype="float64", reverse=reverse)
    got = run(mode, prob, backend="numba", dtype="float32", reverse=reverse)
    stored = run_stored_float32(mode, prob, reverse=reverse)
    return {k: (_rel_err(got[k], ref[k]), _rel_err(stored[k], ref[k])) for k in stored}


def test_stored_float32_floor_explains_the_ill_conditioned_draw():
    p = dict(ILL)
    prob = make_problem(p["mode"], p["T"], p["B"], p["I"], p["H"], lengths=p["lengths"],
                        h0=p["h0"], seed=p["seed"])
    errs = _errors(p["mode"], prob)
    # the kernel is above the fixed 2e-5 but at the floor every float32
    # kernel has here: the widened yardstick is the conditioning, not slack
    assert errs["db_hh"][0] > 2e-5
    for name, (kern, floor) in errs.items():
        assert kern <= 1.05 * floor + 1e-7, (name, kern, floor)


@pytest.mark.parametrize("mode", fastrnn.MODES)
def test_stored_float32_floor_is_small_where_well_conditioned(mode):
    """On the default problems the floor is far under TOL, so it widens
    nothing there: a kernel off by 2e-5 still fails."""
    prob = make_problem(mode, 7, 3, 5, 13, lengths="random", seed=1)
    for name, (kern, floor) in _errors(mode, prob).items():
        assert floor < 2e-6, (name, floor)
        assert kern < 2e-5, (name, kern)
