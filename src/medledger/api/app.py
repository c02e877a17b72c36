"""The node's HTTP API: ``/api/v1``, ``/health``, ``/metrics``.

Errors are mapped here, once: a :class:`MedLedgerError` becomes its HTTP status
and ``{"error": {"code", "message"}}``; anything unexpected becomes a 500
``INTERNAL`` without the exception text (which is logged instead).
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from medledger import __version__
from medledger.api import signing, tokens
from medledger.api.audit_routes import add_audit_routes, event_json
from medledger.api.consent_routes import add_consent_routes
from medledger.api.custody_routes import add_custody_routes
from medledger.api.dicom_routes import add_dicom_routes
from medledger.api.dicomweb_routes import add_dicomweb_routes
from medledger.api.fhir_routes import add_fhir_routes
from medledger.api.params import parse_hash
from medledger.api.storage_routes import add_storage_routes, frame_items
from medledger.app import access, consents
from medledger.app.delegation import SCOPE_READ
from medledger.app.model import (
    ACTIVE,
    EvidenceRecord,
    GovProposal,
    Identity,
    RecordMeta,
    Role,
    is_record_id,
    k_record,
    p_evidence,
    p_patient_records,
)
from medledger.codec import decode
from medledger.crypto.keys import PublicKey, is_identity_id
from medledger.errors import (
    AuthError,
    Forbidden,
    InvalidInput,
    MedLedgerError,
    NotFound,
)
from medledger.ledger.block import Header, TxResult, Validator
from medledger.ledger.proofs import SignedHeader
from medledger.ledger.tx import decode_envelope
from medledger.log import get_logger
from medledger.node.node import Node, Receipt, now_ms
from medledger.storage import framing
from medledger.storage.manifest import MAX_CHUNK_SIZE

log = get_logger("medledger.api")

MAX_BATCH_BYTES = 32 * 1024 * 1024
MAX_BATCH_TXS = 20_000
MAX_JSON_BYTES = 64 * 1024
MAX_WAIT_S = 120.0
LIST_LIMIT = 10_000  # entries per listing; "truncated": true says more exist
WRITER_ROLES = frozenset({Role.CLINICIAN.value, Role.SERVICE.value, Role.PATIENT.value})


@dataclass(frozen=True, slots=True)
class Caller:
    public_key: PublicKey
    identity: Identity
    # the signed delegation of a bearer-token caller (DICOMweb, FHIR): the node's
    # gateway acts with it for ``identity``; empty for a signed request
    token: bytes = b""


def error_response(exc: MedLedgerError) -> JSONResponse:
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status)


def create_app(node: Node) -> FastAPI:
    app = FastAPI(
        title="MedLedger node API",
        version=__version__,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )

    @app.exception_handler(MedLedgerError)
    async def _ml_error(request: Request, exc: MedLedgerError) -> JSONResponse:
        log.info("api.error", path=request.url.path, code=exc.code, status=exc.http_status)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(InvalidInput("request parameters are invalid", code="BAD_REQUEST"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("api.internal_error", path=request.url.path)
        return JSONResponse(
            {"error": {"code": "INTERNAL", "message": "internal error; see the node log"}},
            status_code=500,
        )

    # ---- auth ---------------------------------------------------------------------------

    async def read_limited(request: Request, limit: int, code: str) -> bytes:
        """Read a request body, refusing it as soon as it passes ``limit`` bytes."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise InvalidInput(f"request body is larger than {limit} bytes", code=code)
        parts: list[bytes] = []
        size = 0
        async for piece in request.stream():
            size += len(piece)
            if size > limit:
                raise InvalidInput(f"request body is larger than {limit} bytes", code=code)
            parts.append(piece)
        return b"".join(parts)

    async def read_small_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_JSON_BYTES):
            raise InvalidInput("request body too large", code="BODY_TOO_LARGE")
        body = await request.body()
        if len(body) > MAX_JSON_BYTES:
            raise InvalidInput("request body too large", code="BODY_TOO_LARGE")
        return body

    async def authenticate(request: Request, *, streamed: bool = False) -> Caller:
        # the path as sent, percent-escapes kept ("sign the bytes you send"; an AE title
        # in a DICOM route may hold escapes), falling back to the decoded one
        raw_path = request.scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else request.url.path
        path_qs = path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        pk = signing.verify_request(
            headers, request.method, path_qs, now_ms(), node.config.request_max_skew_ms
        )
        payload = headers.get(signing.H_BODY, "")
        if payload == signing.UNSIGNED:
            if not streamed:
                raise AuthError("this request must sign its body", code="AUTH_BODY_UNSIGNED")
        else:
            body = await read_small_body(request)
            if signing.body_hash(body) != payload:
                raise AuthError("body does not match its signed hash", code="AUTH_BODY_MISMATCH")
        identity = node.app.query_identity(pk.id)
        if identity is None:
            raise AuthError("caller is not an enrolled identity", code="UNKNOWN_IDENTITY")
        if identity.status != ACTIVE:
            raise AuthError("caller identity is suspended", code="IDENTITY_SUSPENDED")
        return Caller(public_key=pk, identity=identity)

    async def caller_dep(request: Request) -> Caller:
        return await authenticate(request)

    async def authenticate_any(request: Request, *, scope: str = SCOPE_READ) -> Caller:
        """A bearer token (``Authorization: Bearer``; it must carry ``scope``) or a
        signed request: for the DICOMweb and FHIR routes, whose clients cannot sign."""
        raw = tokens.bearer_token(request.headers.get("authorization"))
        if raw is None:
            return await authenticate(request, streamed=True)
        identity, pk = tokens.check_bearer(node, raw, scope, now_ms())
        return Caller(public_key=pk, identity=identity, token=raw)

    def role_in(caller: Caller, roles: frozenset[str], what: str) -> None:
        if caller.identity.role not in roles:
            raise Forbidden(f"role {caller.identity.role} may not {what}", code="ACCESS_DENIED")

    add_storage_routes(app, node, authenticate, role_in)
    add_custody_routes(app, node, authenticate, role_in)
    add_consent_routes(app, node, authenticate)
    add_audit_routes(app, node, authenticate, role_in)
    add_dicom_routes(app, node, authenticate)
    add_dicomweb_routes(app, node, authenticate_any)
    add_fhir_routes(app, node, authenticate_any)

    # ---- health, metrics, status ----------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "height": node.height, "name": node.config.name}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(node.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/status")
    async def status() -> dict[str, Any]:
        h = node.last_header
        return {
            "name": node.config.name,
            "chain_id": node.genesis.chain_id,
            "node_id": node.node_key.id,
            "version": __version__,
            "height": node.height,
            "app_hash": node.app_hash.hex(),
            "last_block_time_ms": h.time_ms if h else node.genesis.genesis_time_ms,
            "validator": node.is_validator,
            "peers": node.peers.connected() if node.peers is not None else [],
            "mempool_txs": len(node.mempool),
            "custodian_public_key": node.custodian.public_key.hex(),
            "dicom": node.dicom.listener_json(),
            "pid": os.getpid(),
        }

    # ---- transactions -----------------------------------------------------------------------

    @app.post("/api/v1/tx")
    async def submit_tx(
        request: Request, wait: bool = True, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Submit one signed transaction envelope (raw bytes); by default wait for its commit."""
        body = await read_limited(request, node.params.max_tx_bytes, "TX_TOO_LARGE")
        stx = node.submit(body)
        if not wait:
            return {"tx_hash": stx.hash.hex(), "status": "accepted"}
        receipt = await node.wait_for(stx.hash, min(timeout, MAX_WAIT_S))
        return receipt_json(receipt)

    @app.post("/api/v1/txs")
    async def submit_batch(
        request: Request, wait: bool = True, timeout: float = 60.0, compact: bool = False
    ) -> Response:
        """Submit a msgpack array of envelopes; per-transaction outcomes in order.

        ``compact``: committed outcomes carry only tx_hash, status, height, index and
        code (no events or data), for high-volume submitters."""
        body = await read_limited(request, MAX_BATCH_BYTES, "BODY_TOO_LARGE")
        raws = decode(body, list[bytes])
        if len(raws) > MAX_BATCH_TXS:
            raise InvalidInput("too many transactions in one batch", code="BATCH_TOO_LARGE")
        out: list[dict[str, Any]] = []
        accepted: list[tuple[int, bytes]] = []
        for res in await node.submit_many(raws):
            if isinstance(res, MedLedgerError):
                out.append({"status": "rejected", "error": res.to_dict()})
                continue
            accepted.append((len(out), res.hash))
            out.append({"tx_hash": res.hash.hex(), "status": "accepted"})
        if wait and accepted:
            receipts = await node.wait_many([h for _, h in accepted], min(timeout, MAX_WAIT_S))
            for (i, _), r in zip(accepted, receipts, strict=True):
                if isinstance(r, Receipt):
                    out[i] = compact_json(r) if compact else receipt_json(r)
                elif isinstance(r, MedLedgerError):
                    out[i] = {"status": "failed", "error": r.to_dict()}
        return fast_json({"results": out})

    @app.get("/api/v1/txs/{tx_hash}")
    async def get_tx(tx_hash: str, caller: Caller = Depends(caller_dep)) -> dict[str, Any]:
        """A transaction's status and result: for its sender, admins and regulators."""
        h = parse_hash(tx_hash)
        receipt = node.receipt(h)
        if receipt is not None:
            sender_id = decode_envelope(node.block(receipt.height).txs[receipt.index]).tx.sender
            sender = node.app.query_identity(sender_id)
            me = caller.identity
            if not (
                sender_id == me.id
                or me.role == Role.REGULATOR.value
                or (
                    me.role == Role.ADMIN.value
                    and sender is not None
                    and sender.institution == me.institution
                )
            ):
                raise Forbidden(
                    "only the sender, its institution's admins and regulators see a result",
                    code="ACCESS_DENIED",
                )
            return receipt_json(receipt)
        if h in node.mempool:
            return {"tx_hash": tx_hash, "status": "pending"}
        raise NotFound("transaction is unknown to this node", code="TX_NOT_FOUND")

    # ---- identities and accounts -----------------------------------------------------------

    @app.get("/api/v1/identities/{identity_id}")
    async def get_identity(
        identity_id: str, caller: Caller = Depends(caller_dep)
    ) -> dict[str, Any]:
        ident = node.app.query_identity(check_id(identity_id))
        if ident is None:
            raise NotFound("identity is not enrolled", code="UNKNOWN_IDENTITY")
        return identity_json(ident)

    @app.get("/api/v1/accounts/{identity_id}/nonce")
    async def get_nonce(identity_id: str, caller: Caller = Depends(caller_dep)) -> dict[str, Any]:
        return {"id": identity_id, "next_nonce": node.next_nonce(check_id(identity_id))}

    # ---- records ---------------------------------------------------------------------------------

    @app.get("/api/v1/records")
    async def list_records(patient: str, caller: Caller = Depends(caller_dep)) -> dict[str, Any]:
        check_id(patient)
        facts = consents.patient_facts(node.app.committed_view(), caller.identity, patient)
        now = node.last_header.time_ms if node.last_header else 0
        decision = access.may_list_records(caller.identity, patient, facts.is_proxy)
        if not decision.allowed and not any(
            c.permit and access.names_actor(c, caller.identity) for c in facts.consents
        ):
            raise Forbidden(decision.reason, code="ACCESS_DENIED")
        records = []
        rows = node.reader.scan_prefix(p_patient_records(patient), LIST_LIMIT + 1)
        truncated = len(rows) > LIST_LIMIT
        for key, _ in rows[:LIST_LIMIT]:
            record_id = key.rsplit(b"/", 1)[1].decode()
            meta = node.app.query_record(record_id)
            if meta is not None and access.may_view_metadata(caller.identity, meta, facts, now):
                records.append(record_json(meta))
        records.sort(key=lambda r: (r["height"], r["record_id"]))
        return {"patient": patient, "records": records, "truncated": truncated}

    @app.get("/api/v1/records/{record_id}")
    async def get_record(record_id: str, caller: Caller = Depends(caller_dep)) -> dict[str, Any]:
        meta = visible_record(record_id, caller)
        return record_json(meta)

    @app.get("/api/v1/records/{record_id}/proof")
    async def record_proof(record_id: str, caller: Caller = Depends(caller_dep)) -> dict[str, Any]:
        """The record's on-chain entry with a state proof against the latest signed header."""
        visible_record(record_id, caller)
        async with node.block_lock:
            header = node.last_header
            if header is None:
                raise NotFound("no block committed yet", code="BLOCK_NOT_FOUND")
            key = k_record(record_id)
            node.app.abandon()  # the tree may hold a proposal under vote: prove committed state
            proof = node.app.tree.prove(key)
            value = node.state.get(key)
            stored = node.block(header.height)
        return {
            "height": header.height,
            "key": key.hex(),
            "value": value.hex() if value is not None else None,
            "proof": msgspec.msgpack.encode(proof).hex(),
            "signed_header": msgspec.msgpack.encode(
                SignedHeader(
                    header=header,
                    commit=stored.commit,
                    validators=node.validators_at(header.height),
                )
            ).hex(),
        }

    def visible_record(record_id: str, caller: Caller) -> RecordMeta:
        if not is_record_id(record_id):
            raise InvalidInput("not a record ID", code="BAD_RECORD_ID")
        meta = node.app.query_record(record_id)
        if meta is None:
            raise NotFound("record not found", code="RECORD_NOT_FOUND")
        facts = consents.read_facts(node.app.committed_view(), caller.identity, meta)
        now = node.last_header.time_ms if node.last_header else 0
        if not access.may_view_metadata(caller.identity, meta, facts, now):
            raise Forbidden("record metadata is not visible to this caller", code="ACCESS_DENIED")
        return meta

    # ---- storage ---------------------------------------------------------------------------------

    @app.post("/api/v1/storage/objects", status_code=201)
    async def upload(
        request: Request, k: int | None = None, m: int | None = None
    ) -> dict[str, Any]:
        """Stream encrypted chunks (frames C...) then the content manifest (frame M);
        the node erasure-codes them over k+m institutions' shard services."""
        caller = await authenticate(request, streamed=True)
        role_in(caller, WRITER_ROLES, "store content")
        items = frame_items(request.stream(), MAX_CHUNK_SIZE + 64)
        manifest, data = await node.storage.upload(items, k, m, node.metrics.bytes_stored.inc)
        manifest_cid = cid_of(data)
        log.info(
            "storage.stored",
            manifest=manifest_cid,
            chunks=len(manifest.chunks),
            bytes=manifest.size,
            placement=manifest.placement,
        )
        return {
            "manifest_cid": manifest_cid,
            "size": manifest.size,
            "chunk_count": len(manifest.chunks),
            "k": manifest.k,
            "m": manifest.m,
            "placement": manifest.placement,
            "shard_root": manifest.shard_root.hex(),
            "stored_bytes": manifest.stored_bytes(),
            "manifest": base64.b64encode(data).decode("ascii"),
        }

    @app.get("/api/v1/storage/records/{record_id}")
    async def download(
        record_id: str, access_tx: str, caller: Caller = Depends(caller_dep)
    ) -> StreamingResponse:
        """Stream a record's manifest and encrypted chunks after a committed, allowed read."""
        meta = gate(record_id, access_tx, caller)
        manifest_bytes, chunks = await node.storage.read(meta)

        async def frames() -> AsyncIterator[bytes]:
            yield framing.frame(framing.MANIFEST, manifest_bytes)
            try:
                async for chunk in chunks:
                    node.metrics.bytes_served.inc(len(chunk))
                    yield framing.frame_header(framing.CHUNK, len(chunk))
                    yield chunk
            except MedLedgerError as exc:
                log.warning("storage.read_failed", record_id=record_id, code=exc.code)
                yield framing.frame(framing.ERROR, msgspec.json.encode(exc.to_dict()))

        # No Content-Length: a stripe found unreadable mid-stream ends the stream
        # early with an E frame, which a declared length would turn into a cut connection.
        return StreamingResponse(frames(), media_type="application/vnd.medledger.frames")

    def gate(record_id: str, access_tx: str, caller: Caller) -> RecordMeta:
        if not is_record_id(record_id):
            raise InvalidInput("not a record ID", code="BAD_RECORD_ID")
        return node.check_gate(record_id, parse_hash(access_tx), caller.public_key.raw)

    # ---- consortium membership -------------------------------------------------------------

    @app.get("/api/v1/validators")
    async def validators(caller: Caller = Depends(caller_dep)) -> dict[str, Any]:
        """The validator set in force, the one the ledger will use next, and jailed ones."""
        current = node.validators_at(node.height + 1)
        evidence = [
            decode(v, EvidenceRecord) for _, v in node.reader.scan_prefix(p_evidence(), LIST_LIMIT)
        ]
        return {
            "height": node.height,
            "validators": [validator_json(v) for v in current],
            "next": [validator_json(v) for v in node.app.query_validators()],
            "jailed": [
                {
                    "validator": e.validator,
                    "institution": e.institution,
                    "height": e.height,
                    "round": e.round,
                    "vote_type": e.type,
                    "committed_height": e.committed_height,
                }
                for e in evidence
            ],
        }

    @app.get("/api/v1/governance/proposals")
    async def proposals(caller: Caller = Depends(caller_dep)) -> dict[str, Any]:
        rows = node.reader.scan_prefix(b"v1/gov/", LIST_LIMIT)
        out = []
        for _, v in rows:
            p = decode(v, GovProposal)
            out.append(
                {
                    "id": p.id,
                    "action": p.action,
                    "institution": p.institution,
                    "power": p.power,
                    "proposer": p.proposer,
                    "approvals": p.approvals,
                    "rejections": p.rejections,
                    "status": p.status,
                    "height": p.height,
                    "decided_height": p.decided_height,
                }
            )
        return {"proposals": out}

    # ---- blocks ------------------------------------------------------------------------------------

    @app.get("/api/v1/blocks/{height}")
    async def get_block(height: int, caller: Caller = Depends(caller_dep)) -> dict[str, Any]:
        block = node.block(height)
        return {
            "header": header_json(block.header),
            "hash": block.header.hash().hex(),
            "tx_hashes": [decode_envelope(t).hash.hex() for t in block.txs],
            "commit_signatures": len(block.commit.signatures),
        }

    return app


# ---- JSON shapes -------------------------------------------------------------------------------------


def fast_json(doc: Any) -> Response:
    """JSON through msgspec, skipping FastAPI's per-field encoder (large batches)."""
    return Response(content=msgspec.json.encode(doc), media_type="application/json")


def validator_json(v: Validator) -> dict[str, Any]:
    return {"name": v.name, "id": v.id, "public_key": v.public_key.hex(), "power": v.power}


def check_id(value: str) -> str:
    if not is_identity_id(value):
        raise InvalidInput("not a MedLedger identity ID", code="BAD_IDENTITY_ID")
    return value


def cid_of(data: bytes) -> str:
    from medledger.crypto.cid import cid_for

    return cid_for(data)


def compact_json(r: Receipt) -> dict[str, Any]:
    return {
        "tx_hash": r.tx_hash.hex(),
        "status": "committed",
        "height": r.height,
        "index": r.index,
        "code": r.result.code,
    }


def receipt_json(r: Receipt) -> dict[str, Any]:
    return result_json(r.tx_hash, r.height, r.index, r.result)


def result_json(tx_hash: bytes, height: int, index: int, result: TxResult) -> dict[str, Any]:
    return {
        "tx_hash": tx_hash.hex(),
        "status": "committed",
        "height": height,
        "index": index,
        "code": result.code,
        "message": result.message,
        "data": dict(result.data),
        "events": [event_json(e) for e in result.events],
    }


def identity_json(i: Identity) -> dict[str, Any]:
    return {
        "id": i.id,
        "role": i.role,
        "institution": i.institution,
        "status": i.status,
        "enrolled_height": i.enrolled_height,
        "enrolled_by": i.enrolled_by,
    }


def record_json(m: RecordMeta) -> dict[str, Any]:
    return {
        "record_id": m.record_id,
        "patient": m.patient,
        "type": m.type,
        "content_hash": m.content_hash,
        "size": m.size,
        "chunk_count": m.chunk_count,
        "k": m.k,
        "m": m.m,
        "placement": m.placement,
        "shard_root": m.shard_root.hex(),
        "custodians": m.custodians,
        "threshold": m.threshold,
        "deidentified": m.deidentified,
        "erased_height": m.erased_height,
        "part_of": m.part_of,
        "depositor": m.depositor,
        "institution": m.institution,
        "creator": m.creator,
        "created_ms": m.created_ms,
        "height": m.height,
    }


def header_json(h: Header) -> dict[str, Any]:
    return {
        "chain_id": h.chain_id,
        "height": h.height,
        "time_ms": h.time_ms,
        "prev_hash": h.prev_hash.hex(),
        "tx_root": h.tx_root.hex(),
        "results_root": h.results_root.hex(),
        "app_hash": h.app_hash.hex(),
        "validators_hash": h.validators_hash.hex(),
        "proposer": h.proposer,
        "tx_count": h.tx_count,
    }
