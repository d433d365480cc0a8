"""A reference bidirectional LSTM in numpy, with exact gradients.

The functional core is :func:`forward` and :func:`backward`; see
:mod:`bilstm.reference` for the equations and conventions.
"""

from bilstm.convert import (
    from_keras_weights, from_numpy_ml_params, from_onnx_weights, from_torch_state_dict,
    to_keras_weights, to_numpy_ml_params, to_onnx_weights, to_torch_state_dict,
)
from bilstm.errors import BiLSTMError, InvalidArgumentError, InvalidDtypeError
from bilstm.layout import from_batch_first, from_time_major, to_batch_first, to_time_major
from bilstm.merge import MERGE_MODE_ALIASES, MERGE_MODES, canonical_merge_mode
from bilstm.params import (
    GATES, PARAM_NAMES, cast_params, hidden_size_of, init_params, input_size_of,
    param_shapes, swap_directions,
)
from bilstm.reference import Forward, Gradients, backward, forward, output_shape

__version__ = "0.1.0"

__all__ = [
    "BiLSTMError", "InvalidArgumentError", "InvalidDtypeError",
    "from_batch_first", "from_time_major", "to_batch_first", "to_time_major",
    "MERGE_MODE_ALIASES", "MERGE_MODES", "canonical_merge_mode",
    "GATES", "PARAM_NAMES", "cast_params", "hidden_size_of", "init_params",
    "input_size_of", "param_shapes", "swap_directions",
    "Forward", "Gradients", "backward", "forward", "output_shape",
]
