"""pytest plugin: the property catalog as pytest tests, for one implementation.

Installing bilstm-verify registers this plugin through the ``pytest11``
entry point; without the install, load it with ``-p properties.plugin``.
Without ``--bilstm-impl`` it adds no tests and prints nothing, so it leaves
other test suites alone.  With it::

    pytest --bilstm-impl=torch
    pytest --bilstm-impl=mypkg.lstm:MyBiLSTM --hypothesis-profile=bilstm-dev
    pytest --bilstm-impl=numpy-ml --bilstm-known-failures=numpy-ml.known -n 4

adds one test per property and merge mode, ``test_property[<property>-<merge
mode>]``, each drawing cases of that merge mode only.  A combination that
cannot run (a capability the implementation lacks, a merge mode it does not
support or the property does not use) is skipped with the reason.  Add
``-m bilstm_verify`` to run the property tests alone.

Each test is a Hypothesis ``@given`` test run by pytest, so Hypothesis's
options apply: ``--hypothesis-profile`` picks the settings (default
``bilstm-ci``), ``--hypothesis-seed`` the seed, and a profile with an example
database replays a failure found before first.  The harness's profiles are
registered as ``bilstm-ci`` (derandomized, no database), ``bilstm-dev`` and
``bilstm-thorough`` (random, Hypothesis's default database).  A profile of
your own is used as it is, so give it ``deadline=None``: a gradient check
takes longer than Hypothesis's default deadline of 200 ms.

Entries of a known-failure file (see :mod:`properties.known_failures`) and
the adapter's own ``known_failures`` mark their tests as expected failures
(xfail with the reason).  An entry all of whose tests pass is stale: its
tests show as XPASS and the terminal summary lists the entry, without
failing the run.  The case of every failure is saved under
``--bilstm-case-dir`` and its path is attached to the report.
"""

import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bilstm._parallel import setting as parallel_directions_setting
from bilstm.errors import InvalidArgumentError
from bilstm.merge import MERGE_MODES
from properties.adapters import load_implementation
from properties.catalog import Subject, new_rng, not_applicable_reason
from properties.defaults import DEFAULT_CASE_DIR
from properties.errors import HarnessError, ImplementationError, PropertyFailure
from properties.guard import DEFAULT_TIME_LIMIT
from properties.known_failures import load_known_failures
from properties.runner import (
    FAILED, IMPLEMENTATION_ERROR, KNOWN_FAILURE, case_saver, case_strategy, select_properties,
)
from properties.settings import DEFAULT_PROFILE, PROFILES, profile_settings

PROFILE_PREFIX = "bilstm-"
"""The harness's profile ``NAME`` is registered with Hypothesis as ``bilstm-NAME``."""

DEFAULT_PLUGIN_PROFILE = PROFILE_PREFIX + DEFAULT_PROFILE

MARKER = "bilstm_verify"
NODE_ID = "bilstm-verify"
"""Node id of the virtual module that contains the property tests."""


_SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


def register_profiles():
    """Register the harness's settings profiles with Hypothesis as ``bilstm-<name>``."""
    for name in PROFILES:
        settings.register_profile(PROFILE_PREFIX + name, profile_settings(name))


# At import, so that Hypothesis's own plugin finds the profiles when it loads
# the one --hypothesis-profile names.
register_profiles()


# ---------------------------------------------------------------------------
# Options and set-up
# ---------------------------------------------------------------------------

def pytest_addoption(parser):
    group = parser.getgroup("bilstm-verify", "property-based checks of a BiLSTM implementation")
    group.addoption("--bilstm-impl", default=None, metavar="SPEC",
                    help="implementation whose properties to test: a built-in name (reference, "
                         "numpy-ml, torch, ...) or module:attribute; without it no tests are added")
    group.addoption("--bilstm-known-failures", default=None, metavar="FILE",
                    help="file of expected failures, one 'property [merge_mode]: reason' a line")
    group.addoption("--bilstm-time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="S",
                    help=f"seconds one call into the implementation may take before it counts "
                         f"as hung (default: {DEFAULT_TIME_LIMIT:g})")
    group.addoption("--bilstm-case-dir", default=DEFAULT_CASE_DIR, metavar="DIR",
                    help=f"folder for the case files of failures (default: ./{DEFAULT_CASE_DIR})")


@dataclass
class PluginState:
    """Implementation, known failures and options loaded at configure time, kept in ``config.stash``."""

    spec: str
    implementation: object
    known_failures: object
    time_limit_s: float
    case_dir: Path


_STATE = pytest.StashKey[PluginState]()


def pytest_configure(config):
    config.addinivalue_line("markers", f"{MARKER}: a property test added by --bilstm-impl")
    spec = config.getoption("bilstm_impl")
    if spec is None:
        if config.getoption("bilstm_known_failures") is not None:
            raise pytest.UsageError("--bilstm-known-failures needs --bilstm-impl; pass the "
                                    "implementation the known failures belong to")
        return

    # An invalid value would otherwise surface inside every reference call,
    # where it reads as a failure of the implementation under check.
    try:
        parallel_directions_setting()
    except InvalidArgumentError as exc:
        raise pytest.UsageError(f"bilstm-verify: {exc}") from None

    time_limit = config.getoption("bilstm_time_limit")
    if not 0 < time_limit < float("inf"):
        raise pytest.UsageError(f"--bilstm-time-limit {time_limit!r} is not a number of "
                                f"seconds > 0; pass for example --bilstm-time-limit 30")
    try:
        implementation = load_implementation(spec)
        known = load_known_failures(config.getoption("bilstm_known_failures"), implementation)
    except HarnessError as exc:
        raise pytest.UsageError(f"bilstm-verify: {exc}") from None

    case_dir = Path(config.invocation_params.dir, config.getoption("bilstm_case_dir"))
    config.stash[_STATE] = PluginState(spec, implementation, known, time_limit, case_dir)
    config.pluginmanager.register(OutcomeRecorder(known), "bilstm-verify-outcomes")


def property_test_settings(config):
    """Return ``(settings, profile name)`` of the property tests.

    The profile ``--hypothesis-profile`` loaded, or :data:`DEFAULT_PLUGIN_PROFILE`
    when the option is not given.
    """
    if config.getoption("--hypothesis-profile", default=None):
        return settings(parent=settings.default), settings.get_current_profile_name()
    return settings(parent=settings.get_profile(DEFAULT_PLUGIN_PROFILE)), DEFAULT_PLUGIN_PROFILE


def pytest_report_header(config):
    state = config.stash.get(_STATE, None)
    if state is None:
        return None

    implementation = state.implementation
    run_settings, profile = property_test_settings(config)
    return [
        f"bilstm-verify: implementation {state.spec!r} ({implementation.name} "
        f"{implementation.version()})",
        f"bilstm-verify: capabilities: {implementation.capabilities.describe()}",
        f"bilstm-verify: hypothesis profile {profile!r}: max_examples={run_settings.max_examples}, "
        f"derandomize={run_settings.derandomize}, database={run_settings.database!r}, "
        f"deadline={run_settings.deadline}; time limit {state.time_limit_s:g} s per call",
        f"bilstm-verify: known failures: {state.known_failures.describe()}; "
        f"case files go to {state.case_dir}",
    ]


# ---------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------

class _ShownCase:
    """A drawn case whose repr is its one-line summary, for Hypothesis's failure report."""

    def __init__(self, case):
        self.case = case

    def __repr__(self):
        return f"<case {self.case.summary()}>"


def _skip_reason(prop, merge_mode, subject):
    """Return why ``prop`` cannot run in ``merge_mode`` on ``subject``, or None."""
    if merge_mode not in subject.capabilities.merge_modes:
        return f"{subject.name} does not support merge mode {merge_mode}"
    if prop.merge_modes is not None and merge_mode not in prop.merge_modes:
        return f"the property does not use merge mode {merge_mode}"
    return not_applicable_reason(prop, subject.capabilities, [merge_mode])


@st.composite
def _shown_cases(draw, strategy):
    # A composite, not .map(): Hypothesis prints the arguments of a mapped
    # call, which would be the case's arrays, and ignores __repr__.
    return _ShownCase(draw(strategy))


class PropertyTarget:
    """One property in one merge mode: the parameter of one ``test_property`` test.

    Attributes
    ----------
    prop : properties.catalog.Property
    merge_mode : str or None
    subject : properties.catalog.Subject
    skip_reason : str or None
        Why the combination cannot run, or None.
    known : properties.known_failures.KnownFailure or None
        The known-failure entry that covers the combination.
    failure : tuple or None
        ``(case, extra_seed, exception)`` of the latest failing example.
    """

    def __init__(self, prop, merge_mode, subject, known_failures):
        self.prop = prop
        self.merge_mode = merge_mode
        self.subject = subject
        self.skip_reason = _skip_reason(prop, merge_mode, subject)
        self.known = known_failures.entry_for(prop.name, merge_mode)
        self.failure = None
        self._strategy = None

    def __repr__(self):
        return f"<{self.prop.name} in merge mode {self.merge_mode} of {self.subject.name}>"

    @property
    def id(self):
        return f"{self.prop.name}-{self.merge_mode}"

    def param(self):
        """Return the ``pytest.param`` of this target, with its skip or xfail mark."""
        marks = []
        if self.skip_reason is not None:
            marks.append(pytest.mark.skip(reason=f"not applicable: {self.skip_reason}"))
        elif self.known is not None:
            marks.append(pytest.mark.xfail(
                reason=f"known failure: {self.known.reason} ({self.known.source})",
                raises=(PropertyFailure, ImplementationError), strict=False))
        return pytest.param(self, id=self.id, marks=marks)

    def check(self, data):
        """Draw one case of this merge mode and check the property on it."""
        if self._strategy is None:
            self._strategy = _shown_cases(
                case_strategy(self.prop, self.subject.capabilities, [self.merge_mode]))
        case = data.draw(self._strategy, label="case").case
        extra_seed = data.draw(_SEEDS, label="extra_seed")
        try:
            self.prop.check(self.subject, case, new_rng(extra_seed))
        except (PropertyFailure, ImplementationError) as exc:
            self.failure = (case, extra_seed, exc)
            raise


def build_test_function(targets, run_settings):
    """Return ``test_property``, a ``@given`` test parametrized over ``targets``."""
    @pytest.mark.parametrize("target", [target.param() for target in targets])
    @run_settings
    @given(data=st.data())
    def test_property(target, data):
        """Check one property of the implementation in one merge mode."""
        target.check(data)

    return test_property


class PropertyModule(pytest.Module):
    """A module that exists only in memory and contains ``test_property``."""

    def _getobj(self):
        state = self.config.stash[_STATE]
        subject = Subject(state.implementation, state.time_limit_s)
        # Full failure detail only on Hypothesis's final replay (see props_gradients).
        subject.detailed = False
        targets = [PropertyTarget(prop, mode, subject, state.known_failures)
                   for prop in select_properties() for mode in MERGE_MODES]
        run_settings, _ = property_test_settings(self.config)

        module = types.ModuleType("bilstm_verify_properties", "Property tests of bilstm-verify.")
        module.test_property = build_test_function(targets, run_settings)
        return module

    def istestfunction(self, obj, name):
        # Independent of the python_functions option of the project under test.
        return name == "test_property"

    def istestclass(self, obj, name):
        return False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    # tryfirst: the items are in place before -k, -m and --deselect select from them.
    if config.stash.get(_STATE, None) is None:
        return
    module = PropertyModule.from_parent(session, path=Path(__file__), name=NODE_ID, nodeid=NODE_ID)
    for item in session.genitems(module):
        item.add_marker(MARKER)
        target = item.callspec.params["target"]
        item.user_properties.append(("bilstm_property", target.prop.name))
        item.user_properties.append(("bilstm_merge_mode", str(target.merge_mode)))
        items.append(item)


# ---------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------

def _target_of(item):
    callspec = getattr(item, "callspec", None)
    target = None if callspec is None else callspec.params.get("target")
    return target if isinstance(target, PropertyTarget) else None


def pytest_runtest_setup(item):
    target = _target_of(item)
    if target is not None:
        target.failure = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    target = _target_of(item)
    if call.when == "call" and target is not None and target.failure is not None:
        _attach_case(item.config.stash[_STATE], item, report, target)
    return report


def _attach_case(state, item, report, target):
    """Save the failing case and add its path to the report."""
    case, extra_seed, exc = target.failure
    if hasattr(report, "wasxfail"):
        verdict = KNOWN_FAILURE
    else:
        verdict = IMPLEMENTATION_ERROR if isinstance(exc, ImplementationError) else FAILED

    _, profile = property_test_settings(item.config)
    seed = item.config.getoption("--hypothesis-seed", default=None)
    save = case_saver(state.case_dir, state.spec, state.implementation, profile, seed)
    path = save(target.prop, case, extra_seed, verdict, str(exc))

    # pytest's JUnit XML reads the properties of the teardown report, which
    # copies them from the item.
    item.user_properties.append(("case_file", str(path)))
    report.user_properties.append(("case_file", str(path)))
    report.sections.append(("bilstm-verify case", "\n".join([
        f"shrunk case: {case.summary()}",
        f"case file: {path}",
        f"replay: bilstm-verify replay {path} --impl {state.spec}",
    ])))


def stale_entries(known_failures, outcomes):
    """Return ``(entry, n_tests)`` for each entry whose tests all passed.

    Parameters
    ----------
    known_failures : properties.known_failures.KnownFailures
    outcomes : dict
        ``(property, merge mode)`` -> ``"xfailed"``, ``"xpassed"``, ``"passed"``
        or ``"failed"``, for the tests that ran.
    """
    judged = {}
    for (name, mode), outcome in outcomes.items():
        entry = known_failures.entry_for(name, mode)
        if entry is not None:
            judged.setdefault(entry, []).append(outcome)
    return [(entry, len(seen)) for entry, seen in judged.items()
            if all(outcome == "xpassed" for outcome in seen)]


class OutcomeRecorder:
    """Records the outcome of every property test and reports stale known failures.

    Registered as a plugin of its own by :func:`pytest_configure`.  Under
    xdist the controller receives the reports of every worker, so it records
    every outcome.
    """

    def __init__(self, known_failures):
        self.known_failures = known_failures
        self.outcomes = {}

    def pytest_runtest_logreport(self, report):
        properties = dict(report.user_properties)
        if report.when != "call" or "bilstm_property" not in properties:
            return
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        else:
            outcome = report.outcome
        mode = properties["bilstm_merge_mode"]
        self.outcomes[(properties["bilstm_property"], None if mode == "None" else mode)] = outcome

    def pytest_terminal_summary(self, terminalreporter):
        stale = stale_entries(self.known_failures, self.outcomes)
        if not stale:
            return

        terminalreporter.write_sep("=", "bilstm-verify: stale known failures", yellow=True)
        for entry, n_tests in stale:
            terminalreporter.write_line(
                f"{entry.source}: '{entry.label()}' ({entry.reason}): all {n_tests} tests it "
                f"covers passed (XPASS); remove the entry")
