"""Case files: one failing, shrunk case that ``bilstm-verify replay`` re-runs.

A case file is a zip archive (ending ``.npz``) holding ``meta.json`` (the
property, the implementation, package versions, seeds, the verdict and the
case's own metadata) and one ``arrays/<name>.npy`` per array.  Arrays are
read with ``allow_pickle=False`` and the metadata with :mod:`json`, so
loading a file never executes code from it.  Files are written to a
temporary name and then linked into place, so a reader never sees half a
file and an existing file is never overwritten.
"""

import io
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bilstm._validate import validate_lengths, validate_params, validate_state, validate_x
from bilstm.errors import BiLSTMError
from bilstm.merge import canonical_merge_mode
from bilstm.reference import output_shape
from properties.errors import CaseFileError
from properties.strategies import Case

SCHEMA = "bilstm-verify case"
FORMAT = 1

MAX_MEMBERS = 64
"""More members than a case has arrays (at most 13) plus the metadata, with room to grow."""

MAX_MEMBER_BYTES = 256 * 2**20
"""Per-member size cap on reading, which stops a zip bomb before it inflates."""

MAX_META_BYTES = 2**20

_ARRAY_MEMBER = re.compile(r"^arrays/([A-Za-z0-9_.]+)\.npy$")
_REQUIRED_META = {"schema": str, "format": int, "property": str, "implementation": str,
                  "extra_seed": int, "case": dict}


@dataclass(frozen=True)
class SavedCase:
    """A case file's content: the case, the seed for the property's own draws, the metadata."""

    case: Case
    extra_seed: int
    meta: dict


def save_case(directory, case, *, property_name, extra_seed, meta):
    """Write ``case`` to a new file in ``directory`` and return its path.

    Parameters
    ----------
    directory : path-like
        Created if missing.
    case : Case
    property_name : str
    extra_seed : int
        Seed of the property's own random draws.
    meta : dict
        Further JSON-serialisable metadata: implementation, versions, verdict, message.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    arrays, case_meta = case.to_arrays()
    # The caller's metadata goes in first, so it cannot replace the fields the loader trusts.
    full_meta = dict(meta)
    full_meta.update({"schema": SCHEMA, "format": FORMAT, "property": property_name,
                      "extra_seed": int(extra_seed), "case": case_meta, "summary": case.summary()})
    payload = _zip_bytes(arrays, full_meta)

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(full_meta.get("implementation", "impl")))
    stem = f"{property_name}-{slug}"
    return _write_new(directory, stem, payload)


def _zip_bytes(arrays, meta):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("meta.json", json.dumps(meta, indent=2, sort_keys=True))
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(f"arrays/{name}.npy", member.getvalue())
    return buffer.getvalue()


def _write_new(directory, stem, payload):
    """Write ``payload`` atomically under the first free name ``stem[-k].npz``."""
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    umask = os.umask(0)
    os.umask(umask)
    # mkstemp creates the file private (0600); a case file is ordinary data.
    os.chmod(temporary, 0o666 & ~umask)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())

        for k in range(1, 10_000):
            path = directory / (f"{stem}.npz" if k == 1 else f"{stem}-{k}.npz")
            try:
                # link() fails if the name exists, so nothing is overwritten.
                os.link(temporary, path)
                return path
            except FileExistsError:
                continue
            except OSError:
                # No hard links on this file system: exclusive creation still
                # never overwrites, at the cost of a reader seeing the file grow.
                try:
                    with open(path, "xb") as file:
                        file.write(payload)
                    return path
                except FileExistsError:
                    continue
        raise CaseFileError(f"no free file name for {stem}*.npz in {directory}; clean it up")
    finally:
        os.unlink(temporary)


def load_case(path):
    """Read and validate a case file.

    Raises
    ------
    CaseFileError
        When the file is missing, not a zip archive, truncated, corrupt,
        oversized, contains unexpected members or pickled objects, or its
        metadata does not describe a case.
    """
    path = Path(path)
    if not path.is_file():
        raise CaseFileError(f"case file {str(path)!r} does not exist or is not a file")

    try:
        with zipfile.ZipFile(path) as archive:
            members = _check_members(path, archive)
            meta = _read_meta(path, archive)
            arrays = {name: _read_array(path, archive, member) for name, member in members.items()}
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as exc:
        raise CaseFileError(
            f"case file {str(path)!r} is corrupt or truncated ({exc}); "
            f"re-run bilstm-verify check to write it again"
        ) from None

    try:
        case = Case.from_arrays(arrays, meta["case"])
    except CaseFileError as exc:
        raise CaseFileError(f"case file {str(path)!r}: {exc}") from None
    _check_consistent(path, case)
    return SavedCase(case=case, extra_seed=meta["extra_seed"], meta=meta)


def _check_consistent(path, case):
    """Check the arrays against each other with the reference's own validation."""
    try:
        merge_mode = canonical_merge_mode(case.merge_mode)
        x = validate_x(case.x)
        n_ex, n_in, n_t = x.shape
        hidden, _ = validate_params(case.params, n_in, x.dtype)
        validate_lengths(case.lengths, n_ex, n_t)
        for name in ("h0", "c0", "dh_n", "dc_n"):
            validate_state(name, getattr(case, name), (2, n_ex, hidden), x.dtype)
        expected = output_shape(n_ex, hidden, n_t, merge_mode)
    except BiLSTMError as exc:
        raise CaseFileError(f"case file {str(path)!r} contains an invalid case: {exc}") from None

    if case.dy.shape != expected:
        raise CaseFileError(f"case file {str(path)!r}: dy has shape {case.dy.shape} but the "
                            f"case's output has shape {expected}")


def _check_members(path, archive):
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CaseFileError(f"case file {str(path)!r} has {len(infos)} members, more than "
                            f"the {MAX_MEMBERS} a case file can have; it was not written by this tool")

    names = [info.filename for info in infos]
    if "meta.json" not in names:
        raise CaseFileError(f"case file {str(path)!r} has no meta.json; it is not a case file")

    arrays = {}
    for info in infos:
        if info.file_size > MAX_MEMBER_BYTES:
            raise CaseFileError(f"case file {str(path)!r}: member {info.filename!r} inflates to "
                                f"{info.file_size} bytes, over the {MAX_MEMBER_BYTES}-byte limit")
        if info.filename == "meta.json":
            continue
        match = _ARRAY_MEMBER.match(info.filename)
        if match is None:
            raise CaseFileError(f"case file {str(path)!r} has an unexpected member "
                                f"{info.filename!r}; only meta.json and arrays/<name>.npy belong there")
        arrays[match.group(1)] = info.filename
    return arrays


def _read_meta(path, archive):
    raw = archive.open("meta.json").read(MAX_META_BYTES + 1)
    if len(raw) > MAX_META_BYTES:
        raise CaseFileError(f"case file {str(path)!r}: meta.json is over {MAX_META_BYTES} bytes")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaseFileError(f"case file {str(path)!r}: meta.json is not valid JSON ({exc})") from None

    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise CaseFileError(f"case file {str(path)!r}: meta.json does not declare schema {SCHEMA!r}; "
                            f"it is not a bilstm-verify case file")
    if meta.get("format") != FORMAT:
        raise CaseFileError(f"case file {str(path)!r} has format {meta.get('format')!r}; this "
                            f"version reads format {FORMAT}, so upgrade bilstm-verify or re-run check")
    for key, kind in _REQUIRED_META.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise CaseFileError(f"case file {str(path)!r}: meta.json field {key!r} must be a "
                                f"{kind.__name__}, found {meta.get(key)!r}")
    if not 0 <= meta["extra_seed"] < 2**32:
        raise CaseFileError(f"case file {str(path)!r}: meta.json field 'extra_seed' must be in "
                            f"[0, 2**32), found {meta['extra_seed']}")
    return meta


def _read_array(path, archive, member):
    _check_declared_size(path, archive, member)
    try:
        with archive.open(member) as file:
            array = np.lib.format.read_array(file, allow_pickle=False)
    except ValueError as exc:
        raise CaseFileError(f"case file {str(path)!r}: {member} could not be read as a plain "
                            f"numeric array ({exc})") from None

    if array.dtype.kind not in "fiu":
        raise CaseFileError(f"case file {str(path)!r}: {member} has dtype {array.dtype}; "
                            f"case arrays are floats or integers")
    return array


def _check_declared_size(path, archive, member):
    """Reject a header whose shape needs more bytes than the member holds.

    numpy allocates the declared shape before it reads any data, so without
    this check a tiny hostile member could ask for terabytes.
    """
    try:
        with archive.open(member) as file:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(file)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(file)
    except ValueError as exc:
        raise CaseFileError(f"case file {str(path)!r}: {member} has no valid .npy header ({exc})") from None

    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if needed > archive.getinfo(member).file_size:
        raise CaseFileError(f"case file {str(path)!r}: {member} declares shape {shape} of "
                            f"{dtype}, {needed} bytes, but holds only "
                            f"{archive.getinfo(member).file_size}; the file is corrupt or hostile")
