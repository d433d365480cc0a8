"""Command-line options of the standard benchmark case, shared by the speed benchmarks."""

import argparse

CASE_SIZES = ("n_ex", "n_t", "n_in", "hidden")
"""Attribute names of the size options that :func:`case_parser` adds."""


def case_parser(description):
    """Return an argument parser with the size and dtype options of the standard case.

    The defaults are the standard benchmark case: n_ex=32, n_t=100,
    n_in=64, H=128, both dtypes.
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n-ex", type=int, default=32, help="batch size (examples)")
    parser.add_argument("--n-t", type=int, default=100, help="time steps")
    parser.add_argument("--n-in", type=int, default=64, help="input features")
    parser.add_argument("--hidden", type=int, default=128, help="hidden units per direction, H")
    parser.add_argument(
        "--dtype", choices=("both", "float64", "float32"), default="both",
        help="dtype to time; 'both' times float64 then float32",
    )
    return parser


def require_positive(parser, args, names):
    """Exit through ``parser.error`` if any of the integer options ``names`` is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag}={getattr(args, name)} is invalid; use 1 or more")
