"""Conversions between the reference layout and the common data layouts.

The reference takes ``x`` as (n_ex, n_in, n_t) and returns ``y`` as
(n_ex, D, n_t).  PyTorch and ONNX default to time-major (n_t, n_ex, D) data;
Keras and ``batch_first=True`` use batch-first (n_ex, n_t, D) data.  Each
helper returns a contiguous copy, so writing to the result never changes the
argument.
"""

import numpy as np

from bilstm.errors import InvalidArgumentError


def _check_3d(name, array):
    array = np.asarray(array)
    if array.ndim != 3:
        raise InvalidArgumentError(
            f"{name} must have 3 dimensions but has shape {array.shape}; "
            f"pass one sequence batch, not a single example or a list of batches"
        )
    return array


def from_time_major(x):
    """Convert (n_t, n_ex, D) to the reference layout (n_ex, D, n_t)."""
    return np.ascontiguousarray(_check_3d("x", x).transpose(1, 2, 0))


def to_time_major(y):
    """Convert the reference layout (n_ex, D, n_t) to (n_t, n_ex, D)."""
    return np.ascontiguousarray(_check_3d("y", y).transpose(2, 0, 1))


def from_batch_first(x):
    """Convert (n_ex, n_t, D) to the reference layout (n_ex, D, n_t)."""
    return np.ascontiguousarray(_check_3d("x", x).transpose(0, 2, 1))


def to_batch_first(y):
    """Convert the reference layout (n_ex, D, n_t) to (n_ex, n_t, D)."""
    return np.ascontiguousarray(_check_3d("y", y).transpose(0, 2, 1))
