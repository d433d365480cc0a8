"""The vectorized complex-step full check of the reference."""

import numpy as np
import pytest

import bilstm
from properties.fastcheck import full_complex_step_check


def _case(seed, n_ex=2, n_in=3, n_t=4, hidden=3):
    rng = np.random.default_rng(seed)
    params = {k: v + 0.1 for k, v in bilstm.init_params(n_in, hidden, rng=rng).items()}
    x = rng.standard_normal((n_ex, n_in, n_t))
    dy = rng.standard_normal((n_ex, 2 * hidden, n_t))
    dh_n, dc_n, h0, c0 = (rng.standard_normal((2, n_ex, hidden)) for _ in range(4))
    return dict(x=x, params=params, dy=dy, dh_n=dh_n, dc_n=dc_n, h0=h0, c0=c0)


@pytest.mark.parametrize("seed", range(5))
def test_reference_passes_to_machine_precision(seed):
    case = _case(seed)
    check = full_complex_step_check(case.pop("x"), case.pop("params"), case.pop("dy"),
                                    case.pop("dh_n"), case.pop("dc_n"), **case)

    assert check.worst() < 1e-13
    assert check.forward_gap < 1e-14


def test_counts_every_entry():
    case = _case(0, n_ex=2, n_in=4, n_t=8, hidden=8)
    check = full_complex_step_check(case.pop("x"), case.pop("params"), case.pop("dy"),
                                    case.pop("dh_n"), case.pop("dc_n"), **case)

    # x 64, parameters 2 * (4 + 8 + 1) * 32 = 832, h0 and c0 32 each.
    assert check.n_entries == 960


@pytest.mark.parametrize("tensor", ["W_hh_bwd", "b_fwd"])
def test_planted_relative_error_found(tensor):
    def scaled_backward(result, dy, **kwargs):
        grads = bilstm.backward(result, dy, **kwargs)
        grads.dparams[tensor] = grads.dparams[tensor] * (1 + 1e-10)
        return grads

    case = _case(1)
    check = full_complex_step_check(case.pop("x"), case.pop("params"), case.pop("dy"),
                                    case.pop("dh_n"), case.pop("dc_n"), backward=scaled_backward,
                                    **case)

    assert check.max_rel_error[tensor] > 5e-11
    assert max(v for k, v in check.max_rel_error.items() if k != tensor) < 1e-13
