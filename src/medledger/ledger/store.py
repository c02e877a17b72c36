"""Block store and state store in one SQLite database (WAL, fsync on commit).

A block, its results, its commit, its index rows and the state writes it causes
are written in one SQLite transaction, so after a crash the database holds
exactly the blocks that were acknowledged, with the state they produced.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medledger.codec import decode, encode
from medledger.errors import NodeError, NotFound
from medledger.ledger.block import Commit, Event, Header, TxResult

# 2: audit_index rows carry the event, block time and tx hash, and a kind (issue 6)
SCHEMA_VERSION = 2

ALERTS_SUBJECT = "@regulator"  # app.model.REGULATOR_SUBJECT: rows whose outcome is a kind

_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);"

# audit_index rows hold everything a listing shows (no block decoding). They are
# appended in chain order (rowid), so a block's rows go to the end of the table;
# audit_subject finds one subject's rows, oldest first, and audit_alerts, a partial
# index over the regulator's rows only, finds alerts by kind.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    header BLOB NOT NULL,
    txs BLOB NOT NULL,
    results BLOB NOT NULL,
    commit_ BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tx_index (
    hash BLOB PRIMARY KEY, height INTEGER NOT NULL, idx INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_index (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    height INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    ev INTEGER NOT NULL,
    kind TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    tx_hash BLOB NOT NULL,
    event BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS audit_subject ON audit_index (subject, height, idx, ev);
CREATE INDEX IF NOT EXISTS audit_alerts ON audit_index (kind, height, idx, ev)
    WHERE subject = '@regulator';
"""


@dataclass(frozen=True, slots=True)
class StoredBlock:
    header: Header
    txs: list[bytes]
    results: list[TxResult]
    commit: Commit


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One indexed audit event: where it is, when, in which transaction, and what."""

    height: int
    idx: int  # the transaction's index in its block
    ev: int  # the event's index in the transaction's result
    time_ms: int  # the block's time
    tx_hash: bytes
    event: Event


class LedgerStore:
    """SQLite-backed blocks, state and indexes. Not thread-safe: one writer."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_META)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is not None and int.from_bytes(row[0], "big") != SCHEMA_VERSION:
                found = int.from_bytes(row[0], "big")
                self._db.close()
                raise NodeError(
                    f"ledger database {path} has schema version {found}, this node needs "
                    f"{SCHEMA_VERSION}: re-create the node's data directory "
                    "(see docs/operations.md)",
                    code="STORE_SCHEMA",
                )
            self._db.executescript(_SCHEMA)
            if row is None:
                self._db.execute(
                    "INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION.to_bytes(4, "big"),)
                )
        except sqlite3.DatabaseError as exc:
            raise NodeError(f"ledger database {path} cannot be opened: {exc}", code="STORE_CORRUPT")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # ---- meta ----------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def height(self) -> int:
        row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    # ---- state ---------------------------------------------------------------------

    def get_state(self, key: bytes) -> bytes | None:
        row = self._db.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def iter_state(self) -> Iterator[tuple[bytes, bytes]]:
        for k, v in self._db.execute("SELECT key, value FROM state"):
            yield bytes(k), bytes(v)

    def scan_prefix(self, prefix: bytes, limit: int = 10_000) -> list[tuple[bytes, bytes]]:
        upper = _prefix_upper(prefix)
        rows = self._db.execute(
            "SELECT key, value FROM state WHERE key >= ? AND key < ? ORDER BY key LIMIT ?",
            (prefix, upper, limit),
        ).fetchall()
        return [(bytes(k), bytes(v)) for k, v in rows]

    def apply_genesis(self, writes: dict[bytes, bytes | None], genesis_hash: bytes) -> None:
        with self._tx():
            self._apply_writes(writes)
            self.set_meta("genesis_hash", genesis_hash)

    def _apply_writes(self, writes: dict[bytes, bytes | None]) -> None:
        upserts = [(k, v) for k, v in writes.items() if v is not None]
        deletes = [(k,) for k, v in writes.items() if v is None]
        if upserts:
            self._db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)", upserts)
        if deletes:
            self._db.executemany("DELETE FROM state WHERE key=?", deletes)

    # ---- blocks --------------------------------------------------------------------

    def save_block(
        self,
        header: Header,
        txs: list[bytes],
        tx_hashes: list[bytes],
        results: list[TxResult],
        commit: Commit,
        writes: dict[bytes, bytes | None],
        meta: dict[str, bytes] | None = None,
    ) -> None:
        """Persist a block, its state writes and consensus ``meta`` atomically and durably."""
        h = header.height
        t = header.time_ms
        audit_rows = [
            (
                ev.subject,
                h,
                i,
                j,
                ev.outcome if ev.subject == ALERTS_SUBJECT else "",
                t,
                tx_hashes[i],
                encode(ev),
            )
            for i, r in enumerate(results)
            for j, ev in enumerate(r.events)
            if ev.subject
        ]
        with self._tx():
            self._db.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?)",
                (h, header.hash(), encode(header), encode(txs), encode(results), encode(commit)),
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO tx_index VALUES (?, ?, ?)",
                [(th, h, i) for i, th in enumerate(tx_hashes)],
            )
            if audit_rows:
                self._db.executemany(
                    "INSERT INTO audit_index (subject, height, idx, ev, kind, time_ms, tx_hash, event) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    audit_rows,
                )
            self._apply_writes(writes)
            for key, value in (meta or {}).items():
                self.set_meta(key, value)

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    def get_block(self, height: int) -> StoredBlock:
        row = self._db.execute(
            "SELECT header, txs, results, commit_ FROM blocks WHERE height=?", (height,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no block at height {height}", code="BLOCK_NOT_FOUND")
        return StoredBlock(
            header=decode(row[0], Header),
            txs=decode(row[1], list[bytes]),
            results=decode(row[2], list[TxResult]),
            commit=decode(row[3], Commit),
        )

    def get_header(self, height: int) -> Header:
        row = self._db.execute("SELECT header FROM blocks WHERE height=?", (height,)).fetchone()
        if row is None:
            raise NotFound(f"no block at height {height}", code="BLOCK_NOT_FOUND")
        return decode(row[0], Header)

    def find_tx(self, tx_hash: bytes) -> tuple[int, int] | None:
        row = self._db.execute(
            "SELECT height, idx FROM tx_index WHERE hash=?", (tx_hash,)
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    # ---- audit index -----------------------------------------------------------------

    def audit_positions(
        self, subject: str, limit: int = 10_000, since_height: int = 0
    ) -> list[tuple[int, int, int]]:
        """(height, tx index, event index) of ``subject``'s events, oldest first."""
        rows = self._db.execute(
            "SELECT height, idx, ev FROM audit_index WHERE subject=? AND height>=? "
            "ORDER BY height, idx, ev LIMIT ?",
            (subject, since_height, limit),
        ).fetchall()
        return [(int(a), int(b), int(c)) for a, b, c in rows]

    def audit_events(
        self, subject: str, *, limit: int = 10_000, since_height: int = 0
    ) -> list[AuditRow]:
        """``subject``'s events from ``since_height`` on, oldest first, at most ``limit``."""
        rows = self._db.execute(
            "SELECT height, idx, ev, time_ms, tx_hash, event FROM audit_index "
            "WHERE subject=? AND height>=? ORDER BY height, idx, ev LIMIT ?",
            (subject, since_height, limit),
        ).fetchall()
        return [_audit_row(r) for r in rows]

    def audit_alerts(
        self, *, kind: str | None = None, limit: int = 100, since_height: int = 0
    ) -> list[AuditRow]:
        """Regulator alerts (subject ``@regulator``) from ``since_height`` on, newest
        first, at most ``limit``; only those of ``kind`` if given."""
        # the subject is a literal so that SQLite may use the partial index
        if kind is None:
            sql = (
                "SELECT height, idx, ev, time_ms, tx_hash, event FROM audit_index "
                "WHERE subject='@regulator' AND height>=? "
                "ORDER BY height DESC, idx DESC, ev DESC LIMIT ?"
            )
            params: tuple[object, ...] = (since_height, limit)
        else:
            sql = (
                "SELECT height, idx, ev, time_ms, tx_hash, event FROM audit_index "
                "INDEXED BY audit_alerts "
                "WHERE subject='@regulator' AND kind=? AND height>=? "
                "ORDER BY height DESC, idx DESC, ev DESC LIMIT ?"
            )
            params = (kind, since_height, limit)
        return [_audit_row(r) for r in self._db.execute(sql, params).fetchall()]


class _Transaction:
    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._db.execute("COMMIT")
            else:
                self._db.execute("ROLLBACK")
        finally:
            self._lock.release()


def _audit_row(row: tuple[int, int, int, int, bytes, bytes]) -> AuditRow:
    height, idx, ev, time_ms, tx_hash, event = row
    return AuditRow(
        height=int(height),
        idx=int(idx),
        ev=int(ev),
        time_ms=int(time_ms),
        tx_hash=bytes(tx_hash),
        event=decode(event, Event),
    )


def _prefix_upper(prefix: bytes) -> bytes:
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b"\xff" * 64
    b[-1] += 1
    return bytes(b)
