"""Consent and care views of the node API (``/api/v1/consents``, ``/api/v1/care``).

Granting, revoking and starting care are transactions (``POST /api/v1/tx``);
these routes only read committed state. A patient, their proxies, regulators
and the admins of the patient's institution see a patient's consents and care
relationships; a grantee sees the consents naming it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request

from medledger.api.audit_routes import require_trail_view
from medledger.app import consents
from medledger.app.model import (
    CareRelation,
    Consent,
    Identity,
    is_consent_id,
    k_consent,
)
from medledger.codec import decode
from medledger.errors import InvalidInput, NotFound
from medledger.node.node import Node

CARE_PREFIX = b"v1/care/"
MAX_CARE = 10_000


def consent_json(c: Consent) -> dict[str, Any]:
    return {
        "consent_id": c.consent_id,
        "patient": c.patient,
        "grantor": c.grantor,
        "actor_kind": c.actor_kind,
        "actor": c.actor,
        "purposes": c.purposes,
        "record_ids": c.record_ids,
        "types": c.types,
        "start_ms": c.start_ms,
        "end_ms": c.end_ms,
        "provision": "permit" if c.permit else "deny",
        "status": c.status,
        "height": c.height,
        "revoked_height": c.revoked_height,
    }


def care_json(r: CareRelation) -> dict[str, Any]:
    return {
        "patient": r.patient,
        "clinician": r.clinician,
        "institution": r.institution,
        "kind": r.kind,
        "started_by": r.started_by,
        "height": r.height,
    }


def add_consent_routes(
    app: FastAPI, node: Node, authenticate: Callable[..., Awaitable[Any]]
) -> None:
    def patient_view(caller: Any, patient_id: str) -> Identity:
        """The patient whose consents or care ``caller`` asks for, if it may see them
        (as it may see the patient's audit trail)."""
        return require_trail_view(node, caller.identity, patient_id)

    @app.get("/api/v1/consents")
    async def list_consents(request: Request, patient: str) -> dict[str, Any]:
        """A patient's active consents (revoked ones stay in the audit trail)."""
        caller = await authenticate(request)
        patient_view(caller, patient)
        found = consents.active_consents(node.app.committed_view(), patient)
        return {"patient": patient, "consents": [consent_json(c) for c in found]}

    @app.get("/api/v1/consents/{consent_id}")
    async def get_consent(request: Request, consent_id: str) -> dict[str, Any]:
        caller = await authenticate(request)
        if not is_consent_id(consent_id):
            raise InvalidInput("not a consent ID", code="BAD_CONSENT_ID")
        consent = node.app.committed_view().get(k_consent(consent_id), Consent)
        if consent is None:
            raise NotFound("consent not found", code="CONSENT_NOT_FOUND")
        grantee = caller.identity.id if consent.actor_kind == "identity" else None
        if grantee != consent.actor:
            patient_view(caller, consent.patient)
        return consent_json(consent)

    @app.get("/api/v1/care")
    async def list_care(request: Request, patient: str) -> dict[str, Any]:
        """A patient's current care relationships."""
        caller = await authenticate(request)
        patient_view(caller, patient)
        rows = node.reader.scan_prefix(CARE_PREFIX + patient.encode() + b"/", MAX_CARE)
        return {
            "patient": patient,
            "relationships": [care_json(decode(v, CareRelation)) for _, v in rows],
        }
