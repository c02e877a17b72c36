"""Bad input at the node API: every rejection has its code, changes nothing, and the node serves.

Each test records (height, app hash) before the bad input and checks them after
it: a rejected transaction must never reach a block. Where good transactions
ride along (batches), the blocks committed meanwhile must hold exactly the good
ones. Bad inputs carry a patient-like marker that must not come back in an
error message, nor reach the node's log.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import NamedTuple

import httpx
import msgspec
import pytest

from medledger.api import signing
from medledger.app.model import (
    ENROLL,
    READ_RECORD,
    REGISTER_RECORD,
    SUSPEND,
    EnrollBody,
    ReadRecordBody,
    RegisterRecordBody,
    SuspendBody,
)
from medledger.client import Client
from medledger.codec import encode
from medledger.crypto.cid import cid_for
from medledger.crypto.keys import PrivateKey
from medledger.errors import AuthError
from medledger.ledger.tx import Tx, make_tx, sign_tx, tx_hash

from .harness import (
    Consortium,
    Identity,
    assert_cli_error,
    cli_json,
    expect_error,
    run_cli,
    signed_get,
    signed_headers,
)

PHI = "Jane Q Patient 1970-01-01 MRN-4417-SECRET"


class People(NamedTuple):
    admin: PrivateKey
    clinician: Identity
    patient: Identity
    researcher: Identity


@pytest.fixture(scope="module")
def people(consortium: Consortium) -> People:
    return People(
        consortium.admin_key,
        consortium.enroll("clinician", "clinician"),
        consortium.enroll("patient", "patient"),
        consortium.enroll("researcher", "researcher"),
    )


@pytest.fixture
def http(consortium: Consortium) -> Iterator[httpx.Client]:
    with consortium.http() as h:
        yield h


@contextlib.contextmanager
def unchanged(c: Consortium) -> Iterator[None]:
    """The chain neither grows nor changes state inside the block; the node still serves."""
    before = c.chain_state()
    yield
    assert c.healthy(), "node stopped serving"
    assert c.chain_state() == before, "bad input changed the chain"


def no_phi(resp: httpx.Response) -> None:
    assert PHI not in resp.text and "MRN-4417" not in resp.text, resp.text


def next_nonce(c: Consortium, key: PrivateKey) -> int:
    with c.client(key) as cl:
        return cl.next_nonce()


def enroll_tx(c: Consortium, admin: PrivateKey, nonce: int, chain_id: str | None = None) -> bytes:
    """A fresh enrollment by ``admin``, for this chain unless told otherwise."""
    body = EnrollBody(id=PrivateKey.generate().id, role="patient")
    chain = c.chain_id if chain_id is None else chain_id
    return make_tx(admin, chain_id=chain, nonce=nonce, kind=ENROLL, body=body)


def post_tx(http: httpx.Client, raw: bytes) -> httpx.Response:
    """Submit one transaction and wait for its commit."""
    return http.post("/api/v1/tx", params={"wait": "true"}, content=raw)


def committed_tx_hashes(c: Consortium, key: PrivateKey, after: int) -> list[str]:
    """Hashes of the transactions in blocks after height ``after``."""
    height, _ = c.chain_state()
    out: list[str] = []
    with c.http() as http:
        for h in range(after + 1, height + 1):
            resp = signed_get(http, key, f"/api/v1/blocks/{h}")
            assert resp.status_code == 200, resp.text
            out += resp.json()["tx_hashes"]
    return out


# ---- transactions ---------------------------------------------------------------------------


def test_malformed_transactions(consortium: Consortium, people: People, http: httpx.Client) -> None:
    c = consortium
    nonce = next_nonce(c, people.admin)
    good = enroll_tx(c, people.admin, nonce)
    # a signed transaction whose body holds a string that is not UTF-8
    body = encode(EnrollBody(id=PrivateKey.generate().id, role="patient"))
    not_utf8 = sign_tx(
        people.admin,
        Tx(
            chain_id=c.chain_id,
            sender=people.admin.id,
            nonce=nonce,
            kind=ENROLL,
            body=body.replace(b"patient", b"pat\xedent"),
        ),
    )
    # a signed transaction whose body is not the kind's body at all
    wrong_body = sign_tx(
        people.admin,
        Tx(
            chain_id=c.chain_id,
            sender=people.admin.id,
            nonce=nonce,
            kind=ENROLL,
            body=msgspec.msgpack.encode({"name": PHI}),
        ),
    )
    bad = {
        "empty": b"",
        "zeros": bytes(200),
        "random": os.urandom(500),
        "phi text": PHI.encode() * 5,
        "truncated": good[:-7],
        "trailing bytes": good + b"\x00",
        "body not UTF-8": not_utf8,
        "body of another shape": wrong_body,
    }
    with unchanged(c):
        for what, raw in bad.items():
            resp = post_tx(http, raw)
            expect_error(resp, 400, "TX_MALFORMED", what)
            no_phi(resp)
    # the nonce was not consumed: the good transaction still goes through
    receipt = post_tx(http, good).json()
    assert receipt["status"] == "committed" and receipt["code"] == "OK"


def test_oversized_transactions(consortium: Consortium, people: People, http: httpx.Client) -> None:
    c = consortium
    nonce = next_nonce(c, people.admin)
    huge = make_tx(
        people.admin,
        chain_id=c.chain_id,
        nonce=nonce,
        kind=SUSPEND,
        body=SuspendBody(id=people.researcher.id, reason=PHI * 2000),
    )
    assert len(huge) > 64 * 1024
    with unchanged(c):
        for raw in (huge, bytes(64 * 1024 + 1), os.urandom(1024 * 1024)):
            resp = post_tx(http, raw)
            expect_error(resp, 400, "TX_TOO_LARGE")
            no_phi(resp)
        results = http.post(
            "/api/v1/txs", content=msgspec.msgpack.encode([huge]), params={"wait": "true"}
        ).json()["results"]
        assert [r["status"] for r in results] == ["rejected"]
        assert results[0]["error"]["code"] == "TX_TOO_LARGE"


def test_bad_signatures(consortium: Consortium, people: People, http: httpx.Client) -> None:
    c = consortium
    nonce = next_nonce(c, people.admin)
    good = enroll_tx(c, people.admin, nonce)
    flipped_sig = bytearray(good)
    flipped_sig[10] ^= 0x01
    flipped_body = bytearray(good)
    flipped_body[-3] ^= 0x01  # inside the role: still well-formed, no longer signed
    other = PrivateKey.generate()
    swapped_key = good[:64] + other.public_key.raw + good[96:]
    with unchanged(c):
        expect_error(post_tx(http, bytes(flipped_sig)), 401, "BAD_SIGNATURE")
        expect_error(post_tx(http, bytes(flipped_body)), 401, "BAD_SIGNATURE")
        expect_error(post_tx(http, swapped_key), 401, "SENDER_KEY_MISMATCH")
    assert post_tx(http, good).json()["code"] == "OK"


def test_wrong_chain(consortium: Consortium, people: People, http: httpx.Client) -> None:
    c = consortium
    nonce = next_nonce(c, people.admin)
    with unchanged(c):
        for chain in ("medledger-other", c.chain_id + "x", ""):
            resp = post_tx(http, enroll_tx(c, people.admin, nonce, chain_id=chain))
            expect_error(resp, 400, "WRONG_CHAIN")
    assert next_nonce(c, people.admin) == nonce


def test_replayed_and_out_of_order_nonces(
    consortium: Consortium, people: People, http: httpx.Client
) -> None:
    c = consortium
    nonce = next_nonce(c, people.admin)
    first = enroll_tx(c, people.admin, nonce)
    receipt = post_tx(http, first).json()
    assert receipt["code"] == "OK"
    with unchanged(c):
        # the very same bytes again, after their commit
        expect_error(post_tx(http, first), 409, "NONCE_REPLAY")
        # a different transaction reusing a spent nonce
        expect_error(post_tx(http, enroll_tx(c, people.admin, nonce)), 409, "NONCE_REPLAY")
        expect_error(post_tx(http, enroll_tx(c, people.admin, 0)), 409, "NONCE_REPLAY")
        # a gap
        for ahead in (2, 10, 2**40):
            resp = post_tx(http, enroll_tx(c, people.admin, nonce + ahead))
            expect_error(resp, 400, "NONCE_GAP")
    # the replay did not commit twice: the hash is at its first height only
    doc = signed_get(http, people.admin, f"/api/v1/txs/{receipt['tx_hash']}").json()
    assert (doc["status"], doc["height"]) == ("committed", receipt["height"])
    assert post_tx(http, enroll_tx(c, people.admin, nonce + 1)).json()["code"] == "OK"


def test_unknown_identity(consortium: Consortium, people: People, http: httpx.Client) -> None:
    c = consortium
    stranger = PrivateKey.generate()
    with unchanged(c):
        resp = post_tx(http, enroll_tx(c, stranger, 0))
        expect_error(resp, 401, "UNKNOWN_IDENTITY")
        read = make_tx(
            stranger,
            chain_id=c.chain_id,
            nonce=0,
            kind=READ_RECORD,
            body=ReadRecordBody(record_id="r" + "0" * 32, purpose="treatment"),
        )
        expect_error(post_tx(http, read), 401, "UNKNOWN_IDENTITY")
        path = f"/api/v1/records?patient={people.patient.id}"
        expect_error(signed_get(http, stranger, path), 401, "UNKNOWN_IDENTITY")
        # through the CLI too
        key_file = c.work / "stranger.key"
        cli_json("keys", "new", "--out", key_file)
        r = run_cli(
            "record", "ls", "--patient", people.patient.id, "--node", c.api, "--as", key_file
        )
        assert_cli_error(r, "UNKNOWN_IDENTITY")


def test_suspended_identity(consortium: Consortium, people: People, http: httpx.Client) -> None:
    c = consortium
    victim = c.enroll("to-suspend", "clinician")
    # before: the identity acts normally
    path = f"/api/v1/records?patient={people.patient.id}"
    assert signed_get(http, victim.key, path).status_code == 200
    nonce = next_nonce(c, victim.key)
    r = cli_json(
        "identity",
        "suspend",
        "--id",
        victim.id,
        "--reason",
        "left the hospital",
        "--node",
        c.api,
        "--as",
        c.admin_key_file,
    )
    assert r["code"] == "OK"
    shown = cli_json("identity", "show", victim.id, "--node", c.api, "--as", c.admin_key_file)
    assert shown["status"] == "suspended"
    with unchanged(c):
        read = make_tx(
            victim.key,
            chain_id=c.chain_id,
            nonce=nonce,
            kind=READ_RECORD,
            body=ReadRecordBody(record_id="r" + "0" * 32, purpose="treatment"),
        )
        expect_error(post_tx(http, read), 401, "IDENTITY_SUSPENDED")
        expect_error(signed_get(http, victim.key, path), 401, "IDENTITY_SUSPENDED")
        resp = http.post(
            "/api/v1/storage/objects",
            content=b"",
            headers=signed_headers(victim.key, "POST", "/api/v1/storage/objects"),
        )
        expect_error(resp, 401, "IDENTITY_SUSPENDED")
        r2 = run_cli(
            "record",
            "ls",
            "--patient",
            people.patient.id,
            "--node",
            c.api,
            "--as",
            victim.key_file,
        )
        assert_cli_error(r2, "IDENTITY_SUSPENDED")
        # suspending twice is refused and changes nothing
        r2 = run_cli(
            "identity", "suspend", "--id", victim.id, "--node", c.api, "--as", c.admin_key_file
        )
        assert_cli_error(r2, "ALREADY_SUSPENDED")
        # a clinician may not suspend anyone
        r2 = run_cli(
            "identity",
            "suspend",
            "--id",
            people.patient.id,
            "--node",
            c.api,
            "--as",
            people.clinician.key_file,
        )
        assert_cli_error(r2, "NOT_AUTHORIZED")


# ---- signed API requests --------------------------------------------------------------------


def test_request_authentication(consortium: Consortium, people: People, http: httpx.Client) -> None:
    c = consortium
    key = people.patient.key
    path = f"/api/v1/records?patient={people.patient.id}"
    good = signed_headers(key, "GET", path)
    assert http.get(path, headers=good).status_code == 200

    def tweak(**changes: str) -> dict[str, str]:
        return {**good, **changes}

    sig = good[signing.H_SIG]
    bad_sig = sig[:-2] + ("00" if sig[-2:] != "00" else "11")
    an_hour_ago = time.time_ns() // 1_000_000 - 3_600_000
    stale = signing.sign_request(key, "GET", path, an_hour_ago, signing.body_hash(b""))
    other_path = f"/api/v1/records?patient={people.clinician.id}"
    with unchanged(c):
        expect_error(http.get(path), 401, "AUTH_REQUIRED")
        expect_error(
            http.get(path, headers=tweak(**{signing.H_SIG: bad_sig})), 401, "BAD_SIGNATURE"
        )
        expect_error(http.get(path, headers=tweak(**{signing.H_SIG: "zz"})), 401, "AUTH_MALFORMED")
        expect_error(http.get(path, headers=tweak(**{signing.H_KEY: "12"})), 401, "AUTH_MALFORMED")
        # headers signed for one request do not authorize another
        expect_error(http.get(other_path, headers=good), 401, "BAD_SIGNATURE")
        expect_error(http.get(path, headers=stale), 401, "AUTH_CLOCK_SKEW")
        # a body that is not the one signed
        resp = http.post(
            "/api/v1/custody/deposits",
            content=b'{"manifest_cid": "x", "sealed_key": "00"}',
            headers=signed_headers(key, "POST", "/api/v1/custody/deposits", b"{}"),
        )
        expect_error(resp, 401, "AUTH_BODY_MISMATCH")
        # the Python client turns the answer into a typed error
        with Client(c.api, PrivateKey.generate()) as stranger, pytest.raises(AuthError) as exc:
            stranger.list_records(people.patient.id)
        assert exc.value.code == "UNKNOWN_IDENTITY"


def test_http_status_codes(consortium: Consortium, people: People, http: httpx.Client) -> None:
    c = consortium
    patient = people.patient
    with unchanged(c):
        # 400
        expect_error(
            signed_get(http, patient.key, "/api/v1/records?patient=not-an-id"),
            400,
            "BAD_IDENTITY_ID",
        )
        expect_error(signed_get(http, patient.key, "/api/v1/txs/zz"), 400, "BAD_HASH")
        expect_error(signed_get(http, patient.key, "/api/v1/records/nope"), 400, "BAD_RECORD_ID")
        # 403: a researcher lists a patient's records; a patient reads another's audit trail
        expect_error(
            signed_get(http, people.researcher.key, f"/api/v1/records?patient={patient.id}"),
            403,
            "ACCESS_DENIED",
        )
        expect_error(
            signed_get(http, patient.key, f"/api/v1/audit?subject={people.clinician.id}"),
            403,
            "ACCESS_DENIED",
        )
        # 404
        expect_error(signed_get(http, patient.key, "/api/v1/txs/" + "ab" * 32), 404, "TX_NOT_FOUND")
        expect_error(
            signed_get(http, patient.key, "/api/v1/records/r" + "0" * 32), 404, "RECORD_NOT_FOUND"
        )
        expect_error(signed_get(http, patient.key, "/api/v1/blocks/999999"), 404, "BLOCK_NOT_FOUND")
        expect_error(http.get("/api/v1/no-such-thing"), 404, "NOT_FOUND")
        expect_error(http.delete("/api/v1/status"), 405, "METHOD_NOT_ALLOWED")
        # 409 is the replayed nonce (test_replayed_and_out_of_order_nonces)


def test_unknown_patient_is_not_echoed(
    consortium: Consortium, people: People, http: httpx.Client
) -> None:
    """A record about a patient that does not exist: refused without repeating the input."""
    c = consortium
    nonce = next_nonce(c, people.clinician.key)
    raw = make_tx(
        people.clinician.key,
        chain_id=c.chain_id,
        nonce=nonce,
        kind=REGISTER_RECORD,
        body=RegisterRecordBody(
            patient=PHI,
            type="note",
            content_hash=cid_for(PHI.encode()),
            size=10,
            chunk_count=1,
            shard_root=bytes(32),
            k=1,
            m=0,
            placement=["hospital-a"],
            custodians=["hospital-a"],
            threshold=1,
        ),
    )
    with unchanged(c):
        resp = post_tx(http, raw)
        assert resp.status_code == 400
        no_phi(resp)
        # and the node log never saw it either
        assert PHI not in (c.home / "node.log").read_text(errors="replace")


def test_batch_with_good_and_bad_transactions(
    consortium: Consortium, people: People, http: httpx.Client
) -> None:
    c = consortium
    admin = people.admin
    height0, hash0 = c.chain_state()
    n = next_nonce(c, admin)
    good1 = enroll_tx(c, admin, n)
    good2 = enroll_tx(c, admin, n + 1)
    sig = bytearray(enroll_tx(c, admin, n + 2))
    sig[0] ^= 0xFF
    batch = [
        good1,
        b"not a transaction",
        good1,  # duplicate while in the mempool
        enroll_tx(c, admin, n + 5),  # gap
        enroll_tx(c, admin, n + 2, chain_id="other-chain"),
        bytes(sig),
        good2,
        enroll_tx(c, PrivateKey.generate(), 0),
        enroll_tx(c, admin, n - 1),  # replay
    ]
    resp = http.post("/api/v1/txs", content=msgspec.msgpack.encode(batch), params={"wait": "true"})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == len(batch)
    outcome = [r["status"] if r["status"] != "rejected" else r["error"]["code"] for r in results]
    assert outcome == [
        "committed",
        "TX_MALFORMED",
        "TX_DUPLICATE",
        "NONCE_GAP",
        "WRONG_CHAIN",
        "BAD_SIGNATURE",
        "committed",
        "UNKNOWN_IDENTITY",
        "NONCE_REPLAY",
    ]
    assert results[0]["code"] == results[6]["code"] == "OK"
    assert results[0]["tx_hash"] == tx_hash(good1).hex()
    # exactly the two good transactions reached the chain
    assert sorted(committed_tx_hashes(c, admin, height0)) == sorted(
        [tx_hash(good1).hex(), tx_hash(good2).hex()]
    )
    assert c.chain_state()[1] != hash0
    assert next_nonce(c, admin) == n + 2
    # a batch that is not a msgpack array of byte strings
    with unchanged(c):
        for body in (b"garbage", msgspec.msgpack.encode([1, 2]), msgspec.msgpack.encode({"a": 1})):
            resp = http.post("/api/v1/txs", content=body)
            assert resp.status_code == 400
            assert resp.json()["error"]["code"] in {"DECODE_ERROR", "TX_MALFORMED"}
        assert http.post("/api/v1/txs", content=msgspec.msgpack.encode([])).json() == {
            "results": []
        }


def test_rejections_are_counted(consortium: Consortium, http: httpx.Client) -> None:
    with unchanged(consortium):
        expect_error(post_tx(http, PHI.encode() * 3), 400, "TX_MALFORMED")
        metrics = http.get("/metrics").text
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith("medledger_tx_rejected_total{") and 'code="TX_MALFORMED"' in x
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1
    assert PHI not in (consortium.home / "node.log").read_text(errors="replace")
