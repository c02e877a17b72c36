"""Storage routes of the node API.

``/storage/v1``: this institution's shard service, for other members' nodes
(callers must be active ``node`` identities). ``/api/v1/storage``: uploads and
downloads for clients, and the storage audit, repair, status and alert views
for admins and regulators.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.requests import ClientDisconnect

from medledger.app.model import STORAGE_SUBJECT, Role
from medledger.crypto.cid import is_cid
from medledger.errors import Forbidden, InvalidInput
from medledger.log import get_logger
from medledger.node.node import Node
from medledger.storage import framing
from medledger.storage.endpoints import proof_json
from medledger.storage.manifest import MAX_CHUNK_SIZE
from medledger.storage.shards import Item, column_frames

log = get_logger("medledger.api")

STORAGE_VIEW_ROLES = frozenset({Role.ADMIN.value, Role.REGULATOR.value, Role.NODE.value})
STORAGE_REPAIR_ROLES = frozenset({Role.ADMIN.value, Role.NODE.value})
FRAMES = "application/vnd.medledger.frames"


async def frame_items(stream: AsyncIterator[bytes], max_payload: int) -> AsyncIterator[Item]:
    """Parse a request body of frames into items; a cut-off stream is an error."""
    parser = framing.FrameParser(max_payload)
    try:
        async for piece in stream:
            for item in parser.feed(piece):
                yield item
    except ClientDisconnect:
        raise InvalidInput("the sender disconnected mid-upload", code="UPLOAD_ABORTED")
    if parser.pending:
        raise InvalidInput("the stream ended inside a frame", code="UPLOAD_TRUNCATED")


def _cid(value: str) -> str:
    if not is_cid(value):
        raise InvalidInput("not a content identifier", code="BAD_CID")
    return value


def _columns(value: str) -> list[int]:
    try:
        cols = sorted({int(c) for c in value.split(",") if c != ""})
    except ValueError:
        raise InvalidInput("columns must be a comma-separated list of integers", code="BAD_COLUMN")
    if not cols or any(not 0 <= c < 64 for c in cols):
        raise InvalidInput("columns out of range", code="BAD_COLUMN")
    return cols


def add_storage_routes(
    app: FastAPI,
    node: Node,
    authenticate: Callable[..., Awaitable[Any]],
    role_in: Callable[[Any, frozenset[str], str], None],
) -> None:
    service = node.storage.service

    async def peer_node(request: Request, *, streamed: bool = False) -> Any:
        caller = await authenticate(request, streamed=streamed)
        if caller.identity.role != Role.NODE.value:
            raise Forbidden("the shard service serves member nodes only", code="ACCESS_DENIED")
        return caller

    # ---- the shard service (node to node) ------------------------------------------------

    @app.post("/storage/v1/shards", status_code=201)
    async def put_shards(request: Request, columns: str) -> dict[str, Any]:
        await peer_node(request, streamed=True)
        cols = _columns(columns)
        manifest = await service.receive(frame_items(request.stream(), MAX_CHUNK_SIZE + 64), cols)
        return {"institution": service.name, "columns": cols, "stripes": manifest.stripes}

    @app.get("/storage/v1/shards/{cid}")
    async def get_shard(cid: str, request: Request) -> Response:
        await peer_node(request)
        return Response(await service.shard(_cid(cid)), media_type="application/octet-stream")

    @app.get("/storage/v1/manifests/{cid}")
    async def get_manifest(cid: str, request: Request) -> Response:
        await peer_node(request)
        data = await service.manifest_bytes(_cid(cid))
        return Response(data, media_type="application/octet-stream")

    @app.get("/storage/v1/manifests/{cid}/columns/{column}")
    async def get_column(cid: str, column: int, request: Request, start: int = 0) -> Response:
        await peer_node(request)
        manifest = await service.manifest(_cid(cid))
        if not 0 <= column < manifest.width:
            raise InvalidInput("no such shard column", code="BAD_COLUMN")
        # the reading coordinator checks every shard against the manifest itself
        items = service.column(manifest, column, start, verify=False)
        return StreamingResponse(column_frames(items), media_type=FRAMES)

    @app.get("/storage/v1/manifests/{cid}/proof")
    async def prove(cid: str, stripe: int, column: int, request: Request) -> dict[str, Any]:
        await peer_node(request)
        return proof_json(await service.prove(_cid(cid), stripe, column))

    @app.get("/storage/v1/manifests/{cid}/check")
    async def check(cid: str, column: int, request: Request) -> dict[str, Any]:
        await peer_node(request)
        bad = await service.check(_cid(cid), column)
        return {"bad": [{"stripe": b.stripe, "code": b.code} for b in bad]}

    @app.get("/storage/v1/ping")
    async def shard_ping(request: Request) -> dict[str, Any]:
        await peer_node(request)
        await service.ping()
        return {"institution": service.name}

    @app.get("/storage/v1/status")
    async def shard_status(request: Request) -> dict[str, Any]:
        await peer_node(request)
        return await service.status()

    # ---- storage operations for admins and regulators ----------------------------------------

    @app.get("/api/v1/storage/status")
    async def storage_status(request: Request) -> dict[str, Any]:
        caller = await authenticate(request)
        role_in(caller, STORAGE_VIEW_ROLES, "view storage status")
        return await node.storage.status()

    @app.post("/api/v1/storage/audit")
    async def storage_audit(
        request: Request, all: bool = False, repair: bool = False, height: int = 0
    ) -> dict[str, Any]:
        caller = await authenticate(request)
        role_in(
            caller, STORAGE_REPAIR_ROLES if repair else STORAGE_VIEW_ROLES, "run storage audits"
        )
        if height < 0 or height > node.height:
            raise InvalidInput("height is not a committed block", code="BAD_HEIGHT")
        return await node.storage.audit(height=height or None, everything=all, repair=repair)

    @app.post("/api/v1/storage/repair")
    async def storage_repair(request: Request, record: str = "") -> dict[str, Any]:
        caller = await authenticate(request)
        role_in(caller, STORAGE_REPAIR_ROLES, "repair storage")
        ids = [record] if record else None
        repairs = await node.storage.repair(record_ids=ids)
        return {"node": node.config.name, "repairs": repairs}

    @app.get("/api/v1/storage/alerts")
    async def storage_alerts(request: Request) -> dict[str, Any]:
        """Storage alerts and repairs recorded on chain, oldest first."""
        caller = await authenticate(request)
        role_in(caller, STORAGE_VIEW_ROLES, "view storage alerts")
        events = []
        for height, idx, ev_i in node.reader.audit_positions(STORAGE_SUBJECT):
            block = node.block(height)
            ev = block.results[idx].events[ev_i]
            fields = dict(p.split("=", 1) for p in ev.detail.split() if "=" in p)
            events.append(
                {
                    "kind": ev.action,
                    "height": height,
                    "time_ms": block.header.time_ms,
                    "actor": ev.actor,
                    "record_id": ev.record_id,
                    **fields,
                }
            )
        return {"events": events}
