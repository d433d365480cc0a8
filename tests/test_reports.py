"""Tests of the reports of ``check``: JUnit XML, JSON, atomic writes and gradient pictures."""

import importlib.util
import io
import json
import sys
import types
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from cli_helpers import needs_numpy_ml, run_cli
from properties import reports
from properties.adapters.reference import ReferenceImplementation, ReferenceModel
from properties.casefile import load_case, save_case
from properties.protocol import Grads
from properties.reports import (
    draw_gradient_picture, gradient_errors, junit_xml_bytes, picture_panels,
    save_gradient_pictures, write_atomically,
)
from properties.runner import (
    FAILED, HARNESS_ERROR, IMPLEMENTATION_ERROR, KNOWN_FAILURE, NOT_APPLICABLE, PASSED,
    PropertyResult,
)

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason="matplotlib is not installed; pip install 'bilstm-verify[plots]'",
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAKE_MODULE = "bilstm_report_test_impls"


def run_check(*argv):
    """Run ``bilstm-verify check argv`` in this process; return ``(status, output)``."""
    return run_cli("check", *argv)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# A planted gradient bug: the backward direction's forget-gate block of dW_hh is 1.5 times too large.

class _ScaledForgetGradientModel(ReferenceModel):
    def backward(self, dy, *, dh_n=None, dc_n=None):
        grads = super().backward(dy, dh_n=dh_n, dc_n=dc_n)
        dparams = dict(grads.dparams)
        hidden = dparams["W_hh_bwd"].shape[0]
        wrong = dparams["W_hh_bwd"].copy()
        wrong[:, hidden:2 * hidden] *= 1.5
        dparams["W_hh_bwd"] = wrong
        return Grads(grads.dx, dparams, grads.dh0, grads.dc0)


class ScaledForgetGradient(ReferenceImplementation):
    """dW_hh_bwd's forget-gate block scaled by 1.5 (a wrong factor in one gate's backward)."""

    name = "scaled-forget-gradient"

    def build(self, params, *, merge_mode):
        return _ScaledForgetGradientModel(params, merge_mode)


@pytest.fixture
def planted(monkeypatch):
    """Make ``bilstm_report_test_impls:ScaledForgetGradient`` importable for --impl."""
    module = types.ModuleType(FAKE_MODULE)
    module.ScaledForgetGradient = ScaledForgetGradient
    monkeypatch.setitem(sys.modules, FAKE_MODULE, module)
    return f"{FAKE_MODULE}:ScaledForgetGradient"


# ---------------------------------------------------------------------------
# Reports of a real run
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def numpy_ml_reports(tmp_path_factory):
    """Run check on numpy-ml with both reports; return ``(status, output, xml root, json)``."""
    folder = tmp_path_factory.mktemp("reports")
    xml_path, json_path = folder / "r.xml", folder / "r.json"
    status, output = run_check(
        "--impl", "numpy-ml", "--property", "statelessness,zero_weights,padding_invariance",
        "--max-examples", "5", "--case-dir", str(folder / "cases"), "--quiet",
        "--junit-xml", str(xml_path), "--json", str(json_path))
    return status, output, ET.parse(xml_path).getroot(), json.loads(json_path.read_text())


def _testcases(root):
    return {case.get("name"): case for case in root.iter("testcase")}


def _case_properties(testcase):
    return {p.get("name"): p.get("value") for p in testcase.find("properties")}


@needs_numpy_ml
def test_junit_counts(numpy_ml_reports):
    _, _, root, _ = numpy_ml_reports
    suite = root.find("testsuite")
    assert suite.get("tests") == "3"
    assert suite.get("failures") == "1"
    assert suite.get("skipped") == "1"
    assert suite.get("errors") == "0"


@needs_numpy_ml
def test_junit_failure_element(numpy_ml_reports):
    _, _, root, _ = numpy_ml_reports
    failure = _testcases(root)["statelessness"].find("failure")
    assert failure.get("type") == FAILED
    assert failure.get("message").startswith("y of a second forward call on the same model")
    assert "call: model.forward(x); model.forward(x)" in failure.text


@needs_numpy_ml
def test_junit_case_file(numpy_ml_reports):
    _, _, root, _ = numpy_ml_reports
    testcase = _testcases(root)["statelessness"]
    path = _case_properties(testcase)["case_file"]
    assert load_case(path).meta["property"] == "statelessness"
    assert f"replay: bilstm-verify replay {path}" in testcase.find("system-out").text


@needs_numpy_ml
def test_junit_not_applicable_skipped(numpy_ml_reports):
    _, _, root, _ = numpy_ml_reports
    testcase = _testcases(root)["padding_invariance"]
    assert testcase.find("skipped").get("message") == "implementation lacks lengths"
    assert _case_properties(testcase)["verdict"] == NOT_APPLICABLE


@needs_numpy_ml
def test_junit_time_per_property(numpy_ml_reports):
    _, _, root, document = numpy_ml_reports
    times = {name: float(case.get("time")) for name, case in _testcases(root).items()}
    assert times["zero_weights"] > 0
    assert times["padding_invariance"] == 0
    assert times["zero_weights"] == pytest.approx(
        document["properties"][1]["seconds"], abs=1e-3)


@needs_numpy_ml
def test_junit_header_properties(numpy_ml_reports):
    _, _, root, _ = numpy_ml_reports
    header = _case_properties(root.find("testsuite"))
    assert header["implementation"] == "numpy-ml"
    assert header["implementation_version"] == "0.1.2"
    assert header["profile"] == "ci"
    assert header["max_examples"] == "5"
    assert header["properties"] == "statelessness, zero_weights, padding_invariance"


@needs_numpy_ml
def test_json_header(numpy_ml_reports):
    status, _, _, document = numpy_ml_reports
    assert document["schema"] == "bilstm-verify report"
    assert document["implementation"]["version"] == "0.1.2"
    assert document["settings"]["derandomize"] is True
    assert document["versions"]["numpy"] == np.__version__
    assert document["exit_status"] == status == 1


@needs_numpy_ml
def test_json_entries(numpy_ml_reports):
    _, _, _, document = numpy_ml_reports
    entries = {entry["name"]: entry for entry in document["properties"]}
    assert [entry["verdict"] for entry in entries.values()] == [FAILED, PASSED, NOT_APPLICABLE]
    assert entries["statelessness"]["case_summary"].startswith("n_ex=1 n_in=1 H=1 n_t=1")
    assert entries["statelessness"]["case_file"].endswith("statelessness-numpy-ml.npz")
    assert entries["zero_weights"]["case_file"] is None
    assert document["counts"] == {FAILED: 1, PASSED: 1, NOT_APPLICABLE: 1}


@needs_numpy_ml
def test_output_names_reports(numpy_ml_reports):
    _, output, _, _ = numpy_ml_reports
    assert "JUnit XML report: " in output
    assert "JSON report: " in output


# ---------------------------------------------------------------------------
# Verdicts that the run above does not produce
# ---------------------------------------------------------------------------

def _header():
    return {"implementation": {"spec": "x", "name": "x", "version": "1", "capabilities": ""},
            "settings": {"profile": "ci"}, "versions": {}, "started": "now", "hostname": "h"}


def test_junit_other_verdicts():
    results = [
        PropertyResult("a", HARNESS_ERROR, "Traceback ...\nKeyError: 'x'"),
        PropertyResult("b", IMPLEMENTATION_ERROR, "forward raised ValueError"),
        PropertyResult("c", KNOWN_FAILURE, "mismatch\n  known failure: the reason (kf.txt:1)"),
        PropertyResult("d", "stale known failure", "kf.txt:2: 'd' is listed\nremove the entry"),
    ]
    cases = _testcases(ET.fromstring(junit_xml_bytes(_header(), results, {}, 1.0)))
    assert cases["a"].find("error").get("type") == HARNESS_ERROR
    assert cases["b"].find("failure").get("message") == "forward raised ValueError"
    assert cases["c"].find("skipped").get("message") == "known failure: the reason (kf.txt:1)"
    assert cases["d"].find("system-err").text.startswith("kf.txt:2: 'd' is listed")
    assert list(cases["d"].iter("failure")) + list(cases["d"].iter("skipped")) == []


def test_junit_drops_control_characters():
    results = [PropertyResult("a", FAILED, "bad\x00byte\x1b")]
    failure = ET.fromstring(junit_xml_bytes(_header(), results, {}, 1.0)).find(".//failure")
    assert failure.text == "badbyte"


def test_report_path_folder_rejected(tmp_path, capsys):
    status, _ = run_check("--property", "zero_weights", "--json", str(tmp_path))
    assert status == 2
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_report_path_missing_folder(tmp_path, capsys):
    status, _ = run_check("--property", "zero_weights", "--junit-xml",
                          str(tmp_path / "absent" / "r.xml"))
    assert status == 2
    assert "does not exist; create" in capsys.readouterr().err


def test_report_write_error(tmp_path, monkeypatch, capsys):
    def fail(path, payload):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(reports, "write_atomically", fail)
    status, output = run_check("--property", "zero_weights", "--max-examples", "2",
                               "--json", str(tmp_path / "r.json"))
    assert status == 2
    assert "zero_weights" in output
    assert f"--json {str(tmp_path / 'r.json')!r} could not be written" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------

def test_write_atomically_replaces(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    write_atomically(path, b"new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_write_atomically_failure_keeps_old(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_atomically(path, "text, not bytes")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


# ---------------------------------------------------------------------------
# Pictures of gradient failures
# ---------------------------------------------------------------------------

@pytest.fixture
def planted_case(tmp_path, make_case):
    """Save a gradient_params case of the planted bug; return its path."""
    case = make_case(merge_mode="concat", optional=True)
    meta = {"implementation": f"{FAKE_MODULE}:ScaledForgetGradient", "verdict": FAILED}
    return save_case(tmp_path / "cases", case, property_name="gradient_params", extra_seed=0,
                     meta=meta)


def test_gradient_errors_locate_bug(planted_case):
    errors = gradient_errors(ScaledForgetGradient(), load_case(planted_case), 30.0)
    hidden = errors["W_hh_bwd"].shape[0]
    wrong = errors["W_hh_bwd"][:, hidden:2 * hidden]
    assert sorted(errors) == sorted(["W_ih_fwd", "W_hh_fwd", "b_fwd", "W_ih_bwd", "W_hh_bwd",
                                     "b_bwd"])
    assert np.abs(wrong).max() > 1e-3
    errors["W_hh_bwd"][:, hidden:2 * hidden] = 0.0
    assert max(np.abs(e).max() for e in errors.values()) < 1e-7


def test_gradient_errors_reference_tiny(planted_case):
    errors = gradient_errors(ReferenceImplementation(), load_case(planted_case), 30.0)
    assert max(np.abs(e).max() for e in errors.values()) < 1e-7


def test_picture_panels_layout():
    errors = {"W_ih_fwd": np.zeros((3, 8)), "b_bwd": np.arange(8.0) - 6.0,
              "x": np.zeros((2, 3, 5)), "h0": np.zeros((2, 2, 2))}
    panels = {title.split(" (")[0]: (rows, columns, cells)
              for title, rows, columns, cells in picture_panels(errors)}
    assert panels["parameters"][0] == ["W_ih_fwd", "b_bwd"]
    assert panels["parameters"][1] == ["i", "f", "g", "o"]
    assert panels["parameters"][2][1].tolist() == [-6.0, -4.0, -2.0, 1.0]
    assert panels["input x"][2].shape == (2, 5)
    assert panels["initial states"][2].shape == (1, 2)


@needs_matplotlib
def test_draw_picture_png(tmp_path):
    errors = {"W_hh_bwd": np.array([[0.0, 0.5, 0.0, 0.0]]), "x": np.zeros((1, 1, 2))}
    path = tmp_path / "picture.png"
    draw_gradient_picture(errors, path, title="title", subtitle="case")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


@needs_matplotlib
def test_check_saves_picture(planted, tmp_path):
    json_path = tmp_path / "r.json"
    status, output = run_check("--impl", planted, "--property", "gradient_params",
                               "--max-examples", "5", "--quiet", "--json", str(json_path))
    entry = json.loads(json_path.read_text())["properties"][0]
    assert status == 1
    assert entry["verdict"] == FAILED
    assert entry["picture"] == entry["case_file"].removesuffix(".npz") + ".png"
    assert open(entry["picture"], "rb").read(8) == PNG_SIGNATURE
    assert f"gradient picture of gradient_params: {entry['picture']}" in output


def test_no_matplotlib_note(planted_case, monkeypatch):
    # None in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = io.StringIO()
    results = [PropertyResult("gradient_params", FAILED, "wrong", case_path=str(planted_case))]
    pictures = save_gradient_pictures(results, ScaledForgetGradient(), 30.0, out)
    assert pictures == {}
    assert out.getvalue() == ("note: matplotlib is not installed, so gradient failures get no "
                              "picture; pip install 'bilstm-verify[plots]' to get one\n")
