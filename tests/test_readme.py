"""The README stays true to the code: properties, options and the test command."""

import re
from pathlib import Path

from properties.cli import build_parser
from properties.runner import select_properties

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _check_options():
    parser = build_parser()
    check = parser._subparsers._group_actions[0].choices["check"]
    return [opt for action in check._actions for opt in action.option_strings
            if opt.startswith("--") and opt != "--help"]


def test_readme_lists_every_property():
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", README, flags=re.MULTILINE))
    names = {prop.name for prop in select_properties()}

    assert names - listed == set()
    assert listed - names == set()


def test_readme_documents_every_check_option():
    missing = [opt for opt in _check_options() if f"`{opt}" not in README]

    assert missing == []


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n# Tests:[^\n]*\n(.+?)\n```", README, flags=re.DOTALL)
    ci_script = (ROOT / ".ci" / "run").read_text()

    assert len(blocks) == 1
    assert blocks[0].strip() in ci_script
