"""Every error path of bilstm.forward and bilstm.backward, as tables of bad calls.

Each row changes one argument of an otherwise valid call and states the
exception type and a pattern for the message.  Every pattern covers the
argument's name and the value seen, and for each kind of message at least
one row also matches the fix that the message suggests.
"""

import re

import numpy as np
import pytest

import bilstm
from bilstm import BiLSTMError, InvalidArgumentError, InvalidDtypeError

N_EX, N_IN, H, N_T = 2, 3, 2, 4

BUILTIN_BASE = {InvalidArgumentError: ValueError, InvalidDtypeError: TypeError}
"""Built-in exception each error type also derives from, for numpy-style callers."""

VALID_MODES = re.escape("'concat', 'sum', 'average', 'multiply', None")


def valid_args():
    """Return fresh keyword arguments of a valid forward call, in float64."""
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((N_EX, N_IN, N_T)),
        "params": bilstm.init_params(N_IN, H, rng=rng),
        "lengths": None,
        "h0": None,
        "c0": None,
    }


def call_forward(**changes):
    """Call forward on :func:`valid_args` with ``changes`` applied.

    A callable value receives the valid value of that argument and returns
    the replacement, which keeps each table row short.
    """
    args = valid_args()
    merge_mode = changes.pop("merge_mode", "concat")
    for name, change in changes.items():
        args[name] = change(args[name]) if callable(change) else change
    return bilstm.forward(args.pop("x"), args.pop("params"), merge_mode=merge_mode, **args)


def call_backward(dy=None, *, lengths=None, **upstream):
    """Call backward on a valid forward result; ``dy`` is a function of ``result.y``."""
    result = call_forward(lengths=lengths)
    dy_value = np.ones_like(result.y) if dy is None else dy(result.y)
    return bilstm.backward(result, dy_value, **upstream)


def with_param(name, value):
    """Return a change that replaces one parameter by ``value(old_array)``."""
    def change(params):
        return {**params, name: value(params[name])}
    return change


def without_param(name):
    def change(params):
        return {key: value for key, value in params.items() if key != name}
    return change


def set_entry(index, value):
    """Return a change that writes ``value`` at ``index`` of a copy."""
    def change(array):
        array = np.array(array)
        array[index] = value
        return array
    return change


def params_for(n_in, hidden_size, *names):
    """Return a change that rebuilds ``names`` for other sizes, leaving the rest."""
    other = bilstm.init_params(n_in, hidden_size, rng=1)
    def change(params):
        return {**params, **{name: other[name] for name in names}}
    return change


def wrong_shape_rows():
    """One row per parameter with one gate block too few on the last axis."""
    expected = bilstm.param_shapes(N_IN, H)
    rows = []
    for name in bilstm.PARAM_NAMES:
        shape = expected[name][:-1] + (expected[name][-1] - 1,)
        if name == "W_hh_fwd":
            pattern = r"params\['W_hh_fwd'\] must have shape \(H, 4H\).*\(2, 7\).*bilstm\.init_params"
        else:
            pattern = (
                rf"params\['{name}'\] has shape {re.escape(str(shape))} but must have shape "
                rf"{re.escape(str(expected[name]))}.*pass parameters built for these sizes"
            )
        rows.append(pytest.param(
            lambda name=name, shape=shape: call_forward(params=with_param(name, lambda a: np.zeros(shape))),
            InvalidArgumentError, pattern,
            id=f"forward(params[{name!r}]={shape})",
        ))
    return rows


FORWARD_ERRORS = [
    # x: dimensions and dtype.
    pytest.param(
        lambda: call_forward(x=lambda x: x[0]),
        InvalidArgumentError, r"x must have 3 dimensions \(n_ex, n_in, n_t\) but has shape \(3, 4\).*from_time_major",
        id="forward(x=2-D)",
    ),
    pytest.param(
        lambda: call_forward(x=lambda x: x[None]),
        InvalidArgumentError, r"x must have 3 dimensions.*shape \(1, 2, 3, 4\).*from_batch_first",
        id="forward(x=4-D)",
    ),
    pytest.param(
        lambda: call_forward(x=[[[1.0, 2.0]], [[1.0]]]),
        InvalidArgumentError, r"x could not be converted to an array.*pass a numpy array",
        id="forward(x=ragged list)",
    ),
    pytest.param(
        lambda: call_forward(x=lambda x: x.astype(np.int64)),
        InvalidDtypeError, r"x has dtype int64, but the reference computes in float32, float64, complex128; convert it.*x\.astype",
        id="forward(x=int64)",
    ),
    pytest.param(
        lambda: call_forward(x=lambda x: x > 0),
        InvalidDtypeError, r"x has dtype bool, but the reference computes in .*x\.astype",
        id="forward(x=bool)",
    ),
    pytest.param(
        lambda: call_forward(x=lambda x: x.astype(object)),
        InvalidDtypeError, r"x has dtype object, but the reference computes in .*x\.astype",
        id="forward(x=object)",
    ),
    pytest.param(
        lambda: call_forward(x=lambda x: x.astype(np.float16)),
        InvalidDtypeError, r"x has dtype float16, but the reference computes in .*x\.astype",
        id="forward(x=float16)",
    ),
    pytest.param(
        lambda: call_forward(x=lambda x: x.astype(np.complex64)),
        InvalidDtypeError, r"x has dtype complex64, but the reference computes in .*x\.astype",
        id="forward(x=complex64)",
    ),

    # params: container and keys.
    pytest.param(
        lambda: call_forward(params=lambda p: list(p.values())),
        InvalidArgumentError, r"params must be a mapping from parameter name to array, got list.*bilstm\.init_params",
        id="forward(params=list)",
    ),
    pytest.param(
        lambda: call_forward(params=None),
        InvalidArgumentError, r"params must be a mapping.*got NoneType",
        id="forward(params=None)",
    ),
    pytest.param(
        lambda: call_forward(params=without_param("b_bwd")),
        InvalidArgumentError, r"params has missing keys \['b_bwd'\], but it must contain exactly the keys .*add the missing keys",
        id="forward(params without 'b_bwd')",
    ),
    pytest.param(
        lambda: call_forward(params=lambda p: {**p, "bias": p["b_fwd"]}),
        InvalidArgumentError, r"params has unexpected keys \['bias'\], but .*remove the unexpected ones",
        id="forward(params with 'bias')",
    ),
    pytest.param(
        lambda: call_forward(params=lambda p: {k.replace("_bwd", "_reverse"): v for k, v in p.items()}),
        InvalidArgumentError,
        r"params has missing keys \['W_ih_bwd', 'W_hh_bwd', 'b_bwd'\] and unexpected keys "
        r"\['W_hh_reverse', 'W_ih_reverse', 'b_reverse'\], but it must contain exactly",
        id="forward(params with '_reverse' keys)",
    ),

    # params: shapes, sizes and dtypes.
    *wrong_shape_rows(),
    pytest.param(
        lambda: call_forward(params=with_param("W_hh_fwd", lambda a: a.ravel())),
        InvalidArgumentError, r"params\['W_hh_fwd'\] must have shape \(H, 4H\) with H >= 1 but has shape \(16,\)",
        id="forward(params['W_hh_fwd']=1-D)",
    ),
    pytest.param(
        lambda: call_forward(params=with_param("W_hh_fwd", lambda a: np.zeros((0, 0)))),
        InvalidArgumentError, r"params\['W_hh_fwd'\] must have shape \(H, 4H\) with H >= 1 but has shape \(0, 0\)",
        id="forward(params['W_hh_fwd'] with H=0)",
    ),
    pytest.param(
        lambda: call_forward(params=with_param("b_fwd", lambda a: a[None])),
        InvalidArgumentError, r"params\['b_fwd'\] has shape \(1, 8\) but must have shape \(8,\)",
        id="forward(params['b_fwd']=(1, 4H))",
    ),
    pytest.param(
        lambda: call_forward(params=params_for(N_IN, H + 1, "W_ih_bwd", "W_hh_bwd", "b_bwd")),
        InvalidArgumentError, r"params\['W_ih_bwd'\] has shape \(3, 12\) but must have shape \(3, 8\) for n_in=3 \(from x\) and H=2 \(from params\['W_hh_fwd'\]\)",
        id="forward(params bwd with H=3, fwd with H=2)",
    ),
    pytest.param(
        lambda: call_forward(params=params_for(N_IN, H + 1, "W_hh_fwd")),
        InvalidArgumentError, r"params\['W_ih_fwd'\] has shape \(3, 8\) but must have shape \(3, 12\).*H=3 \(from params\['W_hh_fwd'\]\)",
        id="forward(params['W_hh_fwd'] with H=3)",
    ),
    pytest.param(
        lambda: call_forward(x=np.zeros((N_EX, N_IN + 2, N_T))),
        InvalidArgumentError, r"params\['W_ih_fwd'\] has shape \(3, 8\) but must have shape \(5, 8\) for n_in=5 \(from x\).*x with matching n_in",
        id="forward(x with n_in=5, params with n_in=3)",
    ),
    pytest.param(
        lambda: call_forward(params=lambda p: bilstm.cast_params(p, np.float32)),
        InvalidDtypeError, r"params\['W_ih_fwd'\] has dtype float32 but x has dtype float64; .*convert params\['W_ih_fwd'\] to float64.*bilstm\.cast_params",
        id="forward(x=float64, params=float32)",
    ),
    pytest.param(
        lambda: call_forward(x=lambda x: x.astype(np.float32)),
        InvalidDtypeError, r"params\['W_ih_fwd'\] has dtype float64 but x has dtype float32; .*convert .* to float32",
        id="forward(x=float32, params=float64)",
    ),
    pytest.param(
        lambda: call_forward(params=with_param("b_bwd", lambda a: np.ones(a.shape, dtype=np.int64))),
        InvalidDtypeError, r"params\['b_bwd'\] has dtype int64, but the reference computes in .*astype",
        id="forward(params['b_bwd']=int64)",
    ),
    pytest.param(
        lambda: call_forward(params=with_param("W_hh_bwd", set_entry((1, 3), np.nan))),
        InvalidArgumentError, r"params\['W_hh_bwd'\] has the non-finite value nan at index \(1, 3\).*replace the parameters",
        id="forward(params['W_hh_bwd'] with NaN)",
    ),
    pytest.param(
        lambda: call_forward(params=with_param("b_fwd", set_entry(5, -np.inf))),
        InvalidArgumentError, r"params\['b_fwd'\] has the non-finite value -inf at index \(5,\)",
        id="forward(params['b_fwd'] with -inf)",
    ),

    # lengths.
    pytest.param(
        lambda: call_forward(lengths=[1, 2, 3]),
        InvalidArgumentError, r"lengths must have shape \(n_ex,\) = \(2,\) but has shape \(3,\); give one length per example",
        id="forward(lengths of 3 for n_ex=2)",
    ),
    pytest.param(
        lambda: call_forward(lengths=3),
        InvalidArgumentError, r"lengths must have shape \(n_ex,\) = \(2,\) but has shape \(\)",
        id="forward(lengths=3)",
    ),
    pytest.param(
        lambda: call_forward(lengths=[[1, 2]]),
        InvalidArgumentError, r"lengths must have shape \(n_ex,\) = \(2,\) but has shape \(1, 2\)",
        id="forward(lengths=2-D)",
    ),
    pytest.param(
        lambda: call_forward(lengths=[1.0, 2.0]),
        InvalidDtypeError, r"lengths has dtype float64 but must have an integer dtype; convert it with lengths\.astype\(np\.int64\)",
        id="forward(lengths=float64)",
    ),
    pytest.param(
        lambda: call_forward(lengths=[True, False]),
        InvalidDtypeError, r"lengths has dtype bool but must have an integer dtype",
        id="forward(lengths=bool)",
    ),
    pytest.param(
        lambda: call_forward(lengths=[2, -1]),
        InvalidArgumentError, r"lengths\[1\] = -1 is outside \[0, n_t\] = \[0, 4\].*pass values from 0 to 4",
        id="forward(lengths=[2, -1])",
    ),
    pytest.param(
        lambda: call_forward(lengths=[5, 2]),
        InvalidArgumentError, r"lengths\[0\] = 5 is outside \[0, n_t\] = \[0, 4\].*pass values from 0 to 4",
        id="forward(lengths=[5, 2])",
    ),

    # Initial states.
    pytest.param(
        lambda: call_forward(h0=np.zeros((N_EX, H))),
        InvalidArgumentError, r"h0 has shape \(2, 2\) but must have shape \(2, 2, 2\), that is \(2, n_ex, H\).*np\.stack",
        id="forward(h0=(n_ex, H))",
    ),
    pytest.param(
        lambda: call_forward(h0=np.zeros((1, N_EX, H))),
        InvalidArgumentError, r"h0 has shape \(1, 2, 2\) but must have shape \(2, 2, 2\).*forward direction at index 0",
        id="forward(h0=(1, n_ex, H))",
    ),
    pytest.param(
        lambda: call_forward(c0=np.zeros((2, N_EX, H + 1))),
        InvalidArgumentError, r"c0 has shape \(2, 2, 3\) but must have shape \(2, 2, 2\).*np\.stack",
        id="forward(c0=(2, n_ex, H+1))",
    ),
    pytest.param(
        lambda: call_forward(h0=np.zeros((2, N_EX, H), dtype=np.float32)),
        InvalidDtypeError, r"h0 has dtype float32 but x has dtype float64; .*convert h0 to float64",
        id="forward(x=float64, h0=float32)",
    ),
    pytest.param(
        lambda: call_forward(c0=np.zeros((2, N_EX, H), dtype=np.complex128)),
        InvalidDtypeError, r"c0 has dtype complex128 but x has dtype float64",
        id="forward(x=float64, c0=complex128)",
    ),
    pytest.param(
        lambda: call_forward(h0=np.zeros((2, N_EX, H), dtype=np.int64)),
        InvalidDtypeError, r"h0 has dtype int64, but the reference computes in",
        id="forward(h0=int64)",
    ),
    pytest.param(
        lambda: call_forward(c0=set_entry((1, 0, 1), np.inf)(np.zeros((2, N_EX, H)))),
        InvalidArgumentError, r"c0 has the non-finite value inf at index \(1, 0, 1\).*c0=None for zeros",
        id="forward(c0 with inf)",
    ),

    # Non-finite x at a valid position, with and without lengths.
    pytest.param(
        lambda: call_forward(x=set_entry((0, 1, 2), np.nan)),
        InvalidArgumentError, r"x has the non-finite value nan at index \(0, 1, 2\).*mark the step as padding with lengths",
        id="forward(x with NaN)",
    ),
    pytest.param(
        lambda: call_forward(x=set_entry((1, 0, 1), np.inf), lengths=[4, 2]),
        InvalidArgumentError, r"x has the non-finite value inf at index \(1, 0, 1\)",
        id="forward(x with inf at a valid step, lengths=[4, 2])",
    ),

    # merge_mode, checked before anything else.
    pytest.param(
        lambda: call_forward(merge_mode="Concat"),
        InvalidArgumentError, rf"merge_mode='Concat' is not a valid merge mode; use one of {VALID_MODES}",
        id="forward(merge_mode='Concat')",
    ),
    pytest.param(
        lambda: call_forward(merge_mode=""),
        InvalidArgumentError, rf"merge_mode='' is not a valid merge mode; use one of {VALID_MODES}",
        id="forward(merge_mode='')",
    ),
    pytest.param(
        lambda: call_forward(merge_mode=1),
        InvalidArgumentError, rf"merge_mode=1 is not a valid merge mode; use one of {VALID_MODES}",
        id="forward(merge_mode=1)",
    ),
    pytest.param(
        lambda: call_forward(merge_mode="max"),
        InvalidArgumentError, r"merge_mode='max' is not a valid merge mode.*'ave' for 'average', 'mul' for 'multiply'",
        id="forward(merge_mode='max')",
    ),
    pytest.param(
        lambda: call_forward(merge_mode=["concat"]),
        InvalidArgumentError, r"merge_mode=\['concat'\] is not a valid merge mode",
        id="forward(merge_mode=['concat'])",
    ),
    pytest.param(
        lambda: call_forward(x=lambda x: x[0], merge_mode="Concat"),
        InvalidArgumentError, r"merge_mode='Concat' is not a valid merge mode",
        id="forward(x=2-D, merge_mode='Concat')",
    ),
    pytest.param(
        lambda: call_forward(x=lambda x: x.astype(np.int64), params=None, merge_mode="multiplty"),
        InvalidArgumentError, r"merge_mode='multiplty' is not a valid merge mode",
        id="forward(x=int64, params=None, merge_mode='multiplty')",
    ),
]


BACKWARD_ERRORS = [
    pytest.param(
        lambda: bilstm.backward((np.zeros((N_EX, 2 * H, N_T)),), np.ones((N_EX, 2 * H, N_T))),
        InvalidArgumentError, r"result must be the Forward object returned by bilstm\.forward, got tuple; call forward first",
        id="backward(result=tuple)",
    ),
    pytest.param(
        lambda: bilstm.backward(np.zeros((N_EX, 2 * H, N_T)), np.ones((N_EX, 2 * H, N_T))),
        InvalidArgumentError, r"result must be the Forward object .*got ndarray",
        id="backward(result=ndarray)",
    ),
    pytest.param(
        lambda: bilstm.backward(vars(call_forward()), np.ones((N_EX, 2 * H, N_T))),
        InvalidArgumentError, r"result must be the Forward object .*got dict",
        id="backward(result=dict)",
    ),
    pytest.param(
        lambda: call_backward(dy=lambda y: y[..., :-1]),
        InvalidArgumentError, r"dy has shape \(2, 4, 3\) but must have shape \(2, 4, 4\), the shape of the forward output.*pass a gradient of that shape",
        id="backward(dy with n_t-1 steps)",
    ),
    pytest.param(
        lambda: call_backward(dy=lambda y: np.ones((N_EX, H, N_T))),
        InvalidArgumentError, r"dy has shape \(2, 2, 4\) but must have shape \(2, 4, 4\)",
        id="backward(dy=(n_ex, H, n_t) for concat)",
    ),
    pytest.param(
        lambda: call_backward(dy=lambda y: y.astype(np.float32)),
        InvalidDtypeError, r"dy has dtype float32 but the forward result has dtype float64; .*convert dy to float64",
        id="backward(dy=float32)",
    ),
    pytest.param(
        lambda: call_backward(dy=lambda y: np.ones(y.shape, dtype=np.int64)),
        InvalidDtypeError, r"dy has dtype int64, but the reference computes in .*dy\.astype",
        id="backward(dy=int64)",
    ),
    pytest.param(
        lambda: call_backward(dy=lambda y: set_entry((1, 2, 3), np.nan)(np.ones_like(y))),
        InvalidArgumentError, r"dy has the non-finite value nan at index \(1, 2, 3\).*pass a finite gradient",
        id="backward(dy with NaN)",
    ),
    pytest.param(
        lambda: call_backward(dy=lambda y: set_entry((1, 2, 0), np.nan)(np.ones_like(y)), lengths=[4, 1]),
        InvalidArgumentError, r"dy has the non-finite value nan at index \(1, 2, 0\).*padded steps are ignored",
        id="backward(dy with NaN at a valid step, lengths=[4, 1])",
    ),
    pytest.param(
        lambda: call_backward(dh_n=np.zeros((N_EX, H))),
        InvalidArgumentError, r"dh_n has shape \(2, 2\) but must have shape \(2, 2, 2\)",
        id="backward(dh_n=(n_ex, H))",
    ),
    pytest.param(
        lambda: call_backward(dc_n=np.zeros((2, N_EX, 2 * H))),
        InvalidArgumentError, r"dc_n has shape \(2, 2, 4\) but must have shape \(2, 2, 2\)",
        id="backward(dc_n=(2, n_ex, 2H))",
    ),
    pytest.param(
        lambda: call_backward(dh_n=np.zeros((2, N_EX, H), dtype=np.float32)),
        InvalidDtypeError, r"dh_n has dtype float32 but the forward result has dtype float64",
        id="backward(dh_n=float32)",
    ),
    pytest.param(
        lambda: call_backward(dc_n=set_entry((0, 1, 1), np.nan)(np.zeros((2, N_EX, H)))),
        InvalidArgumentError, r"dc_n has the non-finite value nan at index \(0, 1, 1\).*pass a finite gradient",
        id="backward(dc_n with NaN)",
    ),
]


@pytest.mark.parametrize(("call", "error", "pattern"), FORWARD_ERRORS + BACKWARD_ERRORS)
def test_invalid_call_raises(call, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        call()

    assert isinstance(info.value, BiLSTMError)
    assert isinstance(info.value, BUILTIN_BASE[error])


ACCEPTED_CALLS = [
    pytest.param(
        lambda: call_forward(x=set_entry((1, 0, 3), np.nan), lengths=[4, 2]),
        id="forward(x with NaN at a padded step, lengths=[4, 2])",
    ),
    pytest.param(
        lambda: call_forward(x=set_entry((1, 2, 2), -np.inf), lengths=[4, 2]),
        id="forward(x with -inf at a padded step, lengths=[4, 2])",
    ),
    pytest.param(
        lambda: call_forward(x=lambda x: np.full_like(x, np.nan), lengths=[0, 0]),
        id="forward(x all NaN, lengths=[0, 0])",
    ),
    pytest.param(
        lambda: call_backward(dy=lambda y: set_entry((1, 2, 3), np.nan)(np.ones_like(y)), lengths=[4, 1]),
        id="backward(dy with NaN at a padded step, lengths=[4, 1])",
    ),
    pytest.param(
        lambda: call_forward(lengths=np.array([4, 0], dtype=np.uint8)),
        id="forward(lengths=uint8)",
    ),
    pytest.param(
        lambda: call_forward(merge_mode=None),
        id="forward(merge_mode=None)",
    ),
]


@pytest.mark.parametrize("call", ACCEPTED_CALLS)
def test_valid_edge_call_accepted(call):
    result = call()

    outputs = [result.dx] if isinstance(result, bilstm.Gradients) else [result.y, result.h_n, result.c_n]
    for output in outputs:
        assert np.all(np.isfinite(output))


def test_merge_mode_checked_first():
    # An invalid merge mode must be reported even when every other argument
    # is invalid too, because canonical_merge_mode runs before any other check.
    with pytest.raises(InvalidArgumentError, match="merge_mode='Sum'"):
        bilstm.forward(None, None, merge_mode="Sum", lengths="bad", h0=1, c0=1)


def test_error_family_is_builtin():
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(InvalidDtypeError, TypeError)
    assert issubclass(InvalidArgumentError, BiLSTMError)
    assert issubclass(InvalidDtypeError, BiLSTMError)
