"""Audit and regulator views of the node API.

``/api/v1/audit``: a subject's events (for the subject, their proxies, admins of the
subject's institution and regulators) and their proof bundle. ``/api/v1/regulator``:
alerts raised on chain (break-glass, denied access, access spikes, storage audit
failures, jailed validators, erasures) and the access statistics kept in state, for
regulators only.

Listings read ``audit_index`` rows, which carry the event, the block time and the
transaction hash, so they never decode blocks. The module-level ``*_doc`` functions
build the JSON answers from a :class:`LedgerStore`; the benchmark calls them too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from medledger.app import access, consents
from medledger.app.model import (
    ALERT_BREAK_GLASS,
    ALERT_DENIED,
    ALERT_ERASURE,
    ALERT_JAILED,
    ALERT_SPIKE,
    ALERT_STORAGE,
    STATS_PREFIX,
    Identity,
    Role,
    k_identity,
)
from medledger.crypto.keys import is_identity_id
from medledger.errors import Forbidden, InvalidInput, NotFound
from medledger.ledger.block import Event, result_leaf
from medledger.ledger.merkle import inclusion_proof, leaf_hash
from medledger.ledger.proofs import AuditProofBundle, AuditProofEntry, SignedHeader, encode_bundle
from medledger.ledger.store import AuditRow, LedgerStore
from medledger.ledger.tx import tx_hash
from medledger.node.node import Node

LIST_LIMIT = 10_000  # entries per listing; "truncated": true says more exist
ALERTS_DEFAULT_LIMIT = 100
STATS_LIMIT = 100_000  # counter rows per answer (one per action/institution/type/purpose/outcome)
ALERT_KINDS = frozenset(
    {ALERT_BREAK_GLASS, ALERT_DENIED, ALERT_SPIKE, ALERT_STORAGE, ALERT_JAILED, ALERT_ERASURE}
)
REGULATOR_ROLES = frozenset({Role.REGULATOR.value})
PROOF_MEDIA_TYPE = "application/vnd.medledger.proof"


def require_trail_view(node: Node, actor: Identity, subject: str) -> Identity:
    """``subject``'s identity, if ``actor`` may see its trail, consents and care (itself,
    its proxies, admins of its institution, regulators); a typed error otherwise."""
    if not is_identity_id(subject):
        raise InvalidInput("not a MedLedger identity ID", code="BAD_IDENTITY_ID")
    view = node.app.committed_view()
    ident = view.get(k_identity(subject), Identity)
    if ident is None:
        raise NotFound("identity is not enrolled", code="UNKNOWN_IDENTITY")
    decision = access.may_view_audit(actor, ident, consents.is_proxy(view, subject, actor.id))
    if not decision.allowed:
        raise Forbidden(decision.reason, code="ACCESS_DENIED")
    return ident


# ---- JSON answers (pure: a store in, a document out) -----------------------------------


def event_json(e: Event) -> dict[str, Any]:
    return {
        "action": e.action,
        "actor": e.actor,
        "subject": e.subject,
        "record_id": e.record_id or None,
        "outcome": e.outcome,
        "detail": e.detail,
    }


def check_window(since_height: int, limit: int, max_limit: int = LIST_LIMIT) -> None:
    if since_height < 0:
        raise InvalidInput("since_height must not be negative", code="BAD_HEIGHT")
    if not 1 <= limit <= max_limit:
        raise InvalidInput(f"limit must be between 1 and {max_limit}", code="BAD_LIMIT")


def subject_events_doc(
    store: LedgerStore, subject: str, since_height: int = 0, limit: int = LIST_LIMIT
) -> dict[str, Any]:
    """``subject``'s events from ``since_height`` on, oldest first."""
    check_window(since_height, limit)
    rows = store.audit_events(subject, limit=limit + 1, since_height=since_height)
    return {
        "subject": subject,
        "events": [
            {
                "height": r.height,
                "time_ms": r.time_ms,
                "tx_index": r.idx,
                "tx_hash": r.tx_hash.hex(),
                **event_json(r.event),
            }
            for r in rows[:limit]
        ],
        "truncated": len(rows) > limit,
    }


def check_alert_kind(kind: str | None) -> str | None:
    if not kind:
        return None
    if kind not in ALERT_KINDS:
        raise InvalidInput(
            f"unknown alert kind {kind!r}; known: {', '.join(sorted(ALERT_KINDS))}",
            code="BAD_ALERT_KIND",
        )
    return kind


def alert_json(r: AuditRow) -> dict[str, Any]:
    return {
        "kind": r.event.outcome,
        "actor": r.event.actor,
        "record_id": r.event.record_id or None,
        "height": r.height,
        "time_ms": r.time_ms,
        "tx_hash": r.tx_hash.hex(),
        "detail": r.event.detail,
    }


def alerts_doc(
    store: LedgerStore,
    kind: str | None = None,
    since_height: int = 0,
    limit: int = ALERTS_DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Regulator alerts from ``since_height`` on (only ``kind`` if given), newest first."""
    kind = check_alert_kind(kind)
    check_window(since_height, limit)
    rows = store.audit_alerts(kind=kind, limit=limit + 1, since_height=since_height)
    return {"alerts": [alert_json(r) for r in rows[:limit]], "truncated": len(rows) > limit}


def stats_doc(rows: list[tuple[bytes, bytes]], limit: int = STATS_LIMIT) -> dict[str, Any]:
    """Aggregate ``v1/stats/`` counters (key ``action/institution/type/purpose/outcome``
    → 8-byte count): per institution, record type, purpose and outcome, by action."""
    raw: list[dict[str, Any]] = []
    totals: dict[str, dict[str, int]] = {}
    by: dict[str, dict[str, dict[str, dict[str, int]]]] = {
        "by_institution": {},
        "by_record_type": {},
        "by_purpose": {},
    }
    for key, value in rows[:limit]:
        parts = key[len(STATS_PREFIX) :].decode("utf-8", "replace").split("/")
        if len(parts) != 5 or len(value) != 8:
            continue  # not a counter of this layout
        action, institution, record_type, purpose, outcome = parts
        n = int.from_bytes(value, "big")
        raw.append(
            {
                "action": action,
                "institution": institution,
                "record_type": record_type,
                "purpose": purpose,
                "outcome": outcome,
                "count": n,
            }
        )
        _add(totals, action, outcome, n)
        _add(by["by_institution"].setdefault(institution, {}), action, outcome, n)
        _add(by["by_record_type"].setdefault(record_type, {}), action, outcome, n)
        if purpose != "-":  # writes have no purpose
            _add(by["by_purpose"].setdefault(purpose, {}), action, outcome, n)
    return {"totals": totals, **by, "rows": raw, "truncated": len(rows) > limit}


def _add(table: dict[str, dict[str, int]], action: str, outcome: str, n: int) -> None:
    """``table[action][outcome] += n`` and ``table[action]["total"] += n``."""
    counts = table.setdefault(action, {"total": 0})
    counts["total"] += n
    counts[outcome] = counts.get(outcome, 0) + n


# ---- routes ----------------------------------------------------------------------------


def add_audit_routes(
    app: FastAPI,
    node: Node,
    authenticate: Callable[..., Awaitable[Any]],
    role_in: Callable[[Any, frozenset[str], str], None],
) -> None:
    async def audit_caller(request: Request, subject: str) -> Any:
        caller = await authenticate(request)
        require_trail_view(node, caller.identity, subject)
        return caller

    @app.get("/api/v1/audit")
    async def audit(
        request: Request, subject: str, since_height: int = 0, limit: int = LIST_LIMIT
    ) -> dict[str, Any]:
        """``subject``'s audit events, oldest first (from ``since_height``, at most
        ``limit``)."""
        await audit_caller(request, subject)
        return subject_events_doc(node.reader, subject, since_height, limit)

    @app.get("/api/v1/audit/proof")
    async def audit_proof(request: Request, subject: str) -> Response:
        """A proof bundle (binary) of ``subject``'s audit events (the first LIST_LIMIT)."""
        await audit_caller(request, subject)
        entries: list[AuditProofEntry] = []
        headers: dict[int, SignedHeader] = {}
        seen: set[tuple[int, int]] = set()
        leaves: dict[int, tuple[list[bytes], list[bytes]]] = {}
        for height, idx, _ev in node.reader.audit_positions(subject, LIST_LIMIT):
            if (height, idx) in seen:
                continue
            seen.add((height, idx))
            block = node.block(height)
            if height not in leaves:  # once per block, however many entries it holds
                leaves[height] = (
                    [leaf_hash(t) for t in block.txs],
                    [
                        leaf_hash(result_leaf(tx_hash(t), r))
                        for t, r in zip(block.txs, block.results, strict=True)
                    ],
                )
            tx_leaves, res_leaves = leaves[height]
            entries.append(
                AuditProofEntry(
                    height=height,
                    tx_index=idx,
                    tx=block.txs[idx],
                    tx_path=inclusion_proof(tx_leaves, idx),
                    result=block.results[idx],
                    result_path=inclusion_proof(res_leaves, idx),
                )
            )
            headers[height] = SignedHeader(
                header=block.header, commit=block.commit, validators=node.validators_at(height)
            )
        bundle = AuditProofBundle(
            chain_id=node.genesis.chain_id,
            subject=subject,
            headers=[headers[h] for h in sorted(headers)],
            entries=entries,
        )
        return Response(encode_bundle(bundle), media_type=PROOF_MEDIA_TYPE)

    # ---- the regulator's view ---------------------------------------------------------

    @app.get("/api/v1/regulator/alerts")
    async def regulator_alerts(
        request: Request,
        kind: str = "",
        since_height: int = 0,
        limit: int = ALERTS_DEFAULT_LIMIT,
    ) -> dict[str, Any]:
        """Alerts raised on chain, newest first; only ``kind`` if given."""
        caller = await authenticate(request)
        role_in(caller, REGULATOR_ROLES, "view regulator alerts")
        return alerts_doc(node.reader, kind or None, since_height, limit)

    @app.get("/api/v1/regulator/stats")
    async def regulator_stats(request: Request) -> dict[str, Any]:
        """Committed read and write counters, aggregated."""
        caller = await authenticate(request)
        role_in(caller, REGULATOR_ROLES, "view access statistics")
        rows = node.reader.scan_prefix(STATS_PREFIX, STATS_LIMIT + 1)
        return {"height": node.height, **stats_doc(rows)}
