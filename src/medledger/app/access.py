"""Access rules: the one place where MedLedger decides who may do what.

First version (issue 3): a record may be read by the patient it belongs to and
by clinicians and services of the institution that created it; everyone else
is denied. Consent, care relationships and break-glass extend ``decide_read``.
Every function here is pure and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from medledger.app.model import ACTIVE, Identity, RecordMeta, Role

_ADMIN = Role.ADMIN.value
_CLINICIAN = Role.CLINICIAN.value
_PATIENT = Role.PATIENT.value
_REGULATOR = Role.REGULATOR.value
_SERVICE = Role.SERVICE.value


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str


def decide_read(actor: Identity, record: RecordMeta) -> Decision:
    if actor.status != ACTIVE:
        return Decision(False, "identity suspended")
    if actor.role == _PATIENT:
        if actor.id == record.patient:
            return Decision(True, "own record")
        return Decision(False, "not the patient of this record")
    if actor.role in (_CLINICIAN, _SERVICE):
        if actor.institution == record.institution:
            return Decision(True, "creating institution")
        return Decision(False, "record created by another institution")
    return Decision(False, f"role {actor.role} may not read record content")


def may_write_for(actor: Identity, patient: Identity) -> Decision:
    """May ``actor`` register a record about ``patient``?"""
    if actor.status != ACTIVE:
        return Decision(False, "identity suspended")
    if patient.role != _PATIENT:
        return Decision(False, "records belong to patients")
    if patient.status != ACTIVE:
        return Decision(False, "patient is suspended")
    if actor.role in (_CLINICIAN, _SERVICE):
        return Decision(True, "clinical author")
    if actor.role == _PATIENT and actor.id == patient.id:
        return Decision(True, "patient-contributed record")
    return Decision(False, f"role {actor.role} may not write records")


def may_manage(actor: Identity, target_institution: str) -> Decision:
    """May ``actor`` enroll or suspend identities of ``target_institution``?"""
    if actor.status != ACTIVE:
        return Decision(False, "identity suspended")
    if actor.role != _ADMIN:
        return Decision(False, "only an institution admin manages identities")
    if actor.institution != target_institution:
        return Decision(False, "admins manage their own institution only")
    return Decision(True, "institution admin")


def may_list_records(actor: Identity, patient: str) -> Decision:
    """May ``actor`` see the metadata list of ``patient``'s records?"""
    if actor.status != ACTIVE:
        return Decision(False, "identity suspended")
    if actor.id == patient:
        return Decision(True, "own records")
    if actor.role in (
        _CLINICIAN,
        _SERVICE,
        _ADMIN,
        _REGULATOR,
    ):
        return Decision(True, f"{actor.role} sees record metadata")
    return Decision(False, f"role {actor.role} may not list a patient's records")


def may_view_metadata(actor: Identity, record: RecordMeta) -> bool:
    """Which entries of a listing an actor sees (clinicians/services: own institution)."""
    if actor.id == record.patient or actor.role == _REGULATOR:
        return True
    if actor.role in (_CLINICIAN, _SERVICE, _ADMIN):
        return actor.institution == record.institution
    return False


def may_view_audit(actor: Identity, subject: Identity) -> Decision:
    """Identities see their own trail; regulators any; admins their institution's."""
    if actor.status != ACTIVE:
        return Decision(False, "identity suspended")
    if actor.id == subject.id:
        return Decision(True, "own audit trail")
    if actor.role == _REGULATOR:
        return Decision(True, "regulator oversight")
    if actor.role == _ADMIN and actor.institution == subject.institution:
        return Decision(True, "institution admin oversight")
    return Decision(False, "only the patient, their admins and regulators see an audit trail")
