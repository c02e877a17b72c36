"""ledger.store audit index: a subject's events and the regulator's alerts from stored
rows (no block decoding), and the JSON answers the API builds from them."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from medledger.api.audit_routes import alerts_doc, stats_doc, subject_events_doc
from medledger.app.model import (
    ALERT_BREAK_GLASS,
    ALERT_DENIED,
    ALERT_SPIKE,
    REGULATOR_SUBJECT,
    k_stats,
)
from medledger.errors import InvalidInput, NodeError
from medledger.ledger.block import Commit, Event, Header, TxResult
from medledger.ledger.store import ALERTS_SUBJECT, SCHEMA_VERSION, LedgerStore

PAT_A = "patient-a"
PAT_B = "patient-b"
T0 = 1_700_000_000_000


def h32(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def read_ev(patient: str, actor: str, outcome: str = "allowed") -> Event:
    return Event("read", actor, patient, "r" + "0" * 32, outcome, f"by {actor}")


def alert_ev(kind: str, actor: str) -> Event:
    return Event("alert", actor, REGULATOR_SUBJECT, "r" + "1" * 32, kind, f"{kind} by {actor}")


def save(store: LedgerStore, height: int, txs: list[list[Event]]) -> list[bytes]:
    """A synthetic block at ``height`` whose transaction i emits ``txs[i]``."""
    raws = [b"tx-%d-%d" % (height, i) for i in range(len(txs))]
    hashes = [h32(height, i) for i in range(len(txs))]
    header = Header(
        chain_id="test",
        height=height,
        time_ms=T0 + height * 1000,
        prev_hash=h32("prev", height),
        tx_root=h32("tx", height),
        results_root=h32("res", height),
        app_hash=h32("app", height),
        validators_hash=h32("val"),
        proposer="val0",
        tx_count=len(txs),
    )
    results = [TxResult(code="OK", message="", events=evs, data={}) for evs in txs]
    commit = Commit(height=height, round=0, block_hash=header.hash(), signatures=[])
    store.save_block(header, raws, hashes, results, commit, {})
    return hashes


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "ledger.sqlite"


@pytest.fixture
def store(db_path: Path) -> LedgerStore:
    s = LedgerStore(db_path)
    save(s, 1, [[read_ev(PAT_A, "doc1"), read_ev(PAT_B, "doc1")], [read_ev(PAT_A, "doc2")]])
    save(
        s,
        2,
        [
            [read_ev(PAT_A, "doc3", "denied"), alert_ev(ALERT_DENIED, "doc3")],
            [Event("enroll", "admin", "", "", "ok", "no subject: not indexed")],
        ],
    )
    save(s, 3, [[read_ev(PAT_B, "doc4")], [read_ev(PAT_A, "doc5"), alert_ev(ALERT_SPIKE, "doc5")]])
    save(s, 4, [[Event("break_glass", "doc6", PAT_A, "", "allowed", "x")]])
    save(s, 4 + 1, [[alert_ev(ALERT_BREAK_GLASS, "doc6")], [alert_ev(ALERT_DENIED, "doc7")]])
    return s


def test_alert_subject_matches_the_application() -> None:
    assert ALERTS_SUBJECT == REGULATOR_SUBJECT


def test_subject_events_oldest_first_with_what_a_listing_needs(store: LedgerStore) -> None:
    rows = store.audit_events(PAT_A)
    assert [(r.height, r.idx, r.ev) for r in rows] == [
        (1, 0, 0),
        (1, 1, 0),
        (2, 0, 0),
        (3, 1, 0),
        (4, 0, 0),
    ]
    assert [r.event.actor for r in rows] == ["doc1", "doc2", "doc3", "doc5", "doc6"]
    first = rows[0]
    assert first.time_ms == T0 + 1000
    assert first.tx_hash == h32(1, 0)
    assert first.event == read_ev(PAT_A, "doc1")
    assert rows[2].event.outcome == "denied"
    assert [r.event.actor for r in store.audit_events(PAT_B)] == ["doc1", "doc4"]
    assert store.audit_events("nobody") == []


def test_subject_events_limit_and_since_height(store: LedgerStore) -> None:
    assert [r.event.actor for r in store.audit_events(PAT_A, limit=2)] == ["doc1", "doc2"]
    assert [r.event.actor for r in store.audit_events(PAT_A, since_height=2)] == [
        "doc3",
        "doc5",
        "doc6",
    ]
    assert [r.event.actor for r in store.audit_events(PAT_A, since_height=3, limit=1)] == ["doc5"]
    assert store.audit_events(PAT_A, since_height=99) == []
    # positions (for proof bundles) agree with the rows
    assert store.audit_positions(PAT_A, since_height=3) == [(3, 1, 0), (4, 0, 0)]
    assert store.audit_positions(PAT_A, 2) == [(1, 0, 0), (1, 1, 0)]


def test_alerts_newest_first_by_kind_and_height(store: LedgerStore) -> None:
    rows = store.audit_alerts()
    assert [(r.height, r.idx, r.event.outcome) for r in rows] == [
        (5, 1, ALERT_DENIED),
        (5, 0, ALERT_BREAK_GLASS),
        (3, 1, ALERT_SPIKE),
        (2, 0, ALERT_DENIED),
    ]
    assert all(r.event.subject == REGULATOR_SUBJECT for r in rows)
    denied = store.audit_alerts(kind=ALERT_DENIED)
    assert [(r.height, r.event.actor) for r in denied] == [(5, "doc7"), (2, "doc3")]
    assert [r.height for r in store.audit_alerts(kind=ALERT_DENIED, since_height=3)] == [5]
    assert [r.height for r in store.audit_alerts(limit=2)] == [5, 5]
    assert [r.event.actor for r in store.audit_alerts(kind=ALERT_SPIKE, limit=1)] == ["doc5"]
    assert store.audit_alerts(kind="validator_jailed") == []
    # a patient's event with outcome "denied" is not an alert
    assert store.audit_alerts(kind="denied") == []


def test_reopen_keeps_rows_and_schema(store: LedgerStore, db_path: Path) -> None:
    before = store.audit_events(PAT_A)
    alerts = store.audit_alerts()
    store.close()
    again = LedgerStore(db_path)
    assert again.audit_events(PAT_A) == before
    assert again.audit_alerts() == alerts
    save(again, 6, [[read_ev(PAT_A, "doc8"), alert_ev(ALERT_DENIED, "doc8")]])
    assert again.audit_events(PAT_A)[-1].event.actor == "doc8"
    assert again.audit_alerts(kind=ALERT_DENIED)[0].height == 6
    assert again.get_meta("schema") == SCHEMA_VERSION.to_bytes(4, "big")
    again.close()


def test_old_schema_is_refused(db_path: Path) -> None:
    """A pre-issue-6 (schema 1) database: STORE_SCHEMA, and the file is left as it was."""
    db_path.parent.mkdir(parents=True)
    db = sqlite3.connect(db_path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
        CREATE TABLE audit_index (
            subject TEXT NOT NULL, height INTEGER NOT NULL, idx INTEGER NOT NULL,
            ev INTEGER NOT NULL, PRIMARY KEY (subject, height, idx, ev)
        ) WITHOUT ROWID;
        INSERT INTO meta VALUES ('schema', X'00000001');
        """
    )
    db.commit()
    db.close()
    with pytest.raises(NodeError) as info:
        LedgerStore(db_path)
    assert info.value.code == "STORE_SCHEMA"
    assert "re-create" in info.value.message
    db = sqlite3.connect(db_path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert "blocks" not in tables and "audit_alerts" not in tables


def test_queries_use_the_indexes(store: LedgerStore, db_path: Path) -> None:
    """No full scans or sorts: the listings stay fast however many events exist."""
    db = sqlite3.connect(db_path)
    plans = []
    for sql, params in [
        (
            "SELECT event FROM audit_index WHERE subject=? AND height>=? "
            "ORDER BY height, idx, ev LIMIT 10",
            (PAT_A, 0),
        ),
        (
            "SELECT event FROM audit_index WHERE subject='@regulator' AND height>=? "
            "ORDER BY height DESC, idx DESC, ev DESC LIMIT 10",
            (0,),
        ),
        (
            "SELECT event FROM audit_index INDEXED BY audit_alerts "
            "WHERE subject='@regulator' AND kind=? AND height>=? "
            "ORDER BY height DESC, idx DESC, ev DESC LIMIT 10",
            (ALERT_DENIED, 0),
        ),
    ]:
        plan = " ".join(str(r[3]) for r in db.execute("EXPLAIN QUERY PLAN " + sql, params))
        plans.append(plan)
    db.close()
    assert "audit_subject" in plans[0] and "audit_subject" in plans[1]
    assert "audit_alerts" in plans[2]
    assert not any("TEMP B-TREE" in p or p.startswith("SCAN") for p in plans)


# ---- the API's answers ---------------------------------------------------------------------


def test_subject_events_doc(store: LedgerStore) -> None:
    doc = subject_events_doc(store, PAT_A, limit=2)
    assert doc["truncated"] is True
    assert doc["events"][0] == {
        "height": 1,
        "time_ms": T0 + 1000,
        "tx_index": 0,
        "tx_hash": h32(1, 0).hex(),
        "action": "read",
        "actor": "doc1",
        "subject": PAT_A,
        "record_id": "r" + "0" * 32,
        "outcome": "allowed",
        "detail": "by doc1",
    }
    full = subject_events_doc(store, PAT_A, since_height=4)
    assert full["truncated"] is False
    assert [e["action"] for e in full["events"]] == ["break_glass"]
    assert full["events"][0]["record_id"] is None
    for bad, code in [({"limit": 0}, "BAD_LIMIT"), ({"since_height": -1}, "BAD_HEIGHT")]:
        with pytest.raises(InvalidInput) as info:
            subject_events_doc(store, PAT_A, **bad)  # type: ignore[arg-type]
        assert info.value.code == code


def test_alerts_doc(store: LedgerStore) -> None:
    doc = alerts_doc(store, ALERT_DENIED)
    assert doc == {
        "alerts": [
            {
                "kind": ALERT_DENIED,
                "actor": "doc7",
                "record_id": "r" + "1" * 32,
                "height": 5,
                "time_ms": T0 + 5000,
                "tx_hash": h32(5, 1).hex(),
                "detail": f"{ALERT_DENIED} by doc7",
            },
            {
                "kind": ALERT_DENIED,
                "actor": "doc3",
                "record_id": "r" + "1" * 32,
                "height": 2,
                "time_ms": T0 + 2000,
                "tx_hash": h32(2, 0).hex(),
                "detail": f"{ALERT_DENIED} by doc3",
            },
        ],
        "truncated": False,
    }
    assert alerts_doc(store, limit=3)["truncated"] is True
    assert len(alerts_doc(store, None)["alerts"]) == 4
    with pytest.raises(InvalidInput) as info:
        alerts_doc(store, "denied")
    assert info.value.code == "BAD_ALERT_KIND"


def test_stats_doc() -> None:
    def row(
        action: str, inst: str, type_: str, purpose: str, outcome: str, n: int
    ) -> tuple[bytes, bytes]:
        return (k_stats(action, inst, type_, purpose, outcome), n.to_bytes(8, "big"))

    rows = sorted(
        [
            row("read", "hospital-a", "note", "treatment", "allowed", 5),
            row("read", "hospital-a", "note", "treatment", "denied", 2),
            row("read", "hospital-b", "imaging", "research", "denied", 1),
            row("write", "hospital-a", "note", "-", "ok", 7),
            row("write", "hospital-b", "imaging", "-", "ok", 3),
        ]
    )
    doc = stats_doc(rows)
    assert doc["truncated"] is False
    assert doc["totals"] == {
        "read": {"total": 8, "allowed": 5, "denied": 3},
        "write": {"total": 10, "ok": 10},
    }
    assert doc["by_institution"]["hospital-a"] == {
        "read": {"total": 7, "allowed": 5, "denied": 2},
        "write": {"total": 7, "ok": 7},
    }
    assert doc["by_record_type"]["imaging"]["read"] == {"total": 1, "denied": 1}
    assert doc["by_purpose"] == {
        "treatment": {"read": {"total": 7, "allowed": 5, "denied": 2}},
        "research": {"read": {"total": 1, "denied": 1}},
    }
    assert len(doc["rows"]) == 5
    assert {"action": "write", "institution": "hospital-b", "record_type": "imaging",
            "purpose": "-", "outcome": "ok", "count": 3} in doc["rows"]  # fmt: skip
    assert stats_doc(rows, limit=2)["truncated"] is True
