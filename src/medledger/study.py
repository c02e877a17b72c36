"""Imaging studies: a folder of DICOM files stored as one record.

``scan_study`` walks a folder, checks that every file is a DICOM Part 10 file of
one study and describes the archive it would make; ``StudyArchive.open`` then
streams that archive, a deterministic POSIX (ustar, with pax headers only where
ustar cannot hold a name or size) tar, lazily from the files, so its exact
``size`` is known before the first byte and memory use does not grow with the
study. ``extract_study`` is the way back: it streams a tar into a folder,
accepting nothing but plain regular files under relative paths.

The archive depends only on the relative paths and the bytes of the files: the
headers carry mode 0o644, mtime 0, uid/gid 0 and empty owner names, members come
in the byte order of their UTF-8 paths, and there are no directory entries. Two
scans of the same content therefore give byte-identical archives (same hash).

Error messages name files by their path relative to the study folder (or to the
archive), never by any value read from a DICOM header.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tarfile
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pydicom

from medledger.errors import Conflict, IntegrityError, InvalidInput, MedLedgerError

__all__ = [
    "ARCHIVE_MEDIA_TYPE",
    "MAX_FILES",
    "MAX_PATH_BYTES",
    "STUDY_RECORD_TYPE",
    "StudyArchive",
    "extract_study",
    "scan_study",
]

STUDY_RECORD_TYPE = "imaging-study"
ARCHIVE_MEDIA_TYPE = "application/x-tar"

MAX_FILES = 100_000
"""Most files one study (or one extracted archive) may hold."""

MAX_PATH_BYTES = 255
"""Longest relative path, in UTF-8 bytes."""

_BLOCK = 512
_END_OF_ARCHIVE = 2 * _BLOCK
_ZEROS = bytes(_END_OF_ARCHIVE)
_COPY_CHUNK = 1 << 20
_STREAM_BUFFER = 1 << 16

_DICM_OFFSET = 128
_DICM_MAGIC = b"DICM"
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
_HEADER_TAGS = ["StudyInstanceUID", "PatientID", "Modality", "SOPInstanceUID"]

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_READ_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC | getattr(os, "O_BINARY", 0)


# --------------------------------------------------------------------------- paths


def _show(rel: str) -> str:
    """A path for an error message: quoted, control characters escaped, bounded."""
    text = repr(rel)
    return text if len(text) <= 300 else text[:297] + "..."


def _path_problem(rel: str) -> tuple[str, str] | None:
    """Why ``rel`` is not an acceptable member path, as ``(kind, reason)``, or None.

    ``kind`` is ``"long"`` for a path over :data:`MAX_PATH_BYTES`, else ``"bad"``.
    The same rules guard what ``scan_study`` archives and what ``extract_study``
    accepts, so every archive this module writes can be extracted by it.
    """
    if not rel:
        return "bad", "empty path"
    try:
        encoded = rel.encode("utf-8")
    except UnicodeEncodeError:
        return "bad", "path is not valid UTF-8"
    if len(encoded) > MAX_PATH_BYTES:
        return "long", f"path is {len(encoded)} bytes long (at most {MAX_PATH_BYTES})"
    if rel.startswith("/"):
        return "bad", "absolute path"
    if any(ch == "\\" or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in rel):
        return "bad", "path contains a backslash or a control character"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "bad", "path has an empty, '.' or '..' component"
    return None


def _sort_key(rel: str) -> bytes:
    return rel.encode("utf-8")


# --------------------------------------------------------------------------- scan


@dataclass(frozen=True)
class StudyArchive:
    """A scanned study folder and the tar archive it streams as."""

    root: Path
    files: list[tuple[str, Path, int]]
    """``(relative posix path, absolute path, size)`` in archive order."""
    study_uid: str
    modalities: list[str]
    patient_ids: list[str]
    size: int
    """Exact length in bytes of the stream ``open()`` returns."""
    instances: int = 0
    """Distinct SOPInstanceUIDs among the files."""
    mtimes_ns: list[int] = field(default_factory=list, repr=False)
    """Modification time of each file at scan time (same order as ``files``);
    when present, the stream also refuses a file whose mtime has changed."""

    def open(self) -> BinaryIO:
        """A fresh, non-seekable stream of the archive (exactly ``size`` bytes).

        Files are opened one at a time as the stream reaches them. A file that is
        gone, no longer a regular file, or whose size (or mtime) differs from the
        scan raises :class:`IntegrityError` ``SOURCE_CHANGED`` from ``read``.
        """
        return io.BufferedReader(_ArchiveStream(self), buffer_size=_STREAM_BUFFER)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description of the study."""
        return {
            "study_uid": self.study_uid,
            "files": len(self.files),
            "instances": self.instances,
            "size": self.size,
            "modalities": list(self.modalities),
            "patient_ids": list(self.patient_ids),
        }


@dataclass(frozen=True)
class _Header:
    study_uid: str | None
    patient_id: str | None
    modality: str | None
    sop_instance_uid: str | None
    is_dicomdir: bool
    size: int
    mtime_ns: int


def scan_study(directory: Path) -> StudyArchive:
    """Check a study folder and describe the archive it makes.

    Walks ``directory`` recursively, skipping hidden entries (names starting with
    ``.``). Raises :class:`InvalidInput` with code

    * ``NOT_A_DIRECTORY`` — ``directory`` is not a directory;
    * ``SYMLINK`` — a symbolic link anywhere in the folder (never followed);
    * ``NOT_REGULAR_FILE`` — a device, FIFO or socket;
    * ``NOT_DICOM`` — a file without the Part 10 preamble and ``DICM`` prefix, or
      one pydicom cannot parse;
    * ``MISSING_STUDY_UID`` — a DICOM file (other than a DICOMDIR) without a
      StudyInstanceUID;
    * ``MIXED_STUDIES`` — files of more than one study;
    * ``EMPTY_STUDY`` — no DICOM instance at all (a lone DICOMDIR counts as none);
    * ``TOO_MANY_FILES`` / ``PATH_TOO_LONG`` / ``BAD_FILENAME`` — over the limits,
      or a name that is not portable UTF-8 (backslash, control characters);
    * ``UNREADABLE`` — a directory or file the OS will not let us read.
    """
    try:
        root = directory.resolve(strict=True)
    except (OSError, RuntimeError):
        raise InvalidInput(f"not a directory: {_show(str(directory))}", code="NOT_A_DIRECTORY")
    if not root.is_dir():
        raise InvalidInput(f"not a directory: {_show(str(directory))}", code="NOT_A_DIRECTORY")

    found = _walk(root)
    if not found:
        raise InvalidInput("the study folder holds no files", code="EMPTY_STUDY")

    files: list[tuple[str, Path, int]] = []
    mtimes: list[int] = []
    study_uid: str | None = None
    study_uid_file = ""
    modalities: set[str] = set()
    patient_ids: set[str] = set()
    sop_uids: set[str] = set()
    size = _END_OF_ARCHIVE
    for rel, path in found:
        header = _read_header(path, rel)
        if not header.is_dicomdir:
            if header.study_uid is None:
                raise InvalidInput(
                    f"DICOM file has no StudyInstanceUID: {_show(rel)}",
                    code="MISSING_STUDY_UID",
                    path=rel,
                )
            if study_uid is None:
                study_uid, study_uid_file = header.study_uid, rel
            elif header.study_uid != study_uid:
                raise InvalidInput(
                    f"files belong to different studies: {_show(study_uid_file)} and {_show(rel)}",
                    code="MIXED_STUDIES",
                    paths=[study_uid_file, rel],
                )
            if header.modality:
                modalities.add(header.modality)
            if header.patient_id:
                patient_ids.add(header.patient_id)
            if header.sop_instance_uid:
                sop_uids.add(header.sop_instance_uid)
        files.append((rel, path, header.size))
        mtimes.append(header.mtime_ns)
        size += len(_tar_header(rel, header.size)) + _padded(header.size)

    if study_uid is None:
        raise InvalidInput("the study folder holds no DICOM instances", code="EMPTY_STUDY")
    return StudyArchive(
        root=root,
        files=files,
        study_uid=study_uid,
        modalities=sorted(modalities),
        patient_ids=sorted(patient_ids),
        size=size,
        instances=len(sop_uids),
        mtimes_ns=mtimes,
    )


def _walk(root: Path) -> list[tuple[str, Path]]:
    """Every non-hidden regular file under ``root`` as ``(rel, path)``, sorted."""
    found: list[tuple[str, Path]] = []
    stack: list[tuple[str, Path]] = [("", root)]
    while stack:
        prefix, directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as exc:
            raise InvalidInput(
                f"cannot read directory {_show(prefix or '.')}: {exc.strerror}",
                code="UNREADABLE",
                path=prefix or ".",
            )
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            try:
                if entry.is_symlink():
                    raise InvalidInput(
                        f"symbolic links are not allowed in a study folder: {_show(rel)}",
                        code="SYMLINK",
                        path=rel,
                    )
                if entry.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", Path(entry.path)))
                    continue
                is_file = entry.is_file(follow_symlinks=False)
            except OSError as exc:
                raise InvalidInput(
                    f"cannot read {_show(rel)}: {exc.strerror}", code="UNREADABLE", path=rel
                )
            if not is_file:
                raise InvalidInput(
                    f"not a regular file: {_show(rel)}", code="NOT_REGULAR_FILE", path=rel
                )
            problem = _path_problem(rel)
            if problem is not None:
                kind, reason = problem
                raise InvalidInput(
                    f"unusable file name {_show(rel)}: {reason}",
                    code="PATH_TOO_LONG" if kind == "long" else "BAD_FILENAME",
                    path=rel,
                )
            found.append((rel, Path(entry.path)))
            if len(found) > MAX_FILES:
                raise InvalidInput(
                    f"a study may hold at most {MAX_FILES} files", code="TOO_MANY_FILES"
                )
    found.sort(key=lambda item: _sort_key(item[0]))
    return found


def _read_header(path: Path, rel: str) -> _Header:
    """Check the Part 10 prefix of one file and read the tags we need."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidInput(
                f"symbolic links are not allowed in a study folder: {_show(rel)}",
                code="SYMLINK",
                path=rel,
            )
        raise InvalidInput(f"cannot read {_show(rel)}: {exc.strerror}", code="UNREADABLE", path=rel)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(
                f"not a regular file: {_show(rel)}", code="NOT_REGULAR_FILE", path=rel
            )
        not_dicom = InvalidInput(
            f"not a DICOM Part 10 file: {_show(rel)}", code="NOT_DICOM", path=rel
        )
        head = fh.read(_DICM_OFFSET + len(_DICM_MAGIC))
        if head[_DICM_OFFSET:] != _DICM_MAGIC:
            raise not_dicom
        fh.seek(0)
        try:
            with warnings.catch_warnings():
                # pydicom's warnings may quote element values (patient data).
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
                sop_class = _text(ds.file_meta.get("MediaStorageSOPClassUID"))
                if sop_class is None or _text(ds.file_meta.get("TransferSyntaxUID")) is None:
                    # Part 10 requires a File Meta group naming both; pydicom
                    # accepts "DICM" followed by nothing useful.
                    raise not_dicom
                header = _Header(
                    study_uid=_text(ds.get("StudyInstanceUID")),
                    patient_id=_text(ds.get("PatientID")),
                    modality=_text(ds.get("Modality")),
                    sop_instance_uid=_text(ds.get("SOPInstanceUID")),
                    is_dicomdir=sop_class == _DICOMDIR_SOP_CLASS,
                    size=st.st_size,
                    mtime_ns=st.st_mtime_ns,
                )
        except MedLedgerError:
            raise
        except Exception:
            # pydicom signals a malformed file with many exception types
            # (InvalidDicomError, EOFError, struct.error, ValueError, ...).
            raise not_dicom from None
    return header


def _text(value: object) -> str | None:
    """A header value as a stripped string, or None when absent or empty."""
    if value is None:
        return None
    text = str(value).strip().strip("\x00").strip()
    return text or None


# --------------------------------------------------------------------------- tar


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _tar_header(rel: str, size: int) -> bytes:
    """The deterministic header block(s) of one regular-file member."""
    info = tarfile.TarInfo(rel)
    info.type = tarfile.REGTYPE
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = 0
    info.gid = 0
    info.uname = ""
    info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _source_changed(rel: str, what: str) -> IntegrityError:
    return IntegrityError(
        f"{_show(rel)} changed since the study was scanned ({what}); scan it again",
        code="SOURCE_CHANGED",
        path=rel,
    )


class _ArchiveStream(io.RawIOBase):
    """The tar stream of a :class:`StudyArchive`, produced on demand.

    State: ``_pending`` holds header or padding bytes still to hand out; while a
    file is open, ``_remaining`` of its bytes are still to be read from it.
    """

    def __init__(self, archive: StudyArchive) -> None:
        super().__init__()
        self._archive = archive
        self._entries: Iterator[int] = iter(range(len(archive.files)))
        self._pending = memoryview(b"")
        self._file: io.FileIO | None = None
        self._rel = ""
        self._remaining = 0
        self._pad = 0
        self._emitted = 0
        self._finished = False
        self._error: MedLedgerError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self._error is not None:
            raise self._error
        try:
            return self._fill(memoryview(buffer).cast("B"))
        except MedLedgerError as exc:
            self._error = exc
            self._close_file()
            raise

    def _fill(self, out: memoryview) -> int:
        n = 0
        while n < len(out):
            if self._pending:
                k = min(len(self._pending), len(out) - n)
                out[n : n + k] = self._pending[:k]
                self._pending = self._pending[k:]
            elif self._file is not None:
                if not self._remaining:
                    if self._file.read(1):
                        raise _source_changed(self._rel, "it got longer")
                    self._close_file()
                    self._pending = memoryview(_ZEROS)[: self._pad]
                    continue
                k = self._file.readinto(out[n : n + min(self._remaining, len(out) - n)]) or 0
                if not k:
                    raise _source_changed(self._rel, "it got shorter")
                self._remaining -= k
            elif not self._finished:
                self._next_member()
                continue
            else:
                break
            n += k
            self._emitted += k
        return n

    def _next_member(self) -> None:
        index = next(self._entries, None)
        if index is None:
            # Guard: the bytes already produced plus the end blocks must be the size
            # promised by the scan, or the consumer's length framing would break.
            if self._emitted + _END_OF_ARCHIVE != self._archive.size:
                raise IntegrityError(
                    "the archive stream does not match its announced size",
                    code="SOURCE_CHANGED",
                )
            self._pending = memoryview(_ZEROS)
            self._finished = True
            return
        rel, path, size = self._archive.files[index]
        mtimes = self._archive.mtimes_ns
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError as exc:
            raise _source_changed(rel, exc.strerror or "cannot open it")
        file = io.FileIO(fd, "rb", closefd=True)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _source_changed(rel, "it is no longer a regular file")
            if st.st_size != size:
                raise _source_changed(rel, f"size {st.st_size}, scanned {size}")
            if index < len(mtimes) and st.st_mtime_ns != mtimes[index]:
                raise _source_changed(rel, "modification time differs")
        except BaseException:
            file.close()
            raise
        self._file = file
        self._rel = rel
        self._remaining = size
        self._pad = _padded(size) - size
        self._pending = memoryview(_tar_header(rel, size))

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        self._close_file()
        super().close()


# --------------------------------------------------------------------------- extract


def _bad_archive(message: str) -> InvalidInput:
    return InvalidInput(message, code="BAD_ARCHIVE")


def extract_study(src: BinaryIO, out_dir: Path, *, overwrite: bool = False) -> list[Path]:
    """Stream-extract a study archive into ``out_dir`` and return the written paths.

    Only regular files under relative paths are accepted: an absolute path, a
    ``..`` component, a link, a device, a directory entry, a duplicate name or a
    malformed tar raises :class:`InvalidInput` ``BAD_ARCHIVE``. Members are first
    written to a private staging folder inside ``out_dir`` and moved into place
    only once the whole archive has been read, so a bad or truncated archive
    leaves ``out_dir`` as it was. Placement never follows a symbolic link found
    in ``out_dir`` (:class:`Conflict` ``FILE_EXISTS``); an existing file is an
    error (:class:`Conflict` ``FILE_EXISTS``) unless ``overwrite``, in which case
    it is replaced atomically. Files are created with mode 0o600 and folders
    with 0o700: they hold patient data. Errors raised by ``src`` itself (for
    example a failed decryption) pass through unchanged.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise Conflict(f"not a directory: {_show(str(out_dir))}", code="FILE_EXISTS")
    staging = Path(tempfile.mkdtemp(prefix=".medledger-extract-", dir=out_dir))
    try:
        members = _stream_to_staging(src, staging, out_dir, overwrite)
        if not members:
            raise _bad_archive("the archive holds no files")
        _place_all(staging, out_dir, members, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / rel for rel in members]


def _stream_to_staging(src: BinaryIO, staging: Path, out_dir: Path, overwrite: bool) -> list[str]:
    members: list[str] = []
    seen: set[str] = set()
    try:
        with tarfile.open(
            fileobj=src, mode="r|", encoding="utf-8", errors="surrogateescape"
        ) as tar:
            for member in tar:
                rel = member.name
                if not member.isreg() or member.issparse():
                    raise _bad_archive(f"archive member is not a regular file: {_show(rel)}")
                problem = _path_problem(rel)
                if problem is not None:
                    raise _bad_archive(f"unsafe archive member {_show(rel)}: {problem[1]}")
                if rel in seen:
                    raise _bad_archive(f"archive member appears twice: {_show(rel)}")
                if len(members) >= MAX_FILES:
                    raise _bad_archive(f"the archive holds more than {MAX_FILES} files")
                if not overwrite and os.path.lexists(out_dir / rel):
                    raise _file_exists(rel)
                _write_member(tar, member, staging, rel)
                seen.add(rel)
                members.append(rel)
    except tarfile.TarError as exc:
        raise _bad_archive(f"not a valid tar archive: {type(exc).__name__}")
    return members


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path, rel: str) -> None:
    dest = staging / rel
    try:
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600)
    except (FileExistsError, NotADirectoryError):
        raise _bad_archive(f"archive member clashes with another member: {_show(rel)}")
    data = tar.extractfile(member)
    if data is None:  # pragma: no cover - isreg() members always have data
        os.close(fd)
        raise _bad_archive(f"archive member has no data: {_show(rel)}")
    written = 0
    with os.fdopen(fd, "wb") as out, data:
        while chunk := data.read(_COPY_CHUNK):
            out.write(chunk)
            written += len(chunk)
    if written != member.size:
        raise _bad_archive(f"archive member is truncated: {_show(rel)}")


def _file_exists(rel: str, why: str = "already exists") -> Conflict:
    return Conflict(f"{_show(rel)} {why} in the output folder", code="FILE_EXISTS", path=rel)


def _place_all(staging: Path, out_dir: Path, members: list[str], overwrite: bool) -> None:
    """Move staged members into ``out_dir``; undo what this call created on failure."""
    root_fd = os.open(out_dir, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    created_files: list[str] = []
    created_dirs: list[str] = []
    try:
        for rel in members:
            parts = rel.split("/")
            parent_fd = _open_parents(root_fd, parts[:-1], created_dirs)
            try:
                if _place_one(staging / rel, parent_fd, parts[-1], rel, overwrite):
                    created_files.append(rel)
            finally:
                if parent_fd != root_fd:
                    os.close(parent_fd)
    except BaseException:
        for rel in reversed(created_files):
            try:
                os.unlink(out_dir / rel)
            except OSError:
                pass
        for rel in reversed(created_dirs):
            try:
                os.rmdir(out_dir / rel)
            except OSError:
                pass
        raise
    finally:
        os.close(root_fd)


def _open_parents(root_fd: int, parts: list[str], created_dirs: list[str]) -> int:
    """Open (creating as needed) the folder ``parts`` under ``root_fd``, never via a link."""
    current = root_fd
    for depth, name in enumerate(parts):
        rel = "/".join(parts[: depth + 1])
        try:
            os.mkdir(name, 0o700, dir_fd=current)
            created_dirs.append(rel)
        except FileExistsError:
            pass
        except BaseException:
            if current != root_fd:
                os.close(current)
            raise
        try:
            nxt = os.open(
                name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=current
            )
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _file_exists(rel, "exists and is not a folder (links are not followed)")
            raise
        finally:
            if current != root_fd:
                os.close(current)
        current = nxt
    return current


def _place_one(staged: Path, parent_fd: int, name: str, rel: str, overwrite: bool) -> bool:
    """Move one staged file into place; True when it created a new file."""
    try:
        existing = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if not overwrite:
            raise _file_exists(rel)
        if stat.S_ISDIR(existing.st_mode):
            raise _file_exists(rel, "exists and is a folder")
        # Replaces the directory entry itself: a link there is replaced, not followed.
        os.replace(staged, name, dst_dir_fd=parent_fd)
        return False
    if overwrite:
        os.replace(staged, name, dst_dir_fd=parent_fd)
        return True
    try:
        # link() never replaces an existing entry, closing the race with the check.
        os.link(staged, name, dst_dir_fd=parent_fd)
    except FileExistsError:
        raise _file_exists(rel)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.ENOSYS):
            raise
        os.rename(staged, name, dst_dir_fd=parent_fd)  # no hard links here: best effort
    return True
