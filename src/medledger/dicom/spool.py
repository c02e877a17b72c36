"""The gateway's spool: received DICOM instances, durable before C-STORE answers.

Layout under ``<home>/dicom/``::

    spool/<StudyInstanceUID>/<SOPInstanceUID>.dcm   instances of a study being assembled
    spool/<StudyInstanceUID>/.study.json            who sent it: {"identity", "calling_ae",
                                                    "patient_id"}
    sealing/<StudyInstanceUID>.<n>/...              a closed batch, being stored as one
                                                    record (or waiting for a retry)

Each instance is written to a temporary file, fsynced, renamed into place and its
directory fsynced before :meth:`Spool.put` returns, so a Success response to a
C-STORE means the instance survives a crash. Closing a study renames its folder
into ``sealing/`` under the spool's lock: an instance of the same study that
arrives afterwards starts a new folder, and therefore a new record. At start, open
studies and closed batches found on disk are picked up again (sealed at once).

UIDs and PatientIDs are checked by the caller (:mod:`.uids`) before they name a path.
Hidden names (``.study.json``) are skipped by :func:`medledger.study.scan_study`.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from medledger.dicom.uids import is_uid
from medledger.errors import Conflict, InvalidInput
from medledger.fsutil import atomic_write, fsync_path

STUDY_META = ".study.json"
STALE_S = 120.0  # twice the SCP's idle-association timeout


class StudyMeta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    identity: str  # the service identity of the calling AE title (the record's on_behalf_of)
    calling_ae: str
    patient_id: str


@dataclass
class _Open:
    meta: StudyMeta
    last: float  # time.monotonic() of the last instance (-inf: found at start)
    instances: int = 0
    associations: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Batch:
    """A closed study folder, to be stored as one record."""

    path: Path
    study_uid: str
    meta: StudyMeta


class Spool:
    def __init__(self, dicom_dir: Path) -> None:
        self.open_dir = dicom_dir / "spool"
        self.sealing_dir = dicom_dir / "sealing"
        for d in (dicom_dir, self.open_dir, self.sealing_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._open: dict[str, _Open] = {}
        for entry in sorted(self.open_dir.iterdir()):
            meta = _read_meta(entry)
            if entry.is_dir() and is_uid(entry.name) and meta is not None:
                self._open[entry.name] = _Open(meta=meta, last=float("-inf"))

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
                fsync_path(self.open_dir)
                study = self._open[study_uid] = _Open(meta=meta, last=time.monotonic())
            elif study.meta.patient_id != meta.patient_id:
                raise Conflict("the study is open with another PatientID", code="OTHER_PATIENT")
            path = folder / f"{sop_uid}.dcm"
            atomic_write(path, data, mode=0o600)
            study.last = time.monotonic()
            study.instances += 1
            study.associations.add(association)
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
            study = self._open.pop(study_uid, None)
            if study is None:
                return None
            n = time.time_ns()
            target = self.sealing_dir / f"{study_uid}.{n}"
            os.rename(self.open_dir / study_uid, target)
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
        fsync_path(self.sealing_dir)


def _read_meta(folder: Path) -> StudyMeta | None:
    try:
        return msgspec.json.decode((folder / STUDY_META).read_bytes(), type=StudyMeta)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
