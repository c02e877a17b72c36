"""STOW-RS (PS3.18 10.5): one body part -> an instance for the gateway's spool, or why not.

Each part must be a DICOM Part 10 file (preamble, ``DICM``, file meta) and passes the
checks a C-STORE passes in :mod:`.scp`: at most ``max_bytes``; decodable in a
transfer syntax pynetdicom knows (``0xC000`` otherwise); valid Study, SOP Instance and
SOP Class UIDs, the file meta naming the same SOP Instance, a valid PatientID, and the
study of the request's path if it names one (``0xA900`` otherwise). An accepted part
is spooled exactly as received, so WADO-RS returns it byte for byte.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES

from medledger.dicom.scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
)
from medledger.dicom.uids import is_uid, patient_id_problem, string_value

DICOM_MEDIA = "application/dicom"
KNOWN_TRANSFER_SYNTAXES = frozenset(str(ts) for ts in ALL_TRANSFER_SYNTAXES)


@dataclass(frozen=True, slots=True)
class Accepted:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    patient_id: str


@dataclass(frozen=True, slots=True)
class Failed:
    status: int  # FailureReason (0xA700, 0xA900, 0xC000)
    reason: str  # a short code for the log
    sop_uid: str = ""  # when it is a valid UID
    sop_class_uid: str = ""


def check_part(
    data: bytes, content_type: str, *, max_bytes: int, study_uid: str | None
) -> Accepted | Failed:
    """Decide one STOW-RS body part (``content_type``: its media type, '' if none)."""
    if content_type not in ("", DICOM_MEDIA):
        return Failed(STATUS_CANNOT_UNDERSTAND, "not_application_dicom")
    if len(data) > max_bytes:
        return Failed(STATUS_OUT_OF_RESOURCES, "too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
            ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
            _decode_all(ds)
    except Exception:  # pydicom signals malformed files with many types
        return Failed(STATUS_CANNOT_UNDERSTAND, "undecodable")
    sop_uid = string_value(ds.get("SOPInstanceUID"))
    sop_class = string_value(ds.get("SOPClassUID"))
    ids = {
        "sop_uid": sop_uid if is_uid(sop_uid) else "",
        "sop_class_uid": sop_class if is_uid(sop_class) else "",
    }
    if ts not in KNOWN_TRANSFER_SYNTAXES:
        return Failed(STATUS_CANNOT_UNDERSTAND, "unknown_transfer_syntax", **ids)
    study = string_value(ds.get("StudyInstanceUID"))
    if not study:
        return Failed(STATUS_DATASET_MISMATCH, "no_study_uid", **ids)
    if not is_uid(study):
        return Failed(STATUS_DATASET_MISMATCH, "bad_study_uid", **ids)
    if not (ids["sop_uid"] and ids["sop_class_uid"]):
        return Failed(STATUS_DATASET_MISMATCH, "bad_sop_uid", **ids)
    if string_value(ds.file_meta.get("MediaStorageSOPInstanceUID")) != sop_uid:
        return Failed(STATUS_DATASET_MISMATCH, "meta_sop_mismatch", **ids)
    patient_id = string_value(ds.get("PatientID"))
    if patient_id_problem(patient_id) is not None:
        return Failed(STATUS_DATASET_MISMATCH, "bad_patient_id", **ids)
    if study_uid is not None and study != study_uid:
        return Failed(STATUS_DATASET_MISMATCH, "other_study", **ids)
    series = string_value(ds.get("SeriesInstanceUID"))
    if not is_uid(series):
        return Failed(STATUS_DATASET_MISMATCH, "bad_series_uid", **ids)
    return Accepted(study, series, sop_uid, sop_class, patient_id)


UNDEFINED_LENGTH = 0xFFFFFFFF


def _decode_all(ds: Dataset) -> None:
    """Convert every element's value (pydicom defers it), so a malformed one raises;
    an element shorter than its declared length (a truncated file) raises too."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if (
            isinstance(length, int)
            and length != UNDEFINED_LENGTH
            and isinstance(value, bytes)
            and len(value) != length
        ):
            raise ValueError("an element is shorter than its declared length")
    for elem in ds.iterall():
        _: Any = elem.value
