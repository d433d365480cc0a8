"""Tolerances of every non-gradient check, resolved in one place.

Each entry is a multiple or a power of the dtype's machine epsilon, with the
reason for it.  Gradient checks derive their tolerance from the
finite-difference error estimate instead (see :mod:`properties.gradcheck`).
"""

import numpy as np

from properties.errors import UsageError

CHECKS = {
    "exact": (
        lambda eps: 0.0,
        "the same call on the same data must give the same bits",
    ),
    "reordered": (
        lambda eps: 1e3 * eps,
        "the same sums in another order (batch split, time reversal, a merge "
        "recomputed from halves) differ by a few rounding errors per step",
    ),
    "differential": (
        lambda eps: eps ** 0.6,
        "another implementation may order sums and evaluate gates differently; "
        "eps**0.6 leaves room for that and still sees errors above ~4e-10 "
        "(float64) or ~7e-5 (float32)",
    ),
    "accuracy": (
        lambda eps: eps ** 0.5,
        "two central difference quotients at steps 1e-5 and 1e-6 agree to "
        "~1e-10 in float64 and to ~0.1 when the values are rounded to float32",
    ),
}
"""Check name -> (function of eps giving the relative tolerance, reason)."""


def tolerance(dtype, check):
    """Return ``(rtol, reason)`` for one check in one dtype.

    The tolerance is relative to the largest magnitude of the expected array
    (and at least 1), so a tolerance never grows silently with the size of
    the case.
    """
    if check not in CHECKS:
        raise UsageError(f"check={check!r} has no tolerance; use one of {sorted(CHECKS)}")

    eps = float(np.finfo(np.dtype(dtype)).eps)
    rule, reason = CHECKS[check]
    return rule(eps), reason
