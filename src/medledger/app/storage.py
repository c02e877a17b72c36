"""Storage rules on the ledger: record layouts, audit alerts and repairs (pure).

The chain cannot see shards; it records where they are meant to be (each
column's institution), what they must hash to (the shard Merkle root), and
what audits found and repairs did, so the regulator and every member see the
same storage history.
"""

from __future__ import annotations

import msgspec

from medledger.app.membership import current_validators
from medledger.app.model import (
    ALERT_REASONS,
    ALERT_STORAGE,
    STORAGE_SUBJECT,
    Identity,
    Institution,
    RecordMeta,
    RegisterRecordBody,
    Role,
    StorageAlertBody,
    StorageRepairBody,
    alert_event,
    is_record_id,
    k_institution,
    k_record,
)
from medledger.app.state import StateView
from medledger.errors import MedLedgerError
from medledger.ledger.block import Event
from medledger.storage.erasure import MAX_K, MAX_M

MAX_ALERT_STRIPES = 256


class StorageRuleError(MedLedgerError):
    default_code = "STORAGE_TX_INVALID"


def _member(view: StateView, name: str) -> bool:
    return view.get(k_institution(name), Institution) is not None


def min_custody_threshold(n: int, fraction: tuple[int, int]) -> int:
    """Key shares needed of ``n`` custodians: at least ``num/den`` of them, rounded up
    (2/3: 1 of 1, 2 of 2, 2 of 3, 3 of 4, 4 of 5, 4 of 6, 5 of 7)."""
    num, den = fraction
    return max(1, -(-n * num // max(1, den)))


def check_custody(
    view: StateView, custodians: list[str], threshold: int, fraction: tuple[int, int]
) -> None:
    """Key custody: distinct validator institutions, each holding one Shamir share,
    and a threshold of at least ``fraction`` of them (a 2/3 majority by default)."""
    members = {v.name for v in current_validators(view) if v.power > 0}
    if not custodians or len(set(custodians)) != len(custodians):
        raise StorageRuleError("custodians must be distinct institutions", code="BAD_CUSTODY")
    for name in custodians:
        if name not in members:
            raise StorageRuleError(
                f"custodian {name!r} is not a validator institution", code="BAD_CUSTODY"
            )
    least = min_custody_threshold(len(custodians), fraction)
    if not least <= threshold <= len(custodians):
        raise StorageRuleError(
            f"custody threshold must be between {least} and {len(custodians)} "
            f"for {len(custodians)} custodians",
            code="BAD_CUSTODY",
        )


def check_layout(view: StateView, body: RegisterRecordBody, fraction: tuple[int, int]) -> None:
    """A new record's erasure layout: parameters in range, k+m distinct member
    institutions, a 32-byte shard root, and its key custody."""
    if not 1 <= body.k <= MAX_K or not 0 <= body.m <= MAX_M:
        raise StorageRuleError(
            f"erasure parameters must be 1 <= k <= {MAX_K}, 0 <= m <= {MAX_M}",
            code="BAD_ERASURE_PARAMS",
        )
    if len(body.placement) != body.k + body.m or len(set(body.placement)) != len(body.placement):
        raise StorageRuleError(
            "placement must name k+m distinct institutions", code="BAD_PLACEMENT"
        )
    for name in body.placement:
        if not _member(view, name):
            raise StorageRuleError(
                f"placement names unknown institution {name!r}", code="BAD_PLACEMENT"
            )
    check_custody(view, body.custodians, body.threshold, fraction)
    if len(body.shard_root) != 32:
        raise StorageRuleError("shard root must be 32 bytes", code="TX_MALFORMED")


def _node_record(view: StateView, sender: Identity, record_id: str, column: int) -> RecordMeta:
    if sender.role != Role.NODE:
        raise StorageRuleError("only member nodes report storage audits", code="NOT_AUTHORIZED")
    if not is_record_id(record_id):
        raise StorageRuleError("not a record ID", code="BAD_RECORD_ID")
    meta = view.get(k_record(record_id), RecordMeta)
    if meta is None:
        raise StorageRuleError("record not found", code="RECORD_NOT_FOUND")
    if not 0 <= column < meta.k + meta.m:
        raise StorageRuleError("no such shard column", code="BAD_COLUMN")
    return meta


def alert(view: StateView, sender: Identity, body: StorageAlertBody) -> list[Event]:
    """An audit failure: an event under the storage subject (the regulator's view)."""
    meta = _node_record(view, sender, body.record_id, body.column)
    if body.reason not in ALERT_REASONS:
        raise StorageRuleError(f"unknown alert reason {body.reason!r}", code="TX_MALFORMED")
    _require_holder(meta, body.column, body.institution)
    if len(body.stripes) > MAX_ALERT_STRIPES or body.stripes != sorted(set(body.stripes)):
        raise StorageRuleError("alert stripes must be sorted and unique", code="TX_MALFORMED")
    if any(not 0 <= s < meta.stripes for s in body.stripes):
        raise StorageRuleError("alert names a stripe the record lacks", code="TX_MALFORMED")
    detail = (
        f"institution={body.institution} column={body.column} reason={body.reason} "
        f"stripes={','.join(map(str, body.stripes))} seed_height={body.seed_height}"
    )
    return [
        _event("storage.alert", sender, meta, "failed", detail),
        alert_event(ALERT_STORAGE, sender.id, meta.record_id, detail),
    ]


def repair(view: StateView, sender: Identity, body: StorageRepairBody) -> list[Event]:
    """A repair: the column now lives at ``to_institution`` (the same one for an
    in-place repair of damaged shards)."""
    meta = _node_record(view, sender, body.record_id, body.column)
    if not 0 <= body.shards <= meta.stripes:
        raise StorageRuleError("repair shard count out of range", code="TX_MALFORMED")
    _require_holder(meta, body.column, body.from_institution)
    if body.to_institution != body.from_institution:
        if not _member(view, body.to_institution):
            raise StorageRuleError(
                "repair target is not a member institution", code="BAD_PLACEMENT"
            )
        if body.to_institution in meta.placement:
            raise StorageRuleError(
                "repair target already holds a column of this record", code="BAD_PLACEMENT"
            )
        placement = list(meta.placement)
        placement[body.column] = body.to_institution
        view.put(k_record(meta.record_id), _with_placement(meta, placement))
    detail = (
        f"column={body.column} from={body.from_institution} "
        f"to={body.to_institution} shards={body.shards}"
    )
    return [_event("storage.repair", sender, meta, "ok", detail)]


def _require_holder(meta: RecordMeta, column: int, institution: str) -> None:
    if institution != meta.placement[column]:
        raise StorageRuleError("the column is not held by that institution", code="STALE_PLACEMENT")


def _event(action: str, sender: Identity, meta: RecordMeta, outcome: str, detail: str) -> Event:
    """A storage event: indexed under ``@storage``, the regulator's view of storage."""
    return Event(
        action=action,
        actor=sender.id,
        subject=STORAGE_SUBJECT,
        record_id=meta.record_id,
        outcome=outcome,
        detail=detail,
    )


def _with_placement(meta: RecordMeta, placement: list[str]) -> RecordMeta:
    return msgspec.structs.replace(meta, placement=placement)
