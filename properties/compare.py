"""The one assertion template of the harness.

A comparison first checks the whole array cheaply and walks to the worst
entry only on failure.  The failure message gives the quantity, where it
failed (direction, time step, example, unit), both values, the error, the
tolerance with its reason, and the call that produced it.
"""

import numpy as np

from properties.errors import PropertyFailure
from properties.tolerances import tolerance


def describe_output_index(index, merge_mode, hidden_size):
    """Describe an index of ``y`` in the reference layout in words."""
    if merge_mode is None:
        direction, n, unit, t = index
        half = "forward" if direction == 0 else "backward"
        return f"{half} half, example {n}, unit {unit}, time step {t}"

    n, unit, t = index
    if merge_mode == "concat":
        half = "forward" if unit < hidden_size else "backward"
        return f"{half} half, example {n}, unit {unit % hidden_size}, time step {t}"
    return f"example {n}, unit {unit}, time step {t}"


def describe_state_index(index):
    """Describe an index of a (2, n_ex, H) state array in words."""
    direction, n, unit = index
    half = "forward" if direction == 0 else "backward"
    return f"{half} direction, example {n}, unit {unit}"


def describe_generic_index(index):
    return f"index {tuple(int(i) for i in index)}"


def check_close(quantity, actual, expected, *, dtype, check, describe=None, call=""):
    """Raise :class:`PropertyFailure` unless ``actual`` matches ``expected``.

    Parameters
    ----------
    quantity : str
        What is compared, e.g. ``"y after a second forward call"``.
    actual, expected : array_like
        Same shape. NaN matches NaN only where both have it.
    dtype : str
        Dtype whose tolerance applies.
    check : str
        Key of :data:`properties.tolerances.CHECKS`.
    describe : callable, optional
        Maps an index tuple to words; default: the plain index.
    call : str
        The call that produced ``actual``, for the message.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        raise PropertyFailure(
            f"{quantity}: shape {actual.shape}, expected {expected.shape}{_call(call)}"
        )

    rtol, reason = tolerance(dtype, check)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0, where=np.isfinite(expected))))
    error = _error(actual, expected)
    if not (error > rtol * scale).any():
        return

    index = np.unravel_index(int(np.argmax(error)), error.shape)
    where = (describe or describe_generic_index)(index)
    raise PropertyFailure(
        f"{quantity}: mismatch at {where}: actual {actual[index]!r}, expected "
        f"{expected[index]!r}, abs error {error[index]:.3g} > tolerance "
        f"{rtol * scale:.3g} ({check}: {reason}){_call(call)}"
    )


def _error(actual, expected):
    """Absolute error with NaN-vs-number counted as infinite and NaN-vs-NaN as 0."""
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(actual.astype(np.complex128) - expected.astype(np.complex128))
    both_nan = np.isnan(actual) & np.isnan(expected)
    error = np.where(np.isnan(error), np.inf, error)
    return np.where(both_nan, 0.0, error)


def _call(call):
    return f"\n  call: {call}" if call else ""
