"""Tests of properties.strategies: shrink targets, guarantees, validation, case files."""

import functools
import io
import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

import bilstm
from properties.errors import CaseFileError, HarnessError
from properties.strategies import (
    MAX_SIZE, Case, InvalidStrategyArgument, Sizes, cases, dtypes, initial_states,
    inputs, lengths, merge_modes, params, sizes, upstream_gradients, weight_scale_value,
    weight_scales,
)

NO_DATABASE = settings(database=None, max_examples=2000)
ALL_OPTIONS = dict(
    with_lengths="sometimes", allow_zero_length=True, with_initial_states="sometimes",
    with_final_state_grads="sometimes", merge_modes=["concat", "sum", "ave", "mul", None],
)
SIZES = Sizes(n_ex=3, n_in=2, hidden=2, n_t=4)


def minimal(strategy, condition=lambda _: True):
    return find(strategy, condition, settings=NO_DATABASE)


def run_case(case):
    """Run the reference forward and backward on every array of ``case``."""
    result = bilstm.forward(
        case.x, case.params, merge_mode=case.merge_mode, lengths=case.lengths,
        h0=case.h0, c0=case.c0,
    )
    grads = bilstm.backward(result, case.dy, dh_n=case.dh_n, dc_n=case.dc_n)
    return result, grads


def fields_of(case):
    """Return every array field of ``case`` by attribute, independent of to_arrays."""
    arrays = {f"params.{name}": value for name, value in case.params.items()}
    for name in ("x", "dy", "lengths", "h0", "c0", "dh_n", "dc_n"):
        if getattr(case, name) is not None:
            arrays[name] = getattr(case, name)
    return arrays


def assert_same_arrays(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        assert actual[key].shape == expected[key].shape, key
        assert np.array_equal(actual[key], expected[key]), key


# Shrink targets.

def test_sizes_shrink_to_ones():
    assert minimal(sizes()) == Sizes(n_ex=1, n_in=1, hidden=1, n_t=1)


def test_sizes_shrink_to_minimums():
    found = minimal(sizes(min_n_ex=2, min_n_in=0, min_hidden=3, min_n_t=0))
    assert found == Sizes(n_ex=2, n_in=0, hidden=3, n_t=0)


def test_sizes_reach_max_size():
    found = minimal(sizes(), lambda s: s.n_t == MAX_SIZE)
    assert found == Sizes(n_ex=1, n_in=1, hidden=1, n_t=MAX_SIZE)


@settings(max_examples=100, database=None)
@given(sizes(min_n_ex=2, max_n_ex=3, min_hidden=8, max_n_t=2))
def test_sizes_within_bounds(drawn):
    assert 2 <= drawn.n_ex <= 3
    assert 1 <= drawn.n_in <= MAX_SIZE
    assert drawn.hidden == 8
    assert 1 <= drawn.n_t <= 2


def test_merge_modes_shrink_to_concat():
    assert minimal(merge_modes()) == "concat"


def test_merge_modes_draw_every_mode():
    for mode in bilstm.MERGE_MODES:
        assert minimal(merge_modes(), lambda m, mode=mode: m == mode) == mode


def test_merge_modes_keep_aliases():
    assert minimal(merge_modes(modes=["ave", "mul"])) == "ave"


def test_dtypes_shrink_to_float64():
    assert minimal(dtypes()) == np.float64


def test_dtypes_draw_float32():
    assert minimal(dtypes(), lambda d: d != np.float64) == np.float32


def test_weight_scales_shrink_to_typical():
    assert minimal(weight_scales()) == "typical"


def test_weight_scale_values():
    assert weight_scale_value("typical", 4) == 0.5
    assert weight_scale_value("small", 4) == 1e-3
    assert weight_scale_value("saturating", 4) == 5.0


def test_lengths_shrink_to_full():
    found = minimal(lengths(SIZES))
    assert found.dtype == np.int64
    assert found.tolist() == [4, 4, 4]


def test_lengths_with_zero_shrink_to_full():
    assert minimal(lengths(SIZES, allow_zero=True)).tolist() == [4, 4, 4]


def test_initial_states_shrink_to_none():
    assert minimal(initial_states(SIZES)) is None


def test_initial_states_without_none():
    h0, c0 = minimal(initial_states(SIZES, dtype=np.float32, allow_none=False))
    assert h0.shape == (2, 3, 2)
    assert c0.shape == (2, 3, 2)
    assert h0.dtype == np.float32
    assert c0.dtype == np.float32


def test_cases_shrink_to_minimal_case():
    case = minimal(cases(**ALL_OPTIONS))
    assert case.sizes == Sizes(n_ex=1, n_in=1, hidden=1, n_t=1)
    assert case.merge_mode == "concat"
    assert case.dtype == "float64"
    assert case.weight_scale == "typical"
    assert case.lengths is None
    assert case.h0 is None
    assert case.c0 is None
    assert case.dh_n is None
    assert case.dc_n is None


def test_cases_shrink_to_min_hidden():
    assert minimal(cases(min_hidden=2)).sizes.hidden == 2


def test_case_summary():
    case = minimal(cases(min_hidden=2, with_lengths="always"))
    expected = (
        "n_ex=1 n_in=1 H=2 n_t=1 merge=concat float64 scale=typical lengths=[1] "
        "h0=zeros c0=zeros dh_n=zeros dc_n=zeros"
    )
    assert case.summary() == expected


# Guarantees of every drawn case.

@settings(max_examples=60, database=None, deadline=None)
@given(cases(**ALL_OPTIONS, min_n_ex=0, min_n_in=0, min_n_t=0))
def test_cases_run_in_reference(case):
    result, grads = run_case(case)
    assert result.y.shape == case.dy.shape
    assert result.y.dtype == np.dtype(case.dtype)
    assert grads.dx.shape == case.x.shape


@settings(max_examples=100, database=None)
@given(cases(**ALL_OPTIONS))
def test_cases_arrays_match_sizes(case):
    n_ex, n_in, hidden, n_t = (case.sizes.n_ex, case.sizes.n_in, case.sizes.hidden, case.sizes.n_t)
    shapes = bilstm.param_shapes(n_in, hidden)
    assert case.x.shape == (n_ex, n_in, n_t)
    assert case.dy.shape == bilstm.output_shape(n_ex, hidden, n_t, case.merge_mode)
    for name in bilstm.PARAM_NAMES:
        assert case.params[name].shape == shapes[name], name
        assert case.params[name].dtype == np.dtype(case.dtype), name
    for name in ("x", "dy", "h0", "c0", "dh_n", "dc_n"):
        value = getattr(case, name)
        assert value is None or value.dtype == np.dtype(case.dtype), name
    assert (case.h0 is None) == (case.c0 is None)
    assert (case.dh_n is None) == (case.dc_n is None)


@settings(max_examples=100, database=None)
@given(cases(dtypes=["float32"], weight_scales=["small", "typical", "saturating"]))
def test_cases_bias_never_zero(case):
    assert np.all(case.params["b_fwd"] != 0)
    assert np.all(case.params["b_bwd"] != 0)


@settings(max_examples=100, database=None)
@given(cases(dtypes=["float32", "float64"]))
def test_cases_directions_differ(case):
    for stem in ("W_ih", "W_hh", "b"):
        assert not np.array_equal(case.params[f"{stem}_fwd"], case.params[f"{stem}_bwd"]), stem


@settings(max_examples=100, database=None)
@given(cases(dtypes=["float32", "float64"], weight_scales=["small", "saturating"]))
def test_cases_params_within_scale(case):
    scale = weight_scale_value(case.weight_scale, case.sizes.hidden)
    for name in bilstm.PARAM_NAMES:
        assert np.all(np.abs(case.params[name]) <= np.float32(scale)), name


@settings(max_examples=100, database=None)
@given(cases(**ALL_OPTIONS))
def test_cases_dy_not_ones_or_constant(case):
    for name in ("dy", "dh_n", "dc_n"):
        value = getattr(case, name)
        if value is None:
            continue
        assert not np.all(value == 1), name
        assert np.unique(value).size == value.size, name


@settings(max_examples=50, database=None)
@given(st.data(), sizes(min_n_ex=0, min_n_in=0, min_n_t=0), dtypes())
def test_params_strategy_guarantees(data, drawn_sizes, dtype):
    drawn = data.draw(params(drawn_sizes, dtype=dtype))
    values = np.concatenate([drawn[name].ravel() for name in bilstm.PARAM_NAMES])
    assert np.all(values != 0)
    assert np.unique(values).size == values.size
    assert not np.array_equal(drawn["W_hh_fwd"], drawn["W_hh_bwd"])
    assert not np.array_equal(drawn["b_fwd"], drawn["b_bwd"])


def test_params_same_directions():
    drawn = minimal(params(SIZES, distinct_directions=False))
    for stem in ("W_ih", "W_hh", "b"):
        assert np.array_equal(drawn[f"{stem}_fwd"], drawn[f"{stem}_bwd"]), stem
        assert drawn[f"{stem}_fwd"] is not drawn[f"{stem}_bwd"], stem


def test_params_reproducible():
    first = minimal(params(SIZES, scale="typical"))
    second = minimal(params(SIZES, scale="typical"))
    for name in bilstm.PARAM_NAMES:
        assert np.array_equal(first[name], second[name]), name


def test_params_numeric_scale():
    drawn = minimal(params(SIZES, scale=0.25, dtype=np.float32))
    for name in bilstm.PARAM_NAMES:
        assert drawn[name].dtype == np.float32, name
        assert np.all(np.abs(drawn[name]) < 0.25), name


def test_inputs_shape_and_scale():
    x = minimal(inputs(SIZES, dtype=np.float32, scale=3.0))
    assert x.shape == (3, 2, 4)
    assert x.dtype == np.float32
    assert np.all(np.abs(x) < 3.0)
    assert np.unique(x).size == x.size


@pytest.mark.parametrize("shape", [(1,), (2,), (1, 1, 1), (2, 3, 2, 5), (6, 12, 6)])
@settings(max_examples=50, database=None)
@given(data=st.data())
def test_upstream_gradients_not_constant(shape, data):
    dy = data.draw(upstream_gradients(shape, dtype=data.draw(dtypes())))
    assert dy.shape == shape
    assert not np.all(dy == 1)
    assert np.unique(dy).size == dy.size


def test_upstream_gradients_single_entry():
    dy = minimal(upstream_gradients((1, 1, 1), dtype=np.float32))
    assert dy.shape == (1, 1, 1)
    assert dy.item() != 1
    assert dy.item() != 0


def test_upstream_gradients_empty():
    assert minimal(upstream_gradients((0, 4, 2))).shape == (0, 4, 2)


# Lengths reach every pattern.

def test_lengths_reach_all_ones():
    found = minimal(lengths(SIZES), lambda n: np.all(n == 1))
    assert found.tolist() == [1, 1, 1]


def test_lengths_reach_mixed():
    found = minimal(lengths(SIZES), lambda n: n.min() < n.max())
    assert found.min() < found.max()


def test_lengths_reach_zero():
    found = minimal(lengths(SIZES, allow_zero=True), lambda n: np.any(n == 0))
    assert found.tolist() == [4, 4, 0]


def test_cases_reach_zero_length():
    found = minimal(
        cases(with_lengths="always", allow_zero_length=True), lambda c: np.any(c.lengths == 0)
    )
    assert found.lengths.tolist() == [0]


@settings(max_examples=100, database=None)
@given(lengths(SIZES))
def test_lengths_never_zero(drawn):
    assert drawn.shape == (3,)
    assert np.all(drawn >= 1)
    assert np.all(drawn <= 4)


def test_lengths_empty_batch():
    found = minimal(lengths(Sizes(n_ex=0, n_in=1, hidden=1, n_t=0)))
    assert found.shape == (0,)
    assert found.dtype == np.int64


# Validation when the strategy is created.

BAD_ARGUMENTS = [
    ("sizes(min_n_t=5, max_n_t=3)", lambda: sizes(min_n_t=5, max_n_t=3),
     r"min_n_t=5 > max_n_t=3"),
    ("sizes(min_hidden=0)", lambda: sizes(min_hidden=0), r"min_hidden=0 is below the minimum 1"),
    ("sizes(min_n_ex=-1)", lambda: sizes(min_n_ex=-1), r"min_n_ex=-1 is below the minimum 0"),
    ("sizes(max_n_in=2.5)", lambda: sizes(max_n_in=2.5), r"max_n_in=2\.5 is not an integer"),
    ("sizes(min_n_t=True)", lambda: sizes(min_n_t=True), r"min_n_t=True is not an integer"),
    ("merge_modes(modes=[])", lambda: merge_modes(modes=[]), r"modes=\[\] is empty"),
    ("merge_modes(modes='concat')", lambda: merge_modes(modes="concat"),
     r"modes='concat' is not a list or tuple"),
    ("merge_modes(modes={'sum'})", lambda: merge_modes(modes={"sum"}),
     r"modes=\{'sum'\} is not a list or tuple"),
    ("merge_modes(modes=['concatenate'])", lambda: merge_modes(modes=["concatenate"]),
     r"modes contains an invalid entry: merge_mode='concatenate'"),
    ("dtypes(dtypes=['float16'])", lambda: dtypes(dtypes=["float16"]),
     r"dtypes entry='float16' is not a supported dtype"),
    ("dtypes(dtypes=[None])", lambda: dtypes(dtypes=[None]),
     r"dtypes entry=None is not a supported dtype"),
    ("dtypes(dtypes='float64')", lambda: dtypes(dtypes="float64"),
     r"dtypes='float64' is not a list or tuple"),
    ("weight_scales(scales=['huge'])", lambda: weight_scales(scales=["huge"]),
     r"scales entry='huge' is not a weight scale name"),
    ("params((1, 1, 1, 1))", lambda: params((1, 1, 1, 1)), r"sizes=\(1, 1, 1, 1\) is not a Sizes"),
    ("params(Sizes(hidden=0))", lambda: params(Sizes(1, 1, 0, 1)),
     r"sizes.hidden=0 is below the minimum 1"),
    ("params(scale=-1.0)", lambda: params(SIZES, scale=-1.0), r"scale=-1\.0 is not a finite number > 0"),
    ("params(scale='huge')", lambda: params(SIZES, scale="huge"),
     r"scale='huge' is not a weight scale name"),
    ("params(dtype=int32)", lambda: params(SIZES, dtype=np.int32), r"dtype=.*int32.* is not a supported"),
    ("params(distinct_directions=1)", lambda: params(SIZES, distinct_directions=1),
     r"distinct_directions=1 is not a bool"),
    ("params(hidden=1000)", lambda: params(Sizes(1, 1000, 1000, 1)),
     r"params would have 16008000 elements, above the limit"),
    ("inputs(scale=0)", lambda: inputs(SIZES, scale=0), r"scale=0 is not a finite number > 0"),
    ("inputs(scale=nan)", lambda: inputs(SIZES, scale=float("nan")),
     r"scale=nan is not a finite number > 0"),
    ("upstream_gradients(shape=(2, -1))", lambda: upstream_gradients((2, -1)),
     r"shape\[1\]=-1 is below the minimum 0"),
    ("upstream_gradients(shape='abc')", lambda: upstream_gradients("abc"),
     r"shape='abc' is not a tuple of integers"),
    ("upstream_gradients(shape=(4096, 4096))", lambda: upstream_gradients((4096, 4096)),
     r"an array of shape=\(4096, 4096\) would have 16777216 elements"),
    ("initial_states(dtype='complex128')", lambda: initial_states(SIZES, dtype="complex128"),
     r"dtype='complex128' is not a supported dtype"),
    ("lengths(n_t=0)", lambda: lengths(Sizes(2, 1, 1, 0)),
     r"sizes.n_t=0 with allow_zero=False leaves no valid length"),
    ("lengths(allow_zero='yes')", lambda: lengths(SIZES, allow_zero="yes"),
     r"allow_zero='yes' is not a bool"),
    ("cases(with_lengths='often')", lambda: cases(with_lengths="often"),
     r"with_lengths='often' is not a valid choice"),
    ("cases(with_final_state_grads=True)", lambda: cases(with_final_state_grads=True),
     r"with_final_state_grads=True is not a valid choice"),
    ("cases(min_hidden=0)", lambda: cases(min_hidden=0), r"min_hidden=0 is below the minimum 1"),
    ("cases(min_n_t=0)", lambda: cases(min_n_t=0),
     r"min_n_t=0 with with_lengths='sometimes' and allow_zero_length=False"),
    ("cases(input_scale=-1)", lambda: cases(input_scale=-1), r"input_scale=-1 is not a finite"),
    ("cases(dtypes=['float16'])", lambda: cases(dtypes=["float16"]),
     r"dtypes entry='float16'"),
    ("cases(max_hidden=1000)", lambda: cases(max_hidden=1000),
     r"params at the max_ sizes would have"),
]


@pytest.mark.parametrize(
    "make, pattern", [row[1:] for row in BAD_ARGUMENTS], ids=[row[0] for row in BAD_ARGUMENTS]
)
def test_bad_argument_raises(make, pattern):
    with pytest.raises(InvalidStrategyArgument, match=pattern):
        make()


def test_invalid_argument_family():
    assert issubclass(InvalidStrategyArgument, ValueError)
    assert issubclass(InvalidStrategyArgument, HarnessError)


def test_cases_allow_n_t_zero_without_lengths():
    case = minimal(cases(min_n_t=0, with_lengths="never"))
    assert case.sizes.n_t == 0


# Case files round trip exactly.

@settings(max_examples=100, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(**ALL_OPTIONS, dtypes=["float32", "float64"]))
def test_case_arrays_round_trip(case):
    arrays, metadata = case.to_arrays()
    rebuilt = Case.from_arrays(arrays, metadata)
    rebuilt_arrays, rebuilt_metadata = rebuilt.to_arrays()
    assert rebuilt_metadata == metadata
    assert_same_arrays(rebuilt_arrays, arrays)
    assert_same_arrays(fields_of(rebuilt), fields_of(case))
    assert rebuilt.sizes == case.sizes
    assert rebuilt.merge_mode == case.merge_mode
    assert rebuilt.dtype == case.dtype
    assert rebuilt.weight_scale == case.weight_scale
    assert rebuilt.summary() == case.summary()


@settings(max_examples=30, database=None)
@given(cases(**ALL_OPTIONS, dtypes=["float32", "float64"]))
def test_case_file_round_trip(case):
    arrays, metadata = case.to_arrays()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer) as loaded:
        rebuilt = Case.from_arrays(loaded, json.loads(json.dumps(metadata)))
    rebuilt_arrays, rebuilt_metadata = rebuilt.to_arrays()
    assert rebuilt_metadata == metadata
    assert_same_arrays(rebuilt_arrays, arrays)
    assert_same_arrays(fields_of(rebuilt), fields_of(case))
    assert rebuilt.merge_mode == case.merge_mode


@functools.cache
def _minimal_case():
    return minimal(cases(with_lengths="always"))


def _minimal_case_file():
    return _minimal_case().to_arrays()


def _without(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


BAD_CASE_FILES = [
    ("format 2", lambda a, m: (a, {**m, "format": 2}), r"format 2, but this version reads format 1"),
    ("metadata not a dict", lambda a, m: (a, [1]), r"format \[1\]"),
    ("no dtype", lambda a, m: (a, _without(m, "dtype")), r"missing the keys \['dtype'\]"),
    ("bad sizes", lambda a, m: (a, {**m, "sizes": {"n_ex": 1}}), r"sizes=\{'n_ex': 1\}"),
    ("no dy", lambda a, m: (_without(a, "dy"), m), r"missing the keys \['dy'\]"),
    ("extra key", lambda a, m: ({**a, "y": a["x"]}, m), r"unexpected keys \['y'\]"),
    ("x of other case", lambda a, m: ({**a, "x": np.zeros((2, 1, 1))}, m),
     r"x of shape \(2, 1, 1\) and dtype float64"),
    ("x of other dtype", lambda a, m: ({**a, "x": a["x"].astype(np.float32)}, m),
     r"dtype float32, but the metadata requires shape \(1, 1, 1\) and dtype float64"),
]


@pytest.mark.parametrize(
    "corrupt, pattern", [row[1:] for row in BAD_CASE_FILES], ids=[row[0] for row in BAD_CASE_FILES]
)
def test_bad_case_file_raises(corrupt, pattern):
    arrays, metadata = corrupt(*_minimal_case_file())
    with pytest.raises(CaseFileError, match=pattern):
        Case.from_arrays(arrays, metadata)


# Speed.

def test_hundred_cases_fast():
    # The bound is loose for slow CI machines. This test measured 0.2 s on a
    # 2-core x86_64 machine with Python 3.11 and Hypothesis 6.155.
    drawn = []

    @settings(max_examples=100, database=None, deadline=None, phases=[Phase.generate])
    @given(cases(**ALL_OPTIONS, dtypes=["float64", "float32"]))
    def draw(case):
        drawn.append(case)

    start = time.perf_counter()
    draw()
    elapsed = time.perf_counter() - start
    assert len(drawn) == 100
    assert elapsed < 5.0
