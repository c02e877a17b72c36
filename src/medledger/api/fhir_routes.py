"""HL7 FHIR R4 under ``/fhir`` (issue 7; docs/fhir.md).

A sub-application mounted at ``/fhir`` so that every error, including unknown paths
and methods, is an OperationOutcome (``application/fhir+json``) whose
``details.coding`` carries MedLedger's stable error code. Callers authenticate with a
bearer token (``medledger token issue``) or a signed request; what needs the ledger
(Patient and Consent create, Consent delete, Binary read) is a transaction the node's
gateway key signs with the caller's token inside, so the chain decides for the
caller, as for its own transactions.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from medledger.api.audit_routes import require_trail_view
from medledger.api.tokens import submit_as_gateway
from medledger.app import access, consents
from medledger.app.delegation import SCOPE_CONSENT, SCOPE_ENROLL, SCOPE_READ, SCOPE_WRITE
from medledger.app.model import (
    CONSENT_ACTIVE,
    ENROLL,
    GRANT_CONSENT,
    REVOKE_CONSENT,
    EnrollBody,
    GrantConsentBody,
    Identity,
    RecordMeta,
    RevokeConsentBody,
    Role,
)
from medledger.client import Client, PutResult
from medledger.crypto.keys import PrivateKey, is_identity_id, save_key_file
from medledger.dicom.patients import validate_mrn
from medledger.errors import (
    AuthError,
    Conflict,
    Forbidden,
    InvalidInput,
    MedLedgerError,
    NotFound,
)
from medledger.fhir import ledger, resources
from medledger.fhir.capability import RESOURCES, capability_statement
from medledger.fhir.consent_in import grant_fields
from medledger.fhir.document_in import NewDocument, document_in
from medledger.fhir.models import MEDIA_TYPE, parse
from medledger.fhir.outcome import (
    NotSupported,
    Unprocessable,
    UnsupportedMediaType,
    operation_outcome,
    outcome_for,
)
from medledger.fhir.search import Query, dates_match, parse_query, reference, token
from medledger.fhir.systems import SYS_DICOM_UID, SYS_IDENTITY, SYS_MRN_PREFIX, instant
from medledger.ledger.store import AuditRow
from medledger.log import get_logger
from medledger.node.node import Node, now_ms

log = get_logger("medledger.fhir")

MAX_BODY_BYTES = 64 * 1024
# a DocumentReference create carries its content inline (base64: 4/3 of the bytes)
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
MAX_BINARY_BYTES = 64 * 1024 * 1024
PATIENT_KEYS = Path("patients")  # <home>/patients/<id>.key: custodial patient keys
JSON_TYPES = ("application/fhir+json", "application/json")
READ_PURPOSE = {  # the purpose of a Binary read, by the reader's role
    Role.PATIENT.value: "patient-access",
    Role.CLINICIAN.value: "treatment",
    Role.SERVICE.value: "treatment",
    Role.RESEARCHER.value: "research",
    Role.INSURER.value: "insurance",
    Role.PHARMACY.value: "dispensing",
}

Authenticate = Callable[..., Awaitable[Any]]


def fhir_json(
    doc: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    import json

    return Response(
        content=json.dumps(doc, separators=(",", ":")).encode(),
        status_code=status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def add_fhir_routes(app: FastAPI, node: Node, authenticate_any: Authenticate) -> None:
    fhir = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    # ---- errors: OperationOutcome, always -------------------------------------------------

    @fhir.exception_handler(MedLedgerError)
    async def _ml_error(request: Request, exc: MedLedgerError) -> Response:
        log.info("fhir.error", path=request.url.path, code=exc.code, status=exc.http_status)
        return fhir_json(outcome_for(exc), exc.http_status)

    @fhir.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return fhir_json(
            operation_outcome(400, "BAD_REQUEST", "request parameters are invalid"), 400
        )

    @fhir.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return fhir_json(operation_outcome(exc.status_code, code, str(exc.detail)), exc.status_code)

    @fhir.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("fhir.internal_error", path=request.url.path)
        return fhir_json(
            operation_outcome(500, "INTERNAL", "internal error; see the node log"), 500
        )

    # ---- helpers ---------------------------------------------------------------------------

    def base_url(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}/fhir"

    def self_url(request: Request) -> str:
        return str(request.url)

    async def caller_of(request: Request, scope: str = SCOPE_READ) -> Any:
        return await authenticate_any(request, scope=scope)

    def token_of(caller: Any, what: str) -> bytes:
        raw: bytes = getattr(caller, "token", b"")
        if not raw:
            raise AuthError(
                f"{what} needs a bearer token (medledger token issue): the node's gateway "
                "submits it for the token's identity",
                code="TOKEN_REQUIRED",
            )
        return raw

    async def body_of(
        request: Request, resource_type: str, limit: int = MAX_BODY_BYTES
    ) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in JSON_TYPES:
            raise UnsupportedMediaType(
                "send the resource as application/fhir+json", code="UNSUPPORTED_MEDIA_TYPE"
            )
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise InvalidInput("request body too large", code="BODY_TOO_LARGE")
        raw = bytearray()
        async for piece in request.stream():
            raw += piece
            if len(raw) > limit:
                raise InvalidInput("request body too large", code="BODY_TOO_LARGE")
        return parse(bytes(raw), resource_type)

    def bundle(request: Request, found: list[dict[str, Any]], query: Query) -> Response:
        return fhir_json(
            resources.searchset(
                found[: query.count],
                total=len(found),
                self_url=self_url(request),
                base_url=base_url(request),
            )
        )

    def search_query(request: Request, resource: str) -> Query:
        return parse_query(resource, request.query_params.multi_items())

    # ---- CapabilityStatement ------------------------------------------------------------------

    @fhir.get("/metadata")
    async def metadata(request: Request) -> Response:
        return fhir_json(capability_statement(base_url(request), instant(now_ms())))

    # ---- Patient ------------------------------------------------------------------------------

    def patient_doc(ident: Identity) -> dict[str, Any]:
        return resources.patient(ident, ledger.mrn_links(node, ident.id))

    @fhir.get("/Patient/{patient_id}")
    async def read_patient(patient_id: str, request: Request) -> Response:
        caller = await caller_of(request)
        ident = ledger.patient_identity(node, patient_id)
        if not ledger.may_see_patient(node, caller.identity, ident):
            raise Forbidden("this Patient is not visible to the caller", code="ACCESS_DENIED")
        return fhir_json(patient_doc(ident))

    def patients_by_identifier(value: str) -> set[str]:
        system, code = token(value)
        found: set[str] = set()
        if system in (None, SYS_IDENTITY) and is_identity_id(code):
            found.add(code)
        if system in (None, SYS_MRN_PREFIX + node.config.name):
            link = node.dicom.patients.get(code)
            if link is not None:
                found.add(link.patient)
        return found

    @fhir.get("/Patient")
    async def search_patients(request: Request) -> Response:
        caller = await caller_of(request)
        query = search_query(request, "Patient")
        ids = query.any_of("_id")
        identifiers = query.any_of("identifier")
        candidates: set[str] | None = None
        if ids is not None:
            candidates = set(ids)
        if identifiers is not None:
            by_identifier: set[str] = set()
            for value in identifiers:
                by_identifier |= patients_by_identifier(value)
            candidates = by_identifier if candidates is None else candidates & by_identifier
        if candidates is None:  # everyone the caller may find: itself, this node's links
            candidates = {x.patient for x in node.dicom.patients.links()}
            candidates.add(caller.identity.id)
        found = []
        for pid in sorted(candidates):
            try:
                ident = ledger.patient_identity(node, pid)
            except NotFound:
                continue
            if ledger.may_see_patient(node, caller.identity, ident):
                found.append(patient_doc(ident))
        return bundle(request, found, query)

    @fhir.post("/Patient")
    async def create_patient(request: Request) -> Response:
        caller = await caller_of(request, SCOPE_ENROLL)
        delegation = token_of(caller, "creating a Patient")
        decision = access.may_manage(caller.identity, node.config.name)
        if not decision.allowed:
            raise Forbidden(
                f"only an admin of {node.config.name} creates patients here: {decision.reason}",
                code="NOT_AUTHORIZED",
            )
        doc = await body_of(request, "Patient")
        mrns = []
        for ident in doc.get("identifier") or []:
            if ident.get("system") != SYS_MRN_PREFIX + node.config.name:
                raise Unprocessable(
                    "a new Patient's identifiers must be MRNs of this institution "
                    f"(system {SYS_MRN_PREFIX}{node.config.name}); the node assigns the "
                    "ledger ID",
                    code="UNSUPPORTED_IDENTIFIER",
                )
            mrn = validate_mrn(ident.get("value"))
            if node.dicom.patients.get(mrn) is not None:
                raise Conflict("this MRN is already linked to a patient", code="MRN_IN_USE")
            mrns.append(mrn)
        key = PrivateKey.generate()
        key_file = node.home / PATIENT_KEYS / f"{key.id}.key"
        await asyncio.to_thread(save_key_file, key_file, key)
        try:
            await submit_as_gateway(
                node, ENROLL, EnrollBody(id=key.id, role=Role.PATIENT.value, delegation=delegation)
            )
        except BaseException:
            key_file.unlink(missing_ok=True)
            raise
        for mrn in mrns:
            await asyncio.to_thread(
                node.dicom.patients.link, mrn, key.id, added_by=caller.identity.id, now_ms=now_ms()
            )
        if mrns:
            node.dicom.wake()
        log.info("fhir.patient_created", patient=key.id, by=caller.identity.id, mrns=len(mrns))
        ident = ledger.patient_identity(node, key.id)
        return fhir_json(
            patient_doc(ident), 201, {"Location": f"{base_url(request)}/Patient/{key.id}"}
        )

    # ---- DocumentReference ----------------------------------------------------------------------

    @fhir.get("/DocumentReference/{record_id}")
    async def read_document(record_id: str, request: Request) -> Response:
        caller = await caller_of(request)
        meta = ledger.visible_record(node, caller.identity, record_id)
        if meta.type == resources.IMAGING_STUDY_TYPE:
            raise NotFound("an imaging study is an ImagingStudy", code="RECORD_NOT_FOUND")
        return fhir_json(resources.document_reference(meta, base_url(request)))

    @fhir.post("/DocumentReference")
    async def create_document(request: Request) -> Response:
        """Store inline content as a new record of the patient, for the token's
        identity: encrypted and erasure-coded by this node, key shares deposited by its
        gateway, ``record.register`` with the token's delegation (its identity is the
        creator, and the chain's write rules are its)."""
        caller = await caller_of(request, SCOPE_WRITE)
        delegation = token_of(caller, "creating a DocumentReference")
        new = document_in(await body_of(request, "DocumentReference", MAX_DOCUMENT_BYTES))
        result = await asyncio.to_thread(store_document, new, delegation)
        meta = node.app.query_record(result.record_id)
        if meta is None:  # committed before put_stream returned
            raise NotFound("the new record is not visible yet", code="RECORD_NOT_FOUND")
        log.info("fhir.document_created", record_id=meta.record_id, by=caller.identity.id)
        return fhir_json(
            resources.document_reference(meta, base_url(request)),
            201,
            {"Location": f"{base_url(request)}/DocumentReference/{meta.record_id}"},
        )

    def store_document(new: NewDocument, delegation: bytes) -> PutResult:
        with Client(node.dicom.api_url, node.dicom.gateway_key) as client:
            return client.put_stream(
                io.BytesIO(new.data),
                len(new.data),
                patient=new.patient,
                record_type=new.record_type,
                delegation=delegation,
            )

    @fhir.get("/DocumentReference")
    async def search_documents(request: Request) -> Response:
        caller = await caller_of(request)
        query = search_query(request, "DocumentReference")
        metas = records_for(caller.identity, query)
        types = query.any_of("type")
        dates = query.dates("date")
        found = []
        for meta in metas:
            if meta.type == resources.IMAGING_STUDY_TYPE:
                continue
            if types is not None and not any(type_matches(t, meta.type) for t in types):
                continue
            if not dates_match(dates, meta.created_ms):
                continue
            found.append(resources.document_reference(meta, base_url(request)))
        return bundle(request, found, query)

    def records_for(actor: Identity, query: Query) -> list[RecordMeta]:
        """The records a search names by ``patient``/``subject`` or ``_id``, visible to
        ``actor``."""
        patient = query.one("patient") or query.one("subject")
        ids = query.any_of("_id")
        if patient is None and ids is None:
            raise InvalidInput(
                "search by patient (or _id): the ledger lists records per patient",
                code="MISSING_SEARCH_PARAM",
            )
        if patient is not None:
            metas = ledger.patient_records(node, actor, reference(patient, "Patient"))
            return [m for m in metas if ids is None or m.record_id in ids]
        out = []
        for rid in ids or []:
            try:
                out.append(ledger.visible_record(node, actor, rid))
            except (NotFound, Forbidden):
                continue
        return out

    def type_matches(value: str, record_type: str) -> bool:
        system, code = token(value)
        return system in (None, "", "urn:medledger:record-type") and code == record_type

    # ---- ImagingStudy ----------------------------------------------------------------------------

    def study_index() -> Any:
        index = getattr(node.dicom, "index", None)
        if index is None:
            raise NotFound("this node keeps no study index", code="NO_STUDY_INDEX")
        return index

    def dicomweb_base(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}/dicom-web"

    def imaging_doc(meta: RecordMeta, request: Request) -> dict[str, Any] | None:
        index = study_index()
        rows = index.search("STUDY", {}, record_ids=[meta.record_id], limit=1)
        if not rows:
            return None
        study_uid = rows[0]["StudyInstanceUID"]
        instances = [i for i in index.instances(study_uid) if i.record_id == meta.record_id]
        return resources.imaging_study(
            meta.record_id, meta.patient, study_uid, instances, dicomweb_base(request)
        )

    @fhir.get("/ImagingStudy/{record_id}")
    async def read_study(record_id: str, request: Request) -> Response:
        caller = await caller_of(request)
        meta = ledger.visible_record(node, caller.identity, record_id)
        if meta.type != resources.IMAGING_STUDY_TYPE:
            raise NotFound("not an imaging study", code="RECORD_NOT_FOUND")
        doc = await asyncio.to_thread(imaging_doc, meta, request)
        if doc is None:
            raise NotFound(
                "the study was stored through another node: ask that node",
                code="STUDY_NOT_INDEXED",
            )
        return fhir_json(doc)

    @fhir.get("/ImagingStudy")
    async def search_studies(request: Request) -> Response:
        from medledger.dicom.visibility import visible_record_ids

        caller = await caller_of(request)
        query = search_query(request, "ImagingStudy")
        index = study_index()
        patient = query.one("patient") or query.one("subject")
        patient_id = reference(patient, "Patient") if patient is not None else None
        ids = query.any_of("_id")
        uids: list[str] | None = None
        if (idents := query.any_of("identifier")) is not None:
            uids = []
            for value in idents:
                system, code = token(value)
                if system in (None, SYS_DICOM_UID):
                    uids.append(code.removeprefix("urn:oid:"))
        started = query.dates("started")
        candidates = await asyncio.to_thread(index.record_ids)
        if ids is not None:
            candidates = [r for r in candidates if r in ids]
        visible = visible_record_ids(node, caller.identity, candidates)
        match = {"StudyInstanceUID": "\\".join(uids)} if uids else {}
        if uids is not None and not uids:
            visible = set()
        rows = (
            await asyncio.to_thread(index.search, "STUDY", match, record_ids=visible, limit=10_000)
            if visible
            else []
        )
        found = []
        for row in rows:
            for rid in row["record_id"].split("\\"):
                if rid not in visible:
                    continue
                meta = node.app.query_record(rid)
                if meta is None or (patient_id is not None and meta.patient != patient_id):
                    continue
                if started and not study_started_matches(row.get("StudyDate", ""), started):
                    continue
                doc = await asyncio.to_thread(imaging_doc, meta, request)
                if doc is not None:
                    found.append(doc)
        return bundle(request, found, query)

    def study_started_matches(study_date: str, conditions: list[Any]) -> bool:
        from medledger.fhir.search import parse_date

        if len(study_date) != 8 or not study_date.isdigit():
            return False
        day = parse_date(f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}")
        return dates_match(conditions, day.lo_ms)

    # ---- Consent ---------------------------------------------------------------------------------

    def consent_doc(c: Any) -> dict[str, Any]:
        return resources.consent(
            c, ledger.block_time(node, c.height), ledger.record_types(node, c.record_ids)
        )

    def may_see_consent(actor: Identity, c: Any) -> None:
        if c.actor_kind == "identity" and c.actor == actor.id:
            return
        require_trail_view(node, actor, c.patient)

    @fhir.get("/Consent/{consent_id}")
    async def read_consent(consent_id: str, request: Request) -> Response:
        caller = await caller_of(request)
        c = ledger.consent_by_id(node, consent_id)
        may_see_consent(caller.identity, c)
        return fhir_json(consent_doc(c))

    @fhir.get("/Consent")
    async def search_consents(request: Request) -> Response:
        caller = await caller_of(request)
        query = search_query(request, "Consent")
        patient = query.one("patient")
        ids = query.any_of("_id")
        statuses = query.any_of("status")
        if statuses is not None and not set(statuses) <= {"active", "inactive"}:
            raise InvalidInput("status is active or inactive", code="BAD_SEARCH_PARAM")
        found_consents = []
        if patient is not None:
            patient_id = reference(patient, "Patient")
            require_trail_view(node, caller.identity, patient_id)
            if statuses == ["active"]:
                found_consents = consents.active_consents(node.app.committed_view(), patient_id)
            else:
                for cid in ledger.patient_consent_ids(node, patient_id):
                    found_consents.append(ledger.consent_by_id(node, cid))
            if ids is not None:
                found_consents = [c for c in found_consents if c.consent_id in ids]
        elif ids is not None:
            for cid in ids:
                try:
                    c = ledger.consent_by_id(node, cid)
                    may_see_consent(caller.identity, c)
                except (NotFound, Forbidden, InvalidInput):
                    continue
                found_consents.append(c)
        else:
            raise InvalidInput("search Consent by patient (or _id)", code="MISSING_SEARCH_PARAM")
        found = [
            consent_doc(c)
            for c in found_consents
            if statuses is None
            or ("active" if c.status == CONSENT_ACTIVE else "inactive") in statuses
        ]
        return bundle(request, found, query)

    @fhir.post("/Consent")
    async def create_consent(request: Request) -> Response:
        caller = await caller_of(request, SCOPE_CONSENT)
        delegation = token_of(caller, "creating a Consent")
        doc = await body_of(request, "Consent")
        fields = grant_fields(doc)
        view = node.app.committed_view()
        decision = access.may_act_for(
            caller.identity,
            fields["patient"],
            consents.is_proxy(view, fields["patient"], caller.identity.id),
        )
        if not decision.allowed:
            raise Forbidden(decision.reason, code="NOT_AUTHORIZED")
        receipt = await submit_as_gateway(
            node, GRANT_CONSENT, GrantConsentBody(**fields, delegation=delegation)
        )
        consent_id = str(receipt["data"]["consent_id"])
        log.info("fhir.consent_created", consent_id=consent_id, by=caller.identity.id)
        c = ledger.consent_by_id(node, consent_id)
        return fhir_json(
            consent_doc(c), 201, {"Location": f"{base_url(request)}/Consent/{consent_id}"}
        )

    @fhir.delete("/Consent/{consent_id}")
    async def delete_consent(consent_id: str, request: Request) -> Response:
        caller = await caller_of(request, SCOPE_CONSENT)
        delegation = token_of(caller, "deleting a Consent")
        c = ledger.consent_by_id(node, consent_id)
        view = node.app.committed_view()
        decision = access.may_act_for(
            caller.identity, c.patient, consents.is_proxy(view, c.patient, caller.identity.id)
        )
        if not decision.allowed:
            raise Forbidden(decision.reason, code="NOT_AUTHORIZED")
        if c.status == CONSENT_ACTIVE:
            await submit_as_gateway(
                node,
                REVOKE_CONSENT,
                RevokeConsentBody(consent_id=c.consent_id, delegation=delegation),
            )
            log.info("fhir.consent_revoked", consent_id=c.consent_id, by=caller.identity.id)
        return Response(status_code=204)

    # ---- AuditEvent ------------------------------------------------------------------------------

    def audit_doc(row: Any, types: dict[str, str]) -> dict[str, Any]:
        rid = row.event.record_id
        if rid and rid not in types:
            meta = node.app.query_record(rid)
            types[rid] = meta.type if meta is not None else ""
        return resources.audit_event(
            row.event,
            height=row.height,
            index=row.idx,
            ev=row.ev,
            time_ms=row.time_ms,
            tx_hash=row.tx_hash.hex(),
            chain_id=node.app.chain_id,
            record_type=types.get(rid) or None,
        )

    @fhir.get("/AuditEvent")
    async def search_audit(request: Request) -> Response:
        caller = await caller_of(request)
        query = search_query(request, "AuditEvent")
        patient = query.one("patient")
        if patient is None:
            raise InvalidInput("search AuditEvent by patient", code="MISSING_SEARCH_PARAM")
        subject = reference(patient, "Patient")
        require_trail_view(node, caller.identity, subject)
        dates = query.dates("date")
        rows = [r for r in ledger.audit_rows(node, subject) if dates_match(dates, r.time_ms)]
        rows.reverse()  # newest first
        types: dict[str, str] = {}
        found = [audit_doc(r, types) for r in rows[: query.count]]
        return fhir_json(
            resources.searchset(
                found, total=len(rows), self_url=self_url(request), base_url=base_url(request)
            )
        )

    @fhir.get("/AuditEvent/{event_id}")
    async def read_audit(event_id: str, request: Request) -> Response:
        caller = await caller_of(request)
        parts = event_id.removeprefix("h").split("-")
        if not event_id.startswith("h") or len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise NotFound("no such AuditEvent", code="AUDIT_EVENT_NOT_FOUND")
        height, idx, ev = (int(p) for p in parts)
        if not 1 <= height <= node.height:
            raise NotFound("no such AuditEvent", code="AUDIT_EVENT_NOT_FOUND")
        block = node.block(height)
        if idx >= len(block.results) or ev >= len(block.results[idx].events):
            raise NotFound("no such AuditEvent", code="AUDIT_EVENT_NOT_FOUND")
        event = block.results[idx].events[ev]
        if not event.subject or event.subject.startswith("@"):
            if caller.identity.role != Role.REGULATOR.value:
                raise Forbidden("only regulators see this event", code="ACCESS_DENIED")
        else:
            require_trail_view(node, caller.identity, event.subject)
        from medledger.ledger.tx import tx_hash

        row = AuditRow(height, idx, ev, block.header.time_ms, tx_hash(block.txs[idx]), event)
        return fhir_json(audit_doc(row, {}))

    # ---- Provenance ------------------------------------------------------------------------------

    def provenance_doc(meta: RecordMeta) -> dict[str, Any]:
        row = ledger.write_row(node, meta)
        if row is None:
            raise NotFound("the record's registration is not indexed", code="PROVENANCE_NOT_FOUND")
        return resources.provenance(
            meta,
            tx_hash=row.tx_hash.hex(),
            tx_index=row.idx,
            on_behalf_of=ledger.detail_value(row.event.detail, "on_behalf_of") or "",
            envelope=node.block(row.height).txs[row.idx],
        )

    @fhir.get("/Provenance/{record_id}")
    async def read_provenance(record_id: str, request: Request) -> Response:
        caller = await caller_of(request)
        meta = ledger.visible_record(node, caller.identity, record_id)
        return fhir_json(provenance_doc(meta))

    @fhir.get("/Provenance")
    async def search_provenance(request: Request) -> Response:
        caller = await caller_of(request)
        query = search_query(request, "Provenance")
        targets = query.any_of("target")
        if targets is None:
            raise InvalidInput("search Provenance by target", code="MISSING_SEARCH_PARAM")
        found = []
        for target in targets:
            parts = target.rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] not in ("DocumentReference", "ImagingStudy"):
                raise InvalidInput(
                    "target is DocumentReference/<id> or ImagingStudy/<id>",
                    code="BAD_SEARCH_PARAM",
                )
            try:
                meta = ledger.visible_record(node, caller.identity, parts[-1])
            except (NotFound, Forbidden):
                continue
            found.append(provenance_doc(meta))
        return bundle(request, found, query)

    # ---- Binary ----------------------------------------------------------------------------------

    @fhir.get("/Binary/{record_id}")
    async def read_binary(record_id: str, request: Request) -> Response:
        """A record's content, decrypted through a read the chain decides and records
        for the token's identity (``record.read`` signed by the gateway with the token)."""
        from medledger.client import Client

        caller = await caller_of(request)
        delegation = token_of(caller, "reading content")
        meta = ledger.record_meta(node, record_id)
        if meta.size > MAX_BINARY_BYTES:
            raise InvalidInput(
                "the record is too large for Binary: use medledger record get",
                code="BINARY_TOO_LARGE",
            )
        purpose = READ_PURPOSE.get(caller.identity.role, "treatment")

        def fetch() -> bytes:
            with tempfile.TemporaryDirectory(prefix="fhir-binary-") as tmp:
                out = Path(tmp) / "content"
                with Client(node.dicom.api_url, node.dicom.gateway_key) as client:
                    client.get_record(record_id, out, purpose=purpose, delegation=delegation)
                return out.read_bytes()

        data = await asyncio.to_thread(fetch)
        content_type = resources.CONTENT_TYPES.get(meta.type, "application/octet-stream")
        accept = request.headers.get("accept", "")
        if "fhir+json" in accept:
            import base64

            from medledger.fhir.models import emit

            return fhir_json(
                emit(
                    {
                        "resourceType": "Binary",
                        "id": record_id,
                        "contentType": content_type,
                        "data": base64.b64encode(data).decode("ascii"),
                    }
                )
            )
        return Response(content=data, media_type=content_type)

    # ---- everything else: 404 / 405 as OperationOutcome -----------------------------------------

    @fhir.api_route(
        "/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    )
    async def fallback(rest: str, request: Request) -> Response:
        resource = rest.split("/", 1)[0]
        if resource in RESOURCES or resource == "metadata":
            raise NotSupported(
                f"{request.method} is not supported on {resource} (see /fhir/metadata); "
                "records are created with medledger record put",
                code="METHOD_NOT_ALLOWED",
            )
        raise NotFound(f"unknown FHIR endpoint {resource[:64]!r}", code="NOT_FOUND")

    app.mount("/fhir", fhir)
