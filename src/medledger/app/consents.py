"""Consent, care relationships and proxies on the ledger (pure rules).

Consents follow FHIR R4 Consent provisions: an actor (an identity or a whole
institution), purposes, data (record IDs), classes (record types), a period,
permit or deny. A patient's active consent IDs are kept in one sorted list so a
read decision looks at a bounded set; revoking takes a consent out of it, so
from the next transaction on it no longer counts.
"""

from __future__ import annotations

import msgspec

from medledger.app import access
from medledger.app.model import (
    ACTIVE,
    ACTOR_IDENTITY,
    ACTOR_INSTITUTION,
    CARE_KINDS,
    CONSENT_ACTIVE,
    CONSENT_INACTIVE,
    PURPOSES,
    RECORD_TYPE_RE,
    CareBody,
    CareRelation,
    Consent,
    ConsentList,
    GrantConsentBody,
    Identity,
    Institution,
    ProxyList,
    RecordMeta,
    RevokeConsentBody,
    Role,
    SetProxyBody,
    is_consent_id,
    is_record_id,
    k_care,
    k_consent,
    k_identity,
    k_institution,
    k_patient_consents,
    k_proxies,
    k_record,
)
from medledger.app.state import StateView
from medledger.errors import MedLedgerError
from medledger.ledger.block import Event

MAX_ACTIVE_CONSENTS = 256  # per patient: bounds the work of every read decision
MAX_CONSENT_RECORDS = 64
MAX_CONSENT_TYPES = 16
MAX_PROXIES = 8
REFERRAL_PURPOSES = ("referral", "treatment")
NO_PROXY_ROLES = frozenset({Role.REGULATOR.value, Role.ADMIN.value, Role.NODE.value})


class ConsentRuleError(MedLedgerError):
    default_code = "TX_MALFORMED"


# ---- facts for decisions -------------------------------------------------------------


def is_proxy(view: StateView, patient: str, actor_id: str) -> bool:
    proxies = view.get(k_proxies(patient), ProxyList)
    return proxies is not None and actor_id in proxies.proxies


def active_consents(view: StateView, patient: str) -> list[Consent]:
    listed = view.get(k_patient_consents(patient), ConsentList)
    if listed is None:
        return []
    found = (view.get(k_consent(cid), Consent) for cid in listed.ids)
    return [c for c in found if c is not None]


def in_care(view: StateView, patient: str, clinician: str) -> bool:
    return view.get_raw(k_care(patient, clinician)) is not None


def patient_facts(view: StateView, actor: Identity, patient: str) -> access.ReadFacts:
    """What state says about ``actor`` and ``patient``: care, proxy, consents."""
    return access.ReadFacts(
        in_care=actor.role == Role.CLINICIAN and in_care(view, patient, actor.id),
        is_proxy=is_proxy(view, patient, actor.id),
        consents=active_consents(view, patient),
    )


def read_facts(view: StateView, actor: Identity, record: RecordMeta) -> access.ReadFacts:
    return patient_facts(view, actor, record.patient)


# ---- consent.grant / consent.revoke ------------------------------------------------------


def _patient(view: StateView, patient_id: str) -> Identity:
    patient = view.get(k_identity(patient_id), Identity)
    if patient is None or patient.role != Role.PATIENT:
        raise ConsentRuleError("not an enrolled patient", code="UNKNOWN_PATIENT")
    return patient


def _acting_for(view: StateView, sender: Identity, patient: str) -> None:
    decision = access.may_act_for(sender, patient, is_proxy(view, patient, sender.id))
    if not decision.allowed:
        raise ConsentRuleError(decision.reason, code="NOT_AUTHORIZED")


def _sorted_unique(values: list[str], what: str, limit: int) -> None:
    if values != sorted(set(values)):
        raise ConsentRuleError(f"{what} must be sorted and unique")
    if len(values) > limit:
        raise ConsentRuleError(f"at most {limit} {what}")


def grant(
    view: StateView,
    sender: Identity,
    body: GrantConsentBody,
    consent_id: str,
    height: int,
    now_ms: int,
) -> tuple[list[Event], dict[str, str]]:
    patient = _patient(view, body.patient)
    _acting_for(view, sender, patient.id)
    if body.actor_kind == ACTOR_IDENTITY:
        grantee = view.get(k_identity(body.actor), Identity)
        if grantee is None:
            raise ConsentRuleError(
                "the grantee is not an enrolled identity", code="UNKNOWN_IDENTITY"
            )
        if grantee.id == patient.id:
            raise ConsentRuleError("a patient needs no consent for their own records")
    elif body.actor_kind == ACTOR_INSTITUTION:
        if view.get(k_institution(body.actor), Institution) is None:
            raise ConsentRuleError(
                "the grantee is not a member institution", code="UNKNOWN_INSTITUTION"
            )
    else:
        raise ConsentRuleError("actor_kind must be identity or institution")
    if not body.purposes or any(p not in PURPOSES for p in body.purposes):
        raise ConsentRuleError(
            f"purposes must be one or more of {', '.join(sorted(PURPOSES))}", code="BAD_PURPOSE"
        )
    _sorted_unique(body.purposes, "purposes", len(PURPOSES))
    _sorted_unique(body.record_ids, "record IDs", MAX_CONSENT_RECORDS)
    _sorted_unique(body.types, "record types", MAX_CONSENT_TYPES)
    for rid in body.record_ids:
        meta = view.get(k_record(rid), RecordMeta) if is_record_id(rid) else None
        if meta is None or meta.patient != patient.id:
            raise ConsentRuleError(
                f"{rid} is not a record of this patient", code="RECORD_NOT_FOUND"
            )
    if any(not RECORD_TYPE_RE.match(t) for t in body.types):
        raise ConsentRuleError(
            "record types must match [a-z][a-z0-9_.-]{0,31}", code="BAD_RECORD_TYPE"
        )
    if body.start_ms < 0 or body.end_ms < 0:
        raise ConsentRuleError("period bounds must not be negative")
    if body.end_ms and (body.end_ms <= body.start_ms or body.end_ms <= now_ms):
        raise ConsentRuleError(
            "the consent period ends before it starts or in the past", code="BAD_PERIOD"
        )
    listed = _prune_expired(view, patient.id, now_ms)
    if len(listed.ids) >= MAX_ACTIVE_CONSENTS:
        raise ConsentRuleError(
            f"a patient may hold at most {MAX_ACTIVE_CONSENTS} active consents; revoke some",
            code="TOO_MANY_CONSENTS",
        )
    consent = Consent(
        consent_id=consent_id,
        patient=patient.id,
        grantor=sender.id,
        actor_kind=body.actor_kind,
        actor=body.actor,
        purposes=body.purposes,
        record_ids=body.record_ids,
        types=body.types,
        start_ms=body.start_ms,
        end_ms=body.end_ms,
        permit=body.permit,
        status=CONSENT_ACTIVE,
        height=height,
        revoked_height=0,
    )
    view.put(k_consent(consent_id), consent)
    view.put(k_patient_consents(patient.id), ConsentList(ids=sorted([*listed.ids, consent_id])))
    detail = (
        f"consent={consent_id} {'permit' if body.permit else 'deny'} "
        f"{body.actor_kind}={body.actor} purposes={','.join(body.purposes)}"
        f" records={','.join(body.record_ids) or '*'} types={','.join(body.types) or '*'}"
        f" start_ms={body.start_ms} end_ms={body.end_ms}"
    )
    ev = _event("consent.grant", sender, patient.id, detail)
    return [ev], {"consent_id": consent_id, "patient": patient.id}


def _prune_expired(view: StateView, patient: str, now_ms: int) -> ConsentList:
    """The patient's active list without consents whose period ended (they become
    ``inactive``, ``revoked_height`` 0), so expired ones do not count to the limit."""
    listed = view.get(k_patient_consents(patient), ConsentList) or ConsentList(ids=[])
    keep: list[str] = []
    for cid in listed.ids:
        c = view.get(k_consent(cid), Consent)
        if c is not None and c.end_ms and c.end_ms <= now_ms:
            view.put(k_consent(cid), msgspec.structs.replace(c, status=CONSENT_INACTIVE))
        else:
            keep.append(cid)
    return listed if len(keep) == len(listed.ids) else ConsentList(ids=keep)


def revoke(
    view: StateView, sender: Identity, body: RevokeConsentBody, height: int
) -> tuple[list[Event], dict[str, str]]:
    consent = (
        view.get(k_consent(body.consent_id), Consent) if is_consent_id(body.consent_id) else None
    )
    if consent is None:
        raise ConsentRuleError("consent not found", code="CONSENT_NOT_FOUND")
    _acting_for(view, sender, consent.patient)
    if consent.status != CONSENT_ACTIVE:
        raise ConsentRuleError("the consent is already revoked", code="CONSENT_INACTIVE")
    view.put(
        k_consent(consent.consent_id),
        msgspec.structs.replace(consent, status=CONSENT_INACTIVE, revoked_height=height),
    )
    listed = view.get(k_patient_consents(consent.patient), ConsentList) or ConsentList(ids=[])
    view.put(
        k_patient_consents(consent.patient),
        ConsentList(ids=[c for c in listed.ids if c != consent.consent_id]),
    )
    ev = _event("consent.revoke", sender, consent.patient, f"consent={consent.consent_id}")
    return [ev], {"consent_id": consent.consent_id, "patient": consent.patient}


# ---- care.start / care.end -------------------------------------------------------------------


def start_care(
    view: StateView, sender: Identity, body: CareBody, height: int, now_ms: int
) -> tuple[list[Event], dict[str, str]]:
    patient = _patient(view, body.patient)
    clinician = view.get(k_identity(body.clinician), Identity)
    if clinician is None:
        raise ConsentRuleError("the clinician is not enrolled", code="UNKNOWN_IDENTITY")
    if body.kind not in CARE_KINDS:
        raise ConsentRuleError(f"care kind must be one of {', '.join(sorted(CARE_KINDS))}")
    consented = any(
        c.permit and access.consent_matches(c, clinician, _any_record(patient.id), p, now_ms)
        for c in active_consents(view, patient.id)
        for p in REFERRAL_PURPOSES
    )
    decision = access.may_start_care(sender, clinician, patient, consented)
    if not decision.allowed:
        raise ConsentRuleError(f"{decision.rule}: {decision.reason}", code="NOT_AUTHORIZED")
    if in_care(view, patient.id, clinician.id):  # only told to those who may start it
        raise ConsentRuleError("the care relationship already exists", code="ALREADY_IN_CARE")
    view.put(
        k_care(patient.id, clinician.id),
        CareRelation(
            patient=patient.id,
            clinician=clinician.id,
            institution=clinician.institution,
            kind=body.kind,
            started_by=sender.id,
            height=height,
        ),
    )
    detail = f"clinician={clinician.id} institution={clinician.institution} kind={body.kind} rule={decision.rule}"
    return [_event("care.start", sender, patient.id, detail)], {"patient": patient.id}


def end_care(
    view: StateView, sender: Identity, body: CareBody
) -> tuple[list[Event], dict[str, str]]:
    relation = view.get(k_care(body.patient, body.clinician), CareRelation)
    if relation is None:
        raise ConsentRuleError("no such care relationship", code="NOT_IN_CARE")
    decision = access.may_manage(sender, relation.institution)
    if not decision.allowed:
        raise ConsentRuleError(decision.reason, code="NOT_AUTHORIZED")
    view.delete(k_care(body.patient, body.clinician))
    detail = f"clinician={body.clinician} institution={relation.institution}"
    return [_event("care.end", sender, body.patient, detail)], {"patient": body.patient}


# ---- proxy.set ----------------------------------------------------------------------------


def set_proxy(
    view: StateView, sender: Identity, body: SetProxyBody
) -> tuple[list[Event], dict[str, str]]:
    if sender.role != Role.PATIENT:
        raise ConsentRuleError("only a patient names their proxies", code="NOT_AUTHORIZED")
    current = (view.get(k_proxies(sender.id), ProxyList) or ProxyList(proxies=[])).proxies
    if body.active:
        proxy = view.get(k_identity(body.proxy), Identity)
        if proxy is None or proxy.status != ACTIVE:
            raise ConsentRuleError("the proxy is not an active identity", code="UNKNOWN_IDENTITY")
        if proxy.id == sender.id:
            raise ConsentRuleError("a patient is not their own proxy")
        if proxy.role in NO_PROXY_ROLES:
            # they would read content, and an admin could request and approve an erasure alone
            raise ConsentRuleError(
                f"a {proxy.role} identity cannot act as a patient's proxy", code="NOT_AUTHORIZED"
            )
        if proxy.id in current:
            raise ConsentRuleError("already a proxy of this patient", code="ALREADY_PROXY")
        if len(current) >= MAX_PROXIES:
            raise ConsentRuleError(f"at most {MAX_PROXIES} proxies")
        updated = sorted([*current, body.proxy])
    else:  # removal works for any listed proxy, suspended ones too
        if body.proxy not in current:
            raise ConsentRuleError("not a proxy of this patient", code="NOT_A_PROXY")
        updated = [p for p in current if p != body.proxy]
    if updated:
        view.put(k_proxies(sender.id), ProxyList(proxies=updated))
    else:
        view.delete(k_proxies(sender.id))
    action = "proxy.add" if body.active else "proxy.remove"
    return [_event(action, sender, sender.id, f"proxy={body.proxy}")], {"proxy": body.proxy}


def _any_record(patient: str) -> RecordMeta:
    """A stand-in record for "any record of the patient" (referral consent checks):
    consents limited to some records or types do not admit a referral."""
    return RecordMeta(
        record_id="",
        patient=patient,
        type="",
        content_hash="",
        size=0,
        chunk_count=0,
        shard_root=b"",
        k=1,
        m=0,
        placement=[],
        custodians=[],
        threshold=1,
        deidentified=False,
        institution="",
        creator="",
        created_ms=0,
        height=0,
        erased_height=0,
    )


def _event(action: str, sender: Identity, subject: str, detail: str) -> Event:
    return Event(
        action=action, actor=sender.id, subject=subject, record_id="", outcome="ok", detail=detail
    )
