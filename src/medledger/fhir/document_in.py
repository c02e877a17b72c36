"""An incoming FHIR DocumentReference (create) as what MedLedger stores: the patient,
the record type and the content bytes. Pure: no I/O.

Only inline content is taken (``content[0].attachment.data``, base64): the node stores
it as a new record of the patient, encrypted and erasure-coded, registered for the
token's identity. A content by URL, several contents, a subject other than a Patient,
or an attachment whose declared size or SHA-1 hash does not match its data are refused
(422) and nothing is stored. Error messages name the element, never its value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from medledger.app.model import RECORD_TYPE_RE
from medledger.crypto.keys import is_identity_id
from medledger.fhir.outcome import Unprocessable
from medledger.fhir.resources import CONTENT_TYPES, IMAGING_STUDY_TYPE
from medledger.fhir.systems import SYS_RECORD_TYPE

DEFAULT_TYPE = "document"
_TYPE_OF_CONTENT = {ctype: rtype for rtype, ctype in reversed(list(CONTENT_TYPES.items()))}


@dataclass(frozen=True, slots=True)
class NewDocument:
    patient: str
    record_type: str
    data: bytes


def document_in(doc: dict[str, Any]) -> NewDocument:
    """What to store for a (validated) DocumentReference resource."""
    ref = str((doc.get("subject") or {}).get("reference") or "")
    kind, _, patient = ref.partition("/")
    if kind != "Patient" or not is_identity_id(patient):
        raise Unprocessable(
            "subject must reference Patient/<ledger identity ID>", code="BAD_SUBJECT"
        )
    contents = doc.get("content") or []
    if len(contents) != 1:
        raise Unprocessable("send exactly one content", code="UNSUPPORTED_FEATURE")
    attachment = contents[0].get("attachment") or {}
    if attachment.get("url") or "data" not in attachment:
        raise Unprocessable(
            "content.attachment must carry the data inline (base64), not a url",
            code="UNSUPPORTED_FEATURE",
        )
    try:
        data = base64.b64decode(str(attachment["data"]), validate=True)
    except (binascii.Error, ValueError):
        raise Unprocessable("content.attachment.data is not base64", code="BAD_CONTENT")
    if not data:
        raise Unprocessable("content.attachment.data is empty", code="BAD_CONTENT")
    size = attachment.get("size")
    if size is not None and int(size) != len(data):
        raise Unprocessable(
            "content.attachment.size does not match the data", code="CONTENT_MISMATCH"
        )
    digest = attachment.get("hash")
    if digest is not None:
        try:
            declared = base64.b64decode(str(digest), validate=True)
        except (binascii.Error, ValueError):
            raise Unprocessable("content.attachment.hash is not base64", code="BAD_CONTENT")
        if declared != hashlib.sha1(data).digest():
            raise Unprocessable(
                "content.attachment.hash (SHA-1) does not match the data",
                code="CONTENT_MISMATCH",
            )
    return NewDocument(patient=patient, record_type=_record_type(doc, attachment), data=data)


def _record_type(doc: dict[str, Any], attachment: dict[str, Any]) -> str:
    for coding in (doc.get("type") or {}).get("coding") or []:
        if coding.get("system") == SYS_RECORD_TYPE:
            code = str(coding.get("code") or "")
            if not RECORD_TYPE_RE.match(code):
                raise Unprocessable(
                    f"type codes of {SYS_RECORD_TYPE} match [a-z][a-z0-9_.-]{{0,31}}",
                    code="BAD_RECORD_TYPE",
                )
            if code == IMAGING_STUDY_TYPE:
                raise Unprocessable(
                    "imaging studies are stored by DICOM (C-STORE, STOW-RS)",
                    code="BAD_RECORD_TYPE",
                )
            return code
    return _TYPE_OF_CONTENT.get(str(attachment.get("contentType") or ""), DEFAULT_TYPE)
