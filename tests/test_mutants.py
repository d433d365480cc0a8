"""Meta-tests of the mutant catalog: every mutant is a real bug, and its expected property catches it.

The catalog lives in :mod:`properties.mutants`; ``benchmarks/bench_mutants.py``
runs every property on every mutant.  Here each mutant meets only the
property its entry names, with the ``ci`` profile's examples but no
shrinking, so the verdict is the benchmark's while the test stays quick.
"""

import re

import numpy as np
import pytest
from hypothesis import Phase, settings

import bilstm
from bilstm.merge import MERGE_MODES
from properties.adapters import load_implementation
from properties.catalog import Subject
from properties.errors import UsageError
from properties.mutants import (
    CONTROLS, MUTANTS, MutantImplementation, PlainModel, load_mutant, mutant,
)
from properties.runner import (
    FAILED, IMPLEMENTATION_ERROR, PASSED, run_property, select_properties,
)
from properties.settings import PROFILES, profile_settings
from benchmark_loader import load_benchmark

CI_EXAMPLES = PROFILES["ci"]["max_examples"]

# A failing case normally shrinks over hundreds of further examples; the
# verdict does not need the minimal case.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)

CONTROL_EXAMPLES = 10
"""Examples per property on the bug-free bases."""

CATCHES = (FAILED, IMPLEMENTATION_ERROR)

ORACLE = "reference_agreement"

PROPERTY_NAMES = [prop.name for prop in select_properties()]

EXPECTED = [name for name, entry in MUTANTS.items() if entry.expected is not None]
UNEXPECTED = [name for name, entry in MUTANTS.items() if entry.expected is None]


def _run(property_name, implementation, *, max_examples=CI_EXAMPLES, merge_modes=None):
    prop = select_properties([property_name])[0]
    run_settings = settings(profile_settings("ci", max_examples=max_examples), phases=NO_SHRINK)
    return run_property(prop, Subject(implementation), run_settings, merge_modes=merge_modes)


def _load_benchmark():
    return load_benchmark("bench_mutants")


# ---------------------------------------------------------------------------
# The catalog
# ---------------------------------------------------------------------------

def test_catalog_has_at_least_30():
    assert len(MUTANTS) >= 30


@pytest.mark.parametrize("name", list(MUTANTS))
def test_entry_documented(name):
    entry = MUTANTS[name]
    assert entry.name == name
    assert name.isidentifier()
    assert entry.bug.strip()
    assert "\n" not in entry.bug
    assert entry.shows_when.strip()
    assert entry.expected != ORACLE
    assert entry.expected is None or entry.expected in PROPERTY_NAMES
    assert entry.expected is not None or entry.reason.strip()
    assert entry.merge_modes is None or set(entry.merge_modes) <= set(MERGE_MODES)


def test_expected_covers_every_property():
    expected = {entry.expected for entry in MUTANTS.values()}
    uncovered = set(PROPERTY_NAMES) - expected - {ORACLE}
    assert not uncovered, f"no mutant expects {sorted(uncovered)} to catch it"


def test_mutant_without_reason_rejected():
    with pytest.raises(ValueError, match=r"mutant 'x' has expected=None, so it needs a reason"):
        mutant("x", bug="b", expected=None)


def test_mutant_expecting_oracle_rejected():
    with pytest.raises(ValueError, match=r"other than reference_agreement"):
        mutant("x", bug="b", expected=ORACLE)


def test_mutant_registered_twice_rejected():
    name = next(iter(MUTANTS))
    with pytest.raises(ValueError, match=rf"mutant '{name}' is registered twice"):
        mutant(name, bug="b", expected="causality")(PlainModel)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def test_load_mutant_unknown_name():
    with pytest.raises(UsageError, match=r"mutant 'no_such_bug' is not in the catalog of \d+ "
                                         r"mutants.*use one of: average_backward_not_halved, "):
        load_mutant("no_such_bug")


def test_load_mutant_builds_implementation():
    implementation = load_mutant("truncated_bptt")
    assert isinstance(implementation, MutantImplementation)
    assert implementation.name == "mutant:truncated_bptt"
    assert implementation.description == MUTANTS["truncated_bptt"].bug


def test_load_mutant_accepts_control():
    assert load_mutant("plain").entry is CONTROLS["plain"]


def test_impl_spec_loads_mutant():
    implementation = load_implementation("properties.mutants:lengths_ignored")
    assert implementation.name == "mutant:lengths_ignored"


def test_impl_spec_unknown_mutant():
    with pytest.raises(UsageError, match=r"has no attribute 'no_such_bug'"):
        load_implementation("properties.mutants:no_such_bug")


# ---------------------------------------------------------------------------
# Controls: the bases have no bug
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("control", list(CONTROLS))
@pytest.mark.parametrize("name", PROPERTY_NAMES)
def test_control_passes(name, control):
    result = _run(name, load_mutant(control), max_examples=CONTROL_EXAMPLES)
    assert result.verdict == PASSED, result.message


# ---------------------------------------------------------------------------
# Every mutant is caught by the property its entry names
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", EXPECTED)
def test_expected_property_catches(name):
    entry = MUTANTS[name]
    result = _run(entry.expected, load_mutant(name), merge_modes=entry.merge_modes)
    assert result.verdict in CATCHES, (
        f"{entry.expected} gave {result.verdict!r} on {name} after {result.examples} examples"
    )


def test_every_mutant_names_its_property():
    # A mutant only reference_agreement catches would be a blind spot of the
    # catalog's own properties; add a property for it rather than an entry
    # without one.
    assert UNEXPECTED == []


def test_final_states_swap_caught_by_oracle():
    result = _run(ORACLE, load_mutant("final_states_directions_swapped"))
    assert result.verdict == FAILED
    assert re.search(r"^h_n: mismatch at (forward|backward) direction", result.message,
                     flags=re.MULTILINE), result.message


# ---------------------------------------------------------------------------
# The bugs that needed a property of their own are real bugs
# ---------------------------------------------------------------------------

def _ones_params(n_in, hidden):
    return {name: np.ones(shape) for name, shape in bilstm.param_shapes(n_in, hidden).items()}


def test_unstable_sigmoid_nan_for_large_input():
    x = np.full((1, 1, 1), 1000.0)
    model = load_mutant("unstable_sigmoid").build(_ones_params(1, 1), merge_mode="concat")
    with np.errstate(over="ignore", invalid="ignore"):
        y = model.forward(x).y
    assert np.isnan(y).all()
    assert np.isfinite(bilstm.forward(x, _ones_params(1, 1)).y).all()


def test_nan_upstream_at_padding_gives_nan_dx():
    rng = np.random.default_rng(0)
    params = bilstm.init_params(1, 1, rng=rng)
    x = rng.uniform(-1, 1, size=(1, 1, 2))
    lengths = np.array([1])
    dy = np.ones((1, 2, 2))
    dy[..., 1] = np.nan

    model = load_mutant("nan_upstream_times_mask").build(params, merge_mode="concat")
    model.forward(x, lengths=lengths)
    reference = bilstm.backward(bilstm.forward(x, params, lengths=lengths), dy)
    assert np.isnan(model.backward(dy).dx).all()
    assert np.isfinite(reference.dx).all()


# ---------------------------------------------------------------------------
# The benchmark script
# ---------------------------------------------------------------------------

def test_benchmark_row_lists_catches():
    bench = _load_benchmark()
    row = bench.run_mutant("params_halved_in_place", "ci")
    assert row.caught
    assert "no_mutation" in row.catching
    assert row.first_catch_s <= row.total_s
    assert len(row.shrunk_sizes) == 4
    assert len(row.results) == len(PROPERTY_NAMES)


def test_benchmark_summary_targets():
    bench = _load_benchmark()
    rows = [bench.MutantRow("truncated_bptt", "gradient_input", ["gradient_input"],
                            first_catch_s=1.0, shrunk_sizes=(1, 1, 1, 3)),
            bench.MutantRow("unstable_sigmoid", None)]
    summary = bench.summarize(rows, whole_run_s=10.0, profile="ci")
    assert summary["kill_rate"] == 0.5
    assert summary["not_caught"] == ["unstable_sigmoid"]
    assert summary["median_catch_s"] == 1.0
    assert summary["targets"]["kill_rate"]["met"] is False
    assert summary["targets"]["whole_run_s"]["met"] is True
    assert "| truncated_bptt | gradient_input | yes |" in bench.format_table(rows)
