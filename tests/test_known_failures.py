"""Tests of known-failure lists: parsing, merging with the adapter, and ``check --known-failures``."""

import re
from pathlib import Path

import pytest

from cli_helpers import needs_numpy_ml, run_cli, table_rows
from properties.errors import UsageError
from properties.known_failures import (
    STALE_KNOWN_FAILURE, KnownFailure, KnownFailures, load_known_failures, parse_known_failures,
    read_known_failures,
)
from properties.protocol import Implementation
from properties.runner import FAILED, KNOWN_FAILURE, PASSED, PropertyResult, select_properties


def run_check(*argv):
    """Run ``bilstm-verify check argv`` in this process; return ``(status, output)``."""
    return run_cli("check", *argv)


def verdicts(output):
    """Return ``{property: verdict}`` from the result table of ``check``."""
    return {name: verdict for name, (verdict, _) in table_rows(output).items()}


class _Listed(Implementation):
    """An implementation whose adapter lists two known failures."""

    name = "listed"
    known_failures = {"statelessness": "adapter reason", "causality": "adapter causality"}


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------

GOOD_FILE = """\
# comment line
   # indented comment

statelessness: keeps state # not a comment
zero_weights concat: concat only
causality None: the mode None
single_step ave: Keras spelling
"""


def test_parse_entry_count():
    entries = parse_known_failures(GOOD_FILE, "kf.txt")
    assert len(entries) == 4


def test_parse_entry_fields():
    entries = parse_known_failures(GOOD_FILE, "kf.txt")
    assert entries[0] == KnownFailure("statelessness", None, True, "keeps state # not a comment",
                                      "kf.txt:4")
    assert entries[1] == KnownFailure("zero_weights", "concat", False, "concat only", "kf.txt:5")


def test_parse_mode_none_and_alias():
    entries = parse_known_failures(GOOD_FILE, "kf.txt")
    assert entries[2].merge_mode is None
    assert not entries[2].all_modes
    assert entries[3].merge_mode == "average"


def test_parse_empty_file():
    assert parse_known_failures("\n# only a comment\n", "kf.txt") == []


BAD_LINES = [
    ("statelessness keeps state", "no ':' between the property and the reason"),
    ("statelessness:   ", "the reason after ':' is empty"),
    (": no property", "found 0 words"),
    ("statelessness concat extra: reason", "found 3 words"),
    ("statelesness: typo", "there is no property 'statelesness'"),
    ("statelessness concatenate: reason", "'concatenate' is not a merge mode"),
    ("merge_backward_consistency concat: reason", "never runs in merge mode concat"),
]


@pytest.mark.parametrize("line, message", BAD_LINES, ids=[line for line, _ in BAD_LINES])
def test_parse_error(line, message):
    text = f"# header\n\n{line}\n"
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        parse_known_failures(text, "kf.txt")
    assert "kf.txt:3: invalid known-failure entry" in str(info.value)
    assert "each entry is 'property [merge_mode]: reason'" in str(info.value)


def test_parse_duplicate_entry():
    text = "statelessness: one\nzero_weights: other\nstatelessness: again\n"
    with pytest.raises(UsageError, match=r"kf.txt:3: .*listed twice \(first on line 1\)"):
        parse_known_failures(text, "kf.txt")


def test_parse_same_property_two_modes():
    entries = parse_known_failures("statelessness concat: a\nstatelessness sum: b\n", "kf.txt")
    assert [e.merge_mode for e in entries] == ["concat", "sum"]


def test_read_missing_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist or is not a file"):
        read_known_failures(tmp_path / "absent.txt")


def test_read_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("statelessness: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        read_known_failures(path)


# ---------------------------------------------------------------------------
# Merging and lookup
# ---------------------------------------------------------------------------

def test_load_adapter_entries_alone():
    known = load_known_failures(None, _Listed())
    assert [e.property_name for e in known.entries] == ["statelessness", "causality"]
    assert known.entries[0].source == "built into the adapter listed"


def test_load_file_replaces_adapter_entry(tmp_path):
    path = tmp_path / "kf.txt"
    path.write_text("statelessness: file reason\n")
    known = load_known_failures(path, _Listed())
    reasons = {e.property_name: e.reason for e in known.entries}
    assert reasons == {"statelessness": "file reason", "causality": "adapter causality"}


def test_load_mode_entry_keeps_adapter_entry(tmp_path):
    path = tmp_path / "kf.txt"
    path.write_text("statelessness concat: file reason\n")
    known = load_known_failures(path, _Listed())
    assert known.reason("statelessness", "concat") == f"file reason ({path}:1)"
    assert known.reason("statelessness", "sum") == "adapter reason (built into the adapter listed)"


def test_entry_for_prefers_merge_mode():
    known = KnownFailures(parse_known_failures("statelessness: any\nstatelessness sum: sum\n", "f"))
    assert known.entry_for("statelessness", "sum").reason == "sum"
    assert known.entry_for("statelessness", "concat").reason == "any"
    assert known.entry_for("zero_weights", "concat") is None


def test_entry_for_mode_none_differs_from_all():
    known = KnownFailures(parse_known_failures("causality None: the None mode\n", "f"))
    assert known.entry_for("causality", None).reason == "the None mode"
    assert known.entry_for("causality", "concat") is None


def test_describe_counts_sources(tmp_path):
    path = tmp_path / "kf.txt"
    path.write_text("zero_weights: file reason\n")
    assert load_known_failures(path, _Listed()).describe() == (
        f"3 entries (1 from {path}, 2 built into the adapter listed)")
    assert KnownFailures().describe() == "none"


# ---------------------------------------------------------------------------
# Stale entries
# ---------------------------------------------------------------------------

def _prop(name):
    return next(p for p in select_properties() if p.name == name)


def test_review_passed_listed_is_stale():
    known = KnownFailures(parse_known_failures("zero_weights: says it fails\n", "kf.txt"))
    result = known.review(PropertyResult("zero_weights", PASSED), _prop("zero_weights"),
                          _Listed.capabilities)
    assert result.verdict == STALE_KNOWN_FAILURE
    assert "kf.txt:1: 'zero_weights' is listed as a known failure" in result.message


def test_review_mode_not_drawn_stays_passed():
    known = KnownFailures(parse_known_failures("zero_weights sum: says it fails\n", "kf.txt"))
    result = known.review(PropertyResult("zero_weights", PASSED), _prop("zero_weights"),
                          _Listed.capabilities, ["concat"])
    assert result.verdict == PASSED


def test_review_failed_unchanged():
    known = KnownFailures(parse_known_failures("zero_weights: says it fails\n", "kf.txt"))
    failed = PropertyResult("zero_weights", FAILED, "message")
    assert known.review(failed, _prop("zero_weights"), _Listed.capabilities) is failed


# ---------------------------------------------------------------------------
# bilstm-verify check --known-failures
# ---------------------------------------------------------------------------

@pytest.fixture
def numpy_ml_list(tmp_path, monkeypatch):
    """Run in ``tmp_path`` and return a known-failure file with a real and a stale entry."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "numpy-ml.known"
    path.write_text("# numpy-ml\nstatelessness: keeps state between calls\n"
                    "zero_weights concat: listed, but numpy-ml passes it\n")
    return path


@needs_numpy_ml
def test_check_known_and_stale(numpy_ml_list):
    status, output = run_check("--impl", "numpy-ml", "--property", "statelessness,zero_weights",
                               "--max-examples", "5", "--known-failures", str(numpy_ml_list),
                               "--quiet")
    assert verdicts(output) == {"statelessness": KNOWN_FAILURE, "zero_weights": STALE_KNOWN_FAILURE}
    assert status == 0
    assert "known failure: keeps state between calls" in output
    assert "warning: stale known failure: zero_weights" in output
    assert f"{numpy_ml_list}:3: 'zero_weights concat' is listed" in output


@needs_numpy_ml
def test_check_other_mode_still_fails(tmp_path, monkeypatch):
    # The failure shrinks to merge mode concat, which an entry for sum does not cover.
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "kf.txt"
    path.write_text("statelessness sum: only sum is listed\n")
    status, output = run_check("--impl", "numpy-ml", "--property", "statelessness",
                               "--max-examples", "5", "--known-failures", str(path), "--quiet")
    assert verdicts(output) == {"statelessness": FAILED}
    assert status == 1


def test_check_invalid_file_exit_status(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "kf.txt"
    path.write_text("zero_weights\n")
    status, _ = run_check("--property", "zero_weights", "--known-failures", str(path))
    assert status == 2
    assert f"{path}:1: invalid known-failure entry 'zero_weights'" in capsys.readouterr().err


def test_example_file_parses():
    path = Path(__file__).resolve().parents[1] / "examples" / "numpy-ml.known-failures"
    entries = read_known_failures(path)
    assert len(entries) == 8
    assert {e.property_name for e in entries if e.all_modes} == {
        "statelessness", "dtype_honoured", "merge_backward_consistency"}
