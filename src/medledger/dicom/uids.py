"""DICOM unique identifiers (PS3.5 section 9 and value representation UI).

A UID is 1 to 64 characters: components of digits separated by single dots, each
component ``0`` or a number without a leading zero. MedLedger uses the Study and SOP
Instance UIDs of received instances as spool directory and file names, so anything
else (``..``, a slash, a NUL, 65 characters) is refused before it touches the disk.
"""

from __future__ import annotations

import re

MAX_UID = 64
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_uid(value: object) -> bool:
    """Whether ``value`` is a valid DICOM UID."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= MAX_UID
        and _UID_RE.fullmatch(value) is not None
    )


MAX_PATIENT_ID = 64


def patient_id_problem(value: object) -> str | None:
    """Why ``value`` is not an acceptable PatientID / MRN (VR LO), or None.

    1 to 64 characters, no control characters, no backslash, no leading or trailing
    spaces (DICOM pads them; MedLedger stores one spelling).
    """
    if not isinstance(value, str):
        return "a patient identifier is a string"
    if not 1 <= len(value) <= MAX_PATIENT_ID:
        return f"a patient identifier has 1 to {MAX_PATIENT_ID} characters"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value) or "\\" in value:
        return "a patient identifier holds no control characters or backslash"
    if value != value.strip(" "):
        return "a patient identifier cannot start or end with a space"
    return None


def string_value(value: object) -> str:
    """A single DICOM string element value as text, padding removed ('' when absent
    or multi-valued): what the SCP and STOW-RS check UIDs and PatientIDs on."""
    if value is None or not isinstance(value, str):
        return ""
    return value.strip("\x00 ")
