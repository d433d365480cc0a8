"""Set BILSTM_PARALLEL_DIRECTIONS for a benchmark, and count which calls ran in parallel."""

import contextlib
import os

from bilstm import _parallel


class CallCounter:
    """Count the reference's calls and how many of them ran their directions in parallel."""

    def __init__(self):
        self.calls = 0
        self.parallel_calls = 0

    @contextlib.contextmanager
    def counting(self):
        """Count the decisions of :func:`bilstm._parallel.in_parallel` made inside the block.

        ``run_directions`` looks ``in_parallel`` up at each call, so a
        wrapper put in its place receives every decision.  The original is put
        back on exit.
        """
        decide = _parallel.in_parallel

        def counted(work, block):
            decision = decide(work, block)
            self.calls += 1
            self.parallel_calls += decision
            return decision

        _parallel.in_parallel = counted
        try:
            yield self
        finally:
            _parallel.in_parallel = decide

    def share(self):
        """Return "k / n": calls in parallel out of all calls."""
        return f"{self.parallel_calls} / {self.calls}"


@contextlib.contextmanager
def restored_setting(value=None):
    """Put BILSTM_PARALLEL_DIRECTIONS back as it was when the block ends.

    With ``value``, the variable is set to it for the block; without, the
    block may set it as it likes.
    """
    saved = os.environ.get(_parallel.ENV_VAR)
    try:
        if value is not None:
            os.environ[_parallel.ENV_VAR] = value
        yield
    finally:
        if saved is None:
            os.environ.pop(_parallel.ENV_VAR, None)
        else:
            os.environ[_parallel.ENV_VAR] = saved
