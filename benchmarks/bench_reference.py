"""Time forward + backward of the reference BiLSTM against torch.nn.LSTM on CPU.

Run from the repository root::

    python3 benchmarks/bench_reference.py
    python3 benchmarks/bench_reference.py --dtype float32 --repeats 15

Both implementations get the same weights, input and upstream gradient, and
both compute the gradients of the input and of every weight.  The reference
runs with its default setting (``BILSTM_PARALLEL_DIRECTIONS`` unset, which
means ``auto``) and, where the case is large enough for its parallel path,
also with the variable set to ``0`` (always serial) and to ``1`` (parallel).
Runs of all of them alternate in one process.  The script prints the machine
it ran on, how many of the default's calls ran in parallel, then a Markdown
table (ready for BENCHMARKS.md) with the median time of each reference
setting and of torch, their ratio, and whether the ratio meets the
project's target.
"""

import datetime
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The folder of this script, for its helper modules when it is loaded from elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bilstm import backward, forward  # noqa: E402
from bilstm import _parallel  # noqa: E402
from bilstm.reference import _call_size  # noqa: E402
from parallel_setting import CallCounter, restored_setting  # noqa: E402
from case_options import CASE_SIZES, case_parser, require_positive  # noqa: E402
from machine_info import cpu_model, source_revision  # noqa: E402

TARGET_RATIOS = {"float64": 1.0, "float32": 1.5}
"""Maximum accepted (reference time) / (torch time), per dtype."""

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}

BLAS_ENV_VARS = (
    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS",
)
"""Environment variables that change which BLAS kernel runs or on how many threads."""

MALLOC_ENV_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
"""glibc settings that decide whether freed memory goes back to the kernel.

Memory that went back costs one page fault per 4 KiB page when it is used
again, and both implementations allocate tens of MB per call.
"""


def parse_args(argv=None):
    """Parse and check the command line. The size defaults are the standard benchmark case."""
    parser = case_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=9,
        help="timed runs of each implementation; the median is reported (at least 5)",
    )
    parser.add_argument(
        "--pause", type=float, default=0.3,
        help="seconds to sleep before each timed run and its untimed runs, so that "
             "worker threads left spinning by the other library have gone to sleep",
    )
    parser.add_argument(
        "--warmup", type=int, default=1,
        help="untimed runs of the same implementation right before each timed run",
    )
    parser.add_argument(
        "--blas-threads", type=int, default=None,
        help="threads for numpy's BLAS (None: torch's intra-op thread count)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random case")
    args = parser.parse_args(argv)

    if args.repeats < 5:
        parser.error(f"--repeats={args.repeats} is too few for a median; use at least 5")
    if args.pause < 0:
        parser.error(f"--pause={args.pause} is negative; use 0 or more seconds")
    if args.blas_threads is not None and args.blas_threads < 1:
        parser.error(f"--blas-threads={args.blas_threads} is invalid; use 1 or more")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup} is negative; use 0 or more runs")
    require_positive(parser, args, CASE_SIZES)
    return args


def blas_libraries():
    """Return threadpoolctl's description of every loaded thread pool, or None if it is missing."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl.threadpool_info()


def limit_blas_threads(n_threads):
    """Limit numpy's BLAS to ``n_threads``; return the limiter (None without threadpoolctl)."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl.threadpool_limits(limits=n_threads, user_api="blas")


def machine_lines():
    """Describe the machine, library versions, thread counts and BLAS kernels, one line each."""
    lines = [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"commit: {source_revision()}",
        f"CPU: {cpu_model()}",
        f"logical CPUs: {os.cpu_count()}, usable by this process: {len(os.sched_getaffinity(0))}",
        f"load average (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}",
        f"torch threads: intra-op {torch.get_num_threads()}, "
        f"inter-op {torch.get_num_interop_threads()}",
        # With torch 2.13, oneDNN runs float32 LSTMs when this is on. Turning it off
        # made torch's float32 time on the standard case about 2.5 times longer.
        f"torch oneDNN (mkldnn): available {torch.backends.mkldnn.is_available()}, "
        f"enabled {torch.backends.mkldnn.enabled}",
    ]

    libraries = blas_libraries()
    if libraries is None:
        lines.append("thread pools: unknown (pip install threadpoolctl to list them)")
    for lib in libraries or ():
        version = f" {lib['version']}" if lib.get("version") else ""
        kernel = f", kernel {lib['architecture']}" if lib.get("architecture") else ""
        lines.append(
            f"thread pool {lib['prefix']} ({lib['internal_api']}{version}): "
            f"{lib['num_threads']} threads{kernel}"
        )

    env = ", ".join(
        f"{name}={os.environ.get(name, '(unset)')}" for name in BLAS_ENV_VARS + MALLOC_ENV_VARS
    )
    lines.append(f"environment: {env}")
    return lines


def reference_params(lstm, dtype):
    """Convert a one-layer bidirectional torch LSTM to the reference's parameter dict.

    torch stores (4H, n_in) weights with gate order i, f, g, o and two biases;
    the reference uses (n_in, 4H) weights, the same gate order and one bias.
    """
    params = {}
    for suffix, direction in (("", "fwd"), ("_reverse", "bwd")):
        w_ih = getattr(lstm, f"weight_ih_l0{suffix}")
        w_hh = getattr(lstm, f"weight_hh_l0{suffix}")
        bias = getattr(lstm, f"bias_ih_l0{suffix}") + getattr(lstm, f"bias_hh_l0{suffix}")
        params[f"W_ih_{direction}"] = w_ih.detach().numpy().T.astype(dtype)
        params[f"W_hh_{direction}"] = w_hh.detach().numpy().T.astype(dtype)
        params[f"b_{direction}"] = bias.detach().numpy().astype(dtype)
    return params


def make_case(args, dtype_name, with_parallel):
    """Build one torch LSTM and matching reference inputs, with one shared upstream gradient.

    Returns
    -------
    dict
        ``run_torch``, ``run_default``, ``run_serial`` and ``run_parallel``,
        each a callable that runs forward and backward once (the last three
        run the reference with ``BILSTM_PARALLEL_DIRECTIONS`` unset, 0 and
        1), plus ``agreement``, the largest absolute difference of ``y`` and
        ``dx`` between the default reference and torch, ``paths_agreement``,
        the same between the reference's serial and parallel paths (None
        unless ``with_parallel``), and ``default_calls``, a
        :class:`CallCounter` of the default's calls.
    """
    dtype = np.dtype(dtype_name)
    torch.manual_seed(args.seed)
    lstm = torch.nn.LSTM(args.n_in, args.hidden, bidirectional=True)
    lstm = lstm.to(TORCH_DTYPES[dtype_name])

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.n_ex, args.n_in, args.n_t)).astype(dtype)
    dy = rng.standard_normal((args.n_ex, 2 * args.hidden, args.n_t)).astype(dtype)
    params = reference_params(lstm, dtype)

    # torch's default layout is time-major: (n_t, n_ex, features).
    x_torch = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).requires_grad_()
    dy_torch = torch.from_numpy(np.ascontiguousarray(dy.transpose(2, 0, 1)))
    inputs = [x_torch, *lstm.parameters()]

    def run_torch():
        y, _ = lstm(x_torch)
        return y, torch.autograd.grad(y, inputs, dy_torch)

    def reference_runner(setting):
        def run_reference():
            if setting is None:
                os.environ.pop(_parallel.ENV_VAR, None)
            else:
                os.environ[_parallel.ENV_VAR] = setting
            result = forward(x, params)
            return result, backward(result, dy)
        return run_reference

    run_serial, run_parallel = reference_runner("0"), reference_runner("1")
    default_calls = CallCounter()

    def run_default():
        with default_calls.counting():
            return reference_runner(None)()

    result, grads = run_default()
    y_torch, grads_torch = run_torch()
    agreement = max(
        np.max(np.abs(result.y - y_torch.detach().numpy().transpose(1, 2, 0))),
        np.max(np.abs(grads.dx - grads_torch[0].numpy().transpose(1, 2, 0))),
    )
    paths_agreement = None
    if with_parallel:
        result_serial, grads_serial = run_serial()
        result_parallel, grads_parallel = run_parallel()
        paths_agreement = max(
            np.max(np.abs(result_serial.y - result_parallel.y)),
            np.max(np.abs(grads_serial.dx - grads_parallel.dx)),
        )
    # Only the timed protocol's calls are counted.
    default_calls.calls = default_calls.parallel_calls = 0
    return {
        "run_torch": run_torch, "run_default": run_default, "run_serial": run_serial,
        "run_parallel": run_parallel, "agreement": agreement,
        "paths_agreement": paths_agreement, "default_calls": default_calls,
    }


def parallel_directions_line(args):
    """Return whether the reference's parallel path runs for this case, and a line that gives the reason."""
    step_weights_shape = (2, 4 * args.hidden, args.n_in + 1 + args.hidden)
    work, block = _call_size(args.n_t, args.n_ex, step_weights_shape)
    reasons = _parallel.serial_reasons(work, block)
    if reasons:
        return False, (f"reference parallel directions: not possible, because of "
                       f"{'; '.join(reasons)}; {_parallel.ENV_VAR}=0 and 1 not timed")
    return True, (f"reference parallel directions: possible ({work:,} multiply-adds per "
                  f"direction), also timed with {_parallel.ENV_VAR}=0 and 1")


def minor_page_faults():
    """Return this process's minor page faults so far, or None where getrusage is missing."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_interleaved(runs, repeats, pause, warmup):
    """Time each callable ``repeats`` times, alternating between them.

    Before each timed run the script sleeps ``pause`` seconds and then makes
    ``warmup`` untimed runs of the same callable.  The pause lets the other
    library's idle worker threads stop spinning, and the untimed runs wake
    this library's threads and caches, so each timed run is a steady-state run.
    The order flips every round, so neither implementation always goes first.

    Returns
    -------
    times : dict of str to list of float
        Seconds of every timed run, per name.
    faults : dict of str to list of int
        Minor page faults of every timed run, per name; empty lists where
        the platform does not count them.
    """
    names = list(runs)
    times = {name: [] for name in names}
    faults = {name: [] for name in names}

    for round_index in range(repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            gc.collect()
            time.sleep(pause)
            for _ in range(warmup):
                runs[name]()

            faults_before = minor_page_faults()
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
            if faults_before is not None:
                faults[name].append(minor_page_faults() - faults_before)
    return times, faults


def fault_line(dtype_name, faults):
    """Describe the median page faults per timed run of each implementation."""
    if not all(faults.values()):
        return f"{dtype_name}: page faults per timed run not counted on this platform"
    counts = ", ".join(
        f"{name} {statistics.median(values):.0f}" for name, values in faults.items()
    )
    return f"{dtype_name}: minor page faults per timed run, median: {counts}"


PATH_LABELS = {
    "default": "default (auto)",
    "serial": f"serial ({_parallel.ENV_VAR}=0)",
    "parallel": f"parallel ({_parallel.ENV_VAR}=1)",
}
"""Names of the reference's settings in the table."""


def table_row(dtype_name, path, times):
    """Format one Markdown row: medians with min-max spread, ratio, target, verdict."""
    ratio = statistics.median(times[path]) / statistics.median(times["torch"])
    target = TARGET_RATIOS[dtype_name]

    def cell(seconds):
        ms = [1e3 * value for value in seconds]
        return f"{statistics.median(ms):.1f} ({min(ms):.1f}-{max(ms):.1f})"

    verdict = "yes" if ratio <= target else "no"
    return (
        f"| {dtype_name} | {PATH_LABELS[path]} | {cell(times[path])} | {cell(times['torch'])} "
        f"| {ratio:.2f} | <= {target} | {verdict} |"
    )


def main(argv=None):
    args = parse_args(argv)
    blas_threads = args.blas_threads or torch.get_num_threads()
    limiter = limit_blas_threads(blas_threads)
    dtype_names = ("float64", "float32") if args.dtype == "both" else (args.dtype,)

    print(f"command: python3 {' '.join(sys.argv)}")
    print(
        f"case: n_ex={args.n_ex}, n_t={args.n_t}, n_in={args.n_in}, H={args.hidden}, "
        f"forward + backward (gradients of x and all weights), "
        f"{args.repeats} interleaved timed runs each, each after a {args.pause} s pause "
        f"and {args.warmup} untimed run(s)"
    )
    if limiter is None:
        print(f"numpy BLAS threads: not controlled, so --blas-threads={blas_threads} is ignored")
    for line in machine_lines():
        print(line)
    with_parallel, line = parallel_directions_line(args)
    print(line)

    rows = []
    with restored_setting():
        for dtype_name in dtype_names:
            case = make_case(args, dtype_name, with_parallel)
            print(f"{dtype_name}: max |reference - torch| over y and dx = "
                  f"{case['agreement']:.2e}")
            runs = {"default": case["run_default"], "torch": case["run_torch"]}
            if with_parallel:
                print(f"{dtype_name}: max |parallel - serial reference| over y and dx = "
                      f"{case['paths_agreement']:.2e}")
                runs["serial"] = case["run_serial"]
                runs["parallel"] = case["run_parallel"]
            times, faults = time_interleaved(runs, args.repeats, args.pause, args.warmup)
            print(fault_line(dtype_name, faults))
            print(f"{dtype_name}: default (auto) ran {case['default_calls'].share()} "
                  f"forward and backward calls in parallel, untimed runs included")
            rows.extend(table_row(dtype_name, path, times) for path in runs if path != "torch")

    print()
    print("| dtype | reference path | reference ms, median (min-max) "
          "| torch ms, median (min-max) | ratio | target | met |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    print(f"\nload average after the runs: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
