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

A mutant changes only its forward pass or only its backward pass unless its
bug is about both: a bug in the forward pass of an implementation that uses
autodiff comes with matching gradients, and the hooks for such bugs have a
matching gradient hook.

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
from properties.protocol import Capabilities, Grads, Implementation, Model, Output

REAL_CAPABILITIES = replace(ReferenceImplementation.capabilities, complex_input=False)
"""Capabilities of every mutant: the reference's, less complex input, which no property uses."""

STEPS_KEPT = 2
"""Steps of backpropagation through time kept by the ``truncated_bptt`` mutant."""

GRADIENT_ERROR = 1e-5
"""Relative error of the ``gradient_off_by_1e-5`` mutant's W_hh_bwd gradient."""


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
    """Select by arithmetic, ``valid * a + (1 - valid) * b``, which lets NaN through."""
    if valid is None:
        return a
    return valid * a + (1 - valid) * b


def _sigmoid(z):
    # The tanh form never overflows.
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
    """What one forward step keeps for the backward pass; every array is (n_ex, ...)."""

    x: np.ndarray
    h_prev: np.ndarray
    c_prev: np.ndarray
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    c: np.ndarray
    valid: np.ndarray | None


@dataclass
class _Run:
    """One direction's forward run: steps in run order and outputs in original order."""

    lengths: np.ndarray | None
    x_shape: tuple        # (n_t, n_ex, n_in)
    steps: list
    outputs: np.ndarray   # (n_t, n_ex, H)
    h: np.ndarray         # (n_ex, H) final hidden state
    c: np.ndarray


class PlainModel(Model):
    """A plain numpy BiLSTM: a loop over steps forward, a loop over steps backward.

    It follows :mod:`bilstm.reference` (gate order i, f, g, o, zero output
    at padded steps, padded steps carry the state) without its batching and
    in-place tricks.  Every method below ``backward`` is a hook that a
    mutant may override.
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

        runs = [self.run_direction(k, x_tm, lengths, h0[k], c0[k]) for k in range(2)]
        y_tm = self.merge(runs[0].outputs, runs[1].outputs)
        y_tm = self.mask_output(_valid_steps(n_t, n_ex, lengths), y_tm)
        h_n, c_n = self.final_states(runs, lengths)

        self._last = (x_tm, lengths, runs)
        return Output(np.ascontiguousarray(np.moveaxis(y_tm, -3, -1)), h_n, c_n)

    def backward(self, dy, *, dh_n=None, dc_n=None):
        x_tm, lengths, runs = self._last
        n_t, n_ex, n_in = x_tm.shape
        zeros = np.zeros((2, n_ex, self.hidden_size), dtype=x_tm.dtype)
        dh_n, dc_n = self.final_state_vjp(zeros if dh_n is None else dh_n,
                                          zeros if dc_n is None else dc_n)

        dy_tm = np.moveaxis(np.asarray(dy), -1, -3)
        dy_tm = self.mask_upstream(_valid_steps(n_t, n_ex, lengths), dy_tm)
        dh_halves = self.merge_vjp(dy_tm, runs[0].outputs, runs[1].outputs)

        dx = np.zeros_like(x_tm)
        dparams, dh0, dc0 = {}, np.zeros_like(zeros), np.zeros_like(zeros)
        for k, run in enumerate(runs):
            dh_run = self.upstream_in_run_order(k, dh_halves[k], run.lengths)
            dx_run, grads, dh0[k], dc0[k] = self.backprop_direction(k, run, dh_run, dh_n[k], dc_n[k])
            dx = self.add_input_gradient(k, dx, self.reverse_input(k, dx_run, run.lengths))
            dparams.update(grads)

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

    def direction_weights(self, k):
        """Return ``(W_ih, W_hh, b)`` of direction ``k`` (0 forward, 1 backward)."""
        direction = DIRECTIONS[k]
        return tuple(self.params[f"{stem}_{direction}"] for stem in ("W_ih", "W_hh", "b"))

    def direction_lengths(self, k, lengths):
        """Return the lengths the run of direction ``k`` honours."""
        return lengths

    def reverse_input(self, k, a, lengths):
        """Put a time-major array into direction ``k``'s run order (and back: the map is an involution)."""
        return a if k == 0 else _reverse_valid(a, lengths)

    def reverse_output(self, k, a, lengths):
        """Put direction ``k``'s outputs from run order back into original time order."""
        return a if k == 0 else _reverse_valid(a, lengths)

    def run_direction(self, k, x_tm, lengths, h, c):
        """Run direction ``k`` from the states ``h``, ``c`` (n_ex, H)."""
        run_lengths = self.direction_lengths(k, lengths)
        x_run = self.reverse_input(k, x_tm, run_lengths)
        valid = _valid_steps(x_tm.shape[0], x_tm.shape[1], run_lengths)
        weights = self.direction_weights(k)

        steps, outputs = [], np.zeros(x_tm.shape[:2] + (self.hidden_size,), dtype=x_tm.dtype)
        for t in range(x_tm.shape[0]):
            valid_t = None if valid is None else valid[t]
            step = self.cell(x_run[t], h, c, weights, valid_t)
            h_new = self.cell_output(step.o, step.c)
            outputs[t] = self.emit(valid_t, h_new, h)
            h, c = self.select(valid_t, h_new, h), self.select(valid_t, step.c, c)
            steps.append(step)

        outputs = self.reverse_output(k, outputs, run_lengths)
        return _Run(run_lengths, x_tm.shape, steps, outputs, h, c)

    def cell(self, x_t, h, c, weights, valid_t):
        """Return the :class:`_Step` of one LSTM step."""
        w_ih, w_hh, b = weights
        z = x_t @ w_ih + h @ w_hh + b
        blocks = [z[:, _gate_block(self.hidden_size, gate)] for gate in range(4)]
        i, f, o = (self.sigmoid(blocks[gate]) for gate in (0, 1, 3))
        g = np.tanh(blocks[2])
        return _Step(x_t, h, c, i, f, g, o, f * c + i * g, valid_t)

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

    def final_states(self, runs, lengths):
        """Return ``(h_n, c_n)``, each (2, n_ex, H), forward direction first."""
        return np.stack([runs[0].h, runs[1].h]), np.stack([runs[0].c, runs[1].c])

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

    def backprop_direction(self, k, run, dh_run, dh, dc):
        """Backpropagate through one direction's run.

        Returns ``(dx_run, dparams, dh0, dc0)``: ``dx_run`` (n_t, n_ex, n_in)
        in run order and ``dparams`` keyed by that direction's parameter names.
        """
        w_ih, w_hh, _ = self.direction_weights(k)
        d_w_ih, d_w_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
        d_b = np.zeros(w_ih.shape[1], dtype=w_ih.dtype)
        dx_run = np.zeros(run.x_shape, dtype=w_ih.dtype)

        for steps_back, t in enumerate(reversed(range(len(run.steps)))):
            step = run.steps[t]
            dh_t = dh + dh_run[t]
            dc_t = self.cell_gradient(step, dh_t, dc)
            dz = self.mask_gate_gradients(step.valid, self.gate_gradients(step, dh_t, dc_t))

            dx_run[t] = dz @ w_ih.T
            d_w_ih += step.x.T @ dz
            d_w_hh += step.h_prev.T @ dz
            d_b += dz.sum(axis=0)

            dh_prev, dc_prev = self.recurrent_gradients(step, dz, dc_t, w_hh, steps_back)
            dh = self.select_gradient(step.valid, dh_prev, dh)
            dc = self.select_gradient(step.valid, dc_prev, dc)

        return dx_run, self.weight_gradients(k, d_w_ih, d_w_hh, d_b), dh, dc

    def cell_gradient(self, step, dh_t, dc):
        """Return the total gradient of the step's cell state."""
        tanh_c = np.tanh(step.c)
        return dc + dh_t * step.o * (1 - tanh_c * tanh_c)

    def gate_gradients(self, step, dh_t, dc_t):
        """Return the gradient of the step's pre-activations (n_ex, 4H), gate order i, f, g, o."""
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
        return dz @ w_hh.T, dc_t * step.f

    def select_gradient(self, valid, a, b):
        """Take ``a`` at valid steps and ``b`` at padded ones, in the backward pass."""
        return _where(valid, a, b)

    def weight_gradients(self, k, d_w_ih, d_w_hh, d_b):
        """Key direction ``k``'s weight gradients by parameter name."""
        direction = DIRECTIONS[k]
        return {f"W_ih_{direction}": d_w_ih, f"W_hh_{direction}": d_w_hh, f"b_{direction}": d_b}

    def input_gradient_layout(self, dx_tm):
        """Return dx (n_t, n_ex, n_in) in the layout of ``x``, the vjp of :meth:`to_time_major`."""
        return dx_tm.transpose(1, 2, 0)

    def add_input_gradient(self, k, dx, dx_direction):
        """Add direction ``k``'s part of dx, in original time order."""
        return dx + dx_direction

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
