"""``bilstm-verify export-test``: turn a saved case into a standalone pytest regression test.

The test file replays the case once with :func:`properties.runner.replay`,
without a Hypothesis search, and passes when the property holds.  By default
the case file is copied next to the test file, so the pair can be dropped
into any test suite.  With ``--no-copy`` the test refers to the case file by
its path relative to the test file.  The implementation is the case's (or
``--impl``), and the environment variable :data:`IMPL_VARIABLE` overrides it
when the test runs.
"""

import filecmp
import os
import re
from pathlib import Path

from properties.casefile import load_case
from properties.catalog import REGISTRY
from properties.errors import CaseFileError, UsageError
from properties.guard import DEFAULT_TIME_LIMIT
from properties.reports import write_atomically
from properties.runner import import_catalog

IMPL_VARIABLE = "BILSTM_VERIFY_IMPL"
"""Environment variable that picks the implementation an exported test checks."""

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")

MAX_MESSAGE_LINES = 15
"""Lines of the recorded failure message copied into the test file's comments."""

_TEMPLATE = '''\
"""Regression test exported by bilstm-verify from a saved case of {property!r}.

The test replays the case once, with no Hypothesis search, and passes when
the property holds for the implementation.  Set the environment variable
{variable} to a built-in name or to module:attribute to check
another implementation, for example a fixed version of the code.
"""

# Case: {summary}
# Recorded: verdict {verdict!r} for {recorded_impl} {recorded_version}, {created}
# Recorded message:
{message}

import os
from pathlib import Path

import pytest

from properties.adapters import load_implementation
from properties.casefile import load_case
from properties.runner import KNOWN_FAILURE, NOT_APPLICABLE, PASSED, replay

CASE_FILE = Path(__file__).parent / {case_path!r}
IMPLEMENTATION = os.environ.get({variable!r}, {implementation!r})
TIME_LIMIT_S = {time_limit!r}


def {test_name}():
    saved = load_case(CASE_FILE)
    implementation = load_implementation(IMPLEMENTATION)
    result = replay(saved, CASE_FILE, implementation, time_limit_s=TIME_LIMIT_S)

    if result.verdict == NOT_APPLICABLE:
        pytest.skip(f"{{IMPLEMENTATION}}: {{result.message}}")
    if result.verdict == KNOWN_FAILURE:
        pytest.xfail(result.message)
    assert result.verdict == PASSED, (
        f"{{result.name}} on {{IMPLEMENTATION!r}}: {{result.verdict}}\\n{{result.message}}\\n"
        f"case: {{result.case_summary}}\\n"
        f"replay: bilstm-verify replay {{CASE_FILE}} --impl {{IMPLEMENTATION}}"
    )
'''


def add_export_parser(commands):
    """Add the ``export-test`` command to the CLI's sub-parsers."""
    parser = commands.add_parser("export-test", help="write a pytest regression test from a case file")
    parser.add_argument("case", help="path of a case file written by check")
    parser.add_argument("-o", "--output", default=None, metavar="FILE",
                        help="test file to write (default: ./test_<property>_<implementation>.py)")
    parser.add_argument("--impl", default=None,
                        help=f"implementation the test checks (default: the case's); "
                             f"{IMPL_VARIABLE} overrides it when the test runs")
    parser.add_argument("--no-copy", action="store_true",
                        help="refer to the case file by its path relative to the test file "
                             "instead of copying it next to the test file")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing test file or copied case file")


def command_export_test(args, out):
    """Run ``export-test``; return the exit status (0, or 2 through UsageError)."""
    saved = load_case(args.case)
    _check_property(saved.meta["property"], args.case)
    implementation = args.impl or saved.meta["implementation"]
    output = Path(args.output) if args.output else Path(default_test_name(saved.meta, implementation))
    _check_output(output, args.force)

    case_file = Path(args.case)
    if not args.no_copy:
        case_file = _copy_case(case_file, output.parent, args.force)
    relative = Path(_relative(case_file, output.parent)).as_posix()

    text = render_test(saved.meta, case_path=relative, implementation=implementation)
    write_atomically(output, text.encode("utf-8"))

    print(f"wrote {output} (case file {case_file})", file=out)
    print(f"run it with: python -m pytest {output}", file=out)
    if not output.name.startswith("test_"):
        print(f"note: pytest collects only test_*.py files from folders, so run {output} "
              f"by name or rename it", file=out)
    return 0


def _check_property(name, path):
    # Only registered names reach the generated source, so a hostile case file
    # cannot put code into the test file through its property name.
    import_catalog()
    if name not in REGISTRY:
        raise CaseFileError(
            f"case file {str(path)!r} names the property {name!r}, which this version of "
            f"bilstm-verify does not have; run 'bilstm-verify list' for the current ones"
        )


def default_test_name(meta, implementation):
    """Return ``test_<property>_<implementation>.py`` with the implementation made an identifier."""
    return f"{regression_test_name(meta['property'], implementation)}.py"


def regression_test_name(property_name, implementation):
    """Return the test function's name, a valid Python identifier."""
    slug = re.sub(r"\W+", "_", implementation).strip("_").lower() or "impl"
    return f"test_{property_name}_{slug}"


def render_test(meta, *, case_path, implementation, time_limit_s=DEFAULT_TIME_LIMIT):
    """Return the source of the regression test for a case file's metadata.

    Parameters
    ----------
    meta : dict
        The case file's metadata (``SavedCase.meta``).
    case_path : str
        Path of the case file relative to the test file's folder, with ``/``.
    implementation : str
        Default implementation spec of the test.
    time_limit_s : float
        Seconds one call into the implementation may take.
    """
    message = meta.get("message", "").splitlines() or ["(none)"]
    if len(message) > MAX_MESSAGE_LINES:
        message = message[:MAX_MESSAGE_LINES] + [f"... ({len(message) - MAX_MESSAGE_LINES} more lines)"]

    return _TEMPLATE.format(
        property=meta["property"],
        variable=IMPL_VARIABLE,
        summary=_one_line(meta.get("summary", "")),
        verdict=meta.get("verdict", "unknown"),
        recorded_impl=_one_line(meta["implementation"]),
        recorded_version=_one_line(str(meta.get("implementation_version", ""))),
        created=_one_line(str(meta.get("created", "unknown date"))),
        message="\n".join(f"#   {_printable(line)}".rstrip() for line in message),
        case_path=case_path,
        implementation=implementation,
        time_limit=float(time_limit_s),
        test_name=regression_test_name(meta["property"], implementation),
    )


def _one_line(text):
    return _printable(" ".join(str(text).split()))


def _printable(text):
    """Drop control characters, which Python source cannot contain (NUL) or shows badly."""
    return _CONTROL.sub("", text)


def _check_output(output, force):
    if output.suffix != ".py":
        raise UsageError(f"-o {str(output)!r} does not end in .py; name the test file "
                         f"test_<something>.py so pytest collects it")
    if not output.parent.is_dir():
        raise UsageError(f"-o {str(output)!r}: folder {str(output.parent)!r} does not exist; "
                         f"create it first")
    if output.exists() and not force:
        raise UsageError(f"-o {str(output)!r} exists; pass --force to replace it, or choose "
                         f"another name")


def _copy_case(case_file, folder, force):
    """Copy the case file into ``folder`` unless it is there already; return the copy's path."""
    target = folder / case_file.name
    if target.resolve() == case_file.resolve():
        return case_file
    if target.exists() and not filecmp.cmp(target, case_file, shallow=False) and not force:
        raise UsageError(f"{str(target)!r} exists and differs from {str(case_file)!r}; pass "
                         f"--force to replace it, or --no-copy to use the case file where it is")
    write_atomically(target, case_file.read_bytes())
    return target


def _relative(path, folder):
    """Return ``path`` relative to ``folder``, going up with '..' where needed."""
    return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
