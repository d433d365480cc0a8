"""Adapter for the ONNX ``LSTM`` operator run by ONNX Runtime (forward only).

:meth:`OnnxRuntimeImplementation.build` writes a graph of one ``LSTM`` node
with ``direction="bidirectional"`` and ``hidden_size=H`` (opset
:data:`OPSET`).  The weights ``W``, ``R`` and ``B`` from
:func:`bilstm.convert.to_onnx_weights` are initializers of the graph.  Its
inputs are ``X`` (n_t, n_ex, n_in) and, where the call passes them,
``sequence_lens`` (n_ex,) of int32 and ``initial_h``/``initial_c``
(2, n_ex, H).  Its outputs are ``Y`` (n_t, 2, n_ex, H), ``Y_h`` and ``Y_c``
(2, n_ex, H).  ``n_t`` and ``n_ex`` are symbolic dimensions, so one
``onnxruntime.InferenceSession`` serves batches of every size.

An input that a forward call leaves as None is left out of the graph, as an
ONNX user would do.  A graph input cannot be optional at run time, so the
model keeps one session per set of inputs present.  Each session is created
on first use with the CPU provider and one intra-op thread, and then reused
by every later call with the same set of inputs.

Lengths go to ``sequence_lens``.  onnxruntime accepts a length of 0, so
``zero_length`` is True, but for such an example it returns zero final
states where the reference returns the initial states (see
:attr:`OnnxRuntimeImplementation.known_failures`).

ONNX has no merge mode.  ``Y`` contains both directions on an axis of its own,
and this adapter composes every merge mode from it with numpy: the sum,
average or product of the two halves, both halves stacked for ``None``, and
the halves concatenated, forward first, for ``"concat"``.

ONNX Runtime has no backward pass for ``LSTM`` at inference, so
``backward`` is False and :meth:`OnnxRuntimeModel.backward` raises
:class:`NotImplementedError`.  Its CPU ``LSTM`` kernel computes float32
only.  With float64 weights the session is created, but running it raises
"LSTM operator does not support double yet" (onnxruntime 1.32.0), so
float32 is the only dtype declared.
"""

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from bilstm.convert import ONNX_KEYS, to_onnx_weights
from bilstm.layout import to_time_major
from bilstm.merge import MERGE_MODES, canonical_merge_mode
from bilstm.params import hidden_size_of, input_size_of
from properties.protocol import Capabilities, Implementation, Model, Output

OPSET = 14
"""ONNX opset of the graph.

Opset 14's ``LSTM`` has every input and attribute the graph uses.  The
model's IR version is the lowest that this opset allows, so that a runtime
older than the one tested (onnxruntime 1.32.0) does not reject the graph for
its IR version alone.
"""

OPTIONAL_INPUTS = ("sequence_lens", "initial_h", "initial_c")
"""Optional inputs of the ``LSTM`` node that a forward call may feed, in operator order."""


def _tensor_type(dtype):
    """Return the ONNX element type of the numpy ``dtype``."""
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def make_lstm_graph(weights, *, n_in, hidden_size, dtype, present):
    """Return an ONNX model of one bidirectional ``LSTM`` node.

    Parameters
    ----------
    weights : dict of str to ndarray
        ``W`` (2, 4H, n_in), ``R`` (2, 4H, H) and ``B`` (2, 8H), stored as
        initializers.
    n_in, hidden_size : int
        Input features and hidden units per direction.
    dtype : numpy dtype
        Element type of ``X``, the states and the outputs.
    present : tuple of str
        Names from :data:`OPTIONAL_INPUTS` that become graph inputs; the
        node's other optional inputs are left empty.

    Returns
    -------
    onnx.ModelProto
        A checked model whose ``n_t`` and ``n_ex`` dimensions are symbolic.
    """
    element = _tensor_type(dtype)
    state = [2, "n_ex", hidden_size]
    declared = {
        "sequence_lens": helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["n_ex"]),
        "initial_h": helper.make_tensor_value_info("initial_h", element, state),
        "initial_c": helper.make_tensor_value_info("initial_c", element, state),
    }
    inputs = [helper.make_tensor_value_info("X", element, ["n_t", "n_ex", n_in])]
    inputs += [declared[name] for name in OPTIONAL_INPUTS if name in present]

    # The operator's inputs are positional: X, W, R, B, sequence_lens,
    # initial_h, initial_c, P.  An empty name skips one; trailing empty
    # names are dropped.
    node_inputs = ["X", *ONNX_KEYS] + [name if name in present else "" for name in OPTIONAL_INPUTS]
    while node_inputs[-1] == "":
        node_inputs.pop()
    node = helper.make_node("LSTM", node_inputs, ["Y", "Y_h", "Y_c"],
                            direction="bidirectional", hidden_size=hidden_size)

    outputs = [
        helper.make_tensor_value_info("Y", element, ["n_t", 2, "n_ex", hidden_size]),
        helper.make_tensor_value_info("Y_h", element, state),
        helper.make_tensor_value_info("Y_c", element, state),
    ]
    initializers = [numpy_helper.from_array(weights[key], key) for key in ONNX_KEYS]
    graph = helper.make_graph([node], "bidirectional_lstm", inputs, outputs, initializers)

    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets,
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    return model


def merge_halves(y_halves, merge_mode):
    """Compose a merge mode from both directions' outputs.

    Parameters
    ----------
    y_halves : ndarray, shape (2, n_ex, H, n_t)
        Forward direction at index 0.
    merge_mode : str or None
        A canonical merge mode.

    Returns
    -------
    ndarray
        (n_ex, 2H, n_t) for ``"concat"``, (2, n_ex, H, n_t) for ``None`` and
        (n_ex, H, n_t) otherwise.
    """
    y_fwd, y_bwd = y_halves
    if merge_mode == "concat":
        return np.concatenate([y_fwd, y_bwd], axis=1)
    if merge_mode == "sum":
        return y_fwd + y_bwd
    if merge_mode == "average":
        return (y_fwd + y_bwd) / 2
    if merge_mode == "multiply":
        return y_fwd * y_bwd
    return y_halves


class OnnxRuntimeModel(Model):
    """A bidirectional ONNX ``LSTM`` run by onnxruntime, behind the model interface.

    Parameters
    ----------
    weights : dict of str to ndarray
        ``W``, ``R`` and ``B`` from :func:`bilstm.convert.to_onnx_weights`.
    n_in, hidden_size : int
        Input features and hidden units per direction.
    merge_mode : str or None
        A canonical merge mode, composed from ``Y``.
    """

    def __init__(self, weights, *, n_in, hidden_size, merge_mode):
        self.weights = weights
        self.n_in = n_in
        self.hidden_size = hidden_size
        self.merge_mode = merge_mode
        self.sessions = {}
        """Names of the optional inputs present -> the session of that graph."""

    def session(self, present):
        """Return the session whose graph takes the optional inputs ``present``, creating it once."""
        if present not in self.sessions:
            model = make_lstm_graph(self.weights, n_in=self.n_in, hidden_size=self.hidden_size,
                                    dtype=self.weights["W"].dtype, present=present)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            self.sessions[present] = onnxruntime.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"],
            )
        return self.sessions[present]

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        """Run the graph on ``x`` (n_ex, n_in, n_t) and merge ``Y`` in the reference layout.

        Returns an :class:`Output` with ``h_n`` and ``c_n`` (2, n_ex, H) from
        ``Y_h`` and ``Y_c``, the forward direction at index 0.
        """
        y_halves, h_n, c_n = self.run_session(x, lengths, h0, c0)
        return Output(merge_halves(y_halves, self.merge_mode), h_n, c_n)

    def run_session(self, x, lengths, h0, c0):
        """Feed the graph and return its outputs in the reference layout.

        Parameters
        ----------
        x : ndarray, shape (n_ex, n_in, n_t)
            Input in the reference layout.
        lengths : array of int, shape (n_ex,), or None
            Fed as ``sequence_lens`` in int32, the type the operator requires.
        h0, c0 : ndarray, shape (2, n_ex, H), or None
            Fed as ``initial_h`` and ``initial_c`` unchanged.

        Returns
        -------
        y_halves : ndarray, shape (2, n_ex, H, n_t)
            ``Y`` with the direction axis first, forward at index 0.
        h_n, c_n : ndarray, shape (2, n_ex, H)
            ``Y_h`` and ``Y_c`` as onnxruntime returns them.
        """
        feeds = {"X": to_time_major(x)}
        if lengths is not None:
            feeds["sequence_lens"] = np.asarray(lengths).astype(np.int32)
        if h0 is not None:
            feeds["initial_h"] = h0
        if c0 is not None:
            feeds["initial_c"] = c0

        present = tuple(name for name in OPTIONAL_INPUTS if name in feeds)
        y, h_n, c_n = self.session(present).run(["Y", "Y_h", "Y_c"], feeds)
        return np.ascontiguousarray(y.transpose(1, 2, 3, 0)), h_n, c_n

    def backward(self, dy, *, dh_n=None, dc_n=None):
        """Raise :class:`NotImplementedError`: onnxruntime runs the ``LSTM`` operator forward only."""
        raise NotImplementedError(
            "backward is not supported: onnxruntime has no gradient of the ONNX LSTM "
            "operator at inference and capabilities.backward is False; skip properties "
            "for which capabilities.missing(['backward']) is not empty"
        )


class OnnxRuntimeImplementation(Implementation):
    """The ONNX ``LSTM`` operator, bidirectional, on onnxruntime's CPU provider (forward only)."""

    name = "onnxruntime"
    description = (f"ONNX LSTM(direction='bidirectional'), opset {OPSET}, onnxruntime "
                   f"CPUExecutionProvider (forward only)")
    extra = "onnx"
    model_class = OnnxRuntimeModel
    """The :class:`OnnxRuntimeModel` subclass :meth:`build` returns."""

    capabilities = Capabilities(
        merge_modes=frozenset(MERGE_MODES),
        dtypes=frozenset({"float32"}),
        lengths=True,
        zero_length=True,
        initial_state=True,
        final_state=True,
        backward=False,
        param_gradients=False,
        state_gradients=False,
        complex_input=False,
    )

    known_failures = {
        name: (
            "for an example with sequence_lens 0, onnxruntime (1.32.0) returns Y_h = Y_c = 0 "
            "where the reference returns initial_h and initial_c, because its CPU LSTM kernel "
            "(uni_directional_lstm.cc) fills the final states of such examples with zeros"
        )
        for name in ("reference_agreement", "final_state_positions")
    }

    def version(self):
        return onnxruntime.__version__

    def build(self, params, *, merge_mode):
        """Return a model of the graph holding ``params`` in their dtype.

        Raises
        ------
        bilstm.errors.InvalidArgumentError
            For an unknown ``merge_mode`` or invalid ``params``.
        """
        merge_mode = canonical_merge_mode(merge_mode)
        return self.model_class(to_onnx_weights(params), n_in=input_size_of(params),
                                hidden_size=hidden_size_of(params), merge_mode=merge_mode)
