"""Tests of the onnxruntime adapter against the reference, through the harness and with a planted bug.

The facts about onnxruntime itself (float32 only, zero final states for a
sequence length of 0) are asserted too, so that a change of onnxruntime's
behaviour shows up here before it makes a declared capability or a known
failure wrong.
"""

from dataclasses import replace

import numpy as np
import pytest

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

import bilstm
from bilstm.errors import InvalidArgumentError
from bilstm.merge import MERGE_MODES
from properties.adapters import load_implementation
from properties.adapters.onnxruntime_lstm import (
    OnnxRuntimeImplementation, OnnxRuntimeModel, make_lstm_graph,
)
from properties.catalog import REGISTRY, Subject
from properties.errors import PropertyFailure
from properties.runner import (
    FAILED, KNOWN_FAILURE, NOT_APPLICABLE, PASSED, import_catalog, run_property,
)
from properties.settings import profile_settings
from properties.strategies import Case, Sizes

# float32 on both sides, but onnxruntime sums in another order and uses its
# own sigmoid and tanh kernels; the differences seen were at most ~2e-7.
ATOL = 1e-5

SETTINGS = profile_settings("ci", max_examples=5)

import_catalog()

GRADIENT_PROPERTIES = sorted(name for name, prop in REGISTRY.items() if "backward" in prop.requires)


def make_case(*, n_ex=3, n_in=2, hidden_size=3, n_t=5, seed=0):
    """Return float32 parameters (non-zero biases, distinct directions), input, states and lengths.

    ``lengths`` leaves two of the three examples padded, and the states are
    random, so padding and initial-state bugs change the result.
    """
    rng = np.random.default_rng(seed)
    state_shape = (2, n_ex, hidden_size)
    return {
        "params": bilstm.init_params(n_in, hidden_size, rng=rng, scale=0.8, dtype=np.float32),
        "x": rng.standard_normal((n_ex, n_in, n_t)).astype(np.float32),
        "lengths": np.array([n_t, 2, 1][:n_ex]),
        "h0": rng.standard_normal(state_shape).astype(np.float32),
        "c0": rng.standard_normal(state_shape).astype(np.float32),
    }


@pytest.fixture(scope="module")
def impl():
    return load_implementation("onnxruntime")


# ---------------------------------------------------------------------------
# Loader and capabilities
# ---------------------------------------------------------------------------

def test_loader_returns_adapter(impl):
    assert type(impl) is OnnxRuntimeImplementation
    assert impl.name == "onnxruntime"
    assert impl.extra == "onnx"


def test_version_is_onnxruntime_version(impl):
    assert impl.version() == onnxruntime.__version__


def test_capabilities_modes_and_dtypes(impl):
    assert impl.capabilities.merge_modes == set(MERGE_MODES)
    assert impl.capabilities.dtypes == {"float32"}


@pytest.mark.parametrize("flag", ["lengths", "zero_length", "initial_state", "final_state"])
def test_capabilities_have(impl, flag):
    assert getattr(impl.capabilities, flag)


@pytest.mark.parametrize("flag", ["backward", "param_gradients", "state_gradients",
                                  "complex_input"])
def test_capabilities_lack(impl, flag):
    assert not getattr(impl.capabilities, flag)


def test_known_failure_recorded(impl):
    assert sorted(impl.known_failures) == ["final_state_positions", "reference_agreement"]
    for reason in impl.known_failures.values():
        assert "sequence_lens 0" in reason


# ---------------------------------------------------------------------------
# Agreement with the reference
# ---------------------------------------------------------------------------

OPTIONAL_INPUTS = [
    {},
    {"lengths"},
    {"h0", "c0"},
    {"lengths", "h0", "c0"},
]


@pytest.mark.parametrize("present", OPTIONAL_INPUTS,
                         ids=[",".join(sorted(p)) or "x only" for p in OPTIONAL_INPUTS])
@pytest.mark.parametrize("merge_mode", MERGE_MODES)
def test_forward_matches_reference(impl, merge_mode, present):
    case = make_case()
    inputs = {name: case[name] for name in present}
    model = impl.build(case["params"], merge_mode=merge_mode)

    out = model.forward(case["x"], **inputs)
    expected = bilstm.forward(case["x"], case["params"], merge_mode=merge_mode, **inputs)

    assert out.y.shape == expected.y.shape
    assert out.y.dtype == np.float32
    np.testing.assert_allclose(out.y, expected.y, rtol=0, atol=ATOL, err_msg="y")
    np.testing.assert_allclose(out.h_n, expected.h_n, rtol=0, atol=ATOL, err_msg="h_n")
    np.testing.assert_allclose(out.c_n, expected.c_n, rtol=0, atol=ATOL, err_msg="c_n")


def test_one_session_serves_every_batch(impl):
    case = make_case()
    model = impl.build(case["params"], merge_mode="concat")

    model.forward(case["x"])
    model.forward(np.concatenate([case["x"], case["x"]])[:, :, :2])

    assert list(model.sessions) == [()]


def test_session_per_set_of_inputs(impl):
    case = make_case()
    model = impl.build(case["params"], merge_mode="concat")

    model.forward(case["x"], lengths=case["lengths"])
    model.forward(case["x"], h0=case["h0"], c0=case["c0"])

    assert list(model.sessions) == [("sequence_lens",), ("initial_h", "initial_c")]


def test_graph_dims_symbolic():
    weights = {"W": np.zeros((2, 12, 2), np.float32), "R": np.zeros((2, 12, 3), np.float32),
               "B": np.zeros((2, 24), np.float32)}
    model = make_lstm_graph(weights, n_in=2, hidden_size=3, dtype=np.float32,
                            present=("sequence_lens",))

    x_dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in x_dims] == ["n_t", "n_ex", 2]
    assert [i.name for i in model.graph.input] == ["X", "sequence_lens"]


# ---------------------------------------------------------------------------
# Errors and facts about onnxruntime
# ---------------------------------------------------------------------------

def test_backward_raises(impl):
    case = make_case()
    model = impl.build(case["params"], merge_mode="concat")
    y = model.forward(case["x"]).y

    with pytest.raises(NotImplementedError, match=r"^backward is not supported"):
        model.backward(np.ones_like(y))


def test_unknown_merge_mode_rejected(impl):
    with pytest.raises(InvalidArgumentError, match=r"merge_mode='bogus' is not a valid"):
        impl.build(make_case()["params"], merge_mode="bogus")


def test_float64_rejected_by_onnxruntime(impl):
    case = make_case()
    model = impl.build(bilstm.cast_params(case["params"], np.float64), merge_mode="concat")

    with pytest.raises(RuntimeException, match="LSTM operator does not support double"):
        model.forward(case["x"].astype(np.float64))


def test_zero_length_final_states_zero(impl):
    case = make_case()
    model = impl.build(case["params"], merge_mode="concat")

    out = model.forward(case["x"], lengths=np.array([5, 0, 1]), h0=case["h0"], c0=case["c0"])

    # The reference returns h0 and c0 here; onnxruntime returns zeros.
    assert np.all(out.h_n[:, 1] == 0)
    assert np.all(out.c_n[:, 1] == 0)
    assert np.all(out.y[1] == 0)
    assert np.abs(case["h0"][:, 1]).min() > 0


def test_zero_length_fails_reference_agreement(impl):
    case = make_case(n_ex=1, n_t=2)
    sizes = Sizes(n_ex=1, n_in=2, hidden=3, n_t=2)
    dy = np.random.default_rng(1).standard_normal((1, 6, 2)).astype(np.float32)
    zero_length = Case(sizes=sizes, merge_mode="concat", dtype="float32", params=case["params"],
                       x=case["x"], dy=dy, lengths=np.array([0]), h0=case["h0"], c0=case["c0"],
                       weight_scale="typical")

    with pytest.raises(PropertyFailure, match=r"^h_n: mismatch at forward direction, example 0"):
        REGISTRY["reference_agreement"].check(Subject(impl), zero_length, np.random.default_rng(0))


# ---------------------------------------------------------------------------
# Through the harness
# ---------------------------------------------------------------------------

KNOWN = sorted(OnnxRuntimeImplementation.known_failures)
FORWARD_PROPERTIES = [name for name in REGISTRY
                      if name not in GRADIENT_PROPERTIES and name not in KNOWN]


@pytest.mark.parametrize("name", FORWARD_PROPERTIES)
def test_property_passes(impl, name):
    result = run_property(REGISTRY[name], Subject(impl), SETTINGS)

    assert result.verdict == PASSED, result.message


@pytest.mark.parametrize("name", KNOWN)
def test_known_failure_property_reported_as_known(impl, name):
    # The ci draws include zero lengths with random initial states, which
    # onnxruntime answers with zero final states.
    result = run_property(REGISTRY[name], Subject(impl), SETTINGS)

    assert result.verdict == KNOWN_FAILURE, result.message
    assert "sequence_lens 0" in result.message


@pytest.mark.parametrize("name", GRADIENT_PROPERTIES)
def test_gradient_property_not_applicable(impl, name):
    result = run_property(REGISTRY[name], Subject(impl), SETTINGS)

    assert result.verdict == NOT_APPLICABLE
    assert "backward" in result.message


class _NoZeroLength(OnnxRuntimeImplementation):
    """onnxruntime without lengths of 0, whose final states are its one known failure."""

    name = "onnxruntime-no-zero-length"
    capabilities = replace(OnnxRuntimeImplementation.capabilities, zero_length=False)
    known_failures = {}


def test_reference_agreement_without_zero_length():
    result = run_property(REGISTRY["reference_agreement"], Subject(_NoZeroLength()), SETTINGS)

    assert result.verdict == PASSED, result.message


class _FlippedBackwardHalfModel(OnnxRuntimeModel):
    def run_session(self, x, lengths, h0, c0):
        y_halves, h_n, c_n = super().run_session(x, lengths, h0, c0)
        y_halves = y_halves.copy()
        y_halves[1] = y_halves[1][..., ::-1]
        return y_halves, h_n, c_n


class _FlippedBackwardHalf(OnnxRuntimeImplementation):
    """onnxruntime's LSTM with the backward half of its output reversed in time."""

    name = "planted:onnxruntime-flipped-backward-half"
    model_class = _FlippedBackwardHalfModel
    known_failures = {}


@pytest.mark.parametrize("name", ["direction_symmetry", "reference_agreement"])
def test_planted_flip_caught(name):
    result = run_property(REGISTRY[name], Subject(_FlippedBackwardHalf()), SETTINGS)

    assert result.verdict == FAILED, result.message
