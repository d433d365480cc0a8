"""Differential agreement with the reference BiLSTM."""

import bilstm
from properties.catalog import register, run_backward, run_forward, split_halves, upstream
from properties.compare import check_close, describe_state_index
from properties.props_backward import grads_as_dict


def _reference(case, subject):
    result = bilstm.forward(case.x, case.params, merge_mode=case.merge_mode,
                            lengths=case.lengths, h0=case.h0, c0=case.c0)
    dh_n, dc_n = upstream(case, subject)
    grads = bilstm.backward(result, case.dy, dh_n=dh_n, dc_n=dc_n)
    return result, grads


def _output_parts(y, merge_mode, hidden):
    """Split an output into named parts, per direction where the merge mode allows."""
    if merge_mode in ("concat", None):
        y_fwd, y_bwd = split_halves(y, merge_mode, hidden)
        return {"forward half of y": y_fwd, "backward half of y": y_bwd}
    return {"y": y}


def _describe_part(index):
    return f"example {index[0]}, unit {index[1]}, time step {index[2]}"


@register("reference_agreement")
def reference_agreement(subject, case, rng):
    """Output, final states and gradients equal the reference's on the same parameters.

    Each direction's half of the output, each direction's final states and
    each gradient tensor (dx, every parameter of both directions, dh0, dc0)
    is compared on its own, so a failure names the half or tensor that is wrong.
    """
    model, out = run_forward(subject, case)
    expected, expected_grads = _reference(case, subject)
    hidden = case.sizes.hidden

    actual_parts = _output_parts(out.y, case.merge_mode, hidden)
    for name, value in _output_parts(expected.y, case.merge_mode, hidden).items():
        check_close(name, actual_parts[name], value, dtype=case.dtype, check="differential",
                    describe=_describe_part, call="forward(x)")

    if out.h_n is not None:
        for name in ("h_n", "c_n"):
            check_close(name, getattr(out, name), getattr(expected, name), dtype=case.dtype,
                        check="differential", describe=describe_state_index, call="forward(x)")

    if not subject.capabilities.backward:
        return

    actual_grads = grads_as_dict(run_backward(model, case, subject))
    for name, value in grads_as_dict(expected_grads).items():
        if name in actual_grads:
            check_close(name, actual_grads[name], value, dtype=case.dtype, check="differential",
                        call="backward(dy)")
