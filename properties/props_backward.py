"""Properties of the backward pass that need no finite differences."""

import numpy as np

from bilstm.reference import output_shape
from properties.catalog import elementwise_modes, register, run_backward, run_forward, split_halves, upstream
from properties.compare import check_close
from properties.errors import PropertyFailure


def grads_as_dict(grads):
    """Flatten a :class:`~properties.protocol.Grads` into name -> array, skipping absent ones."""
    arrays = {"dx": grads.dx}
    for name, value in (grads.dparams or {}).items():
        arrays[f"d{name}"] = value
    for name in ("dh0", "dc0"):
        if getattr(grads, name) is not None:
            arrays[name] = getattr(grads, name)
    return arrays


def compare_grads(label, actual, expected, *, dtype, check, call):
    """Compare every gradient present in ``expected``; name the first that differs."""
    actual = grads_as_dict(actual)
    for name, value in grads_as_dict(expected).items():
        if name not in actual:
            raise PropertyFailure(f"{label}: {name} is missing\n  call: {call}")
        check_close(f"{label}: {name}", actual[name], value, dtype=dtype, check=check, call=call)


def _concat_upstream(dy, merge_mode, y_concat, hidden):
    """The concat-mode dy that is equivalent to ``dy`` in ``merge_mode``."""
    y_fwd, y_bwd = split_halves(y_concat, "concat", hidden)
    if merge_mode == "sum":
        return np.concatenate([dy, dy], axis=1)
    if merge_mode == "average":
        return np.concatenate([dy / 2, dy / 2], axis=1)
    if merge_mode == "multiply":
        return np.concatenate([dy * y_bwd, dy * y_fwd], axis=1)
    return np.concatenate([dy[0], dy[1]], axis=1)


@register("merge_backward_consistency", requires=("backward",), needs_concat=True,
          merge_modes=("sum", "average", "multiply", None))
def merge_backward_consistency(subject, case, rng):
    """The backward pass of each merge mode is the concat backward pass with the chain rule applied.

    For upstream gradient ``dy`` the gradients under sum equal those under
    concat with ``[dy, dy]``; average with ``[dy/2, dy/2]``; multiply with
    ``[dy * y_bwd, dy * y_fwd]``; None with ``[dy[0], dy[1]]``.  The drawn
    mode uses the case's ``dy``; every other supported mode is checked on
    the same example with a random ``dy``.
    """
    sizes = case.sizes
    for mode in elementwise_modes(subject, case):
        dy = case.dy if mode == case.merge_mode else rng.standard_normal(
            output_shape(sizes.n_ex, sizes.hidden, sizes.n_t, mode)).astype(case.dtype)
        model, _ = run_forward(subject, case, merge_mode=mode)
        grads = run_backward(model, case, subject, dy=dy)

        concat_model, concat_out = run_forward(subject, case, merge_mode="concat")
        dy_concat = _concat_upstream(dy, mode, concat_out.y, sizes.hidden).astype(case.dtype)
        concat_grads = run_backward(concat_model, case, subject, dy=dy_concat)

        compare_grads(
            f"gradients with merge_mode={mode!r} vs concat with the chain rule",
            grads, concat_grads, dtype=case.dtype, check="reordered",
            call=f"backward(dy) with merge_mode={mode!r}",
        )


@register("padding_gradients", requires=("backward", "lengths"), with_lengths="always")
def padding_gradients(subject, case, rng):
    """Upstream gradients at padded steps are ignored, and dx is 0 there.

    Replacing ``dy`` at padded steps by random values or NaN leaves every
    gradient unchanged (compared with ``dy`` zeroed there), and the
    gradient of the input at padded steps is exactly 0.
    """
    padded = np.arange(case.sizes.n_t)[None, :] >= case.lengths[:, None]
    if not padded.any():
        return

    # (n_ex, 1, n_t) broadcasts against every output layout and against x.
    mask = np.broadcast_to(padded[:, None, :], case.dy.shape)
    dy_zero = np.where(mask, 0, case.dy).astype(case.dtype)
    model, _ = run_forward(subject, case)
    reference = run_backward(model, case, subject, dy=dy_zero)

    dx_padded = np.where(padded[:, None, :], reference.dx, 0)
    check_close("dx at padded steps", dx_padded, np.zeros_like(dx_padded), dtype=case.dtype,
                check="exact", call="backward(dy) with lengths")

    for filler in ("random", "nan"):
        dy_other = dy_zero.copy()
        dy_other[mask] = rng.standard_normal(int(mask.sum())) if filler == "random" else np.nan
        fresh, _ = run_forward(subject, case)
        compare_grads(f"gradients with {filler} dy at padded steps", run_backward(fresh, case, subject, dy=dy_other),
                      reference, dtype=case.dtype, check="exact",
                      call=f"backward(dy with {filler} values at padded steps)")


def _scaled_sum(a, grads_a, b, grads_b):
    """Return ``a * grads_a + b * grads_b`` as a flat dict."""
    first, second = grads_as_dict(grads_a), grads_as_dict(grads_b)
    return {name: a * first[name] + b * second[name] for name in first}


@register("backward_linearity", requires=("backward",))
def backward_linearity(subject, case, rng):
    """Backward is linear in the upstream gradient, and a zero upstream gradient gives zero gradients.

    For one forward result, ``backward(a dy1 + b dy2) = a backward(dy1) +
    b backward(dy2)``, and ``backward(0)`` is exactly 0 for every tensor.
    """
    dy2 = rng.standard_normal(case.dy.shape).astype(case.dtype)
    a, b = 0.75, -1.5

    grads = {}
    for label, dy in (("dy1", case.dy), ("dy2", dy2), ("mix", (a * case.dy + b * dy2).astype(case.dtype))):
        model, _ = run_forward(subject, case)
        grads[label] = model.backward(dy)

    expected = _scaled_sum(a, grads["dy1"], b, grads["dy2"])
    actual = grads_as_dict(grads["mix"])
    for name, value in expected.items():
        check_close(f"{name} of backward(a*dy1 + b*dy2) vs a*{name}1 + b*{name}2", actual[name],
                    value, dtype=case.dtype, check="reordered", call="backward(0.75 dy1 - 1.5 dy2)")

    model, _ = run_forward(subject, case)
    zero = grads_as_dict(model.backward(np.zeros_like(case.dy)))
    for name, value in zero.items():
        check_close(f"{name} of backward(0)", value, np.zeros_like(value), dtype=case.dtype,
                    check="exact", call="backward(zeros)")


@register("statelessness", requires=())
def statelessness(subject, case, rng):
    """A model gives identical results however often and in whatever order it is called.

    On one model: forward twice on ``x`` gives identical outputs; forward on
    another input with another batch size in between changes nothing;
    backward twice after one forward gives identical gradients; a second
    forward-backward round gives the same gradients as the first.
    """
    model, first = run_forward(subject, case)
    kwargs = {"lengths": case.lengths, "h0": case.h0, "c0": case.c0}

    second = model.forward(case.x, **kwargs)
    check_close("y of a second forward call on the same model", second.y, first.y,
                dtype=case.dtype, check="exact", call="model.forward(x); model.forward(x)")

    n_other = case.sizes.n_ex + 1
    x_other = rng.uniform(-1, 1, size=(n_other,) + case.x.shape[1:]).astype(case.dtype)
    model.forward(x_other)
    third = model.forward(case.x, **kwargs)
    check_close(f"y after a forward call on a batch of {n_other}", third.y, first.y,
                dtype=case.dtype, check="exact",
                call=f"model.forward(x); model.forward(x_other with n_ex={n_other}); model.forward(x)")

    if not subject.capabilities.backward:
        return

    fresh, _ = run_forward(subject, case)
    once = run_backward(fresh, case, subject)
    twice = run_backward(fresh, case, subject)
    compare_grads("second backward call after one forward", twice, once, dtype=case.dtype,
                  check="exact", call="model.forward(x); model.backward(dy); model.backward(dy)")

    fresh.forward(case.x, **kwargs)
    again = run_backward(fresh, case, subject)
    compare_grads("backward after a second forward on the same model", again, once,
                  dtype=case.dtype, check="exact",
                  call="model.forward(x); model.backward(dy); model.forward(x); model.backward(dy)")


def _arguments(case, subject):
    """Every array the harness hands to the implementation, by name."""
    arrays = {"x": case.x, "dy": case.dy}
    arrays.update({f"params[{name!r}]": value for name, value in case.params.items()})
    dh_n, dc_n = upstream(case, subject)
    for name, value in (("lengths", case.lengths), ("h0", case.h0), ("c0", case.c0),
                        ("dh_n", dh_n), ("dc_n", dc_n)):
        if value is not None:
            arrays[name] = value
    return arrays


@register("no_mutation")
def no_mutation(subject, case, rng):
    """No argument is modified, and a non-contiguous upstream gradient gives the same gradients.

    After build, forward and backward, the input, every parameter, the
    lengths, the initial states and the upstream gradients hold the same
    bits as before.  Backward given ``dy`` as a strided or transposed view
    returns the same gradients as for a contiguous ``dy``.
    """
    before = {name: value.copy() for name, value in _arguments(case, subject).items()}
    model, _ = run_forward(subject, case)
    grads = run_backward(model, case, subject) if subject.capabilities.backward else None

    for name, value in _arguments(case, subject).items():
        if not np.array_equal(value, before[name], equal_nan=True):
            index = tuple(int(i) for i in np.argwhere(value != before[name])[0])
            raise PropertyFailure(
                f"{name} was modified at index {index}: was {before[name][index]!r}, now "
                f"{value[index]!r}\n  call: build(params); forward(x); backward(dy)"
            )

    if grads is None:
        return

    # A doubled, reversed buffer sliced back gives a view with negative strides.
    strided = np.empty(case.dy.shape[::-1], dtype=case.dy.dtype).T
    strided[...] = case.dy
    doubled = np.repeat(case.dy, 2, axis=-1)[..., ::2]
    for label, view in (("transposed", strided), ("strided", doubled)):
        fresh, _ = run_forward(subject, case)
        compare_grads(f"gradients for a {label} view of dy", run_backward(fresh, case, subject, dy=view),
                      grads, dtype=case.dtype, check="reordered", call=f"backward({label} dy)")


def _dtype_mismatches(out, grads, dtype):
    arrays = {"y": out.y, "h_n": out.h_n, "c_n": out.c_n}
    if grads is not None:
        arrays.update(grads_as_dict(grads))
    return [f"{name} is {np.asarray(a).dtype}" for name, a in arrays.items()
            if a is not None and np.asarray(a).dtype != np.dtype(dtype)]


@register("dtype_honoured", dtypes=("float32", "float64"), weight_scales=("typical", "small"))
def dtype_honoured(subject, case, rng):
    """Results come back in the input's dtype, and float64 input is computed in float64.

    Every output and gradient has the dtype of ``x``.  For float64, central
    difference quotients of the output along a random input direction at
    steps 1e-5 and 1e-6 agree to about 1e-10, far inside the half of the
    float64 digits the check requires; an implementation that rounds to
    float32 inside has a rounding error of about 1e-7 / 1e-6 = 0.1 there.
    """
    model, out = run_forward(subject, case)
    grads = run_backward(model, case, subject) if subject.capabilities.backward else None
    wrong = _dtype_mismatches(out, grads, case.dtype)
    if wrong:
        raise PropertyFailure(f"input is {case.dtype} but {'; '.join(wrong)}\n  call: forward(x); backward(dy)")

    if case.dtype == "float64":
        _check_float64_accuracy(subject, case, rng)


def _check_float64_accuracy(subject, case, rng):
    direction = rng.standard_normal(case.x.shape)
    quotients = []
    for step in (1e-5, 1e-6):
        _, plus = run_forward(subject, case, x=case.x + step * direction)
        _, minus = run_forward(subject, case, x=case.x - step * direction)
        quotients.append((plus.y - minus.y) / (2 * step))

    check_close("central difference quotient of y at step 1e-5 vs at step 1e-6", quotients[1],
                quotients[0], dtype="float64", check="accuracy",
                call="(forward(x + h v) - forward(x - h v)) / 2h for h = 1e-5 and 1e-6")
