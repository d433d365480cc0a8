"""Reports of a ``check`` run: JUnit XML, JSON, and pictures of gradient failures.

``bilstm-verify check --junit-xml FILE --json FILE`` writes both reports
after the run.  Each is written to a temporary file in the target folder and
then renamed over the target, so a reader sees the old report or the new
one, never half of one.

- JUnit XML: one ``<testcase>`` per property with its time in seconds.
  ``FAILED`` and ``implementation error`` are ``<failure>`` elements,
  ``harness error`` an ``<error>``, ``not applicable`` and ``known failure``
  are ``<skipped>``.  The verdict, the case file and the picture are
  ``<property>`` elements of the test case, and ``<system-out>`` repeats the
  shrunk case, the case file and the replay command.
- JSON: a header (implementation, version, capabilities, settings, package
  versions) and one entry per property: verdict, message, examples,
  seconds, case summary, case file and picture.

A failed gradient property also gets a picture: a heatmap of the analytic
minus the numerical gradient, entry by entry, recomputed for the shrunk case
and saved next to its case file as PNG.  It needs matplotlib (``pip install
'bilstm-verify[plots]'``); without it the picture is skipped with a note.
"""

import argparse
import json
import os
import re
import socket
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from bilstm.params import GATES, PARAM_NAMES
from properties.casefile import load_case
from properties.catalog import Subject, run_backward, run_forward
from properties.errors import HarnessError, ImplementationError, UsageError
from properties.gradcheck import directional_derivative
from properties.props_gradients import make_loss
from properties.runner import (
    FAILED, FAILING_VERDICTS, HARNESS_ERROR, KNOWN_FAILURE, NOT_APPLICABLE, describe_environment,
    package_versions,
)

REPORT_SCHEMA = "bilstm-verify report"
REPORT_FORMAT = 1

GRADIENT_TENSORS = {
    "gradient_input": ("x",),
    "gradient_params": PARAM_NAMES,
    "gradient_initial_state": ("h0", "c0"),
    "gradient_final_state": ("x", "h0", "c0") + PARAM_NAMES,
}
"""Gradient property -> the tensors whose gradients it checks, and so the picture shows."""

MAX_PICTURE_ENTRIES = 4096
"""Maximum number of tensor entries a picture differentiates, one numerical derivative each.

Shrunk cases have a few dozen entries.  The largest case the strategies draw
has about 850, so the cap only stops a case file written by hand.
"""

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


# ---------------------------------------------------------------------------
# Options and header
# ---------------------------------------------------------------------------

def _report_path(text):
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name, "
                                         f"for example {str(path / 'report.xml')!r}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder of {text!r} does not exist; create "
                                         f"{str(path.parent)!r} first")
    return path


def add_report_options(parser):
    """Add ``--junit-xml FILE`` and ``--json FILE`` to the ``check`` parser."""
    parser.add_argument("--junit-xml", type=_report_path, default=None, metavar="FILE",
                        help="write a JUnit XML report, one test case per property")
    parser.add_argument("--json", type=_report_path, default=None, metavar="FILE",
                        help="write a JSON report: header and one entry per property")


def run_header(args, implementation, run_settings, known_failures):
    """Return the header both reports share: implementation, settings, versions.

    Parameters
    ----------
    args : argparse.Namespace
        The options of ``check``.
    implementation : properties.protocol.Implementation
    run_settings : hypothesis.settings
    known_failures : properties.known_failures.KnownFailures
    """
    return {
        "implementation": {
            "spec": args.impl,
            "name": implementation.name,
            "version": implementation.version(),
            "capabilities": implementation.capabilities.describe(),
        },
        "settings": {
            "profile": args.profile,
            "max_examples": run_settings.max_examples,
            "derandomize": run_settings.derandomize,
            "seed": args.seed,
            "time_limit_s": args.time_limit,
            "merge_modes": None if args.merge_mode is None else [str(m) for m in args.merge_mode],
            "properties": _property_names(args.property),
            "known_failures_file": args.known_failures,
            "known_failures": known_failures.describe(),
        },
        "versions": package_versions(),
        "environment": describe_environment(),
        "hostname": socket.gethostname(),
    }


def _property_names(values):
    """Return the names that ``--property`` options give, or None when there are none."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

def write_atomically(path, payload):
    """Write ``payload`` (bytes) to ``path`` through a temporary file and a rename.

    An existing file at ``path`` is replaced, because a report describes the
    latest run.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        # mkstemp creates the file private (0600), but a report is ordinary data.
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_reports(args, header, results, *, pictures, status, seconds, out):
    """Write the reports that ``args.junit_xml`` and ``args.json`` ask for.

    Parameters
    ----------
    args : argparse.Namespace
    header : dict
        From :func:`run_header`.
    results : list of properties.runner.PropertyResult
    pictures : dict of str to str
        Property name -> PNG path.
    status : int
        Exit status of the run.
    seconds : float
        Wall time of the run.
    out : file
        Where the paths written are printed.

    Raises
    ------
    HarnessError
        When a report cannot be written.
    """
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - seconds))
    header = dict(header, started=started)
    if args.junit_xml is not None:
        _write_report("--junit-xml", args.junit_xml,
                      junit_xml_bytes(header, results, pictures, seconds))
        print(f"JUnit XML report: {args.junit_xml}", file=out)
    if args.json is not None:
        _write_report("--json", args.json, json_bytes(header, results, pictures, status, seconds))
        print(f"JSON report: {args.json}", file=out)


def _write_report(option, path, payload):
    try:
        write_atomically(path, payload)
    except OSError as exc:
        raise HarnessError(f"{option} {str(path)!r} could not be written ({exc}); check that "
                           f"the folder exists and is writable") from None


def json_bytes(header, results, pictures, status, seconds):
    """Return the JSON report as UTF-8 bytes."""
    counts = {}
    for result in results:
        counts[result.verdict] = counts.get(result.verdict, 0) + 1

    report = {"schema": REPORT_SCHEMA, "format": REPORT_FORMAT, **header,
              "seconds": round(seconds, 3), "exit_status": status, "counts": counts,
              "properties": [_json_entry(result, pictures) for result in results]}
    return (json.dumps(report, indent=2) + "\n").encode("utf-8")


def _json_entry(result, pictures):
    return {
        "name": result.name,
        "verdict": result.verdict,
        "message": result.message,
        "examples": result.examples,
        "seconds": round(result.seconds, 3),
        "case_summary": result.case_summary or None,
        "case_file": result.case_path,
        "picture": pictures.get(result.name),
    }


def junit_xml_bytes(header, results, pictures, seconds):
    """Return the JUnit XML report as UTF-8 bytes."""
    implementation = header["implementation"]
    suite_name = f"bilstm-verify check {implementation['spec']}"
    counts = _junit_counts(results)

    root = ET.Element("testsuites", name="bilstm-verify", time=f"{seconds:.3f}", **counts)
    suite = ET.SubElement(root, "testsuite", name=suite_name, time=f"{seconds:.3f}",
                          timestamp=header["started"], hostname=header["hostname"], **counts)
    _add_properties(suite, _header_properties(header))
    for result in results:
        _add_testcase(suite, implementation["spec"], result, pictures.get(result.name))

    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _junit_counts(results):
    kinds = [_junit_kind(result.verdict) for result in results]
    return {"tests": str(len(results)), "failures": str(kinds.count("failure")),
            "errors": str(kinds.count("error")), "skipped": str(kinds.count("skipped"))}


def _junit_kind(verdict):
    """Return the JUnit element of a verdict: failure, error, skipped, or None for a pass."""
    if verdict == HARNESS_ERROR:
        return "error"
    if verdict in FAILING_VERDICTS:
        return "failure"
    if verdict in (NOT_APPLICABLE, KNOWN_FAILURE):
        return "skipped"
    return None


def _header_properties(header):
    implementation, run_settings = header["implementation"], header["settings"]
    pairs = [(f"implementation_{key}" if key != "spec" else "implementation", value)
             for key, value in implementation.items()]
    pairs += [(key, value) for key, value in run_settings.items()]
    pairs += [(f"version_{name}", version) for name, version in header["versions"].items()]
    return pairs


def _add_properties(element, pairs):
    properties = ET.SubElement(element, "properties")
    for name, value in pairs:
        if value is None:
            text = ""
        elif isinstance(value, list):
            text = ", ".join(str(v) for v in value)
        else:
            text = str(value)
        ET.SubElement(properties, "property", name=name, value=_xml_text(text))


def _add_testcase(suite, spec, result, picture):
    testcase = ET.SubElement(suite, "testcase", classname=f"bilstm-verify.{spec}",
                             name=result.name, time=f"{result.seconds:.3f}")
    pairs = [("verdict", result.verdict), ("examples", result.examples)]
    if result.case_path:
        pairs.append(("case_file", result.case_path))
    if picture:
        pairs.append(("picture", picture))
    _add_properties(testcase, pairs)

    kind = _junit_kind(result.verdict)
    message = _xml_text(result.message)
    if kind is not None:
        element = ET.SubElement(testcase, kind, type=result.verdict,
                                message=_headline(result.verdict, message))
        element.text = message or None

    lines = _case_lines(result, picture)
    if lines:
        ET.SubElement(testcase, "system-out").text = _xml_text("\n".join(lines))
    if kind is None and message:
        # A stale known failure passes, and its warning goes to system-err.
        ET.SubElement(testcase, "system-err").text = message


def _headline(verdict, message):
    """Return the line that sums up a message: the known failure's reason, else the first line."""
    lines = [line.strip() for line in message.splitlines()]
    if verdict == KNOWN_FAILURE:
        reasons = [line for line in lines if line.startswith("known failure:")]
        if reasons:
            return reasons[-1]
    return lines[0] if lines else verdict


def _case_lines(result, picture):
    lines = []
    if result.case_summary:
        lines.append(f"shrunk case: {result.case_summary}")
    if result.case_path:
        lines.append(f"case file: {result.case_path}")
        lines.append(f"replay: bilstm-verify replay {result.case_path}")
    if picture:
        lines.append(f"gradient picture: {picture}")
    return lines


def _xml_text(text):
    """Drop the control characters that XML 1.0 cannot contain."""
    return _XML_INVALID.sub("", text)


# ---------------------------------------------------------------------------
# Pictures of gradient failures
# ---------------------------------------------------------------------------

def save_gradient_pictures(results, implementation, time_limit_s, out):
    """Draw a picture for every FAILED gradient property with a case file.

    Returns
    -------
    dict of str to str
        Property name -> path of the PNG, next to the case file.
    """
    failed_gradients = [r for r in results if r.verdict == FAILED and r.name in GRADIENT_TENSORS
                        and r.case_path]
    if not failed_gradients:
        return {}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("note: matplotlib is not installed, so gradient failures get no picture; "
              "pip install 'bilstm-verify[plots]' to get one", file=out)
        return {}

    pictures = {}
    for result in failed_gradients:
        path = Path(result.case_path).with_suffix(".png")
        try:
            errors = gradient_errors(implementation, load_case(result.case_path), time_limit_s)
        except (HarnessError, ImplementationError) as exc:
            print(f"note: no gradient picture for {result.name}: {exc}", file=out)
            continue
        title = f"{result.name} of {implementation.name}: analytic minus numerical gradient"
        draw_gradient_picture(errors, path, title=title, subtitle=result.case_summary)
        pictures[result.name] = str(path)
        print(f"gradient picture of {result.name}: {path}", file=out)
    return pictures


def gradient_errors(implementation, saved, time_limit_s):
    """Return analytic minus numerical gradient, entry by entry, for a saved gradient case.

    Parameters
    ----------
    implementation : properties.protocol.Implementation
    saved : properties.casefile.SavedCase
        A case of one of :data:`GRADIENT_TENSORS`' properties.
    time_limit_s : float
        Seconds one call into the implementation may take.

    Returns
    -------
    dict of str to ndarray of float64
        Tensor name -> errors shaped like the tensor: ``x`` (n_ex, n_in,
        n_t), ``h0`` and ``c0`` (2, n_ex, H), parameters as in
        :mod:`bilstm.params`.  Tensors the case lacks (no ``h0``) or the
        implementation returns no gradient for are left out.

    Raises
    ------
    UsageError
        When the case is not a gradient property's, or has more than
        :data:`MAX_PICTURE_ENTRIES` entries.
    """
    name = saved.meta["property"]
    if name not in GRADIENT_TENSORS:
        raise UsageError(f"case of property {name!r} has no gradient picture; only "
                         f"{', '.join(GRADIENT_TENSORS)} have one")
    case = saved.case
    subject = Subject(implementation, time_limit_s)
    dy = np.zeros_like(case.dy) if name == "gradient_final_state" else case.dy

    model, _ = run_forward(subject, case)
    grads = run_backward(model, case, subject, dy=dy)
    analytic = _analytic_gradients(case, grads, GRADIENT_TENSORS[name])
    point = {tensor: _case_tensor(case, tensor) for tensor in analytic}
    size = sum(value.size for value in point.values())
    if size > MAX_PICTURE_ENTRIES:
        raise UsageError(f"the case has {size} gradient entries, over the "
                         f"{MAX_PICTURE_ENTRIES} a picture differentiates; shrink the case")

    loss = make_loss(subject, case, dy)
    return {tensor: gradient - _numerical_gradient(loss, point, tensor)
            for tensor, gradient in analytic.items()}


def _case_tensor(case, name):
    if name in ("x", "h0", "c0"):
        return getattr(case, name)
    return case.params[name]


def _analytic_gradients(case, grads, names):
    available = {"x": grads.dx, "h0": grads.dh0, "c0": grads.dc0}
    available.update(grads.dparams or {})
    return {name: np.asarray(available[name], dtype=np.float64) for name in names
            if available.get(name) is not None and _case_tensor(case, name) is not None}


def _numerical_gradient(loss, point, name):
    """Differentiate ``loss`` along every entry of tensor ``name``, one basis vector each."""
    shape = point[name].shape
    numeric = np.empty(int(np.prod(shape)))
    for flat in range(numeric.size):
        basis = np.zeros(numeric.size)
        basis[flat] = 1.0
        derivative = directional_derivative(loss, point, {name: basis.reshape(shape)})
        numeric[flat] = derivative.value[0]
    return numeric.reshape(shape)


def _worst_signed(block):
    """Return the entry of ``block`` with the largest magnitude, keeping its sign."""
    flat = np.ravel(block)
    if flat.size == 0:
        return np.nan
    return flat[np.argmax(np.abs(flat))]


def picture_panels(errors):
    """Reduce per-entry errors to heatmap panels.

    Returns
    -------
    list of (title, row_labels, column_labels, ndarray)
        ``parameters``: one row per parameter tensor, one column per gate
        block i, f, g, o.  ``input x``: one row per example, one column per
        time step.  ``initial states``: rows h0, c0, columns forward,
        backward.  Each cell holds the signed error of the block's entry
        with the largest magnitude.
    """
    panels = []
    params = [name for name in PARAM_NAMES if name in errors]
    if params:
        cells = np.array([[_worst_signed(np.split(errors[name], len(GATES), axis=-1)[g])
                           for g in range(len(GATES))] for name in params])
        panels.append(("parameters (per gate block)", params, list(GATES), cells))

    if "x" in errors:
        x = errors["x"]
        cells = np.array([[_worst_signed(x[n, :, t]) for t in range(x.shape[2])]
                          for n in range(x.shape[0])])
        panels.append(("input x (per example and time step)",
                       [f"example {n}" for n in range(x.shape[0])],
                       [str(t) for t in range(x.shape[2])], cells))

    states = [name for name in ("h0", "c0") if name in errors]
    if states:
        cells = np.array([[_worst_signed(errors[name][d]) for d in range(2)] for name in states])
        panels.append(("initial states (per direction)", states, ["forward", "backward"], cells))
    return panels


def draw_gradient_picture(errors, path, *, title, subtitle=""):
    """Save a heatmap of gradient errors as PNG.

    Parameters
    ----------
    errors : dict of str to ndarray
        From :func:`gradient_errors`.
    path : path-like
    title, subtitle : str

    Raises
    ------
    ImportError
        When matplotlib is missing.
    """
    # The object-oriented API leaves pyplot's global state and backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = picture_panels(errors)
    # One colour scale for every panel, so rounding noise stays white next to a real error.
    limit = max(float(np.nanmax(np.abs(cells), initial=0.0)) for _, _, _, cells in panels)
    limit = limit if limit > 0 else 1.0

    widths = [max(2.5, 0.9 * cells.shape[1] + 1.5) for _, _, _, cells in panels]
    figure = Figure(figsize=(max(6.0, sum(widths) + 1.5), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(f"{title}\n{subtitle}", fontsize=9)
    axes = figure.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    for ax, panel in zip(axes, panels):
        image = _draw_panel(ax, *panel, limit=limit)
    colorbar = figure.colorbar(image, ax=list(axes), shrink=0.8)
    colorbar.set_label("analytic - numeric (entry with the largest |error| in the cell)", fontsize=8)

    figure.savefig(path, format="png", dpi=110)


def _draw_panel(ax, title, rows, columns, cells, *, limit):
    image = ax.imshow(cells, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(columns)), columns, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for (r, c), value in np.ndenumerate(cells):
        # White text stays readable on the dark ends of the colour map.
        color = "white" if abs(value) > 0.6 * limit else "black"
        ax.text(c, r, f"{value:.1e}", ha="center", va="center", fontsize=7, color=color)
    return image
