"""Hypothesis strategies that draw BiLSTM test cases for the reference layout.

Every strategy here validates its arguments when it is created, not when an
example is drawn, and raises :class:`InvalidStrategyArgument` with the
argument, its value, the rule and the fix.  Arrays follow :mod:`bilstm`:
``x`` is (n_ex, n_in, n_t), states are (2, n_ex, H) with the forward
direction at index 0, and parameters are keyed by
:data:`bilstm.params.PARAM_NAMES` with gate order i, f, g, o.

Arrays are not drawn element by element, which would be slow for a few
hundred entries.  A strategy draws one seed and builds the array with
``numpy.random.default_rng(seed)``, so shrinking moves the seed towards 0 and
the values stay reproducible.  Every array built here has pairwise distinct
entries and no zero entry (see :func:`_distinct_values`).  This makes inputs
that reveal asymmetry:

- no bias entry is zero, so a dropped bias changes the output,
- the two directions' weights differ, so swapped directions are visible,
- no upstream gradient is all ones, and none with two or more entries is
  constant, so swapped halves of the concatenated output and permuted time
  steps change the gradient.

Shrink targets
--------------
=========================  ==================================================
strategy                   minimal example
=========================  ==================================================
:func:`sizes`              every size at its minimum, by default (1, 1, 1, 1)
:func:`merge_modes`        the first mode listed, ``"concat"`` by default
:func:`dtypes`             the first dtype listed, float64 by default
:func:`weight_scales`      the first scale listed, ``"typical"`` by default
:func:`lengths`            every example at its full length ``n_t``
:func:`initial_states`     ``None`` (zero states), or seed 0 if not allowed
array strategies           the arrays built from seed 0
:func:`cases`              all of the above, with every optional array absent
=========================  ==================================================
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from hypothesis import strategies as st

from bilstm import PARAM_NAMES, canonical_merge_mode, output_shape, param_shapes
from bilstm.errors import BiLSTMError
from properties.errors import CaseFileError, HarnessError

MAX_SIZE = 6
"""Default upper bound of n_ex, n_in, H and n_t when ``max_X`` is None."""

MAX_SEED = 2**32 - 1
"""Largest seed drawn for ``numpy.random.default_rng``."""

MAX_ELEMENTS = 2**21
"""Largest array (or parameter set) one strategy builds.

Below this size the entries stay pairwise distinct after rounding to float32
(see :func:`_distinct_values`).
"""

DTYPE_NAMES = ("float64", "float32")
"""Dtypes the strategies draw, in shrink order."""

WEIGHT_SCALES = ("typical", "small", "saturating")
"""Names of the weight scales, in shrink order.

``"typical"`` comes first because a failure shown at PyTorch's default
initialisation is the easiest to read, and a failure that needs small or
saturating weights keeps them while it shrinks.
"""

PRESENCE = ("never", "sometimes", "always")
"""Accepted values of the ``with_*`` options of :func:`cases`."""

CASE_FORMAT = 1
"""Version of the layout written by :meth:`Case.to_arrays`."""

_SEEDS = st.integers(min_value=0, max_value=MAX_SEED)
_OPTIONAL_ARRAYS = ("lengths", "h0", "c0", "dh_n", "dc_n")
_PARAM_PREFIX = "params."


class InvalidStrategyArgument(HarnessError, ValueError):
    """A strategy was created with an invalid argument."""


@dataclass(frozen=True)
class Sizes:
    """Sizes of one BiLSTM case.

    Attributes
    ----------
    n_ex : int
        Examples in the batch.
    n_in : int
        Input features.
    hidden : int
        Hidden units per direction, ``H``.
    n_t : int
        Time steps.
    """

    n_ex: int
    n_in: int
    hidden: int
    n_t: int


@dataclass(frozen=True, eq=False)
class Case:
    """One complete input of a BiLSTM forward and backward pass.

    The dataclass is frozen, but its arrays are neither copied nor made
    read-only.  Equality is identity because ndarray fields have no single
    truth value, so compare the output of :meth:`to_arrays` instead.

    Attributes
    ----------
    sizes : Sizes
    merge_mode : str or None
        Merge mode as drawn, which may be a Keras alias such as ``"ave"``.
    dtype : str
        ``"float64"`` or ``"float32"``, the dtype of every float array.
    params : dict of str to ndarray
        Parameters keyed by :data:`bilstm.params.PARAM_NAMES`.
    x : ndarray, shape (n_ex, n_in, n_t)
    dy : ndarray
        Upstream gradient, shaped like the output: (n_ex, 2H, n_t) for
        ``"concat"``, (2, n_ex, H, n_t) for ``None``, else (n_ex, H, n_t).
    lengths : ndarray of int64, shape (n_ex,), or None
        Valid steps per example.  ``None`` means all ``n_t``.
    h0, c0 : ndarray, shape (2, n_ex, H), or None
        Initial states.  ``None`` means zeros.
    dh_n, dc_n : ndarray, shape (2, n_ex, H), or None
        Gradients with respect to the final states.  ``None`` means zeros.
    weight_scale : str or None
        Name from :data:`WEIGHT_SCALES` the parameters were drawn with, if known.
    """

    sizes: Sizes
    merge_mode: str | None
    dtype: str
    params: dict
    x: np.ndarray
    dy: np.ndarray
    lengths: np.ndarray | None = None
    h0: np.ndarray | None = None
    c0: np.ndarray | None = None
    dh_n: np.ndarray | None = None
    dc_n: np.ndarray | None = None
    weight_scale: str | None = None

    def summary(self):
        """Return a one-line description, for example in a failure report.

        Example: ``n_ex=1 n_in=1 H=2 n_t=1 merge=concat float64 scale=typical
        lengths=None h0=zeros c0=zeros dh_n=zeros dc_n=zeros``.
        """
        size = self.sizes
        if self.lengths is None:
            lengths = "None"
        else:
            lengths = "[" + ",".join(str(int(n)) for n in self.lengths) + "]"

        words = [
            f"n_ex={size.n_ex}", f"n_in={size.n_in}", f"H={size.hidden}", f"n_t={size.n_t}",
            f"merge={self.merge_mode}", self.dtype, f"scale={self.weight_scale}",
            f"lengths={lengths}",
        ]
        for name in ("h0", "c0", "dh_n", "dc_n"):
            words.append(f"{name}={'zeros' if getattr(self, name) is None else 'random'}")
        return " ".join(words)

    def to_arrays(self):
        """Flatten the case into arrays and JSON-serialisable metadata.

        Returns
        -------
        arrays : dict of str to ndarray
            ``"x"``, ``"dy"``, ``"params.<name>"`` for every parameter and
            each optional array that is not None, under its field name.  The
            arrays are the case's own, not copies, and ``numpy.savez`` writes them.
        metadata : dict
            Format version, sizes, merge mode, dtype name and weight scale,
            ready for ``json.dump``.
        """
        arrays = {"x": self.x, "dy": self.dy}
        for name, value in self.params.items():
            arrays[_PARAM_PREFIX + name] = value
        for name in _OPTIONAL_ARRAYS:
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)

        metadata = {
            "format": CASE_FORMAT,
            "sizes": asdict(self.sizes),
            "merge_mode": self.merge_mode,
            "dtype": self.dtype,
            "weight_scale": self.weight_scale,
        }
        return arrays, metadata

    @classmethod
    def from_arrays(cls, arrays, metadata):
        """Rebuild a case from the output of :meth:`to_arrays`.

        Parameters
        ----------
        arrays : Mapping of str to array_like
            For example the ``NpzFile`` returned by ``numpy.load``.
        metadata : dict
            For example the dict returned by ``json.load``.

        Returns
        -------
        Case

        Raises
        ------
        properties.errors.CaseFileError
            If the format version, the keys or the shape of ``x`` do not match.
        """
        sizes = _check_case_metadata(metadata)
        _check_case_keys(arrays)

        loaded = {key: np.asarray(arrays[key]) for key in arrays.keys()}
        _check_case_x(loaded["x"], sizes, metadata["dtype"])
        params = {name: loaded[_PARAM_PREFIX + name] for name in PARAM_NAMES}
        optional = {name: loaded.get(name) for name in _OPTIONAL_ARRAYS}

        return cls(
            sizes=sizes, merge_mode=metadata["merge_mode"], dtype=metadata["dtype"],
            params=params, x=loaded["x"], dy=loaded["dy"],
            weight_scale=metadata.get("weight_scale"), **optional,
        )


def _check_case_metadata(metadata):
    if not isinstance(metadata, Mapping) or metadata.get("format") != CASE_FORMAT:
        found = metadata.get("format") if isinstance(metadata, Mapping) else metadata
        raise CaseFileError(
            f"case metadata has format {found!r}, but this version reads format "
            f"{CASE_FORMAT}. Regenerate the case with Case.to_arrays."
        )

    missing = [key for key in ("sizes", "merge_mode", "dtype") if key not in metadata]
    if missing:
        raise CaseFileError(
            f"case metadata is missing the keys {missing}. Regenerate the case with "
            f"Case.to_arrays."
        )

    try:
        return Sizes(**metadata["sizes"])
    except TypeError:
        raise CaseFileError(
            f"case metadata has sizes={metadata['sizes']!r}, but sizes must map exactly "
            f"n_ex, n_in, hidden and n_t to integers. Regenerate the case with "
            f"Case.to_arrays."
        ) from None


def _check_case_x(x, sizes, dtype_name):
    expected = (sizes.n_ex, sizes.n_in, sizes.n_t)
    if x.shape != expected or x.dtype.name != dtype_name:
        raise CaseFileError(
            f"case arrays have x of shape {x.shape} and dtype {x.dtype}, but the metadata "
            f"requires shape {expected} and dtype {dtype_name}. The arrays and the "
            f"metadata come from different cases, so save both from one "
            f"Case.to_arrays call."
        )


def _check_case_keys(arrays):
    required = {"x", "dy"} | {_PARAM_PREFIX + name for name in PARAM_NAMES}
    allowed = required | set(_OPTIONAL_ARRAYS)
    keys = set(arrays.keys())
    missing = sorted(required - keys)
    unexpected = sorted(keys - allowed)
    if missing or unexpected:
        raise CaseFileError(
            f"case arrays are missing the keys {missing} and have the unexpected keys "
            f"{unexpected}. A case file contains exactly the keys that Case.to_arrays "
            f"writes."
        )


# Argument validation.  Each check returns the normalised value.

def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidStrategyArgument(
            f"{name}={value!r} is not an integer. Pass a whole number >= {minimum}."
        )
    if value < minimum:
        raise InvalidStrategyArgument(
            f"{name}={value!r} is below the minimum {minimum}. Pass {name} >= {minimum}."
        )
    return int(value)


def _check_bounds(name, min_value, max_value, floor):
    """Return ``(min_X, max_X)``, where a ``max_X`` of None becomes ``max(min_X, MAX_SIZE)``."""
    low = _check_count(f"min_{name}", min_value, floor)
    if max_value is None:
        return low, max(low, MAX_SIZE)

    high = _check_count(f"max_{name}", max_value, floor)
    if low > high:
        raise InvalidStrategyArgument(
            f"min_{name}={low} > max_{name}={high}, but a minimum cannot exceed its "
            f"maximum. Lower min_{name} or raise max_{name}."
        )
    return low, high


def _check_flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidStrategyArgument(
            f"{name}={value!r} is not a bool. Pass {name}=True or {name}=False."
        )
    return bool(value)


def _check_choices(name, values, example):
    """Return ``values`` as a non-empty tuple whose first entry is the shrink target."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidStrategyArgument(
            f"{name}={values!r} is not a list or tuple, and the order matters because "
            f"examples shrink towards the first entry. Pass for example {name}={example!r}."
        )
    if len(values) == 0:
        raise InvalidStrategyArgument(
            f"{name}={values!r} is empty, so nothing can be drawn. Pass at least one "
            f"entry, for example {name}={example!r}."
        )
    return tuple(values)


def _check_sizes(sizes):
    if not isinstance(sizes, Sizes):
        raise InvalidStrategyArgument(
            f"sizes={sizes!r} is not a Sizes instance. Pass "
            f"Sizes(n_ex=..., n_in=..., hidden=..., n_t=...) or draw one from sizes()."
        )
    for name, floor in (("n_ex", 0), ("n_in", 0), ("hidden", 1), ("n_t", 0)):
        _check_count(f"sizes.{name}", getattr(sizes, name), floor)
    return sizes


def _check_dtype(name, value):
    # numpy.dtype(None) is float64, which would hide a missing argument.
    try:
        dtype = None if value is None else np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in DTYPE_NAMES:
        raise InvalidStrategyArgument(
            f"{name}={value!r} is not a supported dtype. Pass one of {list(DTYPE_NAMES)}."
        )
    return dtype


def _check_positive(name, value):
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value) or value <= 0):
        raise InvalidStrategyArgument(
            f"{name}={value!r} is not a finite number > 0. Pass for example {name}=1.0."
        )
    return float(value)


def _check_scale_name(name, value):
    if value not in WEIGHT_SCALES:
        raise InvalidStrategyArgument(
            f"{name}={value!r} is not a weight scale name. Pass one of {list(WEIGHT_SCALES)}."
        )
    return value


def _check_presence(name, value):
    if value not in PRESENCE:
        raise InvalidStrategyArgument(
            f"{name}={value!r} is not a valid choice. Pass one of {list(PRESENCE)}."
        )
    return value


def _check_element_count(name, count, hint):
    if count > MAX_ELEMENTS:
        raise InvalidStrategyArgument(
            f"{name} would have {count} elements, above the limit MAX_ELEMENTS={MAX_ELEMENTS} "
            f"under which float32 entries stay distinct. {hint}"
        )


def _check_shape(shape):
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise InvalidStrategyArgument(
            f"shape={shape!r} is not a tuple of integers. Pass for example "
            f"shape=(n_ex, H, n_t), or use bilstm.output_shape."
        )
    shape = tuple(_check_count(f"shape[{i}]", n, 0) for i, n in enumerate(shape))
    _check_element_count(f"an array of shape={shape}", math.prod(shape), "Pass a smaller shape.")
    return shape


def _param_count(n_in, hidden):
    return 2 * 4 * hidden * (n_in + hidden + 1)


# Array builders shared by the public strategies and cases().

def _distinct_values(rng, size):
    """Return ``size`` float64 values in (-1, 1), pairwise distinct and none zero.

    Value ``k`` has magnitude ``(slot_k + u_k) / size`` with ``slot`` a random
    permutation of ``range(size)`` and ``u_k`` uniform in [0.25, 0.75), and a
    random sign.  Magnitudes therefore lie in disjoint intervals at least
    ``0.5 / size`` apart, never 0 and never 1.  Scaling by ``s`` and rounding
    to float32 moves each value by at most ``s * 2**-24``, so up to
    :data:`MAX_ELEMENTS` values stay distinct in float32 as well, with a
    margin of 2.
    """
    slots = rng.permutation(size)
    magnitudes = (slots + rng.uniform(0.25, 0.75, size)) / size
    signs = rng.choice(np.array([-1.0, 1.0]), size)
    return signs * magnitudes


def _build_arrays(seed, shapes, dtype, scale):
    """Build arrays of ``shapes`` from one seed, all entries distinct across them."""
    rng = np.random.default_rng(seed)
    counts = [math.prod(shape) for shape in shapes]
    values = _distinct_values(rng, sum(counts)) * scale

    arrays = []
    for chunk, shape in zip(np.split(values, np.cumsum(counts)[:-1]), shapes):
        arrays.append(chunk.reshape(shape).astype(dtype))
    return arrays


def _build_params(seed, sizes, dtype, scale, distinct_directions):
    shapes = param_shapes(sizes.n_in, sizes.hidden)
    names = PARAM_NAMES if distinct_directions else [n for n in PARAM_NAMES if n.endswith("_fwd")]
    params = dict(zip(names, _build_arrays(seed, [shapes[n] for n in names], dtype, scale)))

    if not distinct_directions:
        for name in names:
            params[name[: -len("fwd")] + "bwd"] = params[name].copy()
    return {name: params[name] for name in PARAM_NAMES}


def _build_pair(seed, shape, dtype):
    first, second = _build_arrays(seed, [shape, shape], dtype, 1.0)
    return first, second


def _build_lengths(paddings, n_t):
    return n_t - np.asarray(paddings, dtype=np.int64).reshape(-1)


def _lengths_strategy(sizes, allow_zero):
    # Drawing the padding instead of the length makes 0 padding, that is
    # every example at full length, the shrink target.
    max_padding = sizes.n_t if allow_zero else max(sizes.n_t - 1, 0)
    paddings = st.lists(
        st.integers(min_value=0, max_value=max_padding),
        min_size=sizes.n_ex, max_size=sizes.n_ex,
    )
    return paddings.map(lambda p: _build_lengths(p, sizes.n_t))


def _optional(presence, strategy):
    if presence == "never":
        return st.none()
    if presence == "always":
        return strategy
    return st.one_of(st.none(), strategy)


def weight_scale_value(name, hidden):
    """Return the weight half-width for a name in :data:`WEIGHT_SCALES`.

    ``"typical"`` is ``1 / sqrt(H)``, PyTorch's default initialisation.
    ``"small"`` is 1e-3, where the cell is nearly linear.  ``"saturating"``
    is 5.0.  With inputs in (-1, 1), about half of the input and bias parts
    of the pre-activations then exceed 3 in magnitude (an estimate from 200
    drawn cases), so many sigmoid gates lie outside [0.05, 0.95].
    """
    name = _check_scale_name("name", name)
    hidden = _check_count("hidden", hidden, 1)
    values = {"typical": 1.0 / math.sqrt(hidden), "small": 1e-3, "saturating": 5.0}
    return values[name]


# Public strategies.

def sizes(*, min_n_ex=1, max_n_ex=None, min_n_in=1, max_n_in=None,
          min_hidden=1, max_hidden=None, min_n_t=1, max_n_t=None):
    """Return a strategy for :class:`Sizes`.

    Parameters
    ----------
    min_n_ex, max_n_ex : int
        Bounds of the batch size, at least 0.
    min_n_in, max_n_in : int
        Bounds of the input features, at least 0.
    min_hidden, max_hidden : int
        Bounds of ``H``, at least 1.  Properties that tell the
        forward half of a concatenated output from the backward half need
        ``min_hidden=2``, because at ``H = 1`` layout bugs can hide.
    min_n_t, max_n_t : int
        Bounds of the time steps, at least 0.

    Every ``max_X`` of None becomes ``max(min_X, MAX_SIZE)``.  An explicit
    ``max_X`` may exceed :data:`MAX_SIZE`.

    Returns
    -------
    SearchStrategy of Sizes
        Shrinks towards every size at its minimum, (1, 1, 1, 1) by default.

    Raises
    ------
    InvalidStrategyArgument
        For a non-integer bound, a bound below its floor, or ``min_X > max_X``.
    """
    bounds = {
        "n_ex": _check_bounds("n_ex", min_n_ex, max_n_ex, 0),
        "n_in": _check_bounds("n_in", min_n_in, max_n_in, 0),
        "hidden": _check_bounds("hidden", min_hidden, max_hidden, 1),
        "n_t": _check_bounds("n_t", min_n_t, max_n_t, 0),
    }
    return _sizes_strategy(bounds)


def _sizes_strategy(bounds):
    draws = {name: st.integers(min_value=low, max_value=high) for name, (low, high) in bounds.items()}
    return st.builds(Sizes, **draws)


def merge_modes(*, modes=None):
    """Return a strategy for merge modes.

    Parameters
    ----------
    modes : list or tuple, optional
        Modes to draw from, canonical names or Keras aliases (``"ave"``,
        ``"mul"``).  Aliases are drawn as given.  Default: all of
        :data:`bilstm.MERGE_MODES`, that is ``"concat"``, ``"sum"``,
        ``"average"``, ``"multiply"`` and None.

    Returns
    -------
    SearchStrategy of str or None
        Shrinks towards the first entry, ``"concat"`` by default.
    """
    return st.sampled_from(_check_merge_modes(modes))


def _check_merge_modes(modes):
    if modes is None:
        return ("concat", "sum", "average", "multiply", None)

    modes = _check_choices("modes", modes, ["concat", "sum"])
    for mode in modes:
        try:
            canonical_merge_mode(mode)
        except BiLSTMError as exc:
            raise InvalidStrategyArgument(f"modes contains an invalid entry: {exc}") from None
    return modes


def dtypes(*, dtypes=None):
    """Return a strategy for the float dtypes the reference computes in.

    Parameters
    ----------
    dtypes : list or tuple, optional
        Entries accepted by ``numpy.dtype`` that name float64 or float32.
        Default: ``["float64", "float32"]``.

    Returns
    -------
    SearchStrategy of numpy.dtype
        Shrinks towards the first entry, float64 by default.
    """
    return st.sampled_from(_check_dtypes(dtypes))


def _check_dtypes(values):
    if values is None:
        values = DTYPE_NAMES
    values = _check_choices("dtypes", values, ["float64"])
    return tuple(_check_dtype("dtypes entry", value) for value in values)


def weight_scales(*, scales=None):
    """Return a strategy for weight scale names, see :func:`weight_scale_value`.

    Parameters
    ----------
    scales : list or tuple of str, optional
        Names from :data:`WEIGHT_SCALES`.  Default: all of them.

    Returns
    -------
    SearchStrategy of str
        Shrinks towards the first entry, ``"typical"`` by default.
    """
    return st.sampled_from(_check_scale_names(scales))


def _check_scale_names(scales):
    if scales is None:
        return WEIGHT_SCALES
    scales = _check_choices("scales", scales, ["typical"])
    return tuple(_check_scale_name("scales entry", scale) for scale in scales)


def params(sizes, *, dtype=np.float64, scale=None, distinct_directions=True):
    """Return a strategy for a parameter dict of the reference layout.

    Parameters
    ----------
    sizes : Sizes
        ``n_in`` and ``hidden`` set the shapes: ``W_ih_*`` (n_in, 4H),
        ``W_hh_*`` (H, 4H), ``b_*`` (4H,).
    dtype : float64 or float32
    scale : str or float, optional
        Half-width of the values: a name from :data:`WEIGHT_SCALES` or a
        number > 0.  None draws a name from :func:`weight_scales`.
    distinct_directions : bool
        If False, the backward tensors are copies of the forward ones.

    Returns
    -------
    SearchStrategy of dict of str to ndarray
        Entries lie in (-scale, scale), up to rounding to ``dtype``, and are
        non-zero.  With ``distinct_directions`` they are pairwise distinct
        across all six tensors, so the two directions differ, except the
        input weights when ``n_in = 0``, which are empty.  Shrinks towards
        seed 0, and towards ``"typical"`` when ``scale`` is None.
    """
    sizes = _check_sizes(sizes)
    dtype = _check_dtype("dtype", dtype)
    distinct_directions = _check_flag("distinct_directions", distinct_directions)
    _check_element_count(
        "params", _param_count(sizes.n_in, sizes.hidden), "Pass smaller sizes.n_in or sizes.hidden."
    )

    if scale is None:
        scale_values = weight_scales().map(lambda name: weight_scale_value(name, sizes.hidden))
    elif isinstance(scale, str):
        scale_values = st.just(weight_scale_value(_check_scale_name("scale", scale), sizes.hidden))
    else:
        scale_values = st.just(_check_positive("scale", scale))

    return st.tuples(scale_values, _SEEDS).map(
        lambda drawn: _build_params(drawn[1], sizes, dtype, drawn[0], distinct_directions)
    )


def inputs(sizes, *, dtype=np.float64, scale=1.0):
    """Return a strategy for the input ``x``.

    Parameters
    ----------
    sizes : Sizes
    dtype : float64 or float32
    scale : float
        Half-width of the values, > 0.

    Returns
    -------
    SearchStrategy of ndarray, shape (n_ex, n_in, n_t)
        Entries in (-scale, scale), pairwise distinct and non-zero, so a
        transposed or time-reversed input is never equal to ``x``.  Shrinks
        towards seed 0.
    """
    sizes = _check_sizes(sizes)
    dtype = _check_dtype("dtype", dtype)
    scale = _check_positive("scale", scale)
    shape = (sizes.n_ex, sizes.n_in, sizes.n_t)
    _check_element_count("x", math.prod(shape), "Pass smaller sizes.")
    return _SEEDS.map(lambda seed: _build_arrays(seed, [shape], dtype, scale)[0])


def upstream_gradients(shape, *, dtype=np.float64):
    """Return a strategy for an upstream gradient such as ``dy`` or ``dh_n``.

    Parameters
    ----------
    shape : tuple of int
        For ``dy``, ``bilstm.output_shape(n_ex, H, n_t, merge_mode)``.
    dtype : float64 or float32

    Returns
    -------
    SearchStrategy of ndarray
        Entries in (-1, 1), pairwise distinct and non-zero.  So the array is
        never all ones, and with two or more entries never constant.
        Shrinks towards seed 0.
    """
    shape = _check_shape(shape)
    dtype = _check_dtype("dtype", dtype)
    return _SEEDS.map(lambda seed: _build_arrays(seed, [shape], dtype, 1.0)[0])


def initial_states(sizes, *, dtype=np.float64, allow_none=True):
    """Return a strategy for the initial states ``(h0, c0)``.

    Parameters
    ----------
    sizes : Sizes
    dtype : float64 or float32
    allow_none : bool
        Whether None, which means zero states, may be drawn.

    Returns
    -------
    SearchStrategy of (ndarray, ndarray) or None
        Each state has shape (2, n_ex, H) and entries in (-1, 1), pairwise
        distinct across both states and non-zero.  Shrinks towards None when
        ``allow_none`` is true, else towards seed 0.
    """
    sizes = _check_sizes(sizes)
    dtype = _check_dtype("dtype", dtype)
    allow_none = _check_flag("allow_none", allow_none)
    shape = (2, sizes.n_ex, sizes.hidden)
    pairs = _SEEDS.map(lambda seed: _build_pair(seed, shape, dtype))
    return _optional("sometimes" if allow_none else "always", pairs)


def lengths(sizes, *, allow_zero=False):
    """Return a strategy for per-example lengths.

    Parameters
    ----------
    sizes : Sizes
    allow_zero : bool
        Whether a length may be 0, an example with no valid step.

    Returns
    -------
    SearchStrategy of ndarray of int64, shape (n_ex,)
        Entries in ``[1, n_t]``, or ``[0, n_t]`` with ``allow_zero``.  Every
        pattern can be drawn: all full, all 1, mixed, and 0 when allowed.
        Shrinks towards every example at full length ``n_t``, that is no
        padding.

    Raises
    ------
    InvalidStrategyArgument
        If ``sizes.n_t = 0`` and ``allow_zero`` is false, since then no
        length is valid.
    """
    sizes = _check_sizes(sizes)
    allow_zero = _check_flag("allow_zero", allow_zero)
    if sizes.n_t == 0 and not allow_zero and sizes.n_ex > 0:
        raise InvalidStrategyArgument(
            "sizes.n_t=0 with allow_zero=False leaves no valid length, since each "
            "must lie in [1, n_t]. Pass allow_zero=True or sizes with n_t >= 1."
        )
    return _lengths_strategy(sizes, allow_zero)


def cases(*, merge_modes=None, dtypes=None, weight_scales=None, input_scale=1.0,
          with_lengths="sometimes", allow_zero_length=False,
          with_initial_states="sometimes", with_final_state_grads="sometimes",
          distinct_directions=True,
          min_n_ex=1, max_n_ex=None, min_n_in=1, max_n_in=None,
          min_hidden=1, max_hidden=None, min_n_t=1, max_n_t=None):
    """Return a strategy for a whole :class:`Case`.

    Parameters
    ----------
    merge_modes : list or tuple, optional
        Passed to :func:`merge_modes` as ``modes``.
    dtypes : list or tuple, optional
        Passed to :func:`dtypes`.
    weight_scales : list or tuple of str, optional
        Passed to :func:`weight_scales` as ``scales``.
    input_scale : float
        Half-width of ``x``, > 0.
    with_lengths : {"never", "sometimes", "always"}
        Whether ``lengths`` is drawn.  With "never" it is None.
    allow_zero_length : bool
        Whether a drawn length may be 0.
    with_initial_states : {"never", "sometimes", "always"}
        Whether ``h0`` and ``c0`` are drawn, both or neither.
    with_final_state_grads : {"never", "sometimes", "always"}
        Whether ``dh_n`` and ``dc_n`` are drawn, both or neither.
    distinct_directions : bool
        Passed to :func:`params`.
    min_n_ex, ..., max_n_t : int
        Size bounds, as in :func:`sizes`.

    Returns
    -------
    SearchStrategy of Case
        ``dy`` has shape ``bilstm.output_shape(n_ex, H, n_t, merge_mode)``.
        Shrinks towards the minimal sizes, the first merge mode, dtype and
        weight scale, seed 0 for every array, and every "sometimes" array
        absent (None).

    Raises
    ------
    InvalidStrategyArgument
        For any invalid option, or if ``min_n_t = 0`` while lengths without
        0 may be drawn.
    """
    bounds = {
        "n_ex": _check_bounds("n_ex", min_n_ex, max_n_ex, 0),
        "n_in": _check_bounds("n_in", min_n_in, max_n_in, 0),
        "hidden": _check_bounds("hidden", min_hidden, max_hidden, 1),
        "n_t": _check_bounds("n_t", min_n_t, max_n_t, 0),
    }
    options = {
        "merge_modes": st.sampled_from(_check_merge_modes(merge_modes)),
        "dtypes": st.sampled_from(_check_dtypes(dtypes)),
        "weight_scales": st.sampled_from(_check_scale_names(weight_scales)),
        "input_scale": _check_positive("input_scale", input_scale),
        "with_lengths": _check_presence("with_lengths", with_lengths),
        "allow_zero_length": _check_flag("allow_zero_length", allow_zero_length),
        "with_initial_states": _check_presence("with_initial_states", with_initial_states),
        "with_final_state_grads": _check_presence("with_final_state_grads", with_final_state_grads),
        "distinct_directions": _check_flag("distinct_directions", distinct_directions),
    }
    _check_case_bounds(bounds, options)
    return _draw_case(_sizes_strategy(bounds), options)


def _check_case_bounds(bounds, options):
    min_n_t = bounds["n_t"][0]
    if min_n_t == 0 and options["with_lengths"] != "never" and not options["allow_zero_length"]:
        raise InvalidStrategyArgument(
            f"min_n_t=0 with with_lengths={options['with_lengths']!r} and "
            f"allow_zero_length=False leaves no valid length at n_t = 0. Pass "
            f"allow_zero_length=True, with_lengths='never' or min_n_t >= 1."
        )

    n_ex, n_in, hidden, n_t = (bounds[name][1] for name in ("n_ex", "n_in", "hidden", "n_t"))
    hint = "Lower the max_ size bounds."
    _check_element_count("params at the max_ sizes", _param_count(n_in, hidden), hint)
    _check_element_count("x at the max_ sizes", n_ex * n_in * n_t, hint)
    _check_element_count("dy at the max_ sizes", 2 * n_ex * hidden * n_t, hint)


@st.composite
def _draw_case(draw, sizes_strategy, options):
    size = draw(sizes_strategy)
    merge_mode = draw(options["merge_modes"])
    dtype = draw(options["dtypes"])
    scale_name = draw(options["weight_scales"])

    scale = weight_scale_value(scale_name, size.hidden)
    params = _build_params(draw(_SEEDS), size, dtype, scale, options["distinct_directions"])
    x_shape = (size.n_ex, size.n_in, size.n_t)
    x = _build_arrays(draw(_SEEDS), [x_shape], dtype, options["input_scale"])[0]

    lengths = draw(_optional(
        options["with_lengths"], _lengths_strategy(size, options["allow_zero_length"])
    ))
    state_shape = (2, size.n_ex, size.hidden)
    states = draw(_optional(options["with_initial_states"], _SEEDS))
    h0, c0 = (None, None) if states is None else _build_pair(states, state_shape, dtype)

    dy_shape = output_shape(size.n_ex, size.hidden, size.n_t, merge_mode)
    dy = _build_arrays(draw(_SEEDS), [dy_shape], dtype, 1.0)[0]
    final = draw(_optional(options["with_final_state_grads"], _SEEDS))
    dh_n, dc_n = (None, None) if final is None else _build_pair(final, state_shape, dtype)

    return Case(
        sizes=size, merge_mode=merge_mode, dtype=dtype.name, params=params, x=x, dy=dy,
        lengths=lengths, h0=h0, c0=c0, dh_n=dh_n, dc_n=dc_n, weight_scale=scale_name,
    )
