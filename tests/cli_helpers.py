"""Helpers shared by the tests that run the command line in this process."""

import importlib.util
import io
import re

import pytest

from properties.cli import main

needs_numpy_ml = pytest.mark.skipif(
    importlib.util.find_spec("numpy_ml") is None,
    reason="numpy-ml is not installed; pip install 'bilstm-verify[numpy-ml]'",
)

_ROW = re.compile(r"^(\S+)  +(\S.*?)  +(\d+)  +\d+\.\d+$")


def run_cli(*argv):
    """Run ``main(argv)`` in this process; return ``(exit status, standard output)``."""
    out = io.StringIO()
    try:
        status = main(list(argv), out=out)
    except SystemExit as exc:
        # argparse exits by itself on a bad command line.
        status = exc.code
    return status, out.getvalue()


def table_rows(output):
    """Return ``{property: (verdict, examples)}`` from the result table of ``check``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("property "))
    rows = {}
    for line in lines[start + 1:]:
        if not line:
            break
        name, verdict, examples = _ROW.match(line).groups()
        rows[name] = (verdict, int(examples))
    return rows
