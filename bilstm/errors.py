"""Exception family of the reference BiLSTM.

Every error raised for bad input derives from :class:`BiLSTMError`, so callers
can catch the whole family at once, and also from the matching built-in
(``ValueError`` or ``TypeError``), so code written against numpy conventions
keeps working.  Each message names the argument, shows the value or shape
seen, states the rule and gives the fix.
"""


class BiLSTMError(Exception):
    """Base class of every error raised by :mod:`bilstm` for bad input."""


class InvalidArgumentError(BiLSTMError, ValueError):
    """An argument has the right type but a wrong shape, size or value."""


class InvalidDtypeError(BiLSTMError, TypeError):
    """An array has a dtype that the reference does not compute in."""
