r"""Gradient checks: analytic vector-Jacobian products against numerical derivatives.

An implementation under test returns, for upstream gradients of its outputs,
the gradient of the scalar loss they define with respect to every input
tensor.  This module differentiates that same loss numerically, through the
implementation's own forward pass, and compares.

The loss
--------
The caller supplies ``loss(point) -> float``, where ``point`` is a dict from
tensor name (``"x"``, ``"W_ih_fwd"``, ..., ``"h0"``, ``"c0"``) to ndarray.
:class:`ScalarLoss` wraps it with two optional extras: a vectorised
``batched`` form and a ``magnitude`` that sets the rounding term of the
tolerance.  A plain callable is accepted wherever a :class:`ScalarLoss` is.

Numerical derivatives
---------------------
A directional derivative along ``v`` is the derivative of the 1-D function
:math:`\phi(s) = L(p + s v)` at :math:`s = 0`.

- ``method="central"``: central differences with Richardson extrapolation by
  :func:`scipy.differentiate.derivative`, which returns an error estimate
  with each value (see :data:`STEP_SETTINGS` for the step and order per
  dtype).
- ``method="complex-step"``: :math:`\operatorname{Im} L(p + i h v) / h` with
  :math:`h = 10^{-30}`.  It has no subtractive cancellation, so it is exact to
  a few eps, but the loss must accept complex128 arrays and keep the
  imaginary part.

Tolerance
---------
Each comparison passes when

.. math::

    |a - n| \le k\,e + G\,\varepsilon_f\,(c_L F + A)
                  + c_g\,\varepsilon_g\,D

where :math:`a` is the analytic and :math:`n` the numerical derivative and

- :math:`e` is the error estimate of the finite-difference result: the
  larger change between the chosen Richardson iterate of
  :func:`scipy.differentiate.derivative` and its two neighbours (0 for the
  complex step);
- :math:`G = \sum_j |w_j| / h` is the noise gain of the stencil at the step
  :math:`h` that produced the result: an absolute error :math:`\delta` in
  each loss value moves the estimate by at most :math:`G \delta` (0 for the
  complex step);
- :math:`\varepsilon_f` is the machine epsilon of the dtype the loss is
  evaluated in, and :math:`\varepsilon_g` that of the analytic gradients;
- :math:`F` is the magnitude of the loss (:attr:`ScalarLoss.magnitude`) and
  :math:`A = \sum_i |g_i p_i|` over the entries the direction moves, because
  :math:`p + s v` is itself rounded to the point's dtype;
- :math:`D = \lVert g_t \rVert_2 + \lVert g \rVert_2` scales the rounding
  of the analytic gradient and of the complex-step derivative.  Here
  :math:`g_t` is the analytic gradient of the tensor the direction moves and
  :math:`g` all analytic gradients passed in together.  Every tensor's
  gradient is assembled from the same backpropagated state gradients, so
  a small gradient (a bias whose gates saturate, say) carries rounding
  errors of the size of the larger ones;
- :math:`k`, :math:`c_L` and :math:`c_g` are the constants in
  :data:`TOLERANCE_CONSTANTS`, each with its reason.

Only the error estimate carries the safety factor :math:`k`, because it is
an estimate.  The two rounding terms are bounds: the triangle inequality
over the stencil's weights, with :math:`c_L` and :math:`c_g` bounding the
measured rounding of the reference.  The complex step has
:math:`e = G = 0` and adds :math:`c_g \varepsilon_f D` for its own rounding.

float32
-------
A float32 point is evaluated by the float32 forward pass, while scipy's
arithmetic runs in float64 on the returned values.  The float32 rounding is
then noise of about :math:`\varepsilon_f F` in every loss value, which a
stencil amplifies by :math:`G`.  Three things keep that honest: larger steps
and a lower order for float32 (:data:`STEP_SETTINGS`), the term
:math:`G \varepsilon_f (c_L F + A)` in the tolerance, and the choice of the
iterate with the smallest :math:`k e + G \varepsilon_f (c_L F + A)`, because
scipy returns the last iterate, which is the noisiest once rounding
dominates.  The error :math:`e` of an iterate is its larger change to the
previous and the next iterate, because two iterates at large steps can
agree by chance.  The complex step evaluates a float32 point in complex128, so it
compares float32 gradients with a float64-precision derivative of the same
code.

Modes
-----
``mode="projection"`` compares :math:`\langle g, v \rangle` with the
directional derivative along one random unit vector per tensor.  A tensor
that fails is then checked entry by entry to find the worst index.
``mode="full"`` checks every entry of every tensor, which costs one
directional derivative per entry.

Example
-------
>>> import numpy as np
>>> point = {"w": np.array([0.5, -1.0])}
>>> loss = lambda p: float(np.sum(np.sin(p["w"])))
>>> report = check_gradients(loss, point, {"w": np.cos(point["w"])}, mode="full")
>>> report.ok
True
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.differentiate import derivative

from bilstm.params import GATES
from properties.errors import UsageError

MODES = ("projection", "full")
"""Check modes of :func:`check_gradients`."""

METHODS = ("central", "complex-step")
"""Numerical differentiation methods."""

POINT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
"""Dtypes a point may have. The loss is evaluated in the point's dtype."""


@dataclass(frozen=True)
class StepSettings:
    """Arguments of :func:`scipy.differentiate.derivative` for one dtype.

    Attributes
    ----------
    order : int
        Order of the finite-difference formula (even).
    initial_step : float
        Largest step, along a unit direction.
    step_factor : float
        Factor by which each iteration reduces the step.
    maxiter : int
        Number of iterations, at least 2 so that an error estimate exists.
    reason : str
        Why these values suit the dtype.
    """

    order: int
    initial_step: float
    step_factor: float
    maxiter: int
    reason: str


STEP_SETTINGS = {
    np.dtype(np.float64): StepSettings(
        order=8, initial_step=0.5, step_factor=2.0, maxiter=7,
        reason=(
            "scipy's default order and steps: pre-activations move by O(step) "
            "along a unit direction, and on the reference the best iterate had "
            "a step between 0.25 and 1/32, so 7 iterations (down to 1/128) "
            "pass the point where rounding overtakes truncation"
        ),
    ),
    np.dtype(np.float32): StepSettings(
        order=4, initial_step=0.5, step_factor=2.0, maxiter=5,
        reason=(
            "float32 loss values carry rounding noise up to ~1e-7 F, which the "
            "order 4 stencil amplifies by 3/h, so steps stay between 0.5 and 1/32; "
            "on the reference, orders 2 to 8 with first steps up to 2 gave no "
            "tighter tolerances"
        ),
    ),
}
"""Step settings of central differences, keyed by the point's dtype."""

COMPLEX_STEP = 1e-30
"""Imaginary step of complex-step differentiation.

Its truncation error is :math:`h^2 |L'''| / 6 \\approx 10^{-60} |L'''|`, far
below rounding, and ``p + 1e-30j * v`` loses nothing of ``p``.
"""

TOLERANCE_CONSTANTS = {
    "k": (
        4.0,
        "e, the larger change to the neighbouring iterates, overstates the error "
        "of converged iterates but may understate it for steps outside the "
        "asymptotic range",
    ),
    "c_L": (
        2.0,
        "the float32 reference loss stayed within 1.03 eps F of the float64 one in "
        "random cases with weight scales 1e-3 to 5, n_t up to 119 and H up to 16, "
        "and 2 leaves room for other summation orders",
    ),
    "c_g": (
        32.0,
        "every float32 reference gradient entry stayed within 2.3 eps D of the "
        "float64 one for weight scales up to 2 (n_t up to 119) and within 10 eps D "
        "for saturating weights of scale 5 (n_t up to 29)",
    ),
}
"""Constants of the tolerance: name -> (value, reason).

NOTE: with saturating weights (scale 5) and more than about 20 time steps,
a float32 reference gradient differed from the float64 one by up to 191 eps D
(n_t up to 119), so c_g is too small there and such cases can fail without
a bug, mostly with method="complex-step", whose tolerance has no other terms.

tests/test_gradcheck.py::test_rounding_constants_cover_reference re-checks
the measurements behind c_L and c_g on 40 random cases.
"""


# ---------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ScalarLoss:
    """A scalar loss of named tensors, with optional speed and accuracy hooks.

    Attributes
    ----------
    value : callable
        ``value(point) -> float`` for a dict ``point`` of name -> ndarray.
        It must not modify the arrays, which may be shared between points.
        For complex-step checks it receives complex128 arrays and must
        return a complex number.
    batched : callable or None
        ``batched(points) -> ndarray of shape (m,)`` where ``points`` maps
        every name to a stack of ``m`` arrays, shape ``(m, *shape)``.  When
        given, every group of loss evaluations takes one call.
    magnitude : callable or None
        ``magnitude(point) -> float``: the sum of the absolute values of the
        terms the loss adds up, :math:`F` in the tolerance.  Default:
        ``abs(value(point))``.
    """

    value: Callable
    batched: Callable | None = None
    magnitude: Callable | None = None

    def evaluate(self, points):
        """Evaluate the loss at a list of ``m`` points and return shape (m,)."""
        if self.batched is None:
            values = np.array([self.value(point) for point in points])
            if values.ndim != 1:
                raise UsageError(
                    f"loss returned values of shape {values.shape[1:]}; it must return "
                    f"a scalar, for example float(np.sum(dy * y))"
                )
            return values

        stacked = {name: np.stack([p[name] for p in points]) for name in points[0]}
        values = np.asarray(self.batched(stacked))
        if values.shape != (len(points),):
            raise UsageError(
                f"batched loss returned shape {values.shape} for {len(points)} points; "
                f"it must return one value per point, shape ({len(points)},)"
            )
        return values

    def scale(self, point):
        """Return :math:`F`, the magnitude that sets the loss's rounding error."""
        # NOTE: abs(value) underestimates F when the loss is a sum whose terms
        # cancel, so callers that know the terms should pass `magnitude`.
        if self.magnitude is None:
            return abs(float(_real_values(self.evaluate([point]))[0]))
        return float(self.magnitude(point))


def as_scalar_loss(loss):
    """Return ``loss`` as a :class:`ScalarLoss`, wrapping a plain callable."""
    if isinstance(loss, ScalarLoss):
        return loss
    if callable(loss):
        return ScalarLoss(loss)
    raise UsageError(
        f"loss must be a callable loss(point) -> float or a ScalarLoss, got "
        f"{type(loss).__name__}; wrap the implementation's forward pass in a function"
    )


# ---------------------------------------------------------------------------
# Directions and numerical derivatives
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Direction:
    """A direction in the space of points, supported on one tensor.

    Attributes
    ----------
    name : str
        The tensor it moves.
    index : ndarray of int or None
        Flat indices it moves; ``None`` means every entry.
    values : ndarray of float64
        Components at ``index`` (flat), or the whole direction, shaped like
        the tensor, when ``index`` is None.
    """

    name: str
    index: np.ndarray | None
    values: np.ndarray

    @classmethod
    def basis(cls, name, flat_index):
        """Return the unit vector along one entry of tensor ``name``."""
        return cls(name, np.array([flat_index]), np.ones(1))

    def moved(self, tensor, step):
        """Return ``tensor + step * direction`` in float64 (complex128 for a complex step)."""
        out = np.array(tensor, dtype=np.result_type(tensor, step, np.float64))
        if self.index is None:
            out += step * self.values
        else:
            out.flat[self.index] += step * self.values
        return out


def random_direction(rng, name, shape):
    """Draw a uniformly distributed unit direction on tensor ``name``.

    Gaussian components make every direction equally likely, so the
    direction is not aligned with a gate block or a time step on purpose and
    is all ones only for a one-entry tensor, where every unit direction is
    +1 or -1.
    """
    values = rng.standard_normal(shape)
    norm = np.linalg.norm(values)
    return Direction(name, None, values / norm if norm > 0 else values)


@dataclass(frozen=True)
class Derivative:
    """Numerical directional derivatives, one per direction.

    Attributes
    ----------
    value : ndarray of float64, shape (m,)
        The derivatives.
    error : ndarray, shape (m,)
        Error estimate: the larger change between the chosen Richardson
        iterate and its neighbours (0 for the complex step).
    noise_gain : ndarray, shape (m,)
        :math:`G = \\sum_j |w_j| / h` of the stencil that gave each value:
        an absolute error :math:`\\delta` in every loss value moves the
        result by at most :math:`G \\delta` (0 for the complex step).
    step : ndarray, shape (m,)
        Largest step of that stencil (the imaginary step for the complex step).
    method : str
        ``"central"`` or ``"complex-step"``.
    """

    value: np.ndarray
    error: np.ndarray
    noise_gain: np.ndarray
    step: np.ndarray
    method: str


def stencil_noise_gain(order, step_factor):
    """Return :math:`\\sum_j |w_j|` of scipy's central stencil with largest step 1.

    :func:`scipy.differentiate.derivative` evaluates the function at
    :math:`\\pm c^{-k}`, :math:`k = 0, \\dots, n - 1` (times the step), with
    :math:`n` half the order and :math:`c` the step factor.  The weights
    :math:`w_k` of the pair :math:`\\phi(c^{-k}) - \\phi(-c^{-k})` cancel every
    odd Taylor term up to order :math:`2n - 1` but the first, which gives one
    linear system.
    """
    n = (order + 1) // 2
    abscissae = float(step_factor) ** -np.arange(n, dtype=float)
    odd_moments = np.array([2 * abscissae ** (2 * m + 1) for m in range(n)])
    weights = np.linalg.solve(odd_moments, np.eye(n)[0])
    return 2 * float(np.abs(weights).sum())


class _LineFunction:
    """The 1-D functions :math:`s \\mapsto L(p + s v_j)`, elementwise over ``(s, j)``.

    :func:`scipy.differentiate.derivative` calls it with arrays of steps
    ``s`` and direction numbers ``j`` that broadcast together.  Every call
    becomes one :meth:`ScalarLoss.evaluate`.
    """

    def __init__(self, loss, point, directions, dtype):
        self.loss = loss
        self.point = point
        self.directions = directions
        self.dtype = dtype
        self.at_zero = None

    def __call__(self, s, j):
        s, j = np.broadcast_arrays(s, j)
        out = np.empty(s.shape)
        moving = s.ravel() != 0

        # scipy's first call evaluates every direction at s = 0, the same point.
        if not moving.all():
            out.ravel()[~moving] = self._value_at_zero()

        pairs = zip(s.ravel()[moving], np.rint(j.ravel()[moving]).astype(int))
        points = [self._moved_point(step, number) for step, number in pairs]
        if points:
            out.ravel()[moving] = _real_values(self.loss.evaluate(points))
        return out

    def _moved_point(self, step, number):
        direction = self.directions[number]
        moved = dict(self.point)
        moved[direction.name] = direction.moved(self.point[direction.name], step).astype(self.dtype)
        return moved

    def _value_at_zero(self):
        if self.at_zero is None:
            self.at_zero = _real_values(self.loss.evaluate([self.point]))[0]
        return self.at_zero


def _real_values(values):
    """Return loss values as float64, rejecting complex ones."""
    if np.iscomplexobj(values):
        raise UsageError(
            f"loss returned a complex value ({values.ravel()[0]!r}) for a real "
            f"point; return a float for method='central'"
        )
    return values.astype(np.float64)


class _Iterates:
    """Callback of :func:`scipy.differentiate.derivative` that records every iterate.

    scipy's error estimate of an iterate is its change from the previous
    one.  Two iterates at steps outside the asymptotic range can agree by
    chance, and scipy returns the last iterate, which is the noisiest once
    rounding dominates.  :meth:`best` therefore estimates each iterate's error
    from both neighbours and picks the smallest tolerance terms.
    """

    def __init__(self):
        self.values = []
        self.iterations = None

    def __call__(self, res):
        # The first call comes before any iteration.  A direction that has
        # stopped keeps its last values in later calls.
        if np.all(np.asarray(res.nit) == 0):
            return
        self.values.append(np.array(res.df, dtype=float))
        self.iterations = np.array(res.nit)

    def best(self, noise, settings):
        """Return the Derivative with the smallest :math:`k e + G \\delta` per direction.

        ``noise`` is :math:`\\delta`, each direction's loss rounding bound.
        The error :math:`e` of iterate :math:`j` is the larger of its changes
        from iterates :math:`j - 1` and :math:`j + 1`.  The first iterate has
        no previous one, so it is never chosen.
        """
        values = np.array(self.values)
        n_iterates = values.shape[0]
        previous = np.abs(np.diff(values, axis=0))
        following = np.vstack([previous[1:], np.zeros((1, values.shape[1]))])
        error = np.maximum(previous, following)

        # Rows j = 1, 2, ... of `error` belong to iterations 2, 3, ...
        iteration = np.arange(2, n_iterates + 1)[:, None]
        step = settings.initial_step / settings.step_factor ** (iteration - 1.0)
        gain = np.broadcast_to(
            stencil_noise_gain(settings.order, settings.step_factor) / step, error.shape)
        terms = TOLERANCE_CONSTANTS["k"][0] * error + gain * noise
        terms[(iteration > self.iterations) | ~np.isfinite(terms)] = np.inf

        row = np.argmin(terms, axis=0)
        column = np.arange(values.shape[1])
        chosen = np.isfinite(terms[row, column])
        return Derivative(
            np.where(chosen, values[row + 1, column], np.nan),
            np.where(chosen, error[row, column], np.inf),
            gain[row, column],
            np.broadcast_to(step, error.shape)[row, column],
            "central",
        )


def _central_derivatives(loss, point, directions, noise):
    """Differentiate along every direction with scipy's Richardson iteration."""
    dtype = _point_dtype(point)
    settings = STEP_SETTINGS[dtype]
    line = _LineFunction(loss, point, directions, dtype)
    iterates = _Iterates()

    # atol = rtol = 0 keeps iterating until rounding makes the error estimate
    # grow tenfold or maxiter is reached.
    derivative(
        line, np.zeros(len(directions)), args=(np.arange(len(directions)),),
        order=settings.order, initial_step=settings.initial_step,
        step_factor=settings.step_factor, maxiter=settings.maxiter,
        tolerances={"atol": 0.0, "rtol": 0.0}, callback=iterates,
    )
    return iterates.best(noise, settings)


def _complex_step_derivatives(loss, point, directions):
    """Differentiate along every direction by one complex-step evaluation each."""
    complex_point = {name: np.asarray(a, dtype=np.complex128) for name, a in point.items()}
    points = []
    for direction in directions:
        moved = dict(complex_point)
        moved[direction.name] = direction.moved(complex_point[direction.name], COMPLEX_STEP * 1j)
        points.append(moved)

    values = loss.evaluate(points)
    if not np.iscomplexobj(values):
        raise UsageError(
            f"loss returned the real value {values.ravel()[0]!r} for a complex point; "
            f"method='complex-step' needs a loss that keeps the imaginary part "
            f"(no abs, .real or float() of complex values), or use method='central'"
        )

    m = len(directions)
    return Derivative(
        np.imag(values) / COMPLEX_STEP, np.zeros(m), np.zeros(m),
        np.full(m, COMPLEX_STEP), "complex-step",
    )


def directional_derivative(loss, point, direction, *, method="central"):
    """Differentiate a loss numerically along one direction.

    Parameters
    ----------
    loss : ScalarLoss or callable
        ``loss(point) -> float``.
    point : dict of str to ndarray
        Where to differentiate; float32 or float64, all one dtype.
    direction : dict of str to ndarray
        The direction: one entry, naming the tensor it moves, with an array
        of that tensor's shape.
    method : {"central", "complex-step"}
        Central differences with Richardson extrapolation, or the complex step.

    Returns
    -------
    Derivative
        Arrays of length 1: value, error estimate, noise gain and step.

    Examples
    --------
    >>> import numpy as np
    >>> loss = lambda p: float(np.exp(p["x"]).sum())
    >>> d = directional_derivative(loss, {"x": np.zeros(2)}, {"x": np.array([0.6, 0.8])})
    >>> round(float(d.value[0]), 12)
    1.4
    """
    loss = as_scalar_loss(loss)
    point = validate_point(point)
    method = _validate_choice("method", method, METHODS)
    direction = _as_direction(direction, point)

    if method == "complex-step":
        return _complex_step_derivatives(loss, point, [direction])

    # Without an analytic gradient the abscissa rounding term A is unknown,
    # so the best iterate is chosen by the loss rounding alone.
    c_loss = TOLERANCE_CONSTANTS["c_L"][0]
    noise = np.array([np.finfo(_point_dtype(point)).eps * c_loss * loss.scale(point)])
    return _central_derivatives(loss, point, [direction], noise)


def _as_direction(direction, point):
    """Validate a direction argument and return it as a :class:`Direction`."""
    if not isinstance(direction, Mapping):
        raise UsageError(
            f"direction must be a dict of tensor name -> array, got "
            f"{type(direction).__name__}; pass {{'W_hh_fwd': v}} for example"
        )
    items = dict(direction)

    if len(items) != 1 or next(iter(items)) not in point:
        raise UsageError(
            f"direction names {sorted(items)} but must name exactly one tensor of the "
            f"point, one of {sorted(point)}; differentiate along each tensor separately"
        )

    name, values = next(iter(items.items()))
    values = np.asarray(values, dtype=np.float64)
    if values.shape != point[name].shape:
        raise UsageError(
            f"direction[{name!r}] has shape {values.shape} but point[{name!r}] has shape "
            f"{point[name].shape}; give the direction the tensor's shape"
        )
    return Direction(name, None, values)


# ---------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ToleranceRule:
    """The tolerance of one kind of comparison, with the reason for every constant.

    A comparison passes when :math:`|a - n| \\le k e + r_{num} + r_{an}`, with
    the numerical rounding :math:`r_{num} = G \\varepsilon_f (c_L F + A)`
    (central differences) or :math:`c_g \\varepsilon_f D` (complex step) and
    the analytic rounding :math:`r_{an} = c_g \\varepsilon_g D`; see the
    module docstring.

    Attributes
    ----------
    method : str
        Numerical differentiation method.
    loss_eps, gradient_eps : float
        Machine epsilon of the loss evaluation and of the analytic gradients.
    safety, loss_rounding, gradient_rounding : float
        :math:`k`, :math:`c_L` and :math:`c_g`.
    reasons : dict of str to str
        One line per constant and term.
    """

    method: str
    loss_eps: float
    gradient_eps: float
    safety: float
    loss_rounding: float
    gradient_rounding: float
    reasons: dict = field(repr=False)

    def parts(self, error, noise_gain, loss_scale, abscissa_scale, gradient_scale):
        """Return ``(k e, r_num, r_an)``, elementwise over arrays of directions."""
        if self.method == "complex-step":
            numeric = self.gradient_rounding * self.loss_eps * gradient_scale
        else:
            noise = self.loss_eps * (self.loss_rounding * loss_scale + abscissa_scale)
            numeric = noise_gain * noise
        analytic = self.gradient_rounding * self.gradient_eps * gradient_scale
        return self.safety * np.asarray(error, dtype=float), numeric, analytic

    def bound(self, *scales):
        """Return the tolerance :math:`k e + r_{num} + r_{an}`; see :meth:`parts`."""
        estimate, numeric, analytic = self.parts(*scales)
        return estimate + numeric + analytic

    def derivation(self, error, noise_gain, loss_scale, abscissa_scale, gradient_scale):
        """Explain the tolerance of one comparison, with every term's value."""
        estimate, numeric, analytic = self.parts(
            error, noise_gain, loss_scale, abscissa_scale, gradient_scale)
        if self.method == "complex-step":
            numeric_terms = (f"c_g eps_f D = {self.gradient_rounding:g} * "
                             f"{self.loss_eps:.3g} * {gradient_scale:.4g}")
        else:
            numeric_terms = (f"G eps_f (c_L F + A) = {noise_gain:.4g} * {self.loss_eps:.3g} "
                             f"* ({self.loss_rounding:g} * {loss_scale:.4g} "
                             f"+ {abscissa_scale:.4g})")
        lines = [
            f"tolerance k e + r_num + r_an = {estimate:.3g} + {numeric:.3g} + "
            f"{analytic:.3g} = {estimate + numeric + analytic:.3g}",
            f"  k e = {self.safety:g} * {float(error):.3g}, e: {self.reasons['e']}",
            f"  r_num = {numeric_terms}: {self.reasons['r_num']}",
            f"  r_an = c_g eps_g D = {self.gradient_rounding:g} * {self.gradient_eps:.3g} "
            f"* {gradient_scale:.4g}: {self.reasons['r_an']}",
        ]
        for name in TOLERANCE_CONSTANTS:
            lines.append(f"  {name} = {TOLERANCE_CONSTANTS[name][0]:g}: {self.reasons[name]}")
        return "\n".join(lines)


def tolerance_rule(loss_dtype, gradient_dtype, method):
    """Resolve the tolerance rule of one check.

    Parameters
    ----------
    loss_dtype : numpy dtype
        Dtype the loss is evaluated in: the point's dtype, or complex128 for
        the complex step (which computes in float64 precision).
    gradient_dtype : numpy dtype
        Dtype of the analytic gradients.
    method : {"central", "complex-step"}

    Returns
    -------
    ToleranceRule
    """
    method = _validate_choice("method", method, METHODS)
    reasons = {name: reason for name, (_, reason) in TOLERANCE_CONSTANTS.items()}
    reasons["r_an"] = ("rounding of the analytic gradient, with D = ||g_t|| + ||g||, "
                       "the norms of the tensor's and of all analytic gradients")

    if method == "complex-step":
        reasons["e"] = "the complex step has no truncation error above ~1e-60"
        reasons["r_num"] = "complex-step rounding, which has no 1/h gain"
    else:
        reasons["e"] = ("error estimate, the larger change between the chosen "
                        "scipy.differentiate iterate and its two neighbours")
        reasons["r_num"] = ("bound on each loss value's rounding (F the loss "
                            "magnitude, A that of the rounded abscissa) times the "
                            "stencil's noise gain G = sum|w|/h")

    return ToleranceRule(
        method=method,
        loss_eps=float(np.finfo(np.dtype(loss_dtype)).eps),
        gradient_eps=float(np.finfo(np.dtype(gradient_dtype)).eps),
        safety=TOLERANCE_CONSTANTS["k"][0],
        loss_rounding=TOLERANCE_CONSTANTS["c_L"][0],
        gradient_rounding=TOLERANCE_CONSTANTS["c_g"][0],
        reasons=reasons,
    )


# ---------------------------------------------------------------------------
# Locating an entry
# ---------------------------------------------------------------------------

_DIRECTION_WORDS = {"fwd": "forward", "bwd": "backward"}
_STATE_WORDS = {"h0": "initial hidden state", "c0": "initial cell state"}
_WEIGHT_WORDS = {"W_ih": "input weights", "W_hh": "recurrent weights", "b": "bias"}


def locate_index(name, index, shape):
    """Return what one entry of a BiLSTM tensor stands for.

    Parameters
    ----------
    name : str
        ``"x"`` (n_ex, n_in, n_t); ``"W_ih_fwd"``, ``"W_ih_bwd"`` (n_in, 4H);
        ``"W_hh_fwd"``, ``"W_hh_bwd"`` (H, 4H); ``"b_fwd"``, ``"b_bwd"`` (4H,);
        ``"h0"``, ``"c0"`` (2, n_ex, H).  Other names get no location.
    index : int or tuple of int
        Flat index, or one index per axis.
    shape : tuple of int
        Shape of the tensor.

    Returns
    -------
    dict
        For ``x``: example, feature, time_step.  For weights and biases:
        direction (``"forward"`` or ``"backward"``), gate (i, f, g, o, the
        column index // H), unit, and from_feature (``W_ih``) or from_unit
        (``W_hh``).  For states: direction, example, unit.
    """
    index = _index_tuple(index, shape)
    stem, _, suffix = name.rpartition("_")

    if name == "x" and len(shape) == 3:
        return {"example": index[0], "feature": index[1], "time_step": index[2]}
    if name in _STATE_WORDS and len(shape) == 3:
        return {"direction": _direction_at(index[0]), "example": index[1], "unit": index[2]}
    if stem in _WEIGHT_WORDS and suffix in _DIRECTION_WORDS and shape[-1] % 4 == 0:
        return _locate_weight(stem, suffix, index, shape)
    return {}


def _direction_at(position):
    return "forward" if position == 0 else "backward"


def _locate_weight(stem, suffix, index, shape):
    hidden_size = shape[-1] // 4
    column = index[-1]
    location = {
        "direction": _DIRECTION_WORDS[suffix],
        "gate": GATES[column // hidden_size],
        "unit": column % hidden_size,
    }
    if stem == "W_ih":
        location["from_feature"] = index[0]
    elif stem == "W_hh":
        location["from_unit"] = index[0]
    return location


def describe_index(name, index, shape):
    """Describe one entry of a BiLSTM tensor in words.

    Examples
    --------
    >>> describe_index("W_hh_bwd", 9, (2, 8))
    "backward direction's recurrent weights W_hh_bwd[1, 1] (gate i, unit 1, from hidden unit 1)"
    >>> describe_index("x", (0, 2, 3), (1, 3, 5))
    'input x[0, 2, 3] (example 0, feature 2, time step 3)'
    """
    index = _index_tuple(index, shape)
    location = locate_index(name, index, shape)
    subscript = f"{name}[{', '.join(str(i) for i in index)}]"
    stem = name.rpartition("_")[0]

    if name == "x" and location:
        return (f"input {subscript} (example {location['example']}, feature "
                f"{location['feature']}, time step {location['time_step']})")
    if name in _STATE_WORDS and location:
        return (f"{_STATE_WORDS[name]} {subscript} ({location['direction']} direction, "
                f"example {location['example']}, unit {location['unit']})")
    if location:
        details = [f"gate {location['gate']}", f"unit {location['unit']}"]
        if "from_feature" in location:
            details.append(f"from input feature {location['from_feature']}")
        if "from_unit" in location:
            details.append(f"from hidden unit {location['from_unit']}")
        return (f"{location['direction']} direction's {_WEIGHT_WORDS[stem]} {subscript} "
                f"({', '.join(details)})")
    return f"tensor {subscript}"


def _index_tuple(index, shape):
    if np.ndim(index) == 0:
        return tuple(int(i) for i in np.unravel_index(int(index), shape))
    return tuple(int(i) for i in index)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class GradientMismatch:
    """The worst disagreement found in one tensor's gradient.

    Attributes
    ----------
    name : str
        Tensor whose gradient is wrong.
    description : str
        The worst entry in words, from :func:`describe_index`.
    index : tuple of int
        The worst entry.
    location : dict
        The worst entry's fields from :func:`locate_index`.
    analytic, numeric : float
        Both values at the worst entry, or both projections
        :math:`\\langle g, v \\rangle` when ``check == "projection"``.
    abs_error, rel_error : float
        :math:`|a - n|` and :math:`|a - n| / \\max(|a|, |n|)`.
    tolerance : float
        Bound the error exceeded.
    derivation : str
        How the tolerance was derived, term by term.
    check : str
        ``"entry"`` when the values are one entry's.  ``"projection"`` when
        the random projection exceeded its tolerance but no single entry
        did, and ``index`` is then the entry closest to its tolerance.
    n_failed, n_checked : int
        Entries that exceeded their tolerance, and entries checked.
    note : str
        The failed projection's values when a projection led to the entry
        check, otherwise "".
    """

    name: str
    description: str
    index: tuple
    location: dict
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float
    tolerance: float
    derivation: str
    check: str = "entry"
    n_failed: int = 1
    n_checked: int = 1
    note: str = ""

    def __str__(self):
        if self.check == "entry":
            subject = f"worst entry: {self.description}"
        else:
            subject = ("random projection; no single entry failed, the closest is "
                       f"{self.description}")
        lines = [
            f"gradient of {self.name} is wrong ({subject})",
            f"  analytic  {self.analytic!r}",
            f"  numeric   {self.numeric!r}",
            f"  abs error {self.abs_error:.3g}, rel error {self.rel_error:.3g}, "
            f"tolerance {self.tolerance:.3g}",
            f"  {self.n_failed} of {self.n_checked} checked entries exceed their tolerance",
        ]
        if self.note:
            lines.append(f"  {self.note}")
        lines.extend("  " + line for line in self.derivation.splitlines())
        return "\n".join(lines)


@dataclass(frozen=True)
class TensorResult:
    """Outcome for one tensor: ``"passed"``, ``"failed"`` or ``"missing"``.

    Attributes
    ----------
    name : str
    status : str
    n_checked : int
        Comparisons made: projections and entries.
    mismatch : GradientMismatch or None
        Set when ``status == "failed"``.
    """

    name: str
    status: str
    n_checked: int = 0
    mismatch: GradientMismatch | None = None


@dataclass(frozen=True)
class GradientReport:
    """Result of :func:`check_gradients`.

    Attributes
    ----------
    results : tuple of TensorResult
        One per tensor of the point, in the point's order.
    mode, method : str
    dtype : numpy dtype
        The point's dtype.
    seed_note : str
        How the random directions were drawn, for replay.
    """

    results: tuple
    mode: str
    method: str
    dtype: np.dtype
    seed_note: str = ""

    @property
    def ok(self):
        """True when no checked tensor failed, whatever is missing (see :attr:`complete`)."""
        return not self.failures

    @property
    def failures(self):
        """List of :class:`GradientMismatch`, one per failed tensor."""
        return [r.mismatch for r in self.results if r.status == "failed"]

    @property
    def complete(self):
        """True when every tensor of the point had an analytic gradient."""
        return not self.missing

    @property
    def missing(self):
        """Names of tensors without an analytic gradient, which were not checked."""
        return [r.name for r in self.results if r.status == "missing"]

    def __str__(self):
        lines = [
            f"gradient check, mode={self.mode!r}, method={self.method!r}, dtype={self.dtype}: "
            f"{len(self.failures)} failed, {len(self.missing)} missing {self.seed_note}".rstrip()
        ]
        for result in self.results:
            lines.append(f"  {result.name:<10} {result.status} ({result.n_checked} checks)")
        for mismatch in self.failures:
            lines.append(str(mismatch))
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Context:
    """Arguments shared by every comparison of one :func:`check_gradients` call."""

    loss: ScalarLoss
    point: dict
    grads: dict
    method: str
    rule: ToleranceRule
    loss_scale: float
    gradient_norm: float  # of all analytic gradients together, part of D


@dataclass(frozen=True)
class _Comparison:
    """Analytic against numerical derivatives along a list of directions."""

    analytic: np.ndarray
    numeric: np.ndarray
    tolerance: np.ndarray
    failed: np.ndarray
    scales: tuple  # arguments of ToleranceRule.bound, arrays or scalars

    def worst(self):
        """Return the position of the largest error relative to its tolerance."""
        return _worst_ratio(self.analytic, self.numeric, self.tolerance)

    def values_at(self, j):
        """Return analytic, numeric, tolerance and the tolerance's scales at ``j``."""
        scales = tuple(float(np.take(s, j)) if np.ndim(s) else float(s) for s in self.scales)
        return self.analytic[j], self.numeric[j], self.tolerance[j], scales


def _worst_ratio(analytic, numeric, tolerance):
    """Return the position of the largest ``|analytic - numeric| / tolerance``, NaN first."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(analytic - numeric) / tolerance
    return int(np.argmax(np.where(np.isnan(ratio), np.inf, ratio)))


def _compare(context, directions, analytic):
    """Compare analytic directional derivatives with numerical ones."""
    gradient_scales, abscissa_scales = _direction_scales(context, directions)
    if context.method == "complex-step":
        numeric = _complex_step_derivatives(context.loss, context.point, directions)
    else:
        noise = context.rule.loss_eps * (
            context.rule.loss_rounding * context.loss_scale + abscissa_scales)
        numeric = _central_derivatives(context.loss, context.point, directions, noise)

    scales = (numeric.error, numeric.noise_gain, context.loss_scale,
              abscissa_scales, gradient_scales)
    tolerance = context.rule.bound(*scales)

    # NaN from either side fails: "not <=" is true for NaN.
    failed = ~(np.abs(analytic - numeric.value) <= tolerance)
    return _Comparison(analytic, numeric.value, tolerance, failed, scales)


def _direction_scales(context, directions):
    """Return :math:`D` and :math:`A` of every direction."""
    gradient_scales = np.empty(len(directions))
    abscissa_scales = np.empty(len(directions))
    for j, direction in enumerate(directions):
        grad = np.nan_to_num(np.asarray(context.grads[direction.name], dtype=np.float64))
        tensor = np.asarray(context.point[direction.name], dtype=np.float64)
        gradient_scales[j] = np.linalg.norm(grad) + context.gradient_norm
        moved = slice(None) if direction.index is None else direction.index
        abscissa_scales[j] = np.sum(np.abs(grad.ravel()[moved] * tensor.ravel()[moved]))
    return gradient_scales, abscissa_scales


def _compare_entries(context, name, entries):
    """Compare the given flat entries of one tensor, one basis direction each."""
    grad = np.asarray(context.grads[name], dtype=np.float64).ravel()
    directions = [Direction.basis(name, i) for i in entries]
    return _compare(context, directions, grad[entries])


def _check_all_entries(context, name):
    """Check every entry of one tensor and return its TensorResult."""
    entries = np.arange(context.point[name].size)
    comparison = _compare_entries(context, name, entries)
    if not comparison.failed.any():
        return TensorResult(name, "passed", len(entries))

    worst = comparison.worst()
    mismatch = _mismatch(
        context, name, entries[worst], comparison.values_at(worst), check="entry",
        n_failed=int(comparison.failed.sum()), n_checked=len(entries),
    )
    return TensorResult(name, "failed", len(entries), mismatch)


def _check_projections(context, names, rng, n_projections, max_entries):
    """Compare random projections of every tensor, then check failed tensors entry by entry."""
    directions = [
        random_direction(rng, name, context.point[name].shape)
        for name in names for _ in range(n_projections)
    ]
    analytic = np.array([
        np.sum(np.asarray(context.grads[d.name], dtype=np.float64) * d.values)
        for d in directions
    ])
    projections = _compare(context, directions, analytic)

    results = {}
    for j, name in enumerate(names):
        own = slice(j * n_projections, (j + 1) * n_projections)
        if not projections.failed[own].any():
            results[name] = TensorResult(name, "passed", n_projections)
            continue

        worst = own.start + _worst_ratio(projections.analytic[own], projections.numeric[own],
                                         projections.tolerance[own])
        result = _localise(context, name, projections.values_at(worst), rng, max_entries)
        results[name] = TensorResult(name, "failed", result.n_checked + n_projections - 1,
                                     result.mismatch)
    return results


def _localise(context, name, projection, rng, max_entries):
    """Find the worst entry of a tensor whose random projection failed."""
    entries = _entries_to_check(context.point[name].size, rng, max_entries)
    comparison = _compare_entries(context, name, entries)
    worst = comparison.worst()

    analytic, numeric, tolerance, _ = projection
    note = (f"the random projection <g, v> failed first: analytic {float(analytic)!r}, "
            f"numeric {float(numeric)!r}, tolerance {tolerance:.3g}")
    if len(entries) < context.point[name].size:
        note += f"; the entry check covered a random sample of {len(entries)} entries"

    # An error spread thinly over many entries can fail the projection while
    # every entry passes, and then the report gives the projection's values.
    failed_entry = comparison.failed.any()
    mismatch = _mismatch(
        context, name, entries[worst],
        comparison.values_at(worst) if failed_entry else projection,
        check="entry" if failed_entry else "projection",
        n_failed=int(comparison.failed.sum()), n_checked=len(entries), note=note,
    )
    return TensorResult(name, "failed", len(entries) + 1, mismatch)


def _mismatch(context, name, flat_index, values, *, check, n_failed, n_checked, note=""):
    """Build the GradientMismatch of one tensor from the values of its worst comparison."""
    analytic, numeric, tolerance, scales = values
    shape = context.point[name].shape
    index = _index_tuple(flat_index, shape)
    abs_error = abs(analytic - numeric)
    largest = max(abs(analytic), abs(numeric))

    return GradientMismatch(
        name=name,
        description=describe_index(name, index, shape),
        index=index,
        location=locate_index(name, index, shape),
        analytic=float(analytic),
        numeric=float(numeric),
        abs_error=float(abs_error),
        rel_error=float(abs_error / largest) if largest > 0 else 0.0,
        tolerance=float(tolerance),
        derivation=context.rule.derivation(*scales),
        check=check,
        n_failed=n_failed,
        n_checked=n_checked,
        note=note,
    )


def _entries_to_check(size, rng, max_entries):
    if max_entries is None or size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, max_entries, replace=False))


def check_gradients(loss, point, grads, *, mode="projection", method="central",
                    rng=None, projections=1, max_entries=4096):
    """Check analytic gradients against numerical derivatives of the same loss.

    Parameters
    ----------
    loss : ScalarLoss or callable
        ``loss(point) -> float``, the implementation's own forward pass
        reduced to a scalar.  For ``method="complex-step"`` it must accept
        complex128 arrays and return a complex number.
    point : dict of str to ndarray
        The tensors to differentiate with respect to, for example ``x``
        (n_ex, n_in, n_t), the six parameters and ``h0``, ``c0``
        (2, n_ex, H).  float32 or float64, one dtype for all.
    grads : dict of str to ndarray
        The implementation's analytic gradients, shaped like ``point``.  A
        name left out is reported as missing and not checked.
    mode : {"projection", "full"}
        ``"projection"``: one random unit direction per tensor, then an
        entry check of any tensor that fails.  ``"full"``: every entry of
        every tensor; meant for small cases.
    method : {"central", "complex-step"}
        Numerical differentiation method.
    rng : numpy.random.Generator or int or None
        Source of the random directions.  ``None`` means seed 0, so runs
        repeat exactly.  The report prints an int seed or None, so pass
        one to make a failure replayable from its report.
    projections : int
        Independent random directions per tensor in ``"projection"`` mode.
        One direction misses an error when it is nearly orthogonal to it:
        on small float32 reference cases, one projection missed a 1e-2
        relative error of a whole tensor in 5 of 360 checks.
    max_entries : int or None
        Largest number of entries that the entry check after a failed
        projection compares.  A larger tensor is sampled at random, and
        ``None`` means all.  ``mode="full"`` always checks every entry.

    Returns
    -------
    GradientReport
        Per tensor: passed, failed (with a :class:`GradientMismatch`) or missing.

    Raises
    ------
    UsageError
        For invalid arguments, before any evaluation of the loss, and for a
        loss that returns an array, a complex value for ``"central"`` or a
        real value for ``"complex-step"``.
    """
    loss = as_scalar_loss(loss)
    point = validate_point(point)
    grads = validate_grads(grads, point)
    mode = _validate_choice("mode", mode, MODES)
    method = _validate_choice("method", method, METHODS)
    projections = _validate_count("projections", projections)
    max_entries = None if max_entries is None else _validate_count("max_entries", max_entries)
    seed_note = f"(rng={rng!r})" if not isinstance(rng, np.random.Generator) else ""
    rng = _as_generator(rng)

    dtype = _point_dtype(point)
    loss_dtype = np.complex128 if method == "complex-step" else dtype
    rule = tolerance_rule(loss_dtype, _least_precise(grads, dtype), method)
    loss_scale = loss.scale(point) if method == "central" else 0.0
    gradient_norm = float(np.sqrt(sum(
        np.sum(np.nan_to_num(np.asarray(g, dtype=np.float64)) ** 2) for g in grads.values())))
    context = _Context(loss, point, grads, method, rule, loss_scale, gradient_norm)

    checked = [name for name in point if name in grads and point[name].size > 0]
    if mode == "full":
        results = {name: _check_all_entries(context, name) for name in checked}
    else:
        results = _check_projections(context, checked, rng, projections, max_entries) \
            if checked else {}

    return GradientReport(_in_point_order(results, point, grads), mode, method, dtype,
                          seed_note)


def _in_point_order(results, point, grads):
    """Return one TensorResult per tensor of the point, missing ones included."""
    ordered = []
    for name in point:
        if name not in grads:
            ordered.append(TensorResult(name, "missing"))
        else:
            # A tensor with no entries has nothing to compare, so it passes.
            ordered.append(results.get(name, TensorResult(name, "passed")))
    return tuple(ordered)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

def validate_point(point):
    """Return ``point`` as a dict of ndarrays of one float dtype, or raise UsageError."""
    if not isinstance(point, Mapping) or not point:
        raise UsageError(
            f"point must be a non-empty dict of tensor name -> ndarray, got "
            f"{type(point).__name__} {point!r:.60}; pass {{'x': x, 'W_ih_fwd': ...}}"
        )

    arrays = {name: np.asarray(value) for name, value in point.items()}
    dtypes = {name: a.dtype for name, a in arrays.items()}
    allowed = ", ".join(str(d) for d in POINT_DTYPES)
    if any(d not in POINT_DTYPES for d in dtypes.values()) or len(set(dtypes.values())) > 1:
        raise UsageError(
            f"point has dtypes {{{', '.join(f'{n}: {d}' for n, d in dtypes.items())}}} but "
            f"every tensor must have the same dtype, one of {allowed}; convert them, "
            f"for example with a.astype(np.float64)"
        )

    for name, a in arrays.items():
        if not np.isfinite(a).all():
            raise UsageError(
                f"point[{name!r}] contains NaN or inf; a gradient check needs a point "
                f"where the loss is finite, so draw finite inputs"
            )
    return arrays


def validate_grads(grads, point):
    """Return ``grads`` as a dict of float ndarrays shaped like ``point``, or raise."""
    if not isinstance(grads, Mapping):
        raise UsageError(
            f"grads must be a dict of tensor name -> ndarray, got {type(grads).__name__}; "
            f"map each name of the point to the implementation's gradient"
        )

    unknown = sorted(str(name) for name in grads if name not in point)
    if unknown:
        raise UsageError(
            f"grads has names {unknown} that are not in the point {sorted(point)}; "
            f"rename them to the point's names or add those tensors to the point"
        )

    arrays = {}
    for name, value in grads.items():
        a = np.asarray(value)
        if a.shape != point[name].shape or a.dtype.kind != "f":
            raise UsageError(
                f"grads[{name!r}] has shape {a.shape} and dtype {a.dtype} but must be a "
                f"float array of shape {point[name].shape}, the shape of point[{name!r}]; "
                f"convert the implementation's gradient to the point's layout"
            )
        arrays[name] = a
    return arrays


def _validate_choice(argument, value, choices):
    if isinstance(value, str) and value in choices:
        return value
    raise UsageError(
        f"{argument}={value!r} is not valid; use one of {', '.join(map(repr, choices))}"
    )


def _validate_count(argument, value):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise UsageError(f"{argument}={value!r} is not valid; pass a positive int")


def _as_generator(rng):
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise UsageError(
        f"rng={rng!r} is not valid; pass a numpy.random.Generator, a non-negative "
        f"int seed, or None for seed 0"
    )


def _point_dtype(point):
    return next(iter(point.values())).dtype


def _least_precise(grads, default):
    """Return the gradient dtype with the largest eps, whose rounding dominates."""
    dtypes = [a.dtype for a in grads.values()] or [default]
    return max(dtypes, key=lambda d: np.finfo(d).eps)
