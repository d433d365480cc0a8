"""Planted-bug BiLSTMs: the reference with one realistic defect each.

Each class is an :class:`~properties.protocol.Implementation` whose first
docstring line names the kind of bug it imitates.  Most wrap the reference:
they perturb what its forward or backward returns, or call it with altered
inputs or parameters.  A few run :class:`_LoopModel`, a plain step-by-step
LSTM, because their bug sits inside the cell.  Unless the bug needs
otherwise, the capabilities are the reference's.

``tests/test_properties_planted.py`` asserts that the property of each
bug's own kind catches it.  A planted bug may also break other properties;
only the one it is planted for is asserted.

Arrays are in the reference layout: ``x`` (n_ex, n_in, n_t), each half of
the output (n_ex, H, n_t), states (2, n_ex, H) with the forward direction
at index 0.
"""

from dataclasses import replace

import numpy as np

import bilstm
from bilstm.merge import merge, merge_vjp
from bilstm.params import GATES, PARAM_NAMES, cast_params
from properties.adapters.reference import ReferenceImplementation, ReferenceModel
from properties.protocol import Grads, Output

_REAL_ONLY = replace(ReferenceImplementation.capabilities, complex_input=False)
"""Reference capabilities without complex input, for bugs that cast to a real dtype."""


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------

def _sigmoid(z):
    # The tanh form never overflows, even for the saturating weight scale.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _hard_sigmoid(z):
    return np.clip(0.2 * z + 0.5, 0.0, 1.0)


def _reverse_steps(a, lengths):
    """Reverse each example's valid steps of ``a`` (n_ex, ..., n_t), leaving padding in place."""
    if lengths is None:
        return a[..., ::-1].copy()

    out = a.copy()
    for n, length in enumerate(lengths):
        out[n, ..., :length] = a[n, ..., :length][..., ::-1]
    return out


def _merge_halves(y_fwd, y_bwd, merge_mode):
    """Merge two halves, each (n_ex, H, n_t), into ``y`` of ``merge_mode``."""
    merged = merge(np.swapaxes(y_fwd, -1, -2), np.swapaxes(y_bwd, -1, -2), merge_mode)
    return np.ascontiguousarray(np.swapaxes(merged, -1, -2))


def _rows(state, order):
    return None if state is None else state[:, order]


def _cast(array, dtype):
    return None if array is None else array.astype(dtype)


def _swap_gates(params, directions, first, second):
    """Return ``params`` with gate blocks ``first`` and ``second`` exchanged in ``directions``.

    The exchange is its own inverse, so it also maps gradients back.
    """
    hidden_size = np.shape(params["W_hh_fwd"])[0]
    order = list(range(len(GATES)))
    a, b = GATES.index(first), GATES.index(second)
    order[a], order[b] = order[b], order[a]
    columns = np.arange(4 * hidden_size).reshape(4, hidden_size)[order].ravel()

    swapped = dict(params)
    for direction in directions:
        for stem in ("W_ih", "W_hh", "b"):
            name = f"{stem}_{direction}"
            swapped[name] = params[name][..., columns]
    return swapped


class PlantedImplementation(ReferenceImplementation):
    """Base class of the planted bugs: the reference's capabilities, the bug's own model class."""

    model_class = ReferenceModel

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.name = f"planted:{cls.__name__}"
        cls.description = (cls.__doc__ or "").strip().splitlines()[0]

    def build(self, params, *, merge_mode):
        return self.model_class(params, merge_mode)


class _RecordingModel(ReferenceModel):
    """The reference model, which also keeps the arguments of its latest forward call."""

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        self.inputs = {"lengths": lengths, "h0": h0, "c0": c0}
        self.x = x
        return super().forward(x, lengths=lengths, h0=h0, c0=c0)

    def direction_dx(self, dy, dh_n, dc_n, direction):
        """Return the part of dx that flows through one direction (0 forward, 1 backward)."""
        concat = bilstm.forward(self.x, self.params, merge_mode="concat", **self.inputs)
        hidden_size = self.params["W_hh_fwd"].shape[0]
        y_fwd, y_bwd = concat.y[:, :hidden_size], concat.y[:, hidden_size:]

        # merge_vjp wants the hidden unit axis last.
        dy_halves = merge_vjp(np.swapaxes(dy, -1, -2), np.swapaxes(y_fwd, -1, -2),
                              np.swapaxes(y_bwd, -1, -2), self.merge_mode)
        one_direction = [np.zeros_like(half) for half in dy_halves]
        one_direction[direction] = dy_halves[direction]
        dy_concat = np.swapaxes(np.concatenate(one_direction, axis=-1), -1, -2)

        states = []
        for upstream in (dh_n, dc_n):
            only = np.zeros_like(concat.h_n)
            if upstream is not None:
                only[direction] = upstream[direction]
            states.append(only)
        return bilstm.backward(concat, dy_concat, dh_n=states[0], dc_n=states[1]).dx


class _HalvesModel(ReferenceModel):
    """The reference model with its two halves changed by :meth:`change_halves` before merging.

    Final states and backward stay the reference's.
    """

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        out = super().forward(x, lengths=lengths, h0=h0, c0=c0)
        inputs = {"lengths": lengths, "h0": h0, "c0": c0}
        y = bilstm.forward(x, self.params, merge_mode=None, **inputs).y
        y_fwd, y_bwd = self.change_halves(y[0], y[1], x, inputs)
        return Output(_merge_halves(y_fwd, y_bwd, self.merge_mode), out.h_n, out.c_n)

    def change_halves(self, y_fwd, y_bwd, x, inputs):
        """Return the halves (n_ex, H, n_t) this model outputs."""
        return y_fwd, y_bwd


def _run_direction(x, weights, h, c, lengths, cell):
    """Run one LSTM direction over ``x`` (n_ex, n_in, n_t) in time order.

    Returns ``(out, h, c)``: ``out`` (n_ex, H, n_t) contains the state
    ``cell.emit`` names (``"h"`` or ``"c"``) at valid steps and 0 at padded
    ones, and ``h`` and ``c`` are the final states.
    """
    w_ih, w_hh, b = weights
    n_ex, _, n_t = x.shape
    hidden_size = h.shape[-1]
    blocks = [slice(k * hidden_size, (k + 1) * hidden_size) for k in range(4)]
    steps = []

    for t in range(n_t):
        z = x[:, :, t] @ w_ih + h @ w_hh + b
        i, f, o = (cell.sigmoid(z[:, blocks[k]]) for k in (0, 1, 3))
        g = cell.candidate(z[:, blocks[2]])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)

        valid = np.ones((n_ex, 1), dtype=bool) if lengths is None else (t < lengths)[:, None]
        steps.append(np.where(valid, h_new if cell.emit == "h" else c_new, 0))
        h, c = np.where(valid, h_new, h), np.where(valid, c_new, c)

    out = np.stack(steps, axis=-1) if steps else np.zeros((n_ex, hidden_size, 0), dtype=x.dtype)
    return out, h, c


class _LoopModel(ReferenceModel):
    """A plain step-by-step BiLSTM forward whose cell parts subclasses replace.

    The reference runs too, so that invalid arguments raise as they do
    there and backward returns the reference's gradients.
    """

    sigmoid = staticmethod(_sigmoid)
    candidate = staticmethod(np.tanh)
    emit = "h"

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        super().forward(x, lengths=lengths, h0=h0, c0=c0)
        zeros = np.zeros((2, x.shape[0], self.params["W_hh_fwd"].shape[0]), dtype=x.dtype)
        h0 = zeros if h0 is None else h0
        c0 = self.default_c0(zeros) if c0 is None else c0
        lengths = None if lengths is None else np.asarray(lengths)

        runs = []
        for k, direction in enumerate(("fwd", "bwd")):
            run_lengths = self.run_lengths(direction, lengths)
            x_run = x if direction == "fwd" else _reverse_steps(x, run_lengths)
            weights = [self.params[f"{stem}_{direction}"] for stem in ("W_ih", "W_hh", "b")]
            out, h_n, c_n = _run_direction(x_run, weights, h0[k], c0[k], run_lengths, self)
            runs.append((out if direction == "fwd" else _reverse_steps(out, run_lengths), h_n, c_n))

        y = _merge_halves(runs[0][0], runs[1][0], self.merge_mode)
        if lengths is not None:
            y = np.where(np.arange(x.shape[-1]) < lengths[:, None, None], y, 0)
        h_n = np.stack([runs[0][1], runs[1][1]])
        c_n = np.stack([runs[0][2], runs[1][2]])
        return Output(y, h_n, c_n)

    def run_lengths(self, direction, lengths):
        """Return the lengths that the run of ``direction`` honours."""
        return lengths

    def default_c0(self, zeros):
        """Return the initial cell state used when the caller passes none."""
        return zeros


# ---------------------------------------------------------------------------
# Forward pass: structure, symmetry, padding, bounds, closed forms
# ---------------------------------------------------------------------------

class _UnreversedBackwardHalfModel(_HalvesModel):
    def change_halves(self, y_fwd, y_bwd, x, inputs):
        return y_fwd, _reverse_steps(y_bwd, inputs["lengths"])


class UnreversedBackwardHalf(PlantedImplementation):
    """Backward half left in run order: the output is not re-reversed in time."""

    model_class = _UnreversedBackwardHalfModel


class _ForwardWeightsBothWaysModel(ReferenceModel):
    def __init__(self, params, merge_mode):
        shared = dict(params)
        for stem in ("W_ih", "W_hh", "b"):
            shared[f"{stem}_bwd"] = params[f"{stem}_fwd"]
        super().__init__(shared, merge_mode)

    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        for stem in ("W_ih", "W_hh", "b"):
            fwd, bwd = f"{stem}_fwd", f"{stem}_bwd"
            grads.dparams[fwd] = grads.dparams[fwd] + grads.dparams[bwd]
            grads.dparams[bwd] = np.zeros_like(grads.dparams[bwd])
        return grads


class ForwardWeightsBothWays(PlantedImplementation):
    """Backward direction built from the forward weights (a copy-pasted weight name)."""

    model_class = _ForwardWeightsBothWaysModel


class _AverageAsSumModel(ReferenceModel):
    def __init__(self, params, merge_mode):
        super().__init__(params, "sum" if merge_mode == "average" else merge_mode)


class AverageAsSum(PlantedImplementation):
    """Merge mode "average" returns the sum of the halves (the division by 2 forgotten)."""

    model_class = _AverageAsSumModel


def _interleaved_columns(hidden_size):
    """Columns [0, H, 1, H + 1, ...]: unit k of each direction side by side."""
    return np.arange(2 * hidden_size).reshape(2, hidden_size).T.ravel()


class _InterleavedConcatModel(ReferenceModel):
    def forward(self, x, *, lengths=None, h0=None, c0=None):
        out = super().forward(x, lengths=lengths, h0=h0, c0=c0)
        if self.merge_mode == "concat":
            out.y = out.y[:, _interleaved_columns(self.params["W_hh_fwd"].shape[0])]
        return out

    def backward(self, dy, *, dh_n=None, dc_n=None):
        if self.merge_mode == "concat":
            columns = _interleaved_columns(self.params["W_hh_fwd"].shape[0])
            unmixed = np.empty_like(dy)
            unmixed[:, columns] = dy
            dy = unmixed
        return super().backward(dy, dh_n=dh_n, dc_n=dc_n)


class InterleavedConcat(PlantedImplementation):
    """Concat output with the directions' units interleaved (a reshape on the wrong axis)."""

    model_class = _InterleavedConcatModel


class _ForwardPeeksAheadModel(_HalvesModel):
    def change_halves(self, y_fwd, y_bwd, x, inputs):
        ahead = np.concatenate([x[..., 1:], x[..., -1:]], axis=-1)
        y_ahead = bilstm.forward(ahead, self.params, merge_mode=None, **inputs).y
        return y_ahead[0], y_bwd


class ForwardPeeksAhead(PlantedImplementation):
    """Forward direction reads the input one step ahead (off-by-one in the time index)."""

    model_class = _ForwardPeeksAheadModel


class _BatchMeanCentredModel(ReferenceModel):
    def forward(self, x, *, lengths=None, h0=None, c0=None):
        return super().forward(x - x.mean(axis=0, keepdims=True), lengths=lengths, h0=h0, c0=c0)

    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        grads.dx = grads.dx - grads.dx.mean(axis=0, keepdims=True)
        return grads


class BatchMeanCentred(PlantedImplementation):
    """Input centred on the batch mean (normalisation statistics taken across examples)."""

    model_class = _BatchMeanCentredModel


class _SortedByLengthModel(ReferenceModel):
    def forward(self, x, *, lengths=None, h0=None, c0=None):
        if lengths is None:
            return super().forward(x, h0=h0, c0=c0)
        order = np.argsort(-np.asarray(lengths), kind="stable")
        return super().forward(x[order], lengths=np.asarray(lengths)[order],
                               h0=_rows(h0, order), c0=_rows(c0, order))


class SortedByLength(PlantedImplementation):
    """Batch sorted by length for packing and never put back in the caller's order."""

    model_class = _SortedByLengthModel


class _BackwardIgnoresLengthsModel(_LoopModel):
    def run_lengths(self, direction, lengths):
        return lengths if direction == "fwd" else None


class BackwardIgnoresLengths(PlantedImplementation):
    """Backward direction reverses the whole padded sequence, ignoring the lengths."""

    model_class = _BackwardIgnoresLengthsModel


class _NonFinitePaddingRejectedModel(ReferenceModel):
    def forward(self, x, *, lengths=None, h0=None, c0=None):
        if not np.isfinite(x).all():
            raise ValueError("x contains NaN or inf, which this layer rejects at every step")
        return super().forward(x, lengths=lengths, h0=h0, c0=c0)


class NonFinitePaddingRejected(PlantedImplementation):
    """Input check over the whole x, so NaN at padded steps raises (padding read after all)."""

    model_class = _NonFinitePaddingRejectedModel


class _CellStateOutputModel(_LoopModel):
    emit = "c"


class CellStateOutput(PlantedImplementation):
    """Output is the cell state c, not the hidden state h (wrong element of the state tuple)."""

    model_class = _CellStateOutputModel


class _SigmoidCandidateModel(_LoopModel):
    candidate = staticmethod(_sigmoid)


class SigmoidCandidate(PlantedImplementation):
    """Cell candidate activated with sigmoid instead of tanh (activation list misaligned)."""

    model_class = _SigmoidCandidateModel


class _OnesInitialCellModel(_LoopModel):
    def default_c0(self, zeros):
        return np.ones_like(zeros)


class OnesInitialCell(PlantedImplementation):
    """Missing initial cell state defaults to ones instead of zeros."""

    model_class = _OnesInitialCellModel


class _GateSwapModel(ReferenceModel):
    """The reference on parameters with two gate blocks exchanged, and gradients mapped back."""

    directions = ("fwd", "bwd")
    gates = ("i", "f")

    def __init__(self, params, merge_mode):
        super().__init__(_swap_gates(params, self.directions, *self.gates), merge_mode)

    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        grads.dparams = _swap_gates(grads.dparams, self.directions, *self.gates)
        return grads


class InputForgetGatesSwapped(PlantedImplementation):
    """Weights read in gate order f, i, g, o instead of i, f, g, o (another framework's layout)."""

    model_class = _GateSwapModel


# ---------------------------------------------------------------------------
# Backward pass without finite differences
# ---------------------------------------------------------------------------

class _MultiplyOwnHalfModel(_RecordingModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        if self.merge_mode != "multiply":
            return super().backward(dy, dh_n=dh_n, dc_n=dc_n)

        concat = bilstm.forward(self.x, self.params, merge_mode="concat", **self.inputs)
        hidden_size = self.params["W_hh_fwd"].shape[0]
        y_fwd, y_bwd = concat.y[:, :hidden_size], concat.y[:, hidden_size:]
        dy_concat = np.concatenate([dy * y_fwd, dy * y_bwd], axis=1)
        grads = bilstm.backward(concat, dy_concat, dh_n=dh_n, dc_n=dc_n)
        return Grads(grads.dx, grads.dparams, grads.dh0, grads.dc0)


class MultiplyOwnHalf(PlantedImplementation):
    """Multiply-mode backward scales each half's gradient by its own output, not the other's."""

    model_class = _MultiplyOwnHalfModel


CLIP_VALUE = 0.05
"""Bound of :class:`ClippedInputGradient`, which entries of dx often exceed."""


class _ClippedInputGradientModel(ReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        grads.dx = np.clip(grads.dx, -CLIP_VALUE, CLIP_VALUE)
        return grads


class ClippedInputGradient(PlantedImplementation):
    """dx clipped element-wise inside backward (gradient clipping in the wrong place)."""

    model_class = _ClippedInputGradientModel


WEIGHT_DECAY = 1e-4
"""L2 coefficient of :class:`WeightDecayInBackward`."""


class _WeightDecayInBackwardModel(ReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        grads.dparams = {name: grads.dparams[name] + WEIGHT_DECAY * self.params[name]
                         for name in PARAM_NAMES}
        return grads


class WeightDecayInBackward(PlantedImplementation):
    """L2 weight decay folded into the parameter gradients, so backward(0) is not 0."""

    model_class = _WeightDecayInBackwardModel


class _StatefulModel(ReferenceModel):
    def __init__(self, params, merge_mode):
        super().__init__(params, merge_mode)
        self._carried = None

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        carried = self._carried
        if h0 is None and carried is not None and carried[0].shape[1] == x.shape[0]:
            h0, c0 = carried
        out = super().forward(x, lengths=lengths, h0=h0, c0=c0)
        self._carried = (out.h_n, out.c_n)
        return out


class StatefulAcrossCalls(PlantedImplementation):
    """Final states carried into the next forward call as its initial states (a stateful layer)."""

    model_class = _StatefulModel


class _AccumulatingModel(ReferenceModel):
    def __init__(self, params, merge_mode):
        super().__init__(params, merge_mode)
        self._accumulated = {name: np.zeros_like(value) for name, value in params.items()}

    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        for name in PARAM_NAMES:
            self._accumulated[name] = self._accumulated[name] + grads.dparams[name]
        grads.dparams = dict(self._accumulated)
        return grads


class AccumulatedGradients(PlantedImplementation):
    """Parameter gradients summed into buffers that are never zeroed between backward calls."""

    model_class = _AccumulatingModel


class _ZeroPaddingInPlaceModel(ReferenceModel):
    def forward(self, x, *, lengths=None, h0=None, c0=None):
        if lengths is not None:
            padded = np.arange(x.shape[-1])[None, None, :] >= np.asarray(lengths)[:, None, None]
            np.copyto(x, 0, where=padded)
        return super().forward(x, lengths=lengths, h0=h0, c0=c0)


class ZeroPaddingInPlace(PlantedImplementation):
    """Padded steps of the caller's x zeroed in place (masking without a copy)."""

    model_class = _ZeroPaddingInPlaceModel


class _MemoryOrderUpstreamModel(ReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        # Memory order equals index order only for C-contiguous arrays.
        dy = np.ravel(dy, order="K").reshape(dy.shape)
        return super().backward(dy, dh_n=dh_n, dc_n=dc_n)


class MemoryOrderUpstream(PlantedImplementation):
    """dy read in memory order whatever its strides (a raw buffer handed to native code)."""

    model_class = _MemoryOrderUpstreamModel


class _Float32InsideModel(ReferenceModel):
    def __init__(self, params, merge_mode):
        super().__init__(cast_params(params, np.float32), merge_mode)

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        self.dtype = x.dtype
        single = np.float32
        out = super().forward(x.astype(single), lengths=lengths, h0=_cast(h0, single),
                              c0=_cast(c0, single))
        return Output(out.y.astype(self.dtype), _cast(out.h_n, self.dtype),
                      _cast(out.c_n, self.dtype))

    def backward(self, dy, *, dh_n=None, dc_n=None):
        single = np.float32
        grads = super().backward(dy.astype(single), dh_n=_cast(dh_n, single),
                                 dc_n=_cast(dc_n, single))
        dparams = {name: value.astype(self.dtype) for name, value in grads.dparams.items()}
        return Grads(grads.dx.astype(self.dtype), dparams, _cast(grads.dh0, self.dtype),
                     _cast(grads.dc0, self.dtype))


class Float32Inside(PlantedImplementation):
    """Computes in float32 and casts the results back to float64 (a single-precision kernel)."""

    capabilities = _REAL_ONLY
    model_class = _Float32InsideModel


class _Float64OutputModel(ReferenceModel):
    def __init__(self, params, merge_mode):
        super().__init__(cast_params(params, np.float64), merge_mode)

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        double = np.float64
        return super().forward(x.astype(double), lengths=lengths, h0=_cast(h0, double),
                               c0=_cast(c0, double))

    def backward(self, dy, *, dh_n=None, dc_n=None):
        double = np.float64
        return super().backward(dy.astype(double), dh_n=_cast(dh_n, double),
                                dc_n=_cast(dc_n, double))


class Float64Output(PlantedImplementation):
    """Promotes float32 input to float64 and returns float64 results."""

    capabilities = _REAL_ONLY
    model_class = _Float64OutputModel


# ---------------------------------------------------------------------------
# Gradients against finite differences
# ---------------------------------------------------------------------------

DX_SCALE_ERROR = 1e-4
"""Relative error :class:`BackwardDirectionDxScaled` puts on one direction's part of dx."""


class _BackwardDirectionDxScaledModel(_RecordingModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        grads.dx = grads.dx + DX_SCALE_ERROR * self.direction_dx(dy, dh_n, dc_n, 1)
        return grads


class BackwardDirectionDxScaled(PlantedImplementation):
    """Backward direction's part of dx off by a factor 1 + 1e-4 (a stray scale in one branch)."""

    model_class = _BackwardDirectionDxScaledModel


class _DxShiftedModel(ReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        shifted = np.zeros_like(grads.dx)
        shifted[..., 1:] = grads.dx[..., :-1]
        grads.dx = shifted
        return grads


class DxShifted(PlantedImplementation):
    """dx written one time step late (off-by-one when storing the input gradient)."""

    model_class = _DxShiftedModel


class _BackwardBiasGradientZeroModel(ReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        grads.dparams["b_bwd"] = np.zeros_like(grads.dparams["b_bwd"])
        return grads


class BackwardBiasGradientZero(PlantedImplementation):
    """Bias gradient of the backward direction never filled in (left at its zero initial value)."""

    model_class = _BackwardBiasGradientZeroModel


class _ForgetGateRecurrentDoubledModel(ReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        hidden_size = self.params["W_hh_fwd"].shape[0]
        forget = slice(hidden_size, 2 * hidden_size)
        d_w_hh = grads.dparams["W_hh_fwd"].copy()
        d_w_hh[:, forget] *= 2
        grads.dparams["W_hh_fwd"] = d_w_hh
        return grads


class ForgetGateRecurrentDoubled(PlantedImplementation):
    """Forget gate's block of the forward W_hh gradient accumulated twice."""

    model_class = _ForgetGateRecurrentDoubledModel


class _HalvedCellGradientModel(ReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        grads.dc0 = grads.dc0 * 0.5
        return grads


class HalvedCellGradient(PlantedImplementation):
    """dc0 scaled by a stray factor 0.5."""

    model_class = _HalvedCellGradientModel


class _FinalHiddenGradientIgnoredModel(ReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        return super().backward(dy, dh_n=None, dc_n=dc_n)


class FinalHiddenGradientIgnored(PlantedImplementation):
    """Upstream gradient dh_n accepted but dropped, so backward starts from dh = 0."""

    model_class = _FinalHiddenGradientIgnoredModel


# ---------------------------------------------------------------------------
# Agreement with the reference
# ---------------------------------------------------------------------------

class _BackwardDirectionGatesSwappedModel(_GateSwapModel):
    directions = ("bwd",)


class BackwardDirectionGatesSwapped(PlantedImplementation):
    """Backward direction alone reads gates i and f exchanged, and its backward matches that forward."""

    model_class = _BackwardDirectionGatesSwappedModel


class _HardSigmoidModel(_LoopModel):
    sigmoid = staticmethod(_hard_sigmoid)


class HardSigmoid(PlantedImplementation):
    """Gates use the piecewise-linear hard sigmoid in place of the logistic function."""

    capabilities = _REAL_ONLY
    model_class = _HardSigmoidModel


# ---------------------------------------------------------------------------
# Missing capabilities: no bug, only fewer declared capabilities
# ---------------------------------------------------------------------------

class ForwardOnly(PlantedImplementation):
    """Declares no backward pass, as a forward-only inference build does."""

    capabilities = replace(ReferenceImplementation.capabilities, backward=False,
                           param_gradients=False, state_gradients=False)


class NoLengths(PlantedImplementation):
    """Declares no per-example lengths, as a layer for unpadded batches only does."""

    capabilities = replace(ReferenceImplementation.capabilities, lengths=False, zero_length=False)


class SumOnly(PlantedImplementation):
    """Declares merge mode "sum" alone."""

    capabilities = replace(ReferenceImplementation.capabilities, merge_modes=frozenset({"sum"}))


# ---------------------------------------------------------------------------
# Controls: the shared machinery with no bug planted
# ---------------------------------------------------------------------------

class LoopControl(PlantedImplementation):
    """No bug: the plain step-by-step forward that the cell-level bugs change."""

    model_class = _LoopModel


class HalvesControl(PlantedImplementation):
    """No bug: the split-and-merge forward that the half-level bugs change."""

    model_class = _HalvesModel


class _FinalStatesAtLastStepModel(ReferenceModel):
    def forward(self, x, *, lengths=None, h0=None, c0=None):
        out = super().forward(x, lengths=lengths, h0=h0, c0=c0)
        if lengths is None:
            return out
        # The forward final state read at step n_t - 1, where padded steps left zeros.
        hidden_size = self.params["W_hh_fwd"].shape[0]
        y = bilstm.forward(x, self.params, merge_mode="concat", lengths=lengths, h0=h0, c0=c0).y
        h_n = out.h_n.copy()
        h_n[0] = y[:, :hidden_size, -1]
        return Output(out.y, h_n, out.c_n)


class FinalStateAtLastStep(PlantedImplementation):
    """Forward final state taken from the output at step n_t - 1, ignoring lengths."""

    model_class = _FinalStatesAtLastStepModel


def _overflowing_sigmoid(z):
    e = np.exp(z)
    return e / (1 + e)


class _OverflowingSigmoidModel(_LoopModel):
    def sigmoid(self, z):
        with np.errstate(over="ignore", invalid="ignore"):
            return _overflowing_sigmoid(z)


class OverflowingSigmoid(PlantedImplementation):
    """Sigmoid written exp(z) / (1 + exp(z)), which gives inf / inf = NaN for large z."""

    model_class = _OverflowingSigmoidModel


class _UpstreamTimesMaskModel(ReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        lengths = self._last.lengths
        if lengths is not None:
            # Multiplying by the 0/1 mask keeps NaN at padded steps (NaN * 0 = NaN).
            valid = np.arange(dy.shape[-1])[None, :] < lengths[:, None]
            dy = dy * valid[:, None, :]
            grads = bilstm.backward(self._last, np.nan_to_num(dy, nan=0.0), dh_n=dh_n, dc_n=dc_n)
            poisoned = np.isnan(dy).any()
            if poisoned:
                grads.dx[...] = np.nan
            return Grads(grads.dx, grads.dparams, grads.dh0, grads.dc0)
        return super().backward(dy, dh_n=dh_n, dc_n=dc_n)


class UpstreamTimesMask(PlantedImplementation):
    """Backward masks dy by multiplying with the 0/1 mask, so NaN at padded steps spreads."""

    model_class = _UpstreamTimesMaskModel
