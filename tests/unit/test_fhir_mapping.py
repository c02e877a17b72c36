"""FHIR mappings (pure): MedLedger objects → FHIR JSON that fhir.resources' R4B models
accept, the Consent mapping both ways, search values, and refusals of bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from medledger.app.model import Consent, Identity, RecordMeta
from medledger.dicom.index import IndexedInstance
from medledger.errors import InvalidInput
from medledger.fhir import resources
from medledger.fhir.capability import capability_statement
from medledger.fhir.consent_in import grant_fields
from medledger.fhir.models import parse
from medledger.fhir.outcome import Unprocessable, operation_outcome
from medledger.fhir.search import parse_date, parse_query
from medledger.ledger.block import Event

PATIENT = "ml" + "a" * 32
DOC = "ml" + "b" * 32
GATEWAY = "ml" + "c" * 32
DEVICE = "ml" + "d" * 32
RID = "r" + "1" * 32
CID = "c" + "2" * 32
T = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def valid(doc: dict[str, Any]) -> dict[str, Any]:
    """Round trip through the model: what we emit is valid R4(B) and unchanged by it."""
    model = get_fhir_model_class(doc["resourceType"]).model_validate(doc)
    assert json.loads(model.model_dump_json()) == doc
    return doc


def meta(record_type: str = "note", creator: str = DOC) -> RecordMeta:
    return RecordMeta(
        record_id=RID, patient=PATIENT, type=record_type, content_hash="b" + "a" * 58,
        size=1234, chunk_count=1, shard_root=b"", k=2, m=1, placement=[], custodians=[],
        threshold=1, deidentified=False, institution="hospital-a", creator=creator,
        created_ms=T, height=7,
    )  # fmt: skip


def consent(**kw: Any) -> Consent:
    base: dict[str, Any] = dict(
        consent_id=CID, patient=PATIENT, grantor=PATIENT, actor_kind="identity", actor=DOC,
        purposes=["research", "treatment"], record_ids=[RID], types=["note"], start_ms=T,
        end_ms=T + 86_400_000, permit=True, status="active", height=9, revoked_height=0,
    )  # fmt: skip
    base.update(kw)
    return Consent(**base)


def test_patient_is_pseudonymous_and_valid() -> None:
    ident = Identity(PATIENT, "patient", "hospital-a", "active", 3, DOC)
    doc = valid(resources.patient(ident, [("hospital-a", "PAT-1")]))
    assert doc["id"] == PATIENT and doc["active"] is True
    assert {"system": "urn:medledger:mrn:hospital-a", "value": "PAT-1", "use": "usual"} in doc[
        "identifier"
    ]
    assert not {"name", "telecom", "address", "birthDate"} & set(doc)


def test_document_reference_points_at_binary_with_the_manifest_cid() -> None:
    doc = valid(resources.document_reference(meta(), "http://n/fhir"))
    att = doc["content"][0]["attachment"]
    assert att["url"] == f"http://n/fhir/Binary/{RID}" and att["size"] == 1234
    assert att["contentType"] == "text/plain" and "hash" not in att
    assert att["extension"][0] == {
        "url": "urn:medledger:manifest-cid",
        "valueString": "b" + "a" * 58,
    }
    assert doc["date"] == "2026-01-01T00:00:00Z" or doc["date"].startswith("2026-01-01T00:00:00")


def test_consent_maps_one_to_one_and_back() -> None:
    c = consent()
    doc = valid(resources.consent(c, T, {RID: "note"}))
    prov = doc["provision"]
    assert doc["status"] == "active" and prov["type"] == "permit"
    assert prov["actor"][0]["reference"] == {"reference": f"Practitioner/{DOC}"}
    assert prov["data"][0]["reference"] == {"reference": f"DocumentReference/{RID}"}
    assert grant_fields(doc) == {
        "patient": PATIENT, "actor_kind": "identity", "actor": DOC,
        "purposes": ["research", "treatment"], "record_ids": [RID], "types": ["note"],
        "start_ms": T, "end_ms": T + 86_400_000, "permit": True,
    }  # fmt: skip
    inst = valid(resources.consent(consent(actor_kind="institution", actor="hospital-b",
                                           permit=False, status="inactive", record_ids=[]), T))  # fmt: skip
    assert inst["status"] == "inactive" and inst["provision"]["type"] == "deny"
    assert grant_fields({**inst, "status": "active"})["actor"] == "hospital-b"


@pytest.mark.parametrize(
    "change, code",
    [
        ({"status": "proposed"}, "UNSUPPORTED_CONSENT"),
        ({"provision": {"type": "permit"}}, "UNSUPPORTED_CONSENT"),
        ({"provision+": {"provision": [{"type": "deny"}]}}, "UNSUPPORTED_CONSENT"),
        ({"provision+": {"purpose": [{"system": "urn:x", "code": "treatment"}]}}, "BAD_PURPOSE"),
        ({"provision+": {"data": [{"meaning": "related", "reference": {"reference": f"DocumentReference/{RID}"}}]}}, "UNSUPPORTED_CONSENT"),
        ({"provision+": {"period": {"start": "2026"}}}, "BAD_PERIOD"),
        ({"patient": {"reference": "Group/1"}}, "BAD_REFERENCE"),
    ],
)  # fmt: skip
def test_consent_features_the_ledger_cannot_enforce_are_refused(
    change: dict[str, Any], code: str
) -> None:
    doc = resources.consent(consent(), T, {RID: "note"})
    if "provision+" in change:
        doc["provision"] = {**doc["provision"], **change.pop("provision+")}
    doc.update(change)
    with pytest.raises(Unprocessable) as exc:
        grant_fields(doc)
    assert exc.value.code == code and exc.value.http_status == 422


def test_audit_event_and_provenance_carry_the_transaction() -> None:
    ev = Event(action="read", actor=DOC, subject=PATIENT, record_id=RID, outcome="denied",
               detail="purpose=treatment; rule=not_in_care; no")  # fmt: skip
    doc = valid(resources.audit_event(ev, height=5, index=2, ev=0, time_ms=T, tx_hash="ab" * 32,
                                      chain_id="test", record_type="note"))  # fmt: skip
    assert doc["id"] == "h5-2-0" and doc["action"] == "R" and doc["outcome"] == "4"
    assert doc["agent"][0]["purposeOfUse"][0]["coding"][0]["code"] == "treatment"
    assert {"reference": f"DocumentReference/{RID}"} in [e["what"] for e in doc["entity"]]
    tx = {x["url"]: x for x in doc["extension"][0]["extension"]}
    assert tx["tx-hash"]["valueString"] == "ab" * 32 and tx["height"]["valueUnsignedInt"] == 5

    prov = valid(resources.provenance(meta("imaging-study", GATEWAY), tx_hash="cd" * 32,
                                      tx_index=0, on_behalf_of=DEVICE, envelope=b"tx"))  # fmt: skip
    assert prov["target"] == [{"reference": f"ImagingStudy/{RID}"}]
    assert [a["who"]["identifier"]["value"] for a in prov["agent"]] == [GATEWAY, DEVICE]
    assert prov["signature"][0]["data"] == "dHg="


def test_imaging_study_from_index_rows() -> None:
    def inst(series: str, sop: str, modality: str, n: str) -> IndexedInstance:
        return IndexedInstance(
            record_id=RID, patient=PATIENT, study_uid="1.2.3", series_uid=series, sop_uid=sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax="1.2.840.10008.1.2.1",
            member=f"{sop}.dcm", size=10,
            attrs={"Modality": modality, "StudyDate": "20040119", "SeriesNumber": n, "InstanceNumber": n},
        )  # fmt: skip

    rows = [inst("1.2.3.1", "1.2.3.1.1", "CT", "1"), inst("1.2.3.2", "1.2.3.2.1", "MR", "2"),
            inst("1.2.3.2", "1.2.3.2.2", "MR", "3")]  # fmt: skip
    doc = valid(resources.imaging_study(RID, PATIENT, "1.2.3", rows, "http://n/dicom-web"))
    assert doc["numberOfSeries"] == 2 and doc["numberOfInstances"] == 3
    assert doc["identifier"][0] == {
        "use": "official",
        "system": "urn:dicom:uid",
        "value": "urn:oid:1.2.3",
    }
    assert [s["modality"]["code"] for s in doc["series"]] == ["CT", "MR"]
    assert doc["series"][0]["modality"]["system"] == "http://dicom.nema.org/resources/ontology/DCM"
    assert (
        doc["series"][1]["instance"][0]["sopClass"]["code"] == "urn:oid:1.2.840.10008.5.1.4.1.1.2"
    )
    assert doc["started"] == "2004-01-19"
    assert doc["extension"][0]["valueUrl"] == "http://n/dicom-web/studies/1.2.3"


def test_capability_bundle_and_outcome_are_valid() -> None:
    cap = valid(capability_statement("http://n/fhir", "2026-01-01T00:00:00Z"))
    assert cap["fhirVersion"] == "4.0.1"
    out = valid(operation_outcome(422, "UNSUPPORTED_CONSENT", "no"))
    assert out["issue"][0]["details"]["coding"][0]["code"] == "UNSUPPORTED_CONSENT"
    bundle = valid(resources.searchset([out], total=3, self_url="http://n/fhir/x", base_url="b"))
    assert bundle["total"] == 3 and bundle["entry"][0]["resource"] == out


def test_incoming_resources_are_validated_without_echoing_values() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse(b'{"resourceType": "Patient", "birthDate": "SECRET-VALUE"}', "Patient")
    assert exc.value.code == "INVALID_RESOURCE" and "SECRET" not in exc.value.message
    for raw, code in [(b"nope", "INVALID_JSON"), (b'"x"', "INVALID_JSON"),
                      (b'{"resourceType": "Consent"}', "WRONG_RESOURCE_TYPE")]:  # fmt: skip
        with pytest.raises(InvalidInput) as exc:
            parse(raw, "Patient")
        assert exc.value.code == code


def test_search_values() -> None:
    day = parse_date("2026-01-01")
    assert day.matches(T) and day.matches(T + 86_399_999) and not day.matches(T + 86_400_000)
    assert parse_date("ge2026").matches(T) and not parse_date("lt2026").matches(T)
    assert parse_date("gt2025-12").matches(T) and parse_date("le2026-01-01T00:00:00Z").matches(T)
    for bad in ("yesterday", "2026-13-01", "xx2026"):
        with pytest.raises(InvalidInput):
            parse_date(bad)
    with pytest.raises(InvalidInput) as exc:
        parse_query("Consent", [("patient", PATIENT), ("name", "x")])
    assert exc.value.code == "UNKNOWN_SEARCH_PARAM"
    with pytest.raises(InvalidInput):
        parse_query("Consent", [("_count", "-1")])
    assert parse_query("AuditEvent", [("patient", PATIENT), ("_count", "5")]).count == 5
