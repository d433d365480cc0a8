"""Tests of bilstm.convert: exact round trips, real frameworks and error messages.

The framework tests load converted weights into the real PyTorch, Keras,
onnxruntime and numpy-ml layers and compare their forward output with
:func:`bilstm.forward`; each is skipped when its package is missing.
"""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bilstm
from bilstm import convert
from bilstm.errors import InvalidArgumentError, InvalidDtypeError

LAYOUTS = {
    "torch": (convert.to_torch_state_dict, convert.from_torch_state_dict),
    "keras": (convert.to_keras_weights, convert.from_keras_weights),
    "onnx": (convert.to_onnx_weights, convert.from_onnx_weights),
    "numpy_ml": (convert.to_numpy_ml_params, convert.from_numpy_ml_params),
}

DTYPES = (np.float32, np.float64)

# The float64 frameworks compute the same equations in another summation
# order, which costs a few ulps per step.  At these sizes 1e-12 leaves room for that.
FLOAT64_ATOL = 1e-12

ROUND_TRIP_SETTINGS = settings(max_examples=25, deadline=None)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

@st.composite
def reference_params(draw, *, dtype, min_n_in=0, max_n_in=5, max_hidden_size=5):
    """Draw a reference parameter dict of finite values, signed zeros and subnormals included.

    Shrinks towards n_in = 0, H = 1 and all-zero arrays.
    """
    n_in = draw(st.integers(min_n_in, max_n_in))
    hidden_size = draw(st.integers(1, max_hidden_size))
    return {
        name: draw(finite_arrays(dtype, shape))
        for name, shape in bilstm.param_shapes(n_in, hidden_size).items()
    }


def finite_arrays(dtype, shape):
    """Return a strategy for arrays of any finite values, signed zeros and subnormals included."""
    elements = st.floats(
        width=np.dtype(dtype).itemsize * 8, allow_nan=False, allow_infinity=False,
    )
    return hnp.arrays(dtype, shape, elements=elements)


def leaf_arrays(value, label="result"):
    """Yield ``(label, array)`` for every array in a converter's argument or result."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaf_arrays(item, f"{label}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            yield from leaf_arrays(item, f"{label}[{k}]")
    else:
        yield label, value


def assert_bitwise_equal(actual, expected, label):
    assert actual.dtype == expected.dtype, f"{label}: dtype {actual.dtype}, not {expected.dtype}"
    assert actual.shape == expected.shape, f"{label}: shape {actual.shape}, not {expected.shape}"

    actual_bytes = np.ascontiguousarray(actual).view(np.uint8)
    differ = actual_bytes != np.ascontiguousarray(expected).view(np.uint8)
    assert not differ.any(), f"{label}: bytes differ, {actual!r} vs {expected!r}"


def max_abs_diff(actual, expected):
    return float(np.max(np.abs(np.asarray(actual) - np.asarray(expected)), initial=0.0))


def random_input(rng, n_ex, n_in, n_t, dtype=np.float64):
    return rng.standard_normal((n_ex, n_in, n_t)).astype(dtype)


def random_params(rng, n_in, hidden_size, dtype=np.float64):
    """Draw parameters with non-zero biases and distinct directions that do not saturate."""
    return bilstm.init_params(n_in, hidden_size, rng=rng, scale=0.8, dtype=dtype)


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@ROUND_TRIP_SETTINGS
@given(data=st.data())
def test_reference_round_trip_exact(layout, dtype, data):
    to_layout, from_layout = LAYOUTS[layout]
    params = data.draw(reference_params(dtype=dtype), label="params")

    back = from_layout(to_layout(params))

    assert list(back) == list(bilstm.PARAM_NAMES)
    for name in bilstm.PARAM_NAMES:
        assert_bitwise_equal(back[name], params[name], name)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", ["keras", "numpy_ml"])
@ROUND_TRIP_SETTINGS
@given(data=st.data())
def test_layout_round_trip_exact(layout, dtype, data):
    # Both layouts are bijections of the reference's, so every valid
    # argument is to_layout(params) for some params.
    to_layout, from_layout = LAYOUTS[layout]
    original = to_layout(data.draw(reference_params(dtype=dtype), label="params"))

    back = to_layout(from_layout(original))

    expected = dict(leaf_arrays(original))
    actual = dict(leaf_arrays(back))
    assert list(actual) == list(expected)
    for label, array in expected.items():
        assert_bitwise_equal(actual[label], array, label)


def _assert_split_bias_round_trip(original, back, weight_keys, bias_pairs):
    """Check weights and each bias pair's sum bit for bit, and the recurrent half for -0.0."""
    for key in weight_keys:
        assert_bitwise_equal(back[key], original[key], key)

    for label, (input_half, recurrent_half) in bias_pairs.items():
        original_sum = input_half(original) + recurrent_half(original)
        assert_bitwise_equal(input_half(back) + recurrent_half(back), original_sum, label)
        assert np.all(recurrent_half(back) == 0), f"{label}: recurrent half is not zero"
        assert np.all(np.signbit(recurrent_half(back))), f"{label}: recurrent half is not -0.0"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@ROUND_TRIP_SETTINGS
@given(data=st.data())
def test_torch_round_trip_keeps_bias_sum(dtype, data):
    params = data.draw(reference_params(dtype=dtype), label="params")
    state_dict = convert.to_torch_state_dict(params)
    for suffix in ("", "_reverse"):
        key = f"bias_hh_l0{suffix}"
        state_dict[key] = data.draw(finite_arrays(dtype, state_dict[key].shape), label=key)

    back = convert.to_torch_state_dict(convert.from_torch_state_dict(state_dict))

    weight_keys = [key for key in convert.TORCH_KEYS if key.startswith("weight")]
    bias_pairs = {
        f"bias_l0{suffix}": (
            lambda sd, s=suffix: sd[f"bias_ih_l0{s}"],
            lambda sd, s=suffix: sd[f"bias_hh_l0{s}"],
        )
        for suffix in ("", "_reverse")
    }
    _assert_split_bias_round_trip(state_dict, back, weight_keys, bias_pairs)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@ROUND_TRIP_SETTINGS
@given(data=st.data())
def test_onnx_round_trip_keeps_bias_sum(dtype, data):
    weights = convert.to_onnx_weights(data.draw(reference_params(dtype=dtype), label="params"))
    gates = weights["R"].shape[1]
    weights["B"][:, gates:] = data.draw(finite_arrays(dtype, (2, gates)), label="Rb")

    back = convert.to_onnx_weights(convert.from_onnx_weights(weights))

    bias_pairs = {
        f"B[{d}]": (lambda w, d=d: w["B"][d, :gates], lambda w, d=d: w["B"][d, gates:])
        for d in range(2)
    }
    _assert_split_bias_round_trip(weights, back, ["W", "R"], bias_pairs)


def test_onnx_without_bias_is_zero_bias():
    weights = convert.to_onnx_weights(random_params(np.random.default_rng(1), 3, 2))
    del weights["B"]

    params = convert.from_onnx_weights(weights)

    for name in ("b_fwd", "b_bwd"):
        assert np.array_equal(params[name], np.zeros(8)), name


# ---------------------------------------------------------------------------
# Copies and dtypes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("direction", ["to", "from"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_converter_returns_copies(layout, direction, dtype):
    to_layout, from_layout = LAYOUTS[layout]
    # n_in = 1 makes W_ih.T contiguous, where a lazy copy would return a view.
    params = random_params(np.random.default_rng(2), 1, 2, dtype)
    argument = params if direction == "to" else to_layout(params)
    converter = to_layout if direction == "to" else from_layout

    result = converter(argument)

    inputs = list(leaf_arrays(argument, "argument"))
    for label, array in leaf_arrays(result):
        assert array.dtype == np.dtype(dtype), f"{label} has dtype {array.dtype}"
        assert array.flags.writeable, f"{label} is read-only"
        assert array.flags.c_contiguous, f"{label} is not C-contiguous"
        for input_label, input_array in inputs:
            shared = np.shares_memory(array, input_array)
            assert not shared, f"{label} shares memory with {input_label}"


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

def _torch_lstm(n_in, hidden_size, dtype):
    torch = pytest.importorskip("torch")
    return torch.nn.LSTM(n_in, hidden_size, bidirectional=True, dtype=dtype)


def _torch_forward(lstm, x):
    """Run ``lstm`` on reference-layout ``x`` and return y in the reference layout, h_n and c_n."""
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        y, (h_n, c_n) = lstm(torch.from_numpy(bilstm.to_time_major(x)))
    return bilstm.from_time_major(y.numpy()), h_n.numpy(), c_n.numpy()


def test_torch_forward_with_converted_weights():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    n_ex, n_in, hidden_size, n_t = 3, 4, 5, 6
    params = random_params(rng, n_in, hidden_size)
    x = random_input(rng, n_ex, n_in, n_t)
    lstm = _torch_lstm(n_in, hidden_size, torch.float64)

    state_dict = convert.to_torch_state_dict(params)
    lstm.load_state_dict({key: torch.from_numpy(value) for key, value in state_dict.items()})
    y, h_n, c_n = _torch_forward(lstm, x)
    expected = bilstm.forward(x, params)

    assert max_abs_diff(y, expected.y) <= FLOAT64_ATOL
    assert max_abs_diff(h_n, expected.h_n) <= FLOAT64_ATOL
    assert max_abs_diff(c_n, expected.c_n) <= FLOAT64_ATOL


def test_torch_weights_converted_to_reference():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    n_ex, n_in, hidden_size, n_t = 2, 3, 4, 5
    x = random_input(rng, n_ex, n_in, n_t)
    lstm = _torch_lstm(n_in, hidden_size, torch.float64)
    # Both bias halves are non-zero, so a converter that drops one fails.
    with torch.no_grad():
        for parameter in lstm.parameters():
            parameter.copy_(torch.from_numpy(rng.uniform(-0.8, 0.8, parameter.shape)))

    # named_parameters() gives tensors that require grad, unlike state_dict().
    params = convert.from_torch_state_dict(dict(lstm.named_parameters()))
    y, h_n, c_n = _torch_forward(lstm, x)
    actual = bilstm.forward(x, params)

    assert max_abs_diff(actual.y, y) <= FLOAT64_ATOL
    assert max_abs_diff(actual.h_n, h_n) <= FLOAT64_ATOL
    assert max_abs_diff(actual.c_n, c_n) <= FLOAT64_ATOL


def test_torch_float32_tensors_keep_dtype():
    torch = pytest.importorskip("torch")
    lstm = _torch_lstm(3, 2, torch.float32)

    params = convert.from_torch_state_dict(lstm.state_dict())

    for name, array in params.items():
        assert array.dtype == np.float32, name
    assert np.array_equal(params["W_ih_bwd"], lstm.weight_ih_l0_reverse.detach().numpy().T)


# ---------------------------------------------------------------------------
# Keras 3 on the torch backend
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras():
    """Import Keras on the torch backend, which computes float64 in float64.

    On the jax backend Keras 3 computes in float32 even when float64 is
    requested, so the test skips if Keras was already imported with another backend.
    """
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("KERAS_BACKEND", "torch")
        pytest.importorskip("torch")
        keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        backend = keras.backend.backend()
        pytest.skip(f"keras was imported with the {backend} backend before this test")
    return keras


def _keras_float64_bilstm(keras, hidden_size):
    # The wrapper needs the dtype too: with its default float32 policy it
    # casts the float64 output of its float64 layers to float32.
    return keras.layers.Bidirectional(
        keras.layers.LSTM(hidden_size, return_sequences=True, dtype="float64"), dtype="float64",
    )


def test_keras_forward_with_converted_weights(keras):
    rng = np.random.default_rng(5)
    n_ex, n_in, hidden_size, n_t = 2, 3, 4, 5
    params = random_params(rng, n_in, hidden_size)
    x = random_input(rng, n_ex, n_in, n_t)
    layer = _keras_float64_bilstm(keras, hidden_size)
    layer.build((n_ex, n_t, n_in))

    layer.set_weights(convert.to_keras_weights(params))
    y = keras.ops.convert_to_numpy(layer(bilstm.to_batch_first(x)))
    expected = bilstm.forward(x, params)

    assert y.dtype == np.float64
    assert max_abs_diff(bilstm.from_batch_first(y), expected.y) <= FLOAT64_ATOL


def test_keras_get_weights_order(keras):
    # Each weight is named by its variable path, which fixes the order
    # that from_keras_weights relies on.
    hidden_size, n_in = 2, 3
    layer = keras.layers.Bidirectional(keras.layers.LSTM(hidden_size, return_sequences=True))
    layer.build((1, 4, n_in))

    paths = [variable.path for variable in layer.weights]

    expected = [name.split() for name in convert.KERAS_WEIGHT_NAMES]
    assert len(paths) == len(expected)
    for path, (direction, weight) in zip(paths, expected):
        assert f"{direction}_lstm" in path, path
        assert path.endswith(f"/{weight}"), path


def test_keras_weights_converted_to_reference(keras):
    rng = np.random.default_rng(6)
    n_ex, n_in, hidden_size, n_t = 2, 3, 2, 4
    x = random_input(rng, n_ex, n_in, n_t)
    layer = _keras_float64_bilstm(keras, hidden_size)
    layer.build((n_ex, n_t, n_in))

    # unit_forget_bias=True makes the forget block of each bias 1 and the
    # rest 0, so a gate-order error shows.
    params = convert.from_keras_weights(layer.get_weights())
    y = keras.ops.convert_to_numpy(layer(bilstm.to_batch_first(x)))

    assert max_abs_diff(bilstm.forward(x, params).y, bilstm.from_batch_first(y)) <= FLOAT64_ATOL


# ---------------------------------------------------------------------------
# ONNX on onnxruntime
# ---------------------------------------------------------------------------

# onnxruntime computes in float32 with its own matrix kernels and activation
# approximations.  Against the float64 reference on the same float32 weights,
# 200 random draws at the sizes below gave at most 2.7e-7 (onnxruntime 1.32,
# x86_64 CPU); 2e-6, about 17 float32 epsilons, leaves room for other kernels.
ONNX_ATOL = 2e-6


def _onnx_session(weights, n_in, hidden_size):
    """Build a one-node bidirectional LSTM graph with the weights as initializers."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    helper = onnx.helper
    float32 = onnx.TensorProto.FLOAT

    node = helper.make_node(
        "LSTM", ["X", "W", "R", "B", "sequence_lens"], ["Y", "Y_h", "Y_c"],
        direction="bidirectional", hidden_size=hidden_size,
    )
    graph = helper.make_graph(
        [node], "bilstm",
        inputs=[
            helper.make_tensor_value_info("X", float32, [None, None, n_in]),
            helper.make_tensor_value_info("sequence_lens", onnx.TensorProto.INT32, [None]),
        ],
        outputs=[
            helper.make_tensor_value_info("Y", float32, [None, 2, None, hidden_size]),
            helper.make_tensor_value_info("Y_h", float32, [2, None, hidden_size]),
            helper.make_tensor_value_info("Y_c", float32, [2, None, hidden_size]),
        ],
        initializer=[onnx.numpy_helper.from_array(weights[key], key) for key in convert.ONNX_KEYS],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("lengths", [None, [4, 0, 2]], ids=["full", "lengths"])
def test_onnxruntime_forward_with_converted_weights(lengths):
    rng = np.random.default_rng(7)
    n_ex, n_in, hidden_size, n_t = 3, 2, 3, 4
    params = random_params(rng, n_in, hidden_size, np.float32)
    x = random_input(rng, n_ex, n_in, n_t, np.float32)
    session = _onnx_session(convert.to_onnx_weights(params), n_in, hidden_size)

    feed_lengths = np.full(n_ex, n_t) if lengths is None else np.array(lengths)
    y, h_n, c_n = session.run(None, {
        "X": bilstm.to_time_major(x), "sequence_lens": feed_lengths.astype(np.int32),
    })
    expected = bilstm.forward(
        x.astype(np.float64), bilstm.cast_params(params, np.float64),
        merge_mode=None, lengths=lengths,
    )

    # ONNX Y is (n_t, 2, n_ex, H); the reference's stacked output is (2, n_ex, H, n_t).
    assert max_abs_diff(y.transpose(1, 2, 3, 0), expected.y) <= ONNX_ATOL
    assert max_abs_diff(h_n, expected.h_n) <= ONNX_ATOL
    assert max_abs_diff(c_n, expected.c_n) <= ONNX_ATOL


# ---------------------------------------------------------------------------
# numpy-ml
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def numpy_ml_bilstm():
    """Return numpy-ml's ``BidirectionalLSTM`` class.

    numpy-ml 0.1.2 imports ``collections.Hashable``, which Python 3.10
    removed, so the alias is restored first.  Its optional dependencies
    (gym, matplotlib) warn on import.
    """
    import collections
    import collections.abc

    if not hasattr(collections, "Hashable"):
        collections.Hashable = collections.abc.Hashable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modules = pytest.importorskip("numpy_ml.neural_nets.modules")
    return modules.BidirectionalLSTM


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "average", "multiply"])
def test_numpy_ml_forward_with_converted_weights(numpy_ml_bilstm, merge_mode):
    rng = np.random.default_rng(8)
    n_ex, n_in, hidden_size, n_t = 2, 3, 4, 5
    params = random_params(rng, n_in, hidden_size)
    x = random_input(rng, n_ex, n_in, n_t)
    layer = numpy_ml_bilstm(n_out=hidden_size, merge_mode=merge_mode)

    # A fresh cell creates random parameters on its first forward call, so
    # create them now and overwrite them.
    for name, cell_params in convert.to_numpy_ml_params(params).items():
        cell = getattr(layer, name)
        cell.n_in = n_in
        cell._init_params()
        cell.parameters.update(cell_params)
    y = layer.forward(x)
    expected = bilstm.forward(x, params, merge_mode=merge_mode)

    assert max_abs_diff(y, expected.y) <= FLOAT64_ATOL


def test_numpy_ml_parameters_converted_to_reference(numpy_ml_bilstm):
    rng = np.random.default_rng(9)
    n_ex, n_in, hidden_size, n_t = 2, 3, 2, 4
    x = random_input(rng, n_ex, n_in, n_t)
    layer = numpy_ml_bilstm(n_out=hidden_size)
    layer.forward(x)

    # numpy-ml's biases start at zero, so give them values a gate-order
    # error would show, then rerun on fresh cells with these parameters.
    cells = layer.parameters["components"]
    for cell_params in cells.values():
        for key in ("bf", "bu", "bc", "bo"):
            cell_params[key] = rng.uniform(-0.8, 0.8, cell_params[key].shape)
    params = convert.from_numpy_ml_params(cells)
    fresh = numpy_ml_bilstm(n_out=hidden_size)
    for name, cell_params in cells.items():
        cell = getattr(fresh, name)
        cell.n_in = n_in
        cell._init_params()
        cell.parameters.update(cell_params)

    assert max_abs_diff(bilstm.forward(x, params).y, fresh.forward(x)) <= FLOAT64_ATOL


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

# The valid arguments have n_in = 3 and H = 2.  Each case breaks one thing.
def _params():
    return random_params(np.random.default_rng(10), 3, 2)


def _replaced(mapping, key, value):
    changed = dict(mapping)
    changed[key] = value
    return changed


def _without(mapping, *keys):
    return {key: value for key, value in mapping.items() if key not in keys}


def _bfloat16_state_dict():
    torch = pytest.importorskip("torch")
    state_dict = convert.to_torch_state_dict(_params())
    state_dict = {key: torch.from_numpy(value) for key, value in state_dict.items()}
    return {key: value.to(torch.bfloat16) for key, value in state_dict.items()}


def _keras_weights(index, value):
    weights = convert.to_keras_weights(_params())
    weights[index] = value
    return weights


def _numpy_ml_cells(cell, key, value):
    cells = convert.to_numpy_ml_params(_params())
    cells[cell] = _replaced(cells[cell], key, value)
    return cells


PARAMS_ERRORS = [
    ("params is a list", lambda: [1, 2], InvalidArgumentError,
     r"params must be a mapping from name to array, got list"),
    ("params without W_ih_fwd", lambda: _without(_params(), "W_ih_fwd"), InvalidArgumentError,
     r"params has missing keys \['W_ih_fwd'\] and unexpected keys \[\]"),
    ("params with W_ih_fwd2", lambda: _replaced(_params(), "W_ih_fwd2", np.zeros(1)),
     InvalidArgumentError, r"unexpected keys \['W_ih_fwd2'\]; it must hold exactly"),
    ("params W_hh_fwd None", lambda: _replaced(_params(), "W_hh_fwd", None), InvalidArgumentError,
     r"params\['W_hh_fwd'\] is None; pass an array"),
    ("params W_hh_fwd (2, 7)", lambda: _replaced(_params(), "W_hh_fwd", np.zeros((2, 7))),
     InvalidArgumentError,
     r"params\['W_hh_fwd'\] has shape \(2, 7\) but must have shape \(H, 4H\)"),
    ("params W_hh_fwd (0, 0)", lambda: _replaced(_params(), "W_hh_fwd", np.zeros((0, 0))),
     InvalidArgumentError, r"params\['W_hh_fwd'\] has shape \(0, 0\) .* with H >= 1"),
    ("params W_ih_fwd (8,)", lambda: _replaced(_params(), "W_ih_fwd", np.zeros(8)),
     InvalidArgumentError, r"params\['W_ih_fwd'\] has shape \(8,\) but must have shape "
     r"\(n_in, 4H\), 2 dimensions"),
    ("params W_ih_bwd (4, 8)", lambda: _replaced(_params(), "W_ih_bwd", np.zeros((4, 8))),
     InvalidArgumentError, r"params\['W_ih_bwd'\] has shape \(4, 8\) but must have shape "
     r"\(n_in, 4H\) = \(3, 8\) for n_in=3 from params\['W_ih_fwd'\] and H=2"),
    ("params b_bwd (7,)", lambda: _replaced(_params(), "b_bwd", np.zeros(7)),
     InvalidArgumentError,
     r"params\['b_bwd'\] has shape \(7,\) but must have shape \(4H,\) = \(8,\)"),
    ("params of int64", lambda: bilstm.cast_params(_params(), np.int64), InvalidDtypeError,
     r"params\['W_ih_fwd'\] has dtype int64, but parameters must have a real floating dtype"),
    ("params b_fwd float32", lambda: _replaced(_params(), "b_fwd", np.zeros(8, np.float32)),
     InvalidDtypeError, r"params\['b_fwd'\] has dtype float32 but params\['W_ih_fwd'\] has "
     r"dtype float64; converters never promote"),
]

TO_CONVERTERS = [to_layout for to_layout, _ in LAYOUTS.values()]

FROM_ERRORS = [
    (convert.from_torch_state_dict, "state_dict is a list", lambda: [], InvalidArgumentError,
     r"state_dict must be a mapping from name to array, got list"),
    (convert.from_torch_state_dict, "state_dict unidirectional",
     lambda: _without(convert.to_torch_state_dict(_params()), *convert.TORCH_KEYS[4:]),
     InvalidArgumentError, r"missing keys \['weight_ih_l0_reverse', .*bidirectional=True"),
    (convert.from_torch_state_dict, "state_dict with weight_ih_l1",
     lambda: _replaced(convert.to_torch_state_dict(_params()), "weight_ih_l1", np.zeros((8, 4))),
     InvalidArgumentError, r"unexpected keys \['weight_ih_l1'\].*num_layers=1"),
    (convert.from_torch_state_dict, "state_dict weight_hh_l0 (8, 3)",
     lambda: _replaced(convert.to_torch_state_dict(_params()), "weight_hh_l0", np.zeros((8, 3))),
     InvalidArgumentError, r"state_dict\['weight_hh_l0'\] has shape \(8, 3\) but must have shape "
     r"\(4H, H\)"),
    (convert.from_torch_state_dict, "state_dict weight_ih_l0_reverse (8, 4)",
     lambda: _replaced(convert.to_torch_state_dict(_params()), "weight_ih_l0_reverse",
                       np.zeros((8, 4))),
     InvalidArgumentError, r"state_dict\['weight_ih_l0_reverse'\] has shape \(8, 4\) but must "
     r"have shape \(4H, n_in\) = \(8, 3\)"),
    (convert.from_torch_state_dict, "state_dict bias_hh_l0 (4,)",
     lambda: _replaced(convert.to_torch_state_dict(_params()), "bias_hh_l0", np.zeros(4)),
     InvalidArgumentError, r"state_dict\['bias_hh_l0'\] has shape \(4,\) but must have shape "
     r"\(4H,\) = \(8,\)"),
    (convert.from_torch_state_dict, "state_dict of bfloat16", _bfloat16_state_dict,
     InvalidDtypeError, r"state_dict\['weight_ih_l0'\] has dtype torch.bfloat16, which numpy "
     r"cannot represent"),
    (convert.from_keras_weights, "weights is a dict", lambda: {}, InvalidArgumentError,
     r"weights must be a list of 6 arrays .*, got dict"),
    (convert.from_keras_weights, "weights without bias",
     lambda: convert.to_keras_weights(_params())[:2] * 2, InvalidArgumentError,
     r"got length 4; .*use_bias=True"),
    (convert.from_keras_weights, "weights[1] (2, 6)", lambda: _keras_weights(1, np.zeros((2, 6))),
     InvalidArgumentError, r"weights\[1\] \(forward recurrent_kernel\) has shape \(2, 6\) but "
     r"must have shape \(H, 4H\)"),
    (convert.from_keras_weights, "weights[3] (4, 8)", lambda: _keras_weights(3, np.zeros((4, 8))),
     InvalidArgumentError, r"weights\[3\] \(backward kernel\) has shape \(4, 8\) but must have "
     r"shape \(n_in, 4H\) = \(3, 8\)"),
    (convert.from_keras_weights, "weights[5] (16,)", lambda: _keras_weights(5, np.zeros(16)),
     InvalidArgumentError, r"weights\[5\] \(backward bias\) has shape \(16,\) but must have "
     r"shape \(4H,\) = \(8,\)"),
    (convert.from_keras_weights, "weights[2] float16",
     lambda: _keras_weights(2, np.zeros(8, np.float16)), InvalidDtypeError,
     r"weights\[2\] \(forward bias\) has dtype float16 but weights\[0\] \(forward kernel\) has "
     r"dtype float64"),
    (convert.from_onnx_weights, "weights is a list", lambda: [], InvalidArgumentError,
     r"weights must be a mapping from name to array, got list"),
    (convert.from_onnx_weights, "weights without R",
     lambda: _without(convert.to_onnx_weights(_params()), "R"), InvalidArgumentError,
     r"missing keys \['R'\] and unexpected keys \[\]; .* may hold \['B'\]"),
    (convert.from_onnx_weights, "weights with P",
     lambda: _replaced(convert.to_onnx_weights(_params()), "P", np.zeros((2, 6))),
     InvalidArgumentError, r"unexpected keys \['P'\]"),
    (convert.from_onnx_weights, "weights W unidirectional",
     lambda: _replaced(convert.to_onnx_weights(_params()), "W", np.zeros((1, 8, 3))),
     InvalidArgumentError, r"weights\['W'\] has shape \(1, 8, 3\) but must have shape "
     r"\(2, 4H, n_in\) = \(2, 8, 3\)"),
    (convert.from_onnx_weights, "weights R (2, 8, 3)",
     lambda: _replaced(convert.to_onnx_weights(_params()), "R", np.zeros((2, 8, 3))),
     InvalidArgumentError, r"weights\['R'\] has shape \(2, 8, 3\) but must have shape "
     r"\(2, 4H, H\)"),
    (convert.from_onnx_weights, "weights B (2, 8)",
     lambda: _replaced(convert.to_onnx_weights(_params()), "B", np.zeros((2, 8))),
     InvalidArgumentError, r"weights\['B'\] has shape \(2, 8\) but must have shape "
     r"\(2, 8H\) = \(2, 16\)"),
    (convert.from_onnx_weights, "weights R float32",
     lambda: _replaced(convert.to_onnx_weights(_params()), "R", np.zeros((2, 8, 2), np.float32)),
     InvalidDtypeError, r"weights\['R'\] has dtype float32 but weights\['W'\] has dtype float64"),
    (convert.from_numpy_ml_params, "cells is a list", lambda: [], InvalidArgumentError,
     r"cells must be a mapping with keys \['cell_fwd', 'cell_bwd'\], got list"),
    (convert.from_numpy_ml_params, "cells without cell_bwd",
     lambda: _without(convert.to_numpy_ml_params(_params()), "cell_bwd"), InvalidArgumentError,
     r"cells has missing keys \['cell_bwd'\]"),
    (convert.from_numpy_ml_params, "cells cell_fwd without bo",
     lambda: {**convert.to_numpy_ml_params(_params()),
              "cell_fwd": _without(convert.to_numpy_ml_params(_params())["cell_fwd"], "bo")},
     InvalidArgumentError, r"cells\['cell_fwd'\] has missing keys \['bo'\]"),
    (convert.from_numpy_ml_params, "cells Wf None",
     lambda: _numpy_ml_cells("cell_fwd", "Wf", None), InvalidArgumentError,
     r"cells\['cell_fwd'\]\['Wf'\] is None; .*first forward call"),
    (convert.from_numpy_ml_params, "cells Wf (1, 2)",
     lambda: _numpy_ml_cells("cell_fwd", "Wf", np.zeros((1, 2))), InvalidArgumentError,
     r"cells\['cell_fwd'\]\['Wf'\] has shape \(1, 2\) but must have shape \(H \+ n_in, H\) "
     r"with H >= 1 and n_in >= 0"),
    (convert.from_numpy_ml_params, "cells cell_bwd Wu (6, 2)",
     lambda: _numpy_ml_cells("cell_bwd", "Wu", np.zeros((6, 2))), InvalidArgumentError,
     r"cells\['cell_bwd'\]\['Wu'\] has shape \(6, 2\) but must have shape \(H \+ n_in, H\) = "
     r"\(5, 2\) for n_in=3 and H=2"),
    (convert.from_numpy_ml_params, "cells bf (2,)",
     lambda: _numpy_ml_cells("cell_fwd", "bf", np.zeros(2)), InvalidArgumentError,
     r"cells\['cell_fwd'\]\['bf'\] has shape \(2,\) but must have shape \(1, H\) = \(1, 2\)"),
    (convert.from_numpy_ml_params, "cells bc float32",
     lambda: _numpy_ml_cells("cell_bwd", "bc", np.zeros((1, 2), np.float32)), InvalidDtypeError,
     r"cells\['cell_bwd'\]\['bc'\] has dtype float32 but cells\['cell_bwd'\]\['Wf'\] has dtype "
     r"float64"),
]


@pytest.mark.parametrize(
    ("converter", "make_argument", "error", "match"),
    [
        pytest.param(converter, make, error, match, id=f"{converter.__name__}({case})")
        for converter in TO_CONVERTERS
        for case, make, error, match in PARAMS_ERRORS
    ] + [
        pytest.param(converter, make, error, match, id=f"{converter.__name__}({case})")
        for converter, case, make, error, match in FROM_ERRORS
    ],
)
def test_converter_rejects_invalid(converter, make_argument, error, match):
    argument = make_argument()

    with pytest.raises(error, match=match):
        converter(argument)
