"""HL7 FHIR R4 under ``/fhir`` against a real 4-institution consortium.

Plain httpx with ``Authorization: Bearer`` tokens (``Client.issue_token``, what
``medledger token issue`` prints), every resource parsed with fhir.resources' R4B
models: the CapabilityStatement; a patient reading its own Patient and a stranger
refused; a Consent created by the patient granting access on chain (the clinician's
read through ``Client.get_record`` is allowed) and deleted to revoke it; the read in
the AuditEvent search; the record's Provenance naming its creator with the
transaction; a Patient created by an admin (a custodial key, an MRN link); hostile
input refused with an OperationOutcome and nothing changed on chain.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class

from medledger.client import Client
from medledger.crypto.keys import load_key_file
from medledger.errors import Forbidden

from .harness import Consortium, Identity
from .test_consortium import admin_key, api, enroll_as, home
from .test_erasure_storage import running_quad

FHIR_JSON = "application/fhir+json"
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def quad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    with running_quad(tmp_path_factory.mktemp("fhir")) as c:
        yield c


class Cast:
    def __init__(self, c: Consortium) -> None:
        self.c = c
        self.api = api(c, "hospital-a")
        self.admin = admin_key(c, "hospital-a")
        with Client(self.api, self.admin) as cl:
            self.gateway_id = str(cl.status()["dicom"]["gateway_id"])
            assert cl.enroll(self.gateway_id, "service")["code"] == "OK"
        self.doc_a = enroll_as(c, "hospital-a", "hospital-a", "doc-a", "clinician")
        self.doc_b = enroll_as(c, "hospital-b", "hospital-b", "doc-b", "clinician")
        self.patient = enroll_as(c, "hospital-a", "hospital-a", "patient", "patient")
        self.http = httpx.Client(base_url=self.api, timeout=60)

    def key(self, who: Identity | str) -> Any:
        return self.admin if who == "admin" else load_key_file(Path(who.key_file))  # type: ignore[union-attr]

    def token(self, who: Identity | str, scopes: str = "read") -> str:
        with Client(self.api, self.key(who)) as cl:
            return cl.issue_token(scopes.split(","), HOUR_MS)

    def client(self, who: Identity) -> Client:
        return Client(self.api, self.key(who))

    def get(self, path: str, who: Identity | str, **params: Any) -> httpx.Response:
        return self.http.get(
            "/fhir/" + path, params=params, headers={"Authorization": f"Bearer {self.token(who)}"}
        )

    def send(
        self, method: str, path: str, who: Identity | str, scopes: str, body: Any = None
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.request(
            method,
            "/fhir/" + path,
            content=content if body is not None else None,
            headers={
                "Authorization": f"Bearer {self.token(who, scopes)}",
                "Content-Type": FHIR_JSON,
            },
        )


@pytest.fixture(scope="module")
def cast(quad: Consortium) -> Iterator[Cast]:
    s = Cast(quad)
    yield s
    s.http.close()


def valid(resp: httpx.Response, resource_type: str, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(FHIR_JSON)
    doc: dict[str, Any] = resp.json()
    assert doc["resourceType"] == resource_type, doc
    get_fhir_model_class(resource_type).model_validate(doc)  # raises if not valid R4
    return doc


def outcome(resp: httpx.Response, status: int, code: str) -> None:
    doc = valid(resp, "OperationOutcome", status)
    codes = [c["code"] for i in doc["issue"] for c in i["details"]["coding"]]
    assert code in codes, doc


def entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    assert bundle["type"] == "searchset" and bundle["link"][0]["relation"] == "self"
    return [e["resource"] for e in bundle.get("entry", [])]


def put(cast: Cast, data: bytes, record_type: str = "note") -> str:
    src = cast.c.work / f"src-{os.urandom(4).hex()}.bin"
    src.write_bytes(data)
    with cast.client(cast.doc_a) as cl:
        return cl.put_record(src, patient=cast.patient.id, record_type=record_type).record_id


def clinician_reads(cast: Cast, who: Identity, record_id: str) -> bytes:
    out = cast.c.work / f"get-{os.urandom(4).hex()}.bin"
    with cast.client(who) as cl:
        cl.get_record(record_id, out, purpose="treatment")
    return out.read_bytes()


def consent_body(cast: Cast, record_id: str, **provision: Any) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{cast.patient.id}"},
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "provision": {
            "type": "permit",
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
                    "reference": {"reference": f"Practitioner/{cast.doc_b.id}"},
                }
            ],
            "purpose": [{"system": "urn:medledger:purpose", "code": "treatment"}],
            "data": [
                {
                    "meaning": "instance",
                    "reference": {"reference": f"DocumentReference/{record_id}"},
                }
            ],
            **provision,
        },
    }


def chain_consents(cast: Cast) -> list[dict[str, Any]]:
    with cast.client(cast.patient) as cl:
        return cl.consents(cast.patient.id)


# ---- tests -------------------------------------------------------------------------------------


def test_metadata_is_a_valid_capability_statement(cast: Cast) -> None:
    doc = valid(cast.http.get("/fhir/metadata"), "CapabilityStatement")
    assert doc["fhirVersion"] == "4.0.1" and doc["format"] == ["json"]
    served = {r["type"]: r for r in doc["rest"][0]["resource"]}
    assert {"Patient", "DocumentReference", "ImagingStudy", "Consent", "AuditEvent"} <= set(served)
    assert {"create", "delete"} <= {i["code"] for i in served["Consent"]["interaction"]}
    assert "create" in {i["code"] for i in served["DocumentReference"]["interaction"]}
    assert "create" not in {i["code"] for i in served["ImagingStudy"]["interaction"]}


def test_patient_reads_itself_and_a_stranger_sees_nothing(cast: Cast) -> None:
    me = valid(cast.get(f"Patient/{cast.patient.id}", cast.patient), "Patient")
    assert me["id"] == cast.patient.id and me["active"] is True
    assert {"system": "urn:medledger:identity", "value": cast.patient.id, "use": "official"} in me[
        "identifier"
    ]
    assert "name" not in me
    # doc-b (another institution, no care, no consent)
    outcome(cast.get(f"Patient/{cast.patient.id}", cast.doc_b), 403, "ACCESS_DENIED")
    found = valid(cast.get("Patient", cast.doc_b, _id=cast.patient.id), "Bundle")
    assert found["total"] == 0 and entries(found) == []
    # no credentials at all
    outcome(cast.http.get(f"/fhir/Patient/{cast.patient.id}"), 401, "AUTH_REQUIRED")


def test_hostile_input_is_refused_and_changes_nothing(cast: Cast) -> None:
    record_id = put(cast, b"hostile-input note")
    before = chain_consents(cast)
    for body, status, code in [
        (b"{not json", 400, "INVALID_JSON"),
        (b"[]", 400, "INVALID_JSON"),
        ({"resourceType": "Patient"}, 400, "WRONG_RESOURCE_TYPE"),
        ({**consent_body(cast, record_id), "status": 42, "bogus": 1}, 400, "INVALID_RESOURCE"),
        (consent_body(cast, record_id, provision=[{"type": "deny"}]), 422, "UNSUPPORTED_CONSENT"),
        (consent_body(cast, record_id, action=[{"text": "x"}]), 422, "UNSUPPORTED_CONSENT"),
        (
            consent_body(cast, record_id, purpose=[{"system": "urn:x", "code": "y"}]),
            422,
            "BAD_PURPOSE",
        ),
    ]:
        resp = cast.send("POST", "Consent", cast.patient, "consent", body)
        outcome(resp, status, code)
    # a read-only token may not create; a clinician may not consent for the patient
    outcome(
        cast.send("POST", "Consent", cast.patient, "read", consent_body(cast, record_id)),
        403,
        "TOKEN_SCOPE",
    )
    outcome(
        cast.send("POST", "Consent", cast.doc_b, "consent", consent_body(cast, record_id)),
        403,
        "NOT_AUTHORIZED",
    )
    assert chain_consents(cast) == before
    outcome(
        cast.get("Consent", cast.patient, patient=cast.patient.id, foo="1"),
        400,
        "UNKNOWN_SEARCH_PARAM",
    )
    outcome(
        cast.get("AuditEvent", cast.patient, **{"date": "yesterday", "patient": cast.patient.id}),
        400,
        "BAD_SEARCH_PARAM",
    )
    outcome(cast.get("Observation", cast.patient), 404, "NOT_FOUND")
    outcome(cast.send("POST", "ImagingStudy", cast.patient, "read", {}), 405, "METHOD_NOT_ALLOWED")
    outcome(
        cast.send("PUT", f"Consent/{'c' + '0' * 32}", cast.patient, "consent", {}),
        405,
        "METHOD_NOT_ALLOWED",
    )


def test_consent_create_grants_on_chain_and_delete_revokes(cast: Cast) -> None:
    record_id = put(cast, b"a note for doc-b")
    with pytest.raises(Forbidden):
        clinician_reads(cast, cast.doc_b, record_id)
    docs = valid(cast.get("DocumentReference", cast.doc_b, patient=cast.patient.id), "Bundle")
    assert record_id not in [d["id"] for d in entries(docs)]

    resp = cast.send("POST", "Consent", cast.patient, "consent", consent_body(cast, record_id))
    created = valid(resp, "Consent", 201)
    consent_id = created["id"]
    assert resp.headers["location"].endswith(f"/fhir/Consent/{consent_id}")
    assert created["status"] == "active"
    assert (
        created["provision"]["actor"][0]["reference"]["reference"]
        == f"Practitioner/{cast.doc_b.id}"
    )
    assert [c["consent_id"] for c in chain_consents(cast)].count(consent_id) == 1

    assert clinician_reads(cast, cast.doc_b, record_id) == b"a note for doc-b"
    docs = valid(cast.get("DocumentReference", cast.doc_b, patient=cast.patient.id), "Bundle")
    mine = [d for d in entries(docs) if d["id"] == record_id]
    assert len(mine) == 1 and mine[0]["content"][0]["attachment"]["url"].endswith(
        f"/fhir/Binary/{record_id}"
    )

    # the patient's AuditEvent search shows doc-b's read, allowed
    audit = valid(cast.get("AuditEvent", cast.patient, patient=cast.patient.id), "Bundle")
    reads = [
        e
        for e in entries(audit)
        if e["subtype"][0]["code"] == "read"
        and e["agent"][0]["who"]["identifier"]["value"] == cast.doc_b.id
        and any(x["what"].get("reference") == f"DocumentReference/{record_id}" for x in e["entity"])
    ]
    assert any(e["outcome"] == "0" for e in reads) and any(e["outcome"] == "4" for e in reads)
    # doc-b may not see the patient's trail
    outcome(cast.get("AuditEvent", cast.doc_b, patient=cast.patient.id), 403, "ACCESS_DENIED")

    resp = cast.send("DELETE", f"Consent/{consent_id}", cast.patient, "consent")
    assert resp.status_code == 204, resp.text
    assert consent_id not in [c["consent_id"] for c in chain_consents(cast)]
    with pytest.raises(Forbidden):
        clinician_reads(cast, cast.doc_b, record_id)
    revoked = valid(cast.get(f"Consent/{consent_id}", cast.patient), "Consent")
    assert revoked["status"] == "inactive"
    inactive = valid(
        cast.get("Consent", cast.patient, patient=cast.patient.id, status="inactive"), "Bundle"
    )
    assert consent_id in [c["id"] for c in entries(inactive)]


def test_provenance_names_the_creator_with_the_transaction(cast: Cast) -> None:
    record_id = put(cast, b"provenance")
    with cast.client(cast.patient) as cl:
        events = cl.audit(cast.patient.id)
    write = next(e for e in events if e["action"] == "write" and e["record_id"] == record_id)
    found = valid(
        cast.get("Provenance", cast.patient, target=f"DocumentReference/{record_id}"), "Bundle"
    )
    (prov,) = entries(found)
    assert prov["target"][0]["reference"] == f"DocumentReference/{record_id}"
    assert prov["agent"][0]["who"]["identifier"]["value"] == cast.doc_a.id
    tx = {x["url"]: x for x in prov["extension"][0]["extension"]}
    assert tx["tx-hash"]["valueString"] == write["tx_hash"]
    assert tx["height"]["valueUnsignedInt"] == write["height"]
    assert valid(cast.get(f"Provenance/{record_id}", cast.patient), "Provenance") == prov
    # the stranger does not see it
    found = valid(
        cast.get("Provenance", cast.doc_b, target=f"DocumentReference/{record_id}"), "Bundle"
    )
    assert found["total"] == 0


def test_admin_creates_a_pseudonymous_patient_with_an_mrn(cast: Cast) -> None:
    mrn = f"MRN-{os.urandom(3).hex()}"
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:medledger:mrn:hospital-a", "value": mrn}],
    }
    outcome(cast.send("POST", "Patient", cast.doc_a, "enroll", body), 403, "NOT_AUTHORIZED")
    resp = cast.send("POST", "Patient", "admin", "enroll", body)
    created = valid(resp, "Patient", 201)
    pid = created["id"]
    key_file = home(cast.c, "hospital-a") / "patients" / f"{pid}.key"
    assert load_key_file(key_file).id == pid
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with Client(cast.api, cast.admin) as cl:
        assert cl.identity(pid)["role"] == "patient"
    found = valid(
        cast.get("Patient", "admin", identifier=f"urn:medledger:mrn:hospital-a|{mrn}"), "Bundle"
    )
    assert [p["id"] for p in entries(found)] == [pid]
    # the same MRN again: refused before anything is enrolled
    outcome(cast.send("POST", "Patient", "admin", "enroll", body), 409, "MRN_IN_USE")


def test_binary_read_is_a_delegated_read_on_chain(cast: Cast) -> None:
    record_id = put(cast, b"binary content")
    resp = cast.get(f"Binary/{record_id}", cast.patient)
    assert resp.status_code == 200, resp.text
    assert resp.content == b"binary content"
    with cast.client(cast.patient) as cl:
        reads = [
            e
            for e in cl.audit(cast.patient.id)
            if e["action"] == "read" and e["record_id"] == record_id
        ]
    # the chain recorded the read as the token's identity (the patient), allowed
    assert [(e["actor"], e["outcome"]) for e in reads] == [(cast.patient.id, "allowed")]
    outcome(cast.get(f"Binary/{record_id}", cast.doc_b), 403, "ACCESS_DENIED")


def document_body(cast: Cast, data: bytes, **attachment: Any) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {"coding": [{"system": "urn:medledger:record-type", "code": "note"}]},
        "subject": {"reference": f"Patient/{cast.patient.id}"},
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(data).decode(),
                    **attachment,
                }
            }
        ],
    }


def patient_records(cast: Cast) -> list[str]:
    with cast.client(cast.patient) as cl:
        return [r["record_id"] for r in cl.list_records(cast.patient.id)]


def test_document_reference_create_stores_a_record_as_the_token_identity(cast: Cast) -> None:
    data = b"Discharge letter written in an EHR, sent as FHIR.\n" * 40
    sha1 = base64.b64encode(hashlib.sha1(data).digest()).decode()
    before = patient_records(cast)
    # hostile or unsupported: refused, nothing stored
    for body, status, code in [
        ({**document_body(cast, data), "subject": {"reference": "Group/x"}}, 422, "BAD_SUBJECT"),
        (document_body(cast, data, size=len(data) + 1), 422, "CONTENT_MISMATCH"),
        (document_body(cast, data, hash=base64.b64encode(b"x" * 20).decode()), 422,
         "CONTENT_MISMATCH"),
        (document_body(cast, b"", url="https://elsewhere.example/doc"), 422,
         "UNSUPPORTED_FEATURE"),
        ({**document_body(cast, data), "type": {"coding": [
            {"system": "urn:medledger:record-type", "code": "imaging-study"}]}}, 422,
         "BAD_RECORD_TYPE"),
    ]:  # fmt: skip
        outcome(cast.send("POST", "DocumentReference", cast.doc_a, "write", body), status, code)
    outcome(
        cast.send("POST", "DocumentReference", cast.doc_a, "read", document_body(cast, data)),
        403,
        "TOKEN_SCOPE",
    )
    assert patient_records(cast) == before

    resp = cast.send(
        "POST", "DocumentReference", cast.doc_a, "write", document_body(cast, data, hash=sha1)
    )
    doc = valid(resp, "DocumentReference", 201)
    record_id = doc["id"]
    assert resp.headers["location"].endswith(f"/fhir/DocumentReference/{record_id}")
    assert doc["author"] == [
        {"identifier": {"system": "urn:medledger:identity", "value": cast.doc_a.id}}
    ]
    assert patient_records(cast) == [*before, record_id]
    with cast.client(cast.patient) as cl:
        meta = cl.record(record_id)
        write = [e for e in cl.audit(cast.patient.id) if e["record_id"] == record_id]
    assert meta["creator"] == cast.doc_a.id and meta["depositor"] == cast.gateway_id
    assert write[0]["actor"] == cast.doc_a.id and f"via={cast.gateway_id}" in write[0]["detail"]
    # the author reads it back, through the node's custody (shares kept under the gateway)
    assert clinician_reads(cast, cast.doc_a, record_id) == data
    binary = cast.get(f"Binary/{record_id}", cast.patient)
    assert binary.status_code == 200, binary.text
