"""Adapter for numpy-ml's ``BidirectionalLSTM`` (numpy-ml 0.1.2, GPLv3+).

numpy-ml computes in the reference layout already: ``x`` is
(n_ex, n_in, n_t) and ``y`` is (n_ex, 2H, n_t) for ``"concat"`` and
(n_ex, H, n_t) for ``"sum"``, ``"average"`` and ``"multiply"``.  Only the
parameters differ.  Each direction is an ``LSTMCell`` with four weight
matrices ``Wf, Wu, Wc, Wo`` of shape (H + n_in, H), acting on the row vector
``[h_prev, x_t]``, and four biases ``bf, bu, bc, bo`` of shape (1, H).  The
reference gates i, f, g, o are numpy-ml's u (update), f, c (candidate) and o.

One ``BidirectionalLSTM`` object is created per :meth:`build`, and every
forward and backward call goes to that object unchanged, so its defects stay
visible.  It starts each forward call from the previous call's final state
and rejects a batch of another size.  Its multiply-mode backward raises
``UnboundLocalError``, and its parameter gradients accumulate across
backward calls.

numpy-ml 0.1.2 imports ``Hashable`` from :mod:`collections`, which fails on
Python 3.10 and later.  Before importing it, this module sets
``collections.Hashable = collections.abc.Hashable`` when that name is
missing, and changes nothing else.
"""

import collections
import collections.abc
import importlib.metadata
import warnings

import numpy as np

from bilstm.convert import from_numpy_ml_params, to_numpy_ml_params
from bilstm.params import hidden_size_of, input_size_of
from properties.errors import HarnessError
from properties.protocol import Capabilities, Grads, Implementation, Model, Output

if not hasattr(collections, "Hashable"):
    collections.Hashable = collections.abc.Hashable

# Importing numpy_ml imports all of its subpackages, and two of them warn that
# gym and matplotlib are missing. Neither is used by the BiLSTM.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", module=r"numpy_ml\.")
    from numpy_ml.neural_nets.modules import BidirectionalLSTM


def _load_cell(cell, n_in, cell_params):
    """Initialise ``cell`` as its first forward call would, then set ``cell_params``.

    ``LSTMCell`` initialises itself lazily on its first forward call and then
    overwrites any parameters set before.  Calling its ``_init_params`` here,
    with ``n_in`` set, creates the same empty history and zero gradient
    accumulators without running a step, so no state is left behind.
    """
    cell.n_in = n_in

    # _init_params draws throw-away weights from numpy's global random state.
    # Restoring it keeps the harness's draws independent of how many models
    # were built.
    global_state = np.random.get_state()
    try:
        cell._init_params()
    finally:
        np.random.set_state(global_state)

    cell.set_params({"parameters": cell_params})


class NumpyMLModel(Model):
    """One numpy-ml ``BidirectionalLSTM`` object behind the model interface.

    Parameters
    ----------
    layer : numpy_ml.neural_nets.modules.BidirectionalLSTM
        The object every call goes to, with its parameters already set.
    """

    def __init__(self, layer):
        self.layer = layer

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        """Run ``layer.forward`` on ``x`` (n_ex, n_in, n_t) and return its output as is."""
        _reject_unsupported(lengths=lengths, h0=h0, c0=c0)
        return Output(self.layer.forward(x))

    def backward(self, dy, *, dh_n=None, dc_n=None):
        """Run ``layer.backward`` on ``dy`` and read the cells' accumulated gradients.

        ``dx`` is numpy-ml's return value.  ``dparams`` is the content of
        each cell's ``gradients`` dict after the call, converted to
        reference keys.  numpy-ml adds to that dict on every backward call
        and never resets it, so the gradients returned by a second backward
        call include those of the first.
        """
        _reject_unsupported(dh_n=dh_n, dc_n=dc_n)
        dx = self.layer.backward(dy)

        # The converter copies, so later in-place updates of the accumulators
        # do not change the returned arrays.
        cell_gradients = {"cell_fwd": self.layer.cell_fwd.gradients,
                          "cell_bwd": self.layer.cell_bwd.gradients}
        return Grads(dx=dx, dparams=from_numpy_ml_params(cell_gradients))


# The capability that each optional argument of the model interface needs.
_CAPABILITY_OF = {
    "lengths": "lengths", "h0": "initial_state", "c0": "initial_state",
    "dh_n": "state_gradients", "dc_n": "state_gradients",
}


def _reject_unsupported(**arguments):
    """Raise for any argument that is not None, because numpy-ml has no such input."""
    for name, value in arguments.items():
        if value is not None:
            flag = _CAPABILITY_OF[name]
            raise HarnessError(
                f"{name} is not supported: got a {type(value).__name__}, but numpy-ml's "
                f"BidirectionalLSTM has no {name} argument and capabilities.{flag} is "
                f"False; pass {name}=None, or skip properties for which "
                f"capabilities.missing([{flag!r}]) is not empty"
            )


class NumpyMLImplementation(Implementation):
    """numpy-ml's ``BidirectionalLSTM``, forward and backward with its own code."""

    name = "numpy-ml"
    description = "numpy_ml.neural_nets.modules.BidirectionalLSTM (numpy, per-step cells)"
    extra = "numpy-ml"

    # float32 is declared although numpy-ml returns float64 for float32 input:
    # each cell starts from np.zeros((n_ex, H)), which is float64, so the first
    # step promotes everything. Declaring it lets the dtype property report that
    # upcast instead of skipping float32 as not applicable. The parameter
    # gradients are float64 too, in the accumulators that _init_params creates.
    capabilities = Capabilities(
        merge_modes=frozenset({"concat", "sum", "average", "multiply"}),
        dtypes=frozenset({"float32", "float64"}),
        lengths=False,
        zero_length=False,
        initial_state=False,
        final_state=False,
        backward=True,
        param_gradients=True,
        state_gradients=False,
        complex_input=False,
    )

    def version(self):
        return importlib.metadata.version("numpy-ml")

    def build(self, params, *, merge_mode):
        """Return a model around one new ``BidirectionalLSTM`` holding ``params``.

        ``merge_mode`` goes to numpy-ml unchanged, even when it is outside
        :attr:`capabilities`, so that numpy-ml's own handling is what is seen.
        """
        cells = to_numpy_ml_params(params)
        layer = BidirectionalLSTM(n_out=hidden_size_of(params), merge_mode=merge_mode)
        _load_cell(layer.cell_fwd, input_size_of(params), cells["cell_fwd"])
        _load_cell(layer.cell_bwd, input_size_of(params), cells["cell_bwd"])
        return NumpyMLModel(layer)
