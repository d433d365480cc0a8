"""Smoke tests of benchmarks/bench_mixed_loop.py and its call counter on tiny sizes."""

import contextlib
import io
import os
import re
import subprocess

import numpy as np
import pytest

import bilstm
from bilstm import _parallel
from benchmark_loader import load_benchmark


TINY = ["--n-ex", "2", "--n-t", "3", "--n-in", "2", "--hidden", "3",
        "--steps", "2", "--blocks", "2"]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_mixed_loop")


def run_main(bench, argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.main(argv)
    return out.getvalue()


def test_tiny_case_times_only_serial(bench, monkeypatch):
    monkeypatch.delenv(_parallel.ENV_VAR, raising=False)
    output = run_main(bench, TINY + ["--dtype", "float32"])

    assert re.search(r"^reference parallel directions: not possible, because of 432 "
                     r"multiply-adds per direction.*; only BILSTM_PARALLEL_DIRECTIONS=0 is timed$",
                     output, re.M), output
    # 2 timed blocks of 2 steps, each with a forward and a backward call.
    block = r"[\d.]+ \(after 0, 0/4\)"
    for loop in ("alone", "dense"):
        assert re.search(rf"^\| float32 \| {loop} \| 0 \| {block}, {block} \| [\d.]+ \| 1\.00 "
                         rf"\| 0 / 8 \|$", output, re.M), output
    assert "| float32 | alone | 1 |" not in output
    assert re.search(r"^commit: \S", output, re.M), output
    assert "loop 'alone' started right after" not in output
    assert _parallel.ENV_VAR not in bench.os.environ


def test_all_settings_timed_when_parallel_possible(bench, monkeypatch):
    monkeypatch.setattr(_parallel, "MIN_PARALLEL_WORK", 1)
    monkeypatch.setattr(_parallel, "MIN_PARALLEL_BLOCK", 1)
    monkeypatch.setattr(_parallel, "usable_cpus", lambda: 2)
    monkeypatch.setattr(_parallel._OPENBLAS, "available", lambda: True)
    monkeypatch.setenv(_parallel.ENV_VAR, "0")
    output = run_main(bench, TINY + ["--dtype", "float64"])

    # Block 1 runs 0, 1, auto, and block 2 runs 0, auto, 1.
    for loop in ("alone", "dense"):
        assert re.search(rf"^\| float64 \| {loop} \| 0 \| [\d.]+ \(after auto, 0/4\), "
                         rf"[\d.]+ \(after auto, 0/4\) \| [\d.]+ \| 1\.00 \| 0 / 8 \|$",
                         output, re.M), output
        assert re.search(rf"^\| float64 \| {loop} \| 1 \| [\d.]+ \(after 0, 4/4\), "
                         rf"[\d.]+ \(after auto, 4/4\) \| .* \| 8 / 8 \|$",
                         output, re.M), output
        assert re.search(rf"^\| float64 \| {loop} \| auto \| [\d.]+ \(after 1, \d/4\), "
                         rf"[\d.]+ \(after 0, \d/4\) \| .* \| \d / 8 \|$",
                         output, re.M), output
    assert re.search(r"^float64, BILSTM_PARALLEL_DIRECTIONS=auto, loop 'alone' started right "
                     r"after a 600 x 600 product: \d+ of 4 calls in parallel$", output, re.M)
    # The caller's setting is put back.
    assert bench.os.environ[_parallel.ENV_VAR] == "0"


def test_spin_line_counts_threads(bench):
    line = bench.spin_line()
    if _parallel.other_threads_running() is None:
        assert line.endswith("not counted (no /proc)")
    else:
        assert re.fullmatch(r"other threads running after a 600 x 600 float64 product: "
                            r"0\.00 s: \d+, 0\.05 s: \d+, 0\.10 s: \d+, 0\.20 s: \d+, "
                            r"0\.30 s: \d+", line), line


@pytest.mark.parametrize("flag", ["--steps", "--blocks", "--n-t"])
def test_rejects_sizes_below_one(bench, flag, capsys):
    with pytest.raises(SystemExit) as raised:
        bench.parse_args([flag, "0"])
    assert raised.value.code == 2
    assert f"{flag}=0 is invalid; use 1 or more" in capsys.readouterr().err


def test_blocks_rotate_and_record_predecessor(bench):
    ran = []
    steps = {name: (lambda name=name: ran.append(name)) for name in ("a", "b", "c")}
    counters = {name: bench.CallCounter() for name in steps}

    blocks = bench.time_blocks(steps, counters, n_steps=1, n_blocks=4)

    # One untimed step each, then every second block reverses all names but the first.
    assert ran == ["a", "b", "c"] + ["a", "b", "c", "a", "c", "b"] * 2
    assert [block.after for block in blocks["a"]] == ["c", "c", "b", "c"]
    assert [block.after for block in blocks["b"]] == ["a", "c", "a", "c"]
    assert [block.after for block in blocks["c"]] == ["b", "a", "b", "a"]
    assert all(block.calls == 0 for runs in blocks.values() for block in runs)


def test_call_counter_counts_and_restores(monkeypatch):
    counter = load_benchmark("parallel_setting").CallCounter()
    decide = _parallel.in_parallel
    monkeypatch.setattr(_parallel, "MIN_PARALLEL_WORK", 1)
    monkeypatch.setattr(_parallel, "MIN_PARALLEL_BLOCK", 1)
    monkeypatch.setattr(_parallel, "usable_cpus", lambda: 2)
    monkeypatch.setattr(_parallel._OPENBLAS, "available", lambda: True)
    params = bilstm.init_params(2, 3, rng=np.random.default_rng(0))
    x = np.ones((2, 2, 3))

    with counter.counting():
        monkeypatch.setenv(_parallel.ENV_VAR, "1")
        bilstm.forward(x, params)
        monkeypatch.setenv(_parallel.ENV_VAR, "0")
        bilstm.forward(x, params)

    assert counter.share() == "1 / 2"
    assert _parallel.in_parallel is decide


def test_source_revision_outside_git(monkeypatch, tmp_path):
    machine_info = load_benchmark("machine_info")
    monkeypatch.setattr(machine_info, "ROOT", tmp_path)
    assert machine_info.source_revision() == "unknown"


def test_source_revision_marks_uncommitted_changes(monkeypatch, tmp_path):
    machine_info = load_benchmark("machine_info")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run(git + ["-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run(git + ["-C", str(tmp_path), "commit", "-q", "-m", "a"], check=True)
    monkeypatch.setattr(machine_info, "ROOT", tmp_path)

    clean = machine_info.source_revision()
    assert re.fullmatch(r"[0-9a-f]{7,}", clean), clean

    (tmp_path / "a.txt").write_text("b")
    assert machine_info.source_revision() == clean + " + uncommitted changes"


@pytest.mark.parametrize("before", [None, "1"], ids=["unset", "set"])
def test_restored_setting_puts_variable_back(monkeypatch, before):
    parallel_setting = load_benchmark("parallel_setting")
    if before is None:
        monkeypatch.delenv(_parallel.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(_parallel.ENV_VAR, before)

    with pytest.raises(RuntimeError, match="inside the block"):
        with parallel_setting.restored_setting("0"):
            assert os.environ[_parallel.ENV_VAR] == "0"
            raise RuntimeError("inside the block")

    assert os.environ.get(_parallel.ENV_VAR) == before

