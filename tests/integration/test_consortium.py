"""A BFT consortium of real node processes, driven with the CLI as an operator drives it.

Two consortia of four validators, each shared by the tests of a class (the tests of a
class run in order and build on each other's chain):

* ``TestFourValidators``: status, cross-member reads of a record (content and key come
  from the holding member over p2p), a validator killed during a write and during a
  stream of transactions, then restarted (block sync), an observer, and governance
  admitting a fifth member and removing one.
* ``TestFaults``: every p2p link runs through a TCP proxy the test controls
  (``netproxy``): a 2-2 partition stops all commits without forking and heals; then
  the test plays a Byzantine validator that double-signs, and the honest ones jail it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import operator
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from medledger.app.model import ENROLL, EnrollBody
from medledger.client import Client
from medledger.consensus.types import PREVOTE, SignedVote
from medledger.crypto.keys import PrivateKey, load_key_file
from medledger.errors import MedLedgerError
from medledger.ledger.block import Vote
from medledger.ledger.tx import make_tx
from medledger.node import wire
from medledger.node.config import load_config, save_config
from medledger.p2p import SecureConnection, open_connection
from medledger.storage.backend import LocalShardBackend

from .harness import (
    CHUNK_SIZE,
    Consortium,
    Identity,
    cli_json,
    is_node_process,
    pid_alive,
    sigkill,
    signed_get,
)
from .netproxy import NetProxy

NAMES = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"]
HEX64 = re.compile(r"^[0-9a-f]{64}$")
CONVERGE_S = 45.0
# logged only when a node meets a block, vote or proposal an honest member cannot produce
BAD_EVENTS = {
    "consensus.invalid_block",
    "sync.invalid_block",
    "sync.bad_commit",
    "consensus.bad_vote_signature",
    "consensus.bad_proposal_signature",
}
T = TypeVar("T")


# ---- helpers ------------------------------------------------------------------------------


def wait_for(cond: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def home(c: Consortium, name: str) -> Path:
    return c.dir / name


def api(c: Consortium, name: str) -> str:
    return load_config(home(c, name)).api_url()


def admin_key(c: Consortium, name: str) -> PrivateKey:
    return load_key_file(home(c, name) / "admin.key")


def node_key(c: Consortium, name: str) -> PrivateKey:
    return load_key_file(home(c, name) / "node.key")


def node_status(c: Consortium, name: str) -> dict[str, Any] | None:
    """The node's own status document, or None if it does not answer."""
    try:
        resp = httpx.get(api(c, name) + "/api/v1/status", timeout=3.0)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    doc: dict[str, Any] = resp.json()
    return doc


def chain_states(c: Consortium, names: list[str]) -> dict[str, tuple[int, str] | None]:
    out: dict[str, tuple[int, str] | None] = {}
    for name in names:
        st = node_status(c, name)
        out[name] = None if st is None else (int(st["height"]), str(st["app_hash"]))
    return out


def wait_converged(
    c: Consortium, names: list[str], min_height: int = 0, timeout: float = CONVERGE_S
) -> tuple[int, str]:
    """Until every node in ``names`` is at the same height (>= min_height) and app hash."""
    last: dict[str, Any] = {}

    def same() -> tuple[int, str] | None:
        states = chain_states(c, names)
        last.clear()
        last.update(states)
        values = set(states.values())
        if len(values) == 1:
            (value,) = values
            if value is not None and value[0] >= min_height:
                return value
        return None

    try:
        return wait_for(same, timeout, f"{names} to converge at height >= {min_height}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None


def heights(c: Consortium, names: list[str]) -> dict[str, int]:
    states = chain_states(c, names)
    assert all(s is not None for s in states.values()), f"a node does not answer: {states}"
    return {n: s[0] for n, s in states.items() if s is not None}


def enroll_txs(
    key: PrivateKey, chain_id: str, nonce: int, n: int, role: str = "patient"
) -> list[bytes]:
    return [
        make_tx(
            key,
            chain_id=chain_id,
            nonce=nonce + i,
            kind=ENROLL,
            body=EnrollBody(id=PrivateKey.generate().id, role=role),
        )
        for i in range(n)
    ]


def commit_enrollments(c: Consortium, via: str, admin_of: str, n: int = 3) -> list[dict[str, Any]]:
    """Enroll ``n`` new patients through node ``via``; every one must commit OK."""
    key = admin_key(c, admin_of)
    with Client(api(c, via), key, timeout=60) as cl:
        receipts = cl.submit_batch(enroll_txs(key, cl.chain_id, cl.next_nonce(), n), wait=True)
    for r in receipts:
        assert r.get("status") == "committed" and r.get("code") == "OK", r
    return receipts


def enroll_as(c: Consortium, via: str, admin_of: str, name: str, role: str) -> Identity:
    """A new identity of ``admin_of``'s institution, enrolled through node ``via``."""
    ident = c.new_key(name)
    with Client(api(c, via), admin_key(c, admin_of)) as cl:
        receipt = cl.enroll(ident.id, role)
    assert receipt["code"] == "OK", receipt
    return ident


def validators_doc(c: Consortium, name: str, key: PrivateKey) -> dict[str, Any]:
    with Client(api(c, name), key, timeout=10) as cl:
        doc: dict[str, Any] = cl.get_json("/api/v1/validators")
    return doc


def block_hashes(c: Consortium, name: str, key: PrivateKey, top: int) -> list[str]:
    with httpx.Client(base_url=api(c, name), timeout=10.0) as http:
        out = []
        for h in range(1, top + 1):
            resp = signed_get(http, key, f"/api/v1/blocks/{h}")
            assert resp.status_code == 200, f"{name} block {h}: {resp.text}"
            out.append(str(resp.json()["hash"]))
    return out


def assert_no_fork(c: Consortium, names: list[str], key: PrivateKey, top: int) -> None:
    chains = {name: block_hashes(c, name, key, top) for name in names}
    first = chains[names[0]]
    for name, chain in chains.items():
        diverge = next(
            (h + 1 for h, (a, b) in enumerate(zip(first, chain, strict=True)) if a != b), None
        )
        assert diverge is None, f"fork: {names[0]} and {name} differ at height {diverge}"


def tx_on(c: Consortium, name: str, key: PrivateKey, tx_hash: str) -> dict[str, Any]:
    with httpx.Client(base_url=api(c, name), timeout=10.0) as http:
        resp = signed_get(http, key, f"/api/v1/txs/{tx_hash}")
    doc: dict[str, Any] = resp.json()
    return doc


def has_content(c: Consortium, name: str, cid: str) -> bool:
    return LocalShardBackend(home(c, name) / "shards").has(cid)


def read_record(c: Consortium, via: str, who: Identity, record_id: str, tag: str) -> bytes:
    out = c.work / f"read-{tag}-{via}.bin"
    with Client(api(c, via), who.key) as cl:
        got = cl.get_record(record_id, out, purpose="patient-access")
    assert got["record_id"] == record_id
    data = out.read_bytes()
    out.unlink()
    return data


def assert_logs_clean(c: Consortium) -> None:
    """No node logged an error, or rejected a block, vote or proposal of an honest member."""
    bad = []
    for h in c.homes():
        log = h / "node.log"
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by SIGKILL, or a traceback's (its error line counts)
            if entry.get("level") in ("error", "critical") or entry.get("event") in BAD_EVENTS:
                bad.append(f"{h.name}: {line[:400]}")
    assert not bad, "nodes logged:\n" + "\n".join(bad)


def status_by_name(c: Consortium) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in c.status()["nodes"]}


def full_mesh(c: Consortium, names: list[str]) -> bool:
    for name in names:
        st = node_status(c, name)
        if st is None or len(st["peers"]) < len(names) - 1:
            return False
    return True


def start_consortium(c: Consortium, proxy: NetProxy | None = None) -> None:
    """``init`` four institutions (routed through ``proxy`` if given), ``up``, full mesh."""
    c.init(4)
    assert [i["name"] for i in c.info["institutions"]] == NAMES
    if proxy is not None:
        route_through(c, proxy)
    c.up()
    wait_for(lambda: full_mesh(c, NAMES), 20, "every validator to connect to the other three")


def route_through(c: Consortium, proxy: NetProxy) -> None:
    """Point every node's peers at a proxy of ``proxy`` (one per directed link)."""
    for name in NAMES:
        cfg = load_config(home(c, name))
        for peer in cfg.peers:
            link = proxy.add(name, peer.name, peer.port)
            peer.host, peer.port = "127.0.0.1", link.port
        save_config(home(c, name), cfg)


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="class")
def quad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    """Four validators, started with ``init`` and ``up``; always stopped."""
    c = Consortium(tmp_path_factory.mktemp("quad"))
    try:
        start_consortium(c)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="class")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Consortium, NetProxy]]:
    """Four validators whose every p2p link runs through a proxy of the returned NetProxy."""
    proxy = NetProxy()
    c = Consortium(tmp_path_factory.mktemp("proxied"))
    try:
        start_consortium(c, proxy)
        yield c, proxy
    finally:
        try:
            c.stop()
        finally:
            proxy.close()


class Load:
    """Enrollment batches that wait for their commit, one thread per (node, admin)."""

    def __init__(self, c: Consortium, routes: list[tuple[str, str]], batch: int = 8) -> None:
        self.c = c
        self.routes = routes  # (node to submit to, institution whose admin signs)
        self.batch = batch
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[int, str]] = {}  # tx hash -> (height, signing admin)
        self.acks_at: list[tuple[float, int]] = []  # (monotonic time, height) per receipt
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=route, daemon=True, name=f"load-{route[0]}")
            for route in routes
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(90)
            assert not t.is_alive(), f"{t.name} hangs"

    def acks_since(self, t0: float) -> list[int]:
        with self.lock:
            return [h for t, h in self.acks_at if t >= t0]

    def _run(self, via: str, admin_of: str) -> None:
        key = admin_key(self.c, admin_of)
        try:
            with Client(api(self.c, via), key, timeout=90) as cl:
                nonce = cl.next_nonce()
                while not self.stop_flag.is_set():
                    raws = enroll_txs(key, cl.chain_id, nonce, self.batch)
                    results = cl.submit_batch(raws, wait=True)
                    now = time.monotonic()
                    for r in results:
                        if r.get("status") != "committed" or r.get("code") != "OK":
                            with self.lock:
                                self.errors.append(f"{via}: {r}")
                            return
                        with self.lock:
                            self.acked[r["tx_hash"]] = (int(r["height"]), admin_of)
                            self.acks_at.append((now, int(r["height"])))
                    nonce += self.batch
        except Exception as exc:  # a node error, or a client bug: the test reports it
            with self.lock:
                self.errors.append(f"{via}: {exc!r}")


# ---- four validators ----------------------------------------------------------------------


class TestFourValidators:
    def test_status_and_reads_across_members(self, quad: Consortium) -> None:
        c = quad
        nodes = status_by_name(c)
        assert sorted(nodes) == NAMES
        ids = {name: node_key(c, name).id for name in NAMES}
        apis = {i["name"]: i["api"] for i in c.info["institutions"]}
        for name, n in nodes.items():
            assert n["running"] is True and isinstance(n["pid"], int), n
            assert is_node_process(n["pid"]), f"{name}: pid {n['pid']} is not a live node"
            assert n["api"] == apis[name] and n["node_id"] == ids[name], n
            assert n["validator"] is True, n
            assert isinstance(n["height"], int) and HEX64.match(n["app_hash"]), n
            assert sorted(n["peers"]) == sorted(ids[o] for o in NAMES if o != name), n
        assert len({n["pid"] for n in nodes.values()}) == 4

        # transactions through two nodes; all four end on the same block
        clinician = enroll_as(c, "hospital-a", "hospital-a", "clinician-a", "clinician")
        patient = enroll_as(c, "hospital-a", "hospital-a", "patient", "patient")
        receipts = commit_enrollments(c, "hospital-b", "hospital-b", 5)
        top = max(r["height"] for r in receipts)
        height, app_hash = wait_converged(c, NAMES, top)
        nodes = status_by_name(c)
        assert {(n["height"], n["app_hash"]) for n in nodes.values()} == {(height, app_hash)}

        # a multi-chunk record put through A is erasure-coded 2+2 over all four
        # institutions (each holds one column and the manifest, none a readable copy)
        # and reads back identical through B, C and D; A, the custodian, releases the key
        content = os.urandom(3 * CHUNK_SIZE + 1234)
        src = c.work / "scan.bin"
        src.write_bytes(content)
        with Client(api(c, "hospital-a"), clinician.key) as cl:
            put = cl.put_record(src, patient=patient.id, record_type="imaging")
        assert put.chunk_count == 4 and put.size == len(content)
        assert (put.k, put.m) == (2, 2) and sorted(put.placement) == NAMES
        assert put.placement[0] == "hospital-a"
        wait_converged(c, NAMES, put.height)
        for name in NAMES:
            assert has_content(c, name, put.manifest_cid), f"{name} lacks the manifest"
            assert read_record(c, name, patient, put.record_id, "first") == content, name

        # D is killed; a second record is put through A while it is down
        d_pid = nodes["hospital-d"]["pid"]
        sigkill(d_pid)
        content2 = os.urandom(2 * CHUNK_SIZE + 99)
        src2 = c.work / "scan2.bin"
        src2.write_bytes(content2)
        with Client(api(c, "hospital-a"), clinician.key) as cl:
            put2 = cl.put_record(src2, patient=patient.id, record_type="imaging")
        assert put2.height > height, "no commit while D was down"
        # three services reachable: k=1, m=2 (any two may still be lost), not on D
        assert (put2.k, put2.m) == (1, 2) and "hospital-d" not in put2.placement
        down = status_by_name(c)["hospital-d"]
        assert (down["running"], down["pid"], down["height"]) == (False, None, None), down
        wait_converged(c, NAMES[:3], put2.height)

        # `up` restarts only D, which catches up by block sync and serves the read
        started = {n["name"]: n for n in c.up()["nodes"]}
        assert [n for n, s in started.items() if s["started"]] == ["hospital-d"], started
        new_pid = started["hospital-d"]["pid"]
        assert new_pid != d_pid and is_node_process(new_pid) and not pid_alive(d_pid)
        height2, app_hash2 = wait_converged(c, NAMES, put2.height)
        d = status_by_name(c)["hospital-d"]
        assert (d["pid"], d["height"], d["app_hash"]) == (new_pid, height2, app_hash2), d
        assert d["validator"] is True
        assert read_record(c, "hospital-d", patient, put2.record_id, "second") == content2
        assert read_record(c, "hospital-d", patient, put.record_id, "again") == content
        assert_logs_clean(c)

    def test_validator_killed_under_load(self, quad: Consortium) -> None:
        c = quad
        victim = "hospital-c"
        others = [n for n in NAMES if n != victim]
        load = Load(c, [(n, n) for n in others])
        load.start()
        try:
            wait_for(lambda: len(load.acked) >= 3 * load.batch or load.errors, 30, "first commits")
            assert not load.errors, load.errors
            pid = status_by_name(c)[victim]["pid"]
            killed_at = max(heights(c, others).values())
            sigkill(pid)
            t_kill = time.monotonic()
            # the other three keep committing while it is down
            wait_for(
                lambda: len(load.acks_since(t_kill)) >= 4 * load.batch or load.errors,
                45,
                "commits while a validator is down",
            )
            assert not load.errors, load.errors
            assert max(load.acks_since(t_kill)) > killed_at
            during = heights(c, others)
            assert min(during.values()) > killed_at, during
            st = status_by_name(c)[victim]
            assert st["running"] is False and st["pid"] is None, st
            started = {n["name"]: n for n in c.up()["nodes"]}
            assert started[victim]["started"] is True and is_node_process(started[victim]["pid"])
            time.sleep(1.0)  # the load goes on while it syncs
        finally:
            load.stop()
        assert not load.errors, load.errors
        top = max(h for h, _ in load.acked.values())
        height, app_hash = wait_converged(c, NAMES, top)
        assert height >= top
        st = status_by_name(c)[victim]
        assert (st["height"], st["app_hash"], st["validator"]) == (height, app_hash, True), st
        # every acknowledged transaction is on the restarted node, at the same height
        missing = {}
        with httpx.Client(base_url=api(c, victim), timeout=10.0) as http:
            keys = {n: admin_key(c, n) for n in others}
            for tx_hash, (h, signer) in load.acked.items():
                doc = signed_get(http, keys[signer], f"/api/v1/txs/{tx_hash}").json()
                if (doc.get("status"), doc.get("height"), doc.get("code")) != (
                    "committed",
                    h,
                    "OK",
                ):
                    missing[tx_hash] = doc
        assert not missing, f"{len(missing)} of {len(load.acked)} acknowledged txs: {missing}"
        assert_logs_clean(c)

    def test_observer_follows_the_chain(self, quad: Consortium) -> None:
        c = quad
        doc = cli_json("join", "--dir", c.dir, "--name", "observer-x")
        assert doc["name"] == "observer-x" and Path(doc["home"]).is_dir()
        # members accept its connection once its node key is an enrolled node identity
        with Client(api(c, "hospital-a"), admin_key(c, "hospital-a")) as cl:
            assert cl.enroll(doc["node_id"], "node")["code"] == "OK"
        started = {n["name"]: n for n in c.up()["nodes"]}
        assert [n for n, s in started.items() if s["started"]] == ["observer-x"], started
        names = [*NAMES, "observer-x"]
        receipts = commit_enrollments(c, "hospital-b", "hospital-b", 3)
        height, app_hash = wait_converged(c, names, receipts[-1]["height"])
        nodes = status_by_name(c)
        obs = nodes["observer-x"]
        assert obs["running"] and is_node_process(obs["pid"]), obs
        assert (obs["height"], obs["app_hash"]) == (height, app_hash), obs
        assert obs["validator"] is False and obs["node_id"] == doc["node_id"], obs
        ids = {name: node_key(c, name).id for name in NAMES}
        assert sorted(obs["peers"]) == sorted(ids.values()), obs
        for name in NAMES:
            assert nodes[name]["validator"] is True
            assert doc["node_id"] in nodes[name]["peers"], nodes[name]
        vals = validators_doc(c, "observer-x", admin_key(c, "hospital-a"))
        assert sorted(v["name"] for v in vals["validators"]) == NAMES, vals
        assert_logs_clean(c)

    def test_governance_admits_and_removes_members(self, quad: Consortium) -> None:
        c = quad
        a_admin = home(c, "hospital-a") / "admin.key"
        e = cli_json("join", "--dir", c.dir, "--name", "hospital-e")
        proposal = cli_json(
            "governance", "propose", "--add", "hospital-e",
            "--node-key", e["node_public_key"], "--admin-key", e["admin_public_key"],
            "--as", a_admin, "--node", api(c, "hospital-a"),
        )  # fmt: skip
        pid = proposal["data"]["proposal_id"]
        assert proposal["code"] == "OK" and proposal["data"]["status"] == "open", proposal
        statuses = []
        for voter in ("hospital-b", "hospital-c"):
            vote = cli_json(
                "governance", "vote", pid,
                "--as", home(c, voter) / "admin.key", "--node", api(c, voter),
            )  # fmt: skip
            statuses.append(vote["data"]["status"])
        assert statuses == ["open", "passed"], statuses  # 3 of 4 is more than 2/3
        passed_at = int(vote["height"])
        ls = cli_json("governance", "ls", "--as", a_admin, "--node", api(c, "hospital-d"))
        mine = [p for p in ls["proposals"] if p["id"] == pid]
        assert mine and mine[0]["status"] == "passed", ls
        assert sorted(mine[0]["approvals"]) == NAMES[:3], mine

        started = {n["name"]: n for n in c.up()["nodes"]}
        assert [n for n, s in started.items() if s["started"]] == ["hospital-e"], started
        names5 = [*NAMES, "hospital-e"]
        everyone = [h.name for h in c.homes()]  # and the observer, if its test ran first
        wait_converged(c, everyone, passed_at)
        # two heights after the vote the set has five members, and five keep committing
        receipts = commit_enrollments(c, "hospital-e", "hospital-a", 3)
        receipts += commit_enrollments(c, "hospital-a", "hospital-a", 3)
        assert max(r["height"] for r in receipts) >= passed_at + 2
        height, _ = wait_converged(c, everyone, passed_at + 2)
        key = admin_key(c, "hospital-a")
        for name in everyone:
            vals = validators_doc(c, name, key)
            assert sorted(v["name"] for v in vals["validators"]) == names5, (name, vals)
        nodes = status_by_name(c)
        assert nodes["hospital-e"]["validator"] is True, nodes["hospital-e"]
        assert nodes["hospital-e"]["running"] and nodes["hospital-e"]["height"] == height
        assert len(nodes["hospital-e"]["peers"]) == len(everyone) - 1, nodes["hospital-e"]
        e_admin = Path(e["admin_key"])
        assert e_admin.exists()
        # E's admin is a member admin now: it signs through E and its tx commits
        commit_enrollments(c, "hospital-e", "hospital-e", 2)

        # removing B needs 4 of the 5 now: A proposes, C and D are not enough, E decides
        removal = cli_json(
            "governance", "propose", "--remove", "hospital-b",
            "--as", a_admin, "--node", api(c, "hospital-a"),
        )  # fmt: skip
        rid = removal["data"]["proposal_id"]
        statuses = []
        for voter in ("hospital-c", "hospital-d", "hospital-e"):
            vote = cli_json(
                "governance", "vote", rid,
                "--as", home(c, voter) / "admin.key", "--node", api(c, voter),
            )  # fmt: skip
            statuses.append(vote["data"]["status"])
        assert statuses == ["open", "open", "passed"], statuses
        removed_at = int(vote["height"])
        remaining = [n for n in names5 if n != "hospital-b"]
        receipts = commit_enrollments(c, "hospital-c", "hospital-c", 3)
        receipts += commit_enrollments(c, "hospital-d", "hospital-d", 3)
        assert max(r["height"] for r in receipts) >= removed_at + 2
        height, app_hash = wait_converged(c, everyone, removed_at + 2)
        for name in everyone:
            vals = validators_doc(c, name, key)
            assert sorted(v["name"] for v in vals["validators"]) == remaining, (name, vals)
            assert sorted(v["name"] for v in vals["next"]) == remaining, (name, vals)
        nodes = status_by_name(c)
        assert nodes["hospital-b"]["validator"] is False, nodes["hospital-b"]
        assert nodes["hospital-b"]["running"] and nodes["hospital-b"]["app_hash"] == app_hash
        for name in remaining:
            assert nodes[name]["validator"] is True, nodes[name]
        # commits continue with four validators, and B still follows
        last = commit_enrollments(c, "hospital-b", "hospital-b", 2)
        wait_converged(c, everyone, last[-1]["height"])
        assert_logs_clean(c)


# ---- faults: partition and equivocation ---------------------------------------------------


class TestFaults:
    def test_partition_two_two_then_heal(
        self, proxied: tuple[Consortium, NetProxy], request: pytest.FixtureRequest
    ) -> None:
        c, proxy = proxied
        ids = {name: node_key(c, name).id for name in NAMES}
        # every link runs through a proxy (the nodes know no other address)
        stats = proxy.stats()
        for i, x in enumerate(NAMES):
            for y in NAMES[i + 1 :]:
                assert stats[(x, y)]["accepted"] + stats[(y, x)]["accepted"] >= 1, (x, y, stats)
        receipts = commit_enrollments(c, "hospital-a", "hospital-a", 3)
        before, _ = wait_converged(c, NAMES, receipts[-1]["height"])

        left, right = NAMES[:2], NAMES[2:]
        request.addfinalizer(proxy.heal)  # a failure must not leave the class partitioned
        proxy.partition(left, right)

        def split() -> bool:
            for group in (left, right):
                for name in group:
                    st = node_status(c, name)
                    want = sorted(ids[o] for o in group if o != name)
                    if st is None or sorted(st["peers"]) != want:
                        return False
            return True

        wait_for(split, 15, "the peers lists to show the partition")
        assert sum(s["cut"] for s in proxy.stats().values()) >= 4, proxy.stats()

        # transactions on both sides reach their side's mempools but commit nowhere
        sent: dict[str, tuple[str, str]] = {}  # tx hash -> (side's node, admin)
        for via in ("hospital-a", "hospital-c"):
            key = admin_key(c, via)
            with Client(api(c, via), key) as cl:
                results = cl.submit_batch(
                    enroll_txs(key, cl.chain_id, cl.next_nonce(), 4), wait=False
                )
            for r in results:
                assert r["status"] == "accepted", r
                sent[r["tx_hash"]] = (via, via)
        wait_for(
            lambda: all((node_status(c, n) or {}).get("mempool_txs", 0) >= 4 for n in NAMES),
            10,
            "each side to gossip its transactions",
        )
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            hs = heights(c, NAMES)
            assert set(hs.values()) == {before}, f"a block was committed in a partition: {hs}"
            time.sleep(0.25)
        for name in NAMES:
            st = node_status(c, name)
            assert st is not None and st["mempool_txs"] == 4, (name, st)
        assert_no_fork(c, NAMES, admin_key(c, "hospital-a"), before)

        # heal: commits resume on all four, with the transactions of both sides
        proxy.heal()
        wait_converged(c, NAMES, before + 1, timeout=60)

        def all_committed() -> bool:
            for tx_hash, (_, signer) in sent.items():
                for name in NAMES:
                    if tx_on(c, name, admin_key(c, signer), tx_hash).get("status") != "committed":
                        return False
            return True

        wait_for(all_committed, 60, "both sides' transactions to commit everywhere", 0.5)
        for tx_hash, (_, signer) in sent.items():
            doc = tx_on(c, "hospital-d", admin_key(c, signer), tx_hash)
            assert doc["code"] == "OK" and doc["height"] > before, doc
        height, _ = wait_converged(c, NAMES, before + 1)
        assert_no_fork(c, NAMES, admin_key(c, "hospital-a"), height)
        wait_for(lambda: full_mesh(c, NAMES), 30, "the mesh to reconnect")
        after = commit_enrollments(c, "hospital-d", "hospital-d", 2)
        wait_converged(c, NAMES, after[-1]["height"])
        assert_logs_clean(c)

    def test_double_signing_validator_is_jailed(self, proxied: tuple[Consortium, NetProxy]) -> None:
        c, _ = proxied
        honest = NAMES[:3]
        regulator = enroll_as(c, "hospital-a", "hospital-a", "regulator", "regulator")
        d_key = node_key(c, "hospital-d")
        d_id = d_key.id
        vals = validators_doc(c, "hospital-a", regulator.key)
        assert d_id in {v["id"] for v in vals["validators"]} and vals["jailed"] == [], vals

        # the test becomes D: stop its process, dial A, B and C with its node key
        sigkill(status_by_name(c)["hospital-d"]["pid"])
        height, _ = wait_converged(c, honest)
        targets = []
        for name in honest:
            cfg = load_config(home(c, name))
            targets.append((cfg.p2p_port, node_key(c, name).public_key.raw))

        vote_time = time.time_ns() // 1_000_000
        votes = [
            SignedVote.create(
                d_key,
                Vote(
                    chain_id=c.chain_id,
                    type=PREVOTE,
                    height=height + 1,
                    round=0,
                    block_hash=os.urandom(32),
                    time_ms=vote_time,
                    validator=d_id,
                ),
            )
            for _ in range(2)
        ]
        assert votes[0].vote.block_hash != votes[1].vote.block_hash
        asyncio.run(equivocate(c.chain_id, d_key, targets, votes))

        # an honest node submits the evidence; every node then lists D as jailed
        def jailed_everywhere() -> list[dict[str, Any]] | None:
            docs = [validators_doc(c, n, regulator.key) for n in honest]
            if all(any(j["validator"] == d_id for j in doc["jailed"]) for doc in docs):
                return docs
            return None

        docs = wait_for(jailed_everywhere, 30, "D to be jailed on every node", 0.25)
        for doc in docs:
            (jail,) = doc["jailed"]
            assert jail["institution"] == "hospital-d", jail
            assert (jail["height"], jail["round"], jail["vote_type"]) == (height + 1, 0, PREVOTE)
            assert d_id not in {v["id"] for v in doc["next"]}, doc
            assert sorted(v["name"] for v in doc["next"]) == honest, doc
            if doc["height"] == jail["committed_height"]:  # not effective yet
                assert d_id in {v["id"] for v in doc["validators"]}, doc
        jailed_at = docs[0]["jailed"][0]["committed_height"]
        assert jailed_at > height

        # the regulator sees the jail event in D's audit trail, from an honest node
        with Client(api(c, "hospital-b"), regulator.key) as cl:
            events = cl.audit(d_id)
        jails = [e for e in events if e["action"] == "jail"]
        assert len(jails) == 1, events
        assert jails[0]["subject"] == d_id and jails[0]["height"] == jailed_at, jails
        assert jails[0]["actor"] in {node_key(c, n).id for n in honest}, jails
        assert "hospital-d" in jails[0]["detail"], jails
        evidence_tx = tx_on(c, "hospital-c", regulator.key, jails[0]["tx_hash"])
        assert evidence_tx["code"] == "OK" and evidence_tx["data"]["jailed"] == d_id, evidence_tx

        # two heights later D is out of the set, and the three keep committing
        receipts = commit_enrollments(c, "hospital-b", "hospital-b", 2)
        receipts += commit_enrollments(c, "hospital-c", "hospital-c", 2)
        assert max(r["height"] for r in receipts) >= jailed_at + 2
        wait_converged(c, honest, jailed_at + 2)
        for name in honest:
            doc = validators_doc(c, name, regulator.key)
            assert sorted(v["name"] for v in doc["validators"]) == honest, (name, doc)
            assert [j["validator"] for j in doc["jailed"]] == [d_id], doc
        before = heights(c, honest)
        after = commit_enrollments(c, "hospital-a", "hospital-a", 2)
        assert after[-1]["height"] > max(before.values())
        wait_converged(c, honest, after[-1]["height"])
        assert_logs_clean(c)


async def equivocate(
    chain_id: str, key: PrivateKey, targets: list[tuple[int, bytes]], votes: list[SignedVote]
) -> None:
    """Connect to each target as ``key``'s node and send it every vote in ``votes``."""
    conns: list[SecureConnection] = []
    drains: list[asyncio.Task[None]] = []

    async def drain(conn: SecureConnection) -> None:
        with contextlib.suppress(MedLedgerError):
            while True:
                await conn.recv()

    try:
        for port, public_key in targets:
            conn = await open_connection(
                "127.0.0.1",
                port,
                key,
                chain_id=chain_id,
                allowed=functools.partial(operator.eq, public_key),
            )
            conns.append(conn)
            drains.append(asyncio.create_task(drain(conn)))
        for conn in conns:
            for sv in votes:
                await conn.send(wire.pack(wire.VoteMsg(vote=sv)))
        await asyncio.sleep(1.0)  # let them take the votes before the link drops
    finally:
        for conn in conns:
            await conn.close()
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
