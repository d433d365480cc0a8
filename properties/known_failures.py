"""Known-failure lists: the properties an implementation is known to fail, and why.

A known-failure file has one entry per line::

    # comment
    statelessness: numpy-ml starts each forward call from the previous final state
    merge_backward_consistency multiply: numpy-ml's multiply backward raises

- the property is a name from ``bilstm-verify list``;
- the merge mode is optional: ``concat``, ``sum``, ``average``, ``multiply``
  or ``None`` (Keras spellings ``ave`` and ``mul`` are accepted).  Without it
  the entry covers every merge mode;
- the reason after the first ``:`` is required and runs to the end of the
  line, so a ``#`` inside it belongs to the reason.

Blank lines and lines whose first non-blank character is ``#`` are skipped.

The entries of an adapter's built-in ``known_failures`` dict (property name
to reason) are added as entries for every merge mode, unless the file has an
entry without a merge mode for the same property.

A listed failure gets the verdict ``known failure`` in ``bilstm-verify check``
and is an expected failure (xfail) in the pytest plugin.  An entry whose
property passed is *stale*: ``check`` gives the verdict
``stale known failure`` and prints a warning, and the pytest plugin shows the
tests as XPASS and lists the entry in a warning section.  Neither changes the
exit status, because a stale entry hides no failure; it only needs deleting.
"""

from dataclasses import dataclass, replace
from pathlib import Path

from bilstm.errors import InvalidArgumentError
from bilstm.merge import MERGE_MODES, canonical_merge_mode
from properties.catalog import applicable_merge_modes
from properties.errors import UsageError
from properties.runner import PASSED, select_properties

STALE_KNOWN_FAILURE = "stale known failure"
"""Verdict of a property that passed although a known-failure entry lists it."""

ENTRY_RULE = "each entry is 'property [merge_mode]: reason'"
ENTRY_EXAMPLE = "statelessness concat: keeps the final state between forward calls"


@dataclass(frozen=True)
class KnownFailure:
    """One entry of a known-failure list.

    Attributes
    ----------
    property_name : str
    merge_mode : str or None
        Canonical merge mode the entry covers; ignored when ``all_modes``.
    all_modes : bool
        The entry names no merge mode, so it covers every merge mode.
    reason : str
    source : str
        ``"FILE:LINE"``, or ``"built into the adapter NAME"``.
    """

    property_name: str
    merge_mode: str | None
    all_modes: bool
    reason: str
    source: str

    def covers(self, property_name, merge_mode):
        """Return True when a failure of ``property_name`` in ``merge_mode`` is this entry's."""
        if property_name != self.property_name:
            return False
        return self.all_modes or canonical_merge_mode(merge_mode) == self.merge_mode

    def label(self):
        """Return the entry's key as written in a file, e.g. ``statelessness concat``."""
        return self.property_name if self.all_modes else f"{self.property_name} {self.merge_mode}"


class KnownFailures:
    """The known failures of one implementation: a file's entries, then the adapter's.

    Parameters
    ----------
    entries : iterable of KnownFailure
        In lookup order: an entry for one merge mode is preferred to one for
        every merge mode, and among equals the earlier entry wins.
    """

    def __init__(self, entries=()):
        self.entries = tuple(entries)

    def __len__(self):
        return len(self.entries)

    def entry_for(self, property_name, merge_mode):
        """Return the entry that covers a failure of ``property_name`` in ``merge_mode``, or None."""
        matches = [e for e in self.entries if e.covers(property_name, merge_mode)]
        matches.sort(key=lambda entry: entry.all_modes)
        return matches[0] if matches else None

    def reason(self, property_name, merge_mode):
        """Return why a failure is expected, with the entry's source, or None.

        This is the ``known_failures`` callable of
        :func:`properties.runner.run_property`.
        """
        entry = self.entry_for(property_name, merge_mode)
        return None if entry is None else f"{entry.reason} ({entry.source})"

    def covering(self, property_name, merge_modes):
        """Return the entries that a pass of ``property_name`` over ``merge_modes`` contradicts."""
        modes = {canonical_merge_mode(mode) for mode in merge_modes}
        return [e for e in self.entries if e.property_name == property_name
                and (e.all_modes or e.merge_mode in modes)]

    def review(self, result, prop, capabilities, requested_modes=None):
        """Return ``result``, or a stale verdict when it passed while entries list it as failing.

        Parameters
        ----------
        result : properties.runner.PropertyResult
        prop : properties.catalog.Property
        capabilities : properties.protocol.Capabilities
        requested_modes : list of str or None, optional
            The merge modes ``--merge-mode`` asked for; ``None`` for all.
        """
        if result.verdict != PASSED:
            return result
        drawn = applicable_merge_modes(prop, capabilities)
        if requested_modes is not None:
            drawn &= set(requested_modes)
        stale = self.covering(result.name, drawn)
        if not stale:
            return result

        lines = [f"{entry.source}: '{entry.label()}' is listed as a known failure "
                 f"({entry.reason}), but the property passed" for entry in stale]
        lines.append("remove the entry, or run more examples if the failure is rare")
        return replace(result, verdict=STALE_KNOWN_FAILURE, message="\n".join(lines))

    def describe(self):
        """Return a one-line summary for report headers."""
        if not self.entries:
            return "none"
        sources = {}
        for entry in self.entries:
            origin = entry.source.rpartition(":")[0] if ":" in entry.source else entry.source
            sources[origin] = sources.get(origin, 0) + 1
        parts = [f"{count} {origin}" if origin.startswith("built into") else f"{count} from {origin}"
                 for origin, count in sources.items()]
        return f"{len(self.entries)} entries ({', '.join(parts)})"


def parse_known_failures(text, source):
    """Parse the text of a known-failure file.

    Parameters
    ----------
    text : str
    source : str
        The file's name, used in messages and in each entry's ``source``.

    Returns
    -------
    list of KnownFailure
        In file order.

    Raises
    ------
    UsageError
        For the first invalid line, naming the file, the line number and the rule.
    """
    entries = []
    first_line = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue

        entry = _parse_entry(line, f"{source}:{number}")
        key = (entry.property_name, entry.all_modes, entry.merge_mode)
        if key in first_line:
            raise _entry_error(f"{source}:{number}", line,
                               f"'{entry.label()}' is listed twice (first on line "
                               f"{first_line[key]}); keep one entry")
        first_line[key] = number
        entries.append(entry)
    return entries


def _parse_entry(line, where):
    head, colon, reason = line.partition(":")
    if not colon:
        raise _entry_error(where, line, "there is no ':' between the property and the reason")
    reason = reason.strip()
    if not reason:
        raise _entry_error(where, line, "the reason after ':' is empty; say why the property fails")

    words = head.split()
    if not 1 <= len(words) <= 2:
        raise _entry_error(where, line, f"expected a property name and at most one merge mode "
                                        f"before ':', found {len(words)} words")
    name = _check_property(where, line, words[0])
    if len(words) == 1:
        return KnownFailure(name, None, True, reason, where)
    return KnownFailure(name, _check_merge_mode(where, line, name, words[1]), False, reason, where)


def _check_property(where, line, name):
    known = {prop.name: prop for prop in select_properties()}
    if name not in known:
        raise _entry_error(where, line, f"there is no property {name!r}; run "
                                        f"'bilstm-verify list' for the {len(known)} names")
    return name


def _check_merge_mode(where, line, name, word):
    try:
        mode = canonical_merge_mode(None if word == "None" else word)
    except InvalidArgumentError:
        valid = ", ".join(str(m) for m in MERGE_MODES)
        raise _entry_error(where, line, f"{word!r} is not a merge mode; use one of {valid}, "
                                        f"or leave it out to cover every merge mode") from None

    prop = {p.name: p for p in select_properties()}[name]
    if prop.merge_modes is not None and mode not in prop.merge_modes:
        runs_in = ", ".join(str(m) for m in MERGE_MODES if m in prop.merge_modes)
        raise _entry_error(where, line, f"property {name!r} never runs in merge mode {word}, "
                                        f"only in {runs_in}; pick one of those")
    return mode


def _entry_error(where, line, problem):
    return UsageError(f"{where}: invalid known-failure entry {line!r}: {problem}; "
                      f"{ENTRY_RULE}, for example '{ENTRY_EXAMPLE}'")


def read_known_failures(path):
    """Read and parse a known-failure file; return its list of :class:`KnownFailure`.

    Raises
    ------
    UsageError
        When the file is missing, unreadable, not UTF-8, or has an invalid entry.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"known-failure file {str(path)!r} does not exist or is not a file; "
                         f"create it ({ENTRY_RULE}) or fix the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"known-failure file {str(path)!r} is not UTF-8 text ({exc}); "
                         f"save it as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"known-failure file {str(path)!r} could not be read ({exc})") from None
    return parse_known_failures(text, str(path))


def adapter_entries(implementation):
    """Return the entries of an implementation's built-in ``known_failures`` dict."""
    source = f"built into the adapter {implementation.name}"
    return [KnownFailure(name, None, True, reason, source)
            for name, reason in implementation.known_failures.items()]


def load_known_failures(path, implementation):
    """Return the :class:`KnownFailures` of ``implementation``: the file's entries, then the adapter's.

    Parameters
    ----------
    path : path-like or None
        A known-failure file; ``None`` for the adapter's entries alone.
    implementation : properties.protocol.Implementation
    """
    entries = [] if path is None else read_known_failures(path)
    listed = {(e.property_name, e.all_modes, e.merge_mode) for e in entries}
    for entry in adapter_entries(implementation):
        if (entry.property_name, True, None) not in listed:
            entries.append(entry)
    return KnownFailures(entries)


def print_stale_warnings(results, out):
    """Print a warning for every result whose verdict is :data:`STALE_KNOWN_FAILURE`."""
    for result in results:
        if result.verdict != STALE_KNOWN_FAILURE:
            continue
        print(f"\nwarning: stale known failure: {result.name}", file=out)
        for line in result.message.splitlines():
            print(f"  {line}", file=out)
