"""Bearer tokens at the API edge, and transactions the gateway sends for them.

A bearer token (``Authorization: Bearer mlt1...``) is a delegation signed by an
identity to this node's gateway (:mod:`medledger.app.delegation`). The node checks it
on every request: signature, chain, that it names this node's gateway, expiry against
the node's clock, the scope the route needs, and that its identity is still enrolled
and active (a suspension ends every token at once). Tokens are accepted only by the
DICOMweb (``/dicom-web``) and FHIR (``/fhir``) routes; the MedLedger API proper needs
signed requests.

What needs the ledger (a read, a consent, an enrolment) is then a transaction signed
by the gateway key with the token inside (:func:`submit_as_gateway`); the chain checks
the delegation again and acts as the token's identity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medledger.app import delegation
from medledger.app.model import ACTIVE, Identity
from medledger.crypto.keys import PublicKey
from medledger.errors import AuthError, from_wire
from medledger.ledger.tx import make_tx

if TYPE_CHECKING:
    from medledger.node.node import Node

BEARER = "bearer "
TX_WAIT_S = 30.0


def bearer_token(authorization: str | None) -> bytes | None:
    """The signed delegation in an ``Authorization: Bearer`` header (None: no bearer)."""
    if not authorization or not authorization.lower().startswith(BEARER):
        return None
    return delegation.token_bytes(authorization[len(BEARER) :].strip())


def check_bearer(node: Node, raw: bytes, scope: str, now_ms: int) -> tuple[Identity, PublicKey]:
    """The active identity a token speaks for, or a typed refusal."""
    d = delegation.verify(
        raw,
        chain_id=node.app.chain_id,
        delegate=node.dicom.gateway_id,
        scope=scope,
        now_ms=now_ms,
    )
    identity = node.app.query_identity(d.grantor)
    if identity is None:
        raise AuthError("the token's identity is not enrolled", code="UNKNOWN_IDENTITY")
    if identity.status != ACTIVE:
        raise AuthError("the token's identity is suspended", code="IDENTITY_SUSPENDED")
    return identity, PublicKey(d.grantor_key)


async def submit_as_gateway(node: Node, kind: str, body: Any) -> dict[str, Any]:
    """Sign ``body`` with this node's gateway key, submit it, wait for its commit and
    return the receipt (JSON); a committed failure raises its code."""
    from medledger.api.app import receipt_json  # the receipt's JSON lives with the API

    key = node.dicom.gateway_key
    raw = make_tx(
        key, chain_id=node.app.chain_id, nonce=node.next_nonce(key.id), kind=kind, body=body
    )
    stx = node.submit(raw)
    receipt = await node.wait_for(stx.hash, TX_WAIT_S)
    doc = receipt_json(receipt)
    if receipt.result.code != "OK":
        code = receipt.result.code
        raise from_wire(403 if code == "ACCESS_DENIED" else 400, code, receipt.result.message)
    return doc
