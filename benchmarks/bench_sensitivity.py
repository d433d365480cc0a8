"""Sensitivity and false alarms of the gradient check, beside torch.autograd.gradcheck.

Run from the repository root::

    python3 benchmarks/bench_sensitivity.py
    python3 benchmarks/bench_sensitivity.py --quick
    python3 benchmarks/bench_sensitivity.py --cases 2000 --trials 540 --json sensitivity.json

Planted errors
--------------
Each trial plants an error of relative size delta = 1e-2, 1e-3, ..., 1e-9 in
one gradient of the reference BiLSTM (:mod:`bilstm`): dx, one of the six
parameter gradients, dh0 or dc0, chosen by the case number so that every
tensor gets the same share of trials.  Two kinds of error:

- ``scale``: the gradient g becomes ``g * (1 + delta)``;
- ``noise``: g becomes ``g + delta * ||g|| * u``, with ``u`` a random unit
  vector of g's shape, drawn once per case.

The error is computed in float64 and rounded to the gradient's dtype.  In
float32 an error below about 6e-8 therefore mostly rounds away, and the
output counts the trials where the planted gradient equals the exact one.
A trial whose exact gradient is 0 plants nothing and is skipped; this
happens to dW_hh when n_t = 1 and h0 = 0.

Our check detects a trial when the harness's gradient property that covers
the tensor (``gradient_input``, ``gradient_params`` or
``gradient_initial_state`` from :mod:`properties.props_gradients`) fails.  The
properties run unchanged, with the reference's adapter wrapped so that its
backward plants the error, and with ``subject.detailed`` false, as during the
Hypothesis search.  ``torch.autograd.gradcheck`` with its default tolerances
(eps 1e-6, atol 1e-5, rtol 1e-3) detects a trial when it returns False.  It
checks the whole Jacobian of ``(y, h_n, c_n)`` with respect to x, the six
parameters, h0 and c0, through a :class:`torch.autograd.Function` that calls
``bilstm.forward`` and the error-planting backward in float64.  gradcheck
runs in slow mode (the default) and with ``fast_mode=True``.

False alarms
------------
Every case without a planted error runs through all four gradient properties
(``gradient_final_state`` too) in each dtype, and through gradcheck in float64.
A case with any failing property counts as one false alarm, and the JSON
output keeps its failure messages.

Output
------
Per kind of error, a Markdown table of detection rates per delta and column,
with the smallest delta that it and every larger delta detect in every
trial, and in at least 99% of trials.  Then the smallest delta detected in
every trial per tensor and per weight scale, the false alarms, and the
median time of one error-free check per case.

Cases
-----
Random and seeded: n_ex, n_in, H and n_t uniform in 1..:data:`MAX_SIZE`,
every merge mode, weight scales "typical", "small" and "saturating" (see
:func:`properties.strategies.weight_scale_value`), inputs and upstream
gradients uniform in (-1, 1).  Per-example lengths, initial states and
final-state gradients are each present in a share of the cases
(:data:`OPTIONAL_SHARES`).  A property whose case options require initial
states or final-state gradients gets them from spare arrays drawn with the
case.  The float32 case is the float64 case rounded to float32.

Speed
-----
The numerical side of a check does not depend on the planted error, so a
memo (:class:`ReferenceMemo`) keeps the forward passes and exact gradients
of a case's error-free check and serves them to the same check with planted
errors.  The error-free check itself only records, so its time is that of an
uncached check.  Cases run in ``--jobs`` worker processes.
"""

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The folder of this script, for its helper modules when it is loaded from elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bilstm  # noqa: E402
from machine_info import cpu_model  # noqa: E402
from bilstm import MERGE_MODES, PARAM_NAMES, output_shape, param_shapes  # noqa: E402
import properties.props_gradients  # noqa: E402,F401  (registers the gradient properties)
from properties.adapters.reference import ReferenceImplementation  # noqa: E402
from properties.catalog import REGISTRY, Subject, new_rng  # noqa: E402
from properties.errors import ImplementationError, PropertyFailure  # noqa: E402
from properties.protocol import Grads, Model, Output  # noqa: E402
from properties.strategies import (  # noqa: E402
    WEIGHT_SCALES, Case, Sizes, weight_scale_value,
)

DELTAS = tuple(10.0 ** -k for k in range(2, 10))
"""Relative sizes of the planted errors, largest first."""

KINDS = ("scale", "noise")
"""Kinds of planted error; see the module docstring."""

TARGETS = ("x", *PARAM_NAMES, "h0", "c0")
"""Tensors whose gradient receives the error, in the order cases cycle through them."""

PROPERTY_OF_TARGET = {
    "x": "gradient_input",
    **{name: "gradient_params" for name in PARAM_NAMES},
    "h0": "gradient_initial_state",
    "c0": "gradient_initial_state",
}
"""The gradient property that checks each tensor."""

FALSE_ALARM_PROPERTIES = (
    "gradient_input", "gradient_params", "gradient_initial_state", "gradient_final_state",
)
"""Properties run on every error-free case."""

DTYPES = ("float64", "float32")

GRADCHECK_MODES = {"gradcheck float64": False, "gradcheck fast float64": True}
"""Column name -> ``fast_mode`` argument of ``torch.autograd.gradcheck``."""

COLUMNS = ("ours float64", "ours float32", "gradcheck float64", "gradcheck fast float64")

GROUPS = {"tensor": "target", "weight scale": "weight_scale"}
"""Breakdowns of the detection counts: group name -> field of a case record."""

THRESHOLDS = (1.0, 0.99)
"""Detection rates for which the smallest reliably detected delta is reported."""

MAX_SIZE = 4
"""Largest n_ex, n_in, H and n_t of a case."""

OPTIONAL_SHARES = {"lengths": 1 / 3, "initial_states": 1 / 2, "final_state_grads": 1 / 2}
"""Share of the cases that have each optional input."""

DEFAULTS = {"cases": 1000, "trials": 270, "gradcheck_cases": 135}
"""Default budget: 30 trials per tensor, 15 through gradcheck.

The whole run took 583 s of wall time and 510 s of CPU time with 2 workers
on a 2-core AMD EPYC that other jobs kept at a load average of about 4.
"""

QUICK = {"cases": 18, "trials": 9, "gradcheck_cases": 9}
"""Budget of ``--quick``: one trial per target tensor."""

# Independent random streams of one case, numbered so that changing how one
# is used leaves the others unchanged.
_CASE_STREAM, _PROPERTY_STREAM, _NOISE_STREAM = 0, 1, 2


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

def draw_case(seed, index):
    """Draw case ``index`` of run ``seed`` in float64, with its spare optional arrays.

    Returns
    -------
    case : Case
        Sizes in 1..MAX_SIZE; ``lengths``, ``h0``/``c0`` and ``dh_n``/``dc_n``
        present in the shares :data:`OPTIONAL_SHARES`.
    spare : dict of str to ndarray
        ``h0``, ``c0``, ``dh_n`` and ``dc_n``, each (2, n_ex, H), drawn for
        every case, so that a property that needs them gets the same arrays
        whether or not the case has them.
    """
    rng = np.random.default_rng([seed, index, _CASE_STREAM])
    n_ex, n_in, hidden, n_t = (int(n) for n in rng.integers(1, MAX_SIZE + 1, size=4))
    merge_mode = MERGE_MODES[rng.integers(len(MERGE_MODES))]
    scale_name = WEIGHT_SCALES[rng.integers(len(WEIGHT_SCALES))]
    scale = weight_scale_value(scale_name, hidden)

    params = {name: rng.uniform(-scale, scale, shape)
              for name, shape in param_shapes(n_in, hidden).items()}
    x = rng.uniform(-1.0, 1.0, (n_ex, n_in, n_t))
    dy = rng.uniform(-1.0, 1.0, output_shape(n_ex, hidden, n_t, merge_mode))
    lengths = rng.integers(1, n_t + 1, size=n_ex)
    state_shape = (2, n_ex, hidden)
    spare = {name: rng.uniform(-1.0, 1.0, state_shape) for name in ("h0", "c0", "dh_n", "dc_n")}
    present = {name: rng.random() < share for name, share in OPTIONAL_SHARES.items()}

    case = Case(
        sizes=Sizes(n_ex, n_in, hidden, n_t), merge_mode=merge_mode, dtype="float64",
        params=params, x=x, dy=dy, weight_scale=scale_name,
        lengths=lengths if present["lengths"] else None,
        **_pair(spare, "h0", "c0", present["initial_states"]),
        **_pair(spare, "dh_n", "dc_n", present["final_state_grads"]),
    )
    return case, spare


def _pair(spare, first, second, present):
    if not present:
        return {first: None, second: None}
    return {first: spare[first], second: spare[second]}


def as_dtype(case, spare, dtype):
    """Return the case and spare arrays rounded to ``dtype`` ("float64" or "float32")."""
    def cast(a):
        return None if a is None else a.astype(dtype)

    rounded = dataclasses.replace(
        case, dtype=dtype, params={name: cast(a) for name, a in case.params.items()},
        x=cast(case.x), dy=cast(case.dy), h0=cast(case.h0), c0=cast(case.c0),
        dh_n=cast(case.dh_n), dc_n=cast(case.dc_n),
    )
    return rounded, {name: cast(a) for name, a in spare.items()}


def case_for_property(case, spare, name):
    """Return the case with the optional arrays that property ``name`` always needs."""
    options = REGISTRY[name].case_options
    if options.get("with_initial_states") == "always" and case.h0 is None:
        case = dataclasses.replace(case, **_pair(spare, "h0", "c0", True))
    if options.get("with_final_state_grads") == "always" and case.dh_n is None:
        case = dataclasses.replace(case, **_pair(spare, "dh_n", "dc_n", True))
    return case


def target_of(index):
    """Return the tensor whose gradient receives the error in case ``index``."""
    return TARGETS[index % len(TARGETS)]


def noise_unit(seed, index, shape):
    """Return the random unit vector of the ``noise`` error of case ``index``."""
    values = np.random.default_rng([seed, index, _NOISE_STREAM]).standard_normal(shape)
    return values / np.linalg.norm(values)


# ---------------------------------------------------------------------------
# Planted errors and the memo of exact results
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PlantedError:
    """An error of relative size ``delta`` in the gradient of one tensor.

    Attributes
    ----------
    target : str
        A name of :data:`TARGETS`.
    kind : str
        ``"scale"`` or ``"noise"``.
    delta : float
        Relative size of the error.
    unit : ndarray
        Unit vector of the ``noise`` kind, shaped like the target.
    """

    target: str
    kind: str
    delta: float
    unit: np.ndarray

    def apply(self, gradient):
        """Return ``gradient`` with the error, computed in float64 and rounded to its dtype."""
        exact = np.asarray(gradient, dtype=np.float64)
        if self.kind == "scale":
            wrong = exact * (1.0 + self.delta)
        else:
            wrong = exact + self.delta * np.linalg.norm(exact) * self.unit
        return wrong.astype(np.asarray(gradient).dtype)


def named_gradients(gradients):
    """Return the gradients of a :class:`bilstm.Gradients` keyed by :data:`TARGETS`."""
    return {"x": gradients.dx, **gradients.dparams, "h0": gradients.dh0, "c0": gradients.dc0}


def plant(gradients, error):
    """Return the named gradients with ``error`` planted; ``None`` plants nothing."""
    named = named_gradients(gradients)
    if error is not None:
        named[error.target] = error.apply(named[error.target])
    return named


def _array_key(*arrays):
    return tuple(None if a is None else (a.dtype.str, a.shape, a.tobytes()) for a in arrays)


class ReferenceMemo:
    """Results of ``bilstm.forward`` and ``bilstm.backward``, keyed by the bytes of their inputs.

    While :attr:`replay` is false the memo only records, so a check runs at
    its uncached speed.  Once it is true, a call with inputs seen before
    returns the recorded result, which is what the reference would return
    again because it is a pure function.
    """

    def __init__(self):
        self.replay = False
        self._forward = {}
        self._backward = {}

    def forward(self, x, params, merge_mode, lengths, h0, c0):
        """Return ``(key, bilstm.Forward)``; pass the key to :meth:`backward`."""
        key = _array_key(x, *(params[name] for name in PARAM_NAMES), lengths, h0, c0)
        key += (merge_mode,)
        if not (self.replay and key in self._forward):
            self._forward[key] = bilstm.forward(x, params, merge_mode=merge_mode,
                                                lengths=lengths, h0=h0, c0=c0)
        return key, self._forward[key]

    def backward(self, forward_key, result, dy, dh_n, dc_n):
        """Return the exact :class:`bilstm.Gradients` of ``result`` for these upstream gradients."""
        key = (forward_key, *_array_key(dy, dh_n, dc_n))
        if not (self.replay and key in self._backward):
            self._backward[key] = bilstm.backward(result, dy, dh_n=dh_n, dc_n=dc_n)
        return self._backward[key]


# ---------------------------------------------------------------------------
# Our check: the harness's gradient properties on a planted reference
# ---------------------------------------------------------------------------

class PlantedModel(Model):
    """The reference model, whose backward plants an error into one gradient."""

    def __init__(self, params, merge_mode, memo, error):
        self.params = params
        self.merge_mode = merge_mode
        self.memo = memo
        self.error = error
        self._key = self._last = None

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        self._key, self._last = self.memo.forward(x, self.params, self.merge_mode,
                                                  lengths, h0, c0)
        return Output(self._last.y, self._last.h_n, self._last.c_n)

    def backward(self, dy, *, dh_n=None, dc_n=None):
        exact = self.memo.backward(self._key, self._last, dy, dh_n, dc_n)
        named = plant(exact, self.error)
        return Grads(named["x"], {name: named[name] for name in PARAM_NAMES},
                     named["h0"], named["c0"])


class PlantedReference(ReferenceImplementation):
    """The reference adapter with an optional planted error and a shared memo."""

    name = "reference-planted"

    def __init__(self, memo, error=None):
        self.memo = memo
        self.error = error

    def build(self, params, *, merge_mode):
        return PlantedModel(params, merge_mode, self.memo, self.error)


def check_property(name, case, implementation, rng_seed):
    """Run one registered property as during the Hypothesis search.

    Returns
    -------
    passed : bool
    seconds : float
        Wall time of the property.
    message : str
        The failure message, empty when it passed.
    """
    subject = Subject(implementation)
    # The runner clears `detailed` while Hypothesis searches, which skips the
    # entry-by-entry search for the worst index but keeps the verdict.
    subject.detailed = False
    start = time.perf_counter()
    try:
        REGISTRY[name].check(subject, case, new_rng(rng_seed))
    except (PropertyFailure, ImplementationError) as exc:
        return False, time.perf_counter() - start, str(exc)
    return True, time.perf_counter() - start, ""


# ---------------------------------------------------------------------------
# torch.autograd.gradcheck on the same computation
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TorchRun:
    """Arguments of :class:`ReferenceFunction` other than its tensor inputs."""

    memo: ReferenceMemo
    merge_mode: str | None
    lengths: np.ndarray | None
    error: PlantedError | None


class ReferenceFunction(torch.autograd.Function):
    """``bilstm.forward`` and the error-planting backward as a torch function, in float64.

    Inputs: a :class:`TorchRun`, then x, the six parameters in
    :data:`bilstm.PARAM_NAMES` order, h0 and c0.  Outputs: y, h_n, c_n.
    """

    @staticmethod
    def forward(ctx, run, *tensors):
        # gradcheck perturbs its inputs in place after the call, so copy them.
        x, *rest = (t.detach().numpy().copy() for t in tensors)
        params = dict(zip(PARAM_NAMES, rest[:len(PARAM_NAMES)]))
        h0, c0 = rest[len(PARAM_NAMES):]
        ctx.run = run
        ctx.key, ctx.result = run.memo.forward(x, params, run.merge_mode, run.lengths, h0, c0)
        return tuple(torch.from_numpy(np.array(a)) for a in
                     (ctx.result.y, ctx.result.h_n, ctx.result.c_n))

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        upstream = (g.detach().numpy() for g in (dy, dh_n, dc_n))
        exact = ctx.run.memo.backward(ctx.key, ctx.result, *upstream)
        named = plant(exact, ctx.run.error)
        return (None, *(torch.from_numpy(np.array(named[name])) for name in TARGETS))


def torch_inputs(case):
    """Return x, the parameters, h0 and c0 as float64 tensors that require grad.

    Absent initial states become zeros, which the reference treats as equal to None.
    """
    state_shape = (2, case.sizes.n_ex, case.sizes.hidden)
    h0 = np.zeros(state_shape) if case.h0 is None else case.h0
    c0 = np.zeros(state_shape) if case.c0 is None else case.c0
    arrays = (case.x, *(case.params[name] for name in PARAM_NAMES), h0, c0)
    return [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]


def run_gradcheck(case, memo, error, fast_mode):
    """Run ``torch.autograd.gradcheck`` with its default tolerances; return (passed, seconds)."""
    run = TorchRun(memo, case.merge_mode, case.lengths, error)
    inputs = torch_inputs(case)

    def function(*tensors):
        return ReferenceFunction.apply(run, *tensors)

    start = time.perf_counter()
    passed = torch.autograd.gradcheck(function, inputs, raise_exception=False,
                                      fast_mode=fast_mode)
    return bool(passed), time.perf_counter() - start


# ---------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Budget:
    """How many cases get each measurement; cases are numbered from 0."""

    seed: int
    cases: int
    trials: int
    gradcheck_cases: int
    dtypes: tuple


def _planted_errors(seed, index, target, shape):
    """Return ``{kind: [PlantedError per delta]}`` of case ``index``."""
    unit = noise_unit(seed, index, shape)
    return {kind: [PlantedError(target, kind, delta, unit) for delta in DELTAS] for kind in KINDS}


def _target_gradient(case, target):
    """Return the exact gradient of ``target`` for the case's upstream gradients."""
    result = bilstm.forward(case.x, case.params, merge_mode=case.merge_mode,
                            lengths=case.lengths, h0=case.h0, c0=case.c0)
    gradients = bilstm.backward(result, case.dy, dh_n=case.dh_n, dc_n=case.dc_n)
    return named_gradients(gradients)[target]


def measure_ours(case, spare, index, budget):
    """Run the false-alarm check and, for the first ``trials`` cases, the planted trials.

    Returns
    -------
    dict
        The ``case`` summary in the checked dtype, ``failed`` and ``seconds``
        per property of the error-free case, the failure ``messages``, and
        for a trial case ``detected`` (kind -> list
        of bool per delta), ``unchanged`` (kind -> list of bool per delta:
        the planted gradient equals the exact one bit for bit) and
        ``skipped`` (the target's exact gradient is 0).
    """
    memo = ReferenceMemo()
    rng_seed = int(np.random.default_rng([budget.seed, index, _PROPERTY_STREAM]).integers(2**32))
    record = {"case": case.summary(), "failed": {}, "seconds": {}, "messages": {}}
    for name in FALSE_ALARM_PROPERTIES:
        passed, seconds, message = check_property(
            name, case_for_property(case, spare, name), PlantedReference(memo), rng_seed)
        record["failed"][name] = not passed
        record["seconds"][name] = seconds
        if message:
            record["messages"][name] = message

    if index >= budget.trials:
        return record

    memo.replay = True
    target = target_of(index)
    name = PROPERTY_OF_TARGET[target]
    trial_case = case_for_property(case, spare, name)
    exact = _target_gradient(trial_case, target)
    record["skipped"] = not np.any(exact)
    if record["skipped"]:
        return record

    errors = _planted_errors(budget.seed, index, target, exact.shape)
    record["detected"] = {kind: [] for kind in KINDS}
    record["unchanged"] = {kind: [] for kind in KINDS}
    for kind in KINDS:
        for error in errors[kind]:
            passed, _, _ = check_property(name, trial_case, PlantedReference(memo, error), rng_seed)
            record["detected"][kind].append(not passed)
            record["unchanged"][kind].append(bool(np.array_equal(error.apply(exact), exact)))
    return record


def measure_gradcheck(case, index, budget, fast_mode):
    """Run gradcheck on the error-free case and, for trial cases, with every planted error.

    Returns
    -------
    dict
        The keys of :func:`measure_ours`, with the single check named
        ``"gradcheck"`` in ``failed`` and ``seconds``, and no ``unchanged``.
    """
    memo = ReferenceMemo()
    passed, seconds = run_gradcheck(case, memo, None, fast_mode)
    record = {"case": case.summary(), "failed": {"gradcheck": not passed},
              "seconds": {"gradcheck": seconds}, "messages": {}}
    if index >= budget.trials:
        return record

    memo.replay = True
    target = target_of(index)
    exact = _target_gradient(case, target)
    record["skipped"] = not np.any(exact)
    if record["skipped"]:
        return record

    errors = _planted_errors(budget.seed, index, target, exact.shape)
    record["detected"] = {
        kind: [not run_gradcheck(case, memo, error, fast_mode)[0] for error in errors[kind]]
        for kind in KINDS
    }
    return record


def measure_case(index, budget):
    """Return every measurement of case ``index`` as a JSON-ready dict."""
    case, spare = draw_case(budget.seed, index)
    record = {"index": index, "case": case.summary(), "target": target_of(index),
              "weight_scale": case.weight_scale, "columns": {}}
    for dtype in budget.dtypes:
        rounded, rounded_spare = as_dtype(case, spare, dtype)
        record["columns"][f"ours {dtype}"] = measure_ours(rounded, rounded_spare, index, budget)

    if index < budget.gradcheck_cases:
        # gradcheck moves h0 and c0 too, so it checks the case with its spare states.
        states = case_for_property(case, spare, "gradient_initial_state")
        for column, fast_mode in GRADCHECK_MODES.items():
            record["columns"][column] = measure_gradcheck(states, index, budget, fast_mode)
    return record


def _init_worker():
    # One thread per worker: the workers already occupy every core.
    torch.set_num_threads(1)


def measure_all(budget, jobs):
    """Measure every case in ``jobs`` worker processes; return the records in case order."""
    indices = range(budget.cases)
    if jobs == 1:
        return [_report_progress(measure_case(index, budget), budget) for index in indices]

    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker) as pool:
        results = pool.map(measure_case, indices, [budget] * budget.cases, chunksize=4)
        return [_report_progress(record, budget) for record in results]


def _report_progress(record, budget):
    step = max(budget.cases // 10, 1)
    done = record["index"] + 1
    if done % step == 0:
        print(f"  {done}/{budget.cases} cases", file=sys.stderr, flush=True)
    return record


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------

def summarize(records):
    """Count detections, false alarms and times per column.

    Returns
    -------
    dict
        Per column: ``detected`` and ``trials`` (kind -> list per delta),
        ``unchanged`` (kind -> list per delta), ``by_group`` (group name ->
        kind -> group value -> [detected, trials] per delta, for the groups of
        :data:`GROUPS`), ``skipped``, ``cases``,
        ``false_alarms`` (list of case index, case summary and messages) and
        ``seconds`` (list of seconds per error-free case).
    """
    summary = {}
    for record in records:
        for column, result in record["columns"].items():
            entry = summary.setdefault(column, _empty_column())
            _add_result(entry, record, result)
    return summary


def _empty_column():
    return {
        "detected": {kind: [0] * len(DELTAS) for kind in KINDS},
        "trials": {kind: [0] * len(DELTAS) for kind in KINDS},
        "unchanged": {kind: [0] * len(DELTAS) for kind in KINDS},
        "by_group": {group: {kind: defaultdict(lambda: [[0, 0] for _ in DELTAS]) for kind in KINDS}
                     for group in GROUPS},
        "skipped": 0, "cases": 0, "false_alarms": [], "seconds": [],
    }


def _add_result(entry, record, result):
    entry["cases"] += 1
    entry["seconds"].append(sum(result["seconds"].values()))
    if any(result["failed"].values()):
        entry["false_alarms"].append({"index": record["index"], "case": result["case"],
                                      "failed": result["failed"], "messages": result["messages"]})

    entry["skipped"] += int(result.get("skipped", False))
    for kind, detected in result.get("detected", {}).items():
        for k, hit in enumerate(detected):
            entry["detected"][kind][k] += int(hit)
            entry["trials"][kind][k] += 1
            for group, field_name in GROUPS.items():
                counts = entry["by_group"][group][kind][record[field_name]][k]
                counts[0] += int(hit)
                counts[1] += 1
        for k, same in enumerate(result.get("unchanged", {}).get(kind, ())):
            entry["unchanged"][kind][k] += int(same)


def smallest_detected(detected, trials, threshold):
    """Return the smallest delta that it and every larger delta reach ``threshold``, or None."""
    smallest = None
    for delta, hits, count in zip(DELTAS, detected, trials):
        if count == 0 or hits / count < threshold:
            break
        smallest = delta
    return smallest


def _rate_cell(hits, count):
    return "-" if count == 0 else f"{100 * hits / count:.1f}% ({hits}/{count})"


def _delta_cell(delta):
    return "none" if delta is None else f"{delta:.0e}"


def format_detection(summary, kind):
    """Return the Markdown table of detection rates of one kind of planted error."""
    columns = [c for c in COLUMNS if c in summary]
    lines = ["| delta | " + " | ".join(columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for k, delta in enumerate(DELTAS):
        cells = [_rate_cell(summary[c]["detected"][kind][k], summary[c]["trials"][kind][k])
                 for c in columns]
        lines.append(f"| {delta:.0e} | " + " | ".join(cells) + " |")

    for threshold in THRESHOLDS:
        cells = [_delta_cell(smallest_detected(summary[c]["detected"][kind],
                                               summary[c]["trials"][kind], threshold))
                 for c in columns]
        label = "every trial" if threshold == 1.0 else f">= {100 * threshold:g}% of trials"
        lines.append(f"| smallest delta detected in {label} | " + " | ".join(cells) + " |")
    return lines


def format_by_group(summary, kind, group):
    """Return the Markdown table of the smallest delta detected in every trial, per group value.

    A value whose largest delta was missed shows how many of its trials
    detected delta = 1e-2.
    """
    columns = [c for c in COLUMNS if c in summary]
    values = TARGETS if group == "tensor" else WEIGHT_SCALES
    lines = [f"| {group} | " + " | ".join(columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for value in values:
        cells = [_group_cell(summary[column]["by_group"][group][kind].get(value))
                 for column in columns]
        label = f"d{value}" if group == "tensor" else value
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _group_cell(counts):
    if counts is None:
        return "-"
    detected, trials = zip(*counts)
    smallest = smallest_detected(detected, trials, 1.0)
    if smallest is None:
        return f"none ({detected[0]}/{trials[0]} at {DELTAS[0]:.0e})"
    return f"{smallest:.0e} ({trials[0]} trials)"


def format_false_alarms(summary):
    """Return the Markdown table of false alarms and median check times."""
    lines = ["| column | error-free cases | cases with a false alarm | median s per case |",
             "| --- | ---: | ---: | ---: |"]
    for column in (c for c in COLUMNS if c in summary):
        entry = summary[column]
        lines.append(f"| {column} | {entry['cases']} | {len(entry['false_alarms'])} "
                     f"| {statistics.median(entry['seconds']):.3f} |")
    lines.append("")
    lines.append(f"Seconds per case: ours runs {len(FALSE_ALARM_PROPERTIES)} properties, "
                 f"gradcheck makes one call on all tensors.")
    return lines


def format_notes(summary):
    """Return lines on skipped trials and on planted errors that rounding removed."""
    lines = []
    for column in (c for c in COLUMNS if c in summary):
        entry = summary[column]
        if entry["skipped"]:
            lines.append(f"{column}: {entry['skipped']} trials skipped, the target's exact "
                         f"gradient was 0")
        for kind in KINDS:
            counts = zip(DELTAS, entry["unchanged"][kind], entry["trials"][kind])
            for delta, count, trials in counts:
                if count:
                    lines.append(f"{column}, {kind}, delta {delta:.0e}: the planted gradient "
                                 f"equalled the exact one in {count} of {trials} trials")
    return lines


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def machine_lines(jobs):
    """Describe the machine, the library versions and the run, one line each."""
    return [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"usable by this process: {len(os.sched_getaffinity(0))}",
        f"load average before the run (1, 5, 15 min): "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"torch {torch.__version__}, bilstm {bilstm.__version__}",
        f"worker processes: {jobs}",
    ]


def parse_args(argv=None):
    """Parse the command line; ``--quick`` replaces the default budget by a tiny one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=None,
                        help=f"error-free cases per dtype for the false-alarm count "
                             f"(default {DEFAULTS['cases']})")
    parser.add_argument("--trials", type=int, default=None,
                        help=f"cases, the first ones, that also get every planted error; "
                             f"each tensor gets 1/{len(TARGETS)} of them "
                             f"(default {DEFAULTS['trials']})")
    parser.add_argument("--gradcheck-cases", type=int, default=None,
                        help=f"cases, the first ones, checked by torch.autograd.gradcheck "
                             f"in both modes; those among the first --trials also get "
                             f"every planted error (default {DEFAULTS['gradcheck_cases']})")
    parser.add_argument("--dtypes", default=",".join(DTYPES),
                        help="comma-separated dtypes of our check (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cases (default 0)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: the number of CPUs, here %(default)s)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the counts, false alarms and times as JSON to PATH")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny budget for a smoke run: {QUICK['cases']} cases, "
                             f"{QUICK['trials']} trials, "
                             f"{QUICK['gradcheck_cases']} gradcheck cases, "
                             f"unless given explicitly")
    args = parser.parse_args(argv)
    _resolve_budget(parser, args)
    return args


def _resolve_budget(parser, args):
    base = QUICK if args.quick else DEFAULTS
    for name, value in base.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is negative; "
                         f"pass a count >= 0")

    if args.cases < 1 or args.jobs < 1:
        parser.error(f"--cases {args.cases} and --jobs {args.jobs} must both be at least 1")
    if max(args.trials, args.gradcheck_cases) > args.cases:
        parser.error(f"--trials {args.trials} and --gradcheck-cases {args.gradcheck_cases} "
                     f"must not exceed --cases {args.cases}, because they reuse the first "
                     f"cases; raise --cases or lower them")
    if args.seed < 0:
        parser.error(f"--seed {args.seed} is negative; pass a seed >= 0")

    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    if not dtypes or any(d not in DTYPES for d in dtypes):
        parser.error(f"--dtypes {args.dtypes!r} is invalid; pass a comma-separated list of "
                     f"{', '.join(DTYPES)}")
    args.dtypes = dtypes


def main(argv=None):
    args = parse_args(argv)
    header = machine_lines(args.jobs)
    budget = Budget(args.seed, args.cases, args.trials, args.gradcheck_cases, args.dtypes)
    command = "python3 benchmarks/bench_sensitivity.py " + " ".join(argv if argv is not None
                                                                     else sys.argv[1:])
    for line in header:
        print(line)
    print(f"command: {command.strip()}")
    print(f"budget: {budget.cases} cases per dtype ({', '.join(budget.dtypes)}), "
          f"{budget.trials} with planted errors, {budget.gradcheck_cases} through gradcheck, "
          f"seed {budget.seed}\n", flush=True)

    start = time.perf_counter()
    records = measure_all(budget, args.jobs)
    whole_run_s = time.perf_counter() - start
    summary = summarize(records)

    for kind, description in (("scale", "g * (1 + delta)"),
                              ("noise", "g + delta * ||g|| * u")):
        print(f"Detection rate, planted error {kind}: {description}\n")
        print("\n".join(format_detection(summary, kind)) + "\n")
    for group in GROUPS:
        print(f"Smallest delta detected in every trial, per {group}, planted error scale\n")
        print("\n".join(format_by_group(summary, "scale", group)) + "\n")
    print("False alarms (error-free cases)\n")
    print("\n".join(format_false_alarms(summary)) + "\n")
    for line in format_notes(summary):
        print(line)
    print(f"total time: {whole_run_s:.1f} s", flush=True)

    if args.json:
        document = {"machine": header, "command": command.strip(),
                    "budget": dataclasses.asdict(budget), "deltas": list(DELTAS),
                    "whole_run_s": whole_run_s, "summary": summary}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
