"""DICOM routes of the node API: the AE-title allow-list of this node's SCP.

* ``GET /api/v1/dicom/allowed-aes``: the calling AE titles this node accepts;
* ``POST /api/v1/dicom/allowed-aes`` ``{"ae_title", "identity"[, "host", "port"]}``:
  map a calling AE title to an active ``service`` identity of this node's institution;
  with ``host`` and ``port`` the title is also a C-MOVE destination at that address;
* ``DELETE /api/v1/dicom/allowed-aes/{ae_title}``: remove it;
* ``GET /api/v1/dicom/patients``: the hospital patient identifiers (DICOM PatientID,
  MRN) linked to ledger patients;
* ``POST /api/v1/dicom/patients`` ``{"mrn", "patient"}``: link one to an enrolled,
  active patient identity (studies with that PatientID are filed under it).

All of them need an active admin of this node's institution (``NOT_AUTHORIZED``
otherwise). The list is kept off chain, in the node's home
(:mod:`medledger.dicom.allowlist`); the SCP reads it at every association.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import FastAPI, Request

from medledger.app import access
from medledger.app.model import (
    ACTIVE,
    MAX_MERGE_RECORDS,
    Pseudonym,
    RecordMeta,
    Role,
    k_pseudonym,
    k_record,
    p_patient_records,
)
from medledger.codec import decode
from medledger.crypto.keys import is_identity_id
from medledger.dicom import reindex
from medledger.dicom.aetitle import validate_ae_title
from medledger.dicom.allowlist import allowed_json, validate_address
from medledger.dicom.patients import PatientLink, link_json, validate_mrn
from medledger.dicom.visibility import visible_record_ids
from medledger.errors import Forbidden, InvalidInput, NotFound
from medledger.log import get_logger
from medledger.node.node import Node, now_ms

log = get_logger("medledger.api")

ALLOWED_AES = "/api/v1/dicom/allowed-aes"
PATIENTS = "/api/v1/dicom/patients"
REINDEX = "/api/v1/dicom/reindex"
RECORD_PREFIX = k_record("")
MAX_REINDEX_RECORDS = 100_000


class AllowBody(msgspec.Struct, forbid_unknown_fields=True):
    ae_title: str
    identity: str
    host: str = ""
    port: int = 0


class LinkBody(msgspec.Struct, forbid_unknown_fields=True):
    mrn: str
    patient: str


def add_dicom_routes(app: FastAPI, node: Node, authenticate: Callable[..., Awaitable[Any]]) -> None:
    gateway = node.dicom
    # C-FIND/C-MOVE/C-GET filter by the policy, which reads this node's committed state
    gateway.visibility = lambda identity, ids: visible_record_ids(node, identity, ids)

    async def institution_admin(request: Request) -> Any:
        caller = await authenticate(request)
        decision = access.may_manage(caller.identity, node.config.name)
        if not decision.allowed:
            raise Forbidden(
                f"only an admin of {node.config.name} manages its DICOM callers: {decision.reason}",
                code="NOT_AUTHORIZED",
            )
        return caller

    def gateway_json() -> dict[str, Any]:
        return {"gateway_id": gateway.gateway_id, "gateway_enrolled": gateway.gateway_enrolled()}

    def listing() -> dict[str, Any]:
        return {
            "institution": node.config.name,
            "dicom": gateway.listener_json(),
            **gateway_json(),
            "allowed": [allowed_json(e) for e in gateway.allowlist.entries()],
        }

    @app.get(ALLOWED_AES)
    async def list_allowed(request: Request) -> dict[str, Any]:
        await institution_admin(request)
        return listing()

    @app.post(ALLOWED_AES)
    async def allow(request: Request) -> dict[str, Any]:
        caller = await institution_admin(request)
        try:
            body = msgspec.json.decode(await request.body(), type=AllowBody)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise InvalidInput(
                'the body must be {"ae_title": str, "identity": str, '
                '"host": str (optional), "port": int (optional)}',
                code="BAD_REQUEST",
            )
        ae_title = validate_ae_title(body.ae_title)
        host, port = validate_address(body.host, body.port)
        if not is_identity_id(body.identity):
            raise InvalidInput("not a MedLedger identity ID", code="BAD_IDENTITY_ID")
        ident = node.app.query_identity(body.identity)
        if ident is None:
            raise NotFound("identity is not enrolled", code="UNKNOWN_IDENTITY")
        if ident.role != Role.SERVICE.value or ident.institution != node.config.name:
            raise InvalidInput(
                f"a DICOM caller must be a service identity of {node.config.name}; "
                f"{body.identity} is a {ident.role} of {ident.institution}",
                code="NOT_A_SERVICE",
            )
        if ident.status != ACTIVE:
            raise InvalidInput(f"{body.identity} is suspended", code="IDENTITY_SUSPENDED")
        # the file is written and fsynced: off the event loop
        entry, created = await asyncio.to_thread(
            gateway.allowlist.allow,
            ae_title,
            ident.id,
            added_by=caller.identity.id,
            now_ms=now_ms(),
            host=host,
            port=port,
        )
        log.info(
            "dicom.ae_allowed",
            ae_title=ae_title,
            identity=ident.id,
            by=caller.identity.id,
            created=created,
            destination=f"{host}:{port}" if host else None,
        )
        return {**allowed_json(entry), "created": created, **gateway_json()}

    @app.delete(ALLOWED_AES + "/{ae_title:path}")
    async def deny(ae_title: str, request: Request) -> dict[str, Any]:
        caller = await institution_admin(request)
        entry = await asyncio.to_thread(gateway.allowlist.deny, validate_ae_title(ae_title))
        log.info(
            "dicom.ae_denied",
            ae_title=entry.ae_title,
            identity=entry.identity,
            by=caller.identity.id,
        )
        return {**allowed_json(entry), "removed": True}

    @app.post(REINDEX)
    async def reindex_studies(request: Request) -> dict[str, Any]:
        """Rebuild the study index from the ledger: read (one audited read each) the
        live imaging-study records of this institution that the index lacks."""
        caller = await institution_admin(request)
        if not gateway.gateway_enrolled():
            raise InvalidInput(
                f"enroll the node's DICOM gateway {gateway.gateway_id} as a service first",
                code="GATEWAY_NOT_ENROLLED",
            )
        rows = node.reader.scan_prefix(RECORD_PREFIX, MAX_REINDEX_RECORDS + 1)
        metas = [decode(value, RecordMeta) for _, value in rows[:MAX_REINDEX_RECORDS]]
        todo = reindex.candidates(metas, node.config.name)
        log.info("dicom.reindex_started", records=len(todo), by=caller.identity.id)
        report = await asyncio.to_thread(
            reindex.reindex,
            gateway.index,
            todo,
            lambda meta: reindex.read_entries(gateway.api_url, gateway.gateway_key, meta),
        )
        return {**report.json(), "truncated": len(rows) > MAX_REINDEX_RECORDS}

    @app.get(PATIENTS)
    async def list_patients(request: Request) -> dict[str, Any]:
        await institution_admin(request)
        return {
            "institution": node.config.name,
            "links": [link_json(x) for x in gateway.patients.links()],
        }

    @app.post(PATIENTS)
    async def link_patient(request: Request) -> dict[str, Any]:
        caller = await institution_admin(request)
        try:
            body = msgspec.json.decode(await request.body(), type=LinkBody)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise InvalidInput('the body must be {"mrn": str, "patient": str}', code="BAD_REQUEST")
        mrn = validate_mrn(body.mrn)
        if not is_identity_id(body.patient):
            raise InvalidInput("not a MedLedger identity ID", code="BAD_IDENTITY_ID")
        ident = node.app.query_identity(body.patient)
        if ident is None:
            raise NotFound("identity is not enrolled", code="UNKNOWN_IDENTITY")
        if ident.role != Role.PATIENT.value:
            raise InvalidInput(
                f"{body.patient} is a {ident.role}, not a patient", code="NOT_A_PATIENT"
            )
        if ident.status != ACTIVE:
            raise InvalidInput(f"{body.patient} is suspended", code="IDENTITY_SUSPENDED")
        if pseudonym_of(ident.id) is not None:
            raise InvalidInput(
                f"{body.patient} is a pseudonymous patient: link the real one", code="NOT_A_PATIENT"
            )
        entry, created = await asyncio.to_thread(
            gateway.patients.link, mrn, ident.id, added_by=caller.identity.id, now_ms=now_ms()
        )
        if created:
            # the MRN itself is patient data: not in the log
            log.info("dicom.patient_linked", patient=ident.id, by=caller.identity.id)
            gateway.wake()  # studies waiting for this link are stored now
        return {**link_json(entry), "created": created, "merge": pending_merge(entry)}

    def pseudonym_of(identity_id: str) -> Pseudonym | None:
        return node.app.committed_view().get(k_pseudonym(identity_id), Pseudonym)

    def pending_merge(entry: PatientLink) -> dict[str, Any] | None:
        """The records still filed under the pseudonym this link replaced: the admin
        merges them into the patient with ``patient.merge`` (``medledger patient link``
        does it)."""
        p = pseudonym_of(entry.replaced_pseudonym) if entry.replaced_pseudonym else None
        if p is None or p.merged_into:
            return None
        rows = node.reader.scan_prefix(p_patient_records(p.id), MAX_MERGE_RECORDS)
        return {
            "pseudonym": p.id,
            "record_ids": sorted(key.rsplit(b"/", 1)[1].decode() for key, _ in rows),
        }
