"""Tests of the torch adapters against the reference, through the harness and with a planted bug.

Both adapters (time-major and batch-first) must agree with
:func:`bilstm.forward` and :func:`bilstm.backward` in float64 to 1e-12 on
the same parameters: outputs, final states and every gradient, with lengths,
initial states and random upstream gradients of y, h_n and c_n.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bilstm
from bilstm.errors import InvalidArgumentError
from bilstm.merge import MERGE_MODES
from properties.adapters import load_implementation
from properties.adapters.torch_lstm import (
    TorchBatchFirstImplementation, TorchImplementation, TorchModel,
)
from properties.catalog import REGISTRY, Subject
from properties.errors import HarnessError
from properties.runner import FAILED, PASSED, import_catalog, run_property
from properties.settings import profile_settings

# Both sides compute the same float64 expressions in another summation
# order, which at these sizes costs a few ulps of values of order 1.
ATOL = 1e-12

IMPLEMENTATIONS = ["torch", "torch-batch-first"]

SETTINGS = profile_settings("ci", max_examples=5)

import_catalog()


def make_case(*, n_ex=3, n_in=2, hidden_size=3, n_t=5, dtype=np.float64, seed=0):
    """Return parameters (non-zero biases, distinct directions), input, states and lengths.

    ``lengths`` leaves two of the three examples padded, and the states are
    random, so padding and initial-state bugs change the result.
    """
    rng = np.random.default_rng(seed)
    state_shape = (2, n_ex, hidden_size)
    return {
        "params": bilstm.init_params(n_in, hidden_size, rng=rng, scale=0.8, dtype=dtype),
        "x": rng.standard_normal((n_ex, n_in, n_t)).astype(dtype),
        "lengths": np.array([n_t, 2, 1][:n_ex]),
        "h0": rng.standard_normal(state_shape).astype(dtype),
        "c0": rng.standard_normal(state_shape).astype(dtype),
    }


def random_like(shape, seed=1, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def forward_inputs(case):
    return {name: case[name] for name in ("lengths", "h0", "c0")}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run torch on one intra-op thread in this module, and restore the count afterwards.

    These LSTMs are too small to gain from threads.  With two OpenMP threads
    on a busy 2-core machine (pytest-xdist workers, say), each torch.lstm
    call waited for the other thread, and one gradient property took 20 s
    instead of 4 s.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def impl(request):
    return load_implementation(request.param)


# ---------------------------------------------------------------------------
# Loader and capabilities
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec, cls, batch_first", [
    ("torch", TorchImplementation, False),
    ("torch-batch-first", TorchBatchFirstImplementation, True),
])
def test_loader_returns_adapter(spec, cls, batch_first):
    impl = load_implementation(spec)

    assert type(impl) is cls
    assert impl.name == spec
    assert impl.extra == "torch"
    assert impl.batch_first is batch_first


def test_version_is_torch_version(impl):
    assert impl.version() == torch.__version__


def test_capabilities_modes_and_dtypes(impl):
    assert impl.capabilities.merge_modes == set(MERGE_MODES)
    assert impl.capabilities.dtypes == {"float32", "float64"}


@pytest.mark.parametrize("flag", ["lengths", "initial_state", "final_state", "backward",
                                  "param_gradients", "state_gradients"])
def test_capabilities_have(impl, flag):
    assert getattr(impl.capabilities, flag)


@pytest.mark.parametrize("flag", ["zero_length", "complex_input"])
def test_capabilities_lack(impl, flag):
    assert not getattr(impl.capabilities, flag)


def test_no_known_failures(impl):
    assert impl.known_failures == {}


# ---------------------------------------------------------------------------
# Agreement with the reference
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("merge_mode", MERGE_MODES)
def test_forward_matches_reference(impl, merge_mode):
    case = make_case()
    model = impl.build(case["params"], merge_mode=merge_mode)

    out = model.forward(case["x"], **forward_inputs(case))
    expected = bilstm.forward(case["x"], case["params"], merge_mode=merge_mode,
                              **forward_inputs(case))

    assert out.y.shape == expected.y.shape
    np.testing.assert_allclose(out.y, expected.y, rtol=0, atol=ATOL, err_msg="y")
    np.testing.assert_allclose(out.h_n, expected.h_n, rtol=0, atol=ATOL, err_msg="h_n")
    np.testing.assert_allclose(out.c_n, expected.c_n, rtol=0, atol=ATOL, err_msg="c_n")


def assert_grads_match(grads, expected):
    np.testing.assert_allclose(grads.dx, expected.dx, rtol=0, atol=ATOL, err_msg="dx")
    np.testing.assert_allclose(grads.dh0, expected.dh0, rtol=0, atol=ATOL, err_msg="dh0")
    np.testing.assert_allclose(grads.dc0, expected.dc0, rtol=0, atol=ATOL, err_msg="dc0")
    assert list(grads.dparams) == list(expected.dparams)
    for name, value in expected.dparams.items():
        assert grads.dparams[name].shape == value.shape, name
        np.testing.assert_allclose(grads.dparams[name], value, rtol=0, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("merge_mode", MERGE_MODES)
def test_gradients_match_reference(impl, merge_mode):
    case = make_case()
    model = impl.build(case["params"], merge_mode=merge_mode)
    y = model.forward(case["x"], **forward_inputs(case)).y
    dy, dh_n, dc_n = (random_like(shape, seed) for seed, shape in
                      enumerate([y.shape, case["h0"].shape, case["h0"].shape], start=1))

    grads = model.backward(dy, dh_n=dh_n, dc_n=dc_n)
    result = bilstm.forward(case["x"], case["params"], merge_mode=merge_mode,
                            **forward_inputs(case))
    expected = bilstm.backward(result, dy, dh_n=dh_n, dc_n=dc_n)

    assert_grads_match(grads, expected)


def test_gradients_without_optional_inputs(impl):
    case = make_case()
    model = impl.build(case["params"], merge_mode="concat")
    y = model.forward(case["x"]).y
    dy = random_like(y.shape)

    grads = model.backward(dy)
    expected = bilstm.backward(bilstm.forward(case["x"], case["params"]), dy)

    assert_grads_match(grads, expected)


def test_float32_results_are_float32(impl):
    case = make_case(dtype=np.float32)
    model = impl.build(case["params"], merge_mode="sum")
    out = model.forward(case["x"], **forward_inputs(case))

    grads = model.backward(random_like(out.y.shape, dtype=np.float32))

    assert out.y.dtype == np.float32
    assert out.h_n.dtype == np.float32
    assert grads.dx.dtype == np.float32
    assert {value.dtype for value in grads.dparams.values()} == {np.dtype(np.float32)}
    assert grads.dh0.dtype == np.float32


def test_backward_twice_identical(impl):
    case = make_case()
    model = impl.build(case["params"], merge_mode="multiply")
    y = model.forward(case["x"], **forward_inputs(case)).y
    dy = random_like(y.shape)

    first = model.backward(dy)
    second = model.backward(dy)

    np.testing.assert_array_equal(second.dx, first.dx)
    np.testing.assert_array_equal(second.dparams["W_hh_bwd"], first.dparams["W_hh_bwd"])


# ---------------------------------------------------------------------------
# Errors and side effects
# ---------------------------------------------------------------------------

def test_backward_before_forward_rejected(impl):
    model = impl.build(make_case()["params"], merge_mode="concat")

    with pytest.raises(HarnessError, match=r"^backward was called before forward"):
        model.backward(np.zeros((3, 6, 5)))


def test_unknown_merge_mode_rejected(impl):
    with pytest.raises(InvalidArgumentError, match=r"merge_mode='bogus' is not a valid"):
        impl.build(make_case()["params"], merge_mode="bogus")


def test_zero_length_rejected_by_torch(impl):
    case = make_case()
    model = impl.build(case["params"], merge_mode="concat")

    with pytest.raises(RuntimeError, match="Length of all samples has to be greater than 0"):
        model.forward(case["x"], lengths=np.array([5, 0, 1]))


def test_build_keeps_torch_random_state(impl):
    before = torch.random.get_rng_state()

    impl.build(make_case()["params"], merge_mode="concat")

    assert torch.equal(torch.random.get_rng_state(), before)


# ---------------------------------------------------------------------------
# Through the harness
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(REGISTRY))
def test_property_passes(impl, name):
    result = run_property(REGISTRY[name], Subject(impl), SETTINGS)

    assert result.verdict == PASSED, result.message


class _FlippedBackwardHalfModel(TorchModel):
    def run_lstm(self, x, lengths, h0, c0):
        y_concat, h_n, c_n = super().run_lstm(x, lengths, h0, c0)
        hidden_size = self.lstm.hidden_size
        flipped = torch.cat([y_concat[:, :hidden_size], y_concat[:, hidden_size:].flip(-1)], dim=1)
        return flipped, h_n, c_n


class _FlippedBackwardHalf(TorchImplementation):
    """torch's LSTM with the backward half of its output reversed in time."""

    name = "planted:torch-flipped-backward-half"
    model_class = _FlippedBackwardHalfModel


@pytest.mark.parametrize("name", ["direction_symmetry", "reference_agreement"])
def test_planted_flip_caught(name):
    result = run_property(REGISTRY[name], Subject(_FlippedBackwardHalf()), SETTINGS)

    assert result.verdict == FAILED, result.message
