"""The interface any BiLSTM implementation is adapted to.

An adapter is an :class:`Implementation`: it declares its
:class:`Capabilities` and builds a :class:`Model` from the reference's
parameters (see :mod:`bilstm.params`) for one merge mode.  A model is used
the way layer objects of the frameworks are used:

- ``model.forward(x, lengths=None, h0=None, c0=None)`` returns an
  :class:`Output` with ``y`` in the reference layout (see below);
- ``model.backward(dy, dh_n=None, dc_n=None)`` returns the :class:`Grads` of
  the most recent forward call, by the implementation's own backward
  function or by autodiff inside the adapter.

Arrays cross the interface in the reference layout, whatever the
implementation uses internally: ``x`` is (n_ex, n_in, n_t); ``y`` is
(n_ex, 2H, n_t) for ``"concat"``, (2, n_ex, H, n_t) for ``None`` and
(n_ex, H, n_t) otherwise; states are (2, n_ex, H) with the forward direction
at index 0; parameter gradients are keyed like the parameters.

The harness builds a fresh model for each example and reuses one model only
where a property is about reuse, so a model that keeps state between calls
is seen doing so.  Adapters must not hide such defects: a model object of the
implementation is created in :meth:`Implementation.build` and then used as
it is.
"""

from dataclasses import dataclass, fields

import numpy as np

from bilstm.merge import MERGE_MODES


@dataclass(frozen=True)
class Capabilities:
    """What an implementation supports; a property needing more is not applicable.

    Attributes
    ----------
    merge_modes : frozenset
        Canonical merge modes (``None`` included when both halves can be
        returned separately).
    dtypes : frozenset of str
        ``"float32"`` and/or ``"float64"``.
    lengths : bool
        ``forward`` accepts per-example lengths.
    zero_length : bool
        Lengths of 0 are accepted.
    initial_state : bool
        ``forward`` accepts ``h0`` and ``c0``.
    final_state : bool
        ``forward`` returns ``h_n`` and ``c_n``.
    backward : bool
        ``backward`` returns at least ``dx``.
    param_gradients : bool
        ``backward`` returns the gradient of every parameter.
    state_gradients : bool
        ``backward`` returns ``dh0``/``dc0`` and accepts ``dh_n``/``dc_n``.
    complex_input : bool
        ``forward`` accepts complex128 arrays, so complex-step derivatives work.
    """

    merge_modes: frozenset = frozenset(MERGE_MODES)
    dtypes: frozenset = frozenset({"float32", "float64"})
    lengths: bool = False
    zero_length: bool = False
    initial_state: bool = False
    final_state: bool = False
    backward: bool = False
    param_gradients: bool = False
    state_gradients: bool = False
    complex_input: bool = False

    def missing(self, requires):
        """Return the names in ``requires`` that these capabilities lack."""
        return [name for name in requires if not getattr(self, name)]

    def describe(self):
        """Return a one-line summary, for report headers."""
        modes = ", ".join(repr(m) for m in MERGE_MODES if m in self.merge_modes)
        flags = [f.name for f in fields(self) if isinstance(getattr(self, f.name), bool)
                 and getattr(self, f.name)]
        return (f"merge modes {modes}; dtypes {', '.join(sorted(self.dtypes))}; "
                f"{', '.join(flags) if flags else 'forward only'}")


@dataclass
class Output:
    """Result of :meth:`Model.forward`, in the reference layout.

    ``h_n`` and ``c_n`` are ``None`` when the implementation has no final state.
    """

    y: np.ndarray
    h_n: np.ndarray | None = None
    c_n: np.ndarray | None = None


@dataclass
class Grads:
    """Result of :meth:`Model.backward`; a gradient the implementation lacks is ``None``."""

    dx: np.ndarray
    dparams: dict | None = None
    dh0: np.ndarray | None = None
    dc0: np.ndarray | None = None


class Model:
    """A built BiLSTM with fixed parameters and merge mode; subclass and override."""

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        """Run forward on ``x`` (n_ex, n_in, n_t) and return an :class:`Output`."""
        raise NotImplementedError

    def backward(self, dy, *, dh_n=None, dc_n=None):
        """Return the :class:`Grads` of the most recent forward call."""
        raise NotImplementedError


class Implementation:
    """Base class of adapters.

    Subclasses set :attr:`name`, :attr:`capabilities` and :attr:`extra`,
    override :meth:`build`, and override :meth:`version` where a package
    version exists.  :attr:`known_failures` maps property names to the reason
    they are known to fail for this implementation.
    """

    name = "unnamed"
    description = ""
    capabilities = Capabilities()
    extra = None
    known_failures = {}

    def version(self):
        """Return the version string of the package under test."""
        return "unknown"

    def build(self, params, *, merge_mode):
        """Return a :class:`Model` for ``params`` (reference layout) and ``merge_mode``."""
        raise NotImplementedError
