"""Parameters of the reference BiLSTM: names, shapes, initialisation.

Each direction has three tensors; the gate order along their last axis is
i, f, g, o (input gate, forget gate, cell candidate, output gate), the order
PyTorch uses.

============  =============  ============================================
name          shape          role
============  =============  ============================================
W_ih_fwd      (n_in, 4H)     input weights of the forward direction
W_hh_fwd      (H, 4H)        recurrent weights of the forward direction
b_fwd         (4H,)          bias of the forward direction
W_ih_bwd      (n_in, 4H)     input weights of the backward direction
W_hh_bwd      (H, 4H)        recurrent weights of the backward direction
b_bwd         (4H,)          bias of the backward direction
============  =============  ============================================
"""

import numpy as np

GATES = ("i", "f", "g", "o")
"""Gate order along the last axis of every weight and bias."""

DIRECTIONS = ("fwd", "bwd")
"""Direction suffixes; index 0 of every state array is the forward one."""

PARAM_NAMES = (
    "W_ih_fwd", "W_hh_fwd", "b_fwd",
    "W_ih_bwd", "W_hh_bwd", "b_bwd",
)
"""Keys of a parameter dict, forward direction first."""


def param_shapes(n_in, hidden_size):
    """Return the expected shape of every parameter.

    Parameters
    ----------
    n_in : int
        Number of input features.
    hidden_size : int
        Hidden units per direction, ``H``.

    Returns
    -------
    dict of str to tuple of int
        One entry per name in :data:`PARAM_NAMES`.
    """
    gates = 4 * hidden_size
    shapes = {}
    for direction in DIRECTIONS:
        shapes[f"W_ih_{direction}"] = (n_in, gates)
        shapes[f"W_hh_{direction}"] = (hidden_size, gates)
        shapes[f"b_{direction}"] = (gates,)
    return shapes


def init_params(n_in, hidden_size, *, rng=None, scale=None, dtype=np.float64):
    """Draw parameters uniformly from ``[-scale, scale]``.

    Parameters
    ----------
    n_in, hidden_size : int
        Input features and hidden units per direction.
    rng : numpy.random.Generator or int or None
        Random source, or a seed for one. No global random state is touched.
    scale : float or None
        Half-width of the uniform range; ``None`` means ``1 / sqrt(H)``,
        PyTorch's default initialisation.
    dtype : numpy dtype
        ``float32`` or ``float64``.

    Returns
    -------
    dict of str to ndarray
        Independent draws for every name in :data:`PARAM_NAMES`, so the two
        directions always differ.
    """
    rng = np.random.default_rng(rng)
    if scale is None:
        scale = 1.0 / np.sqrt(hidden_size)

    return {
        name: rng.uniform(-scale, scale, size=shape).astype(dtype)
        for name, shape in param_shapes(n_in, hidden_size).items()
    }


def cast_params(params, dtype):
    """Return a copy of ``params`` with every array converted to ``dtype``."""
    return {name: np.asarray(value).astype(dtype) for name, value in params.items()}


def swap_directions(params):
    """Return ``params`` with the forward and backward tensors exchanged."""
    swapped = {}
    for name, value in params.items():
        stem, direction = name.rsplit("_", 1)
        other = "bwd" if direction == "fwd" else "fwd"
        swapped[f"{stem}_{other}"] = value
    return swapped


def hidden_size_of(params):
    """Return ``H`` as implied by the forward recurrent weights."""
    return np.shape(params["W_hh_fwd"])[0]


def input_size_of(params):
    """Return ``n_in`` as implied by the forward input weights."""
    return np.shape(params["W_ih_fwd"])[0]
