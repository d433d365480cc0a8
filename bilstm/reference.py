r"""Reference bidirectional LSTM: exact forward pass and its exact gradient.

Layout and notation
-------------------
``x`` has shape ``(n_ex, n_in, n_t)`` (examples, input features, time steps),
the layout of numpy-ml; :mod:`bilstm.layout` converts time-major and
batch-first data.  ``H`` is the hidden size of each direction and the gate
order of every weight is i, f, g, o (see :mod:`bilstm.params`).

One direction
-------------
For a direction with input weights :math:`W` ``(n_in, 4H)``, recurrent weights
:math:`U` ``(H, 4H)`` and bias :math:`b` ``(4H,)``, one step maps
:math:`(x_t, h_{t-1}, c_{t-1})` to :math:`(h_t, c_t)`:

.. math::

    z_t &= x_t W + h_{t-1} U + b = [z^i, z^f, z^g, z^o] \\
    i_t &= \sigma(z^i), \quad f_t = \sigma(z^f), \quad
    g_t = \tanh(z^g), \quad o_t = \sigma(z^o) \\
    c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
    h_t &= o_t \odot \tanh(c_t)

with :math:`\sigma(z) = (1 + \tanh(z / 2)) / 2`, which equals the logistic
function but never overflows, so pre-activations of any finite size (even
:math:`|z| = 10^4`) give no warning, inf or NaN.

The forward direction runs over :math:`t = 0, \dots, L - 1` from
``(h0[0], c0[0])``; the backward direction runs over
:math:`t = L - 1, \dots, 0` from ``(h0[1], c0[1])``, where :math:`L` is the
example's length (``n_t`` when ``lengths`` is None).

Lengths and padding
-------------------
Steps :math:`t \ge L` are padding.  The output there is exactly 0, the input
there is never read (NaN and inf included), and the upstream gradient there
is ignored.  The final states are the forward state after step
:math:`L - 1` and the backward state after step 0; for :math:`L = 0` both are
the initial states.

Merge modes
-----------
With :math:`h^{\rightarrow}_t` and :math:`h^{\leftarrow}_t` the two
directions' hidden states at step :math:`t`:

- ``"concat"``: :math:`[h^{\rightarrow}_t, h^{\leftarrow}_t]`, forward half first, width 2H;
- ``"sum"``: :math:`h^{\rightarrow}_t + h^{\leftarrow}_t`;
- ``"average"`` (alias ``"ave"``): :math:`(h^{\rightarrow}_t + h^{\leftarrow}_t) / 2`;
- ``"multiply"`` (alias ``"mul"``): :math:`h^{\rightarrow}_t \odot h^{\leftarrow}_t`;
- ``None``: both, stacked on a new leading axis of size 2, shape
  ``(2, n_ex, H, n_t)``.

Dtypes and edge cases
---------------------
Computation runs in the dtype of ``x``: float32, float64, or complex128 for
complex-step differentiation.  Parameters and states must share that dtype;
mixed dtypes are rejected, never promoted.  NaN or inf at a valid position of
``x``, in the parameters or in the states is rejected.  An empty batch
(``n_ex = 0``) returns empty arrays; ``n_t = 0`` returns an output with an
empty time axis and final states equal to the initial states.

Implementation
--------------
The input projections of all steps and both directions take one batched
matrix product.  The backward direction runs on a copy of the input in which
each example's valid steps are reversed, so both directions advance together
in one recurrent loop.  The weight columns of the sigmoid gates are halved
once before the loop, so one tanh call per step activates all four gates.
Both loops write into arrays allocated before them.  The weight gradients
take one product each after the backward loop.
"""

from dataclasses import dataclass, field

import numpy as np

from bilstm._validate import (
    check_finite, validate_lengths, validate_params, validate_state,
    validate_upstream, validate_x,
)
from bilstm.errors import InvalidArgumentError
from bilstm.merge import canonical_merge_mode, merge, merge_vjp, output_width
from bilstm.params import DIRECTIONS


@dataclass(frozen=True)
class Forward:
    """Result of :func:`forward`; pass it to :func:`backward` any number of times.

    Attributes
    ----------
    y : ndarray
        Output, shape (n_ex, 2H, n_t) for ``"concat"``, (2, n_ex, H, n_t)
        for ``None`` and (n_ex, H, n_t) otherwise.
    h_n, c_n : ndarray, shape (2, n_ex, H)
        Final hidden and cell states; index 0 is the forward direction
        after its last valid step, index 1 the backward direction after
        step 0.
    merge_mode : str or None
        Canonical merge mode used.
    lengths : ndarray of int64, shape (n_ex,), or None
        Validated lengths.
    """

    y: np.ndarray
    h_n: np.ndarray
    c_n: np.ndarray
    merge_mode: str | None
    lengths: np.ndarray | None
    cache: "_Cache" = field(repr=False)


@dataclass(frozen=True)
class Gradients:
    """Gradients returned by :func:`backward`.

    Attributes
    ----------
    dx : ndarray, shape (n_ex, n_in, n_t)
        Gradient with respect to ``x``; exactly 0 at padded steps.
    dparams : dict of str to ndarray
        Gradient of every parameter, keyed as the parameters are.
    dh0, dc0 : ndarray, shape (2, n_ex, H)
        Gradients with respect to the initial states.
    """

    dx: np.ndarray
    dparams: dict
    dh0: np.ndarray
    dc0: np.ndarray


@dataclass(frozen=True)
class _Cache:
    """Read-only arrays that :func:`backward` needs, all in run order."""

    time: "_TimeIndex"
    x_run: np.ndarray       # (2, n_t, n_ex, n_in), backward direction reversed
    w_ih: np.ndarray        # (2, n_in, 4H), internal gate order
    w_hh: np.ndarray        # (2, H, 4H), internal gate order
    gates: np.ndarray       # (2, n_t, n_ex, 4H) activated gates i, f, o, g
    tanh_c: np.ndarray      # (2, n_t, n_ex, H)
    c: np.ndarray           # (2, n_t + 1, n_ex, H), c[:, 0] is c0
    h: np.ndarray           # (2, n_t + 1, n_ex, H), h[:, 0] is h0


class _TimeIndex:
    """Valid-step mask and the per-example time reversal of the backward direction."""

    def __init__(self, n_t, n_ex, lengths):
        self.n_t = n_t
        self.lengths = lengths
        self.valid = None
        self.reverse_index = None
        self.padded_steps = np.zeros(n_t, dtype=bool)

        if lengths is not None:
            steps = np.arange(n_t)[:, None]
            self.valid = steps < lengths[None, :]
            self.reverse_index = np.where(self.valid, lengths[None, :] - 1 - steps, steps)
            self.batch_index = np.arange(n_ex)[None, :]
            self.padded_steps = ~self.valid.all(axis=1)

    def valid_in_output_layout(self):
        """Return the mask as (n_ex, 1, n_t), broadcastable to ``x`` and ``y``."""
        if self.valid is None:
            return None
        return self.valid.T[:, None, :]

    def reverse(self, a):
        """Reverse each example's valid steps of a time-major array (n_t, n_ex, ...).

        Padded steps stay in place.  The map is its own inverse, so it takes
        original time to run order and back.
        """
        if self.reverse_index is None:
            return a[::-1]
        return a[self.reverse_index, self.batch_index]

    def zero_padding(self, a):
        """Return a time-major array with every padded step set to 0."""
        if self.valid is None:
            return a
        return np.where(self.valid[..., None], a, 0)


# Internal gate order i, f, o, g puts the three sigmoid gates side by side, so
# one slice covers them. Swapping the last two blocks is its own inverse.
def _gate_permutation(hidden_size):
    blocks = np.arange(4 * hidden_size).reshape(4, hidden_size)
    return blocks[[0, 1, 3, 2]].ravel()


def _stack_weights(arrays, hidden_size):
    """Stack both directions' weights as (2, ...) in internal gate order."""
    perm = _gate_permutation(hidden_size)
    stacked = {}
    for stem in ("W_ih", "W_hh", "b"):
        pair = [arrays[f"{stem}_{d}"] for d in DIRECTIONS]
        stacked[stem] = np.stack(pair)[..., perm]
    return stacked


def _gate_views(a, hidden_size):
    """Return views of the internal gate blocks i, f, o, g along the last axis of ``a``."""
    h = hidden_size
    return a[..., :h], a[..., h:2 * h], a[..., 2 * h:3 * h], a[..., 3 * h:]


def _halve_sigmoid_columns(w, hidden_size):
    """Return a copy of stacked weights or biases with the i, f, o columns halved.

    The sigmoid gates need tanh(z / 2).  Halving is exact in binary floating
    point unless it underflows to a subnormal number.  So products and sums
    with the halved columns are exactly half of the unscaled ones, and one
    tanh call serves all four gates without a separate scaling pass.
    """
    # The copy keeps the memory layout of ``w``, so that BLAS runs the same
    # kernel as on the unscaled weights and every result keeps its last bit.
    halved = w.copy(order="K")
    halved[..., :3 * hidden_size] *= 0.5
    return halved


def _activate_inplace(z, hidden_size):
    """Turn pre-activations into gates; the i, f, o columns must already be halved.

    With z / 2 in the sigmoid columns, sigma(z) = (1 + tanh(z / 2)) / 2 and
    g = tanh(z) share one tanh call.
    """
    np.tanh(z, out=z)
    sigmoid_gates = z[..., :3 * hidden_size]
    sigmoid_gates *= 0.5
    sigmoid_gates += 0.5


def _recur(x_run, weights, h0, c0, time):
    """Run both directions' recurrences together; return the arrays backward needs."""
    _, n_t, n_ex, n_in = x_run.shape
    hidden_size = h0.shape[-1]
    w_ih = _halve_sigmoid_columns(weights["W_ih"], hidden_size)
    w_hh = _halve_sigmoid_columns(weights["W_hh"], hidden_size)
    b = _halve_sigmoid_columns(weights["b"], hidden_size)

    # The input projections go straight into the gates array, and each step
    # adds its recurrent term and activates in place. This saves a second
    # (2, n_t, n_ex, 4H) array and the page faults of filling it.
    gates = np.matmul(x_run.reshape(2, n_t * n_ex, n_in), w_ih)
    gates = gates.reshape(2, n_t, n_ex, 4 * hidden_size)
    gates += b[:, None, None, :]

    tanh_c = np.empty((2, n_t, n_ex, hidden_size), dtype=x_run.dtype)
    c = np.empty((2, n_t + 1, n_ex, hidden_size), dtype=x_run.dtype)
    h = np.empty_like(c)
    c[:, 0] = c0
    h[:, 0] = h0

    # Scratch reused by every step, so the loop allocates nothing.
    recurrent = np.empty((2, n_ex, 4 * hidden_size), dtype=x_run.dtype)
    i_times_g = np.empty((2, n_ex, hidden_size), dtype=x_run.dtype)

    for s in range(n_t):
        z = gates[:, s]
        np.matmul(h[:, s], w_hh, out=recurrent)
        z += recurrent
        _activate_inplace(z, hidden_size)
        i, f, o, g = _gate_views(z, hidden_size)

        np.multiply(f, c[:, s], out=c[:, s + 1])
        np.multiply(i, g, out=i_times_g)
        c[:, s + 1] += i_times_g
        np.tanh(c[:, s + 1], out=tanh_c[:, s])
        np.multiply(o, tanh_c[:, s], out=h[:, s + 1])

        # A padded step carries the state through unchanged, which puts the
        # final state at the last valid step.
        if time.padded_steps[s]:
            padded = ~time.valid[s][None, :, None]
            np.copyto(c[:, s + 1], c[:, s], where=padded)
            np.copyto(h[:, s + 1], h[:, s], where=padded)

    return gates, tanh_c, c, h


def forward(x, params, *, merge_mode="concat", lengths=None, h0=None, c0=None):
    """Run the bidirectional LSTM forward.

    Parameters
    ----------
    x : ndarray, shape (n_ex, n_in, n_t)
        Input, float32, float64 or complex128.
    params : dict of str to ndarray
        Parameters keyed by :data:`bilstm.params.PARAM_NAMES`, in ``x``'s dtype.
    merge_mode : {"concat", "sum", "average", "multiply", None, "ave", "mul"}
        How the two directions are combined.
    lengths : array of int, shape (n_ex,), optional
        Valid steps per example, each in ``[0, n_t]``. Default: all ``n_t``.
    h0, c0 : ndarray, shape (2, n_ex, H), optional
        Initial states, forward direction at index 0. Default: zeros.

    Returns
    -------
    Forward
        Output, final states and the cache for :func:`backward`.

    Raises
    ------
    InvalidArgumentError, InvalidDtypeError
        For any invalid argument, before any computation.
    """
    merge_mode = canonical_merge_mode(merge_mode)
    x = validate_x(x)
    n_ex, n_in, n_t = x.shape
    hidden_size, arrays = validate_params(params, n_in, x.dtype)
    lengths = validate_lengths(lengths, n_ex, n_t)
    h0 = validate_state("h0", h0, (2, n_ex, hidden_size), x.dtype)
    c0 = validate_state("c0", c0, (2, n_ex, hidden_size), x.dtype)
    time = _TimeIndex(n_t, n_ex, lengths)
    check_finite("x", x, time.valid_in_output_layout())

    x_time_major = time.zero_padding(x.transpose(2, 0, 1))
    x_run = np.stack([x_time_major, time.reverse(x_time_major)])
    weights = _stack_weights(arrays, hidden_size)
    gates, tanh_c, c, h = _recur(x_run, weights, h0, c0, time)

    h_valid = time.zero_padding(h[:, 1:])
    y_time_major = merge(h_valid[0], time.reverse(h_valid[1]), merge_mode)
    y = np.ascontiguousarray(np.moveaxis(y_time_major, -3, -1))

    cache = _Cache(time, x_run, weights["W_ih"], weights["W_hh"], gates, tanh_c, c, h)
    for array in (x_run, weights["W_ih"], weights["W_hh"], gates, tanh_c, c, h):
        array.setflags(write=False)
    return Forward(y, h[:, n_t].copy(), c[:, n_t].copy(), merge_mode, lengths, cache)


def _upstream_hidden(result, dy):
    """Turn ``dy`` into the gradient of each direction's hidden states, in run order."""
    cache = result.cache
    time = cache.time
    h_valid = time.zero_padding(cache.h[:, 1:])
    h_bwd = time.reverse(h_valid[1])

    dy_time_major = np.moveaxis(dy, -1, -3)
    dh_fwd, dh_bwd = merge_vjp(dy_time_major, h_valid[0], h_bwd, result.merge_mode)
    dh_run = np.stack([dh_fwd, time.reverse(dh_bwd)])

    # Gradients at padded steps are ignored, even NaN ones.
    if time.valid is not None:
        dh_run = np.where(time.valid[None, ..., None], dh_run, 0)
    return dh_run


class _StepScratch:
    """Work arrays of one backward step, allocated once and reused by every step."""

    def __init__(self, state_shape, dtype):
        n_directions, n_ex, hidden_size = state_shape
        self.dh = np.empty(state_shape, dtype=dtype)
        self.dc = np.empty(state_shape, dtype=dtype)
        self.hidden = np.empty(state_shape, dtype=dtype)
        self.gates = np.empty((n_directions, n_ex, 4 * hidden_size), dtype=dtype)


def _step_gate_gradients(gates, tanh_c, c_prev, dh, dc, dz, scratch):
    """Write one step's dz and return the gradient of that step's cell state.

    Parameters
    ----------
    gates : ndarray, shape (2, n_ex, 4H)
        The step's activated gates, internal order i, f, o, g.
    tanh_c, c_prev : ndarray, shape (2, n_ex, H)
        tanh of the step's cell state, and the cell state before the step.
    dh, dc : ndarray, shape (2, n_ex, H)
        Total gradients reaching the step's hidden and cell states.
    dz : ndarray, shape (2, n_ex, 4H)
        Output: gradient of the step's pre-activations.
    scratch : _StepScratch

    Returns
    -------
    ndarray, shape (2, n_ex, H)
        Gradient of the step's cell state, ``scratch.dc``.
    """
    hidden_size = tanh_c.shape[-1]
    i, _, o, g = _gate_views(gates, hidden_size)
    dz_i, dz_f, dz_o, dz_g = _gate_views(dz, hidden_size)
    dc_s = scratch.dc
    tanh_c_grad = scratch.hidden

    np.multiply(dh, tanh_c, out=dz_o)

    # dc_s = dc + dh o (1 - tanh(c)^2), grouped as in the formula so every
    # value keeps the rounding of the plain expression.
    np.square(tanh_c, out=tanh_c_grad)
    np.subtract(1, tanh_c_grad, out=tanh_c_grad)
    np.multiply(dh, o, out=dc_s)
    dc_s *= tanh_c_grad
    dc_s += dc

    np.multiply(dc_s, g, out=dz_i)
    np.multiply(dc_s, c_prev, out=dz_f)
    np.multiply(dc_s, i, out=dz_g)

    # Chain through the activations: sigmoid' = s (1 - s), tanh' = 1 - g^2.
    # s (1 - s) is formed over all four blocks and the g block then
    # overwritten, because whole rows are contiguous and cheaper per call than
    # the strided three-block slice.
    activation_grad = scratch.gates
    np.subtract(1, gates, out=activation_grad)
    np.multiply(gates, activation_grad, out=activation_grad)
    g_grad = activation_grad[..., 3 * hidden_size:]
    np.multiply(g, g, out=g_grad)
    np.subtract(1, g_grad, out=g_grad)
    dz *= activation_grad
    return dc_s


def _backprop_through_time(cache, dh_run, dh_n, dc_n):
    """Run the recurrence backward; return dz per step and the initial-state gradients."""
    time = cache.time
    gates, tanh_c, c = cache.gates, cache.tanh_c, cache.c
    w_hh_t = cache.w_hh.transpose(0, 2, 1)
    n_t = gates.shape[1]
    hidden_size = tanh_c.shape[-1]

    dz = np.empty_like(gates)
    scratch = _StepScratch(dh_n.shape, dh_n.dtype)

    # Each state gradient alternates between two buffers. A step reads one and
    # writes the other, so the loop allocates nothing.
    dh, dh_prev = dh_n.copy(), np.empty_like(dh_n)
    dc, dc_prev = dc_n.copy(), np.empty_like(dc_n)

    for s in reversed(range(n_t)):
        dh_s = np.add(dh, dh_run[:, s], out=scratch.dh)
        dc_s = _step_gate_gradients(
            gates[:, s], tanh_c[:, s], c[:, s], dh_s, dc, dz[:, s], scratch,
        )

        np.matmul(dz[:, s], w_hh_t, out=dh_prev)
        f = gates[:, s, :, hidden_size:2 * hidden_size]
        np.multiply(dc_s, f, out=dc_prev)

        if time.padded_steps[s]:
            padded = ~time.valid[s][None, :, None]
            np.copyto(dz[:, s], 0, where=padded)
            np.copyto(dh_prev, dh, where=padded)
            np.copyto(dc_prev, dc, where=padded)

        dh, dh_prev = dh_prev, dh
        dc, dc_prev = dc_prev, dc

    return dz, dh, dc


def _weight_gradients(cache, dz):
    """Return the parameter gradients, keyed like the parameters, in gate order i, f, g, o."""
    _, n_t, n_ex, gate_width = dz.shape
    hidden_size = gate_width // 4
    n_in = cache.x_run.shape[-1]
    perm = _gate_permutation(hidden_size)

    dz_flat = dz.reshape(2, n_t * n_ex, gate_width)
    x_flat = cache.x_run.reshape(2, n_t * n_ex, n_in)
    h_prev = cache.h[:, :n_t].reshape(2, n_t * n_ex, hidden_size)

    stacked = {
        "W_ih": np.matmul(x_flat.transpose(0, 2, 1), dz_flat),
        "W_hh": np.matmul(h_prev.transpose(0, 2, 1), dz_flat),
        "b": dz_flat.sum(axis=1),
    }

    dparams = {}
    for k, direction in enumerate(DIRECTIONS):
        for stem, grad in stacked.items():
            dparams[f"{stem}_{direction}"] = np.ascontiguousarray(grad[k][..., perm])
    return dparams


def _input_gradient(cache, dz):
    """Return dx in the (n_ex, n_in, n_t) layout."""
    _, n_t, n_ex, gate_width = dz.shape
    n_in = cache.x_run.shape[-1]

    dx_run = np.matmul(dz.reshape(2, n_t * n_ex, gate_width), cache.w_ih.transpose(0, 2, 1))
    dx_run = dx_run.reshape(2, n_t, n_ex, n_in)
    dx_time_major = dx_run[0] + cache.time.reverse(dx_run[1])
    return np.ascontiguousarray(dx_time_major.transpose(1, 2, 0))


def backward(result, dy, *, dh_n=None, dc_n=None):
    """Return the exact gradients of a loss given its gradients at the outputs.

    Parameters
    ----------
    result : Forward
        Return value of :func:`forward`. It is not modified, so backward may
        be called on it any number of times.
    dy : ndarray, same shape as ``result.y``
        Gradient of the loss with respect to the output. Values at padded
        steps, NaN included, are ignored.
    dh_n, dc_n : ndarray, shape (2, n_ex, H), optional
        Gradients with respect to the final states. Default: zeros.

    Returns
    -------
    Gradients
        ``dx``, ``dparams``, ``dh0`` and ``dc0``.
    """
    if not isinstance(result, Forward):
        raise InvalidArgumentError(
            f"result must be the Forward object returned by bilstm.forward, got "
            f"{type(result).__name__}; call forward first and pass its result"
        )

    dtype = result.y.dtype
    time = result.cache.time
    dy = validate_upstream("dy", dy, result.y.shape, dtype, time.valid_in_output_layout())
    dh_n = validate_upstream("dh_n", dh_n, result.h_n.shape, dtype)
    dc_n = validate_upstream("dc_n", dc_n, result.c_n.shape, dtype)

    dh_run = _upstream_hidden(result, dy)
    dz, dh0, dc0 = _backprop_through_time(result.cache, dh_run, dh_n, dc_n)

    return Gradients(
        dx=_input_gradient(result.cache, dz),
        dparams=_weight_gradients(result.cache, dz),
        dh0=dh0,
        dc0=dc0,
    )


def output_shape(n_ex, hidden_size, n_t, merge_mode):
    """Return the shape of :func:`forward`'s ``y`` for the given sizes."""
    merge_mode = canonical_merge_mode(merge_mode)
    width = output_width(merge_mode, hidden_size)
    if merge_mode is None:
        return (2, n_ex, width, n_t)
    return (n_ex, width, n_t)
