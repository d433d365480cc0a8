"""Time the reference's serial and parallel paths in loops that run without pauses.

Run from the repository root::

    python3 benchmarks/bench_mixed_loop.py
    python3 benchmarks/bench_mixed_loop.py --dtype float32 --blocks 5

``bench_reference.py`` sleeps before each timed call, so that no BLAS worker
thread is still spinning when the call starts.  Real loops do not sleep.
This script times two of them back to back, with no pause:

- ``alone``: the reference's forward, then its backward;
- ``dense``: the reference's forward, a dense layer on its output (forward
  and backward, three matrix products on numpy's multithreaded BLAS), then
  the reference's backward.

Each loop runs under the three values of ``BILSTM_PARALLEL_DIRECTIONS``:
``0`` (serial), ``1`` (parallel whenever the call is large enough) and
``auto``.  ``auto`` is the default, and among its conditions for a
parallel call is that no other thread of the process is running at the
call's start.

The script first prints how many other threads of the process are running
at a few delays after one multithreaded matrix product, which shows how long
numpy's BLAS workers keep spinning.  It then prints a Markdown table, ready
for BENCHMARKS.md, with one row per loop and value.  Each block's cell gives
its median step time, the setting that ran before it and its parallel
calls.  The row ends with the median of the blocks, its ratio to ``0``, and
how many timed reference calls ran in parallel.
"""

import dataclasses
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The folder of this script, for its helper modules when it is loaded from elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bilstm import backward, forward, init_params  # noqa: E402
from bilstm import _parallel  # noqa: E402
from bilstm.reference import _call_size  # noqa: E402
from parallel_setting import CallCounter, restored_setting  # noqa: E402
from case_options import CASE_SIZES, case_parser, require_positive  # noqa: E402
from machine_info import cpu_model, source_revision  # noqa: E402

LOOPS = ("alone", "dense")
"""Names of the timed loops, in the order of the table."""

SETTINGS = ("0", "1", "auto")
"""Values of BILSTM_PARALLEL_DIRECTIONS that are timed; the first one is the baseline."""

SPIN_DELAYS = (0.0, 0.05, 0.1, 0.2, 0.3)
"""Seconds after a multithreaded product at which the running threads are counted."""

SPIN_PRODUCT_SIZE = 600
"""Side of the square float64 product that wakes the BLAS worker threads (432 MFLOP)."""


def parse_args(argv=None):
    """Parse and check the command line. The size defaults are the standard benchmark case."""
    parser = case_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=10,
        help="loop steps per block; each block reports its median step time",
    )
    parser.add_argument(
        "--blocks", type=int, default=4,
        help="blocks per loop and setting, alternating between the settings",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random case")
    args = parser.parse_args(argv)

    require_positive(parser, args, CASE_SIZES + ("steps", "blocks"))
    return args


def spin_matrix():
    """Return the square float64 matrix whose product with itself wakes the BLAS worker threads."""
    return np.random.default_rng(0).standard_normal((SPIN_PRODUCT_SIZE, SPIN_PRODUCT_SIZE))


def spin_line():
    """Describe how many threads run at each of SPIN_DELAYS after one multithreaded product."""
    if _parallel.other_threads_running() is None:
        return "other threads running after a multithreaded product: not counted (no /proc)"

    a = spin_matrix()
    # Let workers woken by anything before this go back to sleep first.
    time.sleep(max(SPIN_DELAYS) + 0.2)
    counts = []
    start = time.perf_counter()
    a @ a
    for delay in SPIN_DELAYS:
        time.sleep(max(0.0, start + delay - time.perf_counter()))
        counts.append(f"{delay:.2f} s: {_parallel.other_threads_running()}")
    return (f"other threads running after a {SPIN_PRODUCT_SIZE} x {SPIN_PRODUCT_SIZE} float64 "
            f"product: {', '.join(counts)}")


def make_step(args, dtype, loop, setting, counter):
    """Return a callable that runs one step of ``loop`` with BILSTM_PARALLEL_DIRECTIONS=``setting``."""
    rng = np.random.default_rng(args.seed)
    params = init_params(args.n_in, args.hidden, rng=rng, dtype=dtype)
    x = rng.standard_normal((args.n_ex, args.n_in, args.n_t)).astype(dtype)
    width = 2 * args.hidden
    w_dense = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(dtype)
    dy_alone = rng.standard_normal((args.n_ex, width, args.n_t)).astype(dtype)

    def dense_layer(y):
        # Rows are (example, step) pairs, so the products are large enough
        # for numpy's BLAS to use all its threads.
        rows = np.ascontiguousarray(y.transpose(0, 2, 1)).reshape(-1, width)
        out = np.tanh(rows @ w_dense)
        d_pre = 1 - out * out
        d_w_dense = rows.T @ d_pre
        d_rows = d_pre @ w_dense.T
        dy = d_rows.reshape(args.n_ex, args.n_t, width).transpose(0, 2, 1)
        return np.ascontiguousarray(dy), d_w_dense

    def step():
        os.environ[_parallel.ENV_VAR] = setting
        with counter.counting():
            result = forward(x, params)
            dy = dy_alone if loop == "alone" else dense_layer(result.y)[0]
            return backward(result, dy)

    return step


@dataclasses.dataclass
class Block:
    """One timed block of steps under one setting."""

    median: float
    """Median seconds per step."""
    after: str
    """Setting of the block that ran just before, whose worker threads may still spin."""
    parallel_calls: int
    calls: int


def time_blocks(steps, counters, n_steps, n_blocks):
    """Time ``n_blocks`` blocks of ``n_steps`` steps of each callable, alternating between them.

    One untimed step of each callable comes first.  The first, third, ...
    blocks then run in the order given, and the second, fourth, ... keep the
    first name and reverse the rest.  With three names and four blocks, the
    second and third names each run twice right after each of the other
    two.  ``auto`` depends on what ran before it, so each block records the
    name before it.

    Returns
    -------
    dict of str to list of Block
        The blocks of each name, in the order they ran.
    """
    names = list(steps)
    for name in names:
        steps[name]()

    blocks = {name: [] for name in names}
    previous = names[-1]
    orders = (names, names[:1] + names[:0:-1])
    for block in range(n_blocks):
        for name in orders[block % 2]:
            counter = counters[name]
            calls, parallel_calls = counter.calls, counter.parallel_calls
            times = []
            for _ in range(n_steps):
                start = time.perf_counter()
                steps[name]()
                times.append(time.perf_counter() - start)
            blocks[name].append(Block(
                statistics.median(times), previous,
                counter.parallel_calls - parallel_calls, counter.calls - calls,
            ))
            previous = name
    return blocks


def table_rows(dtype_name, loop, blocks):
    """Format one Markdown row per setting for ``loop``."""
    baseline = statistics.median(block.median for block in blocks[SETTINGS[0]])
    rows = []
    for setting, runs in blocks.items():
        median = statistics.median(block.median for block in runs)
        cells = ", ".join(
            f"{1e3 * block.median:.1f} (after {block.after}, {block.parallel_calls}/{block.calls})"
            for block in runs
        )
        parallel_calls = sum(block.parallel_calls for block in runs)
        calls = sum(block.calls for block in runs)
        rows.append(f"| {dtype_name} | {loop} | {setting} | {cells} | {1e3 * median:.1f} "
                    f"| {median / baseline:.2f} | {parallel_calls} / {calls} |")
    return rows


def busy_start_line(args, dtype_name):
    """Describe how many calls of an ``auto`` loop run in parallel when it starts right after a product.

    The loop is the ``alone`` one, started while the worker threads of one
    multithreaded product still spin.
    """
    counter = CallCounter()
    step = make_step(args, np.dtype(dtype_name), "alone", "auto", counter)
    a = spin_matrix()
    a @ a
    for _ in range(args.steps):
        step()
    return (f"{dtype_name}, {_parallel.ENV_VAR}=auto, loop 'alone' started right after a "
            f"{SPIN_PRODUCT_SIZE} x {SPIN_PRODUCT_SIZE} product: {counter.parallel_calls} of "
            f"{counter.calls} calls in parallel")


def parallel_reasons(args):
    """Return why the parallel path cannot run for this case, or nothing if it can."""
    step_weights_shape = (2, 4 * args.hidden, args.n_in + 1 + args.hidden)
    return _parallel.serial_reasons(*_call_size(args.n_t, args.n_ex, step_weights_shape))


def main(argv=None):
    args = parse_args(argv)
    dtype_names = ("float64", "float32") if args.dtype == "both" else (args.dtype,)

    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"case: n_ex={args.n_ex}, n_t={args.n_t}, n_in={args.n_in}, H={args.hidden}, "
          f"{args.blocks} blocks of {args.steps} steps per loop and setting, no pauses")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"commit: {source_revision()}")
    print(f"CPU: {cpu_model()}, usable CPUs: {_parallel.usable_cpus()}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}")
    print(spin_line())

    reasons = parallel_reasons(args)
    settings = SETTINGS
    if reasons:
        print(f"reference parallel directions: not possible, because of {'; '.join(reasons)}; "
              f"only {_parallel.ENV_VAR}={SETTINGS[0]} is timed")
        settings = SETTINGS[:1]

    rows = []
    with restored_setting():
        for dtype_name in dtype_names:
            for loop in LOOPS:
                counters = {setting: CallCounter() for setting in settings}
                steps = {
                    setting: make_step(args, np.dtype(dtype_name), loop, setting, counters[setting])
                    for setting in settings
                }
                blocks = time_blocks(steps, counters, args.steps, args.blocks)
                rows.extend(table_rows(dtype_name, loop, blocks))
            if len(settings) > 1:
                print(busy_start_line(args, dtype_name))

    print()
    print(f"| dtype | loop | {_parallel.ENV_VAR} | ms per step per block (setting before it, "
          f"parallel calls) | median | / {SETTINGS[0]} | parallel calls |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    print(f"\nload average after the runs: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
