"""Gradients of the reference BiLSTM against finite differences in float64.

Every test builds the scalar loss

    L = sum(dy * y) + sum(dh_n * h_n) + sum(dc_n * c_n)

from random upstream gradients ``dy``, ``dh_n`` and ``dc_n``.  Its gradient
with respect to any input is exactly what ``bilstm.backward(result, dy,
dh_n=dh_n, dc_n=dc_n)`` returns, so each returned array (``dx``, the six
parameter gradients, ``dh0`` and ``dc0``) is compared entry by entry with a
numerical derivative of ``L``.

Error norm: ``max|analytic - numeric| / max|numeric|`` over the whole array,
at most :data:`RTOL`.  An array whose numerical derivative is exactly 0
(for example ``dW_ih`` when every length is 0) must be exactly 0.
"""

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

import bilstm

RTOL = 1e-7
"""Maximum whole-array relative error of any gradient."""

# Richardson-extrapolated central difference, (4 D(h) - D(2h)) / 3 with
# D(h) = (L(+h) - L(-h)) / (2h), which is the five-point stencil
# (L(-2h) - 8 L(-h) + 8 L(+h) - L(+2h)) / (12h).  Its truncation error is
# h^4 |L^(5)| / 30 and its rounding error about 1.5 eps |L| / h.  With
# h = 1e-3, pre-activations of order 1 and |L| of order 10, both are
# estimated near 1e-12.  Measured over 150 random cases with every size from
# 1 to 4, the worst whole-array error was 1.2e-10, well below RTOL.
STEP = 1e-3

ALL_MERGE_MODES = ("concat", "sum", "average", "multiply", None, "ave", "mul")
GRADIENT_NAMES = ("x", *bilstm.PARAM_NAMES, "h0", "c0")


@dataclass(frozen=True)
class Case:
    """Sizes and options of one gradient check; ``seed`` fixes every draw."""

    n_ex: int
    n_in: int
    hidden_size: int
    n_t: int
    merge_mode: str | None = "concat"
    lengths: tuple | None = None
    with_states: bool = True
    seed: int = 0

    def __str__(self):
        return (
            f"forward(x of shape ({self.n_ex}, {self.n_in}, {self.n_t}), H={self.hidden_size}, "
            f"merge_mode={self.merge_mode!r}, lengths={self.lengths}, "
            f"h0/c0={'random' if self.with_states else 'None'}) with seed={self.seed}"
        )


@dataclass
class Problem:
    """Inputs and upstream gradients drawn for one :class:`Case`.

    ``inputs`` maps ``"x"``, every parameter name, ``"h0"`` and ``"c0"`` to
    float64 arrays; ``h0`` and ``c0`` are zeros when the case has no states.
    """

    case: Case
    inputs: dict
    dy: np.ndarray
    dh_n: np.ndarray
    dc_n: np.ndarray


def draw_problem(case):
    """Draw a :class:`Problem` from ``case.seed`` without touching global random state."""
    rng = np.random.default_rng(case.seed)
    state_shape = (2, case.n_ex, case.hidden_size)

    # init_params draws every tensor independently, so the biases are
    # non-zero and the two directions have different weights.
    inputs = dict(bilstm.init_params(case.n_in, case.hidden_size, rng=rng, scale=0.8))
    inputs["x"] = rng.standard_normal((case.n_ex, case.n_in, case.n_t))
    if case.with_states:
        inputs["h0"] = 0.5 * rng.standard_normal(state_shape)
        inputs["c0"] = rng.standard_normal(state_shape)
    else:
        inputs["h0"] = np.zeros(state_shape)
        inputs["c0"] = np.zeros(state_shape)

    y_shape = bilstm.output_shape(case.n_ex, case.hidden_size, case.n_t, case.merge_mode)
    return Problem(
        case=case,
        inputs=inputs,
        dy=rng.standard_normal(y_shape),
        dh_n=rng.standard_normal(state_shape),
        dc_n=rng.standard_normal(state_shape),
    )


def run_forward(problem, inputs, *, pass_states=True):
    """Call :func:`bilstm.forward` on ``inputs``, or with h0=c0=None when ``pass_states`` is False."""
    params = {name: inputs[name] for name in bilstm.PARAM_NAMES}
    states = {"h0": inputs["h0"], "c0": inputs["c0"]} if pass_states else {}
    lengths = problem.case.lengths
    return bilstm.forward(
        inputs["x"], params,
        merge_mode=problem.case.merge_mode,
        lengths=None if lengths is None else np.array(lengths, dtype=np.int64),
        **states,
    )


def loss(problem, inputs):
    """Return L for ``inputs``, whose gradient is what backward returns for the problem."""
    result = run_forward(problem, inputs)
    return (
        np.sum(problem.dy * result.y)
        + np.sum(problem.dh_n * result.h_n)
        + np.sum(problem.dc_n * result.c_n)
    )


def numerical_gradient(problem, name):
    """Return dL/d``inputs[name]`` by the Richardson-extrapolated central difference."""
    base = problem.inputs[name]
    grad = np.zeros_like(base)

    for index in np.ndindex(base.shape):
        values = {}
        for multiple in (-2, -1, 1, 2):
            shifted = base.copy()
            shifted[index] += multiple * STEP
            values[multiple] = loss(problem, {**problem.inputs, name: shifted})

        # Differences first, so an input that L does not depend on gets
        # exactly 0 rather than the rounding error of a weighted sum.
        near = values[1] - values[-1]
        far = values[2] - values[-2]
        grad[index] = (8 * near - far) / (12 * STEP)
    return grad


def analytic_gradients(problem):
    """Return backward's gradients as a dict keyed like :data:`GRADIENT_NAMES`."""
    result = run_forward(problem, problem.inputs, pass_states=problem.case.with_states)
    grads = bilstm.backward(result, problem.dy, dh_n=problem.dh_n, dc_n=problem.dc_n)
    return {"x": grads.dx, **grads.dparams, "h0": grads.dh0, "c0": grads.dc0}


def gradient_error_message(name, analytic, numeric, case):
    """Describe the worst entry of a failed comparison, with the case to replay."""
    diff = np.abs(analytic - numeric)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    scale = np.max(np.abs(numeric))
    relative = diff[worst] / scale if scale > 0 else np.inf
    return (
        f"d{name}: worst entry {worst} is analytic {analytic[worst]!r}, numeric "
        f"{numeric[worst]!r}; abs error {diff[worst]:.3e}, error / max|numeric| = "
        f"{relative:.3e} > RTOL={RTOL:.0e} (five-point stencil, step {STEP}); {case}"
    )


def assert_gradient_matches(name, analytic, numeric, case):
    """Assert the whole-array relative error bound, or exact zeros when numeric is 0."""
    assert analytic.shape == numeric.shape, f"d{name} has shape {analytic.shape}, expected {numeric.shape}; {case}"

    scale = np.max(np.abs(numeric), initial=0.0)
    error = np.max(np.abs(analytic - numeric), initial=0.0)
    if scale == 0:
        assert error == 0, gradient_error_message(name, analytic, numeric, case)
    else:
        assert error <= RTOL * scale, gradient_error_message(name, analytic, numeric, case)


def check_all_gradients(case):
    """Compare every gradient of ``case`` with its numerical derivative."""
    problem = draw_problem(case)
    analytic = analytic_gradients(problem)

    for name in GRADIENT_NAMES:
        numeric = numerical_gradient(problem, name)
        assert_gradient_matches(name, analytic[name], numeric, case)


# Four examples whose lengths 0, 1, n_t and a middle value cover an empty
# sequence, a single step, no padding and partial padding in one batch.
MIXED_LENGTHS = (0, 1, 3, 2)


@pytest.mark.parametrize("with_states", [True, False], ids=["h0=random", "h0=None"])
@pytest.mark.parametrize("lengths", [None, MIXED_LENGTHS], ids=["lengths=None", "lengths=0,1,3,2"])
@pytest.mark.parametrize("merge_mode", ALL_MERGE_MODES, ids=repr)
def test_gradients_every_merge_mode(merge_mode, lengths, with_states):
    check_all_gradients(Case(
        n_ex=4, n_in=2, hidden_size=2, n_t=3,
        merge_mode=merge_mode, lengths=lengths, with_states=with_states, seed=11,
    ))


EDGE_CASES = {
    "lengths=all 0": Case(2, 2, 2, 3, "concat", lengths=(0, 0), seed=1),
    "lengths=all 1": Case(2, 2, 2, 3, "multiply", lengths=(1, 1), seed=2),
    "lengths=all n_t": Case(2, 2, 2, 3, "average", lengths=(3, 3), seed=3),
    "n_t=1": Case(2, 2, 3, 1, "concat", seed=4),
    "n_ex=n_in=H=n_t=1": Case(1, 1, 1, 1, "multiply", lengths=(1,), seed=5),
    "H=4, n_in=3": Case(2, 3, 4, 4, None, lengths=(4, 2), seed=6),
}


@pytest.mark.parametrize("case", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_gradients_edge_sizes(case):
    check_all_gradients(case)


@pytest.mark.parametrize("source", ["dy", "dh_n", "dc_n"])
def test_gradients_single_upstream(source):
    # With only one upstream gradient non-zero, a term that backward drops
    # or routes to the wrong place cannot be hidden by the other two.
    problem = draw_problem(Case(3, 2, 2, 3, "concat", lengths=(3, 0, 2), seed=21))
    for other in {"dy", "dh_n", "dc_n"} - {source}:
        setattr(problem, other, np.zeros_like(getattr(problem, other)))

    analytic = analytic_gradients(problem)
    for name in GRADIENT_NAMES:
        numeric = numerical_gradient(problem, name)
        assert_gradient_matches(name, analytic[name], numeric, problem.case)


@st.composite
def cases(draw, *, max_size=3):
    """Draw a :class:`Case` with every size in [1, max_size].

    Shrinks towards size 1, merge mode "concat", no lengths and no states.
    """
    n_ex, n_in, hidden_size, n_t = (draw(st.integers(1, max_size)) for _ in range(4))
    lengths = draw(st.none() | st.tuples(*[st.integers(0, n_t)] * n_ex))
    return Case(
        n_ex=n_ex, n_in=n_in, hidden_size=hidden_size, n_t=n_t,
        merge_mode=draw(st.sampled_from(ALL_MERGE_MODES)),
        lengths=lengths,
        with_states=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def test_cases_minimal_example():
    minimal = find(cases(), lambda case: True)

    assert minimal == Case(1, 1, 1, 1, "concat", lengths=None, with_states=False, seed=0)


@settings(max_examples=20, deadline=None)
@given(case=cases())
def test_gradients_random_cases(case):
    check_all_gradients(case)


def test_backward_twice_identical():
    problem = draw_problem(Case(3, 2, 3, 4, "multiply", lengths=(4, 1, 0), seed=31))
    result = run_forward(problem, problem.inputs)

    first = bilstm.backward(result, problem.dy, dh_n=problem.dh_n, dc_n=problem.dc_n)
    second = bilstm.backward(result, problem.dy, dh_n=problem.dh_n, dc_n=problem.dc_n)

    np.testing.assert_array_equal(second.dx, first.dx)
    for name in bilstm.PARAM_NAMES:
        np.testing.assert_array_equal(second.dparams[name], first.dparams[name], err_msg=name)
    np.testing.assert_array_equal(second.dh0, first.dh0)
    np.testing.assert_array_equal(second.dc0, first.dc0)


def padded_output_mask(y_shape, lengths, merge_mode):
    """Return a boolean mask of ``y``'s padded steps, broadcast to ``y_shape``."""
    steps = np.arange(y_shape[-1])
    padded = steps[None, :] >= np.asarray(lengths)[:, None]      # (n_ex, n_t)
    if merge_mode is None:
        return np.broadcast_to(padded[None, :, None, :], y_shape)
    return np.broadcast_to(padded[:, None, :], y_shape)


@pytest.mark.parametrize("merge_mode", ["concat", "multiply", None], ids=repr)
def test_nan_dy_at_padding_ignored(merge_mode):
    problem = draw_problem(Case(3, 2, 2, 4, merge_mode, lengths=(4, 2, 0), seed=41))
    result = run_forward(problem, problem.inputs)
    padded = padded_output_mask(result.y.shape, problem.case.lengths, merge_mode)
    dy_zero = np.where(padded, 0.0, problem.dy)
    dy_nan = np.where(padded, np.nan, problem.dy)

    clean = bilstm.backward(result, dy_zero, dh_n=problem.dh_n, dc_n=problem.dc_n)
    dirty = bilstm.backward(result, dy_nan, dh_n=problem.dh_n, dc_n=problem.dc_n)

    np.testing.assert_array_equal(dirty.dx, clean.dx)
    for name in bilstm.PARAM_NAMES:
        np.testing.assert_array_equal(dirty.dparams[name], clean.dparams[name], err_msg=name)
    np.testing.assert_array_equal(dirty.dh0, clean.dh0)
    np.testing.assert_array_equal(dirty.dc0, clean.dc0)


def test_dx_zero_at_padding():
    problem = draw_problem(Case(3, 2, 2, 4, "sum", lengths=(4, 1, 0), seed=51))
    result = run_forward(problem, problem.inputs)
    dx = bilstm.backward(result, problem.dy, dh_n=problem.dh_n, dc_n=problem.dc_n).dx

    padded = padded_output_mask(dx.shape, problem.case.lengths, "sum")
    assert np.all(dx[padded] == 0), f"dx at padded steps: {dx[padded]}"
    assert np.all(dx[~padded] != 0), "dx is 0 at a valid step, so the check above proves nothing"
