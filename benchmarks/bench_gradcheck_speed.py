"""Time a full gradient check of the reference against torch.autograd.gradcheck.

Both sides check every input of one bidirectional LSTM of the same size
(x, all weights, h0, c0) in float64, in the same process, interleaved; the
script prints the median of ``--repeats`` runs and the ratio.

- ours, full: :func:`properties.fastcheck.full_complex_step_check`, every
  entry by the complex step in one vectorized pass;
- gradcheck, default: ``torch.autograd.gradcheck`` in its default (slow)
  mode on ``nn.LSTM(bidirectional=True)`` through ``torch.func.functional_call``;
- ours, projected: :func:`properties.gradcheck.check_gradients` in its
  default projection mode on the reference, as the gradient properties run it;
- gradcheck, fast: the same with ``fast_mode=True``.

Run: ``python benchmarks/bench_gradcheck_speed.py [--repeats 5]``.
"""

import argparse
import datetime
import platform
import statistics
import time

import numpy as np
import torch

import bilstm
from bilstm.convert import to_torch_state_dict
from properties.fastcheck import full_complex_step_check
from properties.gradcheck import ScalarLoss, check_gradients


def make_case(n_ex, n_t, n_in, hidden, seed):
    """Draw one case: parameters with non-zero biases, input, states, upstream gradients."""
    rng = np.random.default_rng(seed)
    params = bilstm.init_params(n_in, hidden, rng=rng)
    x = rng.standard_normal((n_ex, n_in, n_t))
    state = (2, n_ex, hidden)
    h0, c0, dh_n, dc_n = (0.5 * rng.standard_normal(state) for _ in range(4))
    dy = rng.standard_normal((n_ex, 2 * hidden, n_t))
    return dict(x=x, params=params, h0=h0, c0=c0, dy=dy, dh_n=dh_n, dc_n=dc_n)


def ours_full(case):
    check = full_complex_step_check(case["x"], case["params"], case["dy"], case["dh_n"],
                                    case["dc_n"], h0=case["h0"], c0=case["c0"])
    return check.worst()


def _loss(case):
    def value(point):
        params = {name: point[name] for name in case["params"]}
        result = bilstm.forward(point["x"], params, h0=point["h0"], c0=point["c0"])
        return float((result.y * case["dy"]).sum() + (result.h_n * case["dh_n"]).sum()
                     + (result.c_n * case["dc_n"]).sum())
    return ScalarLoss(value)


def ours_projected(case):
    point = {"x": case["x"], **case["params"], "h0": case["h0"], "c0": case["c0"]}
    result = bilstm.forward(case["x"], case["params"], h0=case["h0"], c0=case["c0"])
    grads = bilstm.backward(result, case["dy"], dh_n=case["dh_n"], dc_n=case["dc_n"])
    analytic = {"x": grads.dx, **grads.dparams, "h0": grads.dh0, "c0": grads.dc0}
    report = check_gradients(_loss(case), point, analytic, rng=0)
    return report.ok


def torch_setup(case):
    """Return (function, inputs) for gradcheck on nn.LSTM with the case's weights."""
    n_ex, n_in, _ = case["x"].shape
    hidden = case["h0"].shape[-1]
    lstm = torch.nn.LSTM(n_in, hidden, bidirectional=True, dtype=torch.float64)
    names = list(to_torch_state_dict(case["params"]))
    weights = [torch.from_numpy(a).requires_grad_() for a in to_torch_state_dict(case["params"]).values()]
    x = torch.from_numpy(bilstm.to_time_major(case["x"])).requires_grad_()
    h0 = torch.from_numpy(case["h0"]).requires_grad_()
    c0 = torch.from_numpy(case["c0"]).requires_grad_()

    def function(x, h0, c0, *weights):
        y, (h_n, c_n) = torch.func.functional_call(lstm, dict(zip(names, weights)), (x, (h0, c0)))
        return y, h_n, c_n

    return function, (x, h0, c0, *weights)


def torch_gradcheck(setup, fast_mode):
    function, inputs = setup
    return torch.autograd.gradcheck(function, inputs, fast_mode=fast_mode, raise_exception=False)


def median_time(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os
    return (f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy "
            f"{np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ex", type=int, default=2)
    parser.add_argument("--n-t", type=int, default=8)
    parser.add_argument("--n-in", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    case = make_case(args.n_ex, args.n_t, args.n_in, args.hidden, args.seed)
    setup = torch_setup(case)
    n_inputs = sum(t.numel() for t in setup[1])

    # Interleave the four timings repeat by repeat, so load changes hit all alike.
    runs = {"ours, full (complex step)": lambda: ours_full(case),
            "gradcheck, default mode": lambda: torch_gradcheck(setup, False),
            "ours, projected": lambda: ours_projected(case),
            "gradcheck, fast_mode=True": lambda: torch_gradcheck(setup, True)}
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(median_time(run, 1))
    medians = {name: statistics.median(values) for name, values in times.items()}

    print(f"date: {datetime.date.today()}; machine: {machine()}")
    print(f"size: n_ex={args.n_ex} n_t={args.n_t} n_in={args.n_in} H={args.hidden}; float64; "
          f"{n_inputs} torch inputs (x, h0, c0 and 8 weight tensors), reference 960-style "
          f"inputs (x, 6 parameters, h0, c0); median of {args.repeats}")
    print(f"ours, full: worst relative error {ours_full(case):.2e}; gradcheck default passed: "
          f"{torch_gradcheck(setup, False)}; ours projected passed: {ours_projected(case)}")
    print("")
    print("| check | median time (s) |")
    print("| --- | ---: |")
    for name, value in medians.items():
        print(f"| {name} | {value:.4f} |")
    full = medians["gradcheck, default mode"] / medians["ours, full (complex step)"]
    fast = medians["gradcheck, fast_mode=True"] / medians["ours, projected"]
    print("")
    print(f"speed-up, full check: {full:.1f}x (target >= 10x)")
    print(f"speed-up, projected vs fast_mode: {fast:.2f}x")


if __name__ == "__main__":
    main()
