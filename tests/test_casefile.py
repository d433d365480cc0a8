"""Tests of properties.casefile: exact round trips, safe writes, and rejected files.

A case file is a zip archive of ``meta.json`` and ``arrays/<name>.npy``.
The bad files below are built from the members of a valid file, each with
one defect, so a test shows which defect :func:`load_case` rejects.
"""

import io
import json
import os
import pathlib
import zipfile

import numpy as np
import pytest

import properties.casefile as casefile
from properties.casefile import load_case, save_case
from properties.errors import CaseFileError, HarnessError

META = {"implementation": "reference", "verdict": "FAILED", "message": "y differs"}


def save(directory, case, *, property_name="statelessness", extra_seed=7, meta=META):
    return save_case(directory, case, property_name=property_name, extra_seed=extra_seed,
                     meta=dict(meta))


def members_of(path):
    """Return the members of the zip archive ``path`` as name -> bytes."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def npy_bytes(array, *, allow_pickle=False):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def load_member(members, name):
    return np.load(io.BytesIO(members[name]), allow_pickle=False)


def edit_meta(members, **changes):
    """Return ``members`` with keys of meta.json set (or removed, for a value of ...)."""
    meta = json.loads(members["meta.json"])
    for key, value in changes.items():
        if value is ...:
            del meta[key]
        else:
            meta[key] = value
    return {**members, "meta.json": json.dumps(meta).encode()}


def assert_bit_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        assert actual[key].shape == expected[key].shape, key
        assert actual[key].tobytes() == expected[key].tobytes(), key


@pytest.fixture
def valid_path(tmp_path, full_case):
    """Path of a valid case file of ``full_case``, in its own folder."""
    return save(tmp_path / "valid", full_case)


# Round trip.

@pytest.mark.parametrize("merge_mode, dtype, optional", [
    ("concat", "float64", False),
    (None, "float32", True),
    ("ave", "float64", True),
    ("multiply", "float32", False),
], ids=["concat-float64-bare", "None-float32-full", "ave-float64-full", "multiply-float32-bare"])
def test_round_trip_arrays_bit_equal(tmp_path, make_case, merge_mode, dtype, optional):
    case = make_case(merge_mode=merge_mode, dtype=dtype, optional=optional)

    # Signed zero and the smallest subnormal survive only a bit-exact format.
    case.x[0, 0, 0] = -0.0
    case.x[0, 0, 1] = np.finfo(dtype).smallest_subnormal

    loaded = load_case(save(tmp_path, case)).case
    expected_arrays, expected_meta = case.to_arrays()
    actual_arrays, actual_meta = loaded.to_arrays()
    assert_bit_equal(actual_arrays, expected_arrays)
    assert actual_meta == expected_meta


def test_round_trip_case_fields(tmp_path, full_case):
    loaded = load_case(save(tmp_path, full_case)).case

    assert loaded.sizes == full_case.sizes
    assert loaded.merge_mode is None
    assert loaded.dtype == "float32"
    assert loaded.weight_scale == full_case.weight_scale
    assert loaded.summary() == full_case.summary()


def test_round_trip_keeps_metadata(tmp_path, full_case):
    saved = load_case(save(tmp_path, full_case, property_name="gradient_input", extra_seed=12345))

    assert saved.extra_seed == 12345
    assert saved.meta["property"] == "gradient_input"
    assert saved.meta["summary"] == full_case.summary()
    assert saved.meta["schema"] == casefile.SCHEMA
    assert saved.meta["format"] == casefile.FORMAT
    for key, value in META.items():
        assert saved.meta[key] == value, key


def test_save_names_file_after_property(tmp_path, full_case):
    path = save(tmp_path, full_case, meta={**META, "implementation": "my.pkg:Model X"})

    assert path.parent == tmp_path
    assert path.name == "statelessness-my.pkg_Model_X.npz"


def test_save_creates_missing_folder(tmp_path, full_case):
    path = save(tmp_path / "a" / "b", full_case)

    assert path.is_file()


# Files are never overwritten, and writes are atomic.

def test_save_twice_gives_two_files(tmp_path, full_case):
    first = save(tmp_path, full_case)
    first_bytes = first.read_bytes()
    second = save(tmp_path, full_case)

    assert second != first
    assert first.read_bytes() == first_bytes
    assert second.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])


def test_save_keeps_foreign_file(tmp_path, full_case):
    foreign = tmp_path / "statelessness-reference.npz"
    foreign.write_bytes(b"written by someone else")

    path = save(tmp_path, full_case)

    assert path != foreign
    assert foreign.read_bytes() == b"written by someone else"


def test_save_leaves_no_temporary_file(tmp_path, full_case):
    path = save(tmp_path, full_case)

    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch, full_case):
    def fail(*args, **kwargs):
        raise OSError("planted failure in os.fsync")

    # fsync runs after the bytes were written to the temporary file.
    monkeypatch.setattr(casefile.os, "fsync", fail)
    with pytest.raises(OSError, match="planted failure"):
        save(tmp_path, full_case)

    assert list(tmp_path.iterdir()) == []


def test_save_without_hard_links(tmp_path, monkeypatch, full_case):
    def no_links(*args, **kwargs):
        raise OSError("planted: this file system has no hard links")

    monkeypatch.setattr(casefile.os, "link", no_links)
    path = save(tmp_path, full_case)

    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert load_case(path).case.summary() == full_case.summary()


# Bad files: each raises CaseFileError with a message naming the defect.

def _missing(valid, tmp_path):
    return tmp_path / "missing.npz"


def _directory(valid, tmp_path):
    path = tmp_path / "folder.npz"
    path.mkdir()
    return path


def _empty(valid, tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    return path


def _random_bytes(valid, tmp_path):
    path = tmp_path / "random.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _truncated(valid, tmp_path):
    data = valid.read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _edited(edit):
    """Return a table entry that writes the valid file's members after ``edit``."""
    def make(valid, tmp_path):
        return write_zip(tmp_path / "edited.npz", edit(members_of(valid)))
    return make


def _without(name):
    return lambda members: {k: v for k, v in members.items() if k != name}


def _replace(name, data):
    return lambda members: {**members, name: data}


def _array_edit(name, change):
    """Return an edit that replaces member ``name`` with ``change(its array)``."""
    return lambda members: {**members, name: npy_bytes(change(load_member(members, name)))}


def _many_members(members):
    extra = {f"arrays/extra{k}.npy": members["arrays/x.npy"]
             for k in range(casefile.MAX_MEMBERS)}
    return {**members, **extra}


def _wider(array):
    return np.concatenate([array, array], axis=-1)


BAD_FILES = [
    pytest.param(_missing, "does not exist or is not a file", id="load_case(missing)"),
    pytest.param(_directory, "does not exist or is not a file", id="load_case(directory)"),
    pytest.param(_empty, "corrupt or truncated", id="load_case(empty)"),
    pytest.param(_random_bytes, "corrupt or truncated", id="load_case(random bytes)"),
    pytest.param(_truncated, "corrupt or truncated", id="load_case(truncated)"),
    pytest.param(_edited(_without("meta.json")), "has no meta.json",
                 id="load_case(no meta.json)"),
    pytest.param(_edited(_replace("meta.json", b"{not json")), "meta.json is not valid JSON",
                 id="load_case(meta.json not JSON)"),
    pytest.param(_edited(_replace("meta.json", b"[1, 2]")), "does not declare schema",
                 id="load_case(meta.json a list)"),
    pytest.param(_edited(lambda m: edit_meta(m, schema="numpy archive")),
                 "does not declare schema 'bilstm-verify case'", id="load_case(schema wrong)"),
    pytest.param(_edited(lambda m: edit_meta(m, format=99)), "has format 99",
                 id="load_case(format=99)"),
    pytest.param(_edited(lambda m: edit_meta(m, property=...)),
                 "field 'property' must be a str", id="load_case(property missing)"),
    pytest.param(_edited(lambda m: edit_meta(m, extra_seed=True)),
                 "field 'extra_seed' must be a int", id="load_case(extra_seed=True)"),
    pytest.param(_edited(lambda m: edit_meta(m, extra_seed=-1)), "extra_seed",
                 id="load_case(extra_seed=-1)"),
    pytest.param(_edited(lambda m: edit_meta(m, case={"format": 1})),
                 "missing the keys", id="load_case(case metadata incomplete)"),
    pytest.param(_edited(_replace("../evil.py", b"raise SystemExit('executed')")),
                 "unexpected member '../evil.py'", id="load_case(member ../evil.py)"),
    pytest.param(_edited(_replace("arrays/sub/x.npy", b"")), "unexpected member",
                 id="load_case(member in subfolder)"),
    pytest.param(_edited(_many_members), "more than the 64", id="load_case(too many members)"),
    pytest.param(_edited(_replace("arrays/extra.npy", npy_bytes(np.zeros(1)))),
                 "unexpected keys \\['extra'\\]", id="load_case(unknown array)"),
    pytest.param(_edited(_without("arrays/params.b_fwd.npy")),
                 "missing the keys \\['params.b_fwd'\\]", id="load_case(param missing)"),
    pytest.param(_edited(_replace("arrays/x.npy", b"not an npy file")),
                 "arrays/x.npy has no valid .npy header", id="load_case(x not npy)"),
    pytest.param(_edited(_array_edit("arrays/x.npy", lambda x: x.astype(np.complex64))),
                 "has dtype complex64", id="load_case(x complex)"),
    pytest.param(_edited(_array_edit("arrays/x.npy", lambda x: x.astype(np.float64))),
                 "dtype float64, but the metadata requires", id="load_case(x float64)"),
    pytest.param(_edited(_array_edit("arrays/dy.npy", _wider)),
                 "dy has shape \\(2, 3, 2, 8\\) but the case's output has shape \\(2, 3, 2, 4\\)",
                 id="load_case(dy too wide)"),
    pytest.param(_edited(_array_edit("arrays/params.W_hh_bwd.npy", lambda w: w[:1])),
                 "contains an invalid case.*W_hh_bwd", id="load_case(W_hh_bwd shape)"),
    pytest.param(_edited(_array_edit("arrays/h0.npy", _wider)),
                 "contains an invalid case.*h0", id="load_case(h0 shape)"),
    pytest.param(_edited(_array_edit("arrays/lengths.npy", lambda n: n + 10)),
                 "contains an invalid case.*lengths", id="load_case(lengths > n_t)"),
]


@pytest.mark.parametrize("make_bad_file, message", BAD_FILES)
def test_bad_file_rejected(tmp_path, valid_path, make_bad_file, message):
    path = make_bad_file(valid_path, tmp_path)

    with pytest.raises(CaseFileError, match=message) as info:
        load_case(path)

    assert str(path) in str(info.value)


def test_bad_file_is_harness_error():
    assert issubclass(CaseFileError, HarnessError)


def test_member_outside_archive_not_written(tmp_path, valid_path):
    path = _edited(_replace("../evil.py", b"raise SystemExit('executed')"))(valid_path, tmp_path)

    with pytest.raises(CaseFileError):
        load_case(path)

    assert not (tmp_path / "evil.py").exists()
    assert not (tmp_path.parent / "evil.py").exists()


# Pickled objects are never unpickled.

class _TouchOnUnpickle:
    """An object whose unpickling creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _pickled_npy(marker):
    return npy_bytes(np.array([_TouchOnUnpickle(marker)], dtype=object), allow_pickle=True)


def test_pickled_npy_would_run_code(tmp_path):
    # Shows that the payload below is live: unpickling it does create the marker.
    marker = tmp_path / "control-marker"
    np.load(io.BytesIO(_pickled_npy(marker)), allow_pickle=True)

    assert marker.exists()


def test_pickled_array_not_unpickled(tmp_path, valid_path):
    marker = tmp_path / "marker"
    path = _edited(_replace("arrays/x.npy", _pickled_npy(marker)))(valid_path, tmp_path)

    with pytest.raises(CaseFileError, match="arrays/x.npy could not be read as a plain numeric array"):
        load_case(path)

    assert not marker.exists()


# Oversized members are rejected before they are inflated or allocated.

def test_member_over_size_cap(tmp_path, monkeypatch, valid_path):
    zeros = npy_bytes(np.zeros(100_000))
    path = _edited(_replace("arrays/x.npy", zeros))(valid_path, tmp_path)
    monkeypatch.setattr(casefile, "MAX_MEMBER_BYTES", 10_000)

    with pytest.raises(CaseFileError, match=f"inflates to {len(zeros)} bytes, over the 10000-byte"):
        load_case(path)

    assert os.path.getsize(path) < 10_000


def test_header_declaring_huge_array(tmp_path, valid_path):
    # The header claims 10**13 float64 entries (80 TB); the member is a few bytes.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**13,)})
    member = header.getvalue() + bytes(8)
    path = _edited(_replace("arrays/x.npy", member))(valid_path, tmp_path)

    with pytest.raises(CaseFileError, match="arrays/x.npy"):
        load_case(path)
