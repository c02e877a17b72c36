"""Access rules: the one place where MedLedger decides who may do what.

Every function here is pure and deterministic: the application gathers the
facts a decision needs from committed state (:class:`ReadFacts`) and the
block context (time), and every node reaches the same decision.

Reads (``decide_read``), in order:

1. a suspended identity, or an erased record: denied;
2. the patient: allowed;
3. regulators, admins and nodes never read content (not even as a proxy);
   the patient's proxies: allowed;
4. a *deny* consent provision matching the reader (identity or institution),
   purpose and record: denied, unless it is a clinician's break-glass read;
5. break-glass (clinicians only, with a reason): allowed and flagged;
6. researchers: de-identified records only, for ``research``, under a consent;
7. services: records their own institution created;
8. clinicians: records they authored, records of patients in their care (for
   treatment or referral), or what a consent permits;
9. pharmacies, insurers and everyone else: what a consent for the purpose permits.

Each decision names the ``rule`` that made it; a denial's rule is what
``ACCESS_DENIED`` reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medledger.app.model import (
    ACTIVE,
    ACTOR_IDENTITY,
    ACTOR_INSTITUTION,
    CONSENT_ACTIVE,
    Consent,
    Identity,
    RecordMeta,
    Role,
)

_ADMIN = Role.ADMIN.value
_CLINICIAN = Role.CLINICIAN.value
_PATIENT = Role.PATIENT.value
_REGULATOR = Role.REGULATOR.value
_RESEARCHER = Role.RESEARCHER.value
_SERVICE = Role.SERVICE.value
_NODE = Role.NODE.value

CARE_PURPOSES = frozenset({"treatment", "referral"})


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    rule: str = ""
    break_glass: bool = False


@dataclass(frozen=True, slots=True)
class ReadFacts:
    """What state says about one reader and one record's patient."""

    in_care: bool = False  # an active care relationship (patient, reader)
    is_proxy: bool = False  # the reader acts for the patient
    consents: Sequence[Consent] = ()  # the patient's active consents


def _allow(rule: str, reason: str, *, break_glass: bool = False) -> Decision:
    return Decision(True, reason, rule, break_glass)


def _deny(rule: str, reason: str) -> Decision:
    return Decision(False, reason, rule)


def names_actor(c: Consent, actor: Identity) -> bool:
    """Is ``actor`` the consent's grantee (itself, or its whole institution)?"""
    if c.actor_kind == ACTOR_IDENTITY:
        return c.actor == actor.id
    return c.actor_kind == ACTOR_INSTITUTION and c.actor == actor.institution


def consent_matches(
    c: Consent, actor: Identity, record: RecordMeta, purpose: str, now_ms: int
) -> bool:
    """Does provision ``c`` apply to ``actor`` reading ``record`` for ``purpose`` now?"""
    if c.status != CONSENT_ACTIVE or c.patient != record.patient:
        return False
    if c.start_ms and now_ms < c.start_ms:
        return False
    if c.end_ms and now_ms >= c.end_ms:
        return False
    if not names_actor(c, actor) or purpose not in c.purposes:
        return False
    if c.record_ids and record.record_id not in c.record_ids:
        return False
    return not c.types or record.type in c.types


def decide_read(
    actor: Identity,
    record: RecordMeta,
    purpose: str,
    facts: ReadFacts,
    now_ms: int,
    *,
    break_glass: bool = False,
) -> Decision:
    if actor.status != ACTIVE:
        return _deny("identity_suspended", "identity suspended")
    if record.erased_height:
        return _deny("record_erased", "the record was erased at the patient's request")
    if actor.id == record.patient and actor.role == _PATIENT:
        return _allow("own_record", "own record")
    if actor.role == _REGULATOR:
        return _deny("regulator_no_content", "regulators see metadata and audit trails only")
    if actor.role in (_ADMIN, _NODE):
        return _deny("role_no_content", f"role {actor.role} may not read this record")
    if facts.is_proxy:
        return _allow("proxy", "proxy of the patient")
    if actor.role == _PATIENT:
        return _deny("role_no_content", "patients read their own records only")
    matching = [c for c in facts.consents if consent_matches(c, actor, record, purpose, now_ms)]
    denied_by = next((c for c in matching if not c.permit), None)
    permitted_by = next((c for c in matching if c.permit), None)
    if break_glass:
        if actor.role != _CLINICIAN:
            return _deny("break_glass_not_permitted", "only clinicians may break the glass")
        return _allow("break_glass", "emergency access", break_glass=True)
    if denied_by is not None:
        return _deny("consent_denies", f"consent {denied_by.consent_id} denies this access")
    if actor.role == _RESEARCHER:
        if not record.deidentified:
            return _deny("not_deidentified", "researchers read de-identified records only")
        if purpose != "research":
            return _deny("purpose_not_permitted", "researchers read for research only")
    elif actor.role == _SERVICE:
        if actor.institution == record.institution:
            return _allow("own_institution", "a service reads its institution's records")
        return _deny("other_institution", "a service reads only its institution's records")
    elif actor.role == _CLINICIAN:
        if actor.id == record.creator:
            return _allow("author", "the clinician wrote this record")
        if facts.in_care and purpose in CARE_PURPOSES:
            return _allow("care_relationship", "the patient is in this clinician's care")
    if permitted_by is not None:
        return _allow("consent", f"consent {permitted_by.consent_id}")
    if actor.role == _CLINICIAN:
        return _deny("not_in_care", "the patient is not in this clinician's care and no consent")
    return _deny("no_consent", f"no consent of the patient covers this {purpose} access")


def may_write_for(actor: Identity, patient: Identity) -> Decision:
    """May ``actor`` register a record about ``patient``?"""
    if actor.status != ACTIVE:
        return _deny("identity_suspended", "identity suspended")
    if patient.role != _PATIENT:
        return _deny("not_a_patient", "records belong to patients")
    if patient.status != ACTIVE:
        return _deny("patient_suspended", "patient is suspended")
    if actor.role in (_CLINICIAN, _SERVICE):
        return _allow("clinical_author", "clinical author")
    if actor.role == _PATIENT and actor.id == patient.id:
        return _allow("patient_contributed", "patient-contributed record")
    return _deny("role_may_not_write", f"role {actor.role} may not write records")


def may_act_as_gateway(gateway: Identity, device: Identity | None) -> Decision:
    """May ``gateway`` act for ``device`` (a record's ``on_behalf_of``, ADR 0008)?

    Both must be active ``service`` identities of one institution: a node's DICOM
    gateway writes for the modalities and PACS of its own institution only.
    """
    if gateway.status != ACTIVE:
        return _deny("identity_suspended", "identity suspended")
    if gateway.role != _SERVICE:
        return _deny("not_a_gateway", "only a service acts on behalf of another")
    if device is None:
        return _deny("unknown_device", "on_behalf_of is not an enrolled identity")
    if device.role != _SERVICE:
        return _deny("device_not_a_service", "on_behalf_of must be a service identity")
    if device.status != ACTIVE:
        return _deny("device_suspended", "on_behalf_of is suspended")
    if device.institution != gateway.institution:
        return _deny("other_institution", "on_behalf_of belongs to another institution")
    return _allow("gateway", "gateway for a service of its institution")


def may_manage(actor: Identity, target_institution: str) -> Decision:
    """May ``actor`` enroll or suspend identities of ``target_institution``?"""
    if actor.status != ACTIVE:
        return _deny("identity_suspended", "identity suspended")
    if actor.role != _ADMIN:
        return _deny("not_admin", "only an institution admin manages identities")
    if actor.institution != target_institution:
        return _deny("other_institution", "admins manage their own institution only")
    return _allow("institution_admin", "institution admin")


def may_act_for(actor: Identity, patient: str, is_proxy: bool) -> Decision:
    """May ``actor`` grant, revoke or erase on behalf of ``patient``?"""
    if actor.status != ACTIVE:
        return _deny("identity_suspended", "identity suspended")
    if actor.id == patient:
        return _allow("patient", "the patient")
    if is_proxy:
        return _allow("proxy", "proxy of the patient")
    return _deny("not_patient_or_proxy", "only the patient or their proxy may do this")


def may_start_care(
    admin: Identity, clinician: Identity, patient: Identity, referral_consented: bool
) -> Decision:
    """An institution admin records that its clinician treats ``patient``: patients
    of the admin's institution are admitted; others come by referral, which needs a
    consent of the patient to the institution or the clinician."""
    decision = may_manage(admin, clinician.institution)
    if not decision.allowed:
        return decision
    if clinician.role != _CLINICIAN or clinician.status != ACTIVE:
        return _deny("not_a_clinician", "care relationships are for active clinicians")
    if patient.role != _PATIENT or patient.status != ACTIVE:
        return _deny("not_a_patient", "care relationships are for active patients")
    if patient.institution == admin.institution:
        return _allow("admission", "a patient of this institution")
    if referral_consented:
        return _allow("referral", "referral with the patient's consent")
    return _deny(
        "referral_needs_consent",
        "the patient is registered elsewhere and has not consented to this institution",
    )


def may_list_records(actor: Identity, patient: str, is_proxy: bool = False) -> Decision:
    """May ``actor`` see the metadata list of ``patient``'s records?"""
    if actor.status != ACTIVE:
        return _deny("identity_suspended", "identity suspended")
    if actor.id == patient or is_proxy:
        return _allow("own_records", "own records")
    if actor.role in (_CLINICIAN, _SERVICE, _ADMIN, _REGULATOR):
        return _allow("metadata_role", f"{actor.role} sees record metadata")
    return _deny("role_no_listing", f"role {actor.role} may not list a patient's records")


def may_view_metadata(
    actor: Identity, record: RecordMeta, facts: ReadFacts = ReadFacts(), now_ms: int = 0
) -> bool:
    """Which records' metadata an actor sees: the patient and proxies, regulators, staff
    of the creating institution, clinicians caring for the patient, and whoever an
    active permit consent names for the record (any purpose)."""
    if actor.status != ACTIVE:
        return False
    if actor.id == record.patient or facts.is_proxy or actor.role == _REGULATOR:
        return True
    if actor.role in (_CLINICIAN, _SERVICE, _ADMIN) and actor.institution == record.institution:
        return True
    if actor.role == _CLINICIAN and facts.in_care:
        return True
    return any(
        c.permit and consent_matches(c, actor, record, p, now_ms)
        for c in facts.consents
        for p in c.purposes
    )


def may_view_audit(actor: Identity, subject: Identity, is_proxy: bool = False) -> Decision:
    """Identities see their own trail (and their patients', as proxy); regulators
    any; admins their institution's."""
    if actor.status != ACTIVE:
        return _deny("identity_suspended", "identity suspended")
    if actor.id == subject.id:
        return _allow("own_trail", "own audit trail")
    if is_proxy:
        return _allow("proxy", "proxy of the patient")
    if actor.role == _REGULATOR:
        return _allow("regulator", "regulator oversight")
    if actor.role == _ADMIN and actor.institution == subject.institution:
        return _allow("institution_admin", "institution admin oversight")
    return _deny(
        "not_authorized", "only the patient, their proxies, admins and regulators see a trail"
    )


def may_approve_erasure(actor: Identity, record: RecordMeta) -> Decision:
    """A regulator, or an admin of the record's institution, co-signs an erasure."""
    if actor.status != ACTIVE:
        return _deny("identity_suspended", "identity suspended")
    if actor.role == _REGULATOR:
        return _allow("regulator", "regulator approval")
    if actor.role == _ADMIN and actor.institution == record.institution:
        return _allow("institution_admin", "admin of the record's institution")
    return _deny(
        "not_authorized", "a regulator or an admin of the record's institution must approve"
    )
