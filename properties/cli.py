"""Command line of the harness: ``bilstm-verify check | list | replay | export-test``.

Exit status: 0 when every applicable property passes, 1 when any fails or
the implementation breaks its contract, 2 for usage errors (bad options, an
unknown implementation, an unreadable case file).
"""

import argparse
import sys
import time
from pathlib import Path

from bilstm._parallel import setting as parallel_directions_setting
from bilstm.merge import MERGE_MODES, canonical_merge_mode
from bilstm.errors import InvalidArgumentError
from properties import export, matrix, reports
from properties.adapters import BUILTIN, load_implementation
from properties.casefile import load_case
from properties.catalog import Subject
from properties.defaults import DEFAULT_CASE_DIR
from properties.errors import HarnessError, UsageError
from properties.guard import DEFAULT_TIME_LIMIT
from properties.known_failures import load_known_failures, print_stale_warnings
from properties.runner import (
    FAILING_VERDICTS, KNOWN_FAILURE, NOT_APPLICABLE, case_saver, describe_environment,
    exit_status, replay, run_property, select_properties,
)
from properties.settings import DEFAULT_PROFILE, PROFILES, profile_settings



def _merge_mode_arg(text):
    try:
        return canonical_merge_mode(None if text == "None" else text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time_limit_arg(text):
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and seconds != float("inf")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds > 0; pass for example --time-limit 30"
        )
    return seconds


def build_parser():
    """Return the argument parser, whose help text states every default."""
    parser = argparse.ArgumentParser(
        prog="bilstm-verify",
        description="Property-based verification of bidirectional LSTM implementations.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="run properties against an implementation")
    _add_impl(check)
    check.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES),
                       help=f"Hypothesis settings profile (default: {DEFAULT_PROFILE})")
    check.add_argument("--max-examples", type=int, default=None,
                       help="examples per property, overriding the profile")
    check.add_argument("--seed", type=int, default=None,
                       help="random seed; turns the ci profile's derandomization off")
    check.add_argument("--property", action="append", default=None, metavar="NAME",
                       help="run only this property (repeat or separate with commas)")
    check.add_argument("--merge-mode", action="append", type=_merge_mode_arg, default=None,
                       metavar="MODE", help="restrict to this merge mode (repeatable; "
                       f"one of {', '.join(str(m) for m in MERGE_MODES)})")
    check.add_argument("--case-dir", default=DEFAULT_CASE_DIR,
                       help=f"folder for case files of failures (default: ./{DEFAULT_CASE_DIR})")
    check.add_argument("--quiet", action="store_true", help="no progress lines")
    check.add_argument("--known-failures", default=None, metavar="FILE",
                       help="file of expected failures, one 'property [merge_mode]: reason' a line")
    reports.add_report_options(check)

    commands.add_parser("list", help="list the properties and the claims they check")

    replay_parser = commands.add_parser("replay", help="re-run one saved case")
    replay_parser.add_argument("case", help="path of a case file written by check")
    replay_parser.add_argument("--impl", default=None,
                               help="implementation (default: the one in the case file)")
    replay_parser.add_argument("--time-limit", type=_time_limit_arg, default=DEFAULT_TIME_LIMIT,
                               help=f"seconds per call into the implementation (default: {DEFAULT_TIME_LIMIT:g})")
    export.add_export_parser(commands)
    _add_matrix_parser(commands)
    return parser


def _add_matrix_parser(commands):
    matrix_parser = commands.add_parser(
        "matrix", help="run every property on several implementations; write a verdict table")
    matrix_parser.add_argument(
        "--impl", action="append", default=None, metavar="NAME",
        help=f"implementation (repeatable; default: {', '.join(matrix.DEFAULT_IMPLEMENTATIONS)})")
    matrix_parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES),
                               help=f"Hypothesis settings profile (default: {DEFAULT_PROFILE})")
    matrix_parser.add_argument("--max-examples", type=int, default=None,
                               help="examples per property, overriding the profile")
    matrix_parser.add_argument("--markdown", default=None, metavar="FILE",
                               help="write the table as Markdown to FILE")
    matrix_parser.add_argument("--json", default=None, metavar="FILE",
                               help="write the verdicts as JSON to FILE")
    matrix_parser.add_argument("--case-dir", default=DEFAULT_CASE_DIR,
                               help=f"folder for case files of failures (default: ./{DEFAULT_CASE_DIR})")
    matrix_parser.add_argument("--time-limit", type=_time_limit_arg, default=DEFAULT_TIME_LIMIT,
                               help=f"seconds per call into an implementation (default: {DEFAULT_TIME_LIMIT:g})")


def _add_impl(parser):
    parser.add_argument("--impl", default="reference",
                        help=f"built-in name ({', '.join(BUILTIN)}) or module:attribute "
                             f"(default: reference)")
    parser.add_argument("--time-limit", type=_time_limit_arg, default=DEFAULT_TIME_LIMIT,
                        help=f"seconds per call into the implementation before it counts as "
                             f"hung (default: {DEFAULT_TIME_LIMIT:g})")


def _split_names(values):
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _print_header(implementation, spec, args, run_settings, out):
    print(f"bilstm-verify check: implementation {spec!r} ({implementation.name} "
          f"{implementation.version()})", file=out)
    print(f"  capabilities: {implementation.capabilities.describe()}", file=out)
    print(f"  profile {args.profile}: max_examples={run_settings.max_examples}, "
          f"derandomize={run_settings.derandomize}, seed={args.seed}, "
          f"time limit {args.time_limit:g} s per call", file=out)
    print(f"  {describe_environment()}", file=out)


def _print_table(results, out):
    width = max(len(r.name) for r in results)
    print("", file=out)
    print(f"{'property':<{width}}  {'verdict':<20}  examples  seconds", file=out)
    for r in results:
        print(f"{r.name:<{width}}  {r.verdict:<20}  {r.examples:>8}  {r.seconds:7.2f}", file=out)


def _print_failures(results, out):
    for r in results:
        if r.verdict not in FAILING_VERDICTS + (KNOWN_FAILURE,):
            continue
        print(f"\n{r.verdict}: {r.name}", file=out)
        if r.case_summary:
            print(f"  shrunk case: {r.case_summary}", file=out)
        for line in r.message.splitlines():
            print(f"  {line}", file=out)
        if r.case_path:
            print(f"  case file: {r.case_path}", file=out)
            print(f"  replay: bilstm-verify replay {r.case_path}", file=out)


def _progress(index, total, prop, result, out):
    print(f"[{index}/{total}] {prop.name}: {result.verdict} "
          f"({result.examples} examples, {result.seconds:.2f} s)", file=out, flush=True)


def command_check(args, out):
    """Run ``check``; return the exit status."""
    if Path(args.case_dir).exists() and not Path(args.case_dir).is_dir():
        raise UsageError(f"--case-dir {args.case_dir!r} exists and is not a folder; pass a "
                         f"folder (it is created when the first failure is saved)")
    run_settings = profile_settings(args.profile, max_examples=args.max_examples, seed=args.seed)
    implementation = load_implementation(args.impl)
    props = select_properties(_split_names(args.property))
    subject = Subject(implementation, args.time_limit)
    save = case_saver(args.case_dir, args.impl, implementation, args.profile, args.seed)
    known = load_known_failures(args.known_failures, implementation)

    _print_header(implementation, args.impl, args, run_settings, out)
    print(f"  known failures: {known.describe()}", file=out)
    start = time.perf_counter()
    results = []
    for index, prop in enumerate(props, start=1):
        if not args.quiet:
            print(f"[{index}/{len(props)}] {prop.name} ...", file=out, flush=True)
        result = run_property(prop, subject, run_settings, merge_modes=args.merge_mode,
                              seed=args.seed, save=save, known_failures=known.reason)
        result = known.review(result, prop, subject.capabilities, args.merge_mode)
        results.append(result)
        if not args.quiet:
            _progress(index, len(props), prop, result, out)

    _print_table(results, out)
    _print_failures(results, out)
    print_stale_warnings(results, out)
    pictures = reports.save_gradient_pictures(results, implementation, args.time_limit, out)
    status = exit_status(results)
    counts = {v: sum(r.verdict == v for r in results) for v in dict.fromkeys(r.verdict for r in results)}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    print(f"\n{summary} in {time.perf_counter() - start:.1f} s; exit status {status}", file=out)
    reports.write_reports(args, reports.run_header(args, implementation, run_settings, known),
                          results, pictures=pictures, status=status,
                          seconds=time.perf_counter() - start, out=out)
    return status


def command_matrix(args, out):
    """Run ``matrix``; return 1 when any implementation fails a property, else 0."""
    specs = matrix.check_specs(args.impl or list(matrix.DEFAULT_IMPLEMENTATIONS))
    run_settings = profile_settings(args.profile, max_examples=args.max_examples)

    def progress(spec, prop, result):
        print(f"{spec}: {prop.name}: {result.verdict} ({result.seconds:.2f} s)", file=out, flush=True)

    table = matrix.run_matrix(specs, run_settings, case_dir=args.case_dir, profile=args.profile,
                              time_limit_s=args.time_limit, progress=progress)
    print("", file=out)
    print(matrix.markdown_table(table), file=out)
    matrix.write_matrix(table, markdown=args.markdown, json_path=args.json)
    return matrix.matrix_status(table)


def command_list(args, out):
    """Print every property with its claim and requirements; return 0."""
    for prop in select_properties():
        needs = list(prop.requires) + (["concat"] if prop.needs_concat else [])
        print(f"{prop.name}  (needs: {', '.join(needs) if needs else 'forward only'})", file=out)
        for line in prop.claim.splitlines():
            print(f"    {line}".rstrip(), file=out)
        print("", file=out)
    return 0


def command_replay(args, out):
    """Replay one case file; return 0 when the property now passes, else 1."""
    saved = load_case(args.case)
    spec = args.impl or saved.meta["implementation"]
    implementation = load_implementation(spec)
    result = replay(saved, args.case, implementation, time_limit_s=args.time_limit)

    print(f"bilstm-verify replay: {args.case}", file=out)
    print(f"  property {result.name}, implementation {spec!r} ({implementation.version()}); "
          f"recorded verdict: {saved.meta.get('verdict', 'unknown')}", file=out)
    print(f"  case: {result.case_summary}", file=out)
    print(f"verdict: {result.verdict}", file=out)
    for line in result.message.splitlines():
        print(f"  {line}", file=out)
    if result.verdict == NOT_APPLICABLE:
        return 0
    return exit_status([result])


COMMANDS = {"check": command_check, "list": command_list, "replay": command_replay,
            "matrix": command_matrix,
            "export-test": export.command_export_test}


def main(argv=None, out=None):
    """Entry point of ``bilstm-verify`` and ``python -m properties``."""
    out = sys.stdout if out is None else out
    args = build_parser().parse_args(argv)

    # An invalid value would otherwise surface inside every reference call,
    # where it reads as a failure of the implementation under check.
    try:
        parallel_directions_setting()
    except InvalidArgumentError as exc:
        print(f"bilstm-verify: error: {exc}", file=sys.stderr)
        return 2

    try:
        return COMMANDS[args.command](args, out)
    except HarnessError as exc:
        print(f"bilstm-verify: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader (for example `head`) closed the pipe: not an error of ours.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
