"""Tests of the gradient-check engine, with the reference BiLSTM as the oracle.

The loss of every case is ``L = sum(dy * y) + sum(dh_n * h_n) + sum(dc_n * c_n)``
with random upstream gradients, whose exact gradients ``bilstm.backward``
returns.  Planted bugs in those gradients must be caught and located by
tensor, direction, gate and time step.  The unchanged gradients must pass in
float64 and float32, with central differences and with the complex step.
"""

import doctest
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.differentiate import derivative

import bilstm
import properties.gradcheck as gradcheck
from properties.errors import UsageError
from properties.gradcheck import (
    Direction, GradientMismatch, ScalarLoss, check_gradients, describe_index,
    directional_derivative, locate_index, random_direction, stencil_noise_gain,
    tolerance_rule,
)

NAMES = ("x", *bilstm.PARAM_NAMES, "h0", "c0")


@dataclass(frozen=True)
class Case:
    """A point of the reference BiLSTM, its loss and its exact gradients."""

    loss: ScalarLoss
    point: dict
    grads: dict
    hidden_size: int
    upstream: dict
    merge_mode: str | None


def _run(point, merge_mode):
    params = {name: point[name] for name in bilstm.PARAM_NAMES}
    return bilstm.forward(point["x"], params, merge_mode=merge_mode,
                          h0=point["h0"], c0=point["c0"])


def _terms(point, upstream, merge_mode):
    """The products the loss adds up, in float64 (complex128 for a complex point)."""
    result = _run(point, merge_mode)
    pairs = ((result.y, upstream["dy"]), (result.h_n, upstream["dh_n"]),
             (result.c_n, upstream["dc_n"]))
    return [np.asarray(out, dtype=np.result_type(out, np.float64)) * up for out, up in pairs]


def reference_case(seed, dtype=np.float64, *, n_ex=2, n_in=3, n_t=4, hidden_size=2,
                   merge_mode="concat", weight_scale=0.8):
    """Draw a reference case; every tensor and upstream gradient is random."""
    rng = np.random.default_rng(seed)
    params = bilstm.init_params(n_in, hidden_size, rng=rng, scale=weight_scale)
    point = {
        "x": rng.normal(size=(n_ex, n_in, n_t)), **params,
        "h0": rng.normal(size=(2, n_ex, hidden_size)),
        "c0": rng.normal(size=(2, n_ex, hidden_size)),
    }
    point = {name: point[name].astype(dtype) for name in NAMES}

    result = _run(point, merge_mode)
    upstream = {
        "dy": rng.normal(size=result.y.shape).astype(dtype),
        "dh_n": rng.normal(size=result.h_n.shape).astype(dtype),
        "dc_n": rng.normal(size=result.c_n.shape).astype(dtype),
    }
    grads = bilstm.backward(result, upstream["dy"], dh_n=upstream["dh_n"],
                            dc_n=upstream["dc_n"])

    loss = ScalarLoss(
        value=lambda p: sum(t.sum() for t in _terms(p, upstream, merge_mode)),
        magnitude=lambda p: float(sum(np.abs(t).sum() for t in _terms(p, upstream, merge_mode))),
    )
    analytic = {"x": grads.dx, **grads.dparams, "h0": grads.dh0, "c0": grads.dc0}
    return Case(loss, point, analytic, hidden_size, upstream, merge_mode)


def random_sizes(rng):
    """Draw small sizes, n_t up to 7 so that float32 cases stay fast."""
    return {
        "n_ex": int(rng.integers(1, 4)), "n_in": int(rng.integers(1, 5)),
        "n_t": int(rng.integers(1, 8)), "hidden_size": int(rng.integers(1, 5)),
        "merge_mode": ("concat", "sum", "average", "multiply", None)[int(rng.integers(5))],
    }


def with_bug(grads, name, change):
    """Return a copy of ``grads`` with ``change`` applied to a copy of one gradient."""
    planted = dict(grads)
    planted[name] = change(np.array(grads[name]))
    return planted


def scaled(factor):
    def change(grad):
        return (grad * factor).astype(grad.dtype)
    return change


def zero_gate(gate, hidden_size):
    def change(grad):
        block = slice(gate * hidden_size, (gate + 1) * hidden_size)
        grad[..., block] = 0
        return grad
    return change


# ---------------------------------------------------------------------------
# The correct reference passes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reference_passes_projection(dtype):
    rng = np.random.default_rng(7)
    for seed in range(30):
        case = reference_case(seed, dtype, **random_sizes(rng))
        report = check_gradients(case.loss, case.point, case.grads, rng=seed)
        assert report.ok, f"seed {seed}:\n{report}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reference_passes_full(dtype):
    rng = np.random.default_rng(8)
    for seed in range(3):
        case = reference_case(100 + seed, dtype, **random_sizes(rng))
        report = check_gradients(case.loss, case.point, case.grads, mode="full")
        assert report.ok, f"seed {100 + seed}:\n{report}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reference_passes_complex_step(dtype):
    rng = np.random.default_rng(9)
    for seed in range(10):
        case = reference_case(200 + seed, dtype, **random_sizes(rng))
        report = check_gradients(case.loss, case.point, case.grads, method="complex-step")
        assert report.ok, f"seed {200 + seed}:\n{report}"


@pytest.mark.parametrize("weight_scale", [1e-3, 5.0], ids=["small", "saturating"])
def test_reference_passes_weight_scales(weight_scale):
    rng = np.random.default_rng(10)
    for seed in range(8):
        sizes = random_sizes(rng) | {"weight_scale": weight_scale}
        for dtype, method in ((np.float32, "central"), (np.float64, "complex-step")):
            case = reference_case(250 + seed, dtype, **sizes)
            report = check_gradients(case.loss, case.point, case.grads, method=method)
            assert report.ok, f"seed {250 + seed}:\n{report}"


def test_reference_full_complex_step():
    case = reference_case(300)
    report = check_gradients(case.loss, case.point, case.grads, mode="full",
                             method="complex-step")
    assert report.ok, str(report)


def test_reference_longer_sequence():
    case = reference_case(301, n_ex=3, n_in=4, n_t=40, hidden_size=6)
    report = check_gradients(case.loss, case.point, case.grads)
    assert report.ok, str(report)


# ---------------------------------------------------------------------------
# Planted bugs are caught and located
# ---------------------------------------------------------------------------

def test_scaled_recurrent_weights_caught():
    case = reference_case(1)
    grads = with_bug(case.grads, "W_hh_bwd", scaled(1 + 1e-5))
    report = check_gradients(case.loss, case.point, grads)

    assert not report.ok
    assert [m.name for m in report.failures] == ["W_hh_bwd"]
    assert report.failures[0].location["direction"] == "backward"
    assert report.failures[0].check == "entry"
    assert report.failures[0].rel_error == pytest.approx(1e-5, rel=1e-3)


@pytest.mark.parametrize("gate", range(4))
def test_zeroed_gate_block_located(gate):
    case = reference_case(2)
    grads = with_bug(case.grads, "W_ih_fwd", zero_gate(gate, case.hidden_size))
    report = check_gradients(case.loss, case.point, grads)

    assert [m.name for m in report.failures] == ["W_ih_fwd"]
    mismatch = report.failures[0]
    assert mismatch.location["direction"] == "forward"
    assert mismatch.location["gate"] == bilstm.GATES[gate]
    assert mismatch.analytic == 0.0
    assert mismatch.n_failed <= case.point["W_ih_fwd"].shape[0] * case.hidden_size


def test_zeroed_bias_gate_located():
    case = reference_case(3)
    grads = with_bug(case.grads, "b_bwd", zero_gate(3, case.hidden_size))
    mismatch = check_gradients(case.loss, case.point, grads).failures[0]

    assert mismatch.name == "b_bwd"
    assert mismatch.location["gate"] == "o"
    assert mismatch.location["direction"] == "backward"


def test_shifted_dx_caught():
    case = reference_case(4, n_t=5)
    grads = with_bug(case.grads, "x", lambda dx: np.roll(dx, 1, axis=2))
    report = check_gradients(case.loss, case.point, grads)

    assert [m.name for m in report.failures] == ["x"]
    assert report.failures[0].n_failed > 1


def test_one_time_step_located():
    case = reference_case(5, n_t=6)

    def corrupt_step(dx):
        dx[:, :, 3] *= 1.001
        return dx

    report = check_gradients(case.loss, case.point, with_bug(case.grads, "x", corrupt_step))
    mismatch = report.failures[0]
    assert mismatch.name == "x"
    assert mismatch.location["time_step"] == 3
    assert mismatch.n_failed == case.point["x"].shape[0] * case.point["x"].shape[1]


def test_one_initial_state_unit_located():
    case = reference_case(6, hidden_size=3)

    def corrupt_unit(dc0):
        dc0[1, 0, 2] += 0.01
        return dc0

    report = check_gradients(case.loss, case.point, with_bug(case.grads, "c0", corrupt_unit))
    mismatch = report.failures[0]
    assert mismatch.index == (1, 0, 2)
    assert mismatch.location == {"direction": "backward", "example": 0, "unit": 2}
    assert mismatch.n_failed == 1


def test_swapped_directions_caught():
    case = reference_case(7)
    grads = dict(case.grads)
    grads["W_hh_fwd"], grads["W_hh_bwd"] = case.grads["W_hh_bwd"], case.grads["W_hh_fwd"]
    report = check_gradients(case.loss, case.point, grads)

    assert sorted(m.name for m in report.failures) == ["W_hh_bwd", "W_hh_fwd"]


def test_missing_dh0_reported():
    case = reference_case(8)
    grads = {name: g for name, g in case.grads.items() if name != "h0"}
    report = check_gradients(case.loss, case.point, grads)

    assert report.missing == ["h0"]
    assert not report.complete
    assert report.ok
    assert "h0         missing" in str(report)


def test_nan_gradient_caught():
    case = reference_case(9)
    grads = with_bug(case.grads, "b_fwd", lambda b: np.where(np.arange(b.size) == 5, np.nan, b))
    mismatch = check_gradients(case.loss, case.point, grads).failures[0]

    assert mismatch.index == (5,)
    assert np.isnan(mismatch.analytic)


def test_full_mode_locates_entry():
    case = reference_case(10)

    def corrupt_entry(w):
        w[1, 5] *= 1 + 1e-6
        return w

    report = check_gradients(case.loss, case.point, with_bug(case.grads, "W_hh_bwd", corrupt_entry),
                             mode="full")
    mismatch = report.failures[0]
    assert mismatch.index == (1, 5)
    assert mismatch.description == (
        "backward direction's recurrent weights W_hh_bwd[1, 5] (gate g, unit 1, from hidden unit 1)"
    )


def test_float32_catches_one_percent():
    rng = np.random.default_rng(11)
    for seed in range(10):
        case = reference_case(400 + seed, np.float32, **random_sizes(rng))
        grads = with_bug(case.grads, "W_hh_bwd", scaled(1.01))
        report = check_gradients(case.loss, case.point, grads, rng=seed)
        assert [m.name for m in report.failures] == ["W_hh_bwd"], f"seed {400 + seed}"


def test_float64_catches_1e9_relative():
    for seed in range(10):
        case = reference_case(500 + seed)
        for name in ("x", "W_ih_bwd", "b_fwd", "h0"):
            grads = with_bug(case.grads, name, scaled(1 + 1e-9))
            report = check_gradients(case.loss, case.point, {name: grads[name]}, rng=seed)
            assert not report.ok, f"seed {500 + seed}, {name}"


def test_complex_step_catches_1e11_relative():
    for seed in range(5):
        case = reference_case(600 + seed)
        grads = with_bug(case.grads, "W_hh_fwd", scaled(1 + 1e-11))
        report = check_gradients(case.loss, case.point, {"W_hh_fwd": grads["W_hh_fwd"]},
                                 method="complex-step", rng=seed)
        assert not report.ok, f"seed {600 + seed}"


def test_float32_three_projections():
    # One projection misses the bug in this case because its direction is
    # nearly orthogonal to the gradient of W_hh_bwd.
    rng = np.random.default_rng(123)
    sizes = [random_sizes(rng) for _ in range(28)][-1]
    case = reference_case(2027, np.float32, **sizes)
    grads = {"W_hh_bwd": with_bug(case.grads, "W_hh_bwd", scaled(1.01))["W_hh_bwd"]}
    one_projection = check_gradients(case.loss, case.point, grads, rng=27)
    three_projections = check_gradients(case.loss, case.point, grads, rng=27, projections=3)

    assert one_projection.ok
    assert [m.name for m in three_projections.failures] == ["W_hh_bwd"]


def test_projections_counted():
    case = reference_case(16)
    report = check_gradients(case.loss, case.point, case.grads, projections=3)
    assert report.ok
    assert [r.n_checked for r in report.results] == [3] * len(NAMES)


def test_projection_only_failure():
    case = reference_case(12, n_in=5, hidden_size=4)

    # With max_entries=1 the entry check samples one entry; the seed makes
    # it one other than the corrupted entry 0, so no single entry fails.
    grads = with_bug(case.grads, "W_ih_bwd", lambda w: w + np.eye(1, w.size).reshape(w.shape))
    report = check_gradients(case.loss, case.point, grads, rng=0, max_entries=1)
    mismatch = report.failures[0]

    assert mismatch.check == "projection"
    assert mismatch.n_checked == 1
    assert mismatch.n_failed == 0
    assert "random sample of 1 entries" in mismatch.note
    assert "no single entry failed" in str(mismatch)


# ---------------------------------------------------------------------------
# Numerical derivatives
# ---------------------------------------------------------------------------

def test_directional_derivative_exp():
    v = np.array([0.6, 0.8])
    d = directional_derivative(lambda p: float(np.exp(p["x"]).sum()), {"x": np.zeros(2)}, {"x": v})

    assert abs(d.value[0] - 1.4) < 1e-12
    assert d.error[0] < 1e-9
    assert d.method == "central"


def test_directional_derivative_float32():
    point = {"x": np.array([0.3, -0.2], dtype=np.float32)}
    v = np.array([1.0, 0.0])
    d = directional_derivative(lambda p: float(np.sin(p["x"]).sum()), point, {"x": v})

    assert abs(d.value[0] - np.cos(0.3)) < 1e-5
    assert d.step[0] >= gradcheck.STEP_SETTINGS[np.dtype(np.float32)].initial_step / 16


def test_directional_derivative_complex_step():
    v = np.array([0.6, 0.8])
    d = directional_derivative(lambda p: complex(np.exp(p["x"]).sum()), {"x": np.full(2, 0.5)},
                               {"x": v}, method="complex-step")

    assert abs(d.value[0] - 1.4 * np.exp(0.5)) < 4 * np.finfo(float).eps
    assert d.error[0] == 0.0


def test_stencil_noise_gain_order_4():
    # f'(0) ~ (-(f(1) - f(-1)) / 6 + 4 (f(1/2) - f(-1/2)) / 3): sum |w| = 3.
    assert stencil_noise_gain(4, 2.0) == pytest.approx(3.0)


def test_stencil_noise_gain_matches_scipy():
    # An odd function that is 1 at one abscissa s = 2**-k and 0 at the others
    # makes scipy return 2 w_k (step 1), so scipy itself gives every weight.
    weights = []
    for k in range(4):
        def spike(s, k=k):
            return np.sign(s) * (np.abs(s) == 2.0 ** -k)
        weights.append(derivative(spike, 0.0, order=8, initial_step=1.0, maxiter=1).df / 2)
    assert stencil_noise_gain(8, 2.0) == pytest.approx(2 * np.sum(np.abs(weights)))


def test_batched_loss_used():
    case = reference_case(13)
    calls = []

    def batched(stacked):
        calls.append(len(stacked["x"]))
        points = [{name: a[m] for name, a in stacked.items()} for m in range(len(stacked["x"]))]
        return np.array([case.loss.value(p) for p in points])

    loss = ScalarLoss(case.loss.value, batched=batched, magnitude=case.loss.magnitude)
    looped = check_gradients(case.loss, case.point, case.grads, rng=3)
    vectorised = check_gradients(loss, case.point, case.grads, rng=3)

    assert vectorised.ok
    assert str(vectorised) == str(looped)
    assert max(calls) == 8 * len(NAMES)


def test_random_direction_unit_norm():
    v = random_direction(np.random.default_rng(0), "W_hh_fwd", (3, 12)).values
    assert np.linalg.norm(v) == pytest.approx(1.0)
    assert v.shape == (3, 12)
    assert np.unique(np.sign(v)).size == 2
    assert np.ptp(np.abs(v)) > 0


def test_random_direction_reproducible():
    first = random_direction(np.random.default_rng(5), "x", (2, 3, 4)).values
    second = random_direction(np.random.default_rng(5), "x", (2, 3, 4)).values
    assert np.array_equal(first, second)


def test_direction_basis_moves_one_entry():
    moved = Direction.basis("b_fwd", 2).moved(np.zeros(4, dtype=np.float32), 0.5)
    assert moved.tolist() == [0.0, 0.0, 0.5, 0.0]
    assert moved.dtype == np.float64


# ---------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------

def test_tolerance_rule_eps():
    rule = tolerance_rule(np.float32, np.float64, "central")
    assert rule.loss_eps == np.finfo(np.float32).eps
    assert rule.gradient_eps == np.finfo(np.float64).eps


def test_tolerance_bound_sums_parts():
    rule = tolerance_rule(np.float64, np.float64, "central")
    scales = (1e-12, 100.0, 10.0, 2.0, 3.0)
    k_e, numeric, analytic = rule.parts(*scales)

    assert k_e == 4 * 1e-12
    assert numeric == pytest.approx(100 * rule.loss_eps * (2 * 10 + 2))
    assert analytic == pytest.approx(32 * rule.gradient_eps * 3)
    assert rule.bound(*scales) == k_e + numeric + analytic


def test_derivation_reports_gradient_scale():
    case = reference_case(17)
    grads = with_bug(case.grads, "c0", scaled(2.0))
    mismatch = check_gradients(case.loss, case.point, grads, rng=1).failures[0]

    norm_all = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
    expected = np.linalg.norm(grads["c0"]) + norm_all
    line = next(x for x in mismatch.derivation.splitlines() if "r_an = c_g eps_g D" in x)
    reported = float(line.split(" * ")[2].split(":")[0])
    assert reported == pytest.approx(expected, rel=1e-3)


def test_tolerance_complex_step_no_gain():
    rule = tolerance_rule(np.complex128, np.float64, "complex-step")
    _, numeric, _ = rule.parts(0.0, 0.0, 1e6, 1e6, 2.0)
    assert numeric == pytest.approx(32 * np.finfo(float).eps * 2)


def test_tolerance_derivation_names_constants():
    text = tolerance_rule(np.float32, np.float32, "central").derivation(1e-6, 24.0, 10.0, 1.0, 2.0)
    for name, (value, reason) in gradcheck.TOLERANCE_CONSTANTS.items():
        assert f"{name} = {value:g}: {reason}" in text
    assert "G eps_f (c_L F + A) = 24 * 1.19e-07" in text


def test_rounding_constants_cover_reference():
    """c_L and c_g bound the float32 reference's rounding, measured against float64."""
    c_loss = gradcheck.TOLERANCE_CONSTANTS["c_L"][0]
    c_grad = gradcheck.TOLERANCE_CONSTANTS["c_g"][0]
    eps = np.finfo(np.float32).eps
    rng = np.random.default_rng(14)

    for seed in range(20):
        sizes = random_sizes(rng) | {"n_t": int(rng.integers(1, 30))}
        single = reference_case(700 + seed, np.float32, **sizes)
        point64 = {name: a.astype(np.float64) for name, a in single.point.items()}
        loss_error = abs(single.loss.value(single.point) - single.loss.value(point64))
        assert loss_error <= c_loss * eps * single.loss.magnitude(point64), f"seed {700 + seed}"

    # The float64 gradients of the same rounded inputs are the reference here,
    # and D = ||g_t|| + ||g|| as in the tolerance.
    for seed in range(20):
        single = reference_case(800 + seed, np.float32, **random_sizes(rng))
        double = _double_gradients(single)
        norm_all = np.sqrt(sum(np.sum(g ** 2) for g in double.values()))
        for name in NAMES:
            error = np.max(np.abs(single.grads[name] - double[name]), initial=0.0)
            scale = np.linalg.norm(double[name]) + norm_all
            assert error <= c_grad * eps * scale, f"seed {800 + seed}, {name}"


def _double_gradients(case):
    """Recompute a float32 case's gradients in float64 from the same float32 values."""
    point = {name: a.astype(np.float64) for name, a in case.point.items()}
    up = {name: a.astype(np.float64) for name, a in case.upstream.items()}
    result = _run(point, case.merge_mode)
    grads = bilstm.backward(result, up["dy"], dh_n=up["dh_n"], dc_n=up["dc_n"])
    return {"x": grads.dx, **grads.dparams, "h0": grads.dh0, "c0": grads.dc0}


# ---------------------------------------------------------------------------
# Locating entries and reading reports
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "index", "shape", "expected"), [
    ("x", (1, 2, 3), (2, 3, 5), "input x[1, 2, 3] (example 1, feature 2, time step 3)"),
    ("W_ih_fwd", (2, 5), (3, 16),
     "forward direction's input weights W_ih_fwd[2, 5] (gate f, unit 1, from input feature 2)"),
    ("W_hh_bwd", (1, 5), (4, 16),
     "backward direction's recurrent weights W_hh_bwd[1, 5] (gate f, unit 1, from hidden unit 1)"),
    ("b_bwd", (15,), (16,), "backward direction's bias b_bwd[15] (gate o, unit 3)"),
    ("h0", (1, 0, 3), (2, 2, 4),
     "initial hidden state h0[1, 0, 3] (backward direction, example 0, unit 3)"),
    ("c0", (0, 1, 2), (2, 2, 4),
     "initial cell state c0[0, 1, 2] (forward direction, example 1, unit 2)"),
    ("gamma", (1,), (3,), "tensor gamma[1]"),
], ids=lambda v: str(v) if isinstance(v, str) else None)
def test_describe_index(name, index, shape, expected):
    assert describe_index(name, index, shape) == expected


def test_locate_index_flat():
    location = locate_index("W_ih_bwd", 2 * 8 + 6, (3, 8))
    assert location == {"direction": "backward", "gate": "o", "unit": 0, "from_feature": 2}


def test_locate_index_x_time_step():
    assert locate_index("x", 4 * 7 + 6, (2, 4, 7))["time_step"] == 6


def test_mismatch_str():
    mismatch = GradientMismatch(
        name="W_hh_bwd", description="backward direction's recurrent weights W_hh_bwd[1, 5]",
        index=(1, 5), location={}, analytic=1.25, numeric=1.0, abs_error=0.25,
        rel_error=0.2, tolerance=1e-9, derivation="tolerance k e + r_num + r_an = 1e-09",
        n_failed=3, n_checked=32,
    )
    text = str(mismatch)

    assert text.splitlines()[0] == (
        "gradient of W_hh_bwd is wrong (worst entry: backward direction's recurrent "
        "weights W_hh_bwd[1, 5])"
    )
    assert "analytic  1.25" in text
    assert "numeric   1.0" in text
    assert "abs error 0.25, rel error 0.2, tolerance 1e-09" in text
    assert "3 of 32 checked entries" in text
    assert "  tolerance k e + r_num + r_an = 1e-09" in text


def test_report_str_lists_tensors():
    case = reference_case(15)
    grads = with_bug(case.grads, "c0", scaled(2.0))
    text = str(check_gradients(case.loss, case.point, grads, rng=4))

    assert text.startswith("gradient check, mode='projection', method='central', dtype=float64: "
                           "1 failed, 0 missing (rng=4)")
    assert "  c0         failed" in text
    assert "  x          passed (1 checks)" in text
    assert "gradient of c0 is wrong" in text


def test_module_doctests():
    failures, tried = doctest.testmod(gradcheck)
    assert tried > 0
    assert failures == 0


# ---------------------------------------------------------------------------
# Invalid arguments
# ---------------------------------------------------------------------------

def _point():
    return {"w": np.array([0.5, -1.0])}


def _loss(point):
    # .real keeps the value real for a complex point too, which the
    # complex-step check must reject.
    return float(np.sum(np.sin(point["w"])).real)


@pytest.mark.parametrize(("kwargs", "match"), [
    pytest.param({"loss": 3}, r"loss must be a callable .* got int", id="loss=3"),
    pytest.param({"point": [1.0]}, r"point must be a non-empty dict .* got list", id="point=list"),
    pytest.param({"point": {}}, r"point must be a non-empty dict", id="point={}"),
    pytest.param({"point": {"w": np.array([1, 2])}},
                 r"point has dtypes \{w: int64\} but every tensor", id="point=int"),
    pytest.param({"point": {"w": np.zeros(2), "v": np.zeros(2, np.float32)}},
                 r"w: float64, v: float32.*same dtype", id="point=mixed dtypes"),
    pytest.param({"point": {"w": np.array([np.nan, 0.0])}},
                 r"point\['w'\] contains NaN or inf", id="point=nan"),
    pytest.param({"grads": [np.zeros(2)]}, r"grads must be a dict .* got list", id="grads=list"),
    pytest.param({"grads": {"v": np.zeros(2)}},
                 r"grads has names \['v'\] that are not in the point \['w'\]",
                 id="grads=unknown name"),
    pytest.param({"grads": {"w": np.zeros(3)}},
                 r"grads\['w'\] has shape \(3,\) .* must be a float array of shape \(2,\)",
                 id="grads=wrong shape"),
    pytest.param({"grads": {"w": np.zeros(2, complex)}},
                 r"dtype complex128 but must be a float array", id="grads=complex"),
    pytest.param({"mode": "fast"}, r"mode='fast' is not valid; use one of 'projection', 'full'",
                 id="mode=fast"),
    pytest.param({"method": "forward"},
                 r"method='forward' is not valid; use one of 'central', 'complex-step'",
                 id="method=forward"),
    pytest.param({"rng": -1}, r"rng=-1 is not valid; pass a numpy.random.Generator", id="rng=-1"),
    pytest.param({"rng": "seed"}, r"rng='seed' is not valid", id="rng=str"),
    pytest.param({"max_entries": 0}, r"max_entries=0 is not valid; pass a positive int",
                 id="max_entries=0"),
    pytest.param({"max_entries": True}, r"max_entries=True is not valid", id="max_entries=True"),
    pytest.param({"projections": 0}, r"projections=0 is not valid; pass a positive int",
                 id="projections=0"),
    pytest.param({"method": "complex-step"},
                 r"loss returned the real value .* for a complex point",
                 id="complex-step real loss"),
    pytest.param({"loss": lambda p: complex(p["w"][0])}, r"loss returned a complex value",
                 id="central complex loss"),
    pytest.param({"loss": lambda p: p["w"]},
                 r"loss returned values of shape \(2,\); it must return a scalar", id="loss=array"),
    pytest.param({"loss": ScalarLoss(_loss, batched=lambda s: np.zeros(1),
                                     magnitude=lambda p: 1.0)},
                 r"batched loss returned shape \(1,\) for \d+ points", id="batched wrong shape"),
])
def test_check_gradients_rejects(kwargs, match):
    arguments = {"loss": _loss, "point": _point(), "grads": {"w": np.cos(_point()["w"])}} | kwargs
    with pytest.raises(UsageError, match=match):
        check_gradients(arguments.pop("loss"), arguments.pop("point"), arguments.pop("grads"),
                        **arguments)


@pytest.mark.parametrize(("direction", "match"), [
    ([1.0, 0.0], r"direction must be a dict of tensor name -> array, got list"),
    ({"w": np.ones(2), "v": np.ones(2)}, r"direction names \['v', 'w'\] but must name exactly one"),
    ({"v": np.ones(2)}, r"direction names \['v'\] but must name exactly one tensor"),
    ({"w": np.ones(3)}, r"direction\['w'\] has shape \(3,\) but point\['w'\] has shape \(2,\)"),
], ids=["list", "two tensors", "unknown tensor", "wrong shape"])
def test_directional_derivative_rejects(direction, match):
    with pytest.raises(UsageError, match=match):
        directional_derivative(_loss, _point(), direction)


def test_tolerance_rule_rejects_method():
    with pytest.raises(UsageError, match=r"method='richardson' is not valid"):
        tolerance_rule(np.float64, np.float64, "richardson")
