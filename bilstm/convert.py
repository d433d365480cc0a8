r"""Convert the reference's parameters to and from other frameworks' layouts.

The reference stores each direction as ``W_ih`` (n_in, 4H), ``W_hh`` (H, 4H)
and ``b`` (4H,) with the gates in the order i, f, g, o (see
:mod:`bilstm.params`).  The converters here map that dict to and from:

- PyTorch ``nn.LSTM(n_in, H, bidirectional=True)`` with one layer:
  ``weight_ih_l0`` (4H, n_in), ``weight_hh_l0`` (4H, H), ``bias_ih_l0`` and
  ``bias_hh_l0`` (4H,), which add, and the same with ``_reverse`` for the
  backward direction.  Gate order i, f, g, o.
- Keras 3 ``Bidirectional(LSTM(H))``: ``layer.get_weights()``, that is
  ``kernel`` (n_in, 4H), ``recurrent_kernel`` (H, 4H) and ``bias`` (4H,) of
  the forward layer, then of the backward layer.  Gate order i, f, c, o.
- ONNX ``LSTM`` with ``direction="bidirectional"``: ``W`` (2, 4H, n_in),
  ``R`` (2, 4H, H) and ``B`` (2, 8H).  ``B[d]`` is ``[Wb, Rb]``, and the two
  halves add.  Index 0 is the forward direction.  Gate order i, o, f, c.
- numpy-ml 0.1.2 ``BidirectionalLSTM``: per cell, ``Wf, Wu, Wc, Wo`` of
  shape (H + n_in, H) acting on the concatenation ``[h_prev, x_t]`` and
  ``bf, bu, bc, bo`` of shape (1, H).  ``u`` is the input gate and ``c`` the
  cell candidate.

Exactness
---------
Every converter only moves, transposes and copies entries, except where a
layout splits the bias in two (PyTorch and ONNX).  Going to such a layout
puts the whole bias in the input half (``bias_ih_l0``, ``Wb``) and ``-0.0``
in the recurrent half, because ``b + (-0.0)`` equals ``b`` bit for bit for
every value except NaN, signed zeros included, while ``b + 0.0`` turns
``-0.0`` into ``+0.0``.  Coming back sums the two halves.  So
reference -> X -> reference is exact for all four layouts.
X -> reference -> X is exact for Keras and numpy-ml.  For PyTorch and ONNX
it keeps the weights bit for bit and the sum of the two bias halves, but
not how the sum was split.

Every converter validates its argument first, raising
:class:`~bilstm.errors.InvalidArgumentError` for missing or unexpected keys
and wrong or inconsistent shapes, and :class:`~bilstm.errors.InvalidDtypeError`
for a non-float or mixed dtype.  The result never shares memory with the
argument, keeps its dtype and is C-contiguous.  Values are not checked, so NaN and inf pass
through unchanged.
"""

from collections.abc import Mapping

import numpy as np

from bilstm.errors import InvalidArgumentError, InvalidDtypeError
from bilstm.params import DIRECTIONS, PARAM_NAMES, param_shapes

TORCH_KEYS = (
    "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
    "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse",
)
"""Keys of a single-layer bidirectional ``torch.nn.LSTM`` state dict."""

KERAS_WEIGHT_NAMES = (
    "forward kernel", "forward recurrent_kernel", "forward bias",
    "backward kernel", "backward recurrent_kernel", "backward bias",
)
"""Names of the six arrays of Keras ``Bidirectional(LSTM(H)).get_weights()``, in order."""

ONNX_KEYS = ("W", "R", "B")
"""Weight inputs of the ONNX ``LSTM`` operator.  ``B`` is optional and defaults to zeros."""

NUMPY_ML_CELLS = ("cell_fwd", "cell_bwd")
"""Cell names of numpy-ml's ``BidirectionalLSTM``, forward first."""

NUMPY_ML_KEYS = ("Wf", "Wu", "Wc", "Wo", "bf", "bu", "bc", "bo")
"""Parameter names of one numpy-ml ``LSTMCell``."""

# Position of each layout's gate blocks in the reference order i, f, g, o.
_ONNX_GATES = (0, 3, 1, 2)             # i, o, f, c
_NUMPY_ML_GATES = {"f": 1, "u": 0, "c": 2, "o": 3}


# ---------------------------------------------------------------------------
# Reading and validating arguments
# ---------------------------------------------------------------------------

def _as_numpy(label, value):
    """Convert ``value`` to an ndarray, detaching torch tensors and moving them to the CPU.

    Tensors are recognised by duck typing, so this module never imports
    torch.  The result may share memory with ``value``, so callers copy
    before returning it.
    """
    if value is None:
        raise InvalidArgumentError(
            f"{label} is None; pass an array (a numpy-ml cell creates its "
            f"parameters only on its first forward call)"
        )

    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        tensor = value.detach().cpu()
        try:
            return tensor.numpy()
        except TypeError:
            raise InvalidDtypeError(
                f"{label} has dtype {tensor.dtype}, which numpy cannot represent; "
                f"convert the tensor with .float() or .double() first"
            ) from None

    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"{label} could not be converted to an array ({exc}); pass a numpy array"
        ) from None


def _check_keys(name, mapping, required, optional=(), hint=""):
    """Raise unless ``mapping`` has every key of ``required`` and no key outside ``required + optional``."""
    allowed = required + optional
    missing = [key for key in required if key not in mapping]
    extra = sorted(str(key) for key in mapping if key not in allowed)
    if missing or extra:
        raise InvalidArgumentError(
            f"{name} has missing keys {missing} and unexpected keys {extra}; it must "
            f"hold exactly {list(required)}"
            + (f" and may hold {list(optional)}" if optional else "")
            + f"; {hint}"
        )


def _read_mapping(name, mapping, required, optional=(), hint=""):
    """Validate the keys and dtypes of ``mapping`` and return its entries as ndarrays.

    Parameters
    ----------
    name : str
        Argument name used in messages, for example ``"state_dict"``.
    mapping : Mapping
        The argument.
    required, optional : tuple of str
        Keys that must and may be present; any other key is rejected.
    hint : str
        Sentence appended to the key error, saying how to produce a valid argument.

    Returns
    -------
    dict of str to ndarray
        Present keys in the order of ``required + optional``.
    """
    if not isinstance(mapping, Mapping):
        raise InvalidArgumentError(
            f"{name} must be a mapping from name to array, got {type(mapping).__name__}; {hint}"
        )

    _check_keys(name, mapping, required, optional, hint)
    allowed = required + optional
    arrays = {
        key: _as_numpy(f"{name}[{key!r}]", mapping[key])
        for key in allowed if key in mapping
    }
    _check_dtypes({f"{name}[{key!r}]": array for key, array in arrays.items()})
    return arrays


def _check_dtypes(arrays):
    """Raise unless every array has the same real floating dtype.

    ``arrays`` maps a label for messages to an ndarray.  The first entry sets the dtype.
    """
    first_label, first = next(iter(arrays.items()))
    if first.dtype.kind != "f":
        raise InvalidDtypeError(
            f"{first_label} has dtype {first.dtype}, but parameters must have a real "
            f"floating dtype; convert it, for example with .astype(np.float64)"
        )

    for label, array in arrays.items():
        if array.dtype != first.dtype:
            raise InvalidDtypeError(
                f"{label} has dtype {array.dtype} but {first_label} has dtype "
                f"{first.dtype}; converters never promote mixed dtypes, so convert "
                f"every array to one dtype"
            )


def _hidden_size(label, array, formula, gate_axis, unit_axis):
    """Read ``H`` from a recurrent weight whose ``gate_axis`` is 4H and ``unit_axis`` H long.

    ``formula`` is the expected shape in words, for example ``"(2, 4H, H)"``.
    Its number of entries is the expected number of dimensions.
    """
    valid = (
        array.ndim == _ndim_of(formula)
        and array.shape[unit_axis] >= 1
        and array.shape[gate_axis] == 4 * array.shape[unit_axis]
    )
    if not valid:
        raise InvalidArgumentError(
            f"{label} has shape {array.shape} but must have shape {formula} with H >= 1, "
            f"because it is the recurrent weight of an LSTM with four gates side by "
            f"side; pass the weights of one LSTM layer"
        )
    return array.shape[unit_axis]


def _input_size(label, array, formula, axis):
    """Read ``n_in`` from axis ``axis`` of an input weight of shape ``formula``."""
    if array.ndim != _ndim_of(formula):
        raise InvalidArgumentError(
            f"{label} has shape {array.shape} but must have shape {formula}, "
            f"{_ndim_of(formula)} dimensions; pass the weights of one LSTM layer"
        )
    return array.shape[axis]


def _ndim_of(formula):
    """Return the number of dimensions of a shape in words such as ``"(4H, n_in)"``."""
    return len([entry for entry in formula.strip("()").split(",") if entry.strip()])


def _check_shapes(arrays, expected, sizes):
    """Raise at the first array whose shape differs from ``expected``.

    Parameters
    ----------
    arrays : dict of str to ndarray
        Arrays keyed by the labels used in messages.
    expected : dict of str to (tuple of int, str)
        Expected shape and its formula, for example ``((8, 3), "(4H, n_in)")``.
    sizes : str
        Where ``n_in`` and ``H`` were read, for the message.
    """
    for label, array in arrays.items():
        shape, formula = expected[label]
        if array.shape != shape:
            raise InvalidArgumentError(
                f"{label} has shape {array.shape} but must have shape {formula} = "
                f"{shape} for {sizes}; every array must come from one layer with "
                f"these sizes"
            )


def _read_params(params):
    """Validate a reference parameter dict and return ``(arrays, n_in, H)``."""
    arrays = _read_mapping(
        "params", params, PARAM_NAMES,
        hint="build one with bilstm.init_params or a from_* converter",
    )

    hidden_size = _hidden_size(
        "params['W_hh_fwd']", arrays["W_hh_fwd"], "(H, 4H)", gate_axis=1, unit_axis=0,
    )
    n_in = _input_size("params['W_ih_fwd']", arrays["W_ih_fwd"], "(n_in, 4H)", axis=0)

    formulas = {"W_ih": "(n_in, 4H)", "W_hh": "(H, 4H)", "b": "(4H,)"}
    expected = {
        f"params[{name!r}]": (shape, formulas[name.rsplit("_", 1)[0]])
        for name, shape in param_shapes(n_in, hidden_size).items()
    }
    _check_shapes(
        {f"params[{name!r}]": arrays[name] for name in PARAM_NAMES},
        expected,
        f"n_in={n_in} from params['W_ih_fwd'] and H={hidden_size} from params['W_hh_fwd']",
    )
    return arrays, n_in, hidden_size


# ---------------------------------------------------------------------------
# Gate blocks
# ---------------------------------------------------------------------------

def _take_gates(array, blocks, axis):
    """Return a copy of ``array`` with its gate blocks along ``axis`` in the order ``blocks``.

    ``blocks`` lists, for each block of the result, the index of the block of
    ``array`` that goes there.  ``np.take`` always copies.
    """
    hidden_size = array.shape[axis] // 4
    index = np.arange(4 * hidden_size).reshape(4, hidden_size)[list(blocks)].ravel()
    return np.take(array, index, axis=axis)


def _inverse(blocks):
    """Return the block order that undoes ``blocks``."""
    return tuple(int(k) for k in np.argsort(blocks))


def _gate_block(array, gate, axis=-1):
    """Return a copy of block ``gate`` (0 to 3) of ``array`` along ``axis``."""
    hidden_size = array.shape[axis] // 4
    index = np.arange(gate * hidden_size, (gate + 1) * hidden_size)
    return np.take(array, index, axis=axis)


def _negative_zeros(array):
    """Return ``-0.0`` in ``array``'s shape and dtype, the bit-exact additive identity."""
    return -np.zeros_like(array)


def _copy(array):
    return np.array(array, order="C", copy=True)


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

def to_torch_state_dict(params):
    """Convert reference parameters to a bidirectional ``torch.nn.LSTM`` state dict.

    Parameters
    ----------
    params : dict of str to ndarray
        Reference parameters, keys :data:`bilstm.params.PARAM_NAMES`.

    Returns
    -------
    dict of str to ndarray
        Keys :data:`TORCH_KEYS`: ``weight_ih_l0`` (4H, n_in), ``weight_hh_l0``
        (4H, H), ``bias_ih_l0`` and ``bias_hh_l0`` (4H,), and the same with
        ``_reverse`` for the backward direction.  The whole bias goes to
        ``bias_ih_l0`` and ``bias_hh_l0`` is ``-0.0``, so the sum torch uses
        equals ``b`` bit for bit.  The arrays are numpy arrays in the dtype
        of ``params``; load them with
        ``lstm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``
        into ``nn.LSTM(n_in, H, bidirectional=True)`` of that dtype.

    Raises
    ------
    InvalidArgumentError, InvalidDtypeError
        For missing or unexpected keys, wrong shapes or a non-float or mixed dtype.

    Examples
    --------
    >>> import bilstm
    >>> sd = to_torch_state_dict(bilstm.init_params(3, 2, rng=0))
    >>> sd["weight_ih_l0"].shape, sd["weight_hh_l0_reverse"].shape
    ((8, 3), (8, 2))
    """
    arrays, _, _ = _read_params(params)

    state_dict = {}
    for direction, suffix in zip(DIRECTIONS, ("", "_reverse")):
        state_dict[f"weight_ih_l0{suffix}"] = _copy(arrays[f"W_ih_{direction}"].T)
        state_dict[f"weight_hh_l0{suffix}"] = _copy(arrays[f"W_hh_{direction}"].T)
        state_dict[f"bias_ih_l0{suffix}"] = _copy(arrays[f"b_{direction}"])
        state_dict[f"bias_hh_l0{suffix}"] = _negative_zeros(arrays[f"b_{direction}"])
    return {key: state_dict[key] for key in TORCH_KEYS}


def from_torch_state_dict(state_dict):
    """Convert a bidirectional ``torch.nn.LSTM`` state dict to reference parameters.

    Parameters
    ----------
    state_dict : Mapping of str to ndarray or torch.Tensor
        Exactly the keys :data:`TORCH_KEYS`, as returned by ``state_dict()``
        of ``nn.LSTM(n_in, H, bidirectional=True)`` with the defaults
        ``num_layers=1``, ``bias=True`` and ``proj_size=0``.  Tensors are
        detached and copied to the CPU.

    Returns
    -------
    dict of str to ndarray
        Reference parameters in the state dict's dtype.  Each ``b`` is
        ``bias_ih + bias_hh``, rounded once in that dtype, so converting back
        keeps the sum but not the split.

    Raises
    ------
    InvalidArgumentError, InvalidDtypeError
        For missing or unexpected keys (a deeper, projected or bias-free
        LSTM), wrong shapes, or a non-float or mixed dtype.
    """
    arrays = _read_mapping(
        "state_dict", state_dict, TORCH_KEYS,
        hint="pass lstm.state_dict() of a torch.nn.LSTM(n_in, H, bidirectional=True) "
        "with num_layers=1, bias=True and proj_size=0",
    )

    hidden_size = _hidden_size(
        "state_dict['weight_hh_l0']", arrays["weight_hh_l0"], "(4H, H)", gate_axis=0, unit_axis=1,
    )
    n_in = _input_size("state_dict['weight_ih_l0']", arrays["weight_ih_l0"], "(4H, n_in)", axis=1)
    gates = 4 * hidden_size

    formulas = {
        "weight_ih": ((gates, n_in), "(4H, n_in)"),
        "weight_hh": ((gates, hidden_size), "(4H, H)"),
        "bias_ih": ((gates,), "(4H,)"),
        "bias_hh": ((gates,), "(4H,)"),
    }
    _check_shapes(
        {f"state_dict[{key!r}]": arrays[key] for key in TORCH_KEYS},
        {f"state_dict[{key!r}]": formulas[key.split("_l0")[0]] for key in TORCH_KEYS},
        f"n_in={n_in} from state_dict['weight_ih_l0'] and H={hidden_size} from "
        f"state_dict['weight_hh_l0']",
    )

    params = {}
    for direction, suffix in zip(DIRECTIONS, ("", "_reverse")):
        params[f"W_ih_{direction}"] = _copy(arrays[f"weight_ih_l0{suffix}"].T)
        params[f"W_hh_{direction}"] = _copy(arrays[f"weight_hh_l0{suffix}"].T)
        params[f"b_{direction}"] = arrays[f"bias_ih_l0{suffix}"] + arrays[f"bias_hh_l0{suffix}"]
    return {name: params[name] for name in PARAM_NAMES}


# ---------------------------------------------------------------------------
# Keras 3
# ---------------------------------------------------------------------------

def to_keras_weights(params):
    """Convert reference parameters to Keras ``Bidirectional(LSTM(H))`` weights.

    Keras' gate order i, f, c, o is the reference's i, f, g, o under another
    name, so this only reorders and copies the arrays.

    Parameters
    ----------
    params : dict of str to ndarray
        Reference parameters, keys :data:`bilstm.params.PARAM_NAMES`.

    Returns
    -------
    list of ndarray
        Six arrays in ``layer.get_weights()`` order (see
        :data:`KERAS_WEIGHT_NAMES`): forward ``kernel`` (n_in, 4H),
        ``recurrent_kernel`` (H, 4H) and ``bias`` (4H,), then the same for
        the backward layer.  Load them with ``layer.set_weights(weights)``
        on a built layer of the same dtype.

    Raises
    ------
    InvalidArgumentError, InvalidDtypeError
        For missing or unexpected keys, wrong shapes or a non-float or mixed dtype.
    """
    arrays, _, _ = _read_params(params)

    weights = []
    for direction in DIRECTIONS:
        for stem in ("W_ih", "W_hh", "b"):
            weights.append(_copy(arrays[f"{stem}_{direction}"]))
    return weights


def from_keras_weights(weights):
    """Convert Keras ``Bidirectional(LSTM(H))`` weights to reference parameters.

    Parameters
    ----------
    weights : list or tuple of 6 arrays
        ``layer.get_weights()`` of a built ``Bidirectional(LSTM(H))`` with
        ``use_bias=True``, in the order of :data:`KERAS_WEIGHT_NAMES`.

    Returns
    -------
    dict of str to ndarray
        Reference parameters in the weights' dtype.

    Raises
    ------
    InvalidArgumentError, InvalidDtypeError
        For a wrong number of arrays, wrong shapes or a non-float or mixed dtype.
    """
    is_sequence = isinstance(weights, (list, tuple))
    if not is_sequence or len(weights) != len(KERAS_WEIGHT_NAMES):
        seen = f"length {len(weights)}" if is_sequence else type(weights).__name__
        raise InvalidArgumentError(
            f"weights must be a list of 6 arrays ({', '.join(KERAS_WEIGHT_NAMES)}), "
            f"got {seen}; pass layer.get_weights() of a Bidirectional(LSTM(H)) built "
            f"with use_bias=True"
        )

    labels = [f"weights[{k}] ({name})" for k, name in enumerate(KERAS_WEIGHT_NAMES)]
    arrays = {label: _as_numpy(label, value) for label, value in zip(labels, weights)}
    _check_dtypes(arrays)

    hidden_size = _hidden_size(
        labels[1], arrays[labels[1]], "(H, 4H)", gate_axis=1, unit_axis=0,
    )
    n_in = _input_size(labels[0], arrays[labels[0]], "(n_in, 4H)", axis=0)

    shapes = param_shapes(n_in, hidden_size)
    names = [f"{stem}_{direction}" for direction in DIRECTIONS for stem in ("W_ih", "W_hh", "b")]
    formulas = {"W_ih": "(n_in, 4H)", "W_hh": "(H, 4H)", "b": "(4H,)"}
    _check_shapes(
        arrays,
        {
            label: (shapes[name], formulas[name.rsplit("_", 1)[0]])
            for label, name in zip(labels, names)
        },
        f"n_in={n_in} from {labels[0]} and H={hidden_size} from {labels[1]}",
    )

    params = {name: _copy(arrays[label]) for label, name in zip(labels, names)}
    return {name: params[name] for name in PARAM_NAMES}


# ---------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------

def to_onnx_weights(params):
    """Convert reference parameters to the weights of a bidirectional ONNX ``LSTM``.

    Parameters
    ----------
    params : dict of str to ndarray
        Reference parameters, keys :data:`bilstm.params.PARAM_NAMES`.

    Returns
    -------
    dict of str to ndarray
        ``"W"`` (2, 4H, n_in), ``"R"`` (2, 4H, H) and ``"B"`` (2, 8H), gate
        order i, o, f, c, forward direction at index 0.  ``B[d]`` is
        ``[Wb, Rb]``; the whole bias goes to ``Wb`` and ``Rb`` is ``-0.0``,
        so ``Wb + Rb`` equals ``b`` bit for bit.  Use them as the ``W``,
        ``R`` and ``B`` inputs of an ``LSTM`` node with
        ``direction="bidirectional"`` and ``hidden_size=H``.

    Raises
    ------
    InvalidArgumentError, InvalidDtypeError
        For missing or unexpected keys, wrong shapes or a non-float or mixed dtype.

    Examples
    --------
    >>> import bilstm
    >>> weights = to_onnx_weights(bilstm.init_params(3, 2, rng=0))
    >>> [weights[key].shape for key in ONNX_KEYS]
    [(2, 8, 3), (2, 8, 2), (2, 16)]
    """
    arrays, _, _ = _read_params(params)

    w, r, b = [], [], []
    for direction in DIRECTIONS:
        w.append(_take_gates(arrays[f"W_ih_{direction}"], _ONNX_GATES, axis=1).T)
        r.append(_take_gates(arrays[f"W_hh_{direction}"], _ONNX_GATES, axis=1).T)
        bias = _take_gates(arrays[f"b_{direction}"], _ONNX_GATES, axis=0)
        b.append(np.concatenate([bias, _negative_zeros(bias)]))
    # np.stack keeps the transposed memory order of its inputs.
    return {
        "W": np.ascontiguousarray(np.stack(w)),
        "R": np.ascontiguousarray(np.stack(r)),
        "B": np.stack(b),
    }


def from_onnx_weights(weights):
    """Convert the weights of a bidirectional ONNX ``LSTM`` to reference parameters.

    Parameters
    ----------
    weights : Mapping of str to ndarray
        ``"W"`` (2, 4H, n_in), ``"R"`` (2, 4H, H) and optionally ``"B"``
        (2, 8H), the inputs of an ``LSTM`` node with
        ``direction="bidirectional"``.  A missing ``"B"`` means zero bias,
        as in ONNX.  Peepholes (``P``) have no counterpart in the reference
        and are rejected.

    Returns
    -------
    dict of str to ndarray
        Reference parameters in the weights' dtype.  Each ``b`` is
        ``Wb + Rb``, rounded once in that dtype, so converting back keeps
        the sum but not the split.

    Raises
    ------
    InvalidArgumentError, InvalidDtypeError
        For missing or unexpected keys, wrong shapes (a unidirectional
        layer has 1, not 2, on the first axis) or a non-float or mixed dtype.
    """
    arrays = _read_mapping(
        "weights", weights, ONNX_KEYS[:2], optional=ONNX_KEYS[2:],
        hint="pass the W, R and B inputs of an ONNX LSTM with direction='bidirectional'",
    )

    hidden_size = _hidden_size(
        "weights['R']", arrays["R"], "(2, 4H, H)", gate_axis=1, unit_axis=2,
    )
    n_in = _input_size("weights['W']", arrays["W"], "(2, 4H, n_in)", axis=2)
    gates = 4 * hidden_size
    if "B" not in arrays:
        arrays["B"] = np.zeros((2, 2 * gates), dtype=arrays["W"].dtype)

    _check_shapes(
        {f"weights[{key!r}]": arrays[key] for key in ONNX_KEYS},
        {
            "weights['W']": ((2, gates, n_in), "(2, 4H, n_in)"),
            "weights['R']": ((2, gates, hidden_size), "(2, 4H, H)"),
            "weights['B']": ((2, 2 * gates), "(2, 8H)"),
        },
        f"n_in={n_in} from weights['W'] and H={hidden_size} from weights['R']",
    )

    reference_order = _inverse(_ONNX_GATES)
    params = {}
    for d, direction in enumerate(DIRECTIONS):
        params[f"W_ih_{direction}"] = _take_gates(arrays["W"][d].T, reference_order, axis=1)
        params[f"W_hh_{direction}"] = _take_gates(arrays["R"][d].T, reference_order, axis=1)
        bias = arrays["B"][d, :gates] + arrays["B"][d, gates:]
        params[f"b_{direction}"] = _take_gates(bias, reference_order, axis=0)
    return {name: params[name] for name in PARAM_NAMES}


# ---------------------------------------------------------------------------
# numpy-ml
# ---------------------------------------------------------------------------

def to_numpy_ml_params(params):
    """Convert reference parameters to the cell parameters of numpy-ml's ``BidirectionalLSTM``.

    Parameters
    ----------
    params : dict of str to ndarray
        Reference parameters, keys :data:`bilstm.params.PARAM_NAMES`.

    Returns
    -------
    dict of str to dict of str to ndarray
        ``{"cell_fwd": {...}, "cell_bwd": {...}}``, the shape of numpy-ml's
        ``layer.parameters["components"]``.  Each cell has ``Wf, Wu, Wc, Wo``
        of shape (H + n_in, H), whose rows 0 to H-1 multiply ``h_prev`` and
        the rest ``x_t``, and ``bf, bu, bc, bo`` of shape (1, H).  ``u`` is
        the input gate and ``c`` the cell candidate.  Copy them into
        ``cell.parameters`` after the cell's parameters exist (set
        ``cell.n_in`` and call ``cell._init_params()``), because the first
        forward call of a fresh cell overwrites its parameters.

    Raises
    ------
    InvalidArgumentError, InvalidDtypeError
        For missing or unexpected keys, wrong shapes or a non-float or mixed dtype.
    """
    arrays, _, _ = _read_params(params)

    cells = {}
    for cell, direction in zip(NUMPY_ML_CELLS, DIRECTIONS):
        cells[cell] = {}
        for gate, block in _NUMPY_ML_GATES.items():
            w_hh = _gate_block(arrays[f"W_hh_{direction}"], block)
            w_ih = _gate_block(arrays[f"W_ih_{direction}"], block)
            cells[cell][f"W{gate}"] = np.concatenate([w_hh, w_ih], axis=0)
            cells[cell][f"b{gate}"] = _gate_block(arrays[f"b_{direction}"], block)[None, :]
        cells[cell] = {key: cells[cell][key] for key in NUMPY_ML_KEYS}
    return cells


def _read_numpy_ml_cells(cells):
    """Validate numpy-ml cell parameters and return ``(arrays, n_in, H)``.

    ``arrays`` maps ``(cell, key)`` to an ndarray.
    """
    hint = "pass layer.parameters['components'] of a numpy-ml BidirectionalLSTM"
    if not isinstance(cells, Mapping):
        raise InvalidArgumentError(
            f"cells must be a mapping with keys {list(NUMPY_ML_CELLS)}, got "
            f"{type(cells).__name__}; {hint}"
        )

    _check_keys("cells", cells, NUMPY_ML_CELLS, hint=hint)

    per_cell = {
        cell: _read_mapping(f"cells[{cell!r}]", cells[cell], NUMPY_ML_KEYS, hint=hint)
        for cell in NUMPY_ML_CELLS
    }
    arrays = {(cell, key): per_cell[cell][key] for cell in NUMPY_ML_CELLS for key in NUMPY_ML_KEYS}
    _check_dtypes({f"cells[{cell!r}][{key!r}]": a for (cell, key), a in arrays.items()})

    wf = arrays[("cell_fwd", "Wf")]
    label = "cells['cell_fwd']['Wf']"
    if wf.ndim != 2 or wf.shape[1] < 1 or wf.shape[0] < wf.shape[1]:
        raise InvalidArgumentError(
            f"{label} has shape {wf.shape} but must have shape (H + n_in, H) with "
            f"H >= 1 and n_in >= 0, because it acts on [h_prev, x_t]; pass the "
            f"parameters of an initialised LSTMCell"
        )
    hidden_size = wf.shape[1]
    n_in = wf.shape[0] - hidden_size

    expected = {}
    for cell in NUMPY_ML_CELLS:
        for key in NUMPY_ML_KEYS:
            shape, formula = ((hidden_size + n_in, hidden_size), "(H + n_in, H)")
            if key.startswith("b"):
                shape, formula = ((1, hidden_size), "(1, H)")
            expected[f"cells[{cell!r}][{key!r}]"] = (shape, formula)
    _check_shapes(
        {f"cells[{cell!r}][{key!r}]": a for (cell, key), a in arrays.items()},
        expected,
        f"n_in={n_in} and H={hidden_size} from {label}",
    )
    return arrays, n_in, hidden_size


def from_numpy_ml_params(cells):
    """Convert the cell parameters of numpy-ml's ``BidirectionalLSTM`` to reference parameters.

    Parameters
    ----------
    cells : Mapping
        ``{"cell_fwd": {...}, "cell_bwd": {...}}``, each with the keys
        :data:`NUMPY_ML_KEYS` as described in :func:`to_numpy_ml_params`;
        ``layer.parameters["components"]`` has this shape.

    Returns
    -------
    dict of str to ndarray
        Reference parameters in the cells' dtype.

    Raises
    ------
    InvalidArgumentError, InvalidDtypeError
        For missing or unexpected keys, parameters still None (a cell that
        never ran forward), wrong shapes or a non-float or mixed dtype.
    """
    arrays, _, hidden_size = _read_numpy_ml_cells(cells)

    reference_order = sorted(_NUMPY_ML_GATES, key=_NUMPY_ML_GATES.get)
    params = {}
    for cell, direction in zip(NUMPY_ML_CELLS, DIRECTIONS):
        weights = np.concatenate([arrays[(cell, f"W{g}")] for g in reference_order], axis=1)
        params[f"W_hh_{direction}"] = _copy(weights[:hidden_size])
        params[f"W_ih_{direction}"] = _copy(weights[hidden_size:])
        params[f"b_{direction}"] = np.concatenate(
            [arrays[(cell, f"b{g}")][0] for g in reference_order]
        )
    return {name: params[name] for name in PARAM_NAMES}
