"""Tests of the ``bilstm-verify`` command line: list, check, replay and usage errors.

Most tests call :func:`properties.cli.main` in this process.  A subprocess
runs ``python3 -m properties`` where the test needs a module found through
``PYTHONPATH`` or must survive an implementation that hangs.
"""

import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import needs_numpy_ml, run_cli, table_rows
from properties.adapters.reference import ReferenceImplementation, ReferenceModel
from properties.casefile import load_case, save_case
from properties.catalog import REGISTRY, catalog_order
from properties.runner import import_catalog

REPO_ROOT = Path(__file__).resolve().parents[1]

FAKE_MODULE = "bilstm_test_impls"
"""Name under which :func:`broken_impls` puts the implementations below into sys.modules."""

def run_cli_subprocess(*argv, pythonpath, cwd, timeout):
    """Run ``python3 -m properties argv``; return the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath))
    return subprocess.run(
        [sys.executable, "-m", "properties", *argv], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


_REPORT_HEAD = re.compile(r"^(FAILED|implementation error|harness error|known failure): (\S+)$")


def failure_reports(output):
    """Return ``{property: report}`` from the failure sections of ``check``.

    A report is a dict with the keys ``verdict``, ``case`` (the shrunk case
    summary), ``case_file`` and ``message`` (the remaining lines).
    """
    reports = {}
    for block in output.split("\n\n"):
        lines = block.splitlines()
        head = _REPORT_HEAD.match(lines[0]) if lines else None
        if head is None:
            continue
        report = {"verdict": head.group(1), "case": None, "case_file": None, "message": ""}
        for line in lines[1:]:
            if line.startswith("  shrunk case: "):
                report["case"] = line.removeprefix("  shrunk case: ")
            elif line.startswith("  case file: "):
                report["case_file"] = line.removeprefix("  case file: ")
            elif not line.startswith("  replay: "):
                report["message"] += line.strip() + "\n"
        reports[head.group(2)] = report
    return reports


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Run every test in its own folder, so a default ``./bilstm-cases`` lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# Implementations with planted contract violations, for --impl bilstm_test_impls:NAME.

class _AlteredModel(ReferenceModel):
    def __init__(self, params, merge_mode, alter):
        super().__init__(params, merge_mode)
        self.alter = alter

    def forward(self, x, **kwargs):
        out = super().forward(x, **kwargs)
        out.y = self.alter(out.y, x)
        return out


class _Altered(ReferenceImplementation):
    """The reference with ``y = alter(y, x)`` applied to every forward output."""

    name = "altered"

    @staticmethod
    def alter(y, x):
        return y

    def build(self, params, *, merge_mode):
        return _AlteredModel(params, merge_mode, self.alter)


class RaisingForward(_Altered):
    name = "raising-forward"

    @staticmethod
    def alter(y, x):
        raise RuntimeError("planted failure in forward")


class WrongShape(_Altered):
    name = "wrong-shape"

    @staticmethod
    def alter(y, x):
        return np.concatenate([y, y], axis=-1)


class NaNOutput(_Altered):
    name = "nan-output"

    @staticmethod
    def alter(y, x):
        return np.full_like(y, np.nan)


class RaisingOnLongBatches(_Altered):
    """Raises only when n_ex >= 3 and n_t >= 3, so a random search finds it at a random example."""

    name = "raising-on-long-batches"

    @staticmethod
    def alter(y, x):
        n_ex, _, n_t = x.shape
        if n_ex >= 3 and n_t >= 3:
            raise RuntimeError(f"planted failure at n_ex={n_ex}, n_t={n_t}")
        return y


def make_reference():
    return ReferenceImplementation()


@pytest.fixture
def broken_impls(monkeypatch):
    """Make the classes above importable as ``bilstm_test_impls:NAME``."""
    module = types.ModuleType(FAKE_MODULE)
    for target in (RaisingForward, WrongShape, NaNOutput, RaisingOnLongBatches,
                   ReferenceImplementation, make_reference):
        setattr(module, target.__name__, target)
    module.reference_instance = ReferenceImplementation()
    module.not_an_implementation = "reference"
    monkeypatch.setitem(sys.modules, FAKE_MODULE, module)
    return FAKE_MODULE


USER_MODULE = textwrap.dedent('''\
    """A user's adapters, imported by --impl user_bilstm:NAME."""

    import time

    from properties.adapters.reference import ReferenceImplementation, ReferenceModel


    class WrappedReference(ReferenceImplementation):
        name = "wrapped-reference"

        def version(self):
            return "9.9"


    class _SleepingModel(ReferenceModel):
        def forward(self, x, **kwargs):
            time.sleep(60)
            return super().forward(x, **kwargs)


    class Sleeping(ReferenceImplementation):
        name = "sleeping"

        def build(self, params, *, merge_mode):
            return _SleepingModel(params, merge_mode)
''')


@pytest.fixture
def user_module_dir(tmp_path):
    """A folder holding ``user_bilstm.py``, which is not importable from the tests."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "user_bilstm.py").write_text(USER_MODULE)
    return folder


# list

def test_list_names_every_property():
    import_catalog()
    status, output = run_cli("list")

    assert status == 0
    headings = re.findall(r"^(\S+)  \(needs: ", output, flags=re.MULTILINE)
    assert headings == [prop.name for prop in catalog_order()]


def test_list_prints_every_claim():
    import_catalog()
    status, output = run_cli("list")

    assert status == 0
    for prop in REGISTRY.values():
        assert prop.claim, prop.name
        for line in prop.claim.splitlines():
            assert line.strip() in output, prop.name


# check on the reference

SUBSET = ["direction_symmetry", "gradient_input", "statelessness"]


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "multiply", "None"])
def test_check_reference_passes(tmp_path, merge_mode):
    status, output = run_cli(
        "check", "--max-examples", "3", "--property", ",".join(SUBSET[:2]),
        "--property", SUBSET[2], "--merge-mode", merge_mode, "--case-dir", "cases",
    )

    assert status == 0
    assert {name: verdict for name, (verdict, _) in table_rows(output).items()} == {
        name: "passed" for name in SUBSET
    }
    assert "implementation 'reference'" in output
    assert "max_examples=3" in output
    assert "3 passed" in output
    assert not (tmp_path / "cases").exists()


def test_check_reference_every_property(tmp_path):
    import_catalog()
    status, output = run_cli("check", "--max-examples", "2", "--quiet", "--case-dir", "cases")

    assert status == 0
    rows = table_rows(output)
    assert list(rows) == [prop.name for prop in catalog_order()]
    for name, (verdict, _) in rows.items():
        assert verdict == "passed", name


def test_check_quiet_hides_progress():
    _, loud = run_cli("check", "--max-examples", "1", "--property", "statelessness")
    _, quiet = run_cli("check", "--max-examples", "1", "--property", "statelessness", "--quiet")

    assert "[1/1] statelessness" in loud
    assert "[1/1]" not in quiet


def test_check_seed_turns_off_derandomize():
    status, output = run_cli("check", "--max-examples", "1", "--property", "statelessness",
                             "--seed", "5")

    assert status == 0
    assert "derandomize=False, seed=5" in output


@needs_numpy_ml
def test_check_not_applicable_passes():
    # numpy-ml has no merge mode None and no initial states.
    status, output = run_cli("check", "--impl", "numpy-ml", "--merge-mode", "None",
                             "--property", "statelessness,gradient_initial_state")
    rows = table_rows(output)

    assert status == 0
    assert rows["statelessness"][0] == "not applicable"
    assert rows["gradient_initial_state"][0] == "not applicable"
    assert "2 not applicable" in output


# check and replay on numpy-ml, whose defects are known

@pytest.fixture(scope="module")
def numpy_ml_check(tmp_path_factory):
    """Run check on numpy-ml once; return ``(exit status, output)``."""
    case_dir = tmp_path_factory.mktemp("numpy-ml-cases")
    return run_cli(
        "check", "--impl", "numpy-ml", "--property", "statelessness",
        "--property", "gradient_input", "--case-dir", str(case_dir), "--quiet",
    )


NUMPY_ML_DEFECTS = [
    # (property, verdict, text of the message)
    ("gradient_input", "implementation error", "backward (merge_mode='multiply') raised UnboundLocalError"),
    ("statelessness", "FAILED", "y of a second forward call on the same model"),
]


@needs_numpy_ml
def test_check_numpy_ml_exit_status(numpy_ml_check):
    status, output = numpy_ml_check

    assert status == 1
    assert "exit status 1" in output


@needs_numpy_ml
@pytest.mark.parametrize("name, verdict, message", NUMPY_ML_DEFECTS)
def test_check_numpy_ml_finds_defect(numpy_ml_check, name, verdict, message):
    _, output = numpy_ml_check
    report = failure_reports(output)[name]

    assert table_rows(output)[name][0] == verdict
    assert report["verdict"] == verdict
    assert message in report["message"]
    assert report["case"].startswith("n_ex=1 n_in=1 H=1 n_t=1 ")
    assert Path(report["case_file"]).is_file()
    assert load_case(report["case_file"]).meta["verdict"] == verdict


@needs_numpy_ml
def test_check_numpy_ml_crash_in_multiply_mode(numpy_ml_check):
    _, output = numpy_ml_check

    assert "merge=multiply" in failure_reports(output)["gradient_input"]["case"]


@needs_numpy_ml
@pytest.mark.parametrize("name, verdict, message", NUMPY_ML_DEFECTS)
def test_replay_numpy_ml_same_verdict(numpy_ml_check, name, verdict, message):
    case_file = failure_reports(numpy_ml_check[1])[name]["case_file"]
    status, output = run_cli("replay", case_file)

    assert status == 1
    assert f"verdict: {verdict}\n" in output
    assert message in output
    assert f"recorded verdict: {verdict}" in output
    assert "implementation 'numpy-ml'" in output


@needs_numpy_ml
@pytest.mark.parametrize("name", [name for name, _, _ in NUMPY_ML_DEFECTS])
def test_replay_on_reference_passes(numpy_ml_check, name):
    case_file = failure_reports(numpy_ml_check[1])[name]["case_file"]
    status, output = run_cli("replay", case_file, "--impl", "reference")

    assert status == 0
    assert "verdict: passed\n" in output
    assert "implementation 'reference'" in output


def test_replay_case_with_every_array(tmp_path, full_case):
    path = save_case(tmp_path, full_case, property_name="gradient_final_state", extra_seed=3,
                     meta={"implementation": "reference"})
    status, output = run_cli("replay", str(path))

    assert status == 0
    assert "property gradient_final_state" in output
    assert f"case: {full_case.summary()}" in output
    assert "verdict: passed\n" in output


# Usage errors: exit status 2, a message on stderr, no traceback.

QUICK = ["--max-examples", "1", "--property", "statelessness"]
"""Options that keep a check short if an invalid option were accepted."""

USAGE_ERRORS = [
    pytest.param(["check", "--impl", "nope"], "--impl 'nope' is not a built-in implementation",
                 id="check --impl nope"),
    pytest.param(["check", "--impl", "nosuchmodule:X"],
                 "module 'nosuchmodule' could not be imported", id="check --impl nosuchmodule:X"),
    pytest.param(["check", "--impl", "os:path"], "gives a module, not an Implementation",
                 id="check --impl os:path"),
    pytest.param(["check", "--impl", "os:no_such_name"], "has no attribute 'no_such_name'",
                 id="check --impl os:no_such_name"),
    pytest.param(["check", "--property", "statelessness,nosuch"],
                 "--property nosuch: no such property", id="check --property nosuch"),
    pytest.param(["check", "--merge-mode", "diagonal"],
                 "argument --merge-mode: merge_mode='diagonal' is not a valid merge mode",
                 id="check --merge-mode diagonal"),
    pytest.param(["check", "--profile", "nope"], "argument --profile: invalid choice: 'nope'",
                 id="check --profile nope"),
    pytest.param(["check", "--max-examples", "0"], "--max-examples 0 must be at least 1",
                 id="check --max-examples 0"),
    pytest.param(["check", "--max-examples", "many"],
                 "argument --max-examples: invalid int value", id="check --max-examples many"),
    pytest.param(["check", "--time-limit", "0", *QUICK], "--time-limit",
                 id="check --time-limit 0"),
    pytest.param(["check", "--time-limit", "-1", *QUICK], "--time-limit",
                 id="check --time-limit -1"),
    pytest.param(["check", "--time-limit", "nan", *QUICK], "--time-limit",
                 id="check --time-limit nan"),
    pytest.param(["check", "--case-dir", "a-file", *QUICK], "--case-dir",
                 id="check --case-dir a-file"),
    pytest.param(["replay", "missing.npz"], "'missing.npz' does not exist",
                 id="replay missing.npz"),
    pytest.param(["replay", "empty.npz"], "'empty.npz' is corrupt or truncated",
                 id="replay empty.npz"),
    pytest.param(["replay", "missing.npz", "--time-limit", "-1"], "--time-limit",
                 id="replay --time-limit -1"),
    pytest.param(["frobnicate"], "invalid choice: 'frobnicate'", id="frobnicate"),
    pytest.param([], "the following arguments are required: command", id="no command"),
]


@pytest.mark.parametrize("argv, message", USAGE_ERRORS)
def test_usage_error(in_tmp_path, capsys, argv, message):
    (in_tmp_path / "a-file").write_text("not a folder")
    (in_tmp_path / "empty.npz").write_bytes(b"")

    status, output = run_cli(*argv)
    err = capsys.readouterr().err

    assert status == 2
    assert message in err
    assert "Traceback" not in err
    assert output == ""
    assert not (in_tmp_path / "bilstm-cases").exists()


@pytest.mark.parametrize("attribute", ["make_reference", "reference_instance",
                                       "ReferenceImplementation"])
def test_impl_attribute_forms(broken_impls, attribute):
    # A function returning an instance, an instance and a class are all accepted.
    status, output = run_cli("check", "--impl", f"{broken_impls}:{attribute}",
                             "--max-examples", "1", "--property", "statelessness")

    assert status == 0
    assert table_rows(output)["statelessness"][0] == "passed"


def test_impl_attribute_not_implementation(broken_impls, capsys):
    status, _ = run_cli("check", "--impl", f"{broken_impls}:not_an_implementation")

    assert status == 2
    assert "gives a str, not an Implementation" in capsys.readouterr().err


# --impl module:attribute from a user's folder

def test_impl_user_module(user_module_dir, tmp_path):
    result = run_cli_subprocess(
        "check", "--impl", "user_bilstm:WrappedReference", "--max-examples", "2",
        "--property", "statelessness", "--case-dir", "cases",
        pythonpath=[user_module_dir, REPO_ROOT], cwd=tmp_path, timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert "implementation 'user_bilstm:WrappedReference' (wrapped-reference 9.9)" in result.stdout
    assert table_rows(result.stdout)["statelessness"][0] == "passed"
    assert result.stderr == ""


# Broken implementations: verdict "implementation error", exit status 1, no traceback.

BROKEN = [
    pytest.param("RaisingForward", "forward (merge_mode='concat') raised RuntimeError: planted failure in forward",
                 id="raises"),
    pytest.param("WrongShape", "forward (merge_mode='concat') returned y of shape", id="wrong shape"),
    pytest.param("NaNOutput", "forward (merge_mode='concat') returned a non-finite y", id="NaN"),
]


def assert_implementation_error(status, output, message):
    assert status == 1
    assert table_rows(output)["statelessness"][0] == "implementation error"
    report = failure_reports(output)["statelessness"]
    assert report["verdict"] == "implementation error"
    assert message in report["message"]
    assert Path(report["case_file"]).is_file()
    assert "Traceback" not in output


@pytest.mark.parametrize("attribute, message", BROKEN)
def test_broken_implementation(broken_impls, capsys, attribute, message):
    status, output = run_cli("check", "--impl", f"{broken_impls}:{attribute}",
                             "--property", "statelessness", "--quiet")

    assert_implementation_error(status, output, message)
    assert capsys.readouterr().err == ""


def test_hanging_implementation(user_module_dir, tmp_path):
    result = run_cli_subprocess(
        "check", "--impl", "user_bilstm:Sleeping", "--time-limit", "0.5",
        "--property", "statelessness", "--quiet", "--case-dir", "cases",
        pythonpath=[user_module_dir, REPO_ROOT], cwd=tmp_path, timeout=120,
    )

    assert_implementation_error(
        result.returncode, result.stdout,
        "forward (merge_mode='concat') did not return within the time limit of 0.5 s",
    )
    assert "Traceback" not in result.stderr


# Reproducibility of the default (ci) profile.

def without_paths(report):
    return {key: value for key, value in report.items() if key != "case_file"}


def test_ci_profile_repeats_run(broken_impls):
    argv = ["check", "--impl", f"{broken_impls}:RaisingOnLongBatches",
            "--property", "statelessness"]
    first_status, first = run_cli(*argv, "--case-dir", "first")
    second_status, second = run_cli(*argv, "--case-dir", "second")

    assert first_status == second_status == 1
    # The example counts differ between random searches, so equal rows show derandomization.
    assert table_rows(second) == table_rows(first)
    first_reports = {k: without_paths(v) for k, v in failure_reports(first).items()}
    second_reports = {k: without_paths(v) for k, v in failure_reports(second).items()}
    assert second_reports == first_reports
