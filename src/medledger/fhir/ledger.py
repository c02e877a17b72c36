"""What the FHIR routes read from the node: visibility and lookups, under the policy.

Every decision reuses :mod:`medledger.app.access` with the facts
:mod:`medledger.app.consents` gathers (and ``require_trail_view`` of the audit routes);
nothing here is a rule of its own except which patients a caller may *find*, which
composes those facts (docs/fhir.md).
Call these on the node's event loop (they read committed state).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medledger.app import access, consents
from medledger.app.model import (
    Consent,
    Identity,
    RecordMeta,
    Role,
    is_consent_id,
    is_record_id,
    k_consent,
    p_patient_records,
)
from medledger.crypto.keys import is_identity_id
from medledger.errors import Forbidden, InvalidInput, NotFound
from medledger.ledger.store import AuditRow

if TYPE_CHECKING:
    from medledger.node.node import Node

LIST_LIMIT = 10_000
STAFF_ROLES = frozenset({Role.ADMIN.value, Role.SERVICE.value})


def now(node: Node) -> int:
    return node.last_header.time_ms if node.last_header else 0


def block_time(node: Node, height: int) -> int:
    return node.block(height).header.time_ms


def mrn_links(node: Node, patient: str) -> list[tuple[str, str]]:
    """``(institution, mrn)`` links of ``patient`` kept at this node."""
    inst = node.config.name
    return [(inst, x.mrn) for x in node.dicom.patients.links() if x.patient == patient]


def patient_identity(node: Node, patient_id: str) -> Identity:
    if not is_identity_id(patient_id):
        raise NotFound("no such Patient", code="PATIENT_NOT_FOUND")
    ident = node.app.query_identity(patient_id)
    if ident is None or ident.role != Role.PATIENT.value:
        raise NotFound("no such Patient", code="PATIENT_NOT_FOUND")
    return ident


def may_see_patient(node: Node, actor: Identity, patient: Identity) -> bool:
    """The patient itself and its proxies; regulators; a clinician with the patient in
    care or named by a permit consent; an admin or service of the patient's institution,
    or of this node's institution for a patient it linked an MRN to."""
    if actor.id == patient.id or actor.role == Role.REGULATOR.value:
        return True
    facts = consents.patient_facts(node.app.committed_view(), actor, patient.id)
    if facts.is_proxy or facts.in_care:
        return True
    if any(c.permit and access.names_actor(c, actor) for c in facts.consents):
        return True
    if actor.role in STAFF_ROLES:
        if actor.institution == patient.institution:
            return True
        linked_here = actor.institution == node.config.name and bool(mrn_links(node, patient.id))
        return linked_here
    return False


def record_meta(node: Node, record_id: str) -> RecordMeta:
    if not is_record_id(record_id):
        raise NotFound("no such record", code="RECORD_NOT_FOUND")
    meta = node.app.query_record(record_id)
    if meta is None:
        raise NotFound("no such record", code="RECORD_NOT_FOUND")
    if meta.erased_height:
        raise NotFound("the record was erased", code="RECORD_ERASED")
    return meta


def visible_record(node: Node, actor: Identity, record_id: str) -> RecordMeta:
    """A live record whose metadata ``actor`` may see (as ``GET /api/v1/records/{id}``)."""
    meta = record_meta(node, record_id)
    facts = consents.read_facts(node.app.committed_view(), actor, meta)
    if not access.may_view_metadata(actor, meta, facts, now(node)):
        raise Forbidden("record metadata is not visible to this caller", code="ACCESS_DENIED")
    return meta


def patient_records(node: Node, actor: Identity, patient: str) -> list[RecordMeta]:
    """``patient``'s live records whose metadata ``actor`` may see (as
    ``GET /api/v1/records``: the listing decision, then each record's)."""
    if not is_identity_id(patient):
        raise InvalidInput("not a MedLedger identity ID", code="BAD_IDENTITY_ID")
    facts = consents.patient_facts(node.app.committed_view(), actor, patient)
    decision = access.may_list_records(actor, patient, facts.is_proxy)
    if not decision.allowed and not any(
        c.permit and access.names_actor(c, actor) for c in facts.consents
    ):
        raise Forbidden(decision.reason, code="ACCESS_DENIED")
    t = now(node)
    out = []
    for key, _ in node.reader.scan_prefix(p_patient_records(patient), LIST_LIMIT):
        meta = node.app.query_record(key.rsplit(b"/", 1)[1].decode())
        if (
            meta is not None
            and not meta.erased_height
            and access.may_view_metadata(actor, meta, facts, t)
        ):
            out.append(meta)
    out.sort(key=lambda m: (m.height, m.record_id))
    return out


def consent_by_id(node: Node, consent_id: str) -> Consent:
    c = (
        node.app.committed_view().get(k_consent(consent_id), Consent)
        if is_consent_id(consent_id)
        else None
    )
    if c is None:
        raise NotFound("no such Consent", code="CONSENT_NOT_FOUND")
    return c


def patient_consent_ids(node: Node, patient: str) -> list[str]:
    """Every consent ever granted for ``patient`` (active and revoked), oldest first,
    from the patient's audit trail."""
    ids: list[str] = []
    for row in node.reader.audit_events(patient, limit=LIST_LIMIT):
        if row.event.action == "consent.grant" and row.event.outcome == "ok":
            cid = detail_value(row.event.detail, "consent")
            if cid and cid not in ids:
                ids.append(cid)
    return ids


def detail_value(detail: str, key: str) -> str | None:
    for part in detail.replace(";", " ").split():
        if part.startswith(key + "="):
            return part[len(key) + 1 :]
    return None


def write_row(node: Node, meta: RecordMeta) -> AuditRow | None:
    """The audit row of the record's registration (its ``write`` event)."""
    for row in node.reader.audit_events(meta.patient, limit=1000, since_height=meta.height):
        if row.height != meta.height:
            break
        if row.event.action == "write" and row.event.record_id == meta.record_id:
            return row
    return None


def record_types(node: Node, record_ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for rid in record_ids:
        meta = node.app.query_record(rid) if is_record_id(rid) else None
        if meta is not None:
            out[rid] = meta.type
    return out


def audit_rows(node: Node, subject: str) -> list[AuditRow]:
    return node.reader.audit_events(subject, limit=LIST_LIMIT)
