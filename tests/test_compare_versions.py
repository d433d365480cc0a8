"""Smoke tests of benchmarks/compare_versions.py, so the version comparison cannot rot."""

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import bilstm
from benchmark_loader import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _in_git_checkout():
    probe = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, check=False,
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _in_git_checkout(), reason="compare_versions.py exports code with git archive"
)


@pytest.fixture
def bench(monkeypatch):
    # The script puts the exported package on sys.path and imports it; both
    # are undone after each test.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "bilstm_baseline", raising=False)
    yield load_benchmark("compare_versions")
    for name in [name for name in sys.modules if name.startswith("bilstm_baseline")]:
        del sys.modules[name]


def test_exported_head_is_a_separate_package(bench, tmp_path):
    baseline = bench.export_baseline("HEAD", tmp_path)

    assert baseline.__name__ == "bilstm_baseline"
    assert Path(baseline.__file__).is_relative_to(tmp_path)
    assert baseline.forward is not bilstm.forward
    assert baseline.reference.__name__ == "bilstm_baseline.reference"


def test_difference_zero_only_for_same_results(bench, tmp_path):
    baseline = bench.export_baseline("HEAD", tmp_path)
    args = bench.parse_args(["--rev", "HEAD", "--n-ex", "2", "--n-t", "3", "--n-in", "2",
                             "--hidden", "3"])
    params, x, dy = bench.make_case(args, "float64")
    shifted = {name: value.copy() for name, value in params.items()}
    shifted["b_fwd"] += 1e-3

    # A stand-in version whose forward runs on shifted biases.
    other = types.SimpleNamespace(
        forward=lambda x, params: baseline.forward(x, shifted),
        backward=baseline.backward,
    )

    assert bench.largest_difference(baseline, baseline, params, x, dy) == 0.0
    assert bench.largest_difference(other, baseline, params, x, dy) > 1e-5


def test_timing_returns_every_run(bench, tmp_path):
    baseline = bench.export_baseline("HEAD", tmp_path)
    args = bench.parse_args(["--rev", "HEAD", "--n-ex", "2", "--n-t", "3", "--n-in", "2",
                             "--hidden", "3", "--repeats", "5"])
    params, x, dy = bench.make_case(args, "float32")

    times = bench.time_versions({"baseline": baseline, "current": bilstm}, params, x, dy, 5)

    assert sorted(times) == ["baseline", "current"]
    assert all(len(values) == 5 and min(values) > 0 for values in times.values())


def test_unknown_revision_is_rejected(bench, tmp_path):
    with pytest.raises(SystemExit, match="--rev='no-such-revision' could not be exported"):
        bench.export_baseline("no-such-revision", tmp_path)


def test_too_few_repeats_is_rejected(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--rev", "HEAD", "--repeats", "4"])
    assert "--repeats=4 is too few" in capsys.readouterr().err


def test_main_sets_parallel_directions_for_both(bench, monkeypatch, capsys):
    monkeypatch.setenv("BILSTM_PARALLEL_DIRECTIONS", "auto")
    seen = []

    def compare(args):
        seen.append(os.environ["BILSTM_PARALLEL_DIRECTIONS"])
        return ["| float64 | 1.0 | 1.0 | 1.00 |"]

    monkeypatch.setattr(bench, "compare", compare)
    bench.main(["--rev", "HEAD", "--parallel-directions", "1"])

    assert seen == ["1"]
    assert "BILSTM_PARALLEL_DIRECTIONS=1" in capsys.readouterr().out
    # The caller's value is put back.
    assert os.environ["BILSTM_PARALLEL_DIRECTIONS"] == "auto"


def test_parallel_directions_default_is_serial(bench):
    assert bench.parse_args(["--rev", "HEAD"]).parallel_directions == "0"
