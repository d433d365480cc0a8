"""Hypothesis settings profiles of the harness: ``ci``, ``dev`` and ``thorough``."""

from hypothesis import HealthCheck, Phase, settings

from properties.errors import UsageError

_QUIET_CHECKS = [
    HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
    HealthCheck.large_base_example,
]

# The explain phase re-runs variations of a shrunk failure only to annotate a
# report the runner never prints; with a hanging implementation each re-run
# costs a whole time limit.
_PHASES = tuple(phase for phase in Phase if phase is not Phase.explain)

PROFILES = {
    "ci": dict(max_examples=30, derandomize=True, database=None),
    "dev": dict(max_examples=15, derandomize=False),
    "thorough": dict(max_examples=300, derandomize=False),
}
"""Profile name -> settings that differ between profiles.

``ci`` is derandomized, so every run explores the same examples and a
verdict cannot change between two runs of the same code; ``dev`` is quick
and random and keeps Hypothesis's example database; ``thorough`` draws ten
times as many examples as ``ci``.
"""

DEFAULT_PROFILE = "ci"


def profile_settings(profile, *, max_examples=None, seed=None):
    """Return the :class:`hypothesis.settings` of one profile, with overrides.

    A ``seed`` turns derandomization off, because a derandomized run ignores
    the seed.
    """
    if profile not in PROFILES:
        raise UsageError(
            f"--profile {profile!r} is not a settings profile; use one of {', '.join(PROFILES)}"
        )

    options = dict(PROFILES[profile])
    if max_examples is not None:
        if max_examples < 1:
            raise UsageError(f"--max-examples {max_examples} must be at least 1")
        options["max_examples"] = max_examples
    if seed is not None:
        options["derandomize"] = False

    return settings(
        deadline=None, print_blob=False, report_multiple_bugs=False, phases=_PHASES,
        suppress_health_check=_QUIET_CHECKS, **options,
    )
