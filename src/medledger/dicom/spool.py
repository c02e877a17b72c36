"""The gateway's spool: received DICOM instances, durable before C-STORE answers.

Layout under ``<home>/dicom/``::

    spool/<StudyInstanceUID>/<SOPInstanceUID>.dcm   instances of a study being assembled
    spool/<StudyInstanceUID>/.study.json            who sent it: {"identity", "calling_ae",
                                                    "patient_id"}
    sealing/<StudyInstanceUID>.<n>/...              a closed batch, being stored as one
                                                    record (or waiting for a retry)

    spool/.<StudyInstanceUID>.journal               the study's journal (below)
    sealing/.<StudyInstanceUID>.<n>.journal         the batch's journal

Durability: one sync per instance, shared by concurrent ones. Each instance is
appended to its study's journal (an entry: magic, lengths, CRC-32, SOP Instance
UID, the Part 10 bytes) and the journal is ``fdatasync``-ed before :meth:`Spool.put`
returns, so a Success response to a C-STORE means the instance survives a crash.
Puts that arrive while a sync runs share the next one (group commit), and studies
have their own locks, so associations sending different studies do not wait for
each other. The instance's ``.dcm`` file is written too (a temporary file renamed
into place, so never torn), without a sync: the journal, created (and its directory
synced) with the study, is the durable copy until the batch is discarded. At start, every journal is replayed into its folder:
a missing or different file is rewritten, a file without a valid entry (a put that
never answered Success) is removed, a torn tail is cut off. (Writing a file per
instance durably takes two syncs, of the file and of its directory, under one lock:
from 1 ms on an idle disk to 8 ms on a busy one here, up to more than the whole rest
of a C-STORE.)

Closing a study renames its folder, then its journal, into ``sealing/`` under the
spool's lock: an instance of the same study that arrives afterwards starts a new
folder, and therefore a new record. At start, open studies and closed batches found
on disk are picked up again (sealed at once); a journal left in ``spool/`` by a crash
between the two renames goes with the newest batch of its study.

UIDs and PatientIDs are checked by the caller (:mod:`.uids`) before they name a path.
Hidden names (``.study.json``) are skipped by :func:`medledger.study.scan_study`.
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from medledger.dicom.uids import is_uid
from medledger.errors import Conflict, InvalidInput
from medledger.fsutil import atomic_write, fsync_path

STUDY_META = ".study.json"
STALE_S = 120.0  # twice the SCP's idle-association timeout
JOURNAL_SUFFIX = ".journal"
_ENTRY = struct.Struct("<4sHII")  # magic, len(SOP Instance UID), len(data), CRC-32
_MAGIC = b"MLJ1"


class StudyMeta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    identity: str  # the service identity of the calling AE title (the record's on_behalf_of)
    calling_ae: str
    patient_id: str


class _Journal:
    """A study's append-only journal: appends serialised, syncs shared."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._append_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = os.fstat(self._fd).st_size  # bytes fully appended
        self._synced = self._written  # what is there was replayed and synced at start
        self._broken = False

    def append(self, sop_uid: str, data: bytes) -> int:
        """Append one entry; the journal's size after it (the offset to sync up to)."""
        uid = sop_uid.encode("ascii")
        head = _ENTRY.pack(_MAGIC, len(uid), len(data), zlib.crc32(data, zlib.crc32(uid)))
        with self._append_lock:
            if self._broken:
                raise OSError("the study's journal could not be repaired after a failed write")
            try:
                _write_all(self._fd, head + uid)
                _write_all(self._fd, data)
            except BaseException:
                # a torn entry would hide the entries after it: cut it off
                try:
                    os.ftruncate(self._fd, self._written)
                except OSError:
                    self._broken = True
                raise
            self._written += len(head) + len(uid) + len(data)
            return self._written

    def sync(self, upto: int) -> None:
        """Return once the journal is durable up to ``upto``: one ``fdatasync`` for all
        the appends that completed before it started (group commit)."""
        with self._sync_lock:
            if self._synced >= upto:
                return  # another put's sync covered this entry
            target = self._written
            os.fdatasync(self._fd)
            self._synced = max(self._synced, target)

    def close(self) -> None:
        with self._append_lock, self._sync_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


@dataclass
class _Open:
    meta: StudyMeta
    last: float  # time.monotonic() of the last instance (-inf: found at start)
    instances: int = 0
    associations: set[int] = field(default_factory=set)
    journal: _Journal | None = None  # opened at the first put (after a restart: lazily)
    pending: int = 0  # puts under way (a close waits for them)


@dataclass(frozen=True)
class Batch:
    """A closed study folder, to be stored as one record."""

    path: Path
    study_uid: str
    meta: StudyMeta

    @property
    def journal(self) -> Path:
        return journal_path(self.path)


class Spool:
    def __init__(self, dicom_dir: Path) -> None:
        self.open_dir = dicom_dir / "spool"
        self.sealing_dir = dicom_dir / "sealing"
        for d in (dicom_dir, self.open_dir, self.sealing_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a put ends
        self._open: dict[str, _Open] = {}
        self._recover()
        for entry in sorted(self.open_dir.iterdir()):
            meta = _read_meta(entry)
            if entry.is_dir() and is_uid(entry.name) and meta is not None:
                self._open[entry.name] = _Open(meta=meta, last=float("-inf"))

    def _recover(self) -> None:
        """Journals back with their folders, and replayed into them (see the module)."""
        for journal in sorted(self.open_dir.glob("." + "*" + JOURNAL_SUFFIX)):
            folder = folder_of(journal)
            if folder.is_dir():
                continue
            # a crash between a close's two renames: the newest batch of the study
            batches = [b for b in self.batches() if b.study_uid == folder.name]
            newest = batches[-1] if batches else None
            if newest is not None and not newest.journal.exists():
                os.rename(journal, newest.journal)
                fsync_path(self.sealing_dir)
            else:
                journal.unlink()
            fsync_path(self.open_dir)
        for base in (self.open_dir, self.sealing_dir):
            for journal in sorted(base.glob("." + "*" + JOURNAL_SUFFIX)):
                folder = folder_of(journal)
                if folder.is_dir():
                    replay(journal, folder)
                else:
                    journal.unlink()

    def put(
        self,
        study_uid: str,
        sop_uid: str,
        data: bytes,
        meta: StudyMeta,
        association: int,
    ) -> Path:
        """Store one instance durably; return its path.

        ``OTHER_PATIENT`` (:class:`Conflict`) if the open study has another PatientID.
        """
        if not (is_uid(study_uid) and is_uid(sop_uid)):
            raise InvalidInput("not a DICOM UID", code="BAD_UID")
        with self._lock:
            study = self._open.get(study_uid)
            folder = self.open_dir / study_uid
            if study is None:
                folder.mkdir(mode=0o700, exist_ok=True)
                atomic_write(folder / STUDY_META, msgspec.json.encode(meta), mode=0o600)
                study = self._open[study_uid] = _Open(meta=meta, last=time.monotonic())
                study.journal = _Journal(journal_path(folder))
                fsync_path(self.open_dir)  # the folder and the journal
            elif study.meta.patient_id != meta.patient_id:
                raise Conflict("the study is open with another PatientID", code="OTHER_PATIENT")
            elif study.journal is None:  # found at start: journal kept (or started) now
                study.journal = _Journal(journal_path(folder))
                fsync_path(self.open_dir)
            journal = study.journal
            study.associations.add(association)
            study.pending += 1
        path = folder / f"{sop_uid}.dcm"
        try:
            # the file replaces an earlier copy in one rename (never a torn file for the
            # sealer), not synced: the journal entry is the durable copy
            atomic_write(path, data, mode=0o600, durable=False)
            journal.sync(journal.append(sop_uid, data))
        finally:
            with self._lock:
                study.pending -= 1
                self._idle.notify_all()
        with self._lock:
            study.last = time.monotonic()
            study.instances += 1
        return path

    def association_closed(self, association: int) -> None:
        with self._lock:
            for study in self._open.values():
                study.associations.discard(association)

    def due(self, quiet_s: float, now: float | None = None, stale_s: float = STALE_S) -> list[str]:
        """Open studies with no instance for ``quiet_s`` and no association still sending,
        or with none for ``stale_s`` whatever their associations (a close that was
        never reported must not keep a study open forever)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return [
                uid
                for uid, s in self._open.items()
                if (not s.associations and now - s.last >= quiet_s) or now - s.last >= stale_s
            ]

    def open_studies(self) -> dict[str, int]:
        """Instances spooled per open study."""
        with self._lock:
            return {uid: s.instances for uid, s in self._open.items()}

    def close(self, study_uid: str) -> Batch | None:
        """Move an open study into ``sealing/``; instances arriving later start anew."""
        with self._lock:
            study = self._open.get(study_uid)
            while study is not None and study.pending:
                self._idle.wait()  # the puts under way land in this batch
                study = self._open.get(study_uid)
            if study is None:
                return None
            del self._open[study_uid]
            if study.journal is not None:
                study.journal.close()
            n = time.time_ns()
            source = self.open_dir / study_uid
            target = self.sealing_dir / f"{study_uid}.{n}"
            os.rename(source, target)
            if journal_path(source).exists():
                os.rename(journal_path(source), journal_path(target))
            fsync_path(self.open_dir)
            fsync_path(self.sealing_dir)
            return Batch(path=target, study_uid=study_uid, meta=study.meta)

    def batches(self) -> list[Batch]:
        """Closed batches on disk (being sealed, or waiting for a retry), oldest first."""
        out = []
        for entry in self.sealing_dir.iterdir():
            study_uid, _, n = entry.name.rpartition(".")
            meta = _read_meta(entry)
            if entry.is_dir() and is_uid(study_uid) and n.isdigit() and meta is not None:
                out.append((int(n), Batch(path=entry, study_uid=study_uid, meta=meta)))
        return [b for _, b in sorted(out, key=lambda x: x[0])]

    def discard(self, batch: Batch) -> None:
        """Delete a sealed batch (after its record is registered)."""
        shutil.rmtree(batch.path, ignore_errors=True)
        try:
            batch.journal.unlink()
        except FileNotFoundError:
            pass
        fsync_path(self.sealing_dir)


def _read_meta(folder: Path) -> StudyMeta | None:
    try:
        return msgspec.json.decode((folder / STUDY_META).read_bytes(), type=StudyMeta)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def journal_path(folder: Path) -> Path:
    """``spool/.<uid>.journal`` of ``spool/<uid>``, ``sealing/.<uid>.<n>.journal`` of
    ``sealing/<uid>.<n>``: beside the folder, hidden, so the folder holds only the study."""
    return folder.parent / f".{folder.name}{JOURNAL_SUFFIX}"


def folder_of(journal: Path) -> Path:
    return journal.parent / journal.name[1 : -len(JOURNAL_SUFFIX)]


def read_journal(journal: Path) -> tuple[dict[str, bytes], int]:
    """The instances of a journal's valid entries (a later entry of a SOP Instance UID
    replaces an earlier one), and the length of its valid part."""
    raw = journal.read_bytes()
    found: dict[str, bytes] = {}
    pos = 0
    while pos + _ENTRY.size <= len(raw):
        magic, uid_len, data_len, crc = _ENTRY.unpack_from(raw, pos)
        start = pos + _ENTRY.size
        end = start + uid_len + data_len
        if magic != _MAGIC or end > len(raw):
            break
        uid_bytes = raw[start : start + uid_len]
        data = raw[start + uid_len : end]
        if zlib.crc32(data, zlib.crc32(uid_bytes)) != crc:
            break
        try:
            uid = uid_bytes.decode("ascii")
        except UnicodeDecodeError:
            break
        if not is_uid(uid):
            break
        found[uid] = data
        pos = end
    return found, pos


def replay(journal: Path, folder: Path) -> None:
    """Make ``folder``'s instance files those of the journal's valid entries; cut a
    torn tail off the journal."""
    found, valid = read_journal(journal)
    for path in folder.glob("*.dcm"):
        if path.stem not in found:
            path.unlink()  # written before a crash, never acknowledged
    for uid, data in found.items():
        path = folder / f"{uid}.dcm"
        try:
            same = path.stat().st_size == len(data) and path.read_bytes() == data
        except FileNotFoundError:
            same = False
        if not same:
            atomic_write(path, data, mode=0o600, durable=False)
    if valid < journal.stat().st_size:
        with open(journal, "r+b") as fh:
            fh.truncate(valid)
            fh.flush()
            os.fsync(fh.fileno())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
