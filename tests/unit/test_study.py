"""Imaging studies: folder scan, deterministic tar stream, safe extraction."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import UID

from medledger import study
from medledger.errors import Conflict, IntegrityError, InvalidInput
from medledger.study import (
    ARCHIVE_MEDIA_TYPE,
    STUDY_RECORD_TYPE,
    StudyArchive,
    extract_study,
    scan_study,
)


def _testdata(name: str) -> Path:
    found = get_testdata_file(name)
    assert isinstance(found, str), name
    return Path(found)


CT = _testdata("CT_small.dcm")
MR = _testdata("MR_small.dcm")


def _write_instance(path: Path, sop_uid: str, *, study_uid: str | None = None) -> None:
    """A copy of CT_small.dcm with another SOPInstanceUID (same study unless told)."""
    ds = pydicom.dcmread(CT)
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    if study_uid is not None:
        ds.StudyInstanceUID = study_uid
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)


def _make_study(root: Path) -> dict[str, bytes]:
    """A three-instance CT study with a nested series folder; returns rel -> bytes."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CT, root / "IM0001.dcm")
    _write_instance(root / "series2" / "IM0002.dcm", "1.2.826.0.1.3680043.2.1125.1")
    _write_instance(root / "series2" / "IM0003.dcm", "1.2.826.0.1.3680043.2.1125.2")
    return {
        str(p.relative_to(root).as_posix()): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _stream_bytes(archive: StudyArchive) -> bytes:
    with archive.open() as fh:
        return fh.read()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --------------------------------------------------------------------------- scan


def test_constants() -> None:
    assert STUDY_RECORD_TYPE == "imaging-study"
    assert ARCHIVE_MEDIA_TYPE == "application/x-tar"


def test_scan_describes_study(tmp_path: Path) -> None:
    expected = _make_study(tmp_path / "s")
    archive = scan_study(tmp_path / "s")
    ct = pydicom.dcmread(CT)
    assert [rel for rel, _, _ in archive.files] == sorted(expected)
    assert [size for _, _, size in archive.files] == [len(expected[r]) for r in sorted(expected)]
    assert all(path.is_absolute() for _, path, _ in archive.files)
    assert archive.study_uid == ct.StudyInstanceUID
    assert archive.modalities == ["CT"]
    assert archive.patient_ids == [ct.PatientID]
    assert archive.instances == 3
    summary = archive.summary()
    assert summary == {
        "study_uid": ct.StudyInstanceUID,
        "files": 3,
        "instances": 3,
        "size": archive.size,
        "modalities": ["CT"],
        "patient_ids": [ct.PatientID],
    }


def test_hidden_entries_are_skipped(tmp_path: Path) -> None:
    _make_study(tmp_path / "s")
    (tmp_path / "s" / ".DS_Store").write_bytes(b"not dicom")
    (tmp_path / "s" / ".git").mkdir()
    (tmp_path / "s" / ".git" / "config").write_text("not dicom")
    archive = scan_study(tmp_path / "s")
    assert all(not part.startswith(".") for rel, _, _ in archive.files for part in rel.split("/"))
    assert len(archive.files) == 3


def test_non_dicom_file_rejected(tmp_path: Path) -> None:
    _make_study(tmp_path / "s")
    (tmp_path / "s" / "series2" / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "NOT_DICOM"
    assert "series2/notes.txt" in err.value.message


def test_dicm_magic_without_valid_content_rejected(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "fake.dcm").write_bytes(bytes(128) + b"DICM" + b"garbage")
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "NOT_DICOM"
    assert "fake.dcm" in err.value.message


def test_dicom_without_preamble_rejected(tmp_path: Path) -> None:
    # Valid DICOM content but not Part 10 (no preamble / DICM prefix).
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "raw.dcm").write_bytes(CT.read_bytes()[132:])
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "NOT_DICOM"


def test_mixed_studies_rejected(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    shutil.copyfile(CT, tmp_path / "s" / "ct.dcm")
    shutil.copyfile(MR, tmp_path / "s" / "mr.dcm")
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "MIXED_STUDIES"
    # The message names the files, never the UIDs.
    assert "ct.dcm" in err.value.message and "mr.dcm" in err.value.message
    assert pydicom.dcmread(CT).StudyInstanceUID not in err.value.message


def test_changed_study_uid_rejected(tmp_path: Path) -> None:
    _make_study(tmp_path / "s")
    _write_instance(tmp_path / "s" / "z.dcm", "1.2.3.4.5", study_uid="1.2.3.999")
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "MIXED_STUDIES"


def test_missing_study_uid_rejected(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT)
    del ds.StudyInstanceUID
    (tmp_path / "s").mkdir()
    ds.save_as(tmp_path / "s" / "a.dcm")
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "MISSING_STUDY_UID"


def test_empty_folder_rejected(tmp_path: Path) -> None:
    (tmp_path / "s" / "sub").mkdir(parents=True)
    (tmp_path / "s" / ".hidden").write_text("x")
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "EMPTY_STUDY"


def test_dicomdir_alone_is_empty_but_accepted_with_instances(tmp_path: Path) -> None:
    dicomdir = _testdata("DICOMDIR")
    (tmp_path / "only").mkdir()
    shutil.copyfile(dicomdir, tmp_path / "only" / "DICOMDIR")
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "only")
    assert err.value.code == "EMPTY_STUDY"

    _make_study(tmp_path / "s")
    shutil.copyfile(dicomdir, tmp_path / "s" / "DICOMDIR")
    archive = scan_study(tmp_path / "s")
    assert "DICOMDIR" in [rel for rel, _, _ in archive.files]
    assert archive.instances == 3


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "missing")
    assert err.value.code == "NOT_A_DIRECTORY"
    with pytest.raises(InvalidInput) as err:
        scan_study(CT)
    assert err.value.code == "NOT_A_DIRECTORY"


def test_symlink_to_file_rejected(tmp_path: Path) -> None:
    _make_study(tmp_path / "s")
    (tmp_path / "s" / "link.dcm").symlink_to(CT)
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "SYMLINK"
    assert "link.dcm" in err.value.message


def test_symlink_to_directory_rejected(tmp_path: Path) -> None:
    _make_study(tmp_path / "s")
    outside = tmp_path / "outside"
    _make_study(outside)
    (tmp_path / "s" / "elsewhere").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "SYMLINK"


def test_fifo_rejected(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    _make_study(tmp_path / "s")
    os.mkfifo(tmp_path / "s" / "pipe")
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "NOT_REGULAR_FILE"


def test_too_many_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_study(tmp_path / "s")
    monkeypatch.setattr(study, "MAX_FILES", 2)
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "TOO_MANY_FILES"


def test_path_too_long(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    # 130 + 1 + 130 = 261 UTF-8 bytes (each component within the OS name limit).
    deep = tmp_path / "s" / ("d" * 130) / ("f" * 126 + ".dcm")
    deep.parent.mkdir()
    shutil.copyfile(CT, deep)
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "PATH_TOO_LONG"


def test_backslash_name_rejected(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    shutil.copyfile(CT, tmp_path / "s" / "a\\b.dcm")
    with pytest.raises(InvalidInput) as err:
        scan_study(tmp_path / "s")
    assert err.value.code == "BAD_FILENAME"


# --------------------------------------------------------------------------- stream


def test_stream_length_equals_size_and_tarfile_reads_it(tmp_path: Path) -> None:
    expected = _make_study(tmp_path / "s")
    archive = scan_study(tmp_path / "s")
    data = _stream_bytes(archive)
    assert len(data) == archive.size
    assert len(data) % 512 == 0

    with archive.open() as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        seen: dict[str, bytes] = {}
        for member in tar:
            assert member.isreg()
            assert (member.mode, member.mtime, member.uid, member.gid) == (0o644, 0, 0, 0)
            assert (member.uname, member.gname) == ("", "")
            extracted = tar.extractfile(member)
            assert extracted is not None
            seen[member.name] = extracted.read()
    assert list(seen) == sorted(expected)
    assert seen == expected


def test_stream_is_not_seekable_and_lazy(tmp_path: Path) -> None:
    _make_study(tmp_path / "s")
    archive = scan_study(tmp_path / "s")
    with archive.open() as fh:
        assert fh.readable()
        assert not fh.seekable()
        first = fh.read(512)
        assert first[257:263] == b"ustar\x00"  # a POSIX ustar header block
        rest = fh.read()
    assert len(first) + len(rest) == archive.size


def test_tar_command_lists_archive(tmp_path: Path) -> None:
    tar_bin = shutil.which("tar")
    if tar_bin is None:
        pytest.skip("no tar command")
    expected = _make_study(tmp_path / "s")
    archive = scan_study(tmp_path / "s")
    out = subprocess.run(
        [tar_bin, "-tf", "-"], input=_stream_bytes(archive), capture_output=True, check=True
    )
    assert out.stdout.decode().splitlines() == sorted(expected)


def test_archive_is_deterministic(tmp_path: Path) -> None:
    _make_study(tmp_path / "a")
    # Same content created in another order, with other mtimes and permissions.
    b = tmp_path / "b"
    (b / "series2").mkdir(parents=True)
    for rel in ["series2/IM0003.dcm", "IM0001.dcm", "series2/IM0002.dcm"]:
        shutil.copyfile(tmp_path / "a" / rel, b / rel)
    os.utime(b / "IM0001.dcm", (1_000_000, 1_000_000))
    os.chmod(b / "IM0001.dcm", 0o600)

    first = scan_study(tmp_path / "a")
    again = scan_study(tmp_path / "a")
    other = scan_study(b)
    digests = {hashlib.sha256(_stream_bytes(a)).hexdigest() for a in (first, again, other)}
    assert len(digests) == 1
    assert first.size == again.size == other.size
    # And opening the same archive twice streams the same bytes.
    assert _stream_bytes(first) == _stream_bytes(first)


def test_round_trip_byte_identical(tmp_path: Path) -> None:
    expected = _make_study(tmp_path / "s")
    long_rel = "series3/" + "x" * 150 + ".dcm"  # > 100 chars: needs a pax header
    (tmp_path / "s" / "series3").mkdir()
    shutil.copyfile(CT, tmp_path / "s" / long_rel)
    expected[long_rel] = CT.read_bytes()
    unicode_rel = "séries/Ünïcode.dcm"
    (tmp_path / "s" / "séries").mkdir()
    shutil.copyfile(CT, tmp_path / "s" / unicode_rel)
    expected[unicode_rel] = CT.read_bytes()

    archive = scan_study(tmp_path / "s")
    assert len(_stream_bytes(archive)) == archive.size
    out = tmp_path / "out" / "nested"
    with archive.open() as fh:
        written = extract_study(fh, out)
    assert written == [out / rel for rel in sorted(expected, key=lambda r: r.encode())]
    assert {str(p.relative_to(out).as_posix()): p.read_bytes() for p in written} == expected
    # Nothing else is left behind (no staging folder).
    assert {p.name for p in out.iterdir()} == {"IM0001.dcm", "series2", "series3", "séries"}
    # The extracted folder is itself a valid study with the same archive bytes.
    assert (
        hashlib.sha256(_stream_bytes(scan_study(out))).digest()
        == hashlib.sha256(_stream_bytes(archive)).digest()
    )


def test_file_grown_after_scan(tmp_path: Path) -> None:
    _make_study(tmp_path / "s")
    archive = scan_study(tmp_path / "s")
    with (tmp_path / "s" / "series2" / "IM0002.dcm").open("ab") as fh:
        fh.write(b"\x00" * 10)
    with archive.open() as stream, pytest.raises(IntegrityError) as err:
        stream.read()
    assert err.value.code == "SOURCE_CHANGED"
    assert "series2/IM0002.dcm" in err.value.message
    assert "size" in err.value.message  # caught when the file is opened, before its header


def test_file_grown_while_streaming(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    ds = pydicom.dcmread(CT)
    ds.PixelData = bytes(300_000)  # larger than the stream's read buffer
    ds.save_as(tmp_path / "s" / "big.dcm")
    archive = scan_study(tmp_path / "s")
    with archive.open() as stream:
        assert len(stream.read(1000)) == 1000  # the file is now open mid-way
        with (tmp_path / "s" / "big.dcm").open("ab") as fh:
            fh.write(b"\x00" * 10)
        with pytest.raises(IntegrityError) as err:
            stream.read()
        assert err.value.code == "SOURCE_CHANGED"
        # The stream stays failed rather than resuming with bad framing.
        with pytest.raises(IntegrityError):
            stream.read(1)


def test_file_shrunk_while_streaming(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    ds = pydicom.dcmread(CT)
    ds.PixelData = bytes(300_000)
    ds.save_as(tmp_path / "s" / "big.dcm")
    archive = scan_study(tmp_path / "s")
    with archive.open() as stream:
        stream.read(1000)
        os.truncate(tmp_path / "s" / "big.dcm", 200_000)
        with pytest.raises(IntegrityError) as err:
            stream.read()
    assert err.value.code == "SOURCE_CHANGED"


def test_file_removed_or_touched_after_scan(tmp_path: Path) -> None:
    _make_study(tmp_path / "s")
    archive = scan_study(tmp_path / "s")
    os.utime(tmp_path / "s" / "IM0001.dcm", (12345, 12345))
    with archive.open() as stream, pytest.raises(IntegrityError) as err:
        stream.read()
    assert err.value.code == "SOURCE_CHANGED"

    archive = scan_study(tmp_path / "s")
    (tmp_path / "s" / "series2" / "IM0003.dcm").unlink()
    with archive.open() as stream, pytest.raises(IntegrityError) as err:
        stream.read()
    assert err.value.code == "SOURCE_CHANGED"


# --------------------------------------------------------------------------- extract


def _hostile_tar(member: tarfile.TarInfo, data: bytes = b"evil") -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        good = tarfile.TarInfo("good.dcm")
        good.size = 4
        tar.addfile(good, io.BytesIO(b"good"))
        if member.isreg():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    buf.seek(0)
    return buf


def _symlink_member() -> tarfile.TarInfo:
    info = tarfile.TarInfo("link.dcm")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    return info


def _hardlink_member() -> tarfile.TarInfo:
    info = tarfile.TarInfo("hard.dcm")
    info.type = tarfile.LNKTYPE
    info.linkname = "../evil"
    return info


def _dir_member() -> tarfile.TarInfo:
    info = tarfile.TarInfo("sub")
    info.type = tarfile.DIRTYPE
    return info


def _device_member() -> tarfile.TarInfo:
    info = tarfile.TarInfo("dev")
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    "make_member",
    [
        lambda tmp: tarfile.TarInfo("../evil"),
        lambda tmp: tarfile.TarInfo("sub/../../evil"),
        lambda tmp: tarfile.TarInfo(str(tmp / "evil")),  # absolute path
        lambda tmp: tarfile.TarInfo("./good.dcm"),
        lambda tmp: tarfile.TarInfo("a\\..\\evil"),
        lambda tmp: _symlink_member(),
        lambda tmp: _hardlink_member(),
        lambda tmp: _dir_member(),
        lambda tmp: _device_member(),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "dot",
        "backslash",
        "symlink",
        "hardlink",
        "dir",
        "device",
    ],
)
def test_hostile_archive_rejected(tmp_path: Path, make_member: object) -> None:
    assert callable(make_member)
    member = make_member(tmp_path)
    assert isinstance(member, tarfile.TarInfo)
    out = tmp_path / "out"
    before = _tree(tmp_path)
    with pytest.raises(InvalidInput) as err:
        extract_study(_hostile_tar(member), out)
    assert err.value.code == "BAD_ARCHIVE"
    if not member.isreg():
        assert "not a regular file" in err.value.message
    # Nothing written outside out_dir, and nothing left in it (not even the good member).
    assert _tree(tmp_path) - before == {"out"}
    assert list(out.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_duplicate_member_rejected(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for payload in (b"one", b"two"):
            info = tarfile.TarInfo("same.dcm")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    buf.seek(0)
    with pytest.raises(InvalidInput) as err:
        extract_study(buf, tmp_path / "out", overwrite=True)
    assert err.value.code == "BAD_ARCHIVE"
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("payload", [b"", b"not a tar archive at all" * 40])
def test_garbage_or_empty_stream_rejected(tmp_path: Path, payload: bytes) -> None:
    with pytest.raises(InvalidInput) as err:
        extract_study(io.BytesIO(payload), tmp_path / "out")
    assert err.value.code == "BAD_ARCHIVE"
    assert list((tmp_path / "out").iterdir()) == []


def test_truncated_archive_leaves_nothing(tmp_path: Path) -> None:
    _make_study(tmp_path / "s")
    archive = scan_study(tmp_path / "s")
    data = _stream_bytes(archive)
    with pytest.raises(InvalidInput) as err:
        extract_study(io.BytesIO(data[: len(data) - 20_000]), tmp_path / "out")
    assert err.value.code == "BAD_ARCHIVE"
    assert list((tmp_path / "out").iterdir()) == []


def test_symlinked_folder_in_out_dir_not_followed(tmp_path: Path) -> None:
    _make_study(tmp_path / "s")
    archive = scan_study(tmp_path / "s")
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "series2").symlink_to(outside, target_is_directory=True)
    with archive.open() as fh, pytest.raises(Conflict) as err:
        extract_study(fh, out, overwrite=True)
    assert err.value.code == "FILE_EXISTS"
    assert list(outside.iterdir()) == []
    # What this call had already placed was rolled back.
    assert {p.name for p in out.iterdir()} == {"series2"}


def test_overwrite_refused_then_allowed(tmp_path: Path) -> None:
    expected = _make_study(tmp_path / "s")
    archive = scan_study(tmp_path / "s")
    out = tmp_path / "out"
    (out / "series2").mkdir(parents=True)
    (out / "series2" / "IM0003.dcm").write_bytes(b"precious")

    with archive.open() as fh, pytest.raises(Conflict) as err:
        extract_study(fh, out)
    assert err.value.code == "FILE_EXISTS"
    assert "series2/IM0003.dcm" in err.value.message
    assert (out / "series2" / "IM0003.dcm").read_bytes() == b"precious"
    assert _tree(out) == {"series2", "series2/IM0003.dcm"}

    with archive.open() as fh:
        written = extract_study(fh, out, overwrite=True)
    assert {str(p.relative_to(out).as_posix()): p.read_bytes() for p in written} == expected


def test_overwrite_does_not_write_through_symlink(tmp_path: Path) -> None:
    _make_study(tmp_path / "s")
    archive = scan_study(tmp_path / "s")
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (out / "IM0001.dcm").symlink_to(victim)
    with archive.open() as fh:
        extract_study(fh, out, overwrite=True)
    assert victim.read_bytes() == b"keep me"
    assert not (out / "IM0001.dcm").is_symlink()
    assert (out / "IM0001.dcm").read_bytes() == CT.read_bytes()


def test_extracted_files_are_private(tmp_path: Path) -> None:
    _make_study(tmp_path / "s")
    archive = scan_study(tmp_path / "s")
    with archive.open() as fh:
        written = extract_study(fh, tmp_path / "out")
    assert all(p.stat().st_mode & 0o077 == 0 for p in written)
