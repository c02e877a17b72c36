"""app.access: the rules table, role by role."""

from __future__ import annotations

import pytest

from medledger.app import access
from medledger.app.model import ACTIVE, ROLES, SUSPENDED, Identity, RecordMeta, Role

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
    custodian="alpha",
    institution="alpha",
    creator="mlcreator",
    created_ms=1,
    height=1,
)

# (role, relation) -> may read? relation: same institution / other institution / own patient
READ_TABLE = {
    ("admin", "same"): False,
    ("admin", "other"): False,
    ("clinician", "same"): True,
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


def test_table_covers_every_role() -> None:
    assert {r for r, _ in READ_TABLE} == set(ROLES) == {r.value for r in Role}


@pytest.mark.parametrize(("role", "relation"), sorted(READ_TABLE))
def test_decide_read(role: str, relation: str) -> None:
    if relation == "own":
        actor = ident(role, "beta", id_=PATIENT)  # enrolled anywhere: it is their record
    else:
        actor = ident(role, "alpha" if relation == "same" else "beta")
    decision = access.decide_read(actor, RECORD)
    assert decision.allowed is READ_TABLE[(role, relation)]
    assert decision.reason
    # suspended identities are never allowed
    suspended = Identity(
        id=actor.id,
        role=actor.role,
        institution=actor.institution,
        status=SUSPENDED,
        enrolled_height=1,
        enrolled_by="x",
    )
    assert not access.decide_read(suspended, RECORD).allowed


@pytest.mark.parametrize("role", sorted(ROLES))
def test_own_record_only_for_patient_role(role: str) -> None:
    # An identity whose ID is the record's patient but whose role is not "patient"
    # follows its role's rule (clinicians of another institution are still denied).
    actor = ident(role, "beta", id_=PATIENT)
    assert access.decide_read(actor, RECORD).allowed is (role == "patient")


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
    assert access.decide_read(actor, RECORD) == access.decide_read(actor, RECORD)
