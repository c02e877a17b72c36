"""Rebuilding the node's study index from the ledger (``medledger dicom reindex``).

The study index (:mod:`.index`) is filled when the gateway seals a study. A node whose
index was lost, or a study stored otherwise (``medledger record put DIR``, a seal whose
indexing failed), is brought back by reading, with the gateway key, every live
``imaging-study`` record of the node's institution that the index does not hold yet:
one committed, audited ``record.read`` per record, purpose ``audit`` (a records
operation, not care), then each archive member's header is indexed. Nothing but the
index changes; a record that cannot be read is counted and logged, and the rest go on.

Synchronous and slow (a read per record): run it in a thread.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO

from medledger.app.model import RecordMeta
from medledger.crypto.keys import PrivateKey
from medledger.dicom.index import IndexedInstance, StudyIndex, read_instance
from medledger.dicom.retrieve import archive_members, read_archive
from medledger.errors import InvalidInput, MedLedgerError
from medledger.log import get_logger
from medledger.study import STUDY_RECORD_TYPE

log = get_logger("medledger.dicom")

REINDEX_PURPOSE = "audit"


@dataclass
class ReindexReport:
    candidates: int = 0  # live imaging-study records of the institution
    already: int = 0  # in the index before
    indexed: int = 0  # records read and indexed now
    instances: int = 0
    failed: int = 0

    def json(self) -> dict[str, int]:
        return dict(vars(self))


def candidates(records: Iterable[RecordMeta], institution: str) -> list[RecordMeta]:
    """The records a reindex reads: live imaging studies of ``institution``."""
    return [
        m
        for m in records
        if m.type == STUDY_RECORD_TYPE and m.institution == institution and not m.erased_height
    ]


def reindex(
    index: StudyIndex,
    records: list[RecordMeta],
    read: Callable[[RecordMeta], list[IndexedInstance]],
) -> ReindexReport:
    report = ReindexReport(candidates=len(records))
    known = set(index.record_ids())
    for meta in records:
        if meta.record_id in known:
            report.already += 1
            continue
        try:
            entries = read(meta)
            index.add(entries)
        except MedLedgerError as exc:
            report.failed += 1
            log.warning("dicom.reindex_failed", record_id=meta.record_id, code=exc.code)
            continue
        report.indexed += 1
        report.instances += len(entries)
    log.info("dicom.reindexed", **report.json())
    return report


def read_entries(api_url: str, key: PrivateKey, meta: RecordMeta) -> list[IndexedInstance]:
    """Read a study record with ``key`` and index entries of its instances."""
    archive = read_archive(api_url, key, meta.record_id, purpose=REINDEX_PURPOSE)
    entries: list[IndexedInstance] = []
    for member, data in archive_members(archive):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                entry = read_instance(
                    BytesIO(data),
                    record_id=meta.record_id,
                    patient=meta.patient,
                    member=member.name,
                    size=member.size,
                )
        except Exception:  # pydicom signals a malformed file many ways
            raise InvalidInput("the record is not a readable study archive", code="BAD_ARCHIVE")
        if entry is not None:
            entries.append(entry)
    return entries
