r"""A full gradient check of the reference in one vectorized complex-step pass.

:func:`full_complex_step_check` differentiates the loss
:math:`L = \sum dy \cdot y + \sum dh_n \cdot h_n + \sum dc_n \cdot c_n` with
respect to every entry of ``x``, the six parameters, ``h0`` and ``c0`` by the
complex step :math:`\partial L / \partial p_k = \operatorname{Im} L(p + i h e_k) / h`
with :math:`h = 10^{-30}`, which has no subtractive cancellation, so the
result is exact to a few eps.  All perturbations are evaluated together: a
perturbation axis of size ``P`` leads every tensor, and one recurrent loop
runs all ``P`` BiLSTMs with batched matrix products.

The batched loop here is a second, compact forward pass (full-length
sequences, merge mode concat).  Its unperturbed output is compared with
:func:`bilstm.forward` on every call, so a difference between the two
forward passes fails the check instead of passing unseen.
"""

from dataclasses import dataclass

import numpy as np

import bilstm
from bilstm.params import DIRECTIONS, PARAM_NAMES

STEP = 1e-30
"""Imaginary step; any value far below sqrt(eps) works, since nothing is subtracted."""


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def batched_forward(x, params, h0, c0):
    """Run ``P`` concat-mode BiLSTMs at once on full-length sequences.

    Parameters
    ----------
    x : ndarray, shape (P, n_ex, n_in, n_t)
    params : dict of str to ndarray
        Each parameter with a leading axis of size P.
    h0, c0 : ndarray, shape (P, 2, n_ex, H)

    Returns
    -------
    y : ndarray, shape (P, n_ex, 2H, n_t)
    h_n, c_n : ndarray, shape (P, 2, n_ex, H)
    """
    n_t = x.shape[-1]
    hidden = h0.shape[-1]
    w_ih = np.stack([params[f"W_ih_{d}"] for d in DIRECTIONS], axis=1)   # (P, 2, n_in, 4H)
    w_hh = np.stack([params[f"W_hh_{d}"] for d in DIRECTIONS], axis=1)   # (P, 2, H, 4H)
    b = np.stack([params[f"b_{d}"] for d in DIRECTIONS], axis=1)         # (P, 2, 4H)

    # Time-major per direction, the backward direction reversed: (P, 2, n_t, n_ex, n_in).
    x_tm = np.moveaxis(x, -1, 1)
    x_run = np.stack([x_tm, x_tm[:, ::-1]], axis=1)
    projections = np.matmul(x_run, w_ih[:, :, None]) + b[:, :, None, None, :]

    h, c = h0, c0
    outputs = []
    for s in range(n_t):
        z = projections[:, :, s] + np.matmul(h, w_hh)
        i, f = _sigmoid(z[..., :hidden]), _sigmoid(z[..., hidden:2 * hidden])
        g, o = np.tanh(z[..., 2 * hidden:3 * hidden]), _sigmoid(z[..., 3 * hidden:])
        c = f * c + i * g
        h = o * np.tanh(c)
        outputs.append(h)

    run = np.stack(outputs, axis=2)                                       # (P, 2, n_t, n_ex, H)
    y_fwd = np.moveaxis(run[:, 0], 1, -1)                                  # (P, n_ex, H, n_t)
    y_bwd = np.moveaxis(run[:, 1, ::-1], 1, -1)
    return np.concatenate([y_fwd, y_bwd], axis=-2), h, c


@dataclass(frozen=True)
class FullCheck:
    """Result of :func:`full_complex_step_check`.

    Attributes
    ----------
    max_rel_error : dict of str to float
        Per tensor: max |analytic - numeric| / max(max |numeric|, tiny).
    n_entries : int
        Entries differentiated, over all tensors.
    forward_gap : float
        Max |y| difference between the batched forward and :func:`bilstm.forward`.
    """

    max_rel_error: dict
    n_entries: int
    forward_gap: float

    def worst(self):
        """Return the largest relative error over all tensors."""
        return max(self.max_rel_error.values())


def _point(x, params, h0, c0):
    return {"x": x, **params, "h0": h0, "c0": c0}


def _perturbed_batch(point):
    """Stack one copy of every tensor per entry, entry k perturbed by i * STEP."""
    sizes = {name: value.size for name, value in point.items()}
    total = sum(sizes.values())
    batch = {name: np.repeat(value.astype(np.complex128)[None], total, axis=0)
             for name, value in point.items()}

    k = 0
    for name, value in point.items():
        flat = batch[name].reshape(total, -1)
        rows = np.arange(k, k + value.size)
        flat[rows, np.arange(value.size)] += 1j * STEP
        k += value.size
    return batch, total


def full_complex_step_check(x, params, dy, dh_n, dc_n, *, h0=None, c0=None,
                            backward=bilstm.backward):
    """Compare :func:`bilstm.backward` with complex-step derivatives of every entry.

    Parameters
    ----------
    x : ndarray, shape (n_ex, n_in, n_t), float64
    params : dict of str to ndarray, float64
    dy : ndarray, shape (n_ex, 2H, n_t)
    dh_n, dc_n : ndarray, shape (2, n_ex, H)
    h0, c0 : ndarray, shape (2, n_ex, H), optional
    backward : callable
        The backward function under test, with :func:`bilstm.backward`'s
        signature; a test passes a planted bug here.

    Returns
    -------
    FullCheck
    """
    hidden = params["W_hh_fwd"].shape[0]
    state = (2, x.shape[0], hidden)
    h0 = np.zeros(state) if h0 is None else h0
    c0 = np.zeros(state) if c0 is None else c0

    result = bilstm.forward(x, params, merge_mode="concat", h0=h0, c0=c0)
    grads = backward(result, dy, dh_n=dh_n, dc_n=dc_n)
    analytic = {"x": grads.dx, **grads.dparams, "h0": grads.dh0, "c0": grads.dc0}

    point = _point(x, params, h0, c0)
    batch, total = _perturbed_batch(point)
    y, h_n, c_n = batched_forward(batch["x"], {n: batch[n] for n in PARAM_NAMES},
                                  batch["h0"], batch["c0"])
    loss = ((y * dy).sum(axis=(1, 2, 3)) + (h_n * dh_n).sum(axis=(1, 2, 3))
            + (c_n * dc_n).sum(axis=(1, 2, 3)))
    numeric_flat = loss.imag / STEP

    errors, k = {}, 0
    for name, value in point.items():
        numeric = numeric_flat[k:k + value.size].reshape(value.shape)
        scale = max(float(np.abs(numeric).max(initial=0.0)), np.finfo(np.float64).tiny)
        errors[name] = float(np.abs(analytic[name] - numeric).max(initial=0.0)) / scale
        k += value.size

    forward_gap = float(np.abs(y[0].real - result.y).max())
    return FullCheck(errors, total, forward_gap)
