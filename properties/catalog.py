"""The property registry: named, documented claims about any BiLSTM.

A property is a function ``check(subject, case, rng)`` that raises
:class:`~properties.errors.PropertyFailure` when its claim does not hold.
Its docstring states the claim; :func:`register` records the capabilities it
needs and the options of the cases it is run on.  ``bilstm-verify list``
prints the registry.
"""

import inspect
from dataclasses import dataclass, field

import numpy as np

from bilstm.merge import MERGE_MODES
from properties.guard import DEFAULT_TIME_LIMIT, GuardedModel


@dataclass(frozen=True)
class Property:
    """One registered property.

    Attributes
    ----------
    name : str
        Identifier used by ``--property`` and in case files.
    check : callable
        ``check(subject, case, rng)``; raises on failure.
    requires : tuple of str
        Capability names (see :class:`~properties.protocol.Capabilities`).
    case_options : dict
        Keyword arguments for :func:`properties.strategies.cases`.
    merge_modes : frozenset or None
        Merge modes the property applies to; ``None`` means all.
    needs_concat : bool
        The property compares against a ``"concat"`` model of the same
        implementation, so the implementation must support that mode.
    """

    name: str
    check: object
    requires: tuple = ()
    case_options: dict = field(default_factory=dict)
    merge_modes: frozenset | None = None
    needs_concat: bool = False

    @property
    def claim(self):
        """The property's docstring, which states its claim."""
        return inspect.cleandoc(self.check.__doc__ or "")

    @property
    def summary(self):
        """First line of the claim."""
        return self.claim.splitlines()[0] if self.claim else ""


REGISTRY = {}
"""Property name -> :class:`Property`, in registration order."""

CATALOG_MODULES = (
    "properties.props_forward", "properties.props_backward",
    "properties.props_gradients", "properties.props_reference",
)
"""Modules that register properties, in catalog order: cheap forward checks first."""


def catalog_order():
    """Return the registered properties in catalog order, whatever the import order was."""
    rank = {module: k for k, module in enumerate(CATALOG_MODULES)}
    position = {name: k for k, name in enumerate(REGISTRY)}
    return sorted(REGISTRY.values(),
                  key=lambda prop: (rank.get(prop.check.__module__, len(rank)), position[prop.name]))


def register(name, *, requires=(), merge_modes=None, needs_concat=False, **case_options):
    """Register the decorated function as the property ``name``."""
    def decorate(check):
        if name in REGISTRY:
            raise ValueError(f"property {name!r} is registered twice")
        modes = None if merge_modes is None else frozenset(merge_modes)
        REGISTRY[name] = Property(name, check, tuple(requires), case_options, modes, needs_concat)
        return check
    return decorate


class Subject:
    """The implementation under test, as properties see it."""

    def __init__(self, implementation, time_limit_s=DEFAULT_TIME_LIMIT):
        self.implementation = implementation
        self.capabilities = implementation.capabilities
        self.name = implementation.name
        self.time_limit_s = time_limit_s
        # While Hypothesis searches and shrinks, properties skip work that only
        # sharpens the failure message; the runner re-runs the minimal case
        # with detailed set to get the full message.
        self.detailed = True
        # Merge modes the user asked for (--merge-mode); None means every mode.
        self.requested_modes = None

    def model(self, params, merge_mode):
        """Build a fresh, guarded model."""
        return GuardedModel(self.implementation, params, merge_mode, self.time_limit_s)


def applicable_merge_modes(prop, capabilities):
    """Return the merge modes a property can be run with on these capabilities."""
    modes = set(capabilities.merge_modes)
    if prop.merge_modes is not None:
        modes &= prop.merge_modes
    return modes


def not_applicable_reason(prop, capabilities, merge_modes=None):
    """Return why ``prop`` cannot run on ``capabilities``, or ``None`` when it can."""
    missing = capabilities.missing(prop.requires)
    if missing:
        return "implementation lacks " + ", ".join(missing)

    if prop.needs_concat and "concat" not in capabilities.merge_modes:
        return "needs merge mode 'concat' to compare against"

    modes = applicable_merge_modes(prop, capabilities)
    if merge_modes is not None:
        modes &= set(merge_modes)
    if not modes:
        return "no merge mode both requested and supported"

    dtypes = set(prop.case_options.get("dtypes", capabilities.dtypes)) & set(capabilities.dtypes)
    if not dtypes:
        return f"needs dtype {' or '.join(prop.case_options['dtypes'])}, which the implementation lacks"
    return None


def elementwise_modes(subject, case):
    """Return the drawn merge mode, then every other allowed mode except concat."""
    allowed = set(subject.capabilities.merge_modes)
    if subject.requested_modes is not None:
        allowed &= subject.requested_modes

    modes = [case.merge_mode] if case.merge_mode != "concat" else []
    for mode in MERGE_MODES:
        if mode != "concat" and mode not in modes and mode in allowed:
            modes.append(mode)
    return modes


def forward_inputs(case, **overrides):
    """Return the keyword arguments of ``forward`` for ``case``, with overrides."""
    kwargs = {"lengths": case.lengths, "h0": case.h0, "c0": case.c0}
    kwargs.update(overrides)
    return kwargs


def run_forward(subject, case, *, params=None, merge_mode="case", x=None, **overrides):
    """Build a fresh model and run forward; return ``(model, output)``."""
    params = case.params if params is None else params
    merge_mode = case.merge_mode if merge_mode == "case" else merge_mode
    x = case.x if x is None else x

    model = subject.model(params, merge_mode)
    out = model.forward(x, **forward_inputs(case, **overrides))
    return model, out


def upstream(case, subject):
    """Return ``(dh_n, dc_n)`` of the case where the implementation accepts them."""
    if subject.capabilities.state_gradients and subject.capabilities.final_state:
        return case.dh_n, case.dc_n
    return None, None


def run_backward(model, case, subject, dy=None):
    """Run backward with the case's upstream gradients (or ``dy``)."""
    dh_n, dc_n = upstream(case, subject)
    return model.backward(case.dy if dy is None else dy, dh_n=dh_n, dc_n=dc_n)


def split_halves(y, merge_mode, hidden_size):
    """Return the forward and backward halves of a ``"concat"`` or ``None`` output."""
    if merge_mode == "concat":
        return y[:, :hidden_size], y[:, hidden_size:]
    if merge_mode is None:
        return y[0], y[1]
    raise ValueError(f"merge_mode={merge_mode!r} has no separable halves")


def halves(subject, case, **overrides):
    """Return the two directions' outputs, each (n_ex, H, n_t), from a concat model."""
    _, out = run_forward(subject, case, merge_mode="concat", **overrides)
    return split_halves(out.y, "concat", case.sizes.hidden)


def reverse_valid(a, lengths):
    """Reverse the last (time) axis of ``a`` within each example's valid steps.

    ``a`` has the example axis at -3 (reference layout); padded steps stay in place.
    """
    if lengths is None:
        return a[..., ::-1].copy()

    n_t = a.shape[-1]
    out = a.copy()
    for n, length in enumerate(lengths):
        order = np.concatenate([np.arange(length)[::-1], np.arange(length, n_t)])
        out[..., n, :, :] = np.take(a[..., n, :, :], order, axis=-1)
    return out


def new_rng(seed):
    """Return the generator a property draws its own extra randomness from."""
    return np.random.default_rng(seed)
