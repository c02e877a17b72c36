"""custody: the local custodian and the release gate."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from mlhelpers import World, key

from medledger.app.model import READ_RECORD, ReadRecordBody
from medledger.crypto.cid import cid_for
from medledger.crypto.keys import seal_to, unseal
from medledger.custody import AccessProof, LocalCustodian, check_release
from medledger.errors import AuthError, Conflict, Forbidden, InvalidInput, MedLedgerError, NotFound
from medledger.ledger.block import TxResult
from medledger.ledger.tx import Tx

NODE = key("custodian-node")
OWNER = key("record-owner")
READER = key("reader")
DATA_KEY = bytes(range(32))
MANIFEST = cid_for(b"a manifest")


@pytest.fixture
def custodian(tmp_path: Path) -> LocalCustodian:
    return LocalCustodian(tmp_path / "custody", NODE)


def test_deposit_release_round_trip(custodian: LocalCustodian) -> None:
    assert custodian.public_key == NODE.public_key
    assert not custodian.has(OWNER.id, MANIFEST)
    custodian.deposit(OWNER.id, MANIFEST, seal_to(custodian.public_key, DATA_KEY))
    assert custodian.has(OWNER.id, MANIFEST)
    assert not custodian.has(READER.id, MANIFEST)
    path = custodian.root / OWNER.id / MANIFEST
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DATA_KEY not in path.read_bytes()  # sealed at rest
    released = custodian.release(OWNER.id, MANIFEST, READER.public_key)
    assert unseal(READER, released) == DATA_KEY
    with pytest.raises(AuthError) as exc:  # sealed to the requester only
        unseal(NODE, released)
    assert exc.value.code == "UNSEAL_FAILED"
    # a custodian restarted on the same directory still releases
    again = LocalCustodian(custodian.root, NODE)
    assert unseal(OWNER, again.release(OWNER.id, MANIFEST, OWNER.public_key)) == DATA_KEY


def test_deposit_is_idempotent_but_never_replaced(custodian: LocalCustodian) -> None:
    sealed = seal_to(custodian.public_key, DATA_KEY)
    custodian.deposit(OWNER.id, MANIFEST, sealed)
    custodian.deposit(OWNER.id, MANIFEST, sealed)  # exact retry
    custodian.deposit(OWNER.id, MANIFEST, seal_to(custodian.public_key, DATA_KEY))  # re-sealed
    with pytest.raises(Conflict) as exc:
        custodian.deposit(OWNER.id, MANIFEST, seal_to(custodian.public_key, bytes(32)))
    assert exc.value.code == "KEY_ALREADY_DEPOSITED"
    released = custodian.release(OWNER.id, MANIFEST, READER.public_key)
    assert unseal(READER, released) == DATA_KEY


def test_deposit_not_sealed_to_custodian(custodian: LocalCustodian) -> None:
    with pytest.raises(AuthError) as exc:
        custodian.deposit(OWNER.id, MANIFEST, seal_to(OWNER.public_key, DATA_KEY))
    assert exc.value.code == "UNSEAL_FAILED"
    with pytest.raises(AuthError) as exc:
        custodian.deposit(OWNER.id, MANIFEST, DATA_KEY)
    assert exc.value.code == "UNSEAL_FAILED"
    assert not custodian.has(OWNER.id, MANIFEST)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_deposit_wrong_key_size(custodian: LocalCustodian, size: int) -> None:
    with pytest.raises(InvalidInput) as exc:
        custodian.deposit(OWNER.id, MANIFEST, seal_to(custodian.public_key, b"k" * size))
    assert exc.value.code == "BAD_DEPOSIT"
    assert not custodian.has(OWNER.id, MANIFEST)


@pytest.mark.parametrize(
    ("depositor", "cid"),
    [
        ("../../x", MANIFEST),
        (OWNER.id, "../x"),
        ("", MANIFEST),
        (OWNER.id, ""),
        (OWNER.id.upper(), MANIFEST),
    ],
)
def test_deposit_bad_identifiers(custodian: LocalCustodian, depositor: str, cid: str) -> None:
    sealed = seal_to(custodian.public_key, DATA_KEY)
    with pytest.raises(InvalidInput) as exc:
        custodian.deposit(depositor, cid, sealed)
    assert exc.value.code == "BAD_DEPOSIT"
    with pytest.raises(InvalidInput):
        custodian.release(depositor, cid, READER.public_key)


def test_release_without_deposit(custodian: LocalCustodian) -> None:
    with pytest.raises(NotFound) as exc:
        custodian.release(OWNER.id, MANIFEST, READER.public_key)
    assert exc.value.code == "KEY_NOT_FOUND"
    custodian.deposit(OWNER.id, MANIFEST, seal_to(custodian.public_key, DATA_KEY))
    with pytest.raises(NotFound) as exc:  # keyed by depositor and manifest
        custodian.release(READER.id, MANIFEST, READER.public_key)
    assert exc.value.code == "KEY_NOT_FOUND"
    with pytest.raises(NotFound):
        custodian.release(OWNER.id, cid_for(b"other"), READER.public_key)


def test_other_custodian_cannot_release(custodian: LocalCustodian, tmp_path: Path) -> None:
    custodian.deposit(OWNER.id, MANIFEST, seal_to(custodian.public_key, DATA_KEY))
    thief = LocalCustodian(custodian.root, key("other-node"))
    with pytest.raises(AuthError) as exc:
        thief.release(OWNER.id, MANIFEST, READER.public_key)
    assert exc.value.code == "UNSEAL_FAILED"


# ---- release gate ------------------------------------------------------------------------------

TTL = 10 * 60 * 1000


def access_proof(
    world: World, reader: str, purpose: str = "treatment", **kw
) -> tuple[AccessProof, str]:  # type: ignore[no-untyped-def]
    chain = world.chain
    stx = chain.tx(
        world[reader], READ_RECORD, ReadRecordBody(record_id=world.record_id, purpose=purpose)
    )
    fin = chain.block([stx])
    fields = dict(
        tx=stx.tx, result=fin.results[0], block_time_ms=chain.time_ms, latest_time_ms=chain.time_ms
    )
    fields.update(kw)
    return AccessProof(**fields), world[reader].id


def test_gate_allows_committed_allowed_read(world: World) -> None:
    proof, requester = access_proof(world, "alpha.clinician")
    check_release(proof, record_id=world.record_id, requester=requester, ttl_ms=TTL)
    # at exactly the TTL it is still valid
    late = AccessProof(proof.tx, proof.result, proof.block_time_ms, proof.block_time_ms + TTL)
    check_release(late, record_id=world.record_id, requester=requester, ttl_ms=TTL)


def gate_error(proof: AccessProof, record_id: str, requester: str) -> str:
    with pytest.raises(Forbidden) as exc:
        check_release(proof, record_id=record_id, requester=requester, ttl_ms=TTL)
    return exc.value.code


def test_gate_wrong_sender_or_record(world: World) -> None:
    proof, requester = access_proof(world, "alpha.clinician")
    assert gate_error(proof, world.record_id, world["alpha.patient"].id) == "ACCESS_EVENT_MISMATCH"
    assert gate_error(proof, "r" + "0" * 32, requester) == "ACCESS_EVENT_MISMATCH"
    other = world.chain.register(world["alpha.clinician"], world["alpha.patient"], type="lab")
    assert gate_error(proof, other.data["record_id"], requester) == "ACCESS_EVENT_MISMATCH"


def test_gate_wrong_kind(world: World) -> None:
    proof, requester = access_proof(world, "alpha.clinician")
    tx = proof.tx
    as_register = Tx(
        chain_id=tx.chain_id, sender=tx.sender, nonce=tx.nonce, kind="record.register", body=tx.body
    )
    bad = AccessProof(as_register, proof.result, proof.block_time_ms, proof.latest_time_ms)
    assert gate_error(bad, world.record_id, requester) == "ACCESS_EVENT_MISMATCH"


@pytest.mark.parametrize(
    "reader", ["alpha.researcher", "beta.clinician", "alpha.insurer", "alpha.patient2"]
)
def test_gate_denied_read(world: World, reader: str) -> None:
    proof, requester = access_proof(world, reader)
    assert proof.result.code == "ACCESS_DENIED"
    assert gate_error(proof, world.record_id, requester) == "ACCESS_DENIED"


def test_gate_failed_or_forged_result(world: World) -> None:
    proof, requester = access_proof(world, "alpha.clinician")
    for result in (
        TxResult(code="RECORD_NOT_FOUND", message="", events=[], data={}),
        TxResult(code="OK", message="", events=[], data={}),  # ok but no "allowed" outcome
        TxResult(code="OK", message="", events=[], data={"outcome": "denied"}),
        TxResult(code="ACCESS_DENIED", message="", events=[], data={"outcome": "allowed"}),
    ):
        bad = AccessProof(proof.tx, result, proof.block_time_ms, proof.latest_time_ms)
        assert gate_error(bad, world.record_id, requester) == "ACCESS_DENIED"


def test_gate_expired(world: World) -> None:
    proof, requester = access_proof(world, "alpha.patient")
    late = AccessProof(proof.tx, proof.result, proof.block_time_ms, proof.block_time_ms + TTL + 1)
    assert gate_error(late, world.record_id, requester) == "ACCESS_EXPIRED"
    with pytest.raises(Forbidden) as exc:
        check_release(proof, record_id=world.record_id, requester=requester, ttl_ms=-1)
    assert exc.value.code == "ACCESS_EXPIRED"


def test_gate_malformed_body(world: World) -> None:
    proof, requester = access_proof(world, "alpha.clinician")
    tx = proof.tx
    junk = Tx(chain_id=tx.chain_id, sender=tx.sender, nonce=tx.nonce, kind=tx.kind, body=b"\xc1")
    with pytest.raises(MedLedgerError):
        check_release(
            AccessProof(junk, proof.result, proof.block_time_ms, proof.latest_time_ms),
            record_id=world.record_id,
            requester=requester,
            ttl_ms=TTL,
        )
