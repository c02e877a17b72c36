"""SIGKILL in the middle of writing: the node restarts on its last committed block, intact.

Three client threads drive the node while it is killed: enrollments in batches
that wait for their commit (acknowledged receipts), record reads in batches
that do not wait, and record uploads (chunk files, key deposits, registrations).
After each kill ``medledger up`` restarts the node, and every acknowledged
transaction and record must be there, with the state matching the last header.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from medledger.app.model import ENROLL, READ_RECORD, EnrollBody, ReadRecordBody
from medledger.client import Client
from medledger.crypto.keys import PrivateKey
from medledger.errors import MedLedgerError
from medledger.ledger.tx import make_tx

from .harness import (
    CHUNK_SIZE,
    Consortium,
    Identity,
    expect_error,
    is_node_process,
    pid_alive,
    sigkill,
    signed_get,
)

KILL_AFTER_S = (0.3, 0.9, 1.6)  # a different point of the write path each round
BATCH = 20


class Load:
    """Client traffic in background threads; records what the node acknowledged."""

    def __init__(
        self,
        c: Consortium,
        admin: PrivateKey,
        clinician: Identity,
        reader: Identity,
        patient: Identity,
        record_id: str,
    ) -> None:
        self.c = c
        self.admin = admin
        self.clinician = clinician
        self.reader = reader  # one key per thread: each thread keeps its own nonces
        self.patient = patient
        self.record_id = record_id
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}  # tx hash -> height, from wait=true receipts
        self.accepted: set[str] = set()  # tx hashes admitted with wait=false
        self.records: dict[str, bytes] = {}  # record ID -> content, acknowledged puts
        self.max_height = 0
        self.killed = threading.Event()
        self.unexpected: list[str] = []
        self.threads: list[threading.Thread] = []
        self.done: dict[str, int] = {}  # iterations completed, by thread

    def wait_all_going(self, timeout: float = 60.0) -> None:
        """Until every thread has had a request answered (so all are mid-stream)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.done) == len(self.threads) and not self.unexpected:
                    return
                if self.unexpected:
                    break
            time.sleep(0.01)
        raise AssertionError(f"the load did not get going: {self.done} {self.unexpected}")

    def start(self) -> None:
        work = (
            (self._enroll, self.admin),
            (self._read, self.reader.key),
            (self._put, self.clinician.key),
        )
        for fn, key in work:
            t = threading.Thread(target=self._guard, args=(fn, key), daemon=True, name=fn.__name__)
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        """After the kill (``killed`` is set just before it): wait for the threads to end."""
        self.killed.set()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive(), f"client thread {t.name} hangs after the kill"
        self.threads.clear()

    def _guard(self, fn: Callable[[Client], None], key: PrivateKey) -> None:
        try:
            with Client(self.c.api, key, timeout=30) as cl:
                while not self.killed.is_set():
                    fn(cl)
                    with self.lock:
                        self.done[fn.__name__] = self.done.get(fn.__name__, 0) + 1
        except MedLedgerError as exc:  # expected once the node is killed
            self._unexpected(f"{fn.__name__}: {exc!r}")
        except BaseException as exc:  # the client let a raw error through: a crash, always
            self._unexpected(f"{fn.__name__}: {exc!r}", even_after_kill=True)

    def _unexpected(self, what: str, *, even_after_kill: bool = False) -> None:
        if self.killed.is_set() and not even_after_kill:
            return
        with self.lock:
            self.unexpected.append(what)

    def _saw(self, height: int) -> None:
        with self.lock:
            self.max_height = max(self.max_height, height)

    def _enroll(self, cl: Client) -> None:
        nonce = cl.next_nonce()
        raws = [
            make_tx(
                self.admin,
                chain_id=cl.chain_id,
                nonce=nonce + i,
                kind=ENROLL,
                body=EnrollBody(id=PrivateKey.generate().id, role="patient"),
            )
            for i in range(BATCH)
        ]
        for r in cl.submit_batch(raws, wait=True):
            if r["status"] != "committed" or r["code"] != "OK":
                self._unexpected(f"enroll: {r}")
                continue
            with self.lock:
                self.acked[r["tx_hash"]] = r["height"]
            self._saw(r["height"])

    def _read(self, cl: Client) -> None:
        nonce = cl.next_nonce()
        raws = [
            make_tx(
                self.reader.key,
                chain_id=cl.chain_id,
                nonce=nonce + i,
                kind=READ_RECORD,
                body=ReadRecordBody(record_id=self.record_id, purpose="treatment"),
            )
            for i in range(BATCH)
        ]
        for r in cl.submit_batch(raws, wait=False):
            if r["status"] != "accepted":
                self._unexpected(f"read: {r}")
                continue
            with self.lock:
                self.accepted.add(r["tx_hash"])

    def _put(self, cl: Client) -> None:
        content = os.urandom(CHUNK_SIZE + 1000)
        src = self.c.work / f"load-{os.urandom(6).hex()}.bin"
        src.write_bytes(content)
        r = cl.put_record(src, patient=self.patient.id, record_type="note")
        with self.lock:
            self.records[r.record_id] = content
            self.acked[r.tx_hash] = r.height
        self._saw(r.height)


def blocks(c: Consortium, key: PrivateKey, heights: range) -> dict[int, dict[str, Any]]:
    out = {}
    with c.http() as http:
        for h in heights:
            resp = signed_get(http, key, f"/api/v1/blocks/{h}")
            assert resp.status_code == 200, resp.text
            out[h] = resp.json()
    return out


@pytest.fixture(scope="module")
def setup(consortium: Consortium) -> tuple[PrivateKey, Identity, Identity, Identity, str, bytes]:
    c = consortium
    clinician = c.enroll("clinician", "clinician")
    reader = c.enroll("reader", "clinician")
    patient = c.enroll("patient", "patient")
    content = os.urandom(3 * CHUNK_SIZE + 17)
    src = c.work / "before.bin"
    src.write_bytes(content)
    with c.client(clinician) as cl:
        put = cl.put_record(src, patient=patient.id, record_type="imaging")
    return c.admin_key, clinician, reader, patient, put.record_id, content


def test_sigkill_while_writing(consortium: Consortium, setup: tuple[Any, ...]) -> None:
    c = consortium
    admin, clinician, reader, patient, first_record, first_content = setup
    all_acked: dict[str, int] = {}
    all_records: dict[str, bytes] = {first_record: first_content}
    chain: dict[int, dict[str, Any]] = {}  # blocks seen so far, by height
    for rnd, delay in enumerate(KILL_AFTER_S):
        pid = c.node_pid()
        load = Load(c, admin, clinician, reader, patient, first_record)
        load.start()
        # let every thread get going, then wait a little more, then kill
        load.wait_all_going()
        time.sleep(delay)
        load.killed.set()  # from now on, errors are expected; requests in flight go on
        sigkill(pid)
        load.stop()
        assert not load.unexpected, f"round {rnd}: {load.unexpected}"
        assert load.acked, f"round {rnd}: nothing was acknowledged before the kill"
        all_records |= load.records

        node = c.status()["nodes"][0]
        assert node["running"] is False and node["pid"] is None, node

        started = c.up()["nodes"][0]
        assert started["started"] is True and started["pid"] != pid
        assert is_node_process(started["pid"]) and not pid_alive(pid)

        # back on its last committed block, at least as far as any client saw
        height, app_hash = c.chain_state()
        assert height >= load.max_height, f"round {rnd}: lost acknowledged blocks"
        top = max(chain, default=1)
        fresh = blocks(c, admin, range(top, height + 1))
        assert fresh[height]["header"]["app_hash"] == app_hash, "state differs from the header"
        if top in chain:
            assert fresh[top]["hash"] == chain[top]["hash"], f"block {top} changed in the crash"
        for h in range(top + 1, height + 1):
            assert fresh[h]["header"]["height"] == h
            assert fresh[h]["header"]["prev_hash"] == fresh[h - 1]["hash"], f"chain broken at {h}"
        chain |= fresh
        status = c.status()["nodes"][0]
        assert (status["height"], status["app_hash"]) == (height, app_hash)

        # every acknowledged transaction is committed at the height its receipt named:
        # this round's asked one by one, all rounds' found in the (hash-linked) blocks
        in_blocks = {tx: h for h, b in chain.items() for tx in b["tx_hashes"]}
        all_acked |= load.acked
        with c.http() as http:
            for tx_hash, h in load.acked.items():
                doc = signed_get(http, admin, f"/api/v1/txs/{tx_hash}").json()
                assert (doc.get("status"), doc.get("height")) == ("committed", h), doc
            lost = {tx: h for tx, h in all_acked.items() if in_blocks.get(tx) != h}
            assert not lost, f"acknowledged transactions missing after the kill: {lost}"
            # the fire-and-forget ones are committed or unknown, never half there
            assert load.accepted & set(in_blocks), "no accepted read was committed"
            for tx_hash in load.accepted - set(in_blocks):
                resp = signed_get(http, admin, f"/api/v1/txs/{tx_hash}")
                expect_error(resp, 404, "TX_NOT_FOUND")

        # every acknowledged record reads back byte-identical
        with c.client(patient) as cl:
            for rid, content in all_records.items():
                out = c.work / f"read-{rid}.bin"
                cl.get_record(rid, out, purpose="patient-access")
                assert out.read_bytes() == content, f"record {rid} differs after the kill"
                out.unlink()
            ids = {r["record_id"] for r in cl.list_records(patient.id)}
        assert set(all_records) <= ids

        # and it takes new transactions
        with c.admin() as cl:
            receipt = cl.enroll(PrivateKey.generate().id, "researcher")
        assert receipt["code"] == "OK" and receipt["height"] > height


def test_up_restarts_a_killed_node_and_down_stops_it(consortium: Consortium) -> None:
    c = consortium
    c.up()
    before = c.status()["nodes"][0]
    assert before["running"] is True
    sigkill(before["pid"])
    after_kill = c.status()["nodes"][0]
    assert (after_kill["running"], after_kill["pid"], after_kill["height"]) == (False, None, None)

    restarted = c.up()["nodes"][0]
    assert restarted["started"] is True and is_node_process(restarted["pid"])
    now = c.status()["nodes"][0]
    assert now["running"] is True and now["pid"] == restarted["pid"]
    assert (now["height"], now["app_hash"]) == (before["height"], before["app_hash"])

    stopped = c.down()["nodes"][0]
    assert stopped["stopped"] is True and stopped["pid"] == restarted["pid"]
    assert not pid_alive(restarted["pid"]), "down left the node running"
    st = c.status()["nodes"][0]
    assert (st["running"], st["pid"], st["height"]) == (False, None, None)
    assert not c.healthy()
    assert c.down()["nodes"][0]["stopped"] is False  # nothing left to stop

    # a clean stop restarts at the same block too
    again = c.up()["nodes"][0]
    assert again["started"] is True
    st = c.status()["nodes"][0]
    assert (st["height"], st["app_hash"]) == (before["height"], before["app_hash"])
