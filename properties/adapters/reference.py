"""Adapter for the built-in reference BiLSTM (:mod:`bilstm`)."""

import bilstm
from bilstm.merge import MERGE_MODES
from properties.protocol import Capabilities, Grads, Implementation, Model, Output


class ReferenceModel(Model):
    """The reference's pure functions behind the stateful model interface."""

    def __init__(self, params, merge_mode):
        self.params = params
        self.merge_mode = merge_mode
        self._last = None

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        self._last = bilstm.forward(
            x, self.params, merge_mode=self.merge_mode, lengths=lengths, h0=h0, c0=c0
        )
        return Output(self._last.y, self._last.h_n, self._last.c_n)

    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = bilstm.backward(self._last, dy, dh_n=dh_n, dc_n=dc_n)
        return Grads(grads.dx, grads.dparams, grads.dh0, grads.dc0)


class ReferenceImplementation(Implementation):
    """The reference BiLSTM of this project, with every capability."""

    name = "reference"
    description = "bilstm.forward / bilstm.backward (numpy, exact gradients)"
    capabilities = Capabilities(
        merge_modes=frozenset(MERGE_MODES),
        dtypes=frozenset({"float32", "float64"}),
        lengths=True,
        zero_length=True,
        initial_state=True,
        final_state=True,
        backward=True,
        param_gradients=True,
        state_gradients=True,
        complex_input=True,
    )

    def version(self):
        return bilstm.__version__

    def build(self, params, *, merge_mode):
        return ReferenceModel(params, merge_mode)
