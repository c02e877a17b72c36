"""The gateway's study index: the DICOM instances of the imaging-study records it stored.

A per-node SQLite database, ``<home>/dicom/index.sqlite`` (WAL), filled when a study
is sealed (from the spooled files, before they are deleted) and read by C-FIND,
C-MOVE, C-GET, QIDO-RS and FHIR ImagingStudy. It holds one row per SOP Instance:
where it is (the record and the member of the record's study archive) and the
attributes a query may match or return (:data:`ATTRS`). It is off chain, the node's
own, like the spool: patient data, kept 0600 in the 0700 ``dicom`` folder.

The index does not decide who sees what: :meth:`StudyIndex.search` takes the
``record_ids`` the caller may see (:mod:`.visibility`) and matches only their
instances.

Matching follows the C-FIND rules (PS3.4 C.2.2.2) for the keys it knows:

* an empty value, or ``*``, matches everything (universal matching);
* ``*`` and ``?`` elsewhere are wildcards (not for UIDs); names (PN) match
  case-insensitively, everything else case-sensitively;
* dates and times (DA, TM) take ranges: ``20200101-20201231``, ``-20201231``,
  ``20200101-``;
* UIDs take lists: ``1.2.3\\1.2.4``;
* a ``ModalitiesInStudy`` query matches a study with any of the listed modalities.

Keys the index does not know are ignored (an SCP returns them empty). Values are
bound as SQL parameters or compared in Python, never pasted into SQL.

The connection is shared by pynetdicom's association threads, the sealer thread and
the event loop, so one lock serialises every use.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.multival import MultiValue

from medledger.errors import InvalidInput

__all__ = [
    "ATTRS",
    "LEVELS",
    "MAX_LIMIT",
    "IndexedInstance",
    "StudyIndex",
    "read_instance",
]

INDEX_FILE = Path("dicom") / "index.sqlite"

PATIENT_ATTRS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
STUDY_ATTRS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
)
SERIES_ATTRS = ("Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined")
IMAGE_ATTRS = ("InstanceNumber", "Rows", "Columns", "NumberOfFrames")
ATTRS = PATIENT_ATTRS + STUDY_ATTRS + SERIES_ATTRS + IMAGE_ATTRS
"""The DICOM keywords kept per instance (``ModalitiesInStudy`` is computed)."""

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
MAX_LIMIT = 100_000
MAX_VALUE_CHARS = 1024

_PN = frozenset({"PatientName", "ReferringPhysicianName"})
_DATES = frozenset({"PatientBirthDate", "StudyDate", "StudyTime"})
_UIDS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"})
_NUMBERS = frozenset({"SeriesNumber", "InstanceNumber", "Rows", "Columns", "NumberOfFrames"})

# keys a level's rows hold (and a query may match), with those of the levels above
_LEVEL_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": PATIENT_ATTRS,
    "STUDY": (*PATIENT_ATTRS, "StudyInstanceUID", *STUDY_ATTRS, "ModalitiesInStudy"),
}
_LEVEL_KEYS["SERIES"] = _LEVEL_KEYS["STUDY"] + ("SeriesInstanceUID",) + SERIES_ATTRS
_LEVEL_KEYS["IMAGE"] = (
    _LEVEL_KEYS["SERIES"] + ("SOPInstanceUID", "SOPClassUID", "TransferSyntaxUID") + IMAGE_ATTRS
)
_GROUP_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


@dataclass(frozen=True)
class IndexedInstance:
    """One SOP Instance of an imaging-study record this node's gateway stored."""

    record_id: str
    patient: str  # the ledger patient ID
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    member: str  # the file's path inside the record's study archive (medledger.study)
    size: int
    attrs: dict[str, str] = field(default_factory=dict)  # keyword -> text (ATTRS)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_uid TEXT NOT NULL UNIQUE,
    record_id TEXT NOT NULL,
    patient TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    member TEXT NOT NULL,
    size INTEGER NOT NULL,
    patient_id TEXT NOT NULL,
    attrs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid, series_uid);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid);
CREATE INDEX IF NOT EXISTS instances_record ON instances (record_id);
CREATE INDEX IF NOT EXISTS instances_patient_id ON instances (patient_id);
"""
_COLUMNS = (
    "sop_uid, record_id, patient, study_uid, series_uid, sop_class_uid, "
    "transfer_syntax, member, size, attrs"
)


class StudyIndex:
    """The index file of one node; every method is thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            path.touch(mode=0o600)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- writing -------------------------------------------------------------------------

    def add(self, instances: Sequence[IndexedInstance]) -> None:
        """Index ``instances`` in one transaction; an already indexed SOP Instance UID
        keeps its first entry."""
        rows = [
            (
                i.sop_uid,
                i.record_id,
                i.patient,
                i.study_uid,
                i.series_uid,
                i.sop_class_uid,
                i.transfer_syntax,
                i.member,
                i.size,
                i.attrs.get("PatientID", ""),
                json.dumps({k: i.attrs[k] for k in ATTRS if k in i.attrs}, sort_keys=True),
            )
            for i in instances
        ]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO instances (sop_uid, record_id, patient, study_uid, "
                    "series_uid, sop_class_uid, transfer_syntax, member, size, patient_id, attrs) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ---- reading -------------------------------------------------------------------------

    def record_ids(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT record_id FROM instances ORDER BY record_id"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[IndexedInstance]:
        """The instances of a study (of one series, or one instance), in index order."""
        sql = f"SELECT {_COLUMNS} FROM instances WHERE study_uid = ?"
        args: list[str] = [study_uid]
        if series_uid is not None:
            sql += " AND series_uid = ?"
            args.append(series_uid)
        if sop_uid is not None:
            sql += " AND sop_uid = ?"
            args.append(sop_uid)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq", args).fetchall()
        return [_instance(r) for r in rows]

    def candidate_record_ids(self, level: str, match: Mapping[str, str]) -> list[str]:
        """The records whose instances may match the query (the index's prefilter of
        :meth:`search`, a superset): the ones a caller needs visibility decided for,
        rather than every record in the index."""
        _, matchers = _matchers(level, match)
        where, args = _sql_prefilter(matchers)
        with self._lock:
            rows = self._db.execute(
                f"SELECT DISTINCT record_id FROM instances{where} ORDER BY record_id", args
            ).fetchall()
        return [str(r[0]) for r in rows]

    def search(
        self,
        level: str,
        match: Mapping[str, str],
        *,
        record_ids: Collection[str] | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[dict[str, str]]:
        """The ``level`` entities matching ``match`` (DICOM keyword -> C-FIND value).

        Each row holds the level's keys and those of the levels above, ``record_id``
        (several IDs separated by ``\\`` when a study spans records), and the counts:
        ``NumberOfPatientRelatedStudies``/``...Series``/``...Instances`` (PATIENT),
        ``NumberOfStudyRelatedSeries``/``...Instances`` and ``ModalitiesInStudy``
        (STUDY), ``NumberOfSeriesRelatedInstances`` (SERIES). Only instances of
        ``record_ids`` are considered (None: all). Rows come in the order their first
        instance was indexed. ``BAD_QUERY`` for an unknown level or a value over
        1024 characters or with control characters.
        """
        if not (0 <= limit <= MAX_LIMIT and offset >= 0):
            raise InvalidInput("limit or offset out of range", code="BAD_QUERY")
        level, matchers = _matchers(level, match)
        where, args = _sql_prefilter(matchers)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM instances{where} ORDER BY seq", args
            ).fetchall()
        allowed = None if record_ids is None else set(record_ids)
        groups: dict[str, list[IndexedInstance]] = {}
        for row in rows:
            inst = _instance(row)
            if allowed is not None and inst.record_id not in allowed:
                continue
            groups.setdefault(_flat(inst)[_GROUP_KEY[level]], []).append(inst)

        out: list[dict[str, str]] = []
        skipped = 0
        for members in groups.values():
            entry = _entry(level, members)
            if all(_matches(k, v, entry.get(k, "")) for k, v in matchers):
                if skipped < offset:
                    skipped += 1
                    continue
                if len(out) >= limit:
                    break
                out.append(entry)
        return out


def _matchers(level: str, match: Mapping[str, str]) -> tuple[str, list[tuple[str, str]]]:
    """The level (upper case) and the non-universal keys of a query at that level."""
    level = level.upper()
    if level not in LEVELS:
        raise InvalidInput(f"unknown query level {level[:20]!r}", code="BAD_QUERY")
    keys = _LEVEL_KEYS[level]
    matchers = []
    for key, raw in match.items():
        value = _clean(key, raw)
        if key in keys and value not in ("", "*"):
            matchers.append((key, value))
    return level, matchers


def _instance(row: tuple[Any, ...]) -> IndexedInstance:
    return IndexedInstance(
        sop_uid=row[0],
        record_id=row[1],
        patient=row[2],
        study_uid=row[3],
        series_uid=row[4],
        sop_class_uid=row[5],
        transfer_syntax=row[6],
        member=row[7],
        size=int(row[8]),
        attrs=dict(json.loads(row[9])),
    )


def _flat(i: IndexedInstance) -> dict[str, str]:
    return {
        **{k: i.attrs.get(k, "") for k in ATTRS},
        "StudyInstanceUID": i.study_uid,
        "SeriesInstanceUID": i.series_uid,
        "SOPInstanceUID": i.sop_uid,
        "SOPClassUID": i.sop_class_uid,
        "TransferSyntaxUID": i.transfer_syntax,
    }


def _entry(level: str, members: list[IndexedInstance]) -> dict[str, str]:
    first = _flat(members[0])
    entry = {k: first.get(k, "") for k in _LEVEL_KEYS[level] if k != "ModalitiesInStudy"}
    entry["record_id"] = "\\".join(sorted({m.record_id for m in members}))
    if level == "PATIENT":
        entry["NumberOfPatientRelatedStudies"] = str(len({m.study_uid for m in members}))
        entry["NumberOfPatientRelatedSeries"] = str(len({m.series_uid for m in members}))
        entry["NumberOfPatientRelatedInstances"] = str(len(members))
    elif level != "IMAGE":
        modalities = sorted({m.attrs.get("Modality", "") for m in members} - {""})
        entry["ModalitiesInStudy"] = "\\".join(modalities)
        if level == "STUDY":
            entry["NumberOfStudyRelatedSeries"] = str(len({m.series_uid for m in members}))
            entry["NumberOfStudyRelatedInstances"] = str(len(members))
        else:
            entry["NumberOfSeriesRelatedInstances"] = str(len(members))
    return entry


def _clean(key: str, raw: object) -> str:
    if not isinstance(raw, str):
        raise InvalidInput(f"the value of {key[:64]} is not text", code="BAD_QUERY")
    if len(raw) > MAX_VALUE_CHARS or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in raw):
        raise InvalidInput(
            f"the value of {key[:64]} is too long or holds control characters", code="BAD_QUERY"
        )
    return raw.strip(" ")


_SQL_COLUMN = {
    "StudyInstanceUID": "study_uid",
    "SeriesInstanceUID": "series_uid",
    "SOPInstanceUID": "sop_uid",
}


def _sql_prefilter(matchers: Iterable[tuple[str, str]]) -> tuple[str, list[str]]:
    """Narrow the rows read with the indexed columns (UID lists, an exact PatientID)."""
    clauses: list[str] = []
    args: list[str] = []
    for key, value in matchers:
        if key in _SQL_COLUMN:
            uids = [u.strip(" ") for u in value.split("\\") if u.strip(" ")][:1000]
            clauses.append(f"{_SQL_COLUMN[key]} IN ({', '.join('?' * len(uids))})")
            args.extend(uids)
        elif key == "PatientID" and "*" not in value and "?" not in value:
            clauses.append("patient_id = ?")
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _wildcard(pattern: str, flags: int = 0) -> re.Pattern[str]:
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), flags | re.DOTALL)


def _matches(key: str, query: str, value: str) -> bool:
    """Whether an entry's ``value`` of ``key`` matches the C-FIND ``query`` value."""
    value = value.strip(" ")
    if key in _UIDS:
        return value in {u.strip(" ") for u in query.split("\\")}
    if key == "ModalitiesInStudy":
        have = set(value.split("\\")) - {""}
        return any(_matches("Modality", q, m) for q in query.split("\\") for m in have)
    if key in _DATES and "-" in query:
        low, _, high = query.partition("-")
        low, high = low.strip(" "), high.strip(" ")
        if not value:
            return False
        return (not low or value >= low) and (not high or value[: len(high)] <= high)
    if key in _NUMBERS and query.lstrip("+-").isdigit():
        return value.lstrip("+-").isdigit() and int(value) == int(query)
    flags = re.IGNORECASE if key in _PN else 0
    if "*" in query or "?" in query:
        return _wildcard(query, flags).fullmatch(value) is not None
    if key in _PN:
        return value.casefold() == query.casefold()
    return value == query


# ---- reading instances from files --------------------------------------------------------


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(_text(v) for v in value)
    return str(value).strip("\x00 ")


def read_instance(
    fh: BinaryIO, *, record_id: str, patient: str, member: str, size: int
) -> IndexedInstance | None:
    """The index entry of one Part 10 file (its header only), None for a file without
    Study, Series or SOP Instance UID (a DICOMDIR, say)."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings may quote values
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        study = _text(ds.get("StudyInstanceUID"))
        series = _text(ds.get("SeriesInstanceUID"))
        sop = _text(ds.get("SOPInstanceUID"))
        if not (study and series and sop):
            return None
        attrs = {}
        for kw in ATTRS:
            try:
                text = _text(ds.get(kw))
            except Exception:  # a malformed value: not indexed, the file is kept as is
                text = ""
            if text:
                attrs[kw] = text[:MAX_VALUE_CHARS]
        meta = ds.file_meta
        return IndexedInstance(
            record_id=record_id,
            patient=patient,
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            sop_class_uid=_text(ds.get("SOPClassUID"))
            or _text(meta.get("MediaStorageSOPClassUID")),
            transfer_syntax=_text(meta.get("TransferSyntaxUID")),
            member=member,
            size=size,
            attrs=attrs,
        )
