"""Agreement of bilstm.forward and bilstm.backward with torch.nn.LSTM in float64.

Both run on the same weights.  Outputs, final states and every gradient (x,
all parameters of both directions, h0 and c0) must agree to 1e-12.  The
upstream gradients of y, h_n and c_n are random, so a swapped half or a
missing term cannot cancel.

The torch weights are built here by plain transposes rather than with
:mod:`bilstm.convert`, so that this test does not depend on the converters.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bilstm

torch = pytest.importorskip("torch")

# Both sides compute the same float64 expressions in another summation order,
# which at these sizes costs a few ulps of values of order 1.  300 random cases
# gave at most 1.8e-15.
ATOL = 1e-12

AGREEMENT_SETTINGS = settings(max_examples=20, deadline=None)

MAX_SIZE = 4

QUANTITIES = (
    "y", "h_n", "c_n", "dx", "dh0", "dc0",
    *(f"d{name}" for name in bilstm.PARAM_NAMES),
)


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

@st.composite
def cases(draw, *, max_size=MAX_SIZE, lengths=False):
    """Draw sizes, one seed for all arrays, and optionally lengths in [1, n_t].

    Shrinks towards all sizes 1, seed 0 and full lengths.
    """
    n_ex, n_in, hidden_size, n_t = (draw(st.integers(1, max_size), label=name)
                                    for name in ("n_ex", "n_in", "H", "n_t"))
    case = {
        "n_ex": n_ex, "n_in": n_in, "hidden_size": hidden_size, "n_t": n_t,
        "seed": draw(st.integers(0, 2**32 - 1), label="seed"),
        "lengths": None,
    }
    if lengths:
        case["lengths"] = draw(st.lists(st.integers(1, n_t), min_size=n_ex, max_size=n_ex),
                               label="lengths")
    return case


def make_arrays(case, merge_mode, *, initial_states=True):
    """Draw parameters, input, initial states and upstream gradients for a case.

    Every array is random and non-zero, biases included, so no term of any
    gradient vanishes.  The exception is h0 and c0 with ``initial_states=False``,
    which are zeros like torch's default.
    """
    rng = np.random.default_rng(case["seed"])
    n_ex, n_in, hidden_size, n_t = (case[k] for k in ("n_ex", "n_in", "hidden_size", "n_t"))
    state_shape = (2, n_ex, hidden_size)

    arrays = {
        "params": bilstm.init_params(n_in, hidden_size, rng=rng, scale=0.8),
        "x": rng.standard_normal((n_ex, n_in, n_t)),
        "h0": rng.standard_normal(state_shape) if initial_states else np.zeros(state_shape),
        "c0": rng.standard_normal(state_shape) if initial_states else np.zeros(state_shape),
        "dh_n": rng.standard_normal(state_shape),
        "dc_n": rng.standard_normal(state_shape),
    }
    arrays["dy"] = rng.standard_normal(bilstm.output_shape(n_ex, hidden_size, n_t, merge_mode))
    return arrays


# ---------------------------------------------------------------------------
# The two sides
# ---------------------------------------------------------------------------

def run_reference(arrays, merge_mode, lengths):
    """Return every compared quantity from bilstm.forward and bilstm.backward."""
    result = bilstm.forward(
        arrays["x"], arrays["params"], merge_mode=merge_mode, lengths=lengths,
        h0=arrays["h0"], c0=arrays["c0"],
    )
    grads = bilstm.backward(result, arrays["dy"], dh_n=arrays["dh_n"], dc_n=arrays["dc_n"])

    quantities = {
        "y": result.y, "h_n": result.h_n, "c_n": result.c_n,
        "dx": grads.dx, "dh0": grads.dh0, "dc0": grads.dc0,
    }
    for name, grad in grads.dparams.items():
        quantities[f"d{name}"] = grad
    return quantities


def torch_lstm(params):
    """Build a float64 bidirectional nn.LSTM with the reference weights.

    The reference bias goes to ``bias_ih`` and ``bias_hh`` is zero, so the
    sum torch uses is the reference bias.
    """
    n_in, gates = params["W_ih_fwd"].shape
    lstm = torch.nn.LSTM(n_in, gates // 4, bidirectional=True, dtype=torch.float64)

    with torch.no_grad():
        for direction, suffix in (("fwd", ""), ("bwd", "_reverse")):
            w_ih = torch.from_numpy(params[f"W_ih_{direction}"].T)
            w_hh = torch.from_numpy(params[f"W_hh_{direction}"].T)
            getattr(lstm, f"weight_ih_l0{suffix}").copy_(w_ih)
            getattr(lstm, f"weight_hh_l0{suffix}").copy_(w_hh)
            getattr(lstm, f"bias_ih_l0{suffix}").copy_(torch.from_numpy(params[f"b_{direction}"]))
            getattr(lstm, f"bias_hh_l0{suffix}").zero_()
    return lstm


def merge_torch_output(y, hidden_size, merge_mode):
    """Merge torch's concatenated (n_t, n_ex, 2H) output into the reference's layout.

    Returns (n_ex, width, n_t), or (2, n_ex, H, n_t) for ``None``.
    """
    h_fwd, h_bwd = y[..., :hidden_size], y[..., hidden_size:]

    if merge_mode == "concat":
        merged = y
    elif merge_mode == "sum":
        merged = h_fwd + h_bwd
    elif merge_mode == "average":
        merged = (h_fwd + h_bwd) / 2
    elif merge_mode == "multiply":
        merged = h_fwd * h_bwd
    else:
        return torch.stack([h_fwd, h_bwd]).permute(0, 2, 3, 1)
    return merged.permute(1, 2, 0)


def run_torch(arrays, merge_mode, lengths):
    """Return every compared quantity from torch's forward pass and autograd."""
    params = arrays["params"]
    hidden_size = params["W_hh_fwd"].shape[0]
    n_t = arrays["x"].shape[2]
    lstm = torch_lstm(params)

    x = torch.from_numpy(bilstm.to_time_major(arrays["x"])).requires_grad_()
    h0 = torch.from_numpy(arrays["h0"]).requires_grad_()
    c0 = torch.from_numpy(arrays["c0"]).requires_grad_()

    if lengths is None:
        y, (h_n, c_n) = lstm(x, (h0, c0))
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.tensor(lengths), enforce_sorted=False,
        )
        packed_y, (h_n, c_n) = lstm(packed, (h0, c0))
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_y, total_length=n_t)

    merged = merge_torch_output(y, hidden_size, merge_mode)
    loss = (
        (merged * torch.from_numpy(arrays["dy"])).sum()
        + (h_n * torch.from_numpy(arrays["dh_n"])).sum()
        + (c_n * torch.from_numpy(arrays["dc_n"])).sum()
    )
    loss.backward()

    quantities = {
        "y": merged.detach().numpy(), "h_n": h_n.detach().numpy(), "c_n": c_n.detach().numpy(),
        "dx": bilstm.from_time_major(x.grad.numpy()),
        "dh0": h0.grad.numpy(), "dc0": c0.grad.numpy(),
    }
    for direction, suffix in (("fwd", ""), ("bwd", "_reverse")):
        quantities[f"dW_ih_{direction}"] = getattr(lstm, f"weight_ih_l0{suffix}").grad.numpy().T
        quantities[f"dW_hh_{direction}"] = getattr(lstm, f"weight_hh_l0{suffix}").grad.numpy().T
        quantities[f"db_{direction}"] = getattr(lstm, f"bias_ih_l0{suffix}").grad.numpy()
        # The two torch biases enter the same sum, so their gradients agree.
        quantities[f"db_hh_{direction}"] = getattr(lstm, f"bias_hh_l0{suffix}").grad.numpy()
    return quantities


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------

def assert_agree(reference, torch_side, case, merge_mode):
    """Assert every quantity within ATOL, naming the quantity, its worst index and the case."""
    where = f"case {case}, merge_mode={merge_mode!r}"

    for name in QUANTITIES:
        actual, expected = reference[name], torch_side[name]
        assert actual.shape == expected.shape, (
            f"{name}: reference shape {actual.shape}, torch shape {expected.shape}; {where}"
        )
        error = np.abs(actual - expected)
        worst = np.unravel_index(np.argmax(error), error.shape) if error.size else ()
        assert error.size == 0 or error[worst] <= ATOL, (
            f"{name}: max abs difference {error[worst]:.3e} > {ATOL:.0e} at index {worst}, "
            f"reference {actual[worst]!r}, torch {expected[worst]!r}; {where}"
        )

    for direction in ("fwd", "bwd"):
        torch_hh = torch_side[f"db_hh_{direction}"]
        error = float(np.max(np.abs(reference[f"db_{direction}"] - torch_hh)))
        assert error <= ATOL, f"db_{direction} vs torch bias_hh grad: {error:.3e}; {where}"


def check_case(case, merge_mode, *, initial_states=True):
    arrays = make_arrays(case, merge_mode, initial_states=initial_states)
    reference = run_reference(arrays, merge_mode, case["lengths"])
    torch_side = run_torch(arrays, merge_mode, case["lengths"])
    assert_agree(reference, torch_side, case, merge_mode)


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

@AGREEMENT_SETTINGS
@given(case=cases(), initial_states=st.booleans())
def test_concat_agrees_with_torch(case, initial_states):
    check_case(case, "concat", initial_states=initial_states)


@pytest.mark.parametrize("merge_mode", ["sum", "average", "multiply", None])
@AGREEMENT_SETTINGS
@given(case=cases())
def test_merge_mode_agrees_with_torch(merge_mode, case):
    check_case(case, merge_mode)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "average", "multiply", None])
@AGREEMENT_SETTINGS
@given(case=cases(lengths=True))
def test_lengths_agree_with_torch(merge_mode, case):
    check_case(case, merge_mode)


def test_unsorted_lengths_agree_with_torch():
    # Fixed unsorted lengths with a full and a length-1 example, so that
    # torch's sorting and unsorting of the batch is always exercised.
    case = {"n_ex": 4, "n_in": 3, "hidden_size": 2, "n_t": 5, "seed": 11, "lengths": [2, 5, 1, 3]}
    check_case(case, "concat")


def test_zero_length_matches_torch_on_rest():
    # torch rejects length 0, so run it on the other examples only.  A
    # zero-length example must not change the others, must output zeros,
    # keep its initial states and pass dh_n and dc_n through to dh0 and dc0.
    case = {"n_ex": 3, "n_in": 2, "hidden_size": 3, "n_t": 4, "seed": 12, "lengths": [3, 0, 4]}
    arrays = make_arrays(case, "concat")
    reference = run_reference(arrays, "concat", case["lengths"])

    rest = [0, 2]
    rest_arrays = dict(arrays)
    rest_arrays["x"] = arrays["x"][rest]
    rest_arrays["dy"] = arrays["dy"][rest]
    for name in ("h0", "c0", "dh_n", "dc_n"):
        rest_arrays[name] = arrays[name][:, rest]
    torch_side = run_torch(rest_arrays, "concat", [3, 4])

    for name in ("y", "dx"):
        assert np.max(np.abs(reference[name][rest] - torch_side[name])) <= ATOL, name
    for name in ("h_n", "c_n", "dh0", "dc0"):
        assert np.max(np.abs(reference[name][:, rest] - torch_side[name])) <= ATOL, name
    # The weight gradients get nothing from the zero-length example.
    for name in bilstm.PARAM_NAMES:
        assert np.max(np.abs(reference[f"d{name}"] - torch_side[f"d{name}"])) <= ATOL, name

    assert np.all(reference["y"][1] == 0)
    assert np.all(reference["dx"][1] == 0)
    assert np.array_equal(reference["h_n"][:, 1], arrays["h0"][:, 1])
    assert np.array_equal(reference["c_n"][:, 1], arrays["c0"][:, 1])
    assert np.array_equal(reference["dh0"][:, 1], arrays["dh_n"][:, 1])
    assert np.array_equal(reference["dc0"][:, 1], arrays["dc_n"][:, 1])
