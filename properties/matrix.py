"""``bilstm-verify matrix``: the property catalog over several implementations.

The result is an implementation-by-property table of verdicts, written as
Markdown for people and JSON for tools.
"""

import json
import time

from properties.adapters import load_implementation
from properties.catalog import Subject
from properties.errors import UsageError
from properties.reports import write_atomically
from properties.runner import (
    FAILED, HARNESS_ERROR, IMPLEMENTATION_ERROR, KNOWN_FAILURE, NOT_APPLICABLE, PASSED,
    case_saver, exit_status, run_property, select_properties,
)

DEFAULT_IMPLEMENTATIONS = ("reference", "numpy-ml", "torch", "keras", "onnxruntime")
"""Implementations ``matrix`` runs when no ``--impl`` is given."""

CELL_TEXT = {
    PASSED: "pass",
    FAILED: "**FAIL**",
    IMPLEMENTATION_ERROR: "**error**",
    KNOWN_FAILURE: "known",
    NOT_APPLICABLE: "n/a",
    HARNESS_ERROR: "**harness error**",
}
"""Markdown cell text of each verdict; a verdict not listed is shown as it is."""


def run_matrix(specs, run_settings, *, case_dir, profile, time_limit_s, progress=None):
    """Run every property on every implementation in ``specs``.

    Returns
    -------
    dict
        ``{"columns": [...], "properties": [...], "cells": {spec: {property: result}},
        "versions": {spec: str}, "seconds": {spec: float}}``.
    """
    props = select_properties()
    implementations = {spec: load_implementation(spec) for spec in specs}

    cells, versions, seconds = {}, {}, {}
    for spec, implementation in implementations.items():
        subject = Subject(implementation, time_limit_s)
        save = case_saver(case_dir, spec, implementation, profile, None)
        start = time.perf_counter()
        cells[spec] = {}
        for prop in props:
            result = run_property(prop, subject, run_settings, save=save)
            cells[spec][prop.name] = result
            if progress is not None:
                progress(spec, prop, result)
        versions[spec] = implementation.version()
        seconds[spec] = time.perf_counter() - start

    return {"columns": list(specs), "properties": [p.name for p in props], "cells": cells,
            "versions": versions, "seconds": seconds}


def matrix_status(matrix):
    """Return 1 when any cell is failing, else 0."""
    return max(exit_status(list(column.values())) for column in matrix["cells"].values())


def markdown_table(matrix):
    """Return the matrix as a Markdown table: one row per property, one column per implementation."""
    columns = matrix["columns"]
    header = "| property | " + " | ".join(f"`{c}` {matrix['versions'][c]}" for c in columns) + " |"
    lines = [header, "| --- |" + " --- |" * len(columns)]
    for name in matrix["properties"]:
        row = [CELL_TEXT.get(matrix["cells"][c][name].verdict, matrix["cells"][c][name].verdict)
               for c in columns]
        lines.append(f"| `{name}` | " + " | ".join(row) + " |")

    times = " | ".join(f"{matrix['seconds'][c]:.0f} s" for c in columns)
    lines.append(f"| time | {times} |")
    return "\n".join(lines) + "\n"


def json_payload(matrix):
    """Return the matrix as JSON-serialisable data."""
    return {
        "implementations": [
            {"impl": spec, "version": matrix["versions"][spec], "seconds": matrix["seconds"][spec],
             "results": [{"property": name, "verdict": r.verdict, "message": r.message,
                          "case_file": r.case_path, "case": r.case_summary}
                         for name, r in matrix["cells"][spec].items()]}
            for spec in matrix["columns"]
        ],
    }


def write_matrix(matrix, *, markdown=None, json_path=None):
    """Write the Markdown and JSON files that were asked for."""
    if markdown:
        write_atomically(markdown, markdown_table(matrix).encode())
    if json_path:
        write_atomically(json_path, json.dumps(json_payload(matrix), indent=2).encode())


def check_specs(specs):
    """Reject a repeated implementation, which would overwrite its own column."""
    seen = set()
    for spec in specs:
        if spec in seen:
            raise UsageError(f"--impl {spec!r} is given twice; name each implementation once")
        seen.add(spec)
    return specs
