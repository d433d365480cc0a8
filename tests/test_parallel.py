"""Parallel directions (bilstm._parallel): same results, the BLAS limit, the auto rule.

The reference runs its two directions in two threads when
BILSTM_PARALLEL_DIRECTIONS selects it.  These tests force each mode with the
environment variable and check that the results do not depend on it, that
the threads really ran, that the BLAS thread count is held at 1 during a
parallel run and restored after it (errors and concurrent calls included),
and which sizes the auto rule sends to each path.
"""

import threading

import numpy as np
import pytest
import threadpoolctl

import bilstm
import bilstm.reference
from bilstm import _parallel
from bilstm.errors import InvalidArgumentError

N_EX, N_IN, H, N_T = 4, 3, 5, 7
LENGTHS = (7, 0, 1, 4)
"""A full, an empty, a one-step and a partly padded example."""

CANONICAL_MODES = ("concat", "sum", "average", "multiply", None)

TOLERANCES = {
    np.float32: {"rtol": 1e-5, "atol": 1e-6},
    np.float64: {"rtol": 1e-13, "atol": 1e-14},
    np.complex128: {"rtol": 1e-13, "atol": 1e-14},
}
"""A BLAS may sum in another order on fewer threads, so results agree to rounding."""


def draw_call(seed, dtype, *, with_states):
    """Return forward's keyword arguments and backward's upstream arrays, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    params = bilstm.cast_params(bilstm.init_params(N_IN, H, rng=rng, scale=0.8), dtype)
    state_shape = (2, N_EX, H)
    inputs = {"x": rng.standard_normal((N_EX, N_IN, N_T)).astype(dtype), "params": params}
    upstream = {}
    if with_states:
        inputs["h0"] = (0.5 * rng.standard_normal(state_shape)).astype(dtype)
        inputs["c0"] = rng.standard_normal(state_shape).astype(dtype)
        upstream["dh_n"] = rng.standard_normal(state_shape).astype(dtype)
        upstream["dc_n"] = rng.standard_normal(state_shape).astype(dtype)
    return inputs, upstream


def run_both(inputs, upstream, merge_mode, lengths):
    """Run forward and backward; return every output array keyed by name."""
    result = bilstm.forward(**inputs, merge_mode=merge_mode, lengths=lengths)
    dy = np.random.default_rng(99).standard_normal(result.y.shape).astype(result.y.dtype)
    grads = bilstm.backward(result, dy, **upstream)
    return {
        "y": result.y, "h_n": result.h_n, "c_n": result.c_n,
        "dx": grads.dx, **grads.dparams, "dh0": grads.dh0, "dc0": grads.dc0,
    }


@pytest.fixture
def set_mode(monkeypatch):
    """Return a function that sets BILSTM_PARALLEL_DIRECTIONS for the rest of the test."""
    def set_to(value):
        monkeypatch.setenv(_parallel.ENV_VAR, value)
    return set_to


@pytest.fixture
def direction_calls(monkeypatch):
    """Record (thread name, number of directions) for each call of the per-direction loops."""
    calls = {"forward": [], "backward": []}

    def spy(name, original, n_dir_of):
        def wrapper(*args):
            calls[name].append((threading.current_thread().name, n_dir_of(args)))
            return original(*args)
        return wrapper

    monkeypatch.setattr(bilstm.reference, "_recur_directions", spy(
        "forward", bilstm.reference._recur_directions, lambda args: args[0].shape[0]))
    monkeypatch.setattr(bilstm.reference, "_backprop_directions", spy(
        "backward", bilstm.reference._backprop_directions, lambda args: args[0].gates.shape[0]))
    return calls


def blas_thread_counts():
    """Return the thread count of every BLAS library threadpoolctl finds."""
    return [info["num_threads"] for info in threadpoolctl.threadpool_info()
            if info["user_api"] == "blas"]


needs_blas_control = pytest.mark.skipif(
    not _parallel._BLAS_LIMIT.available(),
    reason="threadpoolctl finds no BLAS library whose thread count it can set",
)


# Results do not depend on the mode.

@pytest.mark.parametrize("with_states", [False, True], ids=["zero-states", "given-states"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128],
                         ids=["float32", "float64", "complex128"])
@pytest.mark.parametrize("merge_mode", CANONICAL_MODES, ids=repr)
def test_parallel_matches_serial(set_mode, merge_mode, dtype, lengths, with_states):
    inputs, upstream = draw_call(7, dtype, with_states=with_states)
    set_mode("0")
    serial = run_both(inputs, upstream, merge_mode, lengths)
    set_mode("1")
    parallel = run_both(inputs, upstream, merge_mode, lengths)

    for name, expected in serial.items():
        assert parallel[name].dtype == expected.dtype, name
        np.testing.assert_allclose(parallel[name], expected, err_msg=name, **TOLERANCES[dtype])


def test_parallel_matches_serial_with_several_chunks(set_mode, monkeypatch):
    # One step per backward chunk, so each thread walks several chunks.
    monkeypatch.setattr(bilstm.reference, "_CHUNK_BYTES", 1)
    inputs, upstream = draw_call(8, np.float64, with_states=True)
    set_mode("0")
    serial = run_both(inputs, upstream, "multiply", LENGTHS)
    set_mode("1")
    parallel = run_both(inputs, upstream, "multiply", LENGTHS)

    for name, expected in serial.items():
        np.testing.assert_allclose(parallel[name], expected, err_msg=name, **TOLERANCES[np.float64])


# The mode decides which path runs.

def test_forced_parallel_runs_one_direction_per_thread(set_mode, direction_calls):
    set_mode("1")
    inputs, upstream = draw_call(9, np.float64, with_states=False)
    run_both(inputs, upstream, "concat", None)

    main = threading.current_thread().name
    for name in ("forward", "backward"):
        assert sorted(direction_calls[name]) == sorted(
            [(main, 1), ("bilstm-backward-direction", 1)]), name


def test_serial_mode_runs_both_directions_in_the_calling_thread(set_mode, direction_calls):
    set_mode("0")
    inputs, upstream = draw_call(10, np.float64, with_states=False)
    run_both(inputs, upstream, "concat", None)

    main = threading.current_thread().name
    assert direction_calls == {"forward": [(main, 2)], "backward": [(main, 2)]}


@pytest.mark.parametrize("n_t, n_ex", [(0, 3), (4, 0)], ids=["no-steps", "empty-batch"])
def test_forced_parallel_stays_serial_without_work(set_mode, direction_calls, n_t, n_ex):
    set_mode("1")
    params = bilstm.init_params(N_IN, H, rng=np.random.default_rng(11))
    result = bilstm.forward(np.zeros((n_ex, N_IN, n_t)), params)
    bilstm.backward(result, np.zeros_like(result.y))

    assert [n_dir for _, n_dir in direction_calls["forward"]] == [2]
    assert [n_dir for _, n_dir in direction_calls["backward"]] == [2]


@pytest.mark.parametrize("value", ["auto", "AUTO", " 1 ", "0"])
def test_mode_accepts_valid_values(set_mode, value):
    set_mode(value)
    assert _parallel.mode() == value.strip().lower()


def test_mode_defaults_to_auto(monkeypatch):
    monkeypatch.delenv(_parallel.ENV_VAR, raising=False)
    assert _parallel.mode() == "auto"


@pytest.mark.parametrize("value", ["yes", "2", "", "true"])
def test_invalid_mode_names_the_variable_and_the_fix(set_mode, value):
    set_mode(value)
    inputs, _ = draw_call(12, np.float64, with_states=False)
    with pytest.raises(InvalidArgumentError) as raised:
        bilstm.forward(**inputs)

    message = str(raised.value)
    assert f"{_parallel.ENV_VAR} is {value!r}" in message
    assert "one of auto, 1, 0" in message
    assert "unset it" in message


BENCHMARK_SIZE = bilstm.reference._call_size(100, 32, (2, 4 * 128, 64 + 1 + 128))


@pytest.mark.parametrize(("cpus", "work", "block", "expected"), [
    (2, *BENCHMARK_SIZE, True),
    (3, *BENCHMARK_SIZE, True),
    (1, *BENCHMARK_SIZE, False),
    (4, *BENCHMARK_SIZE, False),
    (2, _parallel.MIN_PARALLEL_WORK - 1, 4096, False),
    (2, _parallel.MIN_PARALLEL_WORK, 4096, True),
    (2, 10 ** 9, _parallel.MIN_PARALLEL_BLOCK - 1, False),
    (2, 10 ** 9, _parallel.MIN_PARALLEL_BLOCK, True),
])
def test_auto_rule(set_mode, monkeypatch, cpus, work, block, expected):
    set_mode("auto")
    monkeypatch.setattr(_parallel, "usable_cpus", lambda: cpus)
    monkeypatch.setattr(_parallel._BLAS_LIMIT, "available", lambda: True)
    assert _parallel.in_parallel(work, block) is expected


def test_auto_rule_stays_serial_when_the_blas_cannot_be_limited(set_mode, monkeypatch):
    set_mode("auto")
    monkeypatch.setattr(_parallel, "usable_cpus", lambda: 2)
    monkeypatch.setattr(_parallel._BLAS_LIMIT, "available", lambda: False)
    assert not _parallel.in_parallel(*BENCHMARK_SIZE)


def test_benchmark_size_is_above_both_thresholds():
    work, block = BENCHMARK_SIZE
    assert work == 100 * 32 * 512 * 193
    assert block == 128 * 32
    assert work >= _parallel.MIN_PARALLEL_WORK and block >= _parallel.MIN_PARALLEL_BLOCK


# The BLAS limit.

@needs_blas_control
def test_blas_held_at_one_thread_during_a_parallel_run_and_restored(set_mode):
    set_mode("1")
    seen = []

    def task(d):
        seen.append(blas_thread_counts())

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = blas_thread_counts()
        _parallel.run_directions(task, 1, 1)
        after = blas_thread_counts()

    assert len(seen) == 2
    assert all(counts and set(counts) == {1} for counts in seen)
    assert set(before) == {2}
    assert after == before


@needs_blas_control
@pytest.mark.parametrize("failing", [slice(0, 1), slice(1, 2)], ids=["calling-thread", "worker"])
def test_task_error_propagates_and_blas_is_restored(set_mode, failing):
    set_mode("1")
    ran = []

    def task(d):
        ran.append(d)
        if d == failing:
            raise ZeroDivisionError(f"planted in direction {d.start}")

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        with pytest.raises(ZeroDivisionError, match=f"planted in direction {failing.start}"):
            _parallel.run_directions(task, 1, 1)
        assert set(blas_thread_counts()) == {2}

    # The other direction still ran to its end before the error came back.
    assert sorted(d.start for d in ran) == [0, 1]


@needs_blas_control
def test_concurrent_calls_give_serial_results_and_restore_blas(set_mode):
    calls = [draw_call(seed, np.float64, with_states=True) for seed in range(20, 24)]
    set_mode("0")
    expected = [run_both(inputs, upstream, "sum", LENGTHS) for inputs, upstream in calls]

    set_mode("1")
    results = [None] * len(calls)
    errors = []

    def worker(k):
        try:
            for _ in range(5):
                results[k] = run_both(*calls[k], "sum", LENGTHS)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(calls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert set(blas_thread_counts()) == {2}

    assert errors == []
    for k, serial in enumerate(expected):
        for name, array in serial.items():
            np.testing.assert_allclose(results[k][name], array, err_msg=f"call {k}: {name}",
                                       **TOLERANCES[np.float64])
