"""Pseudonymous patients (a gateway files unlinked PatientIDs under them), their merge
into the real patient by an admin, and study parts (``part_of``), through the
Application."""

from __future__ import annotations

from mlhelpers import World, grant_body, key, register_body

from medledger.app.model import (
    GRANT_CONSENT,
    PATIENT_MERGE,
    PSEUDONYM_ENROLL,
    REGISTER_RECORD,
    SUSPENDED,
    MergeBody,
    Pseudonym,
    PseudonymBody,
    k_patient_record,
    k_pseudonym,
)
from medledger.ledger.block import TxResult


def pseudonym(w: World, name: str = "unlinked-1", signer: str = "alpha.service") -> str:
    pid = key(name).id
    res = w.chain.run(w[signer], PSEUDONYM_ENROLL, PseudonymBody(id=pid))
    assert res.ok, res
    return pid


def register(w: World, patient: str, signer: str = "alpha.service", **kw) -> TxResult:
    body = register_body(patient, type="imaging-study", **kw)
    return w.chain.run(w[signer], REGISTER_RECORD, body)


def merge(w: World, pid: str, patient: str, ids: list[str], signer: str = "alpha.admin"):
    body = MergeBody(pseudonym=pid, patient=patient, record_ids=sorted(ids))
    return w.chain.run(w[signer], PATIENT_MERGE, body)


def test_only_a_service_enrolls_a_pseudonymous_patient_of_its_institution() -> None:
    w = World()
    pid = pseudonym(w)
    ident = w.chain.app.query_identity(pid)
    assert ident is not None and (ident.role, ident.institution) == ("patient", "alpha")
    for signer in ("alpha.clinician", "alpha.admin", "alpha.patient"):
        res = w.chain.run(w[signer], PSEUDONYM_ENROLL, PseudonymBody(id=key("p2").id))
        assert res.code == "NOT_AUTHORIZED", (signer, res)
    res = w.chain.run(w["alpha.service"], PSEUDONYM_ENROLL, PseudonymBody(id=pid))
    assert res.code == "ALREADY_ENROLLED"
    res = w.chain.run(w["alpha.service"], PSEUDONYM_ENROLL, PseudonymBody(id="nobody"))
    assert res.code == "BAD_IDENTITY_ID"


def test_merge_moves_the_records_and_retires_the_pseudonym() -> None:
    w = World()
    pid = pseudonym(w)
    first = register(w, pid).data["record_id"]
    second = register(w, pid, content_hash=register_body("x").content_hash).data["record_id"]
    view = w.chain.app.committed_view()
    p = view.get(k_pseudonym(pid), Pseudonym)
    assert p is not None and p.records == 2
    real = w["alpha.patient"].id

    # not an admin of the institution, or an unknown target: refused, nothing moved
    assert merge(w, pid, real, [first], signer="beta.admin").code == "NOT_AUTHORIZED"
    assert merge(w, pid, real, [first], signer="alpha.clinician").code == "NOT_AUTHORIZED"
    assert merge(w, pid, key("ghost").id, [first]).code == "UNKNOWN_PATIENT"
    assert merge(w, pid, real, [w.record_id]).code == "NOT_THE_PSEUDONYMS"
    assert merge(w, pid, real, [first, first]).code == "TX_MALFORMED"

    res = merge(w, pid, real, [first])
    assert res.ok and res.data["left"] == "1", res
    assert w.chain.app.query_record(first).patient == real
    view = w.chain.app.committed_view()
    assert view.get_raw(k_patient_record(pid, first)) is None
    assert view.get_raw(k_patient_record(real, first)) is not None
    assert w.chain.app.query_identity(pid).status == "active"  # one record left

    res = merge(w, pid, real, [second])
    assert res.ok and res.data["left"] == "0", res
    assert w.chain.app.query_identity(pid).status == SUSPENDED
    assert [e.action for e in res.events] == ["merge", "merged"]
    assert merge(w, pid, real, []).code == "ALREADY_MERGED"


def test_after_the_merge_the_real_patients_consents_govern() -> None:
    w = World()
    pid = pseudonym(w)
    record = register(w, pid).data["record_id"]
    real = w["alpha.patient"].id
    # the real patient's consent to beta's clinician does not reach the pseudonym's record
    assert w.chain.run(
        w["alpha.patient"], GRANT_CONSENT, grant_body(real, w["beta.clinician"].id)
    ).ok
    assert w.chain.read(w["beta.clinician"], record).code == "ACCESS_DENIED"
    assert merge(w, pid, real, [record]).ok
    res = w.chain.read(w["beta.clinician"], record)
    assert res.ok and res.events[0].subject == real, res


def test_a_study_part_continues_a_record_of_the_same_patient_type_and_institution() -> None:
    w = World()
    patient = w["alpha.patient"].id
    first = register(w, patient).data["record_id"]
    res = register(w, patient, part_of=first, content_hash=register_body("p2").content_hash)
    assert res.ok, res
    part = res.data["record_id"]
    assert w.chain.app.query_record(part).part_of == first
    assert res.events[0].detail.endswith(f"part_of={first}")
    cases = {
        "rnotarecord": "alpha.service",  # no such record
        part: "alpha.service",  # a part, not the first record
        first: "beta.service",  # another institution
    }
    for part_of, signer in cases.items():
        res = register(w, patient, signer=signer, part_of=part_of)
        assert res.code == "BAD_PART_OF", (part_of, signer, res)
    res = register(w, w["alpha.patient2"].id, part_of=first)  # another patient
    assert res.code == "BAD_PART_OF"
    res = w.chain.run(
        w["alpha.service"],
        REGISTER_RECORD,
        register_body(patient, type="document", part_of=first),
    )
    assert res.code == "BAD_PART_OF"  # another type


def test_a_study_is_erased_part_by_part_and_its_first_record_last() -> None:
    from medledger.app.model import (
        ERASE_APPROVE,
        ERASE_REQUEST,
        EraseApproveBody,
        EraseRequestBody,
    )

    w = World()
    patient = w["alpha.patient"].id
    first = register(w, patient).data["record_id"]

    def request(record_id: str) -> TxResult:
        body = EraseRequestBody(record_id=record_id, reason="right to be forgotten")
        return w.chain.run(w["alpha.patient"], ERASE_REQUEST, body)

    def approve(record_id: str) -> TxResult:
        return w.chain.run(w["alpha.admin"], ERASE_APPROVE, EraseApproveBody(record_id=record_id))

    # requested before a part arrived: the approval is refused once there is one
    assert request(first).ok
    part = register(w, patient, part_of=first, content_hash=register_body("p").content_hash)
    part_id = part.data["record_id"]
    res = approve(first)
    assert res.code == "PARTS_NOT_ERASED" and part_id not in res.message, res
    assert w.chain.app.query_record(first).erased_height == 0
    # the part first, then the study's first record
    assert request(part_id).ok and approve(part_id).ok
    res = approve(first)
    assert res.ok, res
    assert w.chain.app.query_record(first).erased_height > 0


def test_a_first_record_with_live_parts_cannot_be_requested_for_erasure() -> None:
    from medledger.app.model import ERASE_REQUEST, EraseRequestBody

    w = World()
    patient = w["alpha.patient"].id
    first = register(w, patient).data["record_id"]
    register(w, patient, part_of=first, content_hash=register_body("p").content_hash)
    body = EraseRequestBody(record_id=first, reason="please")
    res = w.chain.run(w["alpha.patient"], ERASE_REQUEST, body)
    assert res.code == "PARTS_NOT_ERASED" and f"part_of={first}" in res.message, res
