"""The release rule, shared by every custodian: pure and deterministic.

A key share for record R is released to requester Q only if the access
transaction named in the request is committed, was sent by Q, is a
``record.read`` of R, executed with outcome ``allowed``, and is recent (its
block time within the chain's grant TTL of the latest block) (``check_release``);
and if the access policy, evaluated again against the custodian's committed
state now, still allows that read (``check_decision``): a consent revoked, a
care relationship ended or the record erased since the access event wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from medledger.app.access import Decision
from medledger.app.model import READ_RECORD, ReadRecordBody
from medledger.codec import decode
from medledger.errors import Forbidden
from medledger.ledger.block import TxResult
from medledger.ledger.tx import Tx


@dataclass(frozen=True, slots=True)
class AccessProof:
    """What the node's ledger says about an access transaction."""

    tx: Tx
    result: TxResult
    block_time_ms: int
    latest_time_ms: int


def check_release(proof: AccessProof, *, record_id: str, requester: str, ttl_ms: int) -> None:
    if proof.tx.kind != READ_RECORD or proof.tx.sender != requester:
        raise Forbidden(
            "the access event is not this requester's read", code="ACCESS_EVENT_MISMATCH"
        )
    body = decode(proof.tx.body, ReadRecordBody)
    if body.record_id != record_id:
        raise Forbidden("the access event is for another record", code="ACCESS_EVENT_MISMATCH")
    if not proof.result.ok or proof.result.data.get("outcome") != "allowed":
        raise Forbidden("the committed access event denied this read", code="ACCESS_DENIED")
    if proof.latest_time_ms - proof.block_time_ms > ttl_ms:
        raise Forbidden("the access event has expired; request access again", code="ACCESS_EXPIRED")


def check_decision(decision: Decision) -> None:
    """Refuse a release that the policy, evaluated on committed state now, denies."""
    if not decision.allowed:
        raise Forbidden(
            f"the access policy now denies this read (rule {decision.rule or 'unknown'}): "
            f"{decision.reason}",
            code="ACCESS_DENIED",
        )
