"""``bilstm-verify matrix``: verdict tables over several implementations."""

import io
import json

import pytest

from properties import matrix
from properties.cli import main
from properties.errors import UsageError
from properties.runner import select_properties

PLANTED = "planted:StatefulAcrossCalls"


def _run(tmp_path, *impls):
    out = io.StringIO()
    argv = ["matrix", "--max-examples", "3", "--case-dir", str(tmp_path / "cases"),
            "--markdown", str(tmp_path / "m.md"), "--json", str(tmp_path / "m.json")]
    for impl in impls:
        argv += ["--impl", impl]
    status = main(argv, out=out)
    return status, (tmp_path / "m.md").read_text(), json.loads((tmp_path / "m.json").read_text())


@pytest.fixture(scope="module")
def reference_and_planted(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("matrix"), "reference", PLANTED)


def test_matrix_markdown_has_a_row_per_property(reference_and_planted):
    _, markdown, _ = reference_and_planted
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]

    assert [row.split("`")[1] for row in rows] == [p.name for p in select_properties()]


def test_matrix_marks_planted_failure(reference_and_planted):
    status, markdown, _ = reference_and_planted
    row = next(line for line in markdown.splitlines() if line.startswith("| `statelessness`"))

    assert status == 1
    assert row.split("|")[2].strip() == "pass"
    assert row.split("|")[3].strip() == "**FAIL**"


def test_matrix_json_lists_verdicts(reference_and_planted):
    _, _, payload = reference_and_planted
    reference, planted = payload["implementations"]
    verdicts = {r["property"]: r["verdict"] for r in planted["results"]}

    assert reference["impl"] == "reference"
    assert {r["verdict"] for r in reference["results"]} == {"passed"}
    assert verdicts["statelessness"] == "FAILED"
    assert verdicts["zero_weights"] == "passed"


def test_matrix_rejects_repeated_impl():
    with pytest.raises(UsageError, match="--impl 'reference' is given twice"):
        matrix.check_specs(["reference", "reference"])
