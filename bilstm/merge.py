"""Merge modes: how the forward and backward halves become one output.

All functions here work on time-major arrays whose last axis is the hidden
unit axis, so the same code serves the forward pass and its vector-Jacobian
product (vjp).
"""

import numpy as np

from bilstm.errors import InvalidArgumentError

MERGE_MODES = ("concat", "sum", "average", "multiply", None)
"""Canonical merge modes, in the order the documentation lists them."""

MERGE_MODE_ALIASES = {"ave": "average", "mul": "multiply"}
"""Keras spellings accepted as aliases of the canonical names."""


def canonical_merge_mode(merge_mode):
    """Validate ``merge_mode`` and return its canonical name.

    Parameters
    ----------
    merge_mode : str or None
        One of :data:`MERGE_MODES` or a key of :data:`MERGE_MODE_ALIASES`.

    Returns
    -------
    str or None
        The canonical name, for example ``"average"`` for ``"ave"``.

    Raises
    ------
    InvalidArgumentError
        For any other value, before any work is done.
    """
    if merge_mode is None:
        return None

    if isinstance(merge_mode, str):
        if merge_mode in MERGE_MODES:
            return merge_mode
        if merge_mode in MERGE_MODE_ALIASES:
            return MERGE_MODE_ALIASES[merge_mode]

    valid = ", ".join(repr(mode) for mode in MERGE_MODES)
    aliases = ", ".join(f"{k!r} for {v!r}" for k, v in MERGE_MODE_ALIASES.items())
    raise InvalidArgumentError(
        f"merge_mode={merge_mode!r} is not a valid merge mode; "
        f"use one of {valid} (Keras spellings accepted: {aliases})"
    )


def output_width(merge_mode, hidden_size):
    """Return the size of the output's feature axis for one merge mode.

    ``None`` keeps the directions on a separate leading axis, so its feature
    axis is ``hidden_size`` wide, like the element-wise modes.
    """
    return 2 * hidden_size if merge_mode == "concat" else hidden_size


def merge(h_fwd, h_bwd, merge_mode, out=None):
    """Merge the two directions' hidden states.

    Parameters
    ----------
    h_fwd, h_bwd : ndarray, shape (..., H)
        Hidden states of the forward and backward direction.
    merge_mode : str or None
        A canonical merge mode.
    out : ndarray, optional
        Array of the result's shape to write into, for example a transposed
        view of the caller's output, which saves a copy.

    Returns
    -------
    ndarray
        Shape (..., 2H) for ``"concat"`` (forward half first), (2, ..., H)
        for ``None``, and (..., H) for the element-wise modes; ``out`` if
        given.
    """
    if out is None:
        width = output_width(merge_mode, h_fwd.shape[-1])
        shape = (2, *h_fwd.shape) if merge_mode is None else (*h_fwd.shape[:-1], width)
        out = np.empty(shape, dtype=np.result_type(h_fwd, h_bwd))

    if merge_mode == "concat":
        hidden_size = h_fwd.shape[-1]
        out[..., :hidden_size] = h_fwd
        out[..., hidden_size:] = h_bwd
    elif merge_mode == "sum":
        np.add(h_fwd, h_bwd, out=out)
    elif merge_mode == "average":
        np.add(h_fwd, h_bwd, out=out)
        out *= 0.5
    elif merge_mode == "multiply":
        np.multiply(h_fwd, h_bwd, out=out)
    else:
        out[0] = h_fwd
        out[1] = h_bwd
    return out


def merge_vjp(dy, h_fwd, h_bwd, merge_mode):
    """Split the upstream gradient of a merged output into the two halves.

    Parameters
    ----------
    dy : ndarray
        Gradient of the loss with respect to :func:`merge`'s output.
    h_fwd, h_bwd : ndarray, shape (..., H)
        The hidden states that were merged; only ``"multiply"`` needs them.
    merge_mode : str or None
        A canonical merge mode.

    Returns
    -------
    dh_fwd, dh_bwd : ndarray, shape (..., H)
        Gradients with respect to ``h_fwd`` and ``h_bwd``.
    """
    hidden_size = h_fwd.shape[-1]

    if merge_mode == "concat":
        return dy[..., :hidden_size], dy[..., hidden_size:]
    if merge_mode == "sum":
        return dy, dy
    if merge_mode == "average":
        half = dy * 0.5
        return half, half
    if merge_mode == "multiply":
        return dy * h_bwd, dy * h_fwd
    return dy[0], dy[1]
