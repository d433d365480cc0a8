"""Smoke tests of benchmarks/bench_sensitivity.py on a tiny budget, so the benchmark cannot rot."""

import json

import numpy as np
import pytest

import bilstm
from benchmark_loader import load_benchmark



@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_sensitivity")


def _error(bench, kind, delta, shape, target="x"):
    return bench.PlantedError(target, kind, delta, bench.noise_unit(0, 0, shape))


def _trial_case(bench, rank=0):
    """Return the ``rank``-th case of seed 0 with typical weights, with every optional array.

    Typical weights keep every gradient of order 1, where an absolute
    tolerance such as gradcheck's atol cannot hide a planted error.
    """
    typical = (index for index in range(100)
               if bench.draw_case(0, index)[0].weight_scale == "typical")
    for _ in range(rank):
        next(typical)
    case, spare = bench.draw_case(0, next(typical))
    return bench.case_for_property(case, spare, "gradient_final_state")


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

def test_draw_case_repeats(bench):
    first, _ = bench.draw_case(3, 5)
    second, _ = bench.draw_case(3, 5)
    assert first.summary() == second.summary()
    assert np.array_equal(first.x, second.x)
    assert np.array_equal(first.dy, second.dy)


def test_draw_case_index_changes_case(bench):
    first, _ = bench.draw_case(0, 0)
    second, _ = bench.draw_case(0, 1)
    assert first.x.shape != second.x.shape or not np.array_equal(first.x, second.x)


def test_draw_case_sizes_bounded(bench):
    for index in range(40):
        case, _ = bench.draw_case(0, index)
        sizes = case.sizes
        assert 1 <= min(sizes.n_ex, sizes.n_in, sizes.hidden, sizes.n_t)
        assert max(sizes.n_ex, sizes.n_in, sizes.hidden, sizes.n_t) <= bench.MAX_SIZE


def test_draw_case_covers_options(bench):
    cases = [bench.draw_case(0, index)[0] for index in range(60)]
    assert {case.merge_mode for case in cases} == set(bilstm.MERGE_MODES)
    assert {case.weight_scale for case in cases} == {"typical", "small", "saturating"}
    assert any(case.lengths is not None for case in cases)
    assert any(case.lengths is None for case in cases)
    assert any(case.h0 is not None for case in cases)
    assert any(case.dh_n is not None for case in cases)


def test_as_dtype_rounds_every_array(bench):
    case, spare = bench.draw_case(0, 0)
    rounded, rounded_spare = bench.as_dtype(case, spare, "float32")
    assert rounded.dtype == "float32"
    assert rounded.x.dtype == np.float32
    assert all(a.dtype == np.float32 for a in rounded.params.values())
    assert all(a.dtype == np.float32 for a in rounded_spare.values())


def test_case_for_property_adds_states(bench):
    case, spare = bench.draw_case(0, 0)
    case = bench.dataclasses.replace(case, h0=None, c0=None, dh_n=None, dc_n=None)
    filled = bench.case_for_property(case, spare, "gradient_final_state")
    assert filled.h0 is spare["h0"]
    assert filled.dc_n is spare["dc_n"]
    assert bench.case_for_property(case, spare, "gradient_input").h0 is None


def test_targets_cycle_every_tensor(bench):
    targets = [bench.target_of(index) for index in range(len(bench.TARGETS))]
    assert sorted(targets) == sorted(bench.TARGETS)


# ---------------------------------------------------------------------------
# Planted errors
# ---------------------------------------------------------------------------

def test_scale_error_relative_size(bench):
    gradient = np.random.default_rng(0).standard_normal((3, 4))
    wrong = _error(bench, "scale", 1e-3, gradient.shape).apply(gradient)
    assert np.allclose(wrong - gradient, 1e-3 * gradient, rtol=1e-9, atol=0)


def test_noise_error_norm(bench):
    gradient = np.random.default_rng(0).standard_normal((3, 4))
    wrong = _error(bench, "noise", 1e-3, gradient.shape).apply(gradient)
    relative = np.linalg.norm(wrong - gradient) / np.linalg.norm(gradient)
    assert relative == pytest.approx(1e-3, rel=1e-9)


def test_error_keeps_dtype(bench):
    gradient = np.ones((2, 2), dtype=np.float32)
    assert _error(bench, "scale", 1e-3, gradient.shape).apply(gradient).dtype == np.float32


def test_float32_error_rounds_away(bench):
    gradient = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    wrong = _error(bench, "scale", 1e-9, gradient.shape).apply(gradient)
    assert np.array_equal(wrong, gradient)


def test_plant_changes_only_target(bench):
    case = _trial_case(bench)
    result = bilstm.forward(case.x, case.params, merge_mode=case.merge_mode,
                            lengths=case.lengths, h0=case.h0, c0=case.c0)
    exact = bilstm.backward(result, case.dy, dh_n=case.dh_n, dc_n=case.dc_n)
    error = _error(bench, "scale", 1e-2, exact.dparams["b_bwd"].shape, target="b_bwd")
    planted = bench.plant(exact, error)
    assert not np.array_equal(planted["b_bwd"], exact.dparams["b_bwd"])
    assert planted["x"] is exact.dx
    assert planted["W_ih_fwd"] is exact.dparams["W_ih_fwd"]
    assert planted["h0"] is exact.dh0


def test_memo_replays_forward(bench):
    case = _trial_case(bench)
    memo = bench.ReferenceMemo()
    arguments = (case.x, case.params, case.merge_mode, case.lengths, case.h0, case.c0)
    _, recorded = memo.forward(*arguments)
    _, recomputed = memo.forward(*arguments)
    memo.replay = True
    _, replayed = memo.forward(*arguments)
    assert recomputed is not recorded
    assert replayed is recomputed


# ---------------------------------------------------------------------------
# The two checks on one case
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_property_passes_exact_gradients(bench, dtype):
    case, spare = bench.as_dtype(*bench.draw_case(0, 1), dtype)
    implementation = bench.PlantedReference(bench.ReferenceMemo())
    passed, seconds, message = bench.check_property("gradient_params", case, implementation, 7)
    assert passed, message
    assert seconds > 0


def test_property_detects_planted_error(bench):
    case = _trial_case(bench, 1)
    error = _error(bench, "scale", 1e-2, case.params["W_hh_fwd"].shape, target="W_hh_fwd")
    implementation = bench.PlantedReference(bench.ReferenceMemo(), error)
    passed, _, message = bench.check_property("gradient_params", case, implementation, 7)
    assert not passed
    assert "W_hh_fwd" in message


def test_gradcheck_passes_exact_gradients(bench):
    case = _trial_case(bench, 2)
    passed, _ = bench.run_gradcheck(case, bench.ReferenceMemo(), None, fast_mode=False)
    assert passed


@pytest.mark.parametrize("fast_mode", [False, True])
def test_gradcheck_detects_large_error(bench, fast_mode):
    case = _trial_case(bench, 2)
    error = _error(bench, "scale", 0.5, case.x.shape)
    passed, _ = bench.run_gradcheck(case, bench.ReferenceMemo(), error, fast_mode=fast_mode)
    assert not passed


# ---------------------------------------------------------------------------
# Summary and command line
# ---------------------------------------------------------------------------

def test_smallest_detected_stops_at_first_miss(bench):
    trials = [10] * len(bench.DELTAS)
    detected = [10, 10, 9, 10, 10, 0, 0, 0]
    assert bench.smallest_detected(detected, trials, 1.0) == bench.DELTAS[1]
    assert bench.smallest_detected(detected, trials, 0.9) == bench.DELTAS[4]


def test_smallest_detected_none_when_largest_missed(bench):
    trials = [10] * len(bench.DELTAS)
    assert bench.smallest_detected([9] + [10] * 7, trials, 1.0) is None


def test_smallest_detected_none_without_trials(bench):
    zeros = [0] * len(bench.DELTAS)
    assert bench.smallest_detected(zeros, zeros, 1.0) is None


def test_trials_above_cases_rejected(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--cases", "3", "--trials", "4"])
    assert "must not exceed --cases 3" in capsys.readouterr().err


def test_unknown_dtype_rejected(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--dtypes", "float16"])
    assert "--dtypes 'float16' is invalid" in capsys.readouterr().err


def test_quick_budget(bench):
    args = bench.parse_args(["--quick", "--trials", "2"])
    assert args.cases == bench.QUICK["cases"]
    assert args.trials == 2


def test_main_tiny_run(bench, tmp_path, capsys):
    path = tmp_path / "sensitivity.json"
    status = bench.main(["--cases", "2", "--trials", "1", "--gradcheck-cases", "1",
                         "--jobs", "1", "--json", str(path)])
    printed = capsys.readouterr().out
    document = json.loads(path.read_text())
    summary = document["summary"]

    assert status == 0
    assert "| 1e-06 |" in printed
    assert "cases with a false alarm" in printed
    assert "| dx |" in printed
    assert "| saturating |" in printed
    assert set(summary) == set(bench.COLUMNS)
    assert summary["ours float64"]["cases"] == 2
    assert summary["gradcheck float64"]["cases"] == 1
    assert summary["ours float64"]["trials"]["scale"] == [1] * len(bench.DELTAS)
    assert summary["ours float64"]["detected"]["scale"][0] == 1
    assert summary["ours float64"]["false_alarms"] == []
