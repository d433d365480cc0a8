"""Run properties against an implementation with Hypothesis, and replay saved cases."""

import importlib
import importlib.metadata
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field

import hypothesis
import numpy as np
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky

from bilstm.merge import MERGE_MODES
from properties import strategies
from properties.casefile import save_case
from properties.catalog import (
    CATALOG_MODULES, REGISTRY, Subject, applicable_merge_modes, catalog_order, new_rng,
    not_applicable_reason,
)
from properties.errors import CaseFileError, ImplementationError, PropertyFailure, UsageError

PASSED = "passed"
FAILED = "FAILED"
NOT_APPLICABLE = "not applicable"
IMPLEMENTATION_ERROR = "implementation error"
KNOWN_FAILURE = "known failure"
HARNESS_ERROR = "harness error"

FAILING_VERDICTS = (FAILED, IMPLEMENTATION_ERROR, HARNESS_ERROR)
"""Verdicts that make ``check`` exit with status 1."""

_SEEDS = st.integers(min_value=0, max_value=2**32 - 1)

_NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


@dataclass
class PropertyResult:
    """The verdict of one property, with what a report needs."""

    name: str
    verdict: str
    message: str = ""
    case_summary: str = ""
    case_path: str | None = None
    examples: int = 0
    seconds: float = 0.0


@dataclass
class _Record:
    """Examples counted and the last failure seen by the Hypothesis test function."""

    examples: int = 0
    failure: tuple | None = None
    history: list = field(default_factory=list)


def import_catalog():
    """Import the modules that register properties, in catalog order."""
    for module in CATALOG_MODULES:
        importlib.import_module(module)


def select_properties(names=None):
    """Return the registered properties named in ``names`` (all when ``None``)."""
    import_catalog()
    if not names:
        return catalog_order()

    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise UsageError(
            f"--property {', '.join(unknown)}: no such property; "
            f"run 'bilstm-verify list' to see the {len(REGISTRY)} properties"
        )
    return [REGISTRY[name] for name in names]


def case_strategy(prop, capabilities, merge_modes=None):
    """Return the strategy of cases for ``prop`` on an implementation's capabilities."""
    modes = applicable_merge_modes(prop, capabilities)
    if merge_modes is not None:
        modes &= set(merge_modes)
    ordered = [mode for mode in MERGE_MODES if mode in modes]

    options = {
        "merge_modes": ordered,
        "dtypes": [d for d in strategies.DTYPE_NAMES if d in capabilities.dtypes],
        "with_lengths": "sometimes" if capabilities.lengths else "never",
        "allow_zero_length": capabilities.zero_length,
        "with_initial_states": "sometimes" if capabilities.initial_state else "never",
        "with_final_state_grads": (
            "sometimes" if capabilities.final_state and capabilities.state_gradients else "never"
        ),
    }
    options.update(prop.case_options)
    if "dtypes" in prop.case_options:
        options["dtypes"] = [d for d in prop.case_options["dtypes"] if d in capabilities.dtypes]
    return strategies.cases(**options)


def _hypothesis_test(prop, subject, strategy, run_settings, record, seed):
    @run_settings
    @given(case=strategy, extra_seed=_SEEDS)
    def test(case, extra_seed):
        record.examples += 1
        try:
            prop.check(subject, case, new_rng(extra_seed))
        except (PropertyFailure, ImplementationError) as exc:
            record.failure = (case, extra_seed, exc)
            raise

    if seed is not None:
        test = hypothesis.seed(seed)(test)
    return test


def run_property(prop, subject, run_settings, *, merge_modes=None, seed=None, save=None,
                 known_failures=None):
    """Run one property; return a :class:`PropertyResult`.

    ``save(prop, case, extra_seed, verdict, message)`` writes the case file
    of a failure and returns its path.  ``known_failures(property_name,
    merge_mode)`` returns why a failure in that merge mode is expected, or
    None.  Without it, the implementation's ``known_failures`` dict is used.
    """
    reason = not_applicable_reason(prop, subject.capabilities, merge_modes)
    if reason is not None:
        return PropertyResult(prop.name, NOT_APPLICABLE, reason)

    # Shrinking a failure that is known in every mode the run draws costs
    # minutes and changes no verdict, so such a property is not shrunk.
    modes = applicable_merge_modes(prop, subject.capabilities)
    if merge_modes is not None:
        modes &= set(merge_modes)
    if all(_known_failure_reason(known_failures, subject.implementation, prop.name, mode)
           for mode in modes):
        run_settings = settings(run_settings, phases=_NO_SHRINK)

    record = _Record()
    strategy = case_strategy(prop, subject.capabilities, merge_modes)
    test = _hypothesis_test(prop, subject, strategy, run_settings, record, seed)
    start = time.perf_counter()
    subject.detailed = False
    subject.requested_modes = None if merge_modes is None else set(merge_modes)
    try:
        test()
    except (PropertyFailure, ImplementationError, Flaky) as exc:
        subject.detailed = True
        return _failure_result(prop, subject, record, exc, start, save, known_failures)
    except Exception:
        return PropertyResult(prop.name, HARNESS_ERROR, traceback.format_exc(),
                              examples=record.examples, seconds=time.perf_counter() - start)
    finally:
        subject.detailed = True
        subject.requested_modes = None

    return PropertyResult(prop.name, PASSED, examples=record.examples,
                          seconds=time.perf_counter() - start)


def _known_failure_reason(known_failures, implementation, name, merge_mode):
    if known_failures is not None:
        return known_failures(name, merge_mode)
    return implementation.known_failures.get(name)


def _failure_result(prop, subject, record, exc, start, save, known_failures=None):
    seconds = time.perf_counter() - start
    if record.failure is None:
        return PropertyResult(prop.name, HARNESS_ERROR, f"{type(exc).__name__}: {exc}",
                              examples=record.examples, seconds=seconds)

    case, extra_seed, failure = record.failure
    failure = _detailed_failure(prop, subject, case, extra_seed) or failure
    verdict = IMPLEMENTATION_ERROR if isinstance(failure, ImplementationError) else FAILED
    message = str(failure)
    if isinstance(exc, Flaky):
        message += "\n  (flaky: the failure did not repeat when Hypothesis replayed it)"
    reason = _known_failure_reason(known_failures, subject.implementation, prop.name,
                                   case.merge_mode)
    if reason is not None:
        message += f"\n  known failure: {reason}"
        verdict = KNOWN_FAILURE

    path = save(prop, case, extra_seed, verdict, message) if save else None
    return PropertyResult(prop.name, verdict, message, case.summary(),
                          None if path is None else str(path), record.examples, seconds)


def _detailed_failure(prop, subject, case, extra_seed):
    """Re-run the minimal case with full detail; return its failure, or None if it passed."""
    try:
        prop.check(subject, case, new_rng(extra_seed))
    except (PropertyFailure, ImplementationError) as exc:
        return exc
    return None


def package_versions():
    """Return the versions of the packages a verdict depends on."""
    versions = {"python": platform.python_version()}
    for name in ("bilstm-verify", "numpy", "scipy", "hypothesis"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def case_saver(directory, implementation_spec, implementation, profile, seed):
    """Return a ``save`` function for :func:`run_property` writing into ``directory``."""
    def save(prop, case, extra_seed, verdict, message):
        meta = {
            "implementation": implementation_spec,
            "implementation_version": implementation.version(),
            "versions": package_versions(),
            "profile": profile,
            "seed": seed,
            "verdict": verdict,
            "message": message,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return save_case(directory, case, property_name=prop.name, extra_seed=extra_seed, meta=meta)
    return save


def replay(saved, path, implementation, *, time_limit_s):
    """Re-run the loaded case ``saved`` (read from ``path``) once; return a :class:`PropertyResult`."""
    import_catalog()
    name = saved.meta["property"]
    if name not in REGISTRY:
        raise CaseFileError(
            f"case file {str(path)!r} names the property {name!r}, which this version of "
            f"bilstm-verify does not have; run 'bilstm-verify list' for the current ones"
        )
    prop = REGISTRY[name]
    subject = Subject(implementation, time_limit_s)

    reason = not_applicable_reason(prop, subject.capabilities)
    if reason is not None:
        return PropertyResult(prop.name, NOT_APPLICABLE, reason, saved.case.summary())

    start = time.perf_counter()
    verdict, message = PASSED, ""
    try:
        prop.check(subject, saved.case, new_rng(saved.extra_seed))
    except PropertyFailure as exc:
        verdict, message = FAILED, str(exc)
    except ImplementationError as exc:
        verdict, message = IMPLEMENTATION_ERROR, str(exc)
    if verdict != PASSED and prop.name in implementation.known_failures:
        message += f"\n  known failure: {implementation.known_failures[prop.name]}"
        verdict = KNOWN_FAILURE

    return PropertyResult(prop.name, verdict, message, saved.case.summary(), str(path), 1,
                          time.perf_counter() - start)


def exit_status(results):
    """Return 1 when any result is failing, else 0."""
    return 1 if any(r.verdict in FAILING_VERDICTS for r in results) else 0


def describe_environment():
    """Return one line naming the Python, numpy and Hypothesis in use."""
    return (f"Python {platform.python_version()}, numpy {np.__version__}, "
            f"hypothesis {hypothesis.__version__}, on {sys.platform}")
