"""MedLedger objects as FHIR R4 resources (pure functions, validated on the way out).

Every function returns FHIR JSON already validated by :func:`.models.emit`; callers
pass in what the ledger says (identities, record metadata, consents, audit rows,
index rows) and never a name, since the ledger holds none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medledger.app.model import (
    ACTIVE,
    ACTOR_INSTITUTION,
    CONSENT_ACTIVE,
    Consent,
    Identity,
    RecordMeta,
)
from medledger.fhir.models import emit
from medledger.fhir.systems import (
    EXT_MANIFEST_CID,
    EXT_WADO_RS,
    SYS_AUDIT_ACTION,
    SYS_CONSENT,
    SYS_DCM,
    SYS_DICOM_UID,
    SYS_IDENTITY,
    SYS_MRN_PREFIX,
    SYS_PURPOSE,
    SYS_RECORD,
    SYS_RFC3986,
    identity_ref,
    instant,
    institution_ref,
    patient_ref,
    record_type_coding,
    tx_extension,
)
from medledger.ledger.block import Event

IMAGING_STUDY_TYPE = "imaging-study"
CONTENT_TYPES = {
    "note": "text/plain",
    "text": "text/plain",
    "pdf": "application/pdf",
    "report": "application/pdf",
    "json": "application/json",
    "fhir": "application/fhir+json",
    IMAGING_STUDY_TYPE: "application/x-tar",
}


def resource_type_of(record_type: str) -> str:
    """The FHIR resource a MedLedger record is served as."""
    return "ImagingStudy" if record_type == IMAGING_STUDY_TYPE else "DocumentReference"


def record_reference(record_id: str, record_type: str | None) -> dict[str, Any]:
    if record_type is None:  # unknown here (erased, or not visible): a logical reference
        return {"identifier": {"system": SYS_RECORD, "value": record_id}}
    return {"reference": f"{resource_type_of(record_type)}/{record_id}"}


# ---- Patient --------------------------------------------------------------------------------


def patient(ident: Identity, mrns: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """A pseudonymous Patient: the ledger identity, its MRN links ``(institution, mrn)``
    at this node, its status and institution; no name, no demographics."""
    identifiers: list[dict[str, Any]] = [
        {"use": "official", "system": SYS_IDENTITY, "value": ident.id}
    ]
    identifiers += [
        {"use": "usual", "system": SYS_MRN_PREFIX + inst, "value": mrn} for inst, mrn in mrns
    ]
    return emit(
        {
            "resourceType": "Patient",
            "id": ident.id,
            "identifier": identifiers,
            "active": ident.status == ACTIVE,
            "managingOrganization": institution_ref(ident.institution),
        }
    )


# ---- DocumentReference ---------------------------------------------------------------------


def document_reference(meta: RecordMeta, base_url: str) -> dict[str, Any]:
    """A non-image record: metadata from the ledger, the content at ``Binary/<id>``."""
    attachment: dict[str, Any] = {
        "url": f"{base_url}/Binary/{meta.record_id}",
        "size": meta.size,
        "creation": instant(meta.created_ms),
        # FHIR's attachment.hash is SHA-1 of the content; the ledger holds the CID (a
        # SHA-256) of the record's storage manifest, which names every encrypted chunk
        "extension": [{"url": EXT_MANIFEST_CID, "valueString": meta.content_hash}],
    }
    content_type = CONTENT_TYPES.get(meta.type)
    if content_type is not None:
        attachment["contentType"] = content_type
    return emit(
        {
            "resourceType": "DocumentReference",
            "id": meta.record_id,
            "identifier": [{"system": SYS_RECORD, "value": meta.record_id}],
            "status": "current",
            "type": {"coding": [record_type_coding(meta.type)], "text": meta.type},
            "subject": patient_ref(meta.patient),
            "date": instant(meta.created_ms),
            "author": [identity_ref(meta.creator)],
            "custodian": institution_ref(meta.institution),
            "content": [{"attachment": attachment}],
        }
    )


# ---- ImagingStudy ----------------------------------------------------------------------------


def _dicom_date(da: str) -> str | None:
    """A DICOM DA (YYYYMMDD) as a FHIR date; the time is left out (no time zone)."""
    da = da.strip()
    if len(da) == 8 and da.isdigit():
        return f"{da[:4]}-{da[4:6]}-{da[6:]}"
    return None


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


def _modality(code: str) -> dict[str, Any]:
    return {"system": SYS_DCM, "code": code}


def imaging_study(
    record_id: str,
    patient_id: str,
    study_uid: str,
    instances: Sequence[Any],
    dicomweb_base: str,
) -> dict[str, Any]:
    """An ImagingStudy from the study index: ``instances`` are the study's
    :class:`medledger.dicom.index.IndexedInstance` rows (attrs: DICOM keyword → text)."""
    series: dict[str, list[Any]] = {}
    for inst in instances:
        series.setdefault(inst.series_uid, []).append(inst)
    first: Mapping[str, str] = instances[0].attrs if instances else {}
    out_series = []
    modalities: list[str] = []
    for series_uid in sorted(
        series, key=lambda u: (_int(series[u][0].attrs.get("SeriesNumber")) or 0, u)
    ):
        members = series[series_uid]
        attrs = members[0].attrs
        entry: dict[str, Any] = {"uid": series_uid, "numberOfInstances": len(members)}
        if (number := _int(attrs.get("SeriesNumber"))) is not None:
            entry["number"] = number
        modality = (attrs.get("Modality") or "").strip()
        entry["modality"] = _modality(modality or "OT")
        if modality and modality not in modalities:
            modalities.append(modality)
        if desc := (attrs.get("SeriesDescription") or "").strip():
            entry["description"] = desc
        if body := (attrs.get("BodyPartExamined") or "").strip():
            entry["bodySite"] = {"system": SYS_DCM, "display": body}
        entry["instance"] = []
        for inst in sorted(
            members, key=lambda i: (_int(i.attrs.get("InstanceNumber")) or 0, i.sop_uid)
        ):
            row: dict[str, Any] = {
                "uid": inst.sop_uid,
                "sopClass": {"system": SYS_RFC3986, "code": f"urn:oid:{inst.sop_class_uid}"},
            }
            if (n := _int(inst.attrs.get("InstanceNumber"))) is not None:
                row["number"] = n
            entry["instance"].append(row)
        out_series.append(entry)
    doc: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": record_id,
        "contained": [
            {
                "resourceType": "Endpoint",
                "id": "wado-rs",
                "status": "active",
                "connectionType": {
                    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                    "code": "dicom-wado-rs",
                },
                "payloadType": [{"text": "DICOM"}],
                "payloadMimeType": ["application/dicom"],
                "address": dicomweb_base,
            }
        ],
        "extension": [{"url": EXT_WADO_RS, "valueUrl": f"{dicomweb_base}/studies/{study_uid}"}],
        "identifier": [
            {"use": "official", "system": SYS_DICOM_UID, "value": f"urn:oid:{study_uid}"},
            {"system": SYS_RECORD, "value": record_id},
        ],
        "status": "available",
        "subject": patient_ref(patient_id),
        "endpoint": [{"reference": "#wado-rs"}],
        "numberOfSeries": len(out_series),
        "numberOfInstances": len(instances),
        "series": out_series,
    }
    if modalities:
        doc["modality"] = [_modality(m) for m in modalities]
    if started := _dicom_date(first.get("StudyDate", "")):
        doc["started"] = started
    if desc := (first.get("StudyDescription") or "").strip():
        doc["description"] = desc
    return emit(doc)


# ---- Consent ---------------------------------------------------------------------------------


def consent(
    c: Consent,
    granted_ms: int,
    record_types: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """An on-chain consent as a FHIR Consent, one to one (docs/access-control.md).

    ``record_types`` (record ID → type) picks DocumentReference or ImagingStudy for
    ``provision.data``; a record missing from it gets a logical reference."""
    types = record_types or {}
    actor_ref: dict[str, Any] = (
        {"reference": f"Organization/{c.actor}"}
        if c.actor_kind == ACTOR_INSTITUTION
        else {"reference": f"Practitioner/{c.actor}"}
    )
    provision: dict[str, Any] = {
        "type": "permit" if c.permit else "deny",
        "actor": [
            {
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                        }
                    ]
                },
                "reference": actor_ref,
            }
        ],
        "purpose": [{"system": SYS_PURPOSE, "code": p} for p in c.purposes],
    }
    if c.start_ms or c.end_ms:
        period: dict[str, str] = {}
        if c.start_ms:
            period["start"] = instant(c.start_ms)
        if c.end_ms:
            period["end"] = instant(c.end_ms)
        provision["period"] = period
    if c.record_ids:
        provision["data"] = [
            {"meaning": "instance", "reference": record_reference(r, types.get(r))}
            for r in c.record_ids
        ]
    if c.types:
        provision["class"] = [record_type_coding(t) for t in c.types]
    performer = patient_ref(c.grantor) if c.grantor == c.patient else identity_ref(c.grantor)
    return emit(
        {
            "resourceType": "Consent",
            "id": c.consent_id,
            "identifier": [{"system": SYS_CONSENT, "value": c.consent_id}],
            "status": "active" if c.status == CONSENT_ACTIVE else "inactive",
            "scope": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                        "code": "patient-privacy",
                    }
                ]
            },
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": patient_ref(c.patient),
            "dateTime": instant(granted_ms),
            "performer": [performer],
            "policyRule": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "OPTIN" if c.permit else "OPTOUT",
                    }
                ]
            },
            "provision": provision,
        }
    )


# ---- AuditEvent ------------------------------------------------------------------------------

_RECORD_ACTIONS = frozenset({"read", "break_glass", "write", "erase", "erase.request"})
_ACTION_CODE = {
    "write": "C",
    "read": "R",
    "break_glass": "R",
    "erase": "D",
    "consent.grant": "C",
    "consent.revoke": "U",
    "care.start": "C",
    "care.end": "U",
    "proxy.add": "C",
    "proxy.remove": "U",
    "enroll": "C",
    "suspend": "U",
}


def audit_event_id(height: int, index: int, ev: int) -> str:
    return f"h{height}-{index}-{ev}"


def _event_type(action: str) -> dict[str, Any]:
    if action in _RECORD_ACTIONS:
        return {"system": SYS_DCM, "code": "110110", "display": "Patient Record"}
    if action in ("enroll", "suspend"):
        return {"system": SYS_DCM, "code": "110137", "display": "User Security Attributes Changed"}
    if action.startswith(("consent.", "care.", "proxy.")):
        return {"system": SYS_DCM, "code": "110136", "display": "Security Roles Changed"}
    return {"system": SYS_DCM, "code": "110100", "display": "Application Activity"}


def _outcome(outcome: str) -> str:
    if outcome in ("ok", "allowed"):
        return "0"
    return "4" if outcome == "denied" else "8"


def _detail_value(detail: str, key: str) -> str | None:
    for part in detail.replace(";", " ").split():
        if part.startswith(key + "="):
            return part[len(key) + 1 :]
    return None


def audit_event(
    event: Event,
    *,
    height: int,
    index: int,
    ev: int,
    time_ms: int,
    tx_hash: str,
    chain_id: str,
    record_type: str | None = None,
) -> dict[str, Any]:
    """One on-chain audit event (an ``audit_index`` row) as an AuditEvent."""
    agent: dict[str, Any] = {"who": identity_ref(event.actor), "requestor": True}
    purpose = _detail_value(event.detail, "purpose")
    if purpose:
        agent["purposeOfUse"] = [{"coding": [{"system": SYS_PURPOSE, "code": purpose}]}]
    entities: list[dict[str, Any]] = []
    if event.subject and not event.subject.startswith("@"):
        entities.append(
            {
                "what": patient_ref(event.subject)
                if event.action in _RECORD_ACTIONS or event.action.startswith("consent.")
                else identity_ref(event.subject),
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                    "display": "Person",
                },
            }
        )
    if event.record_id:
        entities.append(
            {
                "what": record_reference(event.record_id, record_type),
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "2",
                    "display": "System Object",
                },
            }
        )
    doc: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": audit_event_id(height, index, ev),
        "extension": [tx_extension(tx_hash, height, index)],
        "type": _event_type(event.action),
        "subtype": [{"system": SYS_AUDIT_ACTION, "code": event.action}],
        "action": _ACTION_CODE.get(event.action, "E"),
        "recorded": instant(time_ms),
        "outcome": _outcome(event.outcome),
        "agent": [agent],
        "source": {"site": chain_id, "observer": {"display": "MedLedger ledger"}},
    }
    if event.detail:
        doc["outcomeDesc"] = f"{event.outcome}: {event.detail}"[:1000]
    if entities:
        doc["entity"] = entities
    return emit(doc)


# ---- Provenance ------------------------------------------------------------------------------


def provenance(
    meta: RecordMeta,
    *,
    tx_hash: str,
    tx_index: int,
    on_behalf_of: str = "",
    envelope: bytes = b"",
) -> dict[str, Any]:
    """Who created a record, when (the registration's block time), with the
    transaction and block as evidence; ``envelope`` (the signed transaction, base64 in
    ``signature.data``) lets anyone check the creator's Ed25519 signature."""
    import base64

    author: dict[str, Any] = {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "author",
                }
            ]
        },
        "who": identity_ref(meta.creator),
    }
    agents = [author]
    if on_behalf_of:
        author["onBehalfOf"] = identity_ref(on_behalf_of)
        agents.append(
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "performer",
                        }
                    ]
                },
                "who": identity_ref(on_behalf_of),
            }
        )
    doc: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": meta.record_id,
        "extension": [tx_extension(tx_hash, meta.height, tx_index)],
        "target": [record_reference(meta.record_id, meta.type)],
        "recorded": instant(meta.created_ms),
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE",
                }
            ]
        },
        "agent": agents,
    }
    if envelope:
        doc["signature"] = [
            {
                "type": [
                    {
                        "system": "urn:iso-astm:E1762-95:2013",
                        "code": "1.2.840.10065.1.12.1.1",
                        "display": "Author's Signature",
                    }
                ],
                "when": instant(meta.created_ms),
                "who": identity_ref(meta.creator),
                "sigFormat": "application/vnd.medledger.tx",
                "data": base64.b64encode(envelope).decode("ascii"),
            }
        ]
    return emit(doc)


# ---- Bundle ----------------------------------------------------------------------------------


def searchset(
    resources: Sequence[dict[str, Any]], *, total: int, self_url: str, base_url: str
) -> dict[str, Any]:
    """A searchset Bundle of already validated resources."""
    return emit(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": [{"relation": "self", "url": self_url}],
            "entry": [
                {
                    **(
                        {"fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}"}
                        if "id" in r
                        else {}
                    ),
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in resources
            ],
        }
    )
