"""A catalog of realistic buggy BiLSTMs, for measuring what the properties catch.

Each entry of :data:`MUTANTS` is a BiLSTM with one bug of a kind found in
real implementations, the property expected to catch it, and the condition
the bug needs in order to show (a merge mode, padding, ``n_in = H``, ...).
``benchmarks/bench_mutants.py`` runs the whole property catalog on every
mutant and reports which properties catch it and how fast;
``tests/test_mutants.py`` asserts that the expected property does.

Mutants are built on one of two bases:

- :class:`WrappedReferenceModel` wraps :func:`bilstm.forward` and
  :func:`bilstm.backward` and changes what goes in or comes out;
- :class:`PlainModel` is a plain step-by-step numpy BiLSTM with its own
  backward pass, written with one overridable method (a hook) per step that
  real implementations get wrong, so a mutant overrides one hook.

A mutant whose bug line ends in "gradients match" imitates an
implementation that uses autodiff: its backward pass differentiates its own
buggy forward pass, through a gradient hook that mirrors the forward hook.
The other mutants with a bug in the forward pass keep a backward pass that
need not match it, as a hand-written backward pass would.

Arrays are in the reference layout at the interface (see
:mod:`properties.protocol`).  Inside :class:`PlainModel` they are time-major:
``x`` is (n_t, n_ex, n_in), each direction's hidden states (n_t, n_ex, H),
with time in original order unless a name says "run order" (the backward
direction's steps reversed within each example's valid steps).

Load a mutant with :func:`load_mutant`, or from the command line with
``python3 -m properties check --impl properties.mutants:NAME``.
"""

from dataclasses import dataclass, replace

import numpy as np

import bilstm
from bilstm.merge import canonical_merge_mode, merge, merge_vjp
from bilstm.params import DIRECTIONS, PARAM_NAMES, cast_params
from properties.adapters.reference import ReferenceImplementation, ReferenceModel
from properties.errors import UsageError
from properties.protocol import Grads, Implementation, Model, Output

REAL_CAPABILITIES = replace(ReferenceImplementation.capabilities, complex_input=False)
"""Capabilities of every mutant: the reference's, less complex input, which no property uses."""

STEPS_KEPT = 2
"""Steps of backpropagation through time kept by the ``truncated_bptt`` mutant."""

GRADIENT_ERROR = 1e-5
"""Relative error of the ``recurrent_gradient_off_by_1e_5`` mutant's W_hh_bwd gradient."""


@dataclass(frozen=True)
class MutantEntry:
    """One buggy BiLSTM of the catalog.

    Attributes
    ----------
    name : str
        Identifier, a valid Python name.
    bug : str
        One line: the real-world bug class the mutant imitates.
    expected : str or None
        The property (never ``reference_agreement``) expected to catch it,
        or None when only ``reference_agreement`` or nothing catches it.
    reason : str
        For ``expected=None``: why no other property catches it.
    shows_when : str
        The condition the bug needs to be visible, "always" when it needs none.
    merge_modes : tuple or None
        Merge modes in which the bug shows; None means all.
    model_class : type
        The :class:`~properties.protocol.Model` with the bug.
    """

    name: str
    bug: str
    expected: str | None
    reason: str
    shows_when: str
    merge_modes: tuple | None
    model_class: type


MUTANTS = {}
"""Mutant name -> :class:`MutantEntry`, in catalog order."""


def mutant(name, *, bug, expected, reason="", shows_when="always", merge_modes=None):
    """Register the decorated model class as the mutant ``name``."""
    if expected is None and not reason:
        raise ValueError(f"mutant {name!r} has expected=None, so it needs a reason")
    if expected == "reference_agreement":
        raise ValueError(f"mutant {name!r}: expected must be a property other than reference_agreement")

    def decorate(model_class):
        if name in MUTANTS:
            raise ValueError(f"mutant {name!r} is registered twice")
        MUTANTS[name] = MutantEntry(name, bug, expected, reason, shows_when,
                                    merge_modes, model_class)
        return model_class
    return decorate


class MutantImplementation(Implementation):
    """The :class:`~properties.protocol.Implementation` of one catalog entry."""

    capabilities = REAL_CAPABILITIES

    def __init__(self, entry):
        self.entry = entry
        self.name = f"mutant:{entry.name}"
        self.description = entry.bug

    def version(self):
        return bilstm.__version__

    def build(self, params, *, merge_mode):
        return self.entry.model_class(params, merge_mode)


def load_mutant(name):
    """Return the :class:`MutantImplementation` of the mutant ``name``.

    ``name`` is a key of :data:`MUTANTS` or of :data:`CONTROLS`.

    Raises
    ------
    UsageError
        When ``name`` is in neither.
    """
    entries = {**MUTANTS, **CONTROLS}
    if name not in entries:
        raise UsageError(
            f"mutant {name!r} is not in the catalog of {len(MUTANTS)} mutants and "
            f"{len(CONTROLS)} controls; use one of: {', '.join(entries)}"
        )
    return MutantImplementation(entries[name])


def __getattr__(name):
    # Makes ``--impl properties.mutants:NAME`` work: the CLI calls a
    # function without arguments that returns an implementation.
    if name in MUTANTS or name in CONTROLS:
        return lambda: load_mutant(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------

def _valid_steps(n_t, n_ex, lengths):
    """Return the (n_t, n_ex, 1) mask of valid steps, or None when every step is valid."""
    if lengths is None:
        return None
    return (np.arange(n_t)[:, None] < np.asarray(lengths)[None, :])[..., None]


def _reverse_valid(a, lengths):
    """Reverse a time-major array (n_t, n_ex, ...) within each example's valid steps.

    Padded steps stay in place, so the map is its own inverse.
    """
    if lengths is None:
        return a[::-1]
    steps = np.arange(a.shape[0])[:, None]
    lengths = np.asarray(lengths)[None, :]
    index = np.where(steps < lengths, lengths - 1 - steps, steps)
    return a[index, np.arange(a.shape[1])[None, :]]


def _where(valid, a, b):
    """Select ``a`` at valid steps and ``b`` elsewhere; ``valid`` None means all valid."""
    if valid is None:
        return a
    return np.where(valid, a, b)


def _mask_multiply(valid, a, b):
    """Select by arithmetic, ``valid * a + (not valid) * b``, which lets NaN through (NaN * 0 = NaN)."""
    if valid is None:
        return a
    # Boolean factors keep the dtype of a and b, where 1 - valid would be int64 and promote float32.
    return valid * a + ~valid * b


def _sigmoid(z):
    # tanh saturates at +-1 instead of overflowing, so any finite z gives a finite gate.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _gate_block(hidden_size, gate):
    """Return the slice of gate ``gate`` (0 to 3 for i, f, g, o) along a 4H axis."""
    return slice(gate * hidden_size, (gate + 1) * hidden_size)


def _scaled(grads, name, factor):
    """Return a copy of ``grads.dparams`` with ``name`` multiplied by ``factor``."""
    dparams = dict(grads.dparams)
    dparams[name] = dparams[name] * factor
    return dparams


# ---------------------------------------------------------------------------
# Base 1: the reference, wrapped
# ---------------------------------------------------------------------------

class WrappedReferenceModel(ReferenceModel):
    """The reference model; mutants override :meth:`forward` or :meth:`backward` and call super."""

    def __init__(self, params, merge_mode):
        super().__init__(params, merge_mode)
        self.hidden_size = np.shape(params["W_hh_fwd"])[0]


# ---------------------------------------------------------------------------
# Base 2: a plain step-by-step BiLSTM with its own backward pass
# ---------------------------------------------------------------------------

@dataclass
class _Step:
    """Arrays of one forward step that the backward pass reads; each is (2, n_ex, ...)."""

    h_prev: np.ndarray
    c_prev: np.ndarray
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    c: np.ndarray
    valid: np.ndarray | None   # (2, n_ex, 1), or None when every step is valid


@dataclass
class _Result:
    """Record of :meth:`PlainModel.forward` for the backward pass and the final states."""

    run_lengths: list          # lengths honoured by each direction's run
    x_run: np.ndarray          # (2, n_t, n_ex, n_in), each direction in its run order
    steps: list                # one _Step per step of run order
    outputs: list              # each direction's hidden states (n_t, n_ex, H), original order
    h: np.ndarray              # (2, n_ex, H) state after each run's last valid step
    c: np.ndarray


def _stacked_valid(n_t, n_ex, run_lengths):
    """Return the (2, n_t, n_ex, 1) mask of valid steps of both runs, or None when all are valid."""
    if all(lengths is None for lengths in run_lengths):
        return None
    masks = [np.ones((n_t, n_ex, 1), dtype=bool) if lengths is None
             else _valid_steps(n_t, n_ex, lengths) for lengths in run_lengths]
    return np.stack(masks)


class PlainModel(Model):
    """A plain numpy BiLSTM: a loop over steps forward, a loop over steps backward.

    It follows :mod:`bilstm.reference` (gate order i, f, g, o, zero output
    at padded steps, padded steps carry the state) without its in-place
    tricks.  Both directions advance together on arrays with a leading axis
    of size 2, forward direction first.  Every method below ``backward`` is
    a hook that a mutant may override.
    """

    def __init__(self, params, merge_mode):
        self.params = params
        self.merge_mode = canonical_merge_mode(merge_mode)
        self.hidden_size = np.shape(params["W_hh_fwd"])[0]
        self._last = None

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        x_tm = self.to_time_major(np.asarray(x))
        n_t, n_ex, _ = x_tm.shape
        h0, c0 = self.initial_states(h0, c0, n_ex, x_tm.dtype)

        run_lengths = [self.direction_lengths(k, lengths) for k in range(2)]
        x_run = np.stack([self.reverse_input(k, x_tm, run_lengths[k]) for k in range(2)])
        result = self.run_directions(x_run, run_lengths, h0, c0)

        y_tm = self.merge(result.outputs[0], result.outputs[1])
        y_tm = self.mask_output(_valid_steps(n_t, n_ex, lengths), y_tm)
        h_n, c_n = self.final_states(result)
        self._last = (x_tm, lengths, result)
        return Output(np.ascontiguousarray(np.moveaxis(y_tm, -3, -1)), h_n, c_n)

    def backward(self, dy, *, dh_n=None, dc_n=None):
        x_tm, lengths, result = self._last
        n_t, n_ex, _ = x_tm.shape
        zeros = np.zeros((2, n_ex, self.hidden_size), dtype=x_tm.dtype)
        dh_n, dc_n = self.final_state_vjp(zeros if dh_n is None else dh_n,
                                          zeros if dc_n is None else dc_n)

        dy_tm = np.moveaxis(np.asarray(dy), -1, -3)
        dy_tm = self.mask_upstream(_valid_steps(n_t, n_ex, lengths), dy_tm)
        dh_halves = self.merge_vjp(dy_tm, result.outputs[0], result.outputs[1])
        dh_run = np.stack([self.upstream_in_run_order(k, dh_halves[k], result.run_lengths[k])
                           for k in range(2)])

        dz, dh0, dc0 = self.backprop_through_time(result, dh_run, dh_n, dc_n)
        dx_run, dparams = self.input_and_weight_gradients(result, dz)

        dx = np.zeros_like(x_tm)
        for k in range(2):
            dx = self.add_input_gradient(k, dx, self.reverse_input(k, dx_run[k], result.run_lengths[k]))
        dh0, dc0 = self.initial_state_vjp(dh0, dc0)
        return Grads(np.ascontiguousarray(self.input_gradient_layout(dx)), dparams, dh0, dc0)

    # Forward hooks ----------------------------------------------------------

    def to_time_major(self, x):
        """Return ``x`` (n_ex, n_in, n_t) as (n_t, n_ex, n_in)."""
        return x.transpose(2, 0, 1)

    def initial_states(self, h0, c0, n_ex, dtype):
        """Return the initial states (2, n_ex, H), zeros for those not given."""
        zeros = np.zeros((2, n_ex, self.hidden_size), dtype=dtype)
        return (zeros if h0 is None else h0), (zeros if c0 is None else c0)

    def direction_lengths(self, k, lengths):
        """Return the lengths the run of direction ``k`` (0 forward, 1 backward) honours."""
        return lengths

    def reverse_input(self, k, a, lengths):
        """Put a time-major array into direction ``k``'s run order, or back (the map is an involution)."""
        return a if k == 0 else _reverse_valid(a, lengths)

    def reverse_output(self, k, a, lengths):
        """Put direction ``k``'s outputs from run order back into original time order."""
        return a if k == 0 else _reverse_valid(a, lengths)

    def direction_weights(self, k):
        """Return ``(W_ih, W_hh, b)`` of direction ``k``."""
        direction = DIRECTIONS[k]
        return tuple(self.params[f"{stem}_{direction}"] for stem in ("W_ih", "W_hh", "b"))

    def stacked_weights(self):
        """Return ``(W_ih, W_hh, b)``, each with both directions stacked on a leading axis."""
        pairs = zip(*(self.direction_weights(k) for k in range(2)))
        return tuple(np.stack(pair) for pair in pairs)

    def run_directions(self, x_run, run_lengths, h, c):
        """Run both directions from the states ``h``, ``c`` (2, n_ex, H) over ``x_run``."""
        n_t, n_ex = x_run.shape[1:3]
        valid = _stacked_valid(n_t, n_ex, run_lengths)
        w_ih, w_hh, b = self.stacked_weights()
        projections = x_run @ w_ih[:, None] + b[:, None, None]

        steps = []
        outputs = np.zeros((2, n_t, n_ex, self.hidden_size), dtype=x_run.dtype)
        for t in range(n_t):
            valid_t = None if valid is None else valid[:, t]
            step = self.cell(projections[:, t] + h @ w_hh, h, c, valid_t)
            h_new = self.cell_output(step.o, step.c)
            outputs[:, t] = self.emit(valid_t, h_new, h)
            h, c = self.select(valid_t, h_new, h), self.select(valid_t, step.c, c)
            steps.append(step)

        outputs = [self.reverse_output(k, outputs[k], run_lengths[k]) for k in range(2)]
        return _Result(run_lengths, x_run, steps, outputs, h, c)

    def cell(self, z, h, c, valid_t):
        """Return the :class:`_Step` of one LSTM step from its pre-activations ``z`` (2, n_ex, 4H)."""
        hidden = self.hidden_size
        sigmoid = self.sigmoid(z)
        i, f, o = (sigmoid[..., _gate_block(hidden, gate)] for gate in (0, 1, 3))
        g = np.tanh(z[..., _gate_block(hidden, 2)])
        return _Step(h, c, i, f, g, o, f * c + i * g, valid_t)

    def sigmoid(self, z):
        """The gates' logistic function."""
        return _sigmoid(z)

    def cell_output(self, o, c):
        """Return the hidden state of a step from its output gate and cell state."""
        return o * np.tanh(c)

    def emit(self, valid, h_new, h_carried):
        """Return a step's output: the new hidden state, 0 at padded steps."""
        return self.select(valid, h_new, np.zeros_like(h_new))

    def select(self, valid, a, b):
        """Take ``a`` at valid steps and ``b`` at padded ones, in the forward pass."""
        return _where(valid, a, b)

    def merge(self, h_fwd, h_bwd):
        """Merge the two directions' outputs (n_t, n_ex, H)."""
        return merge(h_fwd, h_bwd, self.merge_mode)

    def mask_output(self, valid, y_tm):
        """Zero the merged output at padded steps."""
        if valid is None:
            return y_tm
        if self.merge_mode is None:
            valid = valid[None]
        return self.select(valid, y_tm, np.zeros_like(y_tm))

    def final_states(self, result):
        """Return ``(h_n, c_n)``, each (2, n_ex, H), forward direction first."""
        return result.h.copy(), result.c.copy()

    # Backward hooks ---------------------------------------------------------

    def final_state_vjp(self, dh_n, dc_n):
        """Map the final-state gradients onto the runs' final states."""
        return dh_n, dc_n

    def mask_upstream(self, valid, dy_tm):
        """Zero the upstream gradient at padded steps, NaN included."""
        if valid is None:
            return dy_tm
        if self.merge_mode is None:
            valid = valid[None]
        return self.select_gradient(valid, dy_tm, np.zeros_like(dy_tm))

    def merge_vjp(self, dy_tm, h_fwd, h_bwd):
        """Split the upstream gradient into the two directions' output gradients."""
        return merge_vjp(dy_tm, h_fwd, h_bwd, self.merge_mode)

    def upstream_in_run_order(self, k, dh, lengths):
        """Put direction ``k``'s output gradient into run order (the vjp of :meth:`reverse_output`)."""
        return self.reverse_output(k, dh, lengths)

    def backprop_through_time(self, result, dh_run, dh, dc):
        """Run the recurrence backward from the final-state gradients ``dh``, ``dc`` (2, n_ex, H).

        Returns ``(dz, dh0, dc0)`` with ``dz`` (2, n_t, n_ex, 4H) in run order.
        """
        _, w_hh, _ = self.stacked_weights()
        n_t = len(result.steps)
        dz = np.zeros(dh_run.shape[:3] + (4 * self.hidden_size,), dtype=dh_run.dtype)

        for steps_back, t in enumerate(reversed(range(n_t))):
            step = result.steps[t]
            dh_t = dh + dh_run[:, t]
            dc_t = self.cell_gradient(step, dh_t, dc)
            dz[:, t] = self.mask_gate_gradients(step.valid, self.gate_gradients(step, dh_t, dc_t))

            dh_prev, dc_prev = self.recurrent_gradients(step, dz[:, t], dc_t, w_hh, steps_back)
            dh = self.select_gradient(step.valid, dh_prev, dh)
            dc = self.select_gradient(step.valid, dc_prev, dc)
        return dz, dh, dc

    def cell_gradient(self, step, dh_t, dc):
        """Return the total gradient of the step's cell state."""
        tanh_c = np.tanh(step.c)
        return dc + dh_t * step.o * (1 - tanh_c * tanh_c)

    def gate_gradients(self, step, dh_t, dc_t):
        """Return the gradient of the step's pre-activations (2, n_ex, 4H), gate order i, f, g, o."""
        d_i = dc_t * step.g * step.i * (1 - step.i)
        d_f = dc_t * step.c_prev * step.f * (1 - step.f)
        d_g = dc_t * step.i * (1 - step.g * step.g)
        d_o = dh_t * np.tanh(step.c) * step.o * (1 - step.o)
        return np.concatenate([d_i, d_f, d_g, d_o], axis=-1)

    def mask_gate_gradients(self, valid, dz):
        """Zero the pre-activation gradient of padded steps, whose gates never ran."""
        return self.select_gradient(valid, dz, np.zeros_like(dz))

    def recurrent_gradients(self, step, dz, dc_t, w_hh, steps_back):
        """Return the gradients of the previous hidden and cell states.

        ``steps_back`` is 0 at the last step of the run and grows towards the first.
        """
        return dz @ w_hh.transpose(0, 2, 1), dc_t * step.f

    def select_gradient(self, valid, a, b):
        """Take ``a`` at valid steps and ``b`` at padded ones, in the backward pass."""
        return _where(valid, a, b)

    def input_and_weight_gradients(self, result, dz):
        """Return ``dx_run`` (2, n_t, n_ex, n_in) in run order and the parameter gradients."""
        w_ih, _, _ = self.stacked_weights()
        dx_run = dz @ w_ih.transpose(0, 2, 1)[:, None]

        gate_width = dz.shape[-1]
        dz_flat = dz.reshape(2, -1, gate_width)
        x_flat = result.x_run.reshape(2, -1, result.x_run.shape[-1])
        h_prev = np.stack([step.h_prev for step in result.steps], axis=1) if result.steps \
            else np.zeros((2, 0, self.hidden_size), dtype=dz.dtype)
        h_flat = h_prev.reshape(2, -1, self.hidden_size)

        d_w_ih = x_flat.transpose(0, 2, 1) @ dz_flat
        d_w_hh = h_flat.transpose(0, 2, 1) @ dz_flat
        d_b = dz_flat.sum(axis=1)
        dparams = {}
        for k in range(2):
            dparams.update(self.weight_gradients(k, d_w_ih[k], d_w_hh[k], d_b[k]))
        return dx_run, dparams

    def weight_gradients(self, k, d_w_ih, d_w_hh, d_b):
        """Key direction ``k``'s weight gradients by parameter name."""
        direction = DIRECTIONS[k]
        return {f"W_ih_{direction}": d_w_ih, f"W_hh_{direction}": d_w_hh, f"b_{direction}": d_b}

    def add_input_gradient(self, k, dx, dx_direction):
        """Add direction ``k``'s part of dx (n_t, n_ex, n_in), in original time order."""
        return dx + dx_direction

    def input_gradient_layout(self, dx_tm):
        """Return dx (n_t, n_ex, n_in) in the layout of ``x``, the vjp of :meth:`to_time_major`."""
        return dx_tm.transpose(1, 2, 0)

    def initial_state_vjp(self, dh0, dc0):
        """Map the runs' initial-state gradients onto the caller's ``h0``, ``c0``."""
        return dh0, dc0


CONTROLS = {
    "plain": MutantEntry(
        "plain", "No bug: the plain step-by-step base of most mutants.", None,
        "a control, which every property must pass", "never", None, PlainModel,
    ),
    "wrapped_reference": MutantEntry(
        "wrapped_reference", "No bug: the wrapped reference, base of the other mutants.", None,
        "a control, which every property must pass", "never", None, WrappedReferenceModel,
    ),
}
"""Bases without a bug, keyed like :data:`MUTANTS`; a property that fails on one has a false alarm."""


# ---------------------------------------------------------------------------
# Merge modes: errors in the backward pass only
# ---------------------------------------------------------------------------

@mutant("average_backward_not_halved", expected="merge_backward_consistency",
        bug="Average merge mode's backward hands dy to both halves without the factor 1/2.",
        shows_when="merge_mode 'average'", merge_modes=("average",))
class _AverageBackwardNotHalved(PlainModel):
    def merge_vjp(self, dy_tm, h_fwd, h_bwd):
        if self.merge_mode == "average":
            return dy_tm, dy_tm
        return super().merge_vjp(dy_tm, h_fwd, h_bwd)


@mutant("multiply_backward_halves_swapped", expected="merge_backward_consistency",
        bug="Multiply merge mode's backward scales each half's gradient by its own output, not the other's.",
        shows_when="merge_mode 'multiply'", merge_modes=("multiply",))
class _MultiplyBackwardHalvesSwapped(PlainModel):
    def merge_vjp(self, dy_tm, h_fwd, h_bwd):
        if self.merge_mode == "multiply":
            return dy_tm * h_fwd, dy_tm * h_bwd
        return super().merge_vjp(dy_tm, h_fwd, h_bwd)


@mutant("sum_backward_drops_backward_half", expected="merge_backward_consistency",
        bug="Sum merge mode's backward sends dy to the forward direction only.",
        shows_when="merge_mode 'sum'", merge_modes=("sum",))
class _SumBackwardDropsBackwardHalf(PlainModel):
    def merge_vjp(self, dy_tm, h_fwd, h_bwd):
        if self.merge_mode == "sum":
            return dy_tm, np.zeros_like(dy_tm)
        return super().merge_vjp(dy_tm, h_fwd, h_bwd)


@mutant("concat_backward_halves_swapped", expected="gradient_input",
        bug="Concat merge mode's backward splits dy with the halves exchanged (slices in the wrong order).",
        shows_when="merge_mode 'concat'", merge_modes=("concat",))
class _ConcatBackwardHalvesSwapped(PlainModel):
    def merge_vjp(self, dy_tm, h_fwd, h_bwd):
        if self.merge_mode == "concat":
            return dy_tm[..., self.hidden_size:], dy_tm[..., :self.hidden_size]
        return super().merge_vjp(dy_tm, h_fwd, h_bwd)


@mutant("none_mode_halves_swapped", expected="merge_forward_consistency",
        bug="Merge mode None stacks the backward half first (another framework's order); gradients match.",
        shows_when="merge_mode None", merge_modes=(None,))
class _NoneModeHalvesSwapped(PlainModel):
    def merge(self, h_fwd, h_bwd):
        if self.merge_mode is None:
            return np.stack([h_bwd, h_fwd])
        return super().merge(h_fwd, h_bwd)

    def merge_vjp(self, dy_tm, h_fwd, h_bwd):
        if self.merge_mode is None:
            return dy_tm[1], dy_tm[0]
        return super().merge_vjp(dy_tm, h_fwd, h_bwd)


# ---------------------------------------------------------------------------
# Direction and time order
# ---------------------------------------------------------------------------

@mutant("backward_half_not_rereversed", expected="direction_symmetry",
        bug="Backward direction's outputs left in run order (the final flip forgotten); gradients match.")
class _BackwardHalfNotRereversed(PlainModel):
    def reverse_output(self, k, a, lengths):
        return a


@mutant("backward_direction_not_reversed", expected="causality",
        bug="Backward direction runs forward in time (go_backwards never set); gradients match.")
class _BackwardDirectionNotReversed(PlainModel):
    def reverse_input(self, k, a, lengths):
        return a

    def reverse_output(self, k, a, lengths):
        return a


@mutant("backward_gradient_in_time_order", expected="gradient_input",
        bug="Backward pass feeds the backward direction its output gradients in original time order, not run order.")
class _BackwardGradientInTimeOrder(PlainModel):
    def upstream_in_run_order(self, k, dh, lengths):
        return dh


@mutant("backward_uses_forward_bias", expected="direction_decomposition",
        bug="Backward direction built with the forward direction's bias (a copy-pasted parameter name).")
class _BackwardUsesForwardBias(PlainModel):
    def direction_weights(self, k):
        w_ih, w_hh, _ = super().direction_weights(k)
        return w_ih, w_hh, self.params["b_fwd"]


# ---------------------------------------------------------------------------
# Lengths and padding
# ---------------------------------------------------------------------------

@mutant("lengths_ignored", expected="padding_invariance",
        bug="Lengths accepted but ignored: both directions run over the padding and nothing is "
            "masked; gradients match.",
        shows_when="lengths with padding")
class _LengthsIgnored(PlainModel):
    def direction_lengths(self, k, lengths):
        return None

    def mask_output(self, valid, y_tm):
        return y_tm

    def mask_upstream(self, valid, dy_tm):
        return dy_tm


@mutant("padded_sequence_reversed_whole", expected="padding_invariance",
        bug="Backward direction flips the whole padded sequence, so it starts at step n_t - 1, not "
            "length - 1; gradients match.",
        shows_when="lengths with padding")
class _PaddedSequenceReversedWhole(PlainModel):
    def direction_lengths(self, k, lengths):
        return lengths if k == 0 else None


@mutant("lengths_off_by_one", expected="padding_invariance",
        bug="Valid steps tested with t <= length instead of t < length, so one padded step runs; "
            "gradients match.",
        shows_when="lengths with padding")
class _LengthsOffByOne(PlainModel):
    def forward(self, x, *, lengths=None, h0=None, c0=None):
        if lengths is not None:
            lengths = np.minimum(np.asarray(lengths) + 1, np.shape(x)[-1])
        return super().forward(x, lengths=lengths, h0=h0, c0=c0)


@mutant("padded_outputs_not_zeroed", expected="padding_invariance",
        bug="Output at padded steps holds the carried hidden state instead of 0.",
        shows_when="lengths with padding")
class _PaddedOutputsNotZeroed(PlainModel):
    def emit(self, valid, h_new, h_carried):
        return self.select(valid, h_new, h_carried)

    def mask_output(self, valid, y_tm):
        return y_tm


@mutant("nan_padding_times_mask", expected="padding_invariance",
        bug="Padding masked by multiplying with a 0/1 mask, so NaN padding gives NaN (NaN * 0 = NaN).",
        shows_when="NaN in the padding")
class _NanPaddingTimesMask(PlainModel):
    def select(self, valid, a, b):
        return _mask_multiply(valid, a, b)


@mutant("final_state_read_at_last_step", expected="padding_invariance",
        bug="Forward final hidden state read from the output at step n_t - 1, which is 0 for padded examples.",
        shows_when="lengths with padding")
class _FinalStateReadAtLastStep(PlainModel):
    def final_states(self, result):
        h_n, c_n = super().final_states(result)
        h_n[0] = result.outputs[0][-1]
        return h_n, c_n


@mutant("batch_uses_max_length", expected="padding_invariance",
        bug="Every example of the batch runs for the longest example's length (one length per "
            "batch); gradients match.",
        shows_when="n_ex > 1 with unequal lengths")
class _BatchUsesMaxLength(PlainModel):
    def forward(self, x, *, lengths=None, h0=None, c0=None):
        if lengths is not None and len(lengths) > 0:
            lengths = np.full_like(np.asarray(lengths), np.max(lengths))
        return super().forward(x, lengths=lengths, h0=h0, c0=c0)


@mutant("padded_steps_leak_into_gradients", expected="gradient_input",
        bug="Backward pass does not mask padded steps, so their gates' gradients reach dx and the weights.",
        shows_when="lengths with padding")
class _PaddedStepsLeakIntoGradients(PlainModel):
    def mask_gate_gradients(self, valid, dz):
        return dz


@mutant("nan_upstream_times_mask", expected="padding_gradients",
        bug="Backward masks dy by multiplying with a 0/1 mask, so NaN in dy at padded steps gives NaN gradients.",
        shows_when="NaN in dy at padded steps")
class _NanUpstreamTimesMask(PlainModel):
    def select_gradient(self, valid, a, b):
        return _mask_multiply(valid, a, b)


# ---------------------------------------------------------------------------
# State between calls, arguments modified, nondeterminism
# ---------------------------------------------------------------------------

@mutant("state_carried_between_calls", expected="statelessness",
        bug="Final states kept per batch size and used as the next call's initial states (a stateful layer).",
        shows_when="h0 not given")
class _StateCarriedBetweenCalls(WrappedReferenceModel):
    def __init__(self, params, merge_mode):
        super().__init__(params, merge_mode)
        self._states = {}

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        n_ex = np.shape(x)[0]
        if h0 is None and n_ex in self._states:
            h0, c0 = self._states[n_ex]
        out = super().forward(x, lengths=lengths, h0=h0, c0=c0)
        self._states[n_ex] = (out.h_n, out.c_n)
        return out


@mutant("nondeterministic_output", expected="statelessness",
        bug="Output varies by a few ulp between identical calls (reductions in a nondeterministic order).")
class _NondeterministicOutput(WrappedReferenceModel):
    def forward(self, x, *, lengths=None, h0=None, c0=None):
        out = super().forward(x, lengths=lengths, h0=h0, c0=c0)
        # A fresh unseeded generator, so no caller's random state is touched.
        ulps = np.random.default_rng().choice([-2, -1, 1, 2], size=out.y.shape)
        eps = np.finfo(out.y.dtype).eps
        out.y = (out.y * (1 + ulps * eps)).astype(out.y.dtype)
        return out


@mutant("params_halved_in_place", expected="no_mutation",
        bug="Sigmoid columns of the caller's weights halved in place for the tanh form of the sigmoid.")
class _ParamsHalvedInPlace(WrappedReferenceModel):
    def __init__(self, params, merge_mode):
        super().__init__({name: np.array(value) for name, value in params.items()}, merge_mode)
        hidden = self.hidden_size
        sigmoid_columns = np.r_[0:2 * hidden, 3 * hidden:4 * hidden]
        for name in PARAM_NAMES:
            params[name][..., sigmoid_columns] *= 0.5


@mutant("dy_halved_in_place", expected="no_mutation",
        bug="Average merge mode's backward halves the caller's dy in place, then runs the sum backward.",
        shows_when="merge_mode 'average'", merge_modes=("average",))
class _DyHalvedInPlace(WrappedReferenceModel):
    def forward(self, x, *, lengths=None, h0=None, c0=None):
        self._sum = bilstm.forward(x, self.params, merge_mode="sum", lengths=lengths, h0=h0, c0=c0)
        return super().forward(x, lengths=lengths, h0=h0, c0=c0)

    def backward(self, dy, *, dh_n=None, dc_n=None):
        if self.merge_mode != "average":
            return super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        dy *= 0.5
        grads = bilstm.backward(self._sum, dy, dh_n=dh_n, dc_n=dc_n)
        return Grads(grads.dx, grads.dparams, grads.dh0, grads.dc0)


@mutant("final_state_written_into_h0", expected="no_mutation",
        bug="Final states written into the caller's h0 and c0 buffers (in/out state arguments).",
        shows_when="h0 given")
class _FinalStateWrittenIntoH0(WrappedReferenceModel):
    def forward(self, x, *, lengths=None, h0=None, c0=None):
        out = super().forward(x, lengths=lengths, h0=h0, c0=c0)
        if h0 is not None:
            h0[...] = out.h_n
            c0[...] = out.c_n
        return out


# ---------------------------------------------------------------------------
# Gradient blocks
# ---------------------------------------------------------------------------

@mutant("bias_gradient_missing", expected="gradient_params",
        bug="Bias gradients never accumulated (left at their zero initial value) in both directions.")
class _BiasGradientMissing(WrappedReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        for name in ("b_fwd", "b_bwd"):
            grads.dparams = _scaled(grads, name, 0.0)
        return grads


@mutant("backward_recurrent_weight_gradient_zero", expected="gradient_params",
        bug="Recurrent-weight gradient of the backward direction never filled in.")
class _BackwardRecurrentWeightGradientZero(WrappedReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        grads.dparams = _scaled(grads, "W_hh_bwd", 0.0)
        return grads


@mutant("recurrent_gradient_off_by_1e_5", expected="gradient_params",
        bug="W_hh_bwd gradient off by a relative 1e-5 (a constant rounded to six digits in one branch).",
        shows_when="float64")
class _RecurrentGradientOffBy1e5(WrappedReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        grads.dparams = _scaled(grads, "W_hh_bwd", 1 + GRADIENT_ERROR)
        return grads


@mutant("forget_gate_gradient_uses_new_cell", expected="gradient_params",
        bug="Forget gate's gradient multiplied by the new cell state c_t instead of c_(t-1).")
class _ForgetGateGradientUsesNewCell(PlainModel):
    def gate_gradients(self, step, dh_t, dc_t):
        dz = super().gate_gradients(step, dh_t, dc_t)
        forget = _gate_block(self.hidden_size, 1)
        dz[..., forget] = dc_t * step.c * step.f * (1 - step.f)
        return dz


@mutant("backward_gate_order_swapped", expected="gradient_params",
        bug="Forward pass uses gate order i, f, g, o but the backward pass assumes f, i, g, o.")
class _BackwardGateOrderSwapped(PlainModel):
    def gate_gradients(self, step, dh_t, dc_t):
        dz = super().gate_gradients(step, dh_t, dc_t)
        input_gate, forget = _gate_block(self.hidden_size, 0), _gate_block(self.hidden_size, 1)
        dz[..., input_gate], dz[..., forget] = dz[..., forget].copy(), dz[..., input_gate].copy()
        return dz


@mutant("truncated_bptt", expected="gradient_input",
        bug=f"Truncated backpropagation through time: gradients stop after {STEPS_KEPT} steps back.",
        shows_when=f"n_t > {STEPS_KEPT}")
class _TruncatedBptt(PlainModel):
    def recurrent_gradients(self, step, dz, dc_t, w_hh, steps_back):
        dh_prev, dc_prev = super().recurrent_gradients(step, dz, dc_t, w_hh, steps_back)
        if steps_back + 1 >= STEPS_KEPT:
            return np.zeros_like(dh_prev), np.zeros_like(dc_prev)
        return dh_prev, dc_prev


@mutant("cell_gradient_without_tanh_derivative", expected="gradient_input",
        bug="Gradient from h to c omits the factor 1 - tanh(c)^2.")
class _CellGradientWithoutTanhDerivative(PlainModel):
    def cell_gradient(self, step, dh_t, dc):
        return dc + dh_t * step.o


@mutant("dx_missing_backward_direction", expected="gradient_input",
        bug="dx takes the forward direction's part only (the backward direction's contribution never added).")
class _DxMissingBackwardDirection(PlainModel):
    def add_input_gradient(self, k, dx, dx_direction):
        return dx if k == 1 else dx + dx_direction


@mutant("initial_state_gradients_directions_swapped", expected="gradient_initial_state",
        bug="dh0 and dc0 returned with the two directions exchanged (an index slip in backward only).",
        shows_when="h0 given")
class _InitialStateGradientsDirectionsSwapped(PlainModel):
    def initial_state_vjp(self, dh0, dc0):
        return dh0[::-1].copy(), dc0[::-1].copy()


@mutant("final_cell_gradient_ignored", expected="gradient_final_state",
        bug="Upstream gradient dc_n accepted but dropped; the backward loop starts from dc = 0.",
        shows_when="dc_n given")
class _FinalCellGradientIgnored(PlainModel):
    def final_state_vjp(self, dh_n, dc_n):
        return dh_n, np.zeros_like(dc_n)


@mutant("gradient_norm_clipped", expected="backward_linearity",
        bug="Gradients rescaled to a total norm of at most 1 inside backward (clipping in the wrong place).",
        shows_when="gradient norm > 1")
class _GradientNormClipped(WrappedReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        arrays = [grads.dx, grads.dh0, grads.dc0, *grads.dparams.values()]
        norm = np.sqrt(sum(float(np.sum(a * a)) for a in arrays))
        if norm <= 1.0:
            return grads
        scale = grads.dx.dtype.type(1.0 / norm)
        dparams = {name: value * scale for name, value in grads.dparams.items()}
        return Grads(grads.dx * scale, dparams, grads.dh0 * scale, grads.dc0 * scale)


# ---------------------------------------------------------------------------
# Dtypes and numerical stability
# ---------------------------------------------------------------------------

def _cast(array, dtype):
    return None if array is None else np.asarray(array).astype(dtype)


def _cast_grads(grads, dtype):
    dparams = {name: value.astype(dtype) for name, value in grads.dparams.items()}
    return Grads(grads.dx.astype(dtype), dparams, _cast(grads.dh0, dtype), _cast(grads.dc0, dtype))


@mutant("float32_returned_as_float64", expected="dtype_honoured",
        bug="float32 input promoted to float64, and float64 results returned.",
        shows_when="float32")
class _Float32ReturnedAsFloat64(WrappedReferenceModel):
    def __init__(self, params, merge_mode):
        super().__init__(cast_params(params, np.float64), merge_mode)

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        double = np.float64
        return super().forward(_cast(x, double), lengths=lengths, h0=_cast(h0, double),
                               c0=_cast(c0, double))

    def backward(self, dy, *, dh_n=None, dc_n=None):
        double = np.float64
        return super().backward(_cast(dy, double), dh_n=_cast(dh_n, double), dc_n=_cast(dc_n, double))


@mutant("float64_computed_in_float32", expected="dtype_honoured",
        bug="float64 input computed in float32 (a single-precision kernel) and cast back.",
        shows_when="float64")
class _Float64ComputedInFloat32(WrappedReferenceModel):
    def __init__(self, params, merge_mode):
        super().__init__(cast_params(params, np.float32), merge_mode)

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        self.dtype, single = np.asarray(x).dtype, np.float32
        out = super().forward(_cast(x, single), lengths=lengths, h0=_cast(h0, single),
                              c0=_cast(c0, single))
        return Output(out.y.astype(self.dtype), _cast(out.h_n, self.dtype), _cast(out.c_n, self.dtype))

    def backward(self, dy, *, dh_n=None, dc_n=None):
        single = np.float32
        grads = super().backward(_cast(dy, single), dh_n=_cast(dh_n, single), dc_n=_cast(dc_n, single))
        return _cast_grads(grads, self.dtype)


@mutant("unstable_sigmoid", expected="large_preactivations",
        bug="Sigmoid written exp(z) / (1 + exp(z)), which overflows to inf / inf = NaN for large z.",
        shows_when="a pre-activation above 88.7 (float32) or 709.8 (float64)")
class _UnstableSigmoid(PlainModel):
    def sigmoid(self, z):
        e = np.exp(z)
        return e / (1 + e)


# ---------------------------------------------------------------------------
# Bugs that need particular sizes
# ---------------------------------------------------------------------------

@mutant("single_step_reuses_forward_run", expected="single_step",
        bug="With n_t = 1 the backward run is skipped and the forward direction's output reused "
            "(both directions see the same single step).",
        shows_when="n_t = 1")
class _SingleStepReusesForwardRun(PlainModel):
    def forward(self, x, *, lengths=None, h0=None, c0=None):
        self._single_step = np.shape(x)[-1] == 1
        return super().forward(x, lengths=lengths, h0=h0, c0=c0)

    def direction_weights(self, k):
        return super().direction_weights(0 if self._single_step else k)


@mutant("initial_state_from_first_example", expected="batch_independence",
        bug="Initial states of example 0 broadcast to the whole batch (h0[:, :1] instead of h0).",
        shows_when="n_ex > 1 with h0 given")
class _InitialStateFromFirstExample(PlainModel):
    def initial_states(self, h0, c0, n_ex, dtype):
        h0, c0 = super().initial_states(h0, c0, n_ex, dtype)
        return np.broadcast_to(h0[:, :1], h0.shape), np.broadcast_to(c0[:, :1], c0.shape)


@mutant("initial_states_rows_reversed", expected="permutation_equivariance",
        bug="Initial states paired with the examples in reverse order (batch axis flipped once too often).",
        shows_when="n_ex > 1 with h0 given")
class _InitialStatesRowsReversed(PlainModel):
    def initial_states(self, h0, c0, n_ex, dtype):
        h0, c0 = super().initial_states(h0, c0, n_ex, dtype)
        return h0[:, ::-1], c0[:, ::-1]

    def initial_state_vjp(self, dh0, dc0):
        return dh0[:, ::-1].copy(), dc0[:, ::-1].copy()


@mutant("reshape_instead_of_transpose", expected="batch_independence",
        bug="Input brought to time-major layout with reshape instead of transpose; gradients match.",
        shows_when="n_ex > 1 or n_in > 1")
class _ReshapeInsteadOfTranspose(PlainModel):
    def to_time_major(self, x):
        n_ex, n_in, n_t = x.shape
        return x.reshape(n_t, n_ex, n_in)

    def input_gradient_layout(self, dx_tm):
        n_t, n_ex, n_in = dx_tm.shape
        return dx_tm.reshape(n_ex, n_in, n_t)


@mutant("weights_identified_by_shape", expected="single_step",
        bug="Weights told apart by their shapes, so W_ih and W_hh are exchanged when n_in = H; gradients match.",
        shows_when="n_in = H")
class _WeightsIdentifiedByShape(PlainModel):
    def direction_weights(self, k):
        w_ih, w_hh, b = super().direction_weights(k)
        if w_ih.shape == w_hh.shape:
            return w_hh, w_ih, b
        return w_ih, w_hh, b

    def weight_gradients(self, k, d_w_ih, d_w_hh, d_b):
        if d_w_ih.shape == d_w_hh.shape:
            d_w_ih, d_w_hh = d_w_hh, d_w_ih
        return super().weight_gradients(k, d_w_ih, d_w_hh, d_b)


# ---------------------------------------------------------------------------
# The cell and the states
# ---------------------------------------------------------------------------

@mutant("forget_bias_added_at_runtime", expected="single_step",
        bug="A forget-gate bias of 1 added at run time on top of the given bias (Keras unit_forget_bias).",
        shows_when="c0 given")
class _ForgetBiasAddedAtRuntime(PlainModel):
    def direction_weights(self, k):
        w_ih, w_hh, b = super().direction_weights(k)
        b = b.copy()
        b[_gate_block(self.hidden_size, 1)] += 1
        return w_ih, w_hh, b


@mutant("hidden_state_without_tanh", expected="hidden_state_bounds",
        bug="Hidden state computed as o * c, the tanh of the cell state forgotten.",
        shows_when="|c| > 1, with saturating weights")
class _HiddenStateWithoutTanh(PlainModel):
    def cell_output(self, o, c):
        return o * c


@mutant("hidden_state_with_sigmoid_of_cell", expected="zero_weights",
        bug="Hidden state computed as o * sigmoid(c) (the activation list off by one).")
class _HiddenStateWithSigmoidOfCell(PlainModel):
    def cell_output(self, o, c):
        return o * _sigmoid(c)


@mutant("initial_states_directions_swapped", expected="single_step",
        bug="h0[0] and c0[0] fed to the backward direction and h0[1], c0[1] to the forward one; gradients match.",
        shows_when="h0 given")
class _InitialStatesDirectionsSwapped(PlainModel):
    def initial_states(self, h0, c0, n_ex, dtype):
        h0, c0 = super().initial_states(h0, c0, n_ex, dtype)
        return h0[::-1], c0[::-1]

    def initial_state_vjp(self, dh0, dc0):
        return dh0[::-1].copy(), dc0[::-1].copy()


@mutant("final_states_directions_swapped", expected="final_state_positions",
        bug="h_n and c_n returned backward direction first (another framework's order); gradients match.")
class _FinalStatesDirectionsSwapped(PlainModel):
    def final_states(self, result):
        h_n, c_n = super().final_states(result)
        return h_n[::-1].copy(), c_n[::-1].copy()

    def final_state_vjp(self, dh_n, dc_n):
        return dh_n[::-1], dc_n[::-1]
