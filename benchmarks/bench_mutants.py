"""Kill-rate benchmark: run the whole property catalog on every mutant of properties.mutants.

Run from the repository root::

    python3 benchmarks/bench_mutants.py
    python3 benchmarks/bench_mutants.py --mutant truncated_bptt --mutant lengths_ignored
    python3 benchmarks/bench_mutants.py --jobs 1 --json mutants.json

Every property runs on every mutant, in catalog order, so the table lists
each property that catches a mutant.  The table reports one shrunk case per
mutant, so only the first failing property of a mutant shrinks its failing
case.  A later failing property stops at its first failing example, which
leaves its verdict unchanged.  Mutants run in ``--jobs`` worker processes,
each mutant's properties one after another in one worker.

The table has one row per mutant, with these columns:

- the mutant, and the property its catalog entry expects to catch it;
- whether some property catches it, and every property that does
  (``reference_agreement`` is marked, since it needs the reference as oracle);
- the time to the first catch: the wall time from the mutant's start until
  its first failing property has finished, shrinking included;
- the shrunk case of that first catch, as (n_ex, n_in, H, n_t);
- the mutant's total wall time.

The summary compares the kill rate, the median time to
catch and the whole run's wall time with :data:`TARGETS`, and gives the CPU
times beside them, which other load on the machine changes less.  The table is
Markdown, ready for a benchmark page.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hypothesis import Phase, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from properties.catalog import Subject  # noqa: E402
from properties.errors import UsageError  # noqa: E402
from properties.mutants import CONTROLS, MUTANTS, load_mutant  # noqa: E402
from properties.runner import (  # noqa: E402
    FAILED, HARNESS_ERROR, IMPLEMENTATION_ERROR, describe_environment, run_property,
    select_properties,
)
from properties.settings import DEFAULT_PROFILE, PROFILES, profile_settings  # noqa: E402

TARGETS = {
    "ci": {"kill_rate": 1.0, "median_catch_s": 2.0, "whole_run_s": 120.0},
}
"""Targets per settings profile: kill rate, median time to catch, and the wall time
of the whole run on a 2-core machine with the default ``--jobs``."""

ORACLE = "reference_agreement"
"""The property that compares with the reference instead of checking a claim."""

CATCHING_VERDICTS = (FAILED, IMPLEMENTATION_ERROR)
"""Verdicts that count as catching a mutant; a harness error does not."""

NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


@dataclass
class MutantRow:
    """The benchmark's result for one mutant."""

    name: str
    expected: str | None
    catching: list = field(default_factory=list)
    implementation_errors: list = field(default_factory=list)
    harness_errors: list = field(default_factory=list)
    first_catch_s: float | None = None
    first_catch_cpu_s: float | None = None
    shrunk_sizes: tuple | None = None
    shrunk_case: str = ""
    total_s: float = 0.0
    cpu_s: float = 0.0
    results: list = field(default_factory=list)

    @property
    def caught(self):
        return bool(self.catching)

    @property
    def expected_caught(self):
        return self.expected is None or self.expected in self.catching


def parse_args(argv=None):
    """Parse the command line; ``--mutant`` may repeat, and no ``--mutant`` means all."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES),
                        help=f"Hypothesis settings profile (default: {DEFAULT_PROFILE})")
    parser.add_argument("--mutant", action="append", default=None, metavar="NAME",
                        help="run only this mutant (repeatable; default: every mutant)")
    parser.add_argument("--controls", action="store_true",
                        help="also run the bug-free bases, on which every property must pass")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes, each running whole mutants "
                             "(default: the number of CPUs, here %(default)s)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the rows and the summary as JSON to PATH")
    args = parser.parse_args(argv)

    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs} must be at least 1")
    names = args.mutant or list(MUTANTS)
    unknown = [name for name in names if name not in MUTANTS and name not in CONTROLS]
    if unknown:
        parser.error(f"--mutant {', '.join(unknown)}: no such mutant; use one of "
                     f"{', '.join(MUTANTS)}, or a control: {', '.join(CONTROLS)}")
    args.names = names + (list(CONTROLS) if args.controls else [])
    return args


def _sizes(case):
    size = case.sizes
    return (size.n_ex, size.n_in, size.hidden, size.n_t)


def run_mutant(name, profile):
    """Run every property on one mutant; return its :class:`MutantRow`."""
    subject = Subject(load_mutant(name))
    entry = MUTANTS.get(name) or CONTROLS[name]
    row = MutantRow(name, entry.expected)
    shrinking = profile_settings(profile)
    first_example_only = settings(shrinking, phases=NO_SHRINK)
    failing_cases = []

    def keep_case(prop, case, extra_seed, verdict, message):
        failing_cases.append(case)

    start, cpu_start = time.perf_counter(), time.process_time()
    for prop in select_properties():
        run_settings = first_example_only if row.caught else shrinking
        result = run_property(prop, subject, run_settings, save=keep_case)
        row.results.append({"property": prop.name, "verdict": result.verdict,
                            "examples": result.examples, "seconds": round(result.seconds, 3)})
        if result.verdict == HARNESS_ERROR:
            row.harness_errors.append(f"{prop.name}: {result.message.strip().splitlines()[-1]}")
        if result.verdict not in CATCHING_VERDICTS:
            continue

        if not row.caught:
            row.first_catch_s = time.perf_counter() - start
            row.first_catch_cpu_s = time.process_time() - cpu_start
            row.shrunk_sizes = _sizes(failing_cases[-1])
            row.shrunk_case = result.case_summary
        row.catching.append(prop.name)
        if result.verdict == IMPLEMENTATION_ERROR:
            row.implementation_errors.append(prop.name)

    row.total_s = time.perf_counter() - start
    row.cpu_s = time.process_time() - cpu_start
    return row


def run_all(names, profile, jobs):
    """Run every mutant in ``names``; return the rows in the order of ``names``."""
    if jobs == 1:
        return [_report_progress(run_mutant(name, profile)) for name in names]

    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(run_mutant, name, profile) for name in names}
        for future in concurrent.futures.as_completed(futures.values()):
            _report_progress(future.result())
        return [futures[name].result() for name in names]


def _report_progress(row):
    verdict = "caught" if row.caught else "NOT caught"
    print(f"  {row.name}: {verdict} ({row.total_s:.1f} s)", file=sys.stderr, flush=True)
    return row


def _catching_cell(row):
    if not row.catching:
        return "none"
    cells = []
    for name in row.catching:
        if name == ORACLE:
            name += " (oracle)"
        if name in row.implementation_errors:
            name += " (implementation error)"
        cells.append(name)
    return ", ".join(cells)


def format_table(rows):
    """Return the Markdown table of the rows."""
    lines = [
        "| mutant | expected | caught | catching properties | first catch (s) "
        "| shrunk case (n_ex, n_in, H, n_t) | total (s) |",
        "| --- | --- | --- | --- | ---: | --- | ---: |",
    ]
    for row in rows:
        first = "-" if row.first_catch_s is None else f"{row.first_catch_s:.2f}"
        sizes = "-" if row.shrunk_sizes is None else str(row.shrunk_sizes)
        expected = row.expected or "none"
        if row.expected is not None and not row.expected_caught:
            expected += " (MISSED)"
        lines.append(
            f"| {row.name} | {expected} | {'yes' if row.caught else 'no'} | {_catching_cell(row)} "
            f"| {first} | {sizes} | {row.total_s:.1f} |"
        )
    return "\n".join(lines)


def summarize(rows, whole_run_s, profile):
    """Return the summary figures and whether each target is met."""
    mutants = [row for row in rows if row.name in MUTANTS]
    controls = [row for row in rows if row.name in CONTROLS]
    caught = [row for row in mutants if row.caught]
    by_claims = [row for row in mutants if set(row.catching) - {ORACLE}]
    catch_times = [row.first_catch_s for row in caught]
    catch_cpu_times = [row.first_catch_cpu_s for row in caught]

    summary = {
        "profile": profile,
        "mutants": len(mutants),
        "caught": len(caught),
        "kill_rate": len(caught) / len(mutants) if mutants else None,
        "caught_without_oracle": len(by_claims),
        "kill_rate_without_oracle": len(by_claims) / len(mutants) if mutants else None,
        "not_caught": [row.name for row in mutants if not row.caught],
        "expected_property_missed": [row.name for row in mutants if not row.expected_caught],
        "false_alarms_on_controls": {row.name: row.catching for row in controls if row.catching},
        "median_catch_s": statistics.median(catch_times) if catch_times else None,
        "median_catch_cpu_s": statistics.median(catch_cpu_times) if catch_cpu_times else None,
        "whole_run_s": whole_run_s,
        "cpu_s": sum(row.cpu_s for row in rows),
    }
    summary["targets"] = _targets_met(summary, profile)
    return summary


def _targets_met(summary, profile):
    targets = TARGETS.get(profile)
    if targets is None:
        return None
    met = {}
    for key, target in targets.items():
        value = summary[key]
        if value is None:
            met[key] = {"target": target, "value": None, "met": False}
        elif key == "kill_rate":
            met[key] = {"target": target, "value": value, "met": value >= target}
        else:
            met[key] = {"target": target, "value": value, "met": value <= target}
    return met


def format_summary(summary):
    """Return the summary as lines of text."""
    lines = [
        f"kill rate: {summary['caught']}/{summary['mutants']} mutants caught "
        f"({_percent(summary['kill_rate'])}); by a property other than {ORACLE}: "
        f"{summary['caught_without_oracle']}/{summary['mutants']} "
        f"({_percent(summary['kill_rate_without_oracle'])})",
        f"not caught: {', '.join(summary['not_caught']) or 'none'}",
        f"expected property missed: {', '.join(summary['expected_property_missed']) or 'none'}",
        f"median time to catch: {_seconds(summary['median_catch_s'])} wall, "
        f"{_seconds(summary['median_catch_cpu_s'])} CPU (wall time grows with other load on the machine)",
        f"whole run: {summary['whole_run_s']:.1f} s wall, {summary['cpu_s']:.1f} s CPU "
        f"summed over the workers",
    ]
    if summary["false_alarms_on_controls"]:
        lines.append(f"FALSE ALARMS on controls: {summary['false_alarms_on_controls']}")

    targets = summary["targets"]
    if targets is None:
        lines.append(f"targets: none set for profile {summary['profile']!r}")
        return lines
    for key, figures in targets.items():
        value = figures["value"]
        shown = _percent(value) if key == "kill_rate" else _seconds(value)
        wanted = _percent(figures["target"]) if key == "kill_rate" else f"{figures['target']:g} s"
        bound = ">=" if key == "kill_rate" else "<="
        lines.append(f"target {key} {bound} {wanted}: {shown}, {'met' if figures['met'] else 'NOT met'}")
    return lines


def _percent(value):
    return "-" if value is None else f"{100 * value:.0f}%"


def _seconds(value):
    return "-" if value is None else f"{value:.2f} s"


def machine_lines(jobs):
    """Describe the machine and the run, one line each."""
    return [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"usable by this process: {len(os.sched_getaffinity(0))}",
        f"load average before the run (1, 5, 15 min): "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        describe_environment(),
        f"worker processes: {jobs}",
    ]


def main(argv=None):
    args = parse_args(argv)
    header = machine_lines(args.jobs)
    for line in header:
        print(line)
    print(f"profile {args.profile}: {len(args.names)} implementations x "
          f"{len(select_properties())} properties\n", flush=True)

    start = time.perf_counter()
    try:
        rows = run_all(args.names, args.profile, args.jobs)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    whole_run_s = time.perf_counter() - start

    summary = summarize(rows, whole_run_s, args.profile)
    print(format_table(rows))
    print()
    for line in format_summary(summary):
        print(line)

    if args.json:
        rows_json = [dict(asdict(row), caught=row.caught, expected_caught=row.expected_caught)
                     for row in rows]
        document = {"machine": header, "summary": summary, "rows": rows_json}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
