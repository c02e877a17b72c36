"""Key custody routes of the node API (``/api/v1/custody``): threshold custody.

* ``GET custodians``: the institutions that may hold key shares (validators with
  voting power), their node keys (what a client seals each share to), whether this
  node reaches them now, and the chain's threshold percentage.
* ``POST deposits``: a client's key shares, one sealed to each custodian; this node
  keeps its own and forwards the signed request to the others
  (:mod:`medledger.node.custody_ops`).
* ``POST release``: ``threshold`` shares of a record's key, each sealed to the
  caller, after a committed, allowed, recent ``record.read`` that the policy still
  allows (each custodian checks this against its own ledger).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import FastAPI, Request

from medledger.api import signing
from medledger.api.params import parse_hash
from medledger.app.model import is_record_id
from medledger.errors import InvalidInput, MedLedgerError
from medledger.log import get_logger
from medledger.node import wire
from medledger.node.custody_ops import DEPOSIT_PATH, DEPOSITOR_ROLES
from medledger.node.node import Node

log = get_logger("medledger.api")


def add_custody_routes(
    app: FastAPI,
    node: Node,
    authenticate: Callable[..., Awaitable[Any]],
    role_in: Callable[[Any, frozenset[str], str], None],
) -> None:
    @app.get("/api/v1/custody/custodians")
    async def custodians(request: Request) -> dict[str, Any]:
        await authenticate(request)
        return {
            "threshold_num": node.params.custody_threshold_num,
            "threshold_den": node.params.custody_threshold_den,
            "custodians": node.custody.custodians(),
        }

    @app.post(DEPOSIT_PATH, status_code=201)
    async def deposit(request: Request) -> dict[str, Any]:
        """``{manifest_cid, threshold, shares: [{institution, sealed_share (hex)}]}``,
        shares in index order (the i-th holds x = i + 1, sealed to that institution's
        node key). Every named custodian must keep its share."""
        caller = await authenticate(request)
        role_in(caller, DEPOSITOR_ROLES, "deposit keys")
        if request.url.query:
            raise InvalidInput("a deposit takes no query parameters", code="BAD_DEPOSIT")
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            signed = wire.SignedRequest(
                public_key=caller.public_key.raw,
                time_ms=int(headers[signing.H_TIME]),
                signature=bytes.fromhex(headers[signing.H_SIG]),
                path=request.url.path,
                body=await request.body(),  # read (and hash-checked) by authenticate
            )
        except (KeyError, ValueError):
            raise InvalidInput("deposit signature headers are malformed", code="AUTH_MALFORMED")
        return await node.custody.deposit(signed, caller.identity.id)

    @app.post("/api/v1/custody/release")
    async def release(request: Request) -> dict[str, Any]:
        """``{record_id, access_tx}`` → ``{record_id, manifest_cid, threshold, shares:
        [{institution, sealed_share}]}``: exactly ``threshold`` shares, or an error."""
        caller = await authenticate(request)
        try:
            doc = msgspec.json.decode(await request.body())
            record_id = str(doc["record_id"])
            access_tx = parse_hash(str(doc["access_tx"]))
        except (msgspec.DecodeError, KeyError, TypeError):
            raise InvalidInput("release needs record_id and access_tx", code="BAD_REQUEST")
        if not is_record_id(record_id):
            raise InvalidInput("not a record ID", code="BAD_RECORD_ID")
        try:
            meta = node.check_gate(record_id, access_tx, caller.public_key.raw)
        except MedLedgerError:
            node.metrics.key_releases.labels(outcome="refused").inc()
            raise
        shares = await node.custody.release(meta, access_tx, caller.public_key)
        log.info(
            "custody.released",
            record_id=record_id,
            requester=caller.identity.id,
            custodians=[name for name, _ in shares],
        )
        return {
            "record_id": record_id,
            "manifest_cid": meta.content_hash,
            "threshold": meta.threshold,
            "shares": [{"institution": name, "sealed_share": s.hex()} for name, s in shares],
        }
