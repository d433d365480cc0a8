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
Both directions advance together in one recurrent loop: the backward
direction runs on a copy of the input in which each example's valid steps
are reversed.  Per-step arrays are laid out with the hidden units before the
examples, ``(2, 4H, n_ex)`` for the gates, so each gate block of a step is
one contiguous piece of memory.  Each step's input, a constant 1 and the
previous hidden state sit in one column of a stored array.  So a single
matrix product gives a step's pre-activations, bias included.  The weight
rows of the sigmoid gates are halved once before the loop, so one tanh call
activates all four gates.

Backward splits the steps into chunks.  For each chunk it first forms every
factor of the pre-activation gradient that does not depend on the upstream
gradient, in a few large array operations.  The recurrent loop is then left
with five small products per step.  Each chunk's pre-activation gradients
take one product for all parameter gradients and one for the input
gradient.  The arrays that forward stores come from one allocation, and so
do backward's per-step and per-chunk work arrays.

Large calls may run the two directions in two threads instead, each with a
one-thread BLAS.  By default that happens on 2-CPU machines when a CPU is
idle, and ``BILSTM_PARALLEL_DIRECTIONS`` changes the rule;
:mod:`bilstm._parallel` gives the rule and its costs.  Both paths run the
same per-direction code on a leading direction axis of size 2 or 1.
"""

from dataclasses import dataclass, field

import numpy as np

from bilstm._parallel import BOTH, run_directions
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
    """Read-only arrays that :func:`backward` needs, all in run order.

    Per-step arrays keep the hidden units before the examples, so each gate
    block of one step is contiguous (see the module's Implementation notes).
    """

    time: "_TimeIndex"
    n_in: int
    xh: np.ndarray          # (2, n_in + 1 + H, n_t + 1, n_ex): column t is x_t, 1, h_{t-1}
    c: np.ndarray           # (2, n_t + 1, H, n_ex): c[:, 0] is c0
    gates: np.ndarray       # (2, n_t, 4H, n_ex): activated gates, internal order o, i, f, g
    w_step: np.ndarray      # (2, 4H, n_in + 1 + H): W_ih, b and W_hh, transposed

    @property
    def hs(self):
        """Hidden states (2, H, n_t + 1, n_ex), a view of ``xh``; ``hs[:, :, 0]`` is h0."""
        return self.xh[:, self.n_in + 1:]

    def directions(self, d):
        """Return the cache of the directions in slice ``d`` of the leading axis."""
        if d == BOTH:
            return self
        return _Cache(self.time, self.n_in, self.xh[d], self.c[d], self.gates[d], self.w_step[d])


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

    def reverse(self, a, axis=0):
        """Reverse each example's valid steps; padded steps stay in place.

        ``a`` has its time axis at ``axis`` and its example axis right after
        it.  The map is its own inverse, so it takes original time to run
        order and back.  Returns a view when there are no lengths.
        """
        leading = (slice(None),) * (axis % a.ndim)
        if self.reverse_index is None:
            return a[leading + (slice(None, None, -1),)]
        return a[leading + (self.reverse_index, self.batch_index)]

    def padded_mask(self, s):
        """Return the padded examples of step ``s`` as (1, 1, n_ex), for (2, k, n_ex) arrays."""
        return ~self.valid[s][None, None, :]


# Internal gate order o, i, f, g.  The three sigmoid gates o, i, f are side by
# side, so one slice activates them.  The gradients of i, f and g scale with
# the cell-state gradient, and these three are side by side too, so one
# broadcast product gives their share of dz.
_INTERNAL_BLOCKS = [3, 0, 1, 2]
"""User gate block (order i, f, g, o) at each internal block position."""


def _gate_permutation(hidden_size):
    """Return the index that takes user gate order to internal order along a 4H axis."""
    blocks = np.arange(4 * hidden_size).reshape(4, hidden_size)
    return blocks[_INTERNAL_BLOCKS].ravel()


def _step_weights(arrays, n_in, hidden_size, dtype):
    """Return each direction's step weights, shape (2, 4H, n_in + 1 + H), internal gate order.

    Columns are ``W_ih`` transposed, then the bias, then ``W_hh`` transposed,
    so a step's pre-activations are one product with the column
    ``[x_t, 1, h_{t-1}]`` of :class:`_Cache`'s ``xh``, and all parameter
    gradients come out of one product too.
    """
    perm = _gate_permutation(hidden_size)
    w_step = np.empty((2, 4 * hidden_size, n_in + 1 + hidden_size), dtype=dtype)
    for k, direction in enumerate(DIRECTIONS):
        w_step[k, :, :n_in] = arrays[f"W_ih_{direction}"][:, perm].T
        w_step[k, :, n_in] = arrays[f"b_{direction}"][perm]
        w_step[k, :, n_in + 1:] = arrays[f"W_hh_{direction}"][:, perm].T
    return w_step


def _step_inputs(x, time, xh, h0):
    """Fill the input rows and column 0's hidden rows of ``xh`` (see :class:`_Cache`).

    Index 0 is the forward direction, index 1 the backward direction, whose
    valid steps are reversed per example.  Padded steps of ``x`` are 0, so
    NaN or inf there never enters a product.  The recurrence writes the
    remaining hidden rows.
    """
    n_ex, n_in, n_t = x.shape
    x_rows = xh[:, :n_in, :n_t]
    x_rows[0] = x.transpose(1, 2, 0)
    if time.valid is not None:
        np.copyto(x_rows[0], 0, where=~time.valid[None])
    x_rows[1] = time.reverse(x_rows[0], axis=1)

    xh[:, n_in, :n_t] = 1
    # Column n_t contains only the final hidden states.  Its input rows are
    # never read, and are zeroed so that no uninitialized memory is kept.
    xh[:, :n_in + 1, n_t] = 0
    xh[:, n_in + 1:, 0] = h0.transpose(0, 2, 1)


def _gate_views(a, hidden_size):
    """Return views of the internal gate blocks o, i, f, g along axis -2 of ``a``."""
    h = hidden_size
    return a[..., :h, :], a[..., h:2 * h, :], a[..., 2 * h:3 * h, :], a[..., 3 * h:, :]


def _halve_sigmoid_rows(w, hidden_size):
    """Return a copy of step weights (2, 4H, k) with the o, i, f rows halved.

    The sigmoid gates need tanh(z / 2).  Halving is exact in binary floating
    point unless it underflows to a subnormal number.  So products with the
    halved rows are exactly half of the unscaled ones, and one tanh call
    serves all four gates without a separate scaling pass.
    """
    halved = w.copy()
    halved[:, :3 * hidden_size] *= 0.5
    return halved


def _activate_inplace(z, hidden_size):
    """Turn pre-activations (2, 4H, n_ex) into gates; the o, i, f rows must be halved.

    With z / 2 in the sigmoid rows, sigma(z) = (1 + tanh(z / 2)) / 2 and
    g = tanh(z) share one tanh call.
    """
    np.tanh(z, out=z)
    sigmoid_gates = z[:, :3 * hidden_size]
    sigmoid_gates *= 0.5
    sigmoid_gates += 0.5


def _allocate(dtype, *shapes):
    """Return one new, uninitialized array per shape, carved from a single allocation.

    Several arrays of a few MB each cost one page fault per 4 KiB page on
    first touch.  For one block of their total size, numpy asks the kernel
    for transparent huge pages (it does so from 4 MiB), and glibc can hand
    the same block to the next call.  The block is freed when the last view
    of it is.
    """
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    block = np.empty(sum(sizes), dtype=dtype)

    arrays, offset = [], 0
    for shape, size in zip(shapes, sizes):
        arrays.append(block[offset:offset + size].reshape(shape))
        offset += size
    return arrays


def _view(a, shape):
    """Reshape ``a`` to ``shape`` without copying; raise if a copy would be needed.

    Results are written into these views, so a silent copy would lose them.
    """
    view = a.reshape(shape)
    if view.size and not np.may_share_memory(view, a):
        raise RuntimeError(
            f"internal error: an array of shape {a.shape} and strides {a.strides} "
            f"cannot take shape {shape} without a copy"
        )
    return view


def _flatten_steps(a):
    """View a (2, rows, k, n_ex) array as (2, rows, k * n_ex), the layout of one product."""
    return _view(a, (*a.shape[:2], a.shape[2] * a.shape[3]))


def _recur(xh, w_step, c0, time, c, gates):
    """Run both directions' recurrences, together or in parallel (see :mod:`bilstm._parallel`).

    Writes ``h_t`` into column t + 1 of ``xh``'s hidden rows, and fills
    ``c`` and ``gates``, laid out as in :class:`_Cache`.
    """
    hidden_size = c.shape[2]
    n_in = xh.shape[1] - 1 - hidden_size
    w_halved = _halve_sigmoid_rows(w_step, hidden_size)
    c[:, 0] = c0.transpose(0, 2, 1)

    def task(d, cancel):
        _recur_directions(xh[d], w_halved[d], time, c[d], gates[d], n_in, cancel)

    run_directions(task, *_call_size(gates.shape[1], xh.shape[-1], w_step.shape))


def _recur_directions(xh, w_halved, time, c, gates, n_in, cancel):
    """Run the recurrence of the directions on the leading axis of every array (1 or 2).

    Returns early, leaving later steps unfilled, once the event ``cancel`` is set.
    """
    n_t = gates.shape[1]
    hidden_size = c.shape[2]
    hs = xh[:, n_in + 1:]

    # Scratch reused by every step, so the loop allocates nothing.
    i_times_g = np.empty(c.shape[:1] + c.shape[2:], dtype=c.dtype)
    tanh_c = np.empty_like(i_times_g)

    for s in range(n_t):
        if cancel.is_set():
            return

        # One product gives the input projection, the bias and the
        # recurrent term together, straight into the stored gates.
        z = gates[:, s]
        np.matmul(w_halved, xh[:, :, s], out=z)
        _activate_inplace(z, hidden_size)
        o, i, f, g = _gate_views(z, hidden_size)

        np.multiply(f, c[:, s], out=c[:, s + 1])
        np.multiply(i, g, out=i_times_g)
        c[:, s + 1] += i_times_g
        np.tanh(c[:, s + 1], out=tanh_c)
        np.multiply(o, tanh_c, out=hs[:, :, s + 1])

        # A padded step carries the state through unchanged, which puts the
        # final state at the last valid step.
        if time.padded_steps[s]:
            padded = time.padded_mask(s)
            np.copyto(c[:, s + 1], c[:, s], where=padded)
            np.copyto(hs[:, :, s + 1], hs[:, :, s], where=padded)


def _call_size(n_t, n_ex, w_step_shape):
    """Return the size measures of :func:`bilstm._parallel.in_parallel`.

    Returns
    -------
    work : int
        Multiply-adds of one direction's step products, (4H, n_in + 1 + H)
        by (n_in + 1 + H, n_ex) per step.
    block : int
        Values in one gate block of one step, H * n_ex.
    """
    gate_width, step_inputs = w_step_shape[1:]
    return n_t * n_ex * gate_width * step_inputs, gate_width // 4 * n_ex


def _merged_output(hs, merge_mode, time):
    """Merge both directions' hidden states into ``y``, with padded steps 0.

    Parameters
    ----------
    hs : ndarray, shape (2, H, n_t + 1, n_ex)
        Hidden states in run order, column 0 being the initial states.

    Notes
    -----
    The merge goes through a scratch array with the output's axes in the
    order (features, n_ex, n_t).  Filling it transposes one small (n_t, n_ex)
    matrix per feature, and moving its rows into ``y`` is a plain copy.
    Writing ``y`` straight from ``hs`` reads with a large stride, and was
    about twice as slow.
    """
    _, hidden_size, n_t_1, n_ex = hs.shape
    n_t = n_t_1 - 1
    h_fwd = hs[0, :, 1:].transpose(0, 2, 1)                             # (H, n_ex, n_t)
    h_bwd = time.reverse(hs[1, :, 1:], axis=1).transpose(0, 2, 1)

    y = np.empty(output_shape(n_ex, hidden_size, n_t, merge_mode), dtype=hs.dtype)
    merged = np.empty(np.moveaxis(y, -3, -2).shape, dtype=hs.dtype)     # (..., width, n_ex, n_t)
    if merge_mode is None:
        merged[0] = h_fwd
        merged[1] = h_bwd
    elif merge_mode == "concat":
        merged[:hidden_size] = h_fwd
        merged[hidden_size:] = h_bwd
    else:
        merge(h_fwd, h_bwd, merge_mode, out=merged)
    y[...] = np.moveaxis(merged, -2, -3)

    valid = time.valid_in_output_layout()
    if valid is not None:
        np.copyto(y, 0, where=~valid)
    return y


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

    xh, c, gates = _allocate(
        x.dtype,
        (2, n_in + 1 + hidden_size, n_t + 1, n_ex),
        (2, n_t + 1, hidden_size, n_ex),
        (2, n_t, 4 * hidden_size, n_ex),
    )
    _step_inputs(x, time, xh, h0)
    w_step = _step_weights(arrays, n_in, hidden_size, x.dtype)
    _recur(xh, w_step, c0, time, c, gates)

    cache = _Cache(time, n_in, xh, c, gates, w_step)
    y = _merged_output(cache.hs, merge_mode, time)
    for array in (xh, c, gates, w_step):
        array.setflags(write=False)
    h_n = cache.hs[:, :, n_t].transpose(0, 2, 1).copy()
    c_n = c[:, n_t].transpose(0, 2, 1).copy()
    return Forward(y, h_n, c_n, merge_mode, lengths, cache)


def _upstream_hidden(result, dy, dh_run):
    """Write the gradient of each direction's hidden states into ``dh_run``.

    ``dh_run`` has shape (2, n_t, H, n_ex); it gets the gradients in run
    order, with padded steps 0.
    """
    cache = result.cache
    time = cache.time
    hs = cache.hs

    # As in _merged_output, the transpose goes through a (..., width, n_ex,
    # n_t) copy of dy.  merge_vjp splits along the last axis, so it gets
    # views of everything as (..., n_ex, n_t, features).
    dy_rows = np.ascontiguousarray(np.moveaxis(dy, -2, -3))
    dy_view = np.moveaxis(dy_rows, -3, -1)
    h_fwd = hs[0, :, 1:].transpose(2, 1, 0)
    h_bwd = time.reverse(hs[1, :, 1:], axis=1).transpose(2, 1, 0)
    dh_fwd, dh_bwd = merge_vjp(dy_view, h_fwd, h_bwd, result.merge_mode)

    dh_run[0] = dh_fwd.transpose(1, 2, 0)
    dh_run[1] = time.reverse(dh_bwd.transpose(1, 0, 2)).transpose(0, 2, 1)

    # Gradients at padded steps are ignored, even NaN ones.
    if time.valid is not None:
        np.copyto(dh_run, 0, where=~time.valid[None, :, None, :])


_CHUNK_BYTES = 1 << 21
"""Target size of one chunk of gate gradients for both directions, in bytes."""


def _chunks(n_t, n_ex, gate_width, itemsize):
    """Split the steps into chunks of about ``_CHUNK_BYTES`` of gate gradients.

    Returns
    -------
    list of (start, stop)
        Consecutive step ranges covering ``range(n_t)``, in increasing order.
    """
    step_bytes = 2 * n_ex * gate_width * itemsize
    size = max(1, _CHUNK_BYTES // max(step_bytes, 1))
    return [(start, min(start + size, n_t)) for start in range(0, n_t, size)]


class _Coefficients:
    """The factors of dz that do not depend on the upstream gradient, for one chunk.

    With ``tc = tanh(c_t)``, the backward step is

    .. math::

        dc_t &= dc_{t+1} \\odot f_{t+1} + dh_t \\odot B, \\quad
        B = o \\odot (1 - tc^2) \\\\
        dz^o &= dh_t \\odot A^o, \\quad A^o = tc \\odot o (1 - o) \\\\
        dz^i &= dc_t \\odot A^i, \\quad A^i = g \\odot i (1 - i) \\\\
        dz^f &= dc_t \\odot A^f, \\quad A^f = c_{t-1} \\odot f (1 - f) \\\\
        dz^g &= dc_t \\odot A^g, \\quad A^g = i \\odot (1 - g^2)

    The A and B factors depend only on the forward pass, so they are formed
    for a whole chunk of steps in a few large array operations, and the
    recurrent loop is left with a handful of small ones per step.

    Attributes
    ----------
    a_o, b : ndarray, shape (n_dir, k, H, n_ex)
        ``n_dir`` is the number of directions in the buffers, 1 or 2.
    a_ifg : ndarray, shape (n_dir, k, 3, H, n_ex)
        A^i, A^f and A^g, in the order of dz's i, f and g blocks.
    """

    def __init__(self, buffers, hidden_size):
        self._factors, self._sigmoid_grad, self._tanh_c = buffers
        self.hidden_size = hidden_size

    def fill(self, cache, start, stop):
        """Form the factors of steps ``start`` to ``stop - 1``; return self."""
        h = self.hidden_size
        k = stop - start
        factors = self._factors[:, :k]
        gates = cache.gates[:, start:stop]
        o, i, f, g = _gate_views(gates, h)
        # Rows of each step: A^o, A^i, A^f, A^g, then B, H rows each.
        a_o, a_i, a_f, a_g, b = (factors[:, :, j * h:(j + 1) * h] for j in range(5))

        # tanh(c) is recomputed rather than stored, which saves forward a
        # (2, n_t, H, n_ex) array.  tanh acts element by element, so this
        # gives the values that forward used.
        tanh_c = np.tanh(cache.c[:, start + 1:stop + 1], out=self._tanh_c[:, :k])

        # sigmoid' = s (1 - s), formed over the three sigmoid blocks at once.
        sigmoid_gates = gates[:, :, :3 * h]
        sigmoid_grad = np.subtract(1, sigmoid_gates, out=self._sigmoid_grad[:, :k])
        sigmoid_grad *= sigmoid_gates
        o_grad, i_grad, f_grad = _gate_views(sigmoid_grad, h)[:3]

        np.multiply(tanh_c, o_grad, out=a_o)
        np.multiply(g, i_grad, out=a_i)
        np.multiply(cache.c[:, start:stop], f_grad, out=a_f)

        # tanh' = 1 - g^2
        np.multiply(g, g, out=a_g)
        np.subtract(1, a_g, out=a_g)
        a_g *= i

        np.multiply(tanh_c, tanh_c, out=b)
        np.subtract(1, b, out=b)
        b *= o

        self.a_o, self.b = a_o, b
        n_dir, n_ex = factors.shape[0], factors.shape[-1]
        self.a_ifg = _view(factors[:, :, h:4 * h], (n_dir, k, 3, h, n_ex))
        return self


class _ChunkProducts:
    """Turn each chunk of dz into its share of the weight and input gradients.

    dz is kept one chunk at a time, so the products read it while it is
    still in cache, and backward never allocates a (2, 4H, n_t, n_ex) array.

    Parameters
    ----------
    cache : _Cache
        Forward arrays of the directions handled, 1 or 2.
    dxs : ndarray, shape (n_dir, n_in, n_t, n_ex)
        Receives the input gradient in run order.
    dw_step : ndarray, same shape as ``cache.w_step``
        Receives the summed gradient of the step weights.
    """

    def __init__(self, cache, dxs, dw_step):
        self.cache = cache
        # A transposed view, which the BLAS read as fast as a copy on the benchmark machine.
        self.w_ih_t = cache.w_step[:, :, :cache.n_in].transpose(0, 2, 1)
        self.dxs = dxs
        self.dw_step = dw_step
        self._chunks_added = 0
        self._dw_part = None

    def add(self, start, stop, dz_chunk):
        """Add the products of dz (n_dir, 4H, stop - start, n_ex) for steps start to stop - 1."""
        dz_flat = _flatten_steps(dz_chunk)
        np.matmul(self.w_ih_t, dz_flat, out=_flatten_steps(self.dxs[:, :, start:stop]))

        inputs_t = _flatten_steps(self.cache.xh[:, :, start:stop]).transpose(0, 2, 1)
        self._chunks_added += 1
        # The first chunk writes the sum itself, and later ones go through a scratch array.
        if self._chunks_added == 1:
            np.matmul(dz_flat, inputs_t, out=self.dw_step)
            return
        if self._dw_part is None:
            self._dw_part = np.empty_like(self.dw_step)
        np.matmul(dz_flat, inputs_t, out=self._dw_part)
        self.dw_step += self._dw_part


@dataclass(frozen=True)
class _BackwardArrays:
    """Work and result arrays of backward, each with the directions on its leading axis.

    Attributes
    ----------
    dh_run : ndarray, shape (n_dir, n_t, H, n_ex)
        Upstream gradient of the hidden states, in run order.
    dxs : ndarray, shape (n_dir, n_in, n_t, n_ex)
        Input gradient, in run order.
    dz_chunk : ndarray, shape (n_dir, 4H, k, n_ex)
        Pre-activation gradients of one chunk of k steps.
    coefficient_buffers : tuple of ndarray
        Buffers of :class:`_Coefficients`.
    dw_step : ndarray, shape (n_dir, 4H, n_in + 1 + H)
        Gradient of the step weights, laid out as ``_Cache.w_step``.
    dh, dc : ndarray, shape (n_dir, H, n_ex)
        Final-state gradients on entry, initial-state gradients on return.
    """

    dh_run: np.ndarray
    dxs: np.ndarray
    dz_chunk: np.ndarray
    coefficient_buffers: tuple
    dw_step: np.ndarray
    dh: np.ndarray
    dc: np.ndarray

    def directions(self, d):
        """Return views of the directions in slice ``d`` of the leading axis."""
        if d == BOTH:
            return self
        return _BackwardArrays(
            self.dh_run[d], self.dxs[d], self.dz_chunk[d],
            tuple(buffer[d] for buffer in self.coefficient_buffers),
            self.dw_step[d], self.dh[d], self.dc[d],
        )


def _backprop_through_time(result, dy, dh_n, dc_n):
    """Run the recurrence backward from the upstream gradients.

    Returns
    -------
    _BackwardArrays
        Its ``dxs``, ``dw_step``, ``dh`` and ``dc`` contain the gradients.
    """
    cache = result.cache
    gates = cache.gates
    _, n_t, gate_width, n_ex = gates.shape
    h = gate_width // 4

    chunks = _chunks(n_t, n_ex, gate_width, gates.itemsize)
    k = chunks[0][1] if chunks else 0
    dh_run, dxs, dz_chunk, *coefficient_buffers = _allocate(
        gates.dtype,
        (2, n_t, h, n_ex),
        (2, cache.n_in, n_t, n_ex),
        (2, gate_width, k, n_ex),
        (2, k, 5 * h, n_ex),
        (2, k, 3 * h, n_ex),
        (2, k, h, n_ex),
    )
    _upstream_hidden(result, dy, dh_run)

    # dh and dc use copy(), not ascontiguousarray, because they are
    # overwritten and ascontiguousarray can return the caller's array itself.
    arrays = _BackwardArrays(
        dh_run, dxs, dz_chunk, tuple(coefficient_buffers),
        dw_step=np.zeros_like(cache.w_step),
        dh=dh_n.transpose(0, 2, 1).copy(),
        dc=dc_n.transpose(0, 2, 1).copy(),
    )

    def task(d, cancel):
        _backprop_directions(cache.directions(d), arrays.directions(d), chunks, cancel)

    run_directions(task, *_call_size(n_t, n_ex, cache.w_step.shape))
    return arrays


def _backprop_directions(cache, arrays, chunks, cancel):
    """Run backward for the directions on the leading axis of ``cache`` and ``arrays`` (1 or 2).

    Fills ``arrays.dxs`` and ``arrays.dw_step``, and turns ``arrays.dh`` and
    ``arrays.dc`` from final-state into initial-state gradients.  Returns
    early, leaving them incomplete, once the event ``cancel`` is set.
    """
    time = cache.time
    gates = cache.gates
    n_dir, _, gate_width, n_ex = gates.shape
    h = gate_width // 4
    w_hh_t = np.ascontiguousarray(cache.w_step[:, :, cache.n_in + 1:].transpose(0, 2, 1))
    dh_run, dz_chunk = arrays.dh_run, arrays.dz_chunk
    k = dz_chunk.shape[2]

    products = _ChunkProducts(cache, arrays.dxs, arrays.dw_step)
    coefficients = _Coefficients(arrays.coefficient_buffers, h)

    # Each state gradient alternates between its array in ``arrays`` and a
    # second buffer, so the loop allocates nothing.
    dh, dc = arrays.dh, arrays.dc
    dh_prev, dc_prev = np.empty_like(dh), np.empty_like(dc)
    dh_s, dc_s = np.empty_like(dh), np.empty_like(dc)

    # The same buffer viewed with its gate blocks on their own axis.
    dz_chunk_blocks = _view(dz_chunk, (n_dir, 4, h, k, n_ex))

    for start, stop in reversed(chunks):
        coef = coefficients.fill(cache, start, stop)
        for s in reversed(range(start, stop)):
            if cancel.is_set():
                return

            j = s - start
            dz = dz_chunk[:, :, j]
            dz_blocks = dz_chunk_blocks[:, :, :, j]

            np.add(dh, dh_run[:, s], out=dh_s)
            np.multiply(dh_s, coef.a_o[:, j], out=dz_blocks[:, 0])
            np.multiply(dh_s, coef.b[:, j], out=dc_s)
            dc_s += dc
            np.multiply(dc_s[:, None], coef.a_ifg[:, j], out=dz_blocks[:, 1:])
            if time.padded_steps[s]:
                np.copyto(dz, 0, where=time.padded_mask(s))

            np.matmul(w_hh_t, dz, out=dh_prev)
            np.multiply(dc_s, gates[:, s, 2 * h:3 * h], out=dc_prev)

            if time.padded_steps[s]:
                padded = time.padded_mask(s)
                np.copyto(dh_prev, dh, where=padded)
                np.copyto(dc_prev, dc, where=padded)

            dh, dh_prev = dh_prev, dh
            dc, dc_prev = dc_prev, dc

        products.add(start, stop, dz_chunk[:, :, :stop - start])

    if dh is not arrays.dh:
        arrays.dh[...] = dh
        arrays.dc[...] = dc


def _weight_gradients(dw_step, n_in):
    """Return the parameter gradients, keyed like the parameters, in gate order i, f, g, o."""
    hidden_size = dw_step.shape[1] // 4
    to_user_order = np.argsort(_gate_permutation(hidden_size))

    dparams = {}
    for k, direction in enumerate(DIRECTIONS):
        dw_k = dw_step[k][to_user_order]
        dparams[f"W_ih_{direction}"] = np.ascontiguousarray(dw_k[:, :n_in].T)
        dparams[f"W_hh_{direction}"] = np.ascontiguousarray(dw_k[:, n_in + 1:].T)
        dparams[f"b_{direction}"] = np.ascontiguousarray(dw_k[:, n_in])
    return dparams


def _input_gradient(time, dxs):
    """Return dx (n_ex, n_in, n_t) from its run-order parts (2, n_in, n_t, n_ex)."""
    dx_sum = np.add(dxs[0], time.reverse(dxs[1], axis=1), out=dxs[0])
    return np.ascontiguousarray(dx_sum.transpose(2, 0, 1))


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

    arrays = _backprop_through_time(result, dy, dh_n, dc_n)

    return Gradients(
        dx=_input_gradient(time, arrays.dxs),
        dparams=_weight_gradients(arrays.dw_step, result.cache.n_in),
        dh0=arrays.dh.transpose(0, 2, 1).copy(),
        dc0=arrays.dc.transpose(0, 2, 1).copy(),
    )


def output_shape(n_ex, hidden_size, n_t, merge_mode):
    """Return the shape of :func:`forward`'s ``y`` for the given sizes."""
    merge_mode = canonical_merge_mode(merge_mode)
    width = output_width(merge_mode, hidden_size)
    if merge_mode is None:
        return (2, n_ex, width, n_t)
    return (n_ex, width, n_t)
