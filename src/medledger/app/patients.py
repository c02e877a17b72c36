"""Pseudonymous patients and study parts: pure rules over a state view (ADR 0008).

Hospitals know patients by their own identifiers (a DICOM PatientID, an MRN), which
the institution links to ledger patients off chain. A study can arrive before that
link exists; the node's gateway then files it under a **pseudonymous patient** of the
institution (``patient.pseudonym``): an identity of role ``patient`` that no one holds
a key of, known on chain only as a pseudonym of that institution. When the PatientID
is linked, an admin of the institution **merges** it (``patient.merge``): its records
move to the real patient (their consents and care relationships govern them from the
next transaction) and, once none are left, the pseudonym is suspended for good.

A study whose instances keep arriving after it was stored gets **parts**: later
records registered with ``part_of`` naming the record they continue, same patient,
type and institution. A study therefore costs one transaction per quiet period in
which instances arrived, however many instances it has.
"""

from __future__ import annotations

import msgspec

from medledger.app import access
from medledger.app.model import (
    ACTIVE,
    MAX_MERGE_RECORDS,
    SUSPENDED,
    Identity,
    MergeBody,
    PartCount,
    Pseudonym,
    PseudonymBody,
    RecordMeta,
    Role,
    enrollment_event,
    k_identity,
    k_parts,
    k_patient_record,
    k_pseudonym,
    k_record,
    new_identity,
)
from medledger.app.state import StateView
from medledger.crypto.keys import is_identity_id
from medledger.errors import MedLedgerError
from medledger.ledger.block import Event


class PatientRuleError(MedLedgerError):
    default_code = "TX_MALFORMED"


def enroll_pseudonym(
    view: StateView, sender: Identity, body: PseudonymBody, height: int
) -> tuple[list[Event], dict[str, str]]:
    """A service (the node's gateway) enrolls a pseudonymous patient of its institution."""
    if sender.role != Role.SERVICE.value:
        raise PatientRuleError(
            "only a service (a node's gateway) enrolls pseudonymous patients",
            code="NOT_AUTHORIZED",
        )
    if not is_identity_id(body.id):
        raise PatientRuleError("not a MedLedger identity ID", code="BAD_IDENTITY_ID")
    if view.get_raw(k_identity(body.id)) is not None:
        raise PatientRuleError("identity is already enrolled", code="ALREADY_ENROLLED")
    view.put(
        k_identity(body.id),
        new_identity(body.id, Role.PATIENT.value, sender.institution, height, sender.id),
    )
    view.put(
        k_pseudonym(body.id),
        Pseudonym(
            id=body.id,
            institution=sender.institution,
            created_by=sender.id,
            height=height,
            records=0,
            merged_into="",
        ),
    )
    ev = enrollment_event(sender, body.id, Role.PATIENT.value, "pseudonymous")
    return [ev], {"id": body.id, "institution": sender.institution}


def note_record(view: StateView, patient: str) -> None:
    """Count a record filed under ``patient`` if it is a live pseudonym."""
    p = view.get(k_pseudonym(patient), Pseudonym)
    if p is not None and not p.merged_into:
        view.put(k_pseudonym(patient), msgspec.structs.replace(p, records=p.records + 1))


def check_part_of(
    view: StateView, sender: Identity, patient: str, record_type: str, part_of: str
) -> None:
    """A later part of a study continues a live record of the same patient, type and
    institution as the sender's."""
    first = view.get(k_record(part_of), RecordMeta)
    if first is None:
        raise PatientRuleError("part_of names no record", code="BAD_PART_OF")
    if first.erased_height:
        raise PatientRuleError("part_of names an erased record", code="BAD_PART_OF")
    if (first.patient, first.type, first.institution) != (
        patient,
        record_type,
        sender.institution,
    ):
        raise PatientRuleError(
            "a part continues a record of the same patient, type and institution",
            code="BAD_PART_OF",
        )
    if first.part_of:
        raise PatientRuleError("part_of names the first record, not a part", code="BAD_PART_OF")


def live_parts(view: StateView, record_id: str) -> int:
    count = view.get(k_parts(record_id), PartCount)
    return count.live if count is not None else 0


def count_part(view: StateView, first: str, delta: int) -> None:
    """A part of ``first`` was registered (+1) or erased (-1)."""
    view.put(k_parts(first), PartCount(live=max(live_parts(view, first) + delta, 0)))


def merge(view: StateView, sender: Identity, body: MergeBody) -> tuple[list[Event], dict[str, str]]:
    """Move records of a pseudonymous patient to ``body.patient``."""
    p = view.get(k_pseudonym(body.pseudonym), Pseudonym)
    if p is None:
        raise PatientRuleError("not a pseudonymous patient", code="NOT_A_PSEUDONYM")
    decision = access.may_manage(sender, p.institution)
    if not decision.allowed:
        raise PatientRuleError(decision.reason, code="NOT_AUTHORIZED")
    if p.merged_into:
        raise PatientRuleError(
            f"the pseudonym was merged into {p.merged_into}", code="ALREADY_MERGED"
        )
    target = view.get(k_identity(body.patient), Identity)
    if target is None or target.role != Role.PATIENT.value or target.status != ACTIVE:
        raise PatientRuleError("merge into an active patient", code="UNKNOWN_PATIENT")
    if view.get_raw(k_pseudonym(body.patient)) is not None:
        raise PatientRuleError("merge into a real patient, not a pseudonym", code="NOT_A_PATIENT")
    ids = body.record_ids
    if len(ids) > MAX_MERGE_RECORDS or len(set(ids)) != len(ids) or ids != sorted(ids):
        raise PatientRuleError(
            f"record_ids: sorted, unique, at most {MAX_MERGE_RECORDS}", code="TX_MALFORMED"
        )
    events = []
    for record_id in ids:
        meta = view.get(k_record(record_id), RecordMeta)
        if meta is None or view.get_raw(k_patient_record(p.id, record_id)) is None:
            raise PatientRuleError(
                f"record {record_id} is not the pseudonym's", code="NOT_THE_PSEUDONYMS"
            )
        view.put(k_record(record_id), msgspec.structs.replace(meta, patient=target.id))
        view.delete(k_patient_record(p.id, record_id))
        view.put(k_patient_record(target.id, record_id), b"")
        events.append(
            Event(
                action="merge",
                actor=sender.id,
                subject=target.id,
                record_id=record_id,
                outcome="ok",
                detail=f"from_pseudonym={p.id}",
            )
        )
    left = p.records - len(ids)
    merged_into = target.id if left <= 0 else ""
    view.put(
        k_pseudonym(p.id),
        msgspec.structs.replace(p, records=max(left, 0), merged_into=merged_into),
    )
    if merged_into:
        pseudonym = view.get(k_identity(p.id), Identity)
        if pseudonym is not None:
            view.put(k_identity(p.id), msgspec.structs.replace(pseudonym, status=SUSPENDED))
    events.append(
        Event(
            action="merged",
            actor=sender.id,
            subject=p.id,
            record_id="",
            outcome="ok",
            detail=f"into={target.id} records={len(ids)} left={max(left, 0)}",
        )
    )
    return events, {
        "pseudonym": p.id,
        "patient": target.id,
        "moved": str(len(ids)),
        "left": str(max(left, 0)),
    }
