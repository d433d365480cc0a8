"""Exceptions of the harness."""


class HarnessError(Exception):
    """Base class of the harness's own errors."""


class UsageError(HarnessError):
    """A bad command line, option or implementation name; the CLI exits with status 2."""


class CaseFileError(HarnessError):
    """A case file is missing, corrupt, truncated or not one the harness wrote."""


class PropertyFailure(AssertionError):
    """A property's claim does not hold for the implementation under test."""


class ImplementationError(Exception):
    """The implementation under test broke its contract.

    It raised an exception, returned the wrong shape or dtype, returned NaN,
    or exceeded the per-example time limit.  This is a verdict about the
    implementation, never a crash of the harness.
    """
