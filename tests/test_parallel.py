"""Parallel directions (bilstm._parallel): results, the switch, the OpenBLAS limit, errors.

With BILSTM_PARALLEL_DIRECTIONS=1 the reference runs the two directions of
large calls in two threads.  These tests lower the size minimum so that
small cases take that path.  They check that the results match the serial
loop and that the threads really ran.  They check that numpy's OpenBLAS runs
on one thread during a parallel run and gets its count back after it: from
any thread, in any order of overlapping runs, and in a forked child.  And
they check that an error or an interrupt in either thread comes back
promptly.
"""

import collections
import hashlib
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import threadpoolctl

import bilstm
import bilstm.reference
from bilstm import _parallel
from bilstm.errors import InvalidArgumentError
from cli_helpers import run_cli

N_EX, N_IN, H = 4, 3, 5
LENGTHS = {7: (7, 0, 1, 4), 6: (6, 0, 1, 5)}
"""Per n_t: a full, an empty, a one-step and a partly padded example."""

CANONICAL_MODES = ("concat", "sum", "average", "multiply", None)

TOLERANCES = {
    np.float32: {"rtol": 1e-5, "atol": 1e-6},
    np.float64: {"rtol": 1e-13, "atol": 1e-14},
    np.complex128: {"rtol": 1e-13, "atol": 1e-14},
}
"""The two paths agree to rounding, not always bit for bit."""

WORKER = "bilstm-backward-direction"


def draw_call(seed, dtype, n_t, *, with_states):
    """Return forward's keyword arguments and backward's optional upstream arrays."""
    rng = np.random.default_rng(seed)
    params = bilstm.cast_params(bilstm.init_params(N_IN, H, rng=rng, scale=0.8), dtype)
    state_shape = (2, N_EX, H)
    inputs = {"x": rng.standard_normal((N_EX, N_IN, n_t)).astype(dtype), "params": params}
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
def set_switch(monkeypatch):
    """Return a function that sets BILSTM_PARALLEL_DIRECTIONS (None unsets it) for the test."""
    def set_to(value):
        if value is None:
            monkeypatch.delenv(_parallel.ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(_parallel.ENV_VAR, value)
    return set_to


@pytest.fixture
def small_calls_parallel(monkeypatch, set_switch):
    """Let every call with work take the parallel path when the switch is 1."""
    monkeypatch.setattr(_parallel, "MIN_PARALLEL_WORK", 1)
    monkeypatch.setattr(_parallel, "MIN_PARALLEL_BLOCK", 1)
    monkeypatch.setattr(_parallel, "usable_cpus", lambda: 2)
    # Without a settable OpenBLAS the limit is a no-op, but the threads still run.
    monkeypatch.setattr(_parallel._OPENBLAS, "available", lambda: True)
    set_switch("1")
    return set_switch


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


needs_openblas = pytest.mark.skipif(
    not _parallel._OPENBLAS.available(),
    reason="no loaded OpenBLAS (pthreads build) whose thread count can be set",
)


@pytest.fixture
def openblas_at_two():
    """Set numpy's OpenBLAS to 2 threads for the test, so that a limit of 1 shows."""
    apis = _parallel._OPENBLAS._apis()
    saved = [get() for get, _ in apis]
    for _, set_ in apis:
        set_(2)
    yield
    for (_, set_), count in zip(apis, saved):
        set_(count)


def numpy_blas_threads():
    """Return the thread counts of the libraries bilstm limits, as threadpoolctl reads them.

    Libraries loaded after bilstm's first use (scipy's, by other tests) are
    left out: bilstm does not limit them.
    """
    handled = set(_parallel._OPENBLAS.filepaths)
    return [info["num_threads"] for info in threadpoolctl.threadpool_info()
            if info["filepath"] in handled]


# Results do not depend on the path.

@pytest.mark.parametrize("n_t", [7, 6], ids=["odd-n_t", "even-n_t"])
@pytest.mark.parametrize("with_states", [False, True], ids=["zero-states", "given-states"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128],
                         ids=["float32", "float64", "complex128"])
@pytest.mark.parametrize("merge_mode", CANONICAL_MODES, ids=repr)
def test_parallel_matches_serial(small_calls_parallel, merge_mode, dtype, use_lengths,
                                 with_states, n_t):
    lengths = LENGTHS[n_t] if use_lengths else None
    inputs, upstream = draw_call(7, dtype, n_t, with_states=with_states)
    small_calls_parallel("0")
    serial = run_both(inputs, upstream, merge_mode, lengths)
    small_calls_parallel("1")
    parallel = run_both(inputs, upstream, merge_mode, lengths)

    for name, expected in serial.items():
        assert parallel[name].dtype == expected.dtype, name
        np.testing.assert_allclose(parallel[name], expected, err_msg=name, **TOLERANCES[dtype])


def test_parallel_matches_serial_with_several_chunks(small_calls_parallel, monkeypatch):
    # One step per backward chunk, so each thread walks several chunks.
    monkeypatch.setattr(bilstm.reference, "_CHUNK_BYTES", 1)
    inputs, upstream = draw_call(8, np.float64, 7, with_states=True)
    small_calls_parallel("0")
    serial = run_both(inputs, upstream, "multiply", LENGTHS[7])
    small_calls_parallel("1")
    parallel = run_both(inputs, upstream, "multiply", LENGTHS[7])

    for name, expected in serial.items():
        np.testing.assert_allclose(parallel[name], expected, err_msg=name, **TOLERANCES[np.float64])


# The switch decides which path runs.

def test_switch_on_runs_one_direction_per_thread(small_calls_parallel, direction_calls):
    inputs, upstream = draw_call(9, np.float64, 7, with_states=False)
    run_both(inputs, upstream, "concat", None)

    main = threading.current_thread().name
    for name in ("forward", "backward"):
        assert sorted(direction_calls[name]) == sorted([(main, 1), (WORKER, 1)]), name


def test_switch_off_runs_both_directions_in_calling_thread(small_calls_parallel,
                                                             direction_calls):
    small_calls_parallel("0")
    inputs, upstream = draw_call(10, np.float64, 7, with_states=False)
    run_both(inputs, upstream, "concat", None)

    main = threading.current_thread().name
    assert direction_calls == {"forward": [(main, 2)], "backward": [(main, 2)]}


ONE_PER_THREAD, BOTH_IN_ONE_CALL = [1, 1], [2]


@pytest.mark.parametrize(("value", "running", "expected"), [
    (None, 0, ONE_PER_THREAD), ("", 0, ONE_PER_THREAD), ("auto", 0, ONE_PER_THREAD),
    (None, 1, BOTH_IN_ONE_CALL), ("auto", None, BOTH_IN_ONE_CALL),
], ids=["unset-idle", "empty-idle", "auto-idle", "unset-busy", "auto-no-proc"])
def test_switch_auto_follows_idle_cpu(small_calls_parallel, direction_calls, monkeypatch,
                                      value, running, expected):
    small_calls_parallel(value)
    monkeypatch.setattr(_parallel, "other_threads_running", lambda: running)
    inputs, upstream = draw_call(10, np.float64, 7, with_states=False)
    run_both(inputs, upstream, "concat", None)

    for name in ("forward", "backward"):
        assert [n_dir for _, n_dir in direction_calls[name]] == expected, name


@pytest.mark.parametrize("n_t, n_ex", [(0, 3), (4, 0)], ids=["no-steps", "empty-batch"])
def test_calls_without_work_stay_serial(small_calls_parallel, direction_calls, n_t, n_ex):
    params = bilstm.init_params(N_IN, H, rng=np.random.default_rng(11))
    result = bilstm.forward(np.zeros((n_ex, N_IN, n_t)), params)
    bilstm.backward(result, np.zeros_like(result.y))

    assert [n_dir for _, n_dir in direction_calls["forward"]] == [2]
    assert [n_dir for _, n_dir in direction_calls["backward"]] == [2]


@pytest.mark.parametrize(("value", "expected"), [
    (None, "auto"), ("", "auto"), ("auto", "auto"), (" auto ", "auto"),
    ("0", "off"), (" 0 ", "off"), ("1", "on"), (" 1 ", "on"),
])
def test_switch_values(set_switch, value, expected):
    set_switch(value)
    assert _parallel.setting() == expected


@pytest.mark.parametrize("value", ["yes", "2", "true", "AUTO", "on", "off"])
def test_invalid_switch_names_variable_and_fix(set_switch, value):
    set_switch(value)
    inputs, _ = draw_call(12, np.float64, 3, with_states=False)
    with pytest.raises(InvalidArgumentError) as raised:
        bilstm.forward(**inputs)

    message = str(raised.value)
    assert f"{_parallel.ENV_VAR} is {value!r}" in message
    assert ("it must be auto (run large calls' directions in parallel when a CPU is idle), "
            "1 (whenever they are large enough) or 0 (never)") in message
    assert "unset it for the default, auto" in message


def test_cli_rejects_invalid_switch_before_running(set_switch, capsys):
    set_switch("yes")
    status, output = run_cli("check", "--property", "single_step")

    assert status == 2
    assert output == ""
    assert "BILSTM_PARALLEL_DIRECTIONS is 'yes'" in capsys.readouterr().err


BENCHMARK_SIZE = bilstm.reference._call_size(100, 32, (2, 4 * 128, 64 + 1 + 128))


def test_benchmark_size_is_above_minimums():
    work, block = BENCHMARK_SIZE
    assert work == 100 * 32 * 512 * 193
    assert block == 128 * 32
    assert work >= _parallel.MIN_PARALLEL_WORK
    assert block >= _parallel.MIN_PARALLEL_BLOCK


WORK, BLOCK = BENCHMARK_SIZE


@pytest.mark.parametrize(("switch", "cpus", "work", "block", "available", "expected"), [
    ("1", 2, WORK, BLOCK, True, True),
    ("1", 16, WORK, BLOCK, True, True),
    ("0", 2, WORK, BLOCK, True, False),
    ("1", 1, WORK, BLOCK, True, False),
    ("1", 2, WORK, BLOCK, False, False),
    ("1", 2, _parallel.MIN_PARALLEL_WORK - 1, BLOCK, True, False),
    ("1", 2, _parallel.MIN_PARALLEL_WORK, BLOCK, True, True),
    ("1", 2, WORK, _parallel.MIN_PARALLEL_BLOCK - 1, True, False),
    ("1", 2, WORK, _parallel.MIN_PARALLEL_BLOCK, True, True),
    ("1", 2, 0, 0, True, False),
    (None, 2, WORK, BLOCK, True, True),
    ("auto", 2, WORK, BLOCK, True, True),
    (None, 3, WORK, BLOCK, True, False),
    (None, 16, WORK, BLOCK, True, False),
    (None, 1, WORK, BLOCK, True, False),
    (None, 2, WORK, BLOCK, False, False),
    (None, 2, _parallel.MIN_PARALLEL_WORK - 1, BLOCK, True, False),
    (None, 2, WORK, _parallel.MIN_PARALLEL_BLOCK - 1, True, False),
])
def test_parallel_rule(set_switch, monkeypatch, switch, cpus, work, block, available, expected):
    set_switch(switch)
    monkeypatch.setattr(_parallel, "usable_cpus", lambda: cpus)
    monkeypatch.setattr(_parallel._OPENBLAS, "available", lambda: available)
    monkeypatch.setattr(_parallel, "other_threads_running", lambda: 0)
    assert _parallel.in_parallel(work, block) is expected


@pytest.mark.parametrize(("switch", "running", "expected"), [
    (None, 0, True), (None, 1, False), (None, 3, False), (None, None, False),
    ("1", 1, True), ("1", None, True), ("0", 0, False),
])
def test_parallel_rule_other_threads(set_switch, monkeypatch, switch, running, expected):
    set_switch(switch)
    monkeypatch.setattr(_parallel, "usable_cpus", lambda: 2)
    monkeypatch.setattr(_parallel._OPENBLAS, "available", lambda: True)
    monkeypatch.setattr(_parallel, "other_threads_running", lambda: running)
    assert _parallel.in_parallel(WORK, BLOCK) is expected


def test_small_calls_skip_costly_checks(set_switch, monkeypatch):
    # The property suite's calls are small, and reading /proc costs tens of
    # microseconds, the CPU and OpenBLAS checks a few.
    set_switch(None)

    def fail():
        raise AssertionError("a costly check ran for a call below the minimums")

    monkeypatch.setattr(_parallel, "other_threads_running", fail)
    monkeypatch.setattr(_parallel, "usable_cpus", fail)
    monkeypatch.setattr(_parallel._OPENBLAS, "available", fail)
    assert _parallel.in_parallel(_parallel.MIN_PARALLEL_WORK - 1, BLOCK) is False
    assert _parallel.in_parallel(WORK, _parallel.MIN_PARALLEL_BLOCK - 1) is False
    assert _parallel.in_parallel(0, 0) is False


def test_automatic_reasons_name_every_unmet_condition(monkeypatch):
    monkeypatch.setattr(_parallel, "usable_cpus", lambda: 4)
    monkeypatch.setattr(_parallel, "other_threads_running", lambda: 2)
    assert _parallel.automatic_reasons() == [
        "4 usable CPUs, and BILSTM_PARALLEL_DIRECTIONS=auto runs directions in parallel "
        "only with 2",
        "2 other thread(s) of this process running, so no CPU is idle",
    ]

    monkeypatch.setattr(_parallel, "usable_cpus", lambda: 2)
    monkeypatch.setattr(_parallel, "other_threads_running", lambda: None)
    assert _parallel.automatic_reasons() == ["no /proc/self/task to tell whether a CPU is idle"]

    monkeypatch.setattr(_parallel, "other_threads_running", lambda: 0)
    assert _parallel.automatic_reasons() == []


def write_task(tasks, tid, name, state):
    """Write a fake /proc/self/task/<tid>/stat with the thread name (bytes) and state given."""
    (tasks / str(tid)).mkdir()
    (tasks / str(tid) / "stat").write_bytes(b"%d (%s) %s 1 2 3 4 5\n" % (tid, name, state))


@pytest.mark.parametrize(("name", "state", "expected"), [
    (b"python", b"R", 1),
    (b"python", b"S", 0),
    (b"python", b"D", 0),
    # Names with spaces and parentheses, and with a state letter in them.
    (b"a) S (b", b"R", 1),
    (b"a) R (b", b"S", 0),
    (b"x) R", b"R", 1),
    # Linux cuts names to 15 bytes, which can split a UTF-8 character.
    (b"\xc3\xa9" * 7 + b"\xc3", b"R", 1),
    (b"\xff\xfe", b"S", 0),
], ids=["running", "sleeping", "disk-wait", "paren-running", "paren-sleeping",
        "state-in-name", "cut-utf8", "not-utf8-sleeping"])
def test_other_threads_running_reads_state(tmp_path, monkeypatch, name, state, expected):
    write_task(tmp_path, threading.get_native_id() + 1, name, state)
    monkeypatch.setattr(_parallel, "_TASKS", str(tmp_path))

    assert _parallel.other_threads_running() == expected


def test_other_threads_running_skips_own_thread(tmp_path, monkeypatch):
    write_task(tmp_path, threading.get_native_id(), b"python", b"R")
    monkeypatch.setattr(_parallel, "_TASKS", str(tmp_path))

    assert _parallel.other_threads_running() == 0


def test_other_threads_running_skips_malformed_stat(tmp_path, monkeypatch):
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "stat").write_bytes(b"7 no name or state")
    write_task(tmp_path, 8, b"python", b"R")
    monkeypatch.setattr(_parallel, "_TASKS", str(tmp_path))

    assert _parallel.other_threads_running() == 1


def test_other_threads_running_skips_ended_worker(tmp_path, monkeypatch, small_calls_parallel):
    _parallel.run_directions(lambda d, cancel: None, 1, 1)
    worker, _ = _parallel._ENDED_WORKERS[-1]
    assert worker != threading.get_native_id()

    # A worker that was just joined can still show state R while it ends.
    write_task(tmp_path, worker, b"bilstm-backward", b"R")
    write_task(tmp_path, worker + 100000, b"python", b"R")
    monkeypatch.setattr(_parallel, "_TASKS", str(tmp_path))
    assert _parallel.other_threads_running() == 1


def test_other_threads_running_counts_reused_worker_id(tmp_path, monkeypatch):
    # Long after a worker ended, Linux may give its id to a new thread.
    monkeypatch.setattr(_parallel, "_ENDED_WORKERS", collections.deque(maxlen=16))
    tid = threading.get_native_id() + 1
    ended = time.monotonic() - _parallel.ENDED_WORKER_GRACE - 0.1
    _parallel._ENDED_WORKERS.append((tid, ended))
    write_task(tmp_path, tid, b"pool-thread", b"R")
    monkeypatch.setattr(_parallel, "_TASKS", str(tmp_path))

    assert _parallel.other_threads_running() == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_forked_child_scans_with_lock_held_at_fork(monkeypatch):
    monkeypatch.setattr(_parallel, "_ENDED_WORKERS", collections.deque([(1, 0.0)], maxlen=16))
    # A lock held by another thread at fork() would stay held in the child.
    with _parallel._ENDED_WORKERS_LOCK:
        pid = os.fork()
        if pid == 0:
            # A child stuck on the lock is killed by the alarm, so the test
            # fails instead of hanging.
            signal.alarm(10)
            try:
                count = _parallel.other_threads_running()
                cleared = not _parallel._ENDED_WORKERS
                os._exit(0 if count in (0, None) and cleared else 1)
            finally:
                os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_other_threads_running_skips_vanished_thread(tmp_path, monkeypatch):
    own = threading.get_native_id()
    write_task(tmp_path, own + 1, b"python", b"R")
    # Listed, but its stat file is gone, as for a thread that ended meanwhile.
    (tmp_path / str(own + 2)).mkdir()
    monkeypatch.setattr(_parallel, "_TASKS", str(tmp_path))

    assert _parallel.other_threads_running() == 1


def test_other_threads_running_without_proc(tmp_path, monkeypatch):
    monkeypatch.setattr(_parallel, "_TASKS", str(tmp_path / "missing"))
    assert _parallel.other_threads_running() is None


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="no /proc/self/task")
def test_other_threads_running_sees_busy_thread():
    # hashlib releases the GIL while it hashes more than 2 KiB, so the
    # thread stays in state R without waiting for the GIL.
    data = b"\0" * (64 << 20)
    started, stop = threading.Event(), threading.Event()
    counts = []

    def hash_until_stopped():
        started.set()
        while not stop.is_set():
            hashlib.sha256(data).digest()

    thread = threading.Thread(target=hash_until_stopped)
    thread.start()
    try:
        started.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(counts):
            counts.append(_parallel.other_threads_running())
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()

    assert any(count >= 1 for count in counts), counts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_other_threads_running_with_non_utf8_thread_name():
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    pr_set_name = 15
    named, stop = threading.Event(), threading.Event()
    results = []

    def sleep_with_cut_name():
        # 7.5 two-byte characters: the name ends in half of a UTF-8 character.
        results.append(libc.prctl(pr_set_name, b"\xc3\xa9" * 7 + b"\xc3", 0, 0, 0))
        named.set()
        stop.wait()

    thread = threading.Thread(target=sleep_with_cut_name)
    thread.start()
    try:
        named.wait()
        count = _parallel.other_threads_running()
    finally:
        stop.set()
        thread.join()

    assert results == [0]
    assert isinstance(count, int)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="no /proc/self/task")
def test_other_threads_running_ignores_sleeping_thread():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        # Give the thread time to block; any other thread of the test
        # process that runs now would be counted as well, so allow retries.
        counts = []
        for _ in range(50):
            time.sleep(0.02)
            counts.append(_parallel.other_threads_running())
            if counts[-1] == 0:
                break
    finally:
        stop.set()
        thread.join()

    assert counts[-1] == 0, counts


def test_serial_reasons_name_every_unmet_condition(monkeypatch):
    monkeypatch.setattr(_parallel, "usable_cpus", lambda: 1)
    monkeypatch.setattr(_parallel._OPENBLAS, "available", lambda: False)

    assert _parallel.serial_reasons(1000, 64) == [
        f"1,000 multiply-adds per direction, under the minimum of "
        f"{_parallel.MIN_PARALLEL_WORK:,}",
        f"gate blocks of 64 values, under the minimum of {_parallel.MIN_PARALLEL_BLOCK:,}",
        "only 1 usable CPU",
        "numpy's BLAS is not an OpenBLAS (pthreads build) whose thread count can be set",
    ]
    assert _parallel.serial_reasons(0, 0)[0] == "no work (no time steps or no examples)"


def test_serial_cancel_flag_never_set():
    assert _parallel._NEVER_CANCELLED.is_set() is False
    with pytest.raises(RuntimeError, match="cannot be set"):
        _parallel._NEVER_CANCELLED.set()


# The OpenBLAS limit.

def record_counts(seen):
    """Return a task that records numpy's BLAS thread counts from inside each thread."""
    def task(d, cancel):
        seen.append(numpy_blas_threads())
    return task


@needs_openblas
def test_openblas_at_one_thread_during_run_and_restored(small_calls_parallel, openblas_at_two):
    seen = []
    assert set(numpy_blas_threads()) == {2}
    _parallel.run_directions(record_counts(seen), 1, 1)

    assert len(seen) == 2
    assert all(counts and set(counts) == {1} for counts in seen)
    assert set(numpy_blas_threads()) == {2}


@needs_openblas
def test_numpy_blas_among_handled_libraries(small_calls_parallel, openblas_at_two):
    # numpy's own library reports 1 inside a run, read through threadpoolctl.
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    numpy_libraries = [info for info in threadpoolctl.threadpool_info()
                       if info["internal_api"] == "openblas"
                       and info["filepath"].startswith(numpy_dir)
                       and "numpy" in os.path.relpath(info["filepath"], numpy_dir)]
    if not numpy_libraries:
        pytest.skip("numpy's OpenBLAS is not bundled with numpy here")
    inside = []

    def task(d, cancel):
        inside.append([info["num_threads"] for info in threadpoolctl.threadpool_info()
                       if info["filepath"] == numpy_libraries[0]["filepath"]])

    _parallel.run_directions(task, 1, 1)
    assert inside == [[1], [1]]


@needs_openblas
def test_openblas_limit_works_from_non_main_thread(small_calls_parallel, openblas_at_two):
    seen, errors = [], []

    def call():
        try:
            _parallel.run_directions(record_counts(seen), 1, 1)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()

    assert errors == []
    assert len(seen) == 2
    assert all(set(counts) == {1} for counts in seen)
    assert set(numpy_blas_threads()) == {2}


@needs_openblas
@pytest.mark.parametrize("first_to_leave", ["first-in", "last-in"])
def test_overlapping_runs_restore_only_when_last_leaves(openblas_at_two, first_to_leave):
    limit = _parallel._OPENBLAS
    entered = [threading.Event(), threading.Event()]
    leave = [threading.Event(), threading.Event()]
    left = [threading.Event(), threading.Event()]

    def run(k):
        with limit:
            entered[k].set()
            leave[k].wait(timeout=10)
        left[k].set()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    threads[0].start()
    assert entered[0].wait(timeout=10)
    threads[1].start()
    assert entered[1].wait(timeout=10)
    assert set(numpy_blas_threads()) == {1}

    order = [0, 1] if first_to_leave == "first-in" else [1, 0]
    leave[order[0]].set()
    assert left[order[0]].wait(timeout=10)
    assert set(numpy_blas_threads()) == {1}, "restored while a run was still active"

    leave[order[1]].set()
    for thread in threads:
        thread.join(timeout=10)
    assert set(numpy_blas_threads()) == {2}


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")


def fork_and_report():
    """Fork; return the child's thread counts (as strings) and number of active runs.

    The child reads the counts through threadpoolctl, writes them to a pipe
    and ends at once, so it never returns into pytest.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            counts = ",".join(str(count) for count in numpy_blas_threads())
            os.write(write_end, f"{counts} {_parallel._OPENBLAS._active}".encode())
        except BaseException as error:
            os.write(write_end, f"child-error {error!r}".encode())
        finally:
            os._exit(0)

    os.close(write_end)
    os.waitpid(pid, 0)
    report = os.read(read_end, 1000).decode()
    os.close(read_end)
    counts, active = report.split(" ", 1)
    return set(counts.split(",")), active


@needs_openblas
@needs_fork
def test_forked_child_gets_counts_back(openblas_at_two):
    with _parallel._OPENBLAS:
        assert set(numpy_blas_threads()) == {1}
        counts, active = fork_and_report()

    assert counts == {"2"}
    assert active == "0"
    assert set(numpy_blas_threads()) == {2}


@needs_openblas
@needs_fork
def test_fork_during_other_threads_runs_leaves_child_unlimited(openblas_at_two):
    stop = threading.Event()

    def enter_and_leave():
        while not stop.is_set():
            with _parallel._OPENBLAS:
                pass

    churn = threading.Thread(target=enter_and_leave)
    churn.start()
    try:
        reports = [fork_and_report() for _ in range(40)]
    finally:
        stop.set()
        churn.join()

    for counts, active in reports:
        assert counts == {"2"}, (counts, active)
        assert active == "0", (counts, active)


# Errors and interrupts.

def wait_for_cancel(ran):
    """Return a task whose worker direction runs until it is cancelled."""
    def task(d, cancel):
        ran.append(d.start)
        if d.start == 1:
            assert cancel.wait(timeout=10), "never cancelled"
    return task


def test_calling_thread_error_cancels_worker(small_calls_parallel):
    ran = []
    inner = wait_for_cancel(ran)

    def task(d, cancel):
        inner(d, cancel)
        if d.start == 0:
            raise ZeroDivisionError("planted in the calling thread")

    started = time.perf_counter()
    with pytest.raises(ZeroDivisionError, match="planted in the calling thread"):
        _parallel.run_directions(task, 1, 1)

    assert sorted(ran) == [0, 1]
    assert time.perf_counter() - started < 5


def test_worker_error_cancels_calling_thread(small_calls_parallel):
    def task(d, cancel):
        if d.start == 1:
            raise ZeroDivisionError("planted in the worker")
        assert cancel.wait(timeout=10), "never cancelled"

    started = time.perf_counter()
    with pytest.raises(ZeroDivisionError, match="planted in the worker"):
        _parallel.run_directions(task, 1, 1)
    assert time.perf_counter() - started < 5


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python 3.11")
def test_both_errors_reported(small_calls_parallel):
    both_failing = threading.Barrier(2)

    def task(d, cancel):
        both_failing.wait(timeout=10)
        if d.start == 0:
            raise ValueError("calling thread")
        raise MemoryError("worker")

    with pytest.raises(ValueError, match="calling thread") as raised:
        _parallel.run_directions(task, 1, 1)
    assert raised.value.__notes__ == [
        "the backward direction's thread also raised MemoryError: worker"]


@needs_openblas
def test_openblas_restored_after_error(small_calls_parallel, openblas_at_two):
    def task(d, cancel):
        raise ZeroDivisionError(f"planted in direction {d.start}")

    with pytest.raises(ZeroDivisionError):
        _parallel.run_directions(task, 1, 1)
    assert set(numpy_blas_threads()) == {2}


class InterruptedOnce:
    """A stand-in for the done event whose first wait() is interrupted, like Ctrl-C."""

    def __init__(self):
        self.waits = 0

    def wait(self):
        self.waits += 1
        if self.waits == 1:
            raise KeyboardInterrupt


def test_wait_for_worker_goes_on_through_interrupt():
    done, cancel = InterruptedOnce(), threading.Event()
    _parallel._wait_for(done, cancel)
    assert done.waits == 2
    assert cancel.is_set()


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="signal.pthread_kill is POSIX only")
def test_interrupt_during_final_wait_cancels_worker(small_calls_parallel, openblas_at_two):
    calling_done = threading.Event()
    worker_state = {}

    def task(d, cancel):
        if d.start == 0:
            calling_done.set()
            return
        # The worker sends SIGINT, as Ctrl-C does, to the calling thread
        # while that thread waits for it, then runs until it is cancelled.
        assert calling_done.wait(timeout=10)
        time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        worker_state["cancelled"] = cancel.wait(timeout=10)
        worker_state["counts at end"] = numpy_blas_threads()

    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        _parallel.run_directions(task, 1, 1)

    assert time.perf_counter() - started < 5
    assert worker_state.get("cancelled") is True
    # The worker ended before the limit was lifted.
    assert set(worker_state["counts at end"]) == {1}
    assert not any(thread.name == WORKER for thread in threading.enumerate())
    assert set(numpy_blas_threads()) == {2}


def test_concurrent_calls_match_serial_results(small_calls_parallel):
    calls = [draw_call(seed, np.float64, 7, with_states=True) for seed in range(20, 24)]
    small_calls_parallel("0")
    expected = [run_both(inputs, upstream, "sum", LENGTHS[7]) for inputs, upstream in calls]

    small_calls_parallel("1")
    results = [None] * len(calls)
    errors = []

    def worker(k):
        try:
            for _ in range(5):
                results[k] = run_both(*calls[k], "sum", LENGTHS[7])
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    for k, serial in enumerate(expected):
        for name, array in serial.items():
            np.testing.assert_allclose(results[k][name], array, err_msg=f"call {k}: {name}",
                                       **TOLERANCES[np.float64])


def fail_in_worker(original, calls, failed):
    """Wrap ``original``: raise in the worker thread; in the other, record whether it had failed."""
    def wrapper(*args, **kwargs):
        if threading.current_thread().name == WORKER:
            failed.set()
            raise ZeroDivisionError("planted in the worker's first step")
        calls.append(failed.is_set())
        return original(*args, **kwargs)
    return wrapper


def test_forward_loop_stops_when_worker_fails(small_calls_parallel, monkeypatch):
    calls, failed = [], threading.Event()
    monkeypatch.setattr(bilstm.reference, "_activate_inplace",
                        fail_in_worker(bilstm.reference._activate_inplace, calls, failed))
    inputs, _ = draw_call(30, np.float64, 2000, with_states=False)

    with pytest.raises(ZeroDivisionError, match="planted in the worker"):
        bilstm.forward(**inputs)
    # The calling thread checks for cancellation at every step, so at most
    # the step under way when the worker failed, and one more if the check
    # ran just before the flag was set, come after the failure.
    assert calls.count(True) <= 2


def test_backward_loop_stops_when_worker_fails(small_calls_parallel, monkeypatch):
    inputs, _ = draw_call(31, np.float64, 2000, with_states=False)
    result = bilstm.forward(**inputs)
    calls, failed = [], threading.Event()
    # One step per chunk, so every step forms its factors once.
    monkeypatch.setattr(bilstm.reference, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(bilstm.reference._Coefficients, "fill",
                        fail_in_worker(bilstm.reference._Coefficients.fill, calls, failed))

    with pytest.raises(ZeroDivisionError, match="planted in the worker"):
        bilstm.backward(result, np.ones_like(result.y))
    assert calls.count(True) <= 2
