"""Tests of ``bilstm-verify export-test``: regression tests written from case files.

The exported tests run in a pytest subprocess from a folder of their own,
with only the repository on ``PYTHONPATH``, as they would in a user's suite.
"""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import needs_numpy_ml, run_cli
from properties.casefile import save_case
from properties.cli import main
from properties.export import IMPL_VARIABLE, render_test

REPO_ROOT = Path(__file__).resolve().parents[1]

_OUTCOME = re.compile(r"^(PASSED|FAILED|SKIPPED|XFAIL|ERROR) \S*::(\w+)")


def run_export(*argv):
    """Run ``bilstm-verify export-test argv`` in this process; return ``(status, output)``."""
    return run_cli("export-test", *argv)


def run_pytest(target, *, implementation=None):
    """Run pytest on a folder or file in a subprocess; return ``(exit code, {test: outcome}, output)``."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop(IMPL_VARIABLE, None)
    if implementation is not None:
        env[IMPL_VARIABLE] = implementation
    process = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", str(target)],
        cwd=target if target.is_dir() else target.parent, env=env, capture_output=True, text=True, timeout=120,
    )
    outcomes = {}
    for line in process.stdout.splitlines():
        match = _OUTCOME.match(line)
        if match:
            outcomes[match.group(2)] = match.group(1)
    return process.returncode, outcomes, process.stdout + process.stderr


def _save(folder, case, *, implementation, property_name="statelessness"):
    meta = {"implementation": implementation, "implementation_version": "0.1.2",
            "verdict": "FAILED", "message": "recorded message\nsecond line"}
    return save_case(folder, case, property_name=property_name, extra_seed=7, meta=meta)


@pytest.fixture
def suite(tmp_path, monkeypatch, make_case):
    """A user's test folder holding three exported tests; return it after one run.

    - ``test_statelessness_numpy_ml``: a numpy-ml case, copied next to the test;
    - ``test_statelessness_reference``: a reference case, copied;
    - ``test_zero_weights_reference``: a reference case left in ``cases/`` (``--no-copy``).
    """
    monkeypatch.chdir(tmp_path)
    cases = tmp_path / "cases"
    tests = tmp_path / "user-tests"
    tests.mkdir()

    numpy_ml_case = _save(cases, make_case(), implementation="numpy-ml")
    reference_case = _save(cases, make_case(seed=1), implementation="reference")
    zero_case = _save(cases, make_case(seed=2), implementation="reference",
                      property_name="zero_weights")
    for case, extra in ((numpy_ml_case, []), (reference_case, []), (zero_case, ["--no-copy"])):
        status, _ = run_export(str(case), "-o", str(tests / _test_file(case)), *extra)
        assert status == 0
    return tests


def _test_file(case_path):
    property_name, _, implementation = case_path.stem.partition("-")
    return f"test_{property_name}_{implementation.replace('-', '_')}.py"


@needs_numpy_ml
def test_exported_outcomes(suite):
    code, outcomes, output = run_pytest(suite)
    assert outcomes == {"test_statelessness_numpy_ml": "FAILED",
                        "test_statelessness_reference": "PASSED",
                        "test_zero_weights_reference": "PASSED"}, output
    assert code == 1
    assert "statelessness on 'numpy-ml': FAILED" in output
    assert "y of a second forward call on the same model" in output


@needs_numpy_ml
def test_exported_impl_variable(suite):
    code, outcomes, output = run_pytest(suite / "test_statelessness_numpy_ml.py",
                                        implementation="reference")
    assert outcomes == {"test_statelessness_numpy_ml": "PASSED"}, output
    assert code == 0


def test_exported_files(suite):
    names = sorted(p.name for p in suite.iterdir() if p.suffix in (".py", ".npz"))
    assert names == ["statelessness-numpy-ml.npz", "statelessness-reference.npz",
                     "test_statelessness_numpy_ml.py", "test_statelessness_reference.py",
                     "test_zero_weights_reference.py"]


def test_exported_paths(suite):
    copied = (suite / "test_statelessness_numpy_ml.py").read_text()
    referenced = (suite / "test_zero_weights_reference.py").read_text()
    assert "CASE_FILE = Path(__file__).parent / 'statelessness-numpy-ml.npz'" in copied
    assert "CASE_FILE = Path(__file__).parent / '../cases/zero_weights-reference.npz'" in referenced
    assert f"IMPLEMENTATION = os.environ.get('{IMPL_VARIABLE}', 'numpy-ml')" in copied


def test_exported_comments(suite):
    text = (suite / "test_statelessness_numpy_ml.py").read_text()
    assert "# Recorded: verdict 'FAILED' for numpy-ml 0.1.2" in text
    assert "#   recorded message\n#   second line\n" in text


def test_render_compiles_odd_message():
    meta = {"property": "statelessness", "implementation": "pkg.mod:Impl", "summary": "n_ex=1",
            "message": 'a """ quote\nand a \\ backslash\n' + "\n".join(["line"] * 30)}
    source = render_test(meta, case_path="case.npz", implementation="pkg.mod:Impl")
    compile(source, "test_generated.py", "exec")
    assert "def test_statelessness_pkg_mod_impl():" in source
    assert "#   ... (17 more lines)" in source


def test_render_drops_control_characters():
    meta = {"property": "statelessness", "implementation": "numpy-ml",
            "summary": "n_ex=1\x00", "message": "bad\x00byte"}
    source = render_test(meta, case_path="case.npz", implementation="numpy-ml")
    compile(source, "test_generated.py", "exec")
    assert "#   badbyte\n" in source


def test_unknown_property_rejected(tmp_path, monkeypatch, make_case, capsys):
    monkeypatch.chdir(tmp_path)
    case = _save(tmp_path / "cases", make_case(), implementation="reference",
                 property_name="not_a_property")
    status = main(["export-test", str(case)], out=io.StringIO())
    assert status == 2
    assert "names the property 'not_a_property', which this version" in capsys.readouterr().err
    assert list(tmp_path.glob("*.py")) == []


def test_default_output_name(tmp_path, monkeypatch, make_case):
    monkeypatch.chdir(tmp_path)
    case = _save(tmp_path / "cases", make_case(), implementation="mypkg.lstm:MyBiLSTM")
    status, output = run_export(str(case))
    assert status == 0
    assert (tmp_path / "test_statelessness_mypkg_lstm_mybilstm.py").is_file()
    assert "run it with: python -m pytest test_statelessness_mypkg_lstm_mybilstm.py" in output


def test_impl_option(tmp_path, monkeypatch, make_case):
    monkeypatch.chdir(tmp_path)
    case = _save(tmp_path / "cases", make_case(), implementation="numpy-ml")
    run_export(str(case), "--impl", "reference", "-o", "test_fixed.py")
    assert "os.environ.get('BILSTM_VERIFY_IMPL', 'reference')" in Path("test_fixed.py").read_text()


def test_existing_output_needs_force(tmp_path, monkeypatch, make_case, capsys):
    monkeypatch.chdir(tmp_path)
    case = _save(tmp_path / "cases", make_case(), implementation="reference")
    Path("test_mine.py").write_text("# mine\n")
    status = main(["export-test", str(case), "-o", "test_mine.py"], out=io.StringIO())
    assert status == 2
    assert "exists; pass --force to replace it" in capsys.readouterr().err
    assert Path("test_mine.py").read_text() == "# mine\n"
    assert run_export(str(case), "-o", "test_mine.py", "--force")[0] == 0


def test_differing_case_copy_rejected(tmp_path, monkeypatch, make_case, capsys):
    monkeypatch.chdir(tmp_path)
    first = _save(tmp_path / "a", make_case(seed=1), implementation="reference")
    second = _save(tmp_path / "b", make_case(seed=2), implementation="reference")
    assert run_export(str(first), "-o", "test_a.py")[0] == 0
    status = main(["export-test", str(second), "-o", "test_b.py"], out=io.StringIO())
    assert status == 2
    assert "exists and differs from" in capsys.readouterr().err


BAD_ARGUMENTS = [
    (["-o", "regression.txt"], "does not end in .py"),
    (["-o", "absent/test_x.py"], "folder 'absent' does not exist"),
]


@pytest.mark.parametrize("extra, message", BAD_ARGUMENTS, ids=["-o regression.txt", "-o absent/"])
def test_usage_error(tmp_path, monkeypatch, make_case, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    case = _save(tmp_path / "cases", make_case(), implementation="reference")
    status = main(["export-test", str(case), *extra], out=io.StringIO())
    assert status == 2
    assert message in capsys.readouterr().err


def test_missing_case_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = main(["export-test", "absent.npz"], out=io.StringIO())
    assert status == 2
    assert "case file 'absent.npz' does not exist" in capsys.readouterr().err
