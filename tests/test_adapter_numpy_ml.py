"""Tests of the numpy-ml adapter against the reference, and of the defects it must not hide.

The defect tests state facts about numpy-ml 0.1.2.  They pass when the adapter
shows numpy-ml's behaviour as it is, and fail if the adapter starts to hide
it (for example by building a new object per call).
"""

import importlib.metadata
import importlib.util

import numpy as np
import pytest

# A plain importorskip("numpy_ml") would also skip on Python >= 3.10, where
# numpy_ml fails to import until the adapter sets its compatibility alias.
if importlib.util.find_spec("numpy_ml") is None:
    pytest.skip("numpy-ml is not installed; pip install 'bilstm-verify[numpy-ml]'",
                allow_module_level=True)

import bilstm
from bilstm.convert import from_numpy_ml_params
from properties.adapters import load_implementation
from properties.adapters.numpy_ml import NumpyMLImplementation
from properties.errors import HarnessError

SIZES = [
    # (n_ex, n_in, n_t, H)
    (1, 1, 1, 2),
    (3, 2, 5, 4),
    (2, 5, 3, 3),
]
SIZE_IDS = [f"n_ex={a},n_in={b},n_t={c},H={d}" for a, b, c, d in SIZES]


def make_case(n_ex, n_in, n_t, hidden_size, seed=0):
    """Return float64 parameters (non-zero biases, distinct directions) and an input."""
    rng = np.random.default_rng(seed)
    params = bilstm.init_params(n_in, hidden_size, rng=rng, scale=0.8)
    x = rng.standard_normal((n_ex, n_in, n_t))
    return params, x


def random_upstream(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.fixture(scope="module")
def impl():
    return load_implementation("numpy-ml")


def test_loader_returns_adapter(impl):
    assert isinstance(impl, NumpyMLImplementation)
    assert impl.name == "numpy-ml"
    assert impl.extra == "numpy-ml"


def test_version_is_installed_distribution(impl):
    assert impl.version() == importlib.metadata.version("numpy-ml")


def test_capabilities_declared(impl):
    caps = impl.capabilities
    assert caps.merge_modes == {"concat", "sum", "average", "multiply"}
    assert caps.dtypes == {"float32", "float64"}
    assert caps.backward
    assert caps.param_gradients


@pytest.mark.parametrize("flag", ["lengths", "zero_length", "initial_state", "final_state",
                                  "state_gradients", "complex_input"])
def test_capabilities_lack(impl, flag):
    assert not getattr(impl.capabilities, flag)


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "average", "multiply"])
def test_forward_matches_reference(impl, size, merge_mode):
    params, x = make_case(*size)
    model = impl.build(params, merge_mode=merge_mode)

    y = model.forward(x).y
    expected = bilstm.forward(x, params, merge_mode=merge_mode).y

    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "average"])
def test_backward_matches_reference(impl, size, merge_mode):
    params, x = make_case(*size)
    model = impl.build(params, merge_mode=merge_mode)
    y = model.forward(x).y
    dy = random_upstream(y.shape)

    grads = model.backward(dy)
    expected = bilstm.backward(bilstm.forward(x, params, merge_mode=merge_mode), dy)

    np.testing.assert_allclose(grads.dx, expected.dx, rtol=0, atol=1e-10, err_msg="dx")
    assert grads.dparams.keys() == expected.dparams.keys()
    for name, value in expected.dparams.items():
        assert grads.dparams[name].shape == value.shape, name
        np.testing.assert_allclose(grads.dparams[name], value, rtol=0, atol=1e-10,
                                   err_msg=name)


def test_build_keeps_global_random_state(impl):
    params, _ = make_case(2, 3, 4, 2)
    _, key_before, position_before, *_ = np.random.get_state()

    impl.build(params, merge_mode="concat")

    _, key_after, position_after, *_ = np.random.get_state()
    np.testing.assert_array_equal(key_after, key_before)
    assert position_after == position_before


def test_build_leaves_no_history(impl):
    params, _ = make_case(2, 3, 4, 2)
    model = impl.build(params, merge_mode="concat")

    for cell in (model.layer.cell_fwd, model.layer.cell_bwd):
        assert cell.X == []
        assert cell.derived_variables["A"] == []
        assert cell.derived_variables["current_step"] == 0


STATE = np.zeros((2, 2, 2))

FORWARD_EXTRAS = [
    ("lengths", np.array([4, 2]), "lengths"),
    ("h0", STATE, "initial_state"),
    ("c0", STATE, "initial_state"),
]

BACKWARD_EXTRAS = [
    ("dh_n", STATE, "state_gradients"),
    ("dc_n", STATE, "state_gradients"),
]


@pytest.mark.parametrize("name, value, flag", FORWARD_EXTRAS,
                         ids=[f"forward({name}=...)" for name, _, _ in FORWARD_EXTRAS])
def test_forward_extra_rejected(impl, name, value, flag):
    params, x = make_case(2, 3, 4, 2)
    model = impl.build(params, merge_mode="concat")

    with pytest.raises(HarnessError, match=rf"^{name} is not supported: .* "
                                           rf"capabilities\.{flag} is False"):
        model.forward(x, **{name: value})


@pytest.mark.parametrize("name, value, flag", BACKWARD_EXTRAS,
                         ids=[f"backward({name}=...)" for name, _, _ in BACKWARD_EXTRAS])
def test_backward_extra_rejected(impl, name, value, flag):
    params, x = make_case(2, 3, 4, 2)
    model = impl.build(params, merge_mode="concat")
    y = model.forward(x).y

    with pytest.raises(HarnessError, match=rf"^{name} is not supported: .* "
                                           rf"capabilities\.{flag} is False"):
        model.backward(random_upstream(y.shape), **{name: value})


# numpy-ml 0.1.2 defects, seen through the adapter.

def test_multiply_backward_raises(impl):
    params, x = make_case(2, 3, 4, 2)
    model = impl.build(params, merge_mode="multiply")
    y = model.forward(x).y

    with pytest.raises(UnboundLocalError):
        model.backward(random_upstream(y.shape))


def test_second_forward_differs(impl):
    params, x = make_case(2, 3, 4, 2)
    model = impl.build(params, merge_mode="concat")

    first = model.forward(x).y
    second = model.forward(x).y

    assert np.abs(second - first).max() > 1e-3


def test_other_batch_size_fails(impl):
    params, x = make_case(3, 3, 4, 2)
    model = impl.build(params, merge_mode="sum")
    model.forward(x)

    with pytest.raises(ValueError, match="dimension"):
        model.forward(x[:2])


@pytest.mark.parametrize("merge_mode", [None, "ave", "bogus"])
def test_other_merge_mode_passed_through(impl, merge_mode):
    params, x = make_case(2, 3, 4, 2)
    model = impl.build(params, merge_mode=merge_mode)

    assert model.layer.merge_mode == merge_mode
    with pytest.raises(ValueError, match="need at least one array"):
        model.forward(x)


def test_float32_output_is_float64(impl):
    params, x = make_case(2, 3, 4, 2)
    model = impl.build(bilstm.cast_params(params, np.float32), merge_mode="concat")

    y = model.forward(x.astype(np.float32)).y

    assert y.dtype == np.float64


def test_second_backward_differs(impl):
    params, x = make_case(2, 3, 4, 2)
    model = impl.build(params, merge_mode="concat")
    y = model.forward(x).y
    dy = random_upstream(y.shape)

    first = model.backward(dy)
    second = model.backward(dy)
    accumulators = from_numpy_ml_params({"cell_fwd": model.layer.cell_fwd.gradients,
                                         "cell_bwd": model.layer.cell_bwd.gradients})

    # The first call's gradients are still exact, so the adapter returned
    # copies that the second call's in-place accumulation did not change.
    expected = bilstm.backward(bilstm.forward(x, params), dy)
    np.testing.assert_allclose(first.dparams["W_ih_fwd"], expected.dparams["W_ih_fwd"],
                               rtol=0, atol=1e-10)
    np.testing.assert_array_equal(second.dparams["W_ih_fwd"], accumulators["W_ih_fwd"])
    assert np.abs(second.dx - first.dx).max() > 1e-3
    assert np.abs(second.dparams["W_ih_fwd"] - first.dparams["W_ih_fwd"]).max() > 1e-3
