"""Identifier systems, extension URLs and small shared shapes of the FHIR mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

SYS_IDENTITY = "urn:medledger:identity"
SYS_MRN_PREFIX = "urn:medledger:mrn:"  # + institution: its MRN (DICOM PatientID) links
SYS_INSTITUTION = "urn:medledger:institution"
SYS_RECORD = "urn:medledger:record"
SYS_RECORD_TYPE = "urn:medledger:record-type"
SYS_PURPOSE = "urn:medledger:purpose"
SYS_CONSENT = "urn:medledger:consent"
SYS_AUDIT_ACTION = "urn:medledger:audit-action"
SYS_DICOM_UID = "urn:dicom:uid"
SYS_DCM = "http://dicom.nema.org/resources/ontology/DCM"
SYS_RFC3986 = "urn:ietf:rfc:3986"

EXT_MANIFEST_CID = "urn:medledger:manifest-cid"
EXT_TRANSACTION = "urn:medledger:transaction"  # sub-extensions tx-hash, height, index
EXT_WADO_RS = "urn:medledger:wado-rs-study"


def instant(ms: int) -> str:
    """A block time (ms since the epoch, UTC) as a FHIR instant."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{ms % 1000:03d}Z"
    )


def identity_ref(identity_id: str) -> dict[str, Any]:
    """A logical reference to a ledger identity (no resource of its own here)."""
    return {"identifier": {"system": SYS_IDENTITY, "value": identity_id}}


def institution_ref(institution: str) -> dict[str, Any]:
    return {
        "identifier": {"system": SYS_INSTITUTION, "value": institution},
        "display": institution,
    }


def patient_ref(patient: str) -> dict[str, Any]:
    return {"reference": f"Patient/{patient}"}


def record_type_coding(record_type: str) -> dict[str, Any]:
    return {"system": SYS_RECORD_TYPE, "code": record_type}


def tx_extension(tx_hash: str, height: int, index: int | None = None) -> dict[str, Any]:
    """The transaction (and block) that is the evidence of a fact on the ledger."""
    parts: list[dict[str, Any]] = [
        {"url": "tx-hash", "valueString": tx_hash},
        {"url": "height", "valueUnsignedInt": height},
    ]
    if index is not None:
        parts.append({"url": "index", "valueUnsignedInt": index})
    return {"url": EXT_TRANSACTION, "extension": parts}
