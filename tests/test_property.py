"""Hypothesis: random shapes, lengths, directions and initial states, every
output and gradient of the Numba backend against the float64 oracle."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn

from .helpers import check_backend


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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_numba_matches_oracle_on_random_problems(p):
    mode = p.pop("mode")
    lengths = p.pop("lengths")
    check_backend(mode, "numba", lengths="full" if lengths is None else lengths, **p)
