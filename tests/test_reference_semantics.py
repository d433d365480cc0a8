"""Documented behaviour of the reference BiLSTM other than gradient accuracy.

Each expectation comes from the module docstring of bilstm.reference:
padding, final states, merge modes, dtypes, edge sizes, numerical
stability and complex-step support.  The tests also check that no argument
is mutated, and that the layout helpers round-trip.
"""

import copy
import warnings

import numpy as np
import pytest

import bilstm

N_EX, N_IN, H, N_T = 4, 3, 2, 5
LENGTHS = (5, 0, 1, 3)
"""Lengths of a full, an empty, a one-step and a partly padded example."""

CANONICAL_MODES = ("concat", "sum", "average", "multiply", None)


def draw_inputs(seed, *, n_ex=N_EX, n_in=N_IN, hidden_size=H, n_t=N_T, dtype=np.float64):
    """Return forward's arguments x, params, h0, c0, drawn from ``seed``, in ``dtype``."""
    rng = np.random.default_rng(seed)
    state_shape = (2, n_ex, hidden_size)
    params = bilstm.init_params(n_in, hidden_size, rng=rng, scale=0.8)
    return {
        "x": rng.standard_normal((n_ex, n_in, n_t)).astype(dtype),
        "params": bilstm.cast_params(params, dtype),
        "h0": (0.5 * rng.standard_normal(state_shape)).astype(dtype),
        "c0": rng.standard_normal(state_shape).astype(dtype),
    }


def draw_upstream(seed, result):
    """Return random dy, dh_n and dc_n for ``result``, in its dtype."""
    rng = np.random.default_rng(seed)
    dtype = result.y.dtype
    return {
        "dy": rng.standard_normal(result.y.shape).astype(dtype),
        "dh_n": rng.standard_normal(result.h_n.shape).astype(dtype),
        "dc_n": rng.standard_normal(result.c_n.shape).astype(dtype),
    }


def run_backward(result, upstream):
    return bilstm.backward(result, upstream["dy"], dh_n=upstream["dh_n"], dc_n=upstream["dc_n"])


def padded_mask(lengths, n_t):
    """Return a boolean (n_ex, n_t) array, True at padded steps."""
    return np.arange(n_t)[None, :] >= np.asarray(lengths)[:, None]


def y_padded_mask(y, lengths, merge_mode):
    """Broadcast :func:`padded_mask` to the shape of ``y`` for ``merge_mode``."""
    padded = padded_mask(lengths, y.shape[-1])
    if merge_mode is None:
        return np.broadcast_to(padded[None, :, None, :], y.shape)
    return np.broadcast_to(padded[:, None, :], y.shape)


def assert_gradients_equal(actual, expected):
    """Assert bitwise-equal gradients, naming the array that differs."""
    np.testing.assert_array_equal(actual.dx, expected.dx, err_msg="dx")
    for name in bilstm.PARAM_NAMES:
        np.testing.assert_array_equal(actual.dparams[name], expected.dparams[name], err_msg=name)
    np.testing.assert_array_equal(actual.dh0, expected.dh0, err_msg="dh0")
    np.testing.assert_array_equal(actual.dc0, expected.dc0, err_msg="dc0")


def gradient_arrays(grads):
    """Return every array of a Gradients object, keyed by name."""
    return {"dx": grads.dx, **grads.dparams, "dh0": grads.dh0, "dc0": grads.dc0}


# Padding.

@pytest.mark.parametrize("merge_mode", CANONICAL_MODES, ids=repr)
def test_padded_outputs_zero(merge_mode):
    inputs = draw_inputs(1)
    result = bilstm.forward(**inputs, merge_mode=merge_mode, lengths=LENGTHS)
    padded = y_padded_mask(result.y, LENGTHS, merge_mode)

    assert np.all(result.y[padded] == 0), f"y at padded steps: {result.y[padded]}"
    assert np.all(result.y[~padded] != 0), "y is 0 at a valid step, so the check above proves nothing"


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf, 1e6], ids=["nan", "inf", "-inf", "1e6"])
@pytest.mark.parametrize("merge_mode", ["concat", "multiply", None], ids=repr)
def test_padding_values_ignored(merge_mode, fill):
    inputs = draw_inputs(2)
    x_padded = padded_mask(LENGTHS, N_T)[:, None, :]
    x_zero = np.where(x_padded, 0.0, inputs["x"])
    x_fill = np.where(x_padded, fill, inputs["x"])

    clean = bilstm.forward(**{**inputs, "x": x_zero}, merge_mode=merge_mode, lengths=LENGTHS)
    dirty = bilstm.forward(**{**inputs, "x": x_fill}, merge_mode=merge_mode, lengths=LENGTHS)
    upstream = draw_upstream(3, clean)

    np.testing.assert_array_equal(dirty.y, clean.y)
    np.testing.assert_array_equal(dirty.h_n, clean.h_n)
    np.testing.assert_array_equal(dirty.c_n, clean.c_n)
    assert_gradients_equal(run_backward(dirty, upstream), run_backward(clean, upstream))


# Final states.

def test_final_states_match_truncated_runs():
    # Each example run alone on its valid steps, without lengths, is an
    # independent oracle for both the outputs and the final states.
    inputs = draw_inputs(4)
    result = bilstm.forward(**inputs, lengths=LENGTHS)

    for n, length in enumerate(LENGTHS):
        if length == 0:
            continue
        alone = bilstm.forward(
            inputs["x"][n:n + 1, :, :length], inputs["params"],
            h0=inputs["h0"][:, n:n + 1], c0=inputs["c0"][:, n:n + 1],
        )
        np.testing.assert_allclose(result.y[n, :, :length], alone.y[0], rtol=1e-13, atol=1e-15, err_msg=f"y, example {n}")
        np.testing.assert_allclose(result.h_n[:, n], alone.h_n[:, 0], rtol=1e-13, atol=1e-15, err_msg=f"h_n, example {n}")
        np.testing.assert_allclose(result.c_n[:, n], alone.c_n[:, 0], rtol=1e-13, atol=1e-15, err_msg=f"c_n, example {n}")


def test_final_states_at_documented_steps():
    inputs = draw_inputs(5)
    result = bilstm.forward(**inputs, lengths=LENGTHS)

    for n, length in enumerate(LENGTHS):
        if length == 0:
            continue
        # Forward direction: after its last valid step; backward: after step 0.
        np.testing.assert_array_equal(result.h_n[0, n], result.y[n, :H, length - 1], err_msg=f"example {n}")
        np.testing.assert_array_equal(result.h_n[1, n], result.y[n, H:, 0], err_msg=f"example {n}")


def test_length_zero_keeps_initial_states():
    inputs = draw_inputs(6)
    result = bilstm.forward(**inputs, lengths=LENGTHS)
    empty = LENGTHS.index(0)
    upstream = draw_upstream(7, result)
    grads = run_backward(result, upstream)

    np.testing.assert_array_equal(result.h_n[:, empty], inputs["h0"][:, empty])
    np.testing.assert_array_equal(result.c_n[:, empty], inputs["c0"][:, empty])
    np.testing.assert_array_equal(grads.dh0[:, empty], upstream["dh_n"][:, empty])
    np.testing.assert_array_equal(grads.dc0[:, empty], upstream["dc_n"][:, empty])
    assert np.all(grads.dx[empty] == 0)


# Numerical stability.

def first_step_preactivation(inputs):
    """Return z of the forward direction's first step, shape (n_ex, 4H)."""
    params = inputs["params"]
    x0 = inputs["x"][:, :, 0]
    return x0 @ params["W_ih_fwd"] + inputs["h0"][0] @ params["W_hh_fwd"] + params["b_fwd"]


def scale_to_preactivation(inputs, target):
    """Scale the parameters so that max |z| of the first forward step equals ``target``."""
    factor = target / np.max(np.abs(first_step_preactivation(inputs)))
    params = {name: value * factor for name, value in inputs["params"].items()}
    return {**inputs, "params": params}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("merge_mode", ["concat", "multiply"], ids=repr)
def test_huge_preactivations_stable(merge_mode, dtype):
    inputs = scale_to_preactivation(draw_inputs(8, dtype=dtype), 1e4)

    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        result = bilstm.forward(**inputs, merge_mode=merge_mode, lengths=LENGTHS)
        grads = run_backward(result, draw_upstream(9, result))

    z_max = np.max(np.abs(first_step_preactivation(inputs)))
    assert z_max == pytest.approx(1e4, rel=1e-5)
    for name, array in {"y": result.y, "h_n": result.h_n, "c_n": result.c_n}.items():
        assert np.all(np.isfinite(array)), f"{name} is not finite"
    for name, array in gradient_arrays(grads).items():
        assert np.all(np.isfinite(array)), f"{name} is not finite"
    assert np.max(np.abs(result.h_n)) <= 1, "|h| must stay within the range of o * tanh(c)"


# Dtypes.

@pytest.mark.parametrize("merge_mode", CANONICAL_MODES, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_dtype_preserved(dtype, merge_mode):
    inputs = draw_inputs(10, dtype=dtype)
    result = bilstm.forward(**inputs, merge_mode=merge_mode, lengths=LENGTHS)
    grads = run_backward(result, draw_upstream(11, result))

    assert result.y.dtype == dtype
    assert result.h_n.dtype == dtype
    assert result.c_n.dtype == dtype
    for name, array in gradient_arrays(grads).items():
        assert array.dtype == dtype, f"{name} has dtype {array.dtype}"


# Arguments are neither mutated nor aliased.

def test_arguments_not_mutated():
    inputs = draw_inputs(12)
    lengths = np.array(LENGTHS)
    result = bilstm.forward(**inputs, merge_mode="multiply", lengths=lengths)
    upstream = draw_upstream(13, result)
    upstream["dy"][y_padded_mask(result.y, LENGTHS, "multiply")] = np.nan
    before = copy.deepcopy({**inputs, "lengths": lengths, **upstream})

    result = bilstm.forward(**inputs, merge_mode="multiply", lengths=lengths)
    run_backward(result, upstream)
    after = {**inputs, "lengths": lengths, **upstream}

    assert list(after["params"]) == list(before["params"])
    for name in bilstm.PARAM_NAMES:
        np.testing.assert_array_equal(after["params"][name], before["params"][name], err_msg=name)
    for name in ("x", "h0", "c0", "lengths", "dy", "dh_n", "dc_n"):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


@pytest.mark.parametrize("n_ex, hidden_size", [(1, 1), (1, 3), (3, 1)])
def test_state_gradients_not_mutated_when_already_contiguous(n_ex, hidden_size):
    # With one example or one unit, the transposed views of dh_n and dc_n
    # that backward makes are contiguous, so a careless copy would return
    # the caller's own array and overwrite it.
    inputs = draw_inputs(40, n_ex=n_ex, hidden_size=hidden_size)
    result = bilstm.forward(**inputs)
    upstream = draw_upstream(41, result)
    before = copy.deepcopy(upstream)

    first = run_backward(result, upstream)
    second = run_backward(result, upstream)

    for name in ("dy", "dh_n", "dc_n"):
        np.testing.assert_array_equal(upstream[name], before[name], err_msg=name)
    assert_gradients_equal(second, first)


@pytest.mark.parametrize("chunk_bytes", [1, 700])
def test_backward_chunks_do_not_change_gradients(monkeypatch, chunk_bytes):
    # backward walks the steps in chunks sized by _CHUNK_BYTES; small test
    # cases fit in one chunk, so this forces one step per chunk, and chunks
    # that do not divide n_t.
    inputs = draw_inputs(42, n_t=7)
    result = bilstm.forward(**inputs, merge_mode="multiply", lengths=LENGTHS)
    upstream = draw_upstream(43, result)
    expected = run_backward(result, upstream)

    monkeypatch.setattr(bilstm.reference, "_CHUNK_BYTES", chunk_bytes)
    assert len(bilstm.reference._chunks(7, N_EX, 4 * H, 8)) > 1
    actual = gradient_arrays(run_backward(result, upstream))

    # Chunked weight gradients are summed in another order.
    for name, array in gradient_arrays(expected).items():
        np.testing.assert_allclose(actual[name], array, rtol=1e-13, atol=1e-15, err_msg=name)


def test_result_not_mutated_by_backward():
    result = bilstm.forward(**draw_inputs(30), merge_mode="multiply", lengths=LENGTHS)
    before = {"y": result.y.copy(), "h_n": result.h_n.copy(), "c_n": result.c_n.copy()}

    run_backward(result, draw_upstream(31, result))

    np.testing.assert_array_equal(result.y, before["y"])
    np.testing.assert_array_equal(result.h_n, before["h_n"])
    np.testing.assert_array_equal(result.c_n, before["c_n"])
    np.testing.assert_array_equal(result.lengths, LENGTHS)


def test_outputs_not_shared_between_calls():
    # Writing into one call's outputs must not leak into the next call, which
    # would happen if the reference handed out reused work buffers.
    inputs = draw_inputs(32)
    result = bilstm.forward(**inputs, lengths=LENGTHS)
    upstream = draw_upstream(33, result)
    first = run_backward(result, upstream)
    expected = {name: array.copy() for name, array in gradient_arrays(first).items()}
    y_expected = result.y.copy()

    for array in [*gradient_arrays(first).values(), result.y]:
        if array.flags.writeable:
            array[...] = 0.0
    second = run_backward(result, upstream)
    again = bilstm.forward(**inputs, lengths=LENGTHS)

    for name, array in gradient_arrays(second).items():
        np.testing.assert_array_equal(array, expected[name], err_msg=name)
    np.testing.assert_array_equal(again.y, y_expected)


def test_noncontiguous_inputs_accepted():
    inputs = draw_inputs(34)
    strided = {
        "x": np.asfortranarray(inputs["x"]),
        "params": {name: np.asfortranarray(value) for name, value in inputs["params"].items()},
        "h0": np.ascontiguousarray(inputs["h0"][:, ::-1])[:, ::-1],
        "c0": np.asfortranarray(inputs["c0"]),
    }
    assert not strided["x"].flags.c_contiguous
    assert not strided["h0"].flags.c_contiguous
    expected = bilstm.forward(**inputs, merge_mode="multiply", lengths=LENGTHS)
    actual = bilstm.forward(**strided, merge_mode="multiply", lengths=LENGTHS)
    upstream = draw_upstream(35, expected)
    upstream_strided = {name: np.asfortranarray(value) for name, value in upstream.items()}

    # A BLAS call on another memory layout may sum in another order.
    np.testing.assert_allclose(actual.y, expected.y, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(actual.h_n, expected.h_n, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(actual.c_n, expected.c_n, rtol=1e-13, atol=1e-15)
    grads = gradient_arrays(run_backward(actual, upstream_strided))
    for name, array in gradient_arrays(run_backward(expected, upstream)).items():
        np.testing.assert_allclose(grads[name], array, rtol=1e-12, atol=1e-14, err_msg=name)


def test_backward_ignores_later_mutation():
    inputs = draw_inputs(14)
    lengths = np.array(LENGTHS)
    result = bilstm.forward(**inputs, merge_mode="multiply", lengths=lengths)
    upstream = draw_upstream(15, result)
    expected = run_backward(result, upstream)

    inputs["x"][...] = 7.0
    for value in inputs["params"].values():
        value *= -3.0
    inputs["h0"][...] = 0.25
    inputs["c0"][...] = -0.25
    lengths[...] = 0

    assert_gradients_equal(run_backward(result, upstream), expected)


# Edge sizes, as the module docstring defines them.

@pytest.mark.parametrize("merge_mode", CANONICAL_MODES, ids=repr)
def test_empty_batch(merge_mode):
    inputs = draw_inputs(16, n_ex=0)
    result = bilstm.forward(**inputs, merge_mode=merge_mode, lengths=np.zeros(0, dtype=np.int64))
    grads = run_backward(result, draw_upstream(17, result))

    assert result.y.shape == bilstm.output_shape(0, H, N_T, merge_mode)
    assert result.h_n.shape == (2, 0, H)
    assert result.c_n.shape == (2, 0, H)
    assert grads.dx.shape == (0, N_IN, N_T)
    assert grads.dh0.shape == (2, 0, H)
    assert grads.dc0.shape == (2, 0, H)
    for name, shape in bilstm.param_shapes(N_IN, H).items():
        assert grads.dparams[name].shape == shape, name
        assert np.all(grads.dparams[name] == 0), f"{name}: no example, so no gradient"


@pytest.mark.parametrize("merge_mode", CANONICAL_MODES, ids=repr)
def test_no_time_steps(merge_mode):
    inputs = draw_inputs(18, n_t=0)
    result = bilstm.forward(**inputs, merge_mode=merge_mode, lengths=np.zeros(N_EX, dtype=np.int64))
    upstream = draw_upstream(19, result)
    grads = run_backward(result, upstream)

    assert result.y.shape == bilstm.output_shape(N_EX, H, 0, merge_mode)
    np.testing.assert_array_equal(result.h_n, inputs["h0"])
    np.testing.assert_array_equal(result.c_n, inputs["c0"])

    # With no step, the final states are the initial states, so their
    # gradients pass through unchanged and no parameter is used.
    assert grads.dx.shape == (N_EX, N_IN, 0)
    np.testing.assert_array_equal(grads.dh0, upstream["dh_n"])
    np.testing.assert_array_equal(grads.dc0, upstream["dc_n"])
    for name in bilstm.PARAM_NAMES:
        assert np.all(grads.dparams[name] == 0), name


# Merge modes.

def run_all_modes(inputs, lengths=LENGTHS):
    return {mode: bilstm.forward(**inputs, merge_mode=mode, lengths=lengths) for mode in CANONICAL_MODES}


def test_merge_outputs_from_concat():
    results = run_all_modes(draw_inputs(20))
    forward_half = results["concat"].y[:, :H]
    backward_half = results["concat"].y[:, H:]

    np.testing.assert_array_equal(results["sum"].y, forward_half + backward_half)
    np.testing.assert_array_equal(results["average"].y, (forward_half + backward_half) / 2)
    np.testing.assert_array_equal(results["multiply"].y, forward_half * backward_half)
    np.testing.assert_array_equal(results[None].y, np.stack([forward_half, backward_half]))
    for mode, result in results.items():
        np.testing.assert_array_equal(result.h_n, results["concat"].h_n, err_msg=repr(mode))
        np.testing.assert_array_equal(result.c_n, results["concat"].c_n, err_msg=repr(mode))


def test_merge_gradients_from_concat():
    # Each mode's vjp equals concat's vjp at the upstream gradient that the
    # chain rule gives for the concatenated halves.
    results = run_all_modes(draw_inputs(21))
    concat_y = results["concat"].y
    forward_half, backward_half = concat_y[:, :H], concat_y[:, H:]
    rng = np.random.default_rng(22)
    dy = rng.standard_normal(forward_half.shape)
    states = {"dh_n": rng.standard_normal((2, N_EX, H)), "dc_n": rng.standard_normal((2, N_EX, H))}

    equivalents = {
        "sum": (dy, np.concatenate([dy, dy], axis=1)),
        "average": (dy, np.concatenate([dy / 2, dy / 2], axis=1)),
        "multiply": (dy, np.concatenate([dy * backward_half, dy * forward_half], axis=1)),
        None: (np.stack([dy, -dy]), np.concatenate([dy, -dy], axis=1)),
    }
    for mode, (mode_dy, concat_dy) in equivalents.items():
        actual = bilstm.backward(results[mode], mode_dy, **states)
        expected = bilstm.backward(results["concat"], concat_dy, **states)
        for name, array in gradient_arrays(actual).items():
            np.testing.assert_allclose(
                array, gradient_arrays(expected)[name], rtol=1e-13, atol=1e-15,
                err_msg=f"merge_mode={mode!r}, {name}",
            )


@pytest.mark.parametrize(("alias", "canonical"), bilstm.MERGE_MODE_ALIASES.items())
def test_alias_matches_canonical(alias, canonical):
    inputs = draw_inputs(23)
    by_alias = bilstm.forward(**inputs, merge_mode=alias, lengths=LENGTHS)
    by_name = bilstm.forward(**inputs, merge_mode=canonical, lengths=LENGTHS)
    upstream = draw_upstream(24, by_name)

    assert by_alias.merge_mode == canonical
    np.testing.assert_array_equal(by_alias.y, by_name.y)
    np.testing.assert_array_equal(by_alias.h_n, by_name.h_n)
    np.testing.assert_array_equal(by_alias.c_n, by_name.c_n)
    assert_gradients_equal(run_backward(by_alias, upstream), run_backward(by_name, upstream))


# Layout helpers.

LAYOUT_PAIRS = {
    "time-major": (bilstm.from_time_major, bilstm.to_time_major, (1, 2, 0)),
    "batch-first": (bilstm.from_batch_first, bilstm.to_batch_first, (0, 2, 1)),
}


@pytest.mark.parametrize("layout", LAYOUT_PAIRS)
def test_layout_round_trip(layout):
    convert_in, convert_out, axes = LAYOUT_PAIRS[layout]
    data = np.random.default_rng(25).standard_normal((5, 3, 2))

    reference = convert_in(data)
    np.testing.assert_array_equal(reference, data.transpose(axes))
    np.testing.assert_array_equal(convert_out(reference), data)
    np.testing.assert_array_equal(convert_in(convert_out(reference)), reference)
    assert reference.flags.c_contiguous


@pytest.mark.parametrize("helper", [
    bilstm.from_time_major, bilstm.to_time_major, bilstm.from_batch_first, bilstm.to_batch_first,
], ids=lambda f: f.__name__)
def test_layout_returns_copy(helper):
    data = np.zeros((2, 3, 4))
    converted = helper(data)
    converted[...] = 1.0

    assert np.all(data == 0)


@pytest.mark.parametrize("helper", [bilstm.from_time_major, bilstm.to_batch_first], ids=lambda f: f.__name__)
def test_layout_rejects_2d(helper):
    with pytest.raises(bilstm.InvalidArgumentError, match=r"must have 3 dimensions but has shape \(3, 4\)"):
        helper(np.zeros((3, 4)))


def test_forward_time_major_input():
    # A time-major batch converted by the helper gives the same output as
    # the same data built directly in the reference layout.
    inputs = draw_inputs(26)
    time_major = inputs["x"].transpose(2, 0, 1).copy()
    direct = bilstm.forward(**inputs)
    converted = bilstm.forward(**{**inputs, "x": bilstm.from_time_major(time_major)})

    np.testing.assert_array_equal(converted.y, direct.y)


# Complex step.

COMPLEX_STEP = 1e-20
"""Imaginary step.  A complex step has no subtractive cancellation, so it can be this small."""


@pytest.mark.parametrize("merge_mode", CANONICAL_MODES, ids=repr)
def test_complex_step_matches_backward(merge_mode):
    inputs = draw_inputs(27)
    direction = draw_inputs(28)
    result = bilstm.forward(**inputs, merge_mode=merge_mode, lengths=LENGTHS)
    upstream = draw_upstream(29, result)
    grads = run_backward(result, upstream)

    grad_by_name = gradient_arrays(grads)
    vjp_dot = np.sum(grad_by_name["dx"] * direction["x"])
    vjp_dot += sum(np.sum(grad_by_name[name] * direction["params"][name]) for name in bilstm.PARAM_NAMES)
    vjp_dot += np.sum(grads.dh0 * direction["h0"]) + np.sum(grads.dc0 * direction["c0"])

    shifted = {
        "x": inputs["x"] + 1j * COMPLEX_STEP * direction["x"],
        "params": {
            name: value + 1j * COMPLEX_STEP * direction["params"][name]
            for name, value in inputs["params"].items()
        },
        "h0": inputs["h0"] + 1j * COMPLEX_STEP * direction["h0"],
        "c0": inputs["c0"] + 1j * COMPLEX_STEP * direction["c0"],
    }
    complex_result = bilstm.forward(**shifted, merge_mode=merge_mode, lengths=LENGTHS)
    loss = (
        np.sum(upstream["dy"] * complex_result.y)
        + np.sum(upstream["dh_n"] * complex_result.h_n)
        + np.sum(upstream["dc_n"] * complex_result.c_n)
    )
    complex_step_dot = loss.imag / COMPLEX_STEP

    assert complex_result.y.dtype == np.complex128
    np.testing.assert_allclose(complex_result.y.real, result.y, rtol=1e-14, atol=1e-15)
    assert abs(complex_step_dot - vjp_dot) <= 1e-12 * abs(vjp_dot), (
        f"complex step {complex_step_dot!r} vs backward {vjp_dot!r}"
    )
