"""app.access: the rules table, role by role."""

from __future__ import annotations

import msgspec
import pytest

from medledger.app import access
from medledger.app.model import ACTIVE, ROLES, SUSPENDED, Consent, Identity, RecordMeta, Role

PATIENT = "mlpatient0000000000000000000000000"
OTHER_PATIENT = "mlpatient1111111111111111111111111"


def ident(
    role: str, institution: str = "alpha", id_: str | None = None, status: str = ACTIVE
) -> Identity:
    return Identity(
        id=id_ or f"ml{role:a<32}"[:34],
        role=role,
        institution=institution,
        status=status,
        enrolled_height=1,
        enrolled_by="genesis",
    )


RECORD = RecordMeta(
    record_id="r" + "0" * 32,
    patient=PATIENT,
    type="imaging.ct",
    content_hash="b" * 59,
    size=1,
    chunk_count=1,
    shard_root=bytes(32),
    k=1,
    m=0,
    placement=["alpha"],
    custodians=["alpha"],
    threshold=1,
    deidentified=False,
    institution="alpha",
    creator="mlcreator",
    created_ms=1,
    height=1,
)
NOW = 1_000_000
NO_FACTS = access.ReadFacts()

# (role, relation) -> may read without consent, care or break-glass?
# relation: same institution / other institution / own patient
READ_TABLE = {
    ("admin", "same"): False,
    ("admin", "other"): False,
    ("clinician", "same"): False,  # not in care, not the author: issue 6
    ("clinician", "other"): False,
    ("patient", "same"): False,  # a patient of the same institution, not the record's patient
    ("patient", "other"): False,
    ("patient", "own"): True,
    ("researcher", "same"): False,
    ("researcher", "other"): False,
    ("regulator", "same"): False,
    ("regulator", "other"): False,
    ("pharmacy", "same"): False,
    ("pharmacy", "other"): False,
    ("insurer", "same"): False,
    ("insurer", "other"): False,
    ("service", "same"): True,
    ("service", "other"): False,
    ("node", "same"): False,  # a node key serves consensus, never record content
    ("node", "other"): False,
}


def consent(
    actor: str,
    purposes: list[str],
    *,
    kind: str = "identity",
    permit: bool = True,
    record_ids: list[str] | None = None,
    types: list[str] | None = None,
    start_ms: int = 0,
    end_ms: int = 0,
    status: str = "active",
) -> Consent:
    return Consent(
        consent_id="c" + "1" * 32,
        patient=PATIENT,
        grantor=PATIENT,
        actor_kind=kind,
        actor=actor,
        purposes=purposes,
        record_ids=record_ids or [],
        types=types or [],
        start_ms=start_ms,
        end_ms=end_ms,
        permit=permit,
        status=status,
        height=1,
        revoked_height=0,
    )


def read(
    actor: Identity,
    facts: access.ReadFacts = NO_FACTS,
    purpose: str = "treatment",
    record: RecordMeta = RECORD,
    **kw: bool,
) -> access.Decision:
    return access.decide_read(actor, record, purpose, facts, NOW, **kw)


def test_table_covers_every_role() -> None:
    assert {r for r, _ in READ_TABLE} == set(ROLES) == {r.value for r in Role}


@pytest.mark.parametrize(("role", "relation"), sorted(READ_TABLE))
def test_decide_read(role: str, relation: str) -> None:
    if relation == "own":
        actor = ident(role, "beta", id_=PATIENT)  # enrolled anywhere: it is their record
    else:
        actor = ident(role, "alpha" if relation == "same" else "beta")
    decision = read(actor)
    assert decision.allowed is READ_TABLE[(role, relation)]
    assert decision.reason and decision.rule
    # suspended identities are never allowed
    suspended = Identity(
        id=actor.id,
        role=actor.role,
        institution=actor.institution,
        status=SUSPENDED,
        enrolled_height=1,
        enrolled_by="x",
    )
    assert read(suspended).rule == "identity_suspended"
    assert not read(suspended, access.ReadFacts(is_proxy=True), break_glass=True).allowed


@pytest.mark.parametrize("role", sorted(ROLES))
def test_own_record_only_for_patient_role(role: str) -> None:
    actor = ident(role, "beta", id_=PATIENT)
    assert read(actor).allowed is (role == "patient")


def test_clinician_paths() -> None:
    doc = ident("clinician", "beta")
    assert read(doc).rule == "not_in_care"
    assert read(doc, access.ReadFacts(in_care=True)).rule == "care_relationship"
    assert read(doc, access.ReadFacts(in_care=True), purpose="referral").allowed
    assert not read(doc, access.ReadFacts(in_care=True), purpose="research").allowed
    author = ident("clinician", "alpha", id_="mlcreator")
    assert read(author).rule == "author"
    granted = access.ReadFacts(consents=[consent(doc.id, ["treatment"])])
    assert read(doc, granted).rule == "consent"
    assert not read(doc, granted, purpose="insurance").allowed
    inst = access.ReadFacts(consents=[consent("beta", ["treatment"], kind="institution")])
    assert read(doc, inst).allowed
    assert not read(ident("clinician", "gamma"), inst).allowed


def test_consent_scope_and_period() -> None:
    doc = ident("clinician", "beta")

    def with_(c: Consent) -> access.Decision:
        return read(doc, access.ReadFacts(consents=[c]))

    assert with_(consent(doc.id, ["treatment"], record_ids=[RECORD.record_id])).allowed
    assert not with_(consent(doc.id, ["treatment"], record_ids=["r" + "2" * 32])).allowed
    assert with_(consent(doc.id, ["treatment"], types=["imaging.ct"])).allowed
    assert not with_(consent(doc.id, ["treatment"], types=["lab"])).allowed
    assert with_(consent(doc.id, ["treatment"], start_ms=NOW, end_ms=NOW + 1)).allowed
    assert not with_(consent(doc.id, ["treatment"], start_ms=NOW + 1)).allowed
    assert not with_(consent(doc.id, ["treatment"], end_ms=NOW)).allowed
    assert not with_(consent(doc.id, ["treatment"], status="inactive")).allowed


def test_deny_provision_wins_except_break_glass() -> None:
    doc = ident("clinician", "beta")
    both = access.ReadFacts(
        in_care=True,
        consents=[consent(doc.id, ["treatment"]), consent(doc.id, ["treatment"], permit=False)],
    )
    assert read(doc, both).rule == "consent_denies"
    glass = read(doc, both, break_glass=True)
    assert glass.allowed and glass.break_glass and glass.rule == "break_glass"


@pytest.mark.parametrize("role", sorted(ROLES))
def test_break_glass_only_for_clinicians(role: str) -> None:
    actor = ident(role, "beta")
    decision = read(actor, break_glass=True)
    if role == "clinician":
        assert decision.allowed and decision.break_glass
    else:
        assert not decision.allowed and not decision.break_glass


def test_researchers_read_deidentified_research_data_only() -> None:
    res = ident("researcher", "beta")
    facts = access.ReadFacts(consents=[consent(res.id, ["research"])])
    deid = msgspec.structs.replace(RECORD, deidentified=True)
    assert read(res, facts, "research", deid).rule == "consent"
    assert read(res, facts, "research").rule == "not_deidentified"
    assert read(res, facts, "treatment", deid).rule == "purpose_not_permitted"
    assert read(res, NO_FACTS, "research", deid).rule == "no_consent"


@pytest.mark.parametrize(
    ("role", "purpose"), [("pharmacy", "dispensing"), ("insurer", "insurance")]
)
def test_pharmacies_and_insurers_by_consent(role: str, purpose: str) -> None:
    actor = ident(role, "beta")
    assert read(actor, purpose=purpose).rule == "no_consent"
    facts = access.ReadFacts(consents=[consent(actor.id, [purpose])])
    assert read(actor, facts, purpose).allowed
    assert not read(actor, facts, "treatment").allowed


def test_regulators_never_read_content() -> None:
    reg = ident("regulator", "beta")
    facts = access.ReadFacts(in_care=True, consents=[consent(reg.id, ["audit"])])
    assert read(reg, facts, "audit").rule == "regulator_no_content"


def test_proxy_and_erased() -> None:
    guardian = ident("clinician", "gamma")
    assert read(guardian, access.ReadFacts(is_proxy=True)).rule == "proxy"
    erased = msgspec.structs.replace(RECORD, erased_height=9)
    patient = ident("patient", "alpha", id_=PATIENT)
    assert read(patient, record=erased).rule == "record_erased"
    assert not read(ident("clinician"), record=erased, break_glass=True).allowed


@pytest.mark.parametrize("role", sorted(ROLES))
def test_may_write_for(role: str) -> None:
    patient = ident("patient", "alpha", id_=PATIENT)
    for institution in ("alpha", "beta"):
        actor = ident(role, institution)
        expected = role in ("clinician", "service")
        assert access.may_write_for(actor, patient).allowed is expected
    own = ident(role, "alpha", id_=PATIENT)
    assert access.may_write_for(own, patient).allowed is (
        role in ("clinician", "service", "patient")
    )
    # records belong to patients only
    non_patient = ident("clinician", "alpha", id_=OTHER_PATIENT)
    assert not access.may_write_for(ident(role), non_patient).allowed
    # a suspended patient or author blocks the write
    assert not access.may_write_for(
        ident(role), ident("patient", id_=PATIENT, status=SUSPENDED)
    ).allowed
    assert not access.may_write_for(ident(role, status=SUSPENDED), patient).allowed


@pytest.mark.parametrize("role", sorted(ROLES))
def test_may_manage(role: str) -> None:
    actor = ident(role, "alpha")
    assert access.may_manage(actor, "alpha").allowed is (role == "admin")
    assert not access.may_manage(actor, "beta").allowed
    assert not access.may_manage(ident(role, "alpha", status=SUSPENDED), "alpha").allowed


@pytest.mark.parametrize("role", sorted(ROLES))
def test_may_list_and_view(role: str) -> None:
    actor = ident(role, "beta")
    expected_list = role in ("clinician", "service", "admin", "regulator")
    assert access.may_list_records(actor, PATIENT).allowed is expected_list
    assert access.may_list_records(ident(role, id_=PATIENT), PATIENT).allowed
    assert access.may_view_metadata(actor, RECORD) is (role == "regulator")
    same = ident(role, "alpha")
    assert access.may_view_metadata(same, RECORD) is (
        role in ("regulator", "clinician", "service", "admin")
    )
    assert access.may_view_metadata(ident(role, "beta", id_=PATIENT), RECORD)


@pytest.mark.parametrize("role", sorted(ROLES))
def test_may_view_audit(role: str) -> None:
    subject = ident("patient", "alpha", id_=PATIENT)
    assert access.may_view_audit(ident(role, "alpha"), subject).allowed is (
        role in ("admin", "regulator")
    )
    assert access.may_view_audit(ident(role, "beta"), subject).allowed is (role == "regulator")
    assert access.may_view_audit(subject, subject).allowed
    assert not access.may_view_audit(ident(role, "alpha", status=SUSPENDED), subject).allowed


def test_decisions_are_deterministic() -> None:
    actor = ident("clinician")
    assert read(actor) == read(actor)


def test_care_and_erasure_approvals() -> None:
    admin = ident("admin", "alpha")
    doc = ident("clinician", "alpha")
    local = ident("patient", "alpha", id_=PATIENT)
    remote = ident("patient", "beta", id_=OTHER_PATIENT)
    assert access.may_start_care(admin, doc, local, False).rule == "admission"
    assert access.may_start_care(admin, doc, remote, False).rule == "referral_needs_consent"
    assert access.may_start_care(admin, doc, remote, True).rule == "referral"
    assert not access.may_start_care(ident("admin", "beta"), doc, local, True).allowed
    assert not access.may_start_care(admin, ident("researcher", "alpha"), local, True).allowed
    assert access.may_approve_erasure(ident("regulator", "gamma"), RECORD).allowed
    assert access.may_approve_erasure(admin, RECORD).allowed
    assert not access.may_approve_erasure(ident("admin", "beta"), RECORD).allowed
    assert not access.may_approve_erasure(doc, RECORD).allowed
    assert access.may_act_for(local, PATIENT, False).allowed
    assert access.may_act_for(doc, PATIENT, True).rule == "proxy"
    assert not access.may_act_for(doc, PATIENT, False).allowed


def test_metadata_follows_care_and_consent() -> None:
    doc = ident("clinician", "beta")
    assert not access.may_view_metadata(doc, RECORD)
    assert access.may_view_metadata(doc, RECORD, access.ReadFacts(in_care=True), NOW)
    granted = access.ReadFacts(consents=[consent(doc.id, ["referral"])])
    assert access.may_view_metadata(doc, RECORD, granted, NOW)
    denied = access.ReadFacts(consents=[consent(doc.id, ["referral"], permit=False)])
    assert not access.may_view_metadata(doc, RECORD, denied, NOW)
    expired = access.ReadFacts(consents=[consent(doc.id, ["referral"], end_ms=NOW)])
    assert not access.may_view_metadata(doc, RECORD, expired, NOW)
    other_type = access.ReadFacts(consents=[consent(doc.id, ["treatment"], types=["lab"])])
    assert not access.may_view_metadata(doc, RECORD, other_type, NOW)
    # a researcher named by a consent sees the record's metadata, not by care
    res = ident("researcher", "beta")
    assert access.may_view_metadata(
        res, RECORD, access.ReadFacts(consents=[consent(res.id, ["research"])]), NOW
    )
    assert not access.may_view_metadata(res, RECORD, access.ReadFacts(in_care=True), NOW)
    suspended = ident("regulator", "beta", status=SUSPENDED)
    assert not access.may_view_metadata(suspended, RECORD)
