"""Reads, erasure and what they raise to the regulator (pure rules).

A ``record.read`` is the access event: the policy decides it as it executes,
so every node agrees, and custodians release key shares only for one that
executed ``allowed``. Every read, allowed or denied, is an audit event under
the patient; break-glass reads, denials, access spikes and erasures are also
alert events under ``@regulator``; per-institution counters feed the
regulator's statistics.

Access-spike rule: an identity's reads (allowed or denied) are counted per
window of ``access_spike_window_ms`` of block time; the read that takes the
count above ``access_spike_reads`` raises one ``access_spike`` alert for that
window.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from medledger.app import access, consents, patients
from medledger.app.model import (
    ALERT_BREAK_GLASS,
    ALERT_DENIED,
    ALERT_ERASURE,
    ALERT_SPIKE,
    PURPOSES,
    AccessRate,
    EraseApproveBody,
    EraseRequest,
    EraseRequestBody,
    Identity,
    ReadRecordBody,
    RecordMeta,
    alert_event,
    is_record_id,
    k_access_rate,
    k_erase_request,
    k_record,
    k_stats,
)
from medledger.app.state import StateView
from medledger.errors import MedLedgerError
from medledger.ledger.block import Event

MAX_REASON_LEN = 512


class ReadRuleError(MedLedgerError):
    default_code = "TX_MALFORMED"


@dataclass(frozen=True, slots=True)
class SpikeRule:
    reads: int
    window_ms: int


@dataclass(frozen=True, slots=True)
class ReadOutcome:
    decision: access.Decision
    events: list[Event]
    data: dict[str, str]


def count(view: StateView, key: bytes) -> None:
    raw = view.get_raw(key)
    n = 0 if raw is None else int.from_bytes(raw, "big")
    view.put(key, (n + 1).to_bytes(8, "big"))


def _live_record(view: StateView, record_id: str) -> RecordMeta:
    if not is_record_id(record_id):
        raise ReadRuleError("not a record ID", code="BAD_RECORD_ID")
    record = view.get(k_record(record_id), RecordMeta)
    if record is None:
        raise ReadRuleError("record not found", code="RECORD_NOT_FOUND")
    return record


def check_read_body(body: ReadRecordBody) -> None:
    if body.purpose not in PURPOSES:
        raise ReadRuleError(f"unknown purpose {body.purpose!r}", code="BAD_PURPOSE")
    if len(body.reason) > MAX_REASON_LEN:
        raise ReadRuleError("reason is too long", code="TX_MALFORMED")
    if body.break_glass and not body.reason.strip():
        raise ReadRuleError("a break-glass read must state its reason", code="REASON_REQUIRED")


def evaluate(
    view: StateView, sender: Identity, body: ReadRecordBody, now_ms: int
) -> tuple[RecordMeta, access.Decision]:
    """The policy's decision on a read, against ``view`` (no writes)."""
    check_read_body(body)
    record = _live_record(view, body.record_id)
    facts = consents.read_facts(view, sender, record)
    decision = access.decide_read(
        sender, record, body.purpose, facts, now_ms, break_glass=body.break_glass
    )
    return record, decision


def read(
    view: StateView, sender: Identity, body: ReadRecordBody, now_ms: int, spike: SpikeRule
) -> ReadOutcome:
    record, decision = evaluate(view, sender, body, now_ms)
    outcome = "allowed" if decision.allowed else "denied"
    detail = f"purpose={body.purpose}; rule={decision.rule}; {decision.reason}"
    if decision.break_glass:
        detail += f"; break_glass reason={body.reason}"
    events = [
        Event(
            action="break_glass" if decision.break_glass else "read",
            actor=sender.id,
            subject=record.patient,
            record_id=record.record_id,
            outcome=outcome,
            detail=detail,
        )
    ]
    if decision.break_glass:
        events.append(
            alert_event(ALERT_BREAK_GLASS, sender.id, record.record_id, f"reason={body.reason}")
        )
    elif not decision.allowed:
        events.append(
            alert_event(
                ALERT_DENIED,
                sender.id,
                record.record_id,
                f"rule={decision.rule}; {decision.reason}",
            )
        )
    window = now_ms // spike.window_ms if spike.window_ms > 0 else 0
    rate = view.get(k_access_rate(sender.id), AccessRate)
    reads = rate.reads + 1 if rate is not None and rate.window == window else 1
    view.put(k_access_rate(sender.id), AccessRate(window=window, reads=reads))
    if reads == spike.reads + 1:
        events.append(
            alert_event(
                ALERT_SPIKE,
                sender.id,
                record.record_id,
                f"more than {spike.reads} reads within {spike.window_ms // 1000} s",
            )
        )
    count(view, k_stats("read", sender.institution, record.type, body.purpose, outcome))
    data = {
        "record_id": record.record_id,
        "outcome": outcome,
        "rule": decision.rule,
        "break_glass": "1" if decision.break_glass else "0",
    }
    return ReadOutcome(decision=decision, events=events, data=data)


# ---- erasure ----------------------------------------------------------------------------


def request_erasure(
    view: StateView, sender: Identity, body: EraseRequestBody, height: int
) -> tuple[list[Event], dict[str, str]]:
    record = _live_record(view, body.record_id)
    if record.erased_height:
        raise ReadRuleError("the record is already erased", code="RECORD_ERASED")
    decision = access.may_act_for(
        sender, record.patient, consents.is_proxy(view, record.patient, sender.id)
    )
    if not decision.allowed:
        raise ReadRuleError(decision.reason, code="NOT_AUTHORIZED")
    if not body.reason.strip() or len(body.reason) > MAX_REASON_LEN:
        raise ReadRuleError(
            "an erasure request states a reason (up to 512 chars)", code="REASON_REQUIRED"
        )
    if view.get_raw(k_erase_request(record.record_id)) is not None:
        raise ReadRuleError("an erasure of this record is already pending", code="ERASURE_PENDING")
    _no_live_parts(view, record)
    view.put(
        k_erase_request(record.record_id),
        EraseRequest(
            record_id=record.record_id,
            patient=record.patient,
            requested_by=sender.id,
            reason=body.reason,
            height=height,
        ),
    )
    ev = Event(
        action="erase.request",
        actor=sender.id,
        subject=record.patient,
        record_id=record.record_id,
        outcome="pending",
        detail=f"reason={body.reason}",
    )
    return [ev], {"record_id": record.record_id, "status": "pending"}


def approve_erasure(
    view: StateView, sender: Identity, body: EraseApproveBody, height: int
) -> tuple[list[Event], dict[str, str]]:
    """Tombstone the record: custodians delete their key shares when they see this
    committed (crypto-shredding), storage services may drop its shards."""
    record = _live_record(view, body.record_id)
    decision = access.may_approve_erasure(sender, record)
    if not decision.allowed:
        raise ReadRuleError(decision.reason, code="NOT_AUTHORIZED")
    request = view.get(k_erase_request(record.record_id), EraseRequest)
    if request is None:  # only told to those who may approve
        raise ReadRuleError(
            "no erasure request is pending for this record", code="NO_ERASURE_REQUEST"
        )
    _no_live_parts(view, record)  # a part registered since the request
    view.delete(k_erase_request(record.record_id))
    view.put(k_record(record.record_id), tombstone(record, height))
    if record.part_of:
        patients.count_part(view, record.part_of, -1)
    detail = f"requested_by={request.requested_by} approved_by={sender.id} rule={decision.rule}"
    events = [
        Event(
            action="erase",
            actor=sender.id,
            subject=record.patient,
            record_id=record.record_id,
            outcome="ok",
            detail=detail,
        ),
        alert_event(ALERT_ERASURE, sender.id, record.record_id, detail),
    ]
    data = {
        "record_id": record.record_id,
        "status": "erased",
        "manifest_cid": record.content_hash,
        "creator": record.key_depositor,  # whose key shares the custodians delete
    }
    return events, data


def _no_live_parts(view: StateView, record: RecordMeta) -> None:
    """A study's first record is erased after its parts (records whose ``part_of``
    names it), so that none of the study stays behind unnoticed."""
    parts = patients.live_parts(view, record.record_id)
    if parts:
        raise ReadRuleError(
            f"the study has {parts} part(s) still stored (records with part_of="
            f"{record.record_id}): erase them first",
            code="PARTS_NOT_ERASED",
        )


def tombstone(record: RecordMeta, height: int) -> RecordMeta:
    """What stays of an erased record: who, what type, when; no content reference."""
    return msgspec.structs.replace(
        record,
        content_hash="",
        shard_root=b"",
        placement=[],
        custodians=[],
        erased_height=height,
    )
