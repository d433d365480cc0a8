"""Smoke tests of benchmarks/bench_reference.py on tiny sizes, so the speed benchmark cannot rot."""

import contextlib
import io
import re

import pytest

from benchmark_loader import load_benchmark


TINY = ["--n-ex", "2", "--n-t", "3", "--n-in", "2", "--hidden", "3",
        "--repeats", "5", "--pause", "0", "--warmup", "0"]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_reference")


def test_main_prints_table_and_faults(bench):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.main(TINY)
    output = out.getvalue()

    for dtype in ("float64", "float32"):
        assert re.search(rf"^{dtype}: max \|reference - torch\| over y and dx = ", output, re.M)
        assert re.search(
            rf"^{dtype}: minor page faults per timed run, median: default \d+, torch \d+$",
            output, re.M,
        )
        # Tiny calls stay serial: 5 timed runs, no untimed ones, each a forward and a backward.
        assert f"{dtype}: default (auto) ran 0 / 10 forward and backward calls" in output
        row = re.search(rf"^\| {dtype} \| default \(auto\) \| [\d.]+ \([\d.]+-[\d.]+\) "
                        rf"\| [\d.]+ \([\d.]+-[\d.]+\) \| [\d.]+ \| <= [\d.]+ \| (yes|no) \|$",
                        output, re.M)
        assert row is not None, output
        # The tiny case is far below the parallel path's minimum size.
        assert f"| {dtype} | parallel" not in output
        assert f"| {dtype} | serial" not in output
    assert re.search(r"^CPU: \S", output, re.M)
    assert re.search(r"^commit: \S", output, re.M)
    assert "MALLOC_TRIM_THRESHOLD_=" in output
    # n_t * n_ex * 4H * (n_in + 1 + H) = 3 * 2 * 12 * 6
    assert re.search(r"^reference parallel directions: not possible, because of 432 "
                     r"multiply-adds per direction, under the minimum of [\d,]+; gate blocks "
                     r"of 6 values, under the minimum of [\d,]+.*; BILSTM_PARALLEL_DIRECTIONS=0 "
                     r"and 1 not timed$", output, re.M), output


def test_main_times_parallel_path_when_large_enough(bench, monkeypatch):
    monkeypatch.setattr(bench._parallel, "MIN_PARALLEL_WORK", 1)
    monkeypatch.setattr(bench._parallel, "MIN_PARALLEL_BLOCK", 1)
    monkeypatch.setattr(bench._parallel, "usable_cpus", lambda: 2)
    monkeypatch.setattr(bench._parallel._OPENBLAS, "available", lambda: True)
    monkeypatch.delenv("BILSTM_PARALLEL_DIRECTIONS", raising=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.main(TINY + ["--dtype", "float64"])
    output = out.getvalue()

    assert re.search(r"^reference parallel directions: possible \(432 multiply-adds per "
                     r"direction\), also timed with BILSTM_PARALLEL_DIRECTIONS=0 and 1$",
                     output, re.M), output
    assert re.search(r"^float64: max \|parallel - serial reference\| over y and dx = ",
                     output, re.M), output
    assert re.search(r"^float64: minor page faults per timed run, median: default \d+, "
                     r"torch \d+, serial \d+, parallel \d+$", output, re.M), output
    assert re.search(r"^float64: default \(auto\) ran \d+ / 10 forward and backward calls",
                     output, re.M), output
    for path in (r"default \(auto\)", r"serial \(BILSTM_PARALLEL_DIRECTIONS=0\)",
                 r"parallel \(BILSTM_PARALLEL_DIRECTIONS=1\)"):
        assert re.search(rf"^\| float64 \| {path} \| [\d.]+ ", output, re.M), output
    # The script restores the caller's setting.
    assert "BILSTM_PARALLEL_DIRECTIONS" not in bench.os.environ


def test_interleaved_timing_counts_faults(bench):
    calls = []
    runs = {"first": lambda: calls.append("first"), "second": lambda: calls.append("second")}

    times, faults = bench.time_interleaved(runs, repeats=3, pause=0, warmup=1)

    assert sorted(times) == ["first", "second"]
    assert all(len(values) == 3 for values in times.values())
    assert all(len(values) == 3 and min(values) >= 0 for values in faults.values())
    # One untimed and one timed run per round, and the order flips every round.
    assert calls == ["first"] * 2 + ["second"] * 4 + ["first"] * 4 + ["second"] * 2


def test_fault_line_without_counts(bench):
    line = bench.fault_line("float32", {"reference": [], "torch": []})

    assert line == "float32: page faults per timed run not counted on this platform"


def test_fault_line_medians(bench):
    line = bench.fault_line("float64", {"reference": [0, 4, 2], "torch": [10, 30, 20]})

    assert line == "float64: minor page faults per timed run, median: reference 2, torch 20"


def test_too_few_repeats_rejected(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--repeats", "4"])

    assert "--repeats=4 is too few" in capsys.readouterr().err
