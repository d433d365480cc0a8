"""Properties of the forward pass: structure, symmetry, padding, bounds, closed forms."""

import numpy as np

from bilstm.params import swap_directions
from properties.catalog import (
    elementwise_modes, halves, register, reverse_valid, run_forward,
)
from properties.compare import check_close, describe_output_index, describe_state_index
from properties.errors import PropertyFailure


def _describe_y(case, merge_mode="case"):
    mode = case.merge_mode if merge_mode == "case" else merge_mode
    return lambda index: describe_output_index(index, mode, case.sizes.hidden)


def _describe_half(direction):
    return lambda index: f"{direction} half, example {index[0]}, unit {index[1]}, time step {index[2]}"


def _swap_state(state):
    return None if state is None else state[::-1].copy()


@register("direction_symmetry")
def direction_symmetry(subject, case, rng):
    """Reversing time and swapping the directions' weights reverses and swaps the output.

    With ``x'`` the input with each example's valid steps reversed and
    ``params'`` the parameters with forward and backward tensors exchanged
    (initial states exchanged too), the forward half of ``f(x', params')`` is
    the time-reversed backward half of ``f(x, params)`` and vice versa.  For
    the element-wise merge modes the whole output is time-reversed.
    """
    _, out = run_forward(subject, case)
    x_rev = reverse_valid(case.x, case.lengths)
    _, out_rev = run_forward(
        subject, case, params=swap_directions(case.params), x=x_rev,
        h0=_swap_state(case.h0), c0=_swap_state(case.c0),
    )

    expected = reverse_valid(out.y, case.lengths)
    if case.merge_mode == "concat":
        hidden = case.sizes.hidden
        expected = np.concatenate([expected[:, hidden:], expected[:, :hidden]], axis=1)
    elif case.merge_mode is None:
        expected = expected[::-1]

    check_close(
        "y of the time-reversed input with swapped directions", out_rev.y, expected,
        dtype=case.dtype, check="reordered", describe=_describe_y(case),
        call="forward(reverse(x), swap_directions(params))",
    )


@register("direction_decomposition", needs_concat=True)
def direction_decomposition(subject, case, rng):
    """Each half of a concat output is a single-direction LSTM run.

    The forward half does not change when the backward direction's weights
    are redrawn; the backward half equals the time-reversed forward half of
    a run over the reversed input with the backward weights put in the
    forward direction.
    """
    y_fwd, y_bwd = halves(subject, case)

    redrawn = dict(case.params)
    for name in ("W_ih_bwd", "W_hh_bwd", "b_bwd"):
        redrawn[name] = rng.uniform(-1, 1, size=case.params[name].shape).astype(case.dtype)
    y_fwd_redrawn, _ = halves(subject, case, params=redrawn)
    check_close(
        "forward half after redrawing the backward weights", y_fwd_redrawn, y_fwd,
        dtype=case.dtype, check="reordered", describe=_describe_half("forward"),
        call="forward(x, params with new *_bwd tensors)",
    )

    moved = dict(case.params)
    for stem in ("W_ih", "W_hh", "b"):
        moved[f"{stem}_fwd"] = case.params[f"{stem}_bwd"]
    x_rev = reverse_valid(case.x, case.lengths)
    y_single, _ = halves(subject, case, params=moved, x=x_rev, h0=_swap_state(case.h0),
                         c0=_swap_state(case.c0))
    check_close(
        "backward half vs a forward run over the reversed input", reverse_valid(y_single, case.lengths),
        y_bwd, dtype=case.dtype, check="reordered", describe=_describe_half("backward"),
        call="reverse(forward half of forward(reverse(x), bwd weights as fwd))",
    )


def _merged(y_fwd, y_bwd, merge_mode):
    if merge_mode == "sum":
        return y_fwd + y_bwd
    if merge_mode == "average":
        return (y_fwd + y_bwd) / 2
    if merge_mode == "multiply":
        return y_fwd * y_bwd
    return np.stack([y_fwd, y_bwd])


@register("merge_forward_consistency", needs_concat=True, min_hidden=2)
def merge_forward_consistency(subject, case, rng):
    """Each merge mode combines the two halves of the concat output as documented.

    sum = forward + backward, average = their mean, multiply = their
    product, None = both stacked; every supported mode is checked on each
    example.  For concat itself the forward half comes first with no
    interleaving: redrawing one direction's weights changes only its own
    half.
    """
    y_fwd, y_bwd = halves(subject, case)
    for mode in elementwise_modes(subject, case):
        _, out = run_forward(subject, case, merge_mode=mode)
        check_close(
            f"y with merge_mode={mode!r} vs the halves of concat", out.y,
            _merged(y_fwd, y_bwd, mode), dtype=case.dtype, check="reordered",
            describe=_describe_y(case, mode), call=f"forward(x) with merge_mode={mode!r}",
        )

    for direction, other in (("fwd", "bwd"), ("bwd", "fwd")):
        redrawn = dict(case.params)
        for stem in ("W_ih", "W_hh", "b"):
            name = f"{stem}_{other}"
            redrawn[name] = rng.uniform(-1, 1, size=case.params[name].shape).astype(case.dtype)
        kept = halves(subject, case, params=redrawn)[0 if direction == "fwd" else 1]

        half = "forward" if direction == "fwd" else "backward"
        check_close(
            f"{half} half of concat after redrawing the {other} weights", kept,
            y_fwd if direction == "fwd" else y_bwd, dtype=case.dtype, check="reordered",
            describe=_describe_half(half), call=f"forward(x, params with new *_{other} tensors)",
        )


@register("causality", needs_concat=True, min_n_t=2)
def causality(subject, case, rng):
    """The forward half at step t depends only on steps up to t, the backward half only on steps from t on.

    Changing the input at steps after ``t`` leaves the forward half at steps
    ``<= t`` unchanged; changing it at steps before ``t`` leaves the
    backward half at steps ``>= t`` unchanged.
    """
    n_t = case.sizes.n_t
    t = int(rng.integers(0, n_t))
    y_fwd, y_bwd = halves(subject, case)

    x_late = case.x.copy()
    x_late[..., t + 1:] += rng.uniform(-1, 1, size=x_late[..., t + 1:].shape).astype(case.dtype)
    late_fwd, _ = halves(subject, case, x=x_late)
    check_close(
        f"forward half at steps <= {t} after changing steps > {t}", late_fwd[..., :t + 1],
        y_fwd[..., :t + 1], dtype=case.dtype, check="reordered",
        describe=_describe_half("forward"), call=f"forward(x with x[..., {t + 1}:] changed)",
    )

    x_early = case.x.copy()
    x_early[..., :t] += rng.uniform(-1, 1, size=x_early[..., :t].shape).astype(case.dtype)
    _, early_bwd = halves(subject, case, x=x_early)
    check_close(
        f"backward half at steps >= {t} after changing steps < {t}", early_bwd[..., t:],
        y_bwd[..., t:], dtype=case.dtype, check="reordered",
        describe=lambda i: _describe_half("backward")((i[0], i[1], i[2] + t)),
        call=f"forward(x with x[..., :{t}] changed)",
    )


def _outputs_of(out):
    arrays = {"y": out.y}
    if out.h_n is not None:
        arrays.update(h_n=out.h_n, c_n=out.c_n)
    return arrays


@register("batch_independence", min_n_ex=2)
def batch_independence(subject, case, rng):
    """Each example's output is the same whether it runs alone or in a batch.

    Example ``n`` run as a batch of one gives row ``n`` of the batched
    output and final states.
    """
    _, out = run_forward(subject, case)
    n = int(rng.integers(0, case.sizes.n_ex))
    one = slice(n, n + 1)

    def state(a):
        return None if a is None else a[:, one]

    _, out_one = run_forward(
        subject, case, x=case.x[one],
        lengths=None if case.lengths is None else case.lengths[one],
        h0=state(case.h0), c0=state(case.c0),
    )
    for name, array in _outputs_of(out_one).items():
        batched = out.y[..., one, :, :] if name == "y" else getattr(out, name)[:, one]
        check_close(
            f"{name} of example {n} run alone vs in the batch", array, batched,
            dtype=case.dtype, check="reordered", call=f"forward(x[{n}:{n + 1}])",
        )


@register("permutation_equivariance", min_n_ex=2)
def permutation_equivariance(subject, case, rng):
    """Permuting the examples of a batch permutes the outputs the same way."""
    _, out = run_forward(subject, case)
    perm = rng.permutation(case.sizes.n_ex)

    def permuted(a):
        return None if a is None else a[:, perm]

    _, out_perm = run_forward(
        subject, case, x=case.x[perm],
        lengths=None if case.lengths is None else case.lengths[perm],
        h0=permuted(case.h0), c0=permuted(case.c0),
    )
    for name, array in _outputs_of(out_perm).items():
        expected = out.y[..., perm, :, :] if name == "y" else getattr(out, name)[:, perm]
        check_close(
            f"{name} of the permuted batch", array, expected, dtype=case.dtype,
            check="reordered", call=f"forward(x[{perm.tolist()}])",
        )


def _padded_mask(case):
    steps = np.arange(case.sizes.n_t)
    return steps[None, :] >= case.lengths[:, None]


@register("padding_invariance", requires=("lengths",), with_lengths="always")
def padding_invariance(subject, case, rng):
    """Padding values change nothing, padded outputs are 0, and final states sit at the ends.

    Refilling the padded steps with other values (random, NaN) leaves the
    output and final states unchanged; the output at padded steps is 0; the
    valid part of each example equals a run of that example truncated to
    its length; the forward final state is the state after the last valid
    step and the backward one the state after step 0.
    """
    _, out = run_forward(subject, case)
    # (n_ex, 1, n_t) broadcasts against (n_ex, D, n_t) and (2, n_ex, H, n_t) alike.
    padded = _padded_mask(case)[:, None, :]
    y_padded = np.where(padded, out.y, 0)
    check_close("y at padded steps", y_padded, np.zeros_like(y_padded), dtype=case.dtype,
                check="exact", describe=_describe_y(case), call="forward(x, lengths)")

    mask = np.broadcast_to(padded, case.x.shape)
    for filler in ("random", "nan"):
        x_other = case.x.copy()
        x_other[mask] = rng.uniform(-5, 5, size=int(mask.sum())) if filler == "random" else np.nan
        _, out_other = run_forward(subject, case, x=x_other)
        for name, array in _outputs_of(out_other).items():
            check_close(
                f"{name} with {filler} values at padded steps", array, getattr(out, name),
                dtype=case.dtype, check="exact", call=f"forward(x with {filler} padding, lengths)",
            )

    _check_truncated_runs(subject, case, out)


def _check_truncated_runs(subject, case, out):
    """Compare each example with a run of that example cut to its length."""
    for n, length in enumerate(case.lengths):
        if length == 0:
            continue
        one = slice(n, n + 1)

        def state(a):
            return None if a is None else a[:, one]

        _, out_cut = run_forward(subject, case, x=case.x[one, :, :length], lengths=None,
                                 h0=state(case.h0), c0=state(case.c0))
        valid_y = out.y[..., one, :, :length]
        check_close(
            f"valid steps of example {n} vs a run truncated to its length {length}",
            out_cut.y, valid_y, dtype=case.dtype, check="reordered",
            call=f"forward(x[{n}:{n + 1}, :, :{length}])",
        )
        if out.h_n is not None:
            for name in ("h_n", "c_n"):
                check_close(
                    f"{name} of example {n} vs the truncated run's", getattr(out_cut, name),
                    getattr(out, name)[:, one], dtype=case.dtype, check="reordered",
                    describe=describe_state_index, call=f"forward(x[{n}:{n + 1}, :, :{length}])",
                )


@register("final_state_positions", requires=("final_state",), needs_concat=True)
def final_state_positions(subject, case, rng):
    """The final hidden states are the forward half at the last valid step and the backward half at step 0.

    For an example of length L >= 1, ``h_n[0]`` equals the forward half of
    the concat output at step L - 1 and ``h_n[1]`` the backward half at step
    0; for L = 0 both equal the initial states.
    """
    y_fwd, y_bwd = halves(subject, case)
    _, out = run_forward(subject, case, merge_mode="concat")
    lengths = case.lengths if case.lengths is not None else np.full(case.sizes.n_ex, case.sizes.n_t)
    h0 = case.h0 if case.h0 is not None else np.zeros_like(out.h_n)

    last = np.clip(lengths - 1, 0, None)
    rows = np.arange(case.sizes.n_ex)
    empty = (lengths == 0)[:, None]
    expected = np.stack([
        np.where(empty, h0[0], y_fwd[rows, :, last]),
        np.where(empty, h0[1], y_bwd[:, :, 0]),
    ])
    check_close("h_n vs the output halves at the ends of each sequence", out.h_n, expected,
                dtype=case.dtype, check="exact", describe=describe_state_index,
                call="forward(x) with merge_mode='concat'")


@register("large_preactivations", weight_scales=("typical", "saturating"))
def large_preactivations(subject, case, rng):
    """Large finite inputs give finite outputs and gradients, with hidden states in [-1, 1].

    The input is scaled by 1e3, so gate pre-activations reach thousands; a
    sigmoid or tanh written as exp(z) / (1 + exp(z)) overflows there and
    returns NaN, which a stable formulation never does.
    """
    x_large = (case.x * 1e3).astype(case.dtype)
    model, out = run_forward(subject, case, x=x_large)
    for name, array in _outputs_of(out).items():
        _check_finite_array(f"{name} for input scaled by 1e3", array)

    if "concat" in subject.capabilities.merge_modes:
        for name, half in zip(("forward half", "backward half"), halves(subject, case, x=x_large)):
            outside = ~(np.abs(half) <= 1)
            if outside.any():
                index = tuple(int(i) for i in np.argwhere(outside)[0])
                raise PropertyFailure(f"{name} for input scaled by 1e3 has {half[index]!r} at "
                                      f"index {index}, outside [-1, 1]\n  call: forward(1e3 * x)")

    if subject.capabilities.backward:
        grads = model.backward(case.dy)
        arrays = {"dx": grads.dx, **{f"d{k}": v for k, v in (grads.dparams or {}).items()}}
        for name, array in arrays.items():
            _check_finite_array(f"{name} for input scaled by 1e3", np.asarray(array))


def _check_finite_array(quantity, array):
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise PropertyFailure(f"{quantity}: non-finite value {array[index]!r} at index {index}\n"
                              f"  call: forward(1e3 * x)")


@register("hidden_state_bounds", needs_concat=True, weight_scales=("typical", "saturating"))
def hidden_state_bounds(subject, case, rng):
    """Every hidden state lies in [-1, 1].

    h = o * tanh(c) with o in (0, 1), so |h| < 1 in exact arithmetic; in
    floating point a saturated gate rounds to exactly 1, so the check
    allows |h| = 1 and rejects anything larger or non-finite.
    """
    y_fwd, y_bwd = halves(subject, case)
    _, out = run_forward(subject, case, merge_mode="concat")

    arrays = {"forward half": y_fwd, "backward half": y_bwd}
    if out.h_n is not None:
        arrays["h_n"] = out.h_n
    for name, array in arrays.items():
        outside = ~(np.abs(array) <= 1)
        if outside.any():
            index = tuple(int(i) for i in np.argwhere(outside)[0])
            raise PropertyFailure(
                f"{name} has {array[index]!r} at index {index}, outside [-1, 1]\n"
                f"  call: forward(x) with merge_mode='concat'"
            )


@register("zero_weights")
def zero_weights(subject, case, rng):
    """Zero weights and biases with zero initial states give exactly zero output.

    Every gate is then 1/2 and the candidate 0, so every cell state and
    hidden state stays exactly 0.
    """
    zeros = {name: np.zeros_like(value) for name, value in case.params.items()}
    _, out = run_forward(subject, case, params=zeros, h0=None, c0=None)
    for name, array in _outputs_of(out).items():
        check_close(f"{name} with zero weights", array, np.zeros_like(array),
                    dtype=case.dtype, check="exact", call="forward(x, zero params)")


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def cell_step(x_t, h_prev, c_prev, w_ih, w_hh, b):
    """One LSTM step, written out independently of the reference's loop.

    Shapes: ``x_t`` (n_ex, n_in), ``h_prev``/``c_prev`` (n_ex, H), weights
    as in :mod:`bilstm.params`.  Returns ``(h, c)``.
    """
    hidden = h_prev.shape[-1]
    z = x_t @ w_ih + h_prev @ w_hh + b
    i = _sigmoid(z[:, :hidden])
    f = _sigmoid(z[:, hidden:2 * hidden])
    g = np.tanh(z[:, 2 * hidden:3 * hidden])
    o = _sigmoid(z[:, 3 * hidden:])
    c = f * c_prev + i * g
    return o * np.tanh(c), c


@register("single_step", needs_concat=True, max_n_t=1)
def single_step(subject, case, rng):
    """With n_t = 1 each half is one LSTM cell step from that direction's initial state."""
    y_fwd, y_bwd = halves(subject, case)
    hidden, n_ex = case.sizes.hidden, case.sizes.n_ex
    zeros = np.zeros((2, n_ex, hidden), dtype=case.dtype)
    h0 = zeros if case.h0 is None else case.h0
    c0 = zeros if case.c0 is None else case.c0

    for k, (direction, actual) in enumerate((("fwd", y_fwd), ("bwd", y_bwd))):
        p = case.params
        h, _ = cell_step(case.x[:, :, 0], h0[k], c0[k], p[f"W_ih_{direction}"],
                         p[f"W_hh_{direction}"], p[f"b_{direction}"])
        if case.lengths is not None:
            h = np.where(case.lengths[:, None] > 0, h, 0)
        half = "forward" if k == 0 else "backward"
        check_close(
            f"{half} half at n_t = 1 vs one cell step", actual[:, :, 0], h,
            dtype=case.dtype, check="differential",
            describe=lambda i, half=half: f"{half} half, example {i[0]}, unit {i[1]}",
            call="forward(x) with n_t = 1",
        )
