"""Input validation shared by the public entry points.

Every check runs before any computation, and every failure raises a
:class:`~bilstm.errors.BiLSTMError` whose message names the argument, shows
the value or shape seen, states the rule and gives the fix.
"""

from collections.abc import Mapping

import numpy as np

from bilstm.errors import InvalidArgumentError, InvalidDtypeError
from bilstm.params import PARAM_NAMES, param_shapes

COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.complex128))
"""Dtypes the reference computes in. complex128 serves complex-step differentiation."""


def as_array(name, value):
    """Convert ``value`` to an ndarray without copying, naming ``name`` on failure."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"{name} could not be converted to an array ({exc}); pass a numpy array"
        ) from None


def check_compute_dtype(name, array):
    """Raise unless ``array`` has one of :data:`COMPUTE_DTYPES`."""
    if array.dtype not in COMPUTE_DTYPES:
        allowed = ", ".join(str(dtype) for dtype in COMPUTE_DTYPES)
        raise InvalidDtypeError(
            f"{name} has dtype {array.dtype}, but the reference computes in {allowed}; "
            f"convert it first, for example {name}.astype(np.float64)"
        )


def check_same_dtype(name, array, dtype, source="x", hint=""):
    """Raise unless ``array`` has exactly ``dtype``; mixed precision is never promoted.

    ``source`` names the array that fixed ``dtype``, and ``hint`` is appended
    to the fix.
    """
    if array.dtype != dtype:
        raise InvalidDtypeError(
            f"{name} has dtype {array.dtype} but {source} has dtype {dtype}; the "
            f"reference does not promote mixed dtypes, so convert {name} to {dtype}"
            f"{hint}"
        )


def validate_x(x):
    """Return ``x`` as an ndarray of shape (n_ex, n_in, n_t) in a compute dtype."""
    x = as_array("x", x)

    if x.ndim != 3:
        raise InvalidArgumentError(
            f"x must have 3 dimensions (n_ex, n_in, n_t) but has shape {x.shape}; "
            f"convert time-major data with bilstm.from_time_major and batch-first "
            f"data with bilstm.from_batch_first"
        )

    check_compute_dtype("x", x)
    return x


def validate_params(params, n_in, dtype):
    """Validate a parameter dict against the input and return ``H``.

    Parameters
    ----------
    params : Mapping
        Must hold exactly the keys of :data:`~bilstm.params.PARAM_NAMES`.
    n_in : int
        Feature size of ``x``.
    dtype : numpy dtype
        The dtype of ``x``, which every parameter must share.

    Returns
    -------
    hidden_size : int
    arrays : dict of str to ndarray
    """
    if not isinstance(params, Mapping):
        raise InvalidArgumentError(
            f"params must be a mapping from parameter name to array, got "
            f"{type(params).__name__}; build one with bilstm.init_params or a converter"
        )

    missing = [name for name in PARAM_NAMES if name not in params]
    extra = sorted(str(name) for name in params if name not in PARAM_NAMES)
    if missing or extra:
        found = []
        if missing:
            found.append(f"missing keys {missing}")
        if extra:
            found.append(f"unexpected keys {extra}")
        raise InvalidArgumentError(
            f"params has {' and '.join(found)}, but it must contain exactly the keys "
            f"{list(PARAM_NAMES)}; add the missing keys and remove the unexpected "
            f"ones, or build the dict with bilstm.init_params(n_in, H)"
        )

    arrays = {name: as_array(f"params[{name!r}]", params[name]) for name in PARAM_NAMES}
    hidden_size = _hidden_size_from(arrays["W_hh_fwd"])

    expected = param_shapes(n_in, hidden_size)
    for name in PARAM_NAMES:
        _check_param(name, arrays[name], expected[name], dtype, n_in, hidden_size)
    return hidden_size, arrays


def _hidden_size_from(w_hh):
    """Read ``H`` from the forward recurrent weights, which must be (H, 4H)."""
    if w_hh.ndim != 2 or w_hh.shape[1] != 4 * w_hh.shape[0] or w_hh.shape[0] == 0:
        raise InvalidArgumentError(
            f"params['W_hh_fwd'] must have shape (H, 4H) with H >= 1 but has shape "
            f"{w_hh.shape}, because the four gates i, f, g, o sit side by side on "
            f"the last axis; build the parameters with bilstm.init_params(n_in, H)"
        )
    return w_hh.shape[0]


def _check_param(name, array, shape, dtype, n_in, hidden_size):
    """Check one parameter's shape, dtype and finiteness."""
    if array.shape != shape:
        raise InvalidArgumentError(
            f"params[{name!r}] has shape {array.shape} but must have shape {shape} "
            f"for n_in={n_in} (from x) and H={hidden_size} (from params['W_hh_fwd']); "
            f"pass parameters built for these sizes, as bilstm.init_params(n_in, H) "
            f"builds them, or x with matching n_in"
        )

    check_compute_dtype(f"params[{name!r}]", array)
    check_same_dtype(
        f"params[{name!r}]", array, dtype,
        hint=" (bilstm.cast_params converts a whole parameter dict)",
    )
    check_finite(
        f"params[{name!r}]", array,
        fix="every parameter must be finite, so replace the parameters",
    )


def check_finite(name, array, valid=None, fix=None):
    """Raise at the first non-finite entry of ``array`` where ``valid`` holds.

    ``valid`` is a boolean array broadcastable to ``array``; ``None`` means
    every entry counts.  ``fix`` ends the message.  The default suits input
    data, whose padded steps may hold anything.
    """
    if fix is None:
        fix = "clean the data or mark the step as padding with lengths"

    bad = ~np.isfinite(array)
    if valid is not None:
        bad &= valid

    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidArgumentError(
            f"{name} has the non-finite value {array[index]} at index {index}, but "
            f"NaN and inf are rejected at valid positions; {fix}"
        )


def validate_lengths(lengths, n_ex, n_t):
    """Return ``lengths`` as an int64 array of shape (n_ex,), or ``None``."""
    if lengths is None:
        return None

    lengths = as_array("lengths", lengths)
    if lengths.shape != (n_ex,):
        raise InvalidArgumentError(
            f"lengths must have shape (n_ex,) = ({n_ex},) but has shape {lengths.shape}; "
            f"give one length per example"
        )

    if lengths.dtype.kind not in "iu":
        raise InvalidDtypeError(
            f"lengths has dtype {lengths.dtype} but must have an integer dtype; "
            f"convert it with lengths.astype(np.int64)"
        )

    out_of_range = (lengths < 0) | (lengths > n_t)
    if out_of_range.any():
        n = int(np.argmax(out_of_range))
        raise InvalidArgumentError(
            f"lengths[{n}] = {int(lengths[n])} is outside [0, n_t] = [0, {n_t}], "
            f"because each length counts the valid steps at the start of its "
            f"example; pass values from 0 to {n_t}"
        )
    return lengths.astype(np.int64)


def validate_state(name, value, shape, dtype):
    """Return an optional state array of ``shape``, zeros when ``value`` is None."""
    if value is None:
        return np.zeros(shape, dtype=dtype)

    array = as_array(name, value)
    if array.shape != shape:
        raise InvalidArgumentError(
            f"{name} has shape {array.shape} but must have shape {shape}, that is "
            f"(2, n_ex, H) with the forward direction at index 0; stack the two "
            f"directions' states, for example np.stack([{name}_fwd, {name}_bwd])"
        )

    check_compute_dtype(name, array)
    check_same_dtype(name, array, dtype)
    check_finite(name, array, fix=f"pass finite initial states or {name}=None for zeros")
    return array


def validate_upstream(name, value, shape, dtype, valid=None):
    """Return an upstream gradient of ``shape``; ``None`` means zeros.

    Non-finite values are rejected only where ``valid`` holds, because the
    gradient at padded steps is ignored.
    """
    if value is None:
        return np.zeros(shape, dtype=dtype)

    array = as_array(name, value)
    if array.shape != shape:
        raise InvalidArgumentError(
            f"{name} has shape {array.shape} but must have shape {shape}, the shape "
            f"of the forward output it is the gradient of; pass a gradient of that "
            f"shape, from the same forward result"
        )

    check_compute_dtype(name, array)
    check_same_dtype(name, array, dtype, source="the forward result")
    fix = "pass a finite gradient"
    if valid is not None:
        fix += " (entries at padded steps are ignored and may hold anything)"
    check_finite(name, array, valid, fix=fix)
    return array
