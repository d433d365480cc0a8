"""Tests of the pytest plugin, run through ``pytester`` in this process or in a subprocess.

Runs that pass ``--hypothesis-profile`` or ``-n`` go to a subprocess: the
first changes Hypothesis's global default settings, the second starts
worker processes.
"""

import importlib.metadata
import importlib.util
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cli_helpers import needs_numpy_ml
from properties.casefile import load_case
from properties.known_failures import KnownFailures, parse_known_failures
from properties.cli import build_parser
from properties.plugin import NODE_ID, stale_entries
from properties.runner import select_properties

pytest_plugins = ["pytester"]

# pytester's in-process runs drop the modules they import when they end, and
# neither numpy-ml's numpy extensions nor the property registry can be
# imported twice, so both are imported here, before any run.
select_properties()
if importlib.util.find_spec("numpy_ml") is not None:
    importlib.import_module("properties.adapters.numpy_ml")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _plugin_args():
    # Once installed, the entry point loads the plugin; -p properties.plugin
    # would then register the module a second time and pytest would stop.
    installed = any(entry.name == "bilstm_verify"
                    for entry in importlib.metadata.entry_points(group="pytest11"))
    return ["-p", "bilstm_verify"] if installed else ["-p", "properties.plugin"]


PLUGIN = _plugin_args()

TINY_PROFILE = """\
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

settings.register_profile("bilstm-tiny", parent=settings.get_profile("bilstm-dev"),
                          max_examples=5, database=DirectoryBasedExampleDatabase("examples-db"))
"""


@pytest.fixture
def subprocess_env(monkeypatch):
    """Let a pytest subprocess import the harness from this checkout."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))


def junit_outcomes(path):
    """Return ``{test id: outcome}`` from a pytest JUnit XML file."""
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for kind in ("failure", "error", "skipped"):
            if case.find(kind) is not None:
                outcome = kind
        outcomes[case.get("name")] = outcome
    return outcomes


# ---------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------

def test_no_impl_adds_nothing(pytester):
    pytester.makepyfile(test_own="def test_own():\n    assert True\n")
    result = pytester.runpytest_inprocess(*PLUGIN)
    result.assert_outcomes(passed=1)
    # The "plugins:" line names the installed package, so only header lines count.
    assert [line for line in result.outlines if line.startswith("bilstm-verify:")] == []


def test_ids_every_property_and_mode(pytester):
    result = pytester.runpytest_inprocess(*PLUGIN, "--bilstm-impl=reference", "--collect-only",
                                          "-q")
    ids = [line for line in result.outlines if line.startswith(f"{NODE_ID}::")]
    assert len(ids) == 5 * len(select_properties())
    assert f"{NODE_ID}::test_property[gradient_params-concat]" in ids
    assert f"{NODE_ID}::test_property[statelessness-None]" in ids


def test_markers_select(pytester):
    pytester.makepyfile(test_own="def test_own():\n    assert True\n")
    for marker in ("bilstm_verify", "hypothesis"):
        result = pytester.runpytest_inprocess(*PLUGIN, "--bilstm-impl=reference", "-m", marker,
                                              "--collect-only", "-q")
        n_tests = 5 * len(select_properties())
        assert f"{n_tests}/{n_tests + 1} tests collected (1 deselected)" in result.stdout.str()
        assert "test_own.py::test_own" not in result.stdout.str()


def test_report_header(pytester):
    result = pytester.runpytest_inprocess(*PLUGIN, "--bilstm-impl=reference", "-k",
                                          "zero_weights-concat")
    result.stdout.fnmatch_lines([
        "bilstm-verify: implementation 'reference' (reference *)",
        "bilstm-verify: capabilities: merge modes 'concat', 'sum', 'average', 'multiply', None;*",
        "bilstm-verify: hypothesis profile 'bilstm-ci': max_examples=30, derandomize=True, "
        "database=None, deadline=None; time limit 30 s per call",
        "bilstm-verify: known failures: none; case files go to *bilstm-cases",
    ])
    result.assert_outcomes(passed=1)


# ---------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------

@needs_numpy_ml
def test_failure_saves_case(pytester):
    result = pytester.runpytest_inprocess(*PLUGIN, "--bilstm-impl=numpy-ml", "-k",
                                          "statelessness-concat", "--junitxml=report.xml")
    case_file = pytester.path / "bilstm-cases" / "statelessness-numpy-ml.npz"
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*- bilstm-verify case -*",
        "shrunk case: n_ex=1 n_in=1 H=1 n_t=1 merge=concat float64 *",
        f"case file: {case_file}",
        f"replay: bilstm-verify replay {case_file} --impl numpy-ml",
    ])
    assert "Draw 1 (case): <case n_ex=1 n_in=1 H=1 n_t=1 merge=concat" in result.stdout.str()
    assert load_case(case_file).meta["verdict"] == "FAILED"
    properties = {p.get("name"): p.get("value")
                  for p in ET.parse(pytester.path / "report.xml").getroot().iter("property")}
    assert properties["case_file"] == str(case_file)


@needs_numpy_ml
def test_not_applicable_skipped(pytester):
    result = pytester.runpytest_inprocess(
        *PLUGIN, "--bilstm-impl=numpy-ml", "-rs", "-k",
        "zero_weights-None or padding_invariance-concat or merge_backward_consistency-concat")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines_random([
        "SKIPPED * not applicable: numpy-ml does not support merge mode None",
        "SKIPPED * not applicable: implementation lacks lengths",
        "SKIPPED * not applicable: the property does not use merge mode concat",
    ])


@needs_numpy_ml
def test_known_failures_xfail_and_stale(pytester):
    pytester.makefile(".txt", kf="statelessness: keeps state\nzero_weights sum: listed, passes\n")
    result = pytester.runpytest_inprocess(
        *PLUGIN, "--bilstm-impl=numpy-ml", "--bilstm-known-failures=kf.txt", "-rxX", "-k",
        "statelessness-concat or statelessness-sum or zero_weights-sum or zero_weights-concat")
    result.assert_outcomes(xfailed=2, xpassed=1, passed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines_random([
        "XFAIL *test_property[[]statelessness-concat[]] - known failure: keeps state (kf.txt:1)",
        "XPASS *test_property[[]zero_weights-sum[]] - known failure: listed, passes (kf.txt:2)",
        "*bilstm-verify: stale known failures*",
        "kf.txt:2: 'zero_weights sum' (listed, passes): all 1 tests it covers passed (XPASS); "
        "remove the entry",
    ])
    assert "kf.txt:1: 'statelessness'" not in result.stdout.str()


USAGE_ERRORS = [
    (["--bilstm-known-failures=kf.txt"], "--bilstm-known-failures needs --bilstm-impl"),
    (["--bilstm-impl=nosuch"], "'nosuch' is not a built-in implementation"),
    (["--bilstm-impl=reference", "--bilstm-known-failures=kf.txt"],
     "kf.txt:1: invalid known-failure entry 'statelessness'"),
    (["--bilstm-impl=reference", "--bilstm-time-limit=0"], "--bilstm-time-limit 0.0 is not"),
]


@pytest.mark.parametrize("args, message", USAGE_ERRORS,
                         ids=["known-failures without impl", "unknown impl", "bad entry",
                              "zero time limit"])
def test_usage_error(pytester, args, message):
    pytester.makefile(".txt", kf="statelessness\n")
    result = pytester.runpytest_inprocess(*PLUGIN, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_stale_entries_rules():
    known = KnownFailures(parse_known_failures(
        "statelessness: any mode\nzero_weights sum: sum only\ncausality: never ran\n", "kf.txt"))
    outcomes = {("statelessness", "concat"): "xfailed", ("statelessness", "sum"): "xpassed",
                ("zero_weights", "sum"): "xpassed", ("zero_weights", "concat"): "passed"}
    stale = stale_entries(known, outcomes)
    assert [(entry.label(), n_tests) for entry, n_tests in stale] == [("zero_weights sum", 1)]


# ---------------------------------------------------------------------------
# Hypothesis profiles and the example database (subprocess)
# ---------------------------------------------------------------------------

@needs_numpy_ml
def test_profile_and_database(pytester, subprocess_env):
    pytester.makeconftest(TINY_PROFILE)
    args = [*PLUGIN, "--bilstm-impl=numpy-ml", "-k", "statelessness-concat",
            "--hypothesis-profile=bilstm-tiny", "--hypothesis-show-statistics"]
    first = pytester.runpytest_subprocess(*args, timeout=180)
    second = pytester.runpytest_subprocess(*args, timeout=180)

    first.stdout.fnmatch_lines(["bilstm-verify: hypothesis profile 'bilstm-tiny': max_examples=5, "
                                "derandomize=False, database=DirectoryBasedExampleDatabase(*"])
    first.assert_outcomes(failed=1)
    assert "during reuse phase" not in first.stdout.str()
    second.assert_outcomes(failed=1)
    # Hypothesis words the counts differently across versions; this line is
    # the same in 6.155 and 6.170.
    second.stdout.fnmatch_lines(["*during reuse phase*",
                                 "*Found 1 distinct error in this phase*"])


# ---------------------------------------------------------------------------
# Parallel runs (subprocess)
# ---------------------------------------------------------------------------

EXPECTED = {
    "reference": {"statelessness": "passed", "zero_weights": "passed"},
    "numpy-ml": {"statelessness": "failure", "zero_weights": "passed"},
}


@pytest.mark.parametrize("implementation", [
    "reference", pytest.param("numpy-ml", marks=needs_numpy_ml)])
def test_xdist_matches_serial(pytester, subprocess_env, implementation):
    args = [*PLUGIN, f"--bilstm-impl={implementation}", "-k", "statelessness or zero_weights"]
    pytester.runpytest_inprocess(*args, "--junitxml=serial.xml")
    parallel = pytester.runpytest_subprocess(*args, "-n", "2", "--junitxml=parallel.xml",
                                             timeout=300)
    serial_outcomes = junit_outcomes(pytester.path / "serial.xml")
    parallel_outcomes = junit_outcomes(pytester.path / "parallel.xml")

    assert "2 workers" in parallel.stdout.str()
    assert len(serial_outcomes) == 10
    assert parallel_outcomes == serial_outcomes
    for name, outcome in EXPECTED[implementation].items():
        modes = implementation_modes(implementation)
        assert {serial_outcomes[f"test_property[{name}-{mode}]"] for mode in modes} == {outcome}


def implementation_modes(implementation):
    """Merge modes the implementation supports, as they appear in test ids."""
    if implementation == "numpy-ml":
        return ["concat", "sum", "average", "multiply"]
    return ["concat", "sum", "average", "multiply", "None"]


# ---------------------------------------------------------------------------
# The GitHub Actions recipe in examples/
# ---------------------------------------------------------------------------

def _workflow():
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((REPO_ROOT / "examples" / "github-actions.yml").read_text())


def _step_commands(job):
    return [step["run"] for step in job["steps"] if "run" in step]


def test_workflow_uploads_on_failure():
    for name, job in _workflow()["jobs"].items():
        uploads = [step for step in job["steps"]
                   if step.get("uses", "").startswith("actions/upload-artifact")]
        assert len(uploads) == 1, name
        assert uploads[0]["if"] == "failure()"
        assert "bilstm-cases/" in uploads[0]["with"]["path"]


def test_workflow_caches_database():
    steps = _workflow()["jobs"]["pytest"]["steps"]
    caches = [step for step in steps if step.get("uses", "").startswith("actions/cache")]
    assert [cache["with"]["path"] for cache in caches] == [".hypothesis"]
    assert "--hypothesis-profile bilstm-dev" in " ".join(_step_commands({"steps": steps}))


def test_workflow_check_command_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    script = _step_commands(_workflow()["jobs"]["check"])[-1].replace("\\\n", " ")
    command = next(line for line in script.splitlines() if "bilstm-verify check" in line)
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.impl == "mypkg.lstm:MyBiLSTM"
    assert str(args.junit_xml) == "reports/bilstm-verify.xml"
    assert str(args.json) == "reports/bilstm-verify.json"
    assert args.known_failures == "bilstm-known-failures.txt"


def test_workflow_pytest_options_exist(pytester):
    script = _step_commands(_workflow()["jobs"]["pytest"])[-1]
    used = set(re.findall(r"--bilstm-[a-z-]+", script))
    help_text = pytester.runpytest_inprocess(*PLUGIN, "--help").stdout.str()
    assert used == {"--bilstm-impl", "--bilstm-known-failures", "--bilstm-case-dir"}
    assert [option for option in sorted(used) if option not in help_text] == []


def test_invalid_parallel_switch_is_usage_error(pytester, monkeypatch):
    monkeypatch.setenv("BILSTM_PARALLEL_DIRECTIONS", "yes")
    result = pytester.runpytest_inprocess(*PLUGIN, "--bilstm-impl=reference")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "BILSTM_PARALLEL_DIRECTIONS is 'yes'" in result.stderr.str()
