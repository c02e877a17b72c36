"""Threshold key custody across a real 4-institution consortium.

Each record's data key is split 3-of-4 over the four institutions' nodes (Shamir
shares, each sealed to one node key). The patient reads with one node down, and
not with two (``CUSTODY_THRESHOLD_UNREACHED``, nothing written); one custodian's
stored material does not decrypt the record; a deposit that a custodian refuses
fails as a whole and cannot be registered; after an erasure every custodian's
share (and every shard) is gone, and even a read allowed before it is refused.

Voting power is 4:1:1:1 (hospital-a holds 4/7), so hospital-a and one other node
still commit blocks: a read's access event commits with two nodes down, and only
the custody threshold refuses it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from Crypto.Protocol.SecretSharing import Shamir

from medledger.app.model import (
    ERASE_APPROVE,
    ERASE_REQUEST,
    REGISTER_RECORD,
    EraseApproveBody,
    EraseRequestBody,
    RegisterRecordBody,
)
from medledger.client import Client, PutResult
from medledger.codec import decode, encode
from medledger.crypto.keys import PrivateKey, seal_to, unseal
from medledger.custody.shamir import KeyShare, combine_key, split_key
from medledger.errors import Forbidden, IntegrityError, MedLedgerError, Unavailable
from medledger.storage.backend import LocalShardBackend
from medledger.storage.crypt import ChunkDecryptor
from medledger.storage.manifest import Manifest, decode_manifest

from .harness import CHUNK_SIZE, Consortium, Identity, expect_error, sigkill, signed_headers
from .test_consortium import (
    NAMES,
    admin_key,
    api,
    full_mesh,
    home,
    node_key,
    status_by_name,
    wait_converged,
    wait_for,
)
from .test_erasure_storage import Cast, start_quad

POWER = {"hospital-a": 40, "hospital-b": 10, "hospital-c": 10, "hospital-d": 10}


@pytest.fixture(scope="module")
def quad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    c = Consortium(tmp_path_factory.mktemp("custody"))
    try:
        start_quad(c, powers=POWER)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cast(quad: Consortium) -> Cast:
    return Cast(quad)


def put(c: Consortium, cast: Cast, data: bytes, via: str = "hospital-a") -> PutResult:
    src = c.work / f"src-{os.urandom(4).hex()}.bin"
    src.write_bytes(data)
    with Client(api(c, via), cast.clinician.key) as cl:
        return cl.put_record(src, patient=cast.patient.id, record_type="imaging")


def read(c: Consortium, via: str, who: Identity, record_id: str, out: Path) -> bytes:
    with Client(api(c, via), who.key) as cl:
        got = cl.get_record(record_id, out, purpose="patient-access")
    assert got["record_id"] == record_id
    data = out.read_bytes()
    out.unlink()
    return data


def share_file(c: Consortium, name: str, creator: str, manifest_cid: str) -> Path:
    return home(c, name) / "data" / "custody" / creator / manifest_cid


def held_share(c: Consortium, name: str, p: PutResult, creator: str) -> KeyShare:
    """What custodian ``name`` can open with its own node key: its stored share."""
    sealed = share_file(c, name, creator, p.manifest_cid).read_bytes()
    return decode(unseal(node_key(c, name), sealed), KeyShare)


def manifest_and_chunk0(c: Consortium, cid: str) -> tuple[Manifest, bytes]:
    """The record's manifest and its first encrypted chunk, from the shard stores."""
    backends = [LocalShardBackend(home(c, n) / "shards") for n in NAMES]
    manifest = decode_manifest(next(b for b in backends if b.has(cid)).get(cid))
    chunk0 = manifest.chunks[0].cid
    return manifest, next(b for b in backends if b.has(chunk0)).get(chunk0)


def post_deposit(c: Consortium, via: str, key: PrivateKey, doc: dict[str, Any]) -> httpx.Response:
    path = "/api/v1/custody/deposits"
    body = msgspec.json.encode(doc)
    headers = {**signed_headers(key, "POST", path, body), "content-type": "application/json"}
    return httpx.post(api(c, via) + path, content=body, headers=headers, timeout=30.0)


# ---- shares ---------------------------------------------------------------------------------------


def test_shares_are_spread_and_one_custodian_cannot_decrypt(quad: Consortium, cast: Cast) -> None:
    c = quad
    with Client(api(c, "hospital-b"), cast.patient.key) as cl:
        doc = cl.custodians()
    assert (doc["threshold_num"], doc["threshold_den"]) == (2, 3)
    assert [x["institution"] for x in doc["custodians"]] == NAMES
    for x in doc["custodians"]:
        assert x["reachable"] is True
        assert x["public_key"] == node_key(c, x["institution"]).public_key.hex()

    data = os.urandom(3 * CHUNK_SIZE + 321)
    p = put(c, cast, data)
    assert (p.custodians, p.threshold) == (NAMES, 3)
    with Client(api(c, "hospital-c"), cast.patient.key) as cl:
        meta = cl.record(p.record_id)
    assert (meta["custodians"], meta["threshold"], meta["erased_height"]) == (NAMES, 3, 0)
    creator = cast.clinician.id

    # every custodian holds one share, at its place (x = position + 1), sealed at rest
    shares = [held_share(c, name, p, creator) for name in NAMES]
    assert [s.index for s in shares] == [1, 2, 3, 4]
    assert {s.threshold for s in shares} == {3}
    manifest, chunk0 = manifest_and_chunk0(c, p.manifest_cid)
    # one custodian's material, however it is read as a key, decrypts nothing ...
    for s in shares:
        for guess in (s.hi + s.lo, s.lo + s.hi):
            with pytest.raises(IntegrityError):
                ChunkDecryptor(manifest, guess).open(0, chunk0)
    # ... nor do two of them (the interpolation of two points is some other key) ...
    for pair in ((0, 1), (1, 3), (2, 3)):
        a, b = shares[pair[0]], shares[pair[1]]
        hi = Shamir.combine([(a.index, a.hi), (b.index, b.hi)])
        lo = Shamir.combine([(a.index, a.lo), (b.index, b.lo)])
        with pytest.raises(IntegrityError):
            ChunkDecryptor(manifest, hi + lo).open(0, chunk0)
    # ... while any three are the key
    plain = ChunkDecryptor(manifest, combine_key([shares[3], shares[0], shares[2]])).open(0, chunk0)
    assert plain == data[:CHUNK_SIZE]

    # the patient reads it through any node; each share came sealed to the patient
    assert read(c, "hospital-d", cast.patient, p.record_id, c.work / "spread.bin") == data


def test_a_refused_share_fails_the_deposit_and_the_registration(
    quad: Consortium, cast: Cast
) -> None:
    c = quad
    p = put(c, cast, os.urandom(CHUNK_SIZE))
    manifest, _ = manifest_and_chunk0(c, p.manifest_cid)
    keys = {n: node_key(c, n).public_key for n in NAMES}
    shares = split_key(os.urandom(32), 3, 4)

    def deposit_doc(sealed_to: dict[str, str], names: list[str], threshold: int = 3) -> Any:
        by_name = dict(zip(NAMES, shares, strict=True))
        return {
            "manifest_cid": p.manifest_cid,
            "threshold": threshold,
            "shares": [
                {
                    "institution": n,
                    "sealed_share": seal_to(keys[sealed_to.get(n, n)], encode(by_name[n])).hex(),
                }
                for n in names
            ],
        }

    def register(custodians: list[str], threshold: int) -> None:
        body = RegisterRecordBody(
            patient=cast.patient.id,
            type="imaging",
            content_hash=p.manifest_cid,
            size=manifest.size,
            chunk_count=len(manifest.chunks),
            shard_root=manifest.shard_root,
            k=manifest.k,
            m=manifest.m,
            placement=manifest.placement,
            custodians=custodians,
            threshold=threshold,
        )
        with Client(api(c, "hospital-a"), cast.patient.key) as cl:
            cl.submit(REGISTER_RECORD, body)

    # the patient deposits shares of that content; hospital-c's is sealed to B's key
    bad = deposit_doc({"hospital-c": "hospital-b"}, NAMES)
    resp = post_deposit(c, "hospital-a", cast.patient.key, bad)
    err = expect_error(resp, 503, "CUSTODY_DEPOSIT_FAILED")
    assert "hospital-c" in err["message"]
    assert err["details"]["failed"] == {"hospital-c": "UNSEAL_FAILED"}
    with pytest.raises(MedLedgerError) as exc:  # nothing registrable
        register(NAMES, 3)
    assert exc.value.code == "KEY_NOT_DEPOSITED"
    # below 67 % of the custodians: refused before any custodian is asked
    resp = post_deposit(c, "hospital-a", cast.patient.key, deposit_doc({}, NAMES, 2))
    expect_error(resp, 400, "BAD_CUSTODY")
    # the same shares, hospital-c's sealed right: A, B and D take theirs again (a retry)
    resp = post_deposit(c, "hospital-a", cast.patient.key, deposit_doc({}, NAMES))
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"manifest_cid": p.manifest_cid, "threshold": 3, "custodians": NAMES}
    # the registration must name exactly the deposit's custodians (in share order) and
    # threshold
    for custodians, threshold in (
        (["hospital-a", "hospital-b", "hospital-d", "hospital-c"], 3),
        (NAMES, 4),
        (NAMES[:3], 3),
    ):
        with pytest.raises(MedLedgerError) as exc:
            register(custodians, threshold)
        assert exc.value.code == "CUSTODY_MISMATCH", (custodians, threshold)
    # a share deposited at another place than its own (D's, x = 4, listed third)
    resp = post_deposit(
        c,
        "hospital-a",
        cast.patient.key,
        deposit_doc({}, ["hospital-a", "hospital-b", "hospital-d"]),
    )
    err = expect_error(resp, 503, "CUSTODY_DEPOSIT_FAILED")
    assert err["details"]["failed"] == {"hospital-d": "BAD_DEPOSIT"}
    # and another split's share for the same content is never taken
    shares[0] = split_key(os.urandom(32), 3, 4)[0]
    resp = post_deposit(c, "hospital-a", cast.patient.key, deposit_doc({}, NAMES))
    expect_error(resp, 409, "KEY_ALREADY_DEPOSITED")


# ---- erasure ------------------------------------------------------------------------------------------


def test_erasure_shreds_every_share_and_refuses_reads(quad: Consortium, cast: Cast) -> None:
    c = quad
    data = os.urandom(2 * CHUNK_SIZE + 5)
    p = put(c, cast, data)
    creator = cast.clinician.id
    assert all(share_file(c, n, creator, p.manifest_cid).exists() for n in NAMES)
    manifest, _ = manifest_and_chunk0(c, p.manifest_cid)
    cids = [p.manifest_cid, *(r.cid for r in manifest.chunks), *(r.cid for r in manifest.parity)]
    with Client(api(c, "hospital-b"), cast.patient.key) as cl:
        earlier = cl.request_read(p.record_id, "patient-access")  # allowed, committed
        assert earlier["data"]["outcome"] == "allowed"
        request = EraseRequestBody(record_id=p.record_id, reason="right to be forgotten")
        assert cl.submit(ERASE_REQUEST, request)["data"]["status"] == "pending"
    with Client(api(c, "hospital-c"), admin_key(c, "hospital-a")) as cl:
        approved = cl.submit(ERASE_APPROVE, EraseApproveBody(record_id=p.record_id))
    assert approved["data"]["status"] == "erased"
    wait_converged(c, NAMES, int(approved["height"]))

    # crypto-shredding: no custodian holds a share any more; no institution a shard
    def shredded() -> bool:
        return not any(share_file(c, n, creator, p.manifest_cid).exists() for n in NAMES)

    wait_for(shredded, 20, "every custodian to delete its share")

    def no_shards() -> bool:
        return not any(
            LocalShardBackend(home(c, n) / "shards").has(cid) for n in NAMES for cid in cids
        )

    wait_for(no_shards, 20, "every institution to delete its shards of the record")
    for name in NAMES:
        lines = (home(c, name) / "node.log").read_text().splitlines()
        assert any("custody.share_erased" in x and p.record_id in x for x in lines), name

    with Client(api(c, "hospital-a"), cast.patient.key) as cl:
        meta = cl.record(p.record_id)
        assert meta["erased_height"] == approved["height"]
        assert (meta["custodians"], meta["content_hash"]) == ([], "")
        # the read allowed before the erasure no longer releases anything
        with pytest.raises(Forbidden) as forbidden:
            cl.release_key(p.record_id, earlier["tx_hash"])
        assert forbidden.value.code == "ACCESS_DENIED"
        # and a new read is denied on chain; nothing is written
        out = c.work / "erased.bin"
        with pytest.raises(MedLedgerError) as exc:
            cl.get_record(p.record_id, out, purpose="patient-access")
        assert exc.value.code == "ACCESS_DENIED"
        assert not out.exists() and not list(c.work.glob(".erased.bin*"))


# ---- custodians down --------------------------------------------------------------------------------


def test_reads_need_the_threshold_of_custodians(quad: Consortium, cast: Cast) -> None:
    c = quad
    data = os.urandom(3 * CHUNK_SIZE + 17)
    p = put(c, cast, data)
    wait_converged(c, NAMES, p.height)
    nodes = status_by_name(c)
    # one custodian down: three shares still come, the patient reads
    sigkill(nodes["hospital-d"]["pid"])
    assert read(c, "hospital-a", cast.patient, p.record_id, c.work / "one-down.bin") == data
    assert read(c, "hospital-b", cast.patient, p.record_id, c.work / "one-down-b.bin") == data
    # two down: the read's access event still commits (A holds 4/7 of the power), but
    # only two custodians answer: nothing is released, nothing written
    sigkill(nodes["hospital-c"]["pid"])
    out = c.work / "two-down.bin"
    with Client(api(c, "hospital-a"), cast.patient.key) as cl, pytest.raises(Unavailable) as exc:
        cl.get_record(p.record_id, out, purpose="patient-access")
    assert exc.value.code == "CUSTODY_THRESHOLD_UNREACHED"
    assert "2 of 4" in exc.value.message and "3 are needed" in exc.value.message
    assert not out.exists() and not list(c.work.glob(".two-down.bin*"))
    # with the two back (block sync catches them up), reads work again
    started = {n["name"]: n for n in c.up()["nodes"]}
    assert {n for n, s in started.items() if s["started"]} == {"hospital-c", "hospital-d"}
    wait_for(lambda: full_mesh(c, NAMES), 30, "the stopped nodes to rejoin")
    assert read(c, "hospital-c", cast.patient, p.record_id, c.work / "back.bin") == data
