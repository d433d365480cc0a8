"""Time the reference BiLSTM of this checkout against its version at another git revision.

Run from the repository root::

    python3 benchmarks/compare_versions.py --rev 880f9fa

The ``bilstm`` package at ``--rev`` is exported with ``git archive`` into a
temporary folder under another package name, so both versions load in one
process.  Each round runs forward and backward once per version, untimed, and
then once timed; the order flips every round.  The script first checks that
both versions return the same output and gradients to within rounding, then
prints a Markdown row per dtype with the medians and their ratio.

Both versions run with ``BILSTM_PARALLEL_DIRECTIONS`` set to the value of
``--parallel-directions``, 0 (serial) unless told otherwise.  Left unset,
this checkout's default (``auto``) would be compared with whatever default
the older version had.
"""

import argparse
import gc
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The folder of this script, for its helper modules when it is loaded from elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bilstm  # noqa: E402
from parallel_setting import restored_setting  # noqa: E402

BASELINE_PACKAGE = "bilstm_baseline"
"""Name under which the exported version is imported."""


def parse_args(argv=None):
    """Parse the command line; the size defaults are the standard benchmark case."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rev", required=True, help="git revision of the baseline version")
    parser.add_argument("--n-ex", type=int, default=32, help="batch size (examples)")
    parser.add_argument("--n-t", type=int, default=100, help="time steps")
    parser.add_argument("--n-in", type=int, default=64, help="input features")
    parser.add_argument("--hidden", type=int, default=128, help="hidden units per direction, H")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of each version")
    parser.add_argument(
        "--parallel-directions", choices=("0", "1"), default="0",
        help="value of BILSTM_PARALLEL_DIRECTIONS for both versions: 0 serial, 1 parallel "
             "for calls large enough (versions without a parallel path ignore it)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error(f"--repeats={args.repeats} is too few for a median; use at least 5")
    return args


def export_baseline(rev, folder):
    """Write ``bilstm`` at ``rev`` into ``folder`` as :data:`BASELINE_PACKAGE`; return the module.

    Raises
    ------
    SystemExit
        If git cannot export the package at that revision.
    """
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "bilstm"],
        cwd=ROOT, capture_output=True, check=False,
    )
    if archive.returncode != 0:
        message = archive.stderr.decode(errors="replace").strip()
        raise SystemExit(
            f"--rev={rev!r} could not be exported: git archive failed with {message!r}; "
            f"pass a commit, tag or branch of this repository that contains bilstm/"
        )

    target = Path(folder) / BASELINE_PACKAGE
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.endswith(".py"):
                continue
            text = tar.extractfile(member).read().decode()
            # Absolute imports of the package must point at the baseline copy.
            text = re.sub(r"\b(from|import) bilstm\b", rf"\1 {BASELINE_PACKAGE}", text)
            path = target / Path(member.name).relative_to("bilstm")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    sys.path.insert(0, str(folder))
    return importlib.import_module(BASELINE_PACKAGE)


def make_case(args, dtype):
    """Return parameters, input and upstream gradient of the benchmark case in ``dtype``."""
    rng = np.random.default_rng(0)
    params = bilstm.cast_params(bilstm.init_params(args.n_in, args.hidden, rng=rng), dtype)
    x = rng.standard_normal((args.n_ex, args.n_in, args.n_t)).astype(dtype)
    dy = rng.standard_normal((args.n_ex, 2 * args.hidden, args.n_t)).astype(dtype)
    return params, x, dy


def largest_difference(current, baseline, params, x, dy):
    """Return the largest difference between the versions, relative to each array's size.

    For each of y, dx, dh0, dc0 and the six parameter gradients, the
    difference is max |current - baseline| / max |baseline|, so that sums
    over thousands of terms, such as the weight gradients, compare fairly.
    """
    outputs = []
    for module in (current, baseline):
        result = module.forward(x, params)
        grads = module.backward(result, dy)
        outputs.append([result.y, grads.dx, grads.dh0, grads.dc0, *grads.dparams.values()])
    return max(
        float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.finfo(b.dtype).tiny))
        for a, b in zip(*outputs)
    )


def time_versions(modules, params, x, dy, repeats):
    """Return the seconds of every timed forward and backward run, per version name."""
    times = {name: [] for name in modules}
    names = list(modules)
    for round_index in range(repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            module = modules[name]
            gc.collect()
            module.backward(module.forward(x, params), dy)

            start = time.perf_counter()
            module.backward(module.forward(x, params), dy)
            times[name].append(time.perf_counter() - start)
    return times


def main(argv=None):
    args = parse_args(argv)
    print(f"command: python3 {' '.join(sys.argv)}")
    print(
        f"case: n_ex={args.n_ex}, n_t={args.n_t}, n_in={args.n_in}, H={args.hidden}, "
        f"{args.repeats} interleaved timed runs per version, "
        f"BILSTM_PARALLEL_DIRECTIONS={args.parallel_directions}"
    )

    with restored_setting(args.parallel_directions):
        rows = compare(args)

    print()
    print(f"| dtype | {args.rev} ms | current ms | current / {args.rev} |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(row)


def compare(args):
    """Check and time both versions in each dtype; return one Markdown row per dtype."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        baseline = export_baseline(args.rev, folder)
        modules = {"baseline": baseline, "current": bilstm}
        for dtype in ("float64", "float32"):
            params, x, dy = make_case(args, dtype)
            difference = largest_difference(bilstm, baseline, params, x, dy)
            print(f"{dtype}: largest relative difference of y and all gradients = {difference:.2e}")
            times = time_versions(modules, params, x, dy, args.repeats)
            medians = {name: 1e3 * statistics.median(values) for name, values in times.items()}
            rows.append(
                f"| {dtype} | {medians['baseline']:.1f} | {medians['current']:.1f} "
                f"| {medians['current'] / medians['baseline']:.2f} |"
            )
    return rows


if __name__ == "__main__":
    main()
