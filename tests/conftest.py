"""Fixtures shared by the tests of the command line and of case files."""

import numpy as np
import pytest

import bilstm
from properties.strategies import Case, Sizes


def _build_case(*, merge_mode="concat", dtype="float64", optional=False, seed=0):
    sizes = Sizes(n_ex=3, n_in=2, hidden=2, n_t=4)
    rng = np.random.default_rng(seed)
    state_shape = (2, sizes.n_ex, sizes.hidden)
    dy_shape = bilstm.output_shape(sizes.n_ex, sizes.hidden, sizes.n_t, merge_mode)

    def draw(shape):
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)

    # init_params draws from [-1/sqrt(H), 1/sqrt(H)], the "typical" weight scale.
    params = bilstm.init_params(sizes.n_in, sizes.hidden, rng=rng, dtype=dtype)
    x = draw((sizes.n_ex, sizes.n_in, sizes.n_t))
    dy = draw(dy_shape)
    if not optional:
        return Case(sizes=sizes, merge_mode=merge_mode, dtype=dtype, params=params,
                    x=x, dy=dy, weight_scale="typical")

    return Case(
        sizes=sizes, merge_mode=merge_mode, dtype=dtype, params=params, x=x, dy=dy,
        lengths=np.array([4, 2, 3], dtype=np.int64),
        h0=draw(state_shape), c0=draw(state_shape),
        dh_n=draw(state_shape), dc_n=draw(state_shape),
        weight_scale="typical",
    )


@pytest.fixture
def make_case():
    """Return a factory of cases with n_ex=3, n_in=2, H=2, n_t=4.

    Call it as ``make_case(merge_mode=..., dtype=..., optional=..., seed=...)``.
    With ``optional=True`` every optional array is present: ``lengths`` with
    two padded examples, and ``h0``, ``c0``, ``dh_n``, ``dc_n`` of shape
    (2, n_ex, H).  Otherwise all of them are None.
    """
    return _build_case


@pytest.fixture
def full_case():
    """A float32 case with merge mode None and every optional array present."""
    return _build_case(merge_mode=None, dtype="float32", optional=True)
