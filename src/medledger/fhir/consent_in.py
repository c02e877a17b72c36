"""An incoming FHIR Consent as a ``consent.grant`` (pure).

MedLedger's consent is one provision (docs/access-control.md): a FHIR Consent maps
onto it only when it says no more than that. Anything the ledger could not enforce
(nested provisions, actions, security labels, several actors, data meanings other
than ``instance``...) is refused with 422 rather than silently dropped: a patient
must never believe they denied something the ledger does not deny.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from medledger.app.model import (
    ACTOR_IDENTITY,
    ACTOR_INSTITUTION,
    INSTITUTION_RE,
    PURPOSES,
    RECORD_TYPE_RE,
    is_record_id,
)
from medledger.crypto.keys import is_identity_id
from medledger.fhir.outcome import Unprocessable
from medledger.fhir.systems import SYS_IDENTITY, SYS_INSTITUTION, SYS_PURPOSE, SYS_RECORD_TYPE

V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
# v3 purposes of use with an exact MedLedger equivalent
V3_PURPOSES = {"TREAT": "treatment", "HRESCH": "research", "PATRQT": "patient-access"}
ACTOR_ROLES = frozenset({"IRCP", "PRCP"})  # (primary) information recipient
IDENTITY_RESOURCES = frozenset({"Practitioner", "PractitionerRole", "Patient", "RelatedPerson"})
DATA_RESOURCES = frozenset({"DocumentReference", "ImagingStudy"})
UNSUPPORTED_PROVISION = ("action", "securityLabel", "code", "dataPeriod", "provision")


def _refuse(message: str, code: str = "UNSUPPORTED_CONSENT") -> Unprocessable:
    return Unprocessable(message, code=code)


def parse_time_ms(value: str, what: str) -> int:
    """A FHIR dateTime (a full date at least) as ms since the epoch (UTC if no zone)."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise _refuse(f"{what} must be a full date or date-time", code="BAD_PERIOD")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ms = int(when.timestamp() * 1000)
    if ms < 0:
        raise _refuse(f"{what} is before 1970", code="BAD_PERIOD")
    return ms


def reference_id(ref: dict[str, Any], allowed: frozenset[str], what: str) -> tuple[str, str]:
    """``(resource type, id)`` of a literal reference ``Type/id`` among ``allowed``."""
    literal = ref.get("reference")
    if not isinstance(literal, str) or literal.count("/") != 1:
        raise _refuse(f"{what} must be a reference Type/id", code="BAD_REFERENCE")
    kind, ident = literal.split("/")
    if kind not in allowed:
        raise _refuse(
            f"{what} must reference one of {', '.join(sorted(allowed))}", code="BAD_REFERENCE"
        )
    return kind, ident


def patient_of(doc: dict[str, Any]) -> str:
    ref = doc.get("patient")
    if not isinstance(ref, dict):
        raise _refuse("Consent.patient is required", code="BAD_REFERENCE")
    _, patient = reference_id(ref, frozenset({"Patient"}), "Consent.patient")
    if not is_identity_id(patient):
        raise _refuse("Consent.patient is not a MedLedger patient", code="BAD_REFERENCE")
    return patient


def _actor(provision: dict[str, Any]) -> tuple[str, str]:
    actors = provision.get("actor") or []
    if len(actors) != 1:
        raise _refuse("a provision names exactly one actor (one consent per grantee)")
    actor = actors[0]
    roles = {c.get("code") for c in (actor.get("role") or {}).get("coding") or []}
    if not roles & ACTOR_ROLES:
        raise _refuse(
            f"provision.actor.role must be {V3_PARTICIPATION}|IRCP (who may read)",
            code="UNSUPPORTED_ACTOR_ROLE",
        )
    ref = actor.get("reference") or {}
    identifier = ref.get("identifier")
    if isinstance(identifier, dict) and "reference" not in ref:
        system, value = identifier.get("system"), str(identifier.get("value", ""))
        if system == SYS_IDENTITY and is_identity_id(value):
            return ACTOR_IDENTITY, value
        if system == SYS_INSTITUTION and INSTITUTION_RE.match(value):
            return ACTOR_INSTITUTION, value
        raise _refuse("provision.actor identifier is not a MedLedger identity or institution")
    kind, ident = reference_id(
        ref, IDENTITY_RESOURCES | {"Organization"}, "provision.actor.reference"
    )
    if kind == "Organization":
        if not INSTITUTION_RE.match(ident):
            raise _refuse("Organization/<institution> names a member institution")
        return ACTOR_INSTITUTION, ident
    if not is_identity_id(ident):
        raise _refuse(f"{kind}/<id> must be a MedLedger identity ID", code="BAD_REFERENCE")
    return ACTOR_IDENTITY, ident


def _purposes(provision: dict[str, Any]) -> list[str]:
    out: set[str] = set()
    for coding in provision.get("purpose") or []:
        system, code = coding.get("system"), coding.get("code")
        if system == SYS_PURPOSE and code in PURPOSES:
            out.add(str(code))
        elif system == V3_ACT_REASON and code in V3_PURPOSES:
            out.add(V3_PURPOSES[str(code)])
        else:
            raise _refuse(
                f"provision.purpose must be codes of {SYS_PURPOSE} "
                f"({', '.join(sorted(PURPOSES))}) or {V3_ACT_REASON} "
                f"({', '.join(sorted(V3_PURPOSES))})",
                code="BAD_PURPOSE",
            )
    if not out:
        raise _refuse("provision.purpose is required (what the access is for)", code="BAD_PURPOSE")
    return sorted(out)


def _records(provision: dict[str, Any]) -> list[str]:
    out: set[str] = set()
    for data in provision.get("data") or []:
        if data.get("meaning") != "instance":
            raise _refuse("provision.data.meaning must be 'instance'")
        _, rid = reference_id(data.get("reference") or {}, DATA_RESOURCES, "provision.data")
        if not is_record_id(rid):
            raise _refuse("provision.data must reference a MedLedger record", code="BAD_REFERENCE")
        out.add(rid)
    return sorted(out)


def _types(provision: dict[str, Any]) -> list[str]:
    out: set[str] = set()
    for coding in provision.get("class") or []:
        code = str(coding.get("code", ""))
        if coding.get("system") != SYS_RECORD_TYPE or not RECORD_TYPE_RE.match(code):
            raise _refuse(f"provision.class must be codes of {SYS_RECORD_TYPE}")
        out.add(code)
    return sorted(out)


def grant_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``GrantConsentBody`` for a validated FHIR Consent ``doc``."""
    if doc.get("status") != "active":
        raise _refuse("only an active Consent can be created (status 'active')")
    patient = patient_of(doc)
    provision = doc.get("provision")
    if not isinstance(provision, dict):
        raise _refuse("Consent.provision is required (type, actor, purpose)")
    for name in UNSUPPORTED_PROVISION:
        if provision.get(name):
            raise _refuse(f"provision.{name} is not supported")
    kind = provision.get("type")
    if kind not in ("permit", "deny"):
        raise _refuse("provision.type must be permit or deny")
    actor_kind, actor = _actor(provision)
    period = provision.get("period") or {}
    start_ms = (
        parse_time_ms(period["start"], "provision.period.start") if period.get("start") else 0
    )
    end_ms = parse_time_ms(period["end"], "provision.period.end") if period.get("end") else 0
    return {
        "patient": patient,
        "actor_kind": actor_kind,
        "actor": actor,
        "purposes": _purposes(provision),
        "record_ids": _records(provision),
        "types": _types(provision),
        "start_ms": start_ms,
        "end_ms": end_ms,
        "permit": kind == "permit",
    }
