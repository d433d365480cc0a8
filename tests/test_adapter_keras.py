"""Tests of the Keras 3 adapter against the reference, on the backend picked at import.

The torch backend is the default (see :mod:`properties.adapters.keras_lstm`).
Tests that need autodiff are skipped on backends without it.  The test on
masked float64 states a fact about Keras 3.15.1 on torch, and fails when a
Keras release computes masked float64 in float64, so that the known failures
of the adapter can be removed.
"""

import pytest

keras_lstm = pytest.importorskip(
    "properties.adapters.keras_lstm", reason="keras is not installed; pip install 'bilstm-verify[keras]'",
    exc_type=ImportError,
)

import numpy as np  # noqa: E402

import bilstm  # noqa: E402
from properties.adapters import load_implementation  # noqa: E402
from properties.catalog import Subject, not_applicable_reason  # noqa: E402
from properties.errors import HarnessError  # noqa: E402
from properties.protocol import Output  # noqa: E402
from properties.runner import (  # noqa: E402
    FAILED, KNOWN_FAILURE, PASSED, run_property, select_properties,
)
from properties.settings import profile_settings  # noqa: E402

KerasImplementation = keras_lstm.KerasImplementation
HAS_AUTODIFF = keras_lstm.BACKEND in keras_lstm.AUTODIFF_BACKENDS
needs_autodiff = pytest.mark.skipif(
    not HAS_AUTODIFF, reason=f"Keras backend {keras_lstm.BACKEND!r} has no autodiff in the adapter",
)

MERGE_MODES = ["concat", "sum", "average", "multiply", None]

SIZES = [
    # (n_ex, n_in, n_t, H)
    (1, 1, 1, 1),
    (3, 2, 5, 4),
    (2, 5, 3, 3),
]
SIZE_IDS = [f"n_ex={a},n_in={b},n_t={c},H={d}" for a, b, c, d in SIZES]

# float64 agreement without a mask, measured at ~4e-16 for these sizes.
EXACT = 1e-12


def make_case(n_ex, n_in, n_t, hidden_size, seed=0):
    """Return float64 parameters, input, initial states and upstream state gradients."""
    rng = np.random.default_rng(seed)
    params = bilstm.init_params(n_in, hidden_size, rng=rng, scale=0.8)
    x = rng.standard_normal((n_ex, n_in, n_t))
    states = [rng.standard_normal((2, n_ex, hidden_size)) for _ in range(4)]
    return params, x, states


@pytest.fixture(scope="module")
def impl():
    return load_implementation("keras")


def test_loader_returns_adapter(impl):
    assert isinstance(impl, KerasImplementation)
    assert impl.name == "keras"
    assert impl.extra == "keras"


def test_version_names_backend(impl):
    import keras

    assert impl.version().startswith(f"{keras.__version__} (backend {keras_lstm.BACKEND}")


def test_capabilities_declared(impl):
    caps = impl.capabilities
    assert caps.merge_modes == set(MERGE_MODES)
    assert caps.dtypes == {"float32", "float64"}
    assert caps.lengths
    assert caps.zero_length
    assert caps.initial_state
    assert caps.final_state
    assert not caps.complex_input


@pytest.mark.parametrize("flag", ["backward", "param_gradients", "state_gradients"])
def test_capabilities_autodiff(impl, flag):
    assert getattr(impl.capabilities, flag) == HAS_AUTODIFF


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("merge_mode", MERGE_MODES)
def test_forward_matches_reference(impl, size, merge_mode):
    params, x, (h0, c0, _, _) = make_case(*size)
    model = impl.build(params, merge_mode=merge_mode)

    out = model.forward(x, h0=h0, c0=c0)
    expected = bilstm.forward(x, params, merge_mode=merge_mode, h0=h0, c0=c0)

    assert out.y.shape == expected.y.shape
    assert out.y.dtype == np.float64
    np.testing.assert_allclose(out.y, expected.y, rtol=0, atol=EXACT, err_msg="y")
    np.testing.assert_allclose(out.h_n, expected.h_n, rtol=0, atol=EXACT, err_msg="h_n")
    np.testing.assert_allclose(out.c_n, expected.c_n, rtol=0, atol=EXACT, err_msg="c_n")


@needs_autodiff
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("merge_mode", MERGE_MODES)
def test_backward_matches_reference(impl, size, merge_mode):
    params, x, (h0, c0, dh_n, dc_n) = make_case(*size)
    model = impl.build(params, merge_mode=merge_mode)
    y = model.forward(x, h0=h0, c0=c0).y
    dy = np.random.default_rng(1).standard_normal(y.shape)

    grads = model.backward(dy, dh_n=dh_n, dc_n=dc_n)
    expected = bilstm.backward(
        bilstm.forward(x, params, merge_mode=merge_mode, h0=h0, c0=c0), dy, dh_n=dh_n, dc_n=dc_n,
    )

    np.testing.assert_allclose(grads.dx, expected.dx, rtol=0, atol=EXACT, err_msg="dx")
    np.testing.assert_allclose(grads.dh0, expected.dh0, rtol=0, atol=EXACT, err_msg="dh0")
    np.testing.assert_allclose(grads.dc0, expected.dc0, rtol=0, atol=EXACT, err_msg="dc0")
    assert grads.dparams.keys() == expected.dparams.keys()
    for name, value in expected.dparams.items():
        np.testing.assert_allclose(grads.dparams[name], value, rtol=0, atol=EXACT, err_msg=name)


def test_zero_states_equal_keras_default(impl):
    params, x, _ = make_case(3, 2, 5, 4)
    model = impl.build(params, merge_mode="concat")
    x_keras = np.ascontiguousarray(np.swapaxes(x, 1, 2))

    explicit = model.forward(x).y
    default = keras_lstm.keras.ops.convert_to_numpy(model.layer(x_keras)[0])

    np.testing.assert_array_equal(explicit, np.swapaxes(default, 1, 2))


@needs_autodiff
def test_calls_keep_global_random_state(impl):
    import random

    params, x, _ = make_case(2, 3, 4, 2)
    python_before = random.getstate()
    _, numpy_key_before, numpy_position_before, *_ = np.random.get_state()

    model = impl.build(params, merge_mode="concat")
    y = model.forward(x, lengths=np.array([4, 2])).y
    model.backward(np.ones_like(y))

    _, numpy_key_after, numpy_position_after, *_ = np.random.get_state()
    assert random.getstate() == python_before
    np.testing.assert_array_equal(numpy_key_after, numpy_key_before)
    assert numpy_position_after == numpy_position_before


LENGTHS = np.array([5, 2, 0, 3])


def masked_case():
    """Return a float64 case with 4 examples, n_t = 5 and H = 3, for :data:`LENGTHS`."""
    params, x, (h0, c0, _, _) = make_case(4, 2, 5, 3)
    return params, x, h0, c0


@pytest.mark.parametrize("merge_mode", ["concat", None])
def test_mask_matches_reference_lengths(impl, merge_mode):
    params, x, h0, c0 = masked_case()
    model = impl.build(params, merge_mode=merge_mode)

    out = model.forward(x, lengths=LENGTHS, h0=h0, c0=c0)
    expected = bilstm.forward(x, params, merge_mode=merge_mode, lengths=LENGTHS, h0=h0, c0=c0)

    # 1e-6, not EXACT: Keras rounds masked float64 to float32 (see the next test).
    np.testing.assert_allclose(out.y, expected.y, rtol=0, atol=1e-6, err_msg="y")
    np.testing.assert_allclose(out.h_n, expected.h_n, rtol=0, atol=1e-6, err_msg="h_n")
    np.testing.assert_allclose(out.c_n, expected.c_n, rtol=0, atol=1e-6, err_msg="c_n")


def test_mask_padded_steps_zero(impl):
    params, x, h0, c0 = masked_case()
    model = impl.build(params, merge_mode="concat")

    y = model.forward(x, lengths=LENGTHS, h0=h0, c0=c0).y

    padded = np.arange(x.shape[-1])[None, :] >= LENGTHS[:, None]
    assert np.all(np.where(padded[:, None, :], y, 0) == 0)


def test_mask_zero_length_keeps_states(impl):
    params, x, h0, c0 = masked_case()
    model = impl.build(params, merge_mode="concat")

    out = model.forward(x, lengths=LENGTHS, h0=h0, c0=c0)

    empty = int(np.flatnonzero(LENGTHS == 0)[0])
    np.testing.assert_array_equal(out.h_n[:, empty], h0[:, empty])
    np.testing.assert_array_equal(out.c_n[:, empty], c0[:, empty])


@pytest.mark.skipif(keras_lstm.BACKEND != "torch", reason="a fact about the torch backend")
def test_masked_float64_rounds_to_float32(impl):
    params, x, h0, c0 = masked_case()
    model = impl.build(params, merge_mode="concat")
    full = np.full(len(LENGTHS), x.shape[-1])

    masked = model.forward(x, lengths=full, h0=h0, c0=c0).y
    unmasked = model.forward(x, h0=h0, c0=c0).y

    error = np.abs(masked - unmasked).max()
    assert masked.dtype == np.float64
    assert error > 1e-11
    assert error < 1e-6


@pytest.mark.parametrize("lengths", [np.array([5, 2, 6, 1]), np.array([5, 2, -1, 1]),
                                     np.array([5, 2, 3]), np.array([5.0, 2.0, 3.0, 1.0])],
                         ids=["above n_t", "negative", "wrong count", "float"])
def test_invalid_lengths_rejected(impl, lengths):
    params, x, _, _ = masked_case()
    model = impl.build(params, merge_mode="concat")

    with pytest.raises(HarnessError, match=r"^lengths=.* cannot become a Keras mask"):
        model.forward(x, lengths=lengths)


def test_h0_without_c0_rejected(impl):
    params, x, h0, _ = masked_case()
    model = impl.build(params, merge_mode="concat")

    with pytest.raises(HarnessError, match=r"^h0 is given but c0 is None"):
        model.forward(x, h0=h0)


def test_backward_before_forward_rejected(impl):
    params, x, _, _ = masked_case()
    model = impl.build(params, merge_mode="sum")

    with pytest.raises(HarnessError, match=r"^backward was called before forward"):
        model.backward(np.zeros((4, 3, 5)))


def test_forward_only_run_matches_reference(impl):
    params, x, h0, c0 = masked_case()
    model = impl.build(params, merge_mode="concat")
    x_keras, _, states = keras_lstm._keras_inputs(x, None, h0, c0, 3)

    outputs, vjp = keras_lstm._forward_only_run(model.layer, x_keras, None, states)
    out = keras_lstm._to_output(outputs, "concat")

    expected = bilstm.forward(x, params, h0=h0, c0=c0)
    np.testing.assert_allclose(out.y, expected.y, rtol=0, atol=EXACT)
    with pytest.raises(HarnessError, match=r"^backward is not supported on the Keras backend"):
        vjp([])


# Properties through the harness, a few examples each.



# gradient_final_state alone takes ~40 s at 5 examples (every loss evaluation
# runs the masked Keras loop), three times all other properties together, so it
# runs only in the full check: `bilstm-verify check --impl keras`.
SLOW_PROPERTIES = {"gradient_final_state"}
PROPERTIES = [prop.name for prop in select_properties() if prop.name not in SLOW_PROPERTIES]


@pytest.mark.parametrize("name", PROPERTIES)
def test_property_passes(impl, name):
    prop = select_properties([name])[0]
    reason = not_applicable_reason(prop, impl.capabilities)
    if reason is not None:
        pytest.skip(f"{name} is not applicable on backend {keras_lstm.BACKEND!r}: {reason}")

    result = run_property(prop, Subject(impl), profile_settings("ci", max_examples=5))

    # A known failure counts only in the case it is known for (float64 with
    # lengths), because the runner matches known failures by name alone.
    if result.verdict == KNOWN_FAILURE:
        assert name in impl.known_failures
        assert " float64 " in result.case_summary, result.message
        assert "lengths=None" not in result.case_summary, result.message
    else:
        assert result.verdict == PASSED, result.message


class FlippedBackwardHalf(KerasImplementation):
    """Keras with the backward half of a concat output reversed in time."""

    name = "keras-flipped-backward-half"
    # Empty, so that a verdict of known failure cannot stand in for the
    # planted bug, whatever Keras' own list comes to contain.
    known_failures = {}

    def build(self, params, *, merge_mode):
        model = super().build(params, merge_mode=merge_mode)
        forward = model.forward

        def flipped_forward(x, **kwargs):
            out = forward(x, **kwargs)
            hidden = out.y.shape[1] // 2
            y = out.y.copy()
            y[:, hidden:] = y[:, hidden:, ::-1]
            return Output(y, out.h_n, out.c_n)

        model.forward = flipped_forward
        return model


@pytest.mark.parametrize("name, quantity", [
    ("reference_agreement", "backward half of y"),
    ("direction_decomposition", "backward half vs a forward run over the reversed input"),
])
def test_planted_flip_caught(name, quantity):
    prop = select_properties([name])[0]
    result = run_property(prop, Subject(FlippedBackwardHalf()),
                          profile_settings("ci", max_examples=5), merge_modes=["concat"])

    assert result.verdict == FAILED
    assert quantity in result.message
