"""Gradient properties: the implementation's backward against its own forward.

Each property defines the scalar loss
``L = sum(dy * y) + sum(dh_n * h_n) + sum(dc_n * c_n)`` through the
implementation's forward pass (a fresh model for every evaluation, so state
kept between calls cannot bias the derivative), and checks the analytic
gradients from its backward against numerical directional derivatives of
``L`` with :func:`properties.gradcheck.check_gradients`.
"""

import numpy as np
from hypothesis.control import current_build_context, currently_in_test_context

from bilstm.params import PARAM_NAMES
from properties.catalog import register, run_backward, run_forward, upstream
from properties.errors import PropertyFailure
from properties.gradcheck import ScalarLoss, check_gradients


def _terms(case, subject, out, dy):
    """The products the loss sums, in float64."""
    terms = [np.asarray(dy, dtype=np.float64) * np.asarray(out.y, dtype=np.float64)]
    dh_n, dc_n = upstream(case, subject)
    if dh_n is not None and out.h_n is not None:
        terms.append(dh_n.astype(np.float64) * np.asarray(out.h_n, dtype=np.float64))
    if dc_n is not None and out.c_n is not None:
        terms.append(dc_n.astype(np.float64) * np.asarray(out.c_n, dtype=np.float64))
    return terms


def make_loss(subject, case, dy):
    """Return the :class:`ScalarLoss` of the case through a fresh model per evaluation."""
    def forward_at(point):
        params = {name: point.get(name, case.params[name]) for name in PARAM_NAMES}
        _, out = run_forward(subject, case, params=params, x=point.get("x", case.x),
                             h0=point.get("h0", case.h0), c0=point.get("c0", case.c0))
        return out

    def value(point):
        return float(sum(term.sum() for term in _terms(case, subject, forward_at(point), dy)))

    def magnitude(point):
        return float(sum(np.abs(term).sum() for term in _terms(case, subject, forward_at(point), dy)))

    return ScalarLoss(value, magnitude=magnitude)


def _point_and_grads(case, grads, names):
    """Select the tensors ``names`` and their analytic gradients."""
    point, analytic = {}, {}
    sources = {"x": (case.x, grads.dx), "h0": (case.h0, grads.dh0), "c0": (case.c0, grads.dc0)}
    for name in PARAM_NAMES:
        sources[name] = (case.params[name], None if grads.dparams is None else grads.dparams.get(name))

    for name in names:
        value, gradient = sources[name]
        point[name] = value
        if gradient is not None:
            analytic[name] = gradient
    return point, analytic


def _final_replay():
    """True while Hypothesis replays the minimal failing example for its report."""
    return currently_in_test_context() and current_build_context().is_final


def _check(subject, case, rng, names, dy=None):
    dy = case.dy if dy is None else dy
    model, _ = run_forward(subject, case)
    grads = run_backward(model, case, subject, dy=dy)
    point, analytic = _point_and_grads(case, grads, names)

    # One sampled entry is enough to fail; the entry-by-entry search for the
    # worst index runs only on the minimal case.
    max_entries = None if subject.detailed or _final_replay() else 1
    report = check_gradients(make_loss(subject, case, dy), point, analytic, rng=rng,
                             max_entries=max_entries)
    missing = [name for name in names if name not in analytic]
    if missing:
        raise PropertyFailure(f"backward returned no gradient for {', '.join(missing)}\n{report}")
    if not report.ok:
        raise PropertyFailure(str(report) + "\n  call: backward(dy) vs central differences of forward")


@register("gradient_input", requires=("backward",))
def gradient_input(subject, case, rng):
    """dx equals the derivative of the loss with respect to the input.

    The loss is sum(dy * y), plus sum(dh_n * h_n) + sum(dc_n * c_n) where
    the implementation accepts final-state gradients; the numerical
    derivative is a Richardson-extrapolated central difference along a
    random direction, with a tolerance derived from its error estimate.
    """
    _check(subject, case, rng, ["x"])


@register("gradient_params", requires=("backward", "param_gradients"))
def gradient_params(subject, case, rng):
    """Every parameter gradient of both directions equals the derivative of the loss.

    Checked tensor by tensor (input weights, recurrent weights and bias of
    each direction), each along its own random direction; a failing tensor
    is then checked entry by entry to name the worst gate, unit and
    direction.
    """
    _check(subject, case, rng, list(PARAM_NAMES))


@register("gradient_initial_state", requires=("backward", "initial_state", "state_gradients"),
          with_initial_states="always")
def gradient_initial_state(subject, case, rng):
    """dh0 and dc0 equal the derivatives of the loss with respect to the initial states."""
    _check(subject, case, rng, ["h0", "c0"])


@register("gradient_final_state",
          requires=("backward", "final_state", "state_gradients", "initial_state"),
          with_final_state_grads="always", with_initial_states="always")
def gradient_final_state(subject, case, rng):
    """Upstream gradients of the final states alone propagate correctly.

    With dy = 0 and random dh_n, dc_n, the gradients of the input, of every
    parameter and of the initial states equal the derivatives of
    sum(dh_n * h_n) + sum(dc_n * c_n).
    """
    names = ["x", "h0", "c0"]
    if subject.capabilities.param_gradients:
        names += list(PARAM_NAMES)
    _check(subject, case, rng, names, dy=np.zeros_like(case.dy))
