"""custody: the local custodian of key shares, and the release gate."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from mlhelpers import World, grant_body, key

from medledger.app.access import Decision
from medledger.app.model import (
    ERASE_APPROVE,
    ERASE_REQUEST,
    GRANT_CONSENT,
    READ_RECORD,
    REVOKE_CONSENT,
    EraseApproveBody,
    EraseRequestBody,
    ReadRecordBody,
    RevokeConsentBody,
)
from medledger.codec import decode, encode
from medledger.crypto.cid import cid_for
from medledger.crypto.keys import seal_to, unseal
from medledger.custody import (
    AccessProof,
    KeyShare,
    LocalCustodian,
    check_decision,
    check_release,
    split_key,
)
from medledger.errors import AuthError, Conflict, Forbidden, InvalidInput, MedLedgerError, NotFound
from medledger.ledger.block import TxResult
from medledger.ledger.tx import Tx

NODE = key("custodian-node")
OWNER = key("record-owner")
READER = key("reader")
DATA_KEY = bytes(range(32))
SHARES = split_key(DATA_KEY, 3, 4)
SHARE = SHARES[1]  # x = 2
MANIFEST = cid_for(b"a manifest")


@pytest.fixture
def custodian(tmp_path: Path) -> LocalCustodian:
    return LocalCustodian(tmp_path / "custody", NODE)


def sealed(share: KeyShare, to: LocalCustodian) -> bytes:
    return seal_to(to.public_key, encode(share))


def test_deposit_release_round_trip(custodian: LocalCustodian) -> None:
    assert custodian.public_key == NODE.public_key
    assert not custodian.has(OWNER.id, MANIFEST)
    kept = custodian.deposit(OWNER.id, MANIFEST, sealed(SHARE, custodian), index=2, threshold=3)
    assert kept == SHARE
    assert custodian.has(OWNER.id, MANIFEST)
    assert not custodian.has(READER.id, MANIFEST)
    path = custodian.root / OWNER.id / MANIFEST
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert SHARE.hi not in raw and SHARE.lo not in raw and DATA_KEY not in raw  # sealed at rest
    released = custodian.release(OWNER.id, MANIFEST, READER.public_key)
    assert decode(unseal(READER, released), KeyShare) == SHARE
    with pytest.raises(AuthError) as exc:  # sealed to the requester only
        unseal(NODE, released)
    assert exc.value.code == "UNSEAL_FAILED"
    # a custodian restarted on the same directory still releases
    again = LocalCustodian(custodian.root, NODE)
    assert decode(unseal(OWNER, again.release(OWNER.id, MANIFEST, OWNER.public_key)), KeyShare) == (
        SHARE
    )


def test_a_custodian_holds_a_share_not_the_key(custodian: LocalCustodian) -> None:
    custodian.deposit(OWNER.id, MANIFEST, sealed(SHARE, custodian))
    # what the custodian can open with its own key is one share: not the key, nor half of it
    held = decode(unseal(NODE, (custodian.root / OWNER.id / MANIFEST).read_bytes()), KeyShare)
    assert held == SHARE
    assert DATA_KEY[:16] not in (held.hi, held.lo) and DATA_KEY[16:] not in (held.hi, held.lo)


def test_deposit_is_idempotent_but_never_replaced(custodian: LocalCustodian) -> None:
    once = sealed(SHARE, custodian)
    custodian.deposit(OWNER.id, MANIFEST, once)
    custodian.deposit(OWNER.id, MANIFEST, once)  # exact retry
    custodian.deposit(OWNER.id, MANIFEST, sealed(SHARE, custodian))  # re-sealed
    for other in (SHARES[2], split_key(DATA_KEY, 3, 4)[1]):  # another x; another split
        with pytest.raises(Conflict) as exc:
            custodian.deposit(OWNER.id, MANIFEST, sealed(other, custodian))
        assert exc.value.code == "KEY_ALREADY_DEPOSITED"
    released = custodian.release(OWNER.id, MANIFEST, READER.public_key)
    assert decode(unseal(READER, released), KeyShare) == SHARE


def test_deposit_not_sealed_to_custodian(custodian: LocalCustodian) -> None:
    with pytest.raises(AuthError) as exc:
        custodian.deposit(OWNER.id, MANIFEST, seal_to(OWNER.public_key, encode(SHARE)))
    assert exc.value.code == "UNSEAL_FAILED"
    with pytest.raises(AuthError) as exc:
        custodian.deposit(OWNER.id, MANIFEST, encode(SHARE))
    assert exc.value.code == "UNSEAL_FAILED"
    assert not custodian.has(OWNER.id, MANIFEST)


@pytest.mark.parametrize(
    "plain",
    [
        DATA_KEY,  # a whole key is not a share
        b"",
        encode(KeyShare(index=1, threshold=2, hi=b"h" * 15, lo=b"l" * 16)),
        encode(KeyShare(index=1, threshold=2, hi=b"h" * 16, lo=b"l" * 17)),
        encode(KeyShare(index=0, threshold=2, hi=b"h" * 16, lo=b"l" * 16)),
        encode(KeyShare(index=1, threshold=0, hi=b"h" * 16, lo=b"l" * 16)),
        encode(SHARE) + b"\x00",
    ],
)
def test_deposit_that_is_not_a_key_share(custodian: LocalCustodian, plain: bytes) -> None:
    with pytest.raises(InvalidInput) as exc:
        custodian.deposit(OWNER.id, MANIFEST, seal_to(custodian.public_key, plain))
    assert exc.value.code == "BAD_DEPOSIT"
    assert not custodian.has(OWNER.id, MANIFEST)


@pytest.mark.parametrize(("index", "threshold"), [(1, 3), (3, 3), (2, 2), (2, 4)])
def test_deposit_at_the_wrong_place(custodian: LocalCustodian, index: int, threshold: int) -> None:
    """The deposit names where this custodian's share stands (x, threshold): a share of
    another place is refused."""
    with pytest.raises(InvalidInput) as exc:
        custodian.deposit(
            OWNER.id, MANIFEST, sealed(SHARE, custodian), index=index, threshold=threshold
        )
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
    with pytest.raises(InvalidInput) as exc:
        custodian.deposit(depositor, cid, sealed(SHARE, custodian))
    assert exc.value.code == "BAD_DEPOSIT"
    with pytest.raises(InvalidInput):
        custodian.release(depositor, cid, READER.public_key)
    with pytest.raises(InvalidInput):
        custodian.delete(depositor, cid)


def test_release_without_deposit(custodian: LocalCustodian) -> None:
    with pytest.raises(NotFound) as exc:
        custodian.release(OWNER.id, MANIFEST, READER.public_key)
    assert exc.value.code == "KEY_NOT_FOUND"
    custodian.deposit(OWNER.id, MANIFEST, sealed(SHARE, custodian))
    with pytest.raises(NotFound) as exc:  # keyed by depositor and manifest
        custodian.release(READER.id, MANIFEST, READER.public_key)
    assert exc.value.code == "KEY_NOT_FOUND"
    with pytest.raises(NotFound):
        custodian.release(OWNER.id, cid_for(b"other"), READER.public_key)


def test_other_custodian_cannot_release(custodian: LocalCustodian, tmp_path: Path) -> None:
    custodian.deposit(OWNER.id, MANIFEST, sealed(SHARE, custodian))
    thief = LocalCustodian(custodian.root, key("other-node"))
    with pytest.raises(AuthError) as exc:
        thief.release(OWNER.id, MANIFEST, READER.public_key)
    assert exc.value.code == "UNSEAL_FAILED"


def test_delete_shreds_the_share_and_is_idempotent(custodian: LocalCustodian) -> None:
    other = cid_for(b"another manifest")
    custodian.deposit(OWNER.id, MANIFEST, sealed(SHARE, custodian))
    custodian.deposit(OWNER.id, other, sealed(SHARES[0], custodian))
    assert custodian.delete(OWNER.id, MANIFEST) is True
    assert not custodian.has(OWNER.id, MANIFEST)
    assert not (custodian.root / OWNER.id / MANIFEST).exists()
    with pytest.raises(NotFound) as exc:
        custodian.release(OWNER.id, MANIFEST, READER.public_key)
    assert exc.value.code == "KEY_NOT_FOUND"
    assert custodian.delete(OWNER.id, MANIFEST) is False  # again: no error
    assert custodian.delete(READER.id, MANIFEST) is False  # never held: no error
    # the depositor's other shares stay; deleting the last removes its directory
    assert decode(unseal(READER, custodian.release(OWNER.id, other, READER.public_key)), KeyShare)
    assert custodian.delete(OWNER.id, other) is True
    assert not (custodian.root / OWNER.id).exists()
    # a fresh deposit after an erasure is a new deposit, not a conflict
    custodian.deposit(OWNER.id, MANIFEST, sealed(SHARES[3], custodian))
    assert custodian.has(OWNER.id, MANIFEST)


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


# ---- the policy, evaluated again at release time -----------------------------------------------


def test_decision_refuses_what_the_policy_denies() -> None:
    check_decision(Decision(True, "the patient's own record", "patient_self"))
    with pytest.raises(Forbidden) as exc:
        check_decision(Decision(False, "no care relationship or consent", "no_relationship"))
    assert exc.value.code == "ACCESS_DENIED"
    assert "no_relationship" in exc.value.message


def release_checks(world: World, proof: AccessProof, reader: str) -> None:
    """What a custodian checks: the committed access event (pure), then the policy on
    the committed state now (as ``Node.check_gate`` does)."""
    chain = world.chain
    check_release(proof, record_id=world.record_id, requester=world[reader].id, ttl_ms=TTL)
    ident = chain.app.query_identity(world[reader].id)
    assert ident is not None
    body = decode(proof.tx.body, ReadRecordBody)
    check_decision(chain.app.evaluate_read(ident, body, chain.time_ms))


def test_revoked_consent_refuses_release_of_an_allowed_read(world: World) -> None:
    chain = world.chain
    patient, reader = world["alpha.patient"], world["beta.clinician"]
    granted = chain.run(patient, GRANT_CONSENT, grant_body(patient.id, reader.id))
    assert granted.ok, granted
    proof, _ = access_proof(world, "beta.clinician")
    assert proof.result.data["outcome"] == "allowed"
    release_checks(world, proof, "beta.clinician")
    revoked = chain.run(
        patient, REVOKE_CONSENT, RevokeConsentBody(consent_id=granted.data["consent_id"])
    )
    assert revoked.ok, revoked
    # the access event is still committed, allowed and recent ...
    check_release(proof, record_id=world.record_id, requester=reader.id, ttl_ms=TTL)
    # ... but the policy on the committed state now denies it, and names its rule
    with pytest.raises(Forbidden) as exc:
        release_checks(world, proof, "beta.clinician")
    assert exc.value.code == "ACCESS_DENIED"
    ident = chain.app.query_identity(reader.id)
    assert ident is not None
    decision = chain.app.evaluate_read(ident, decode(proof.tx.body, ReadRecordBody), chain.time_ms)
    assert not decision.allowed and decision.rule and decision.rule in exc.value.message


def test_erasure_refuses_release_and_names_what_to_shred(world: World) -> None:
    chain = world.chain
    proof, _ = access_proof(world, "alpha.patient", purpose="patient-access")
    release_checks(world, proof, "alpha.patient")
    request = EraseRequestBody(record_id=world.record_id, reason="right to be forgotten")
    assert chain.run(world["alpha.patient"], ERASE_REQUEST, request).ok
    approved = chain.run(
        world["alpha.admin"], ERASE_APPROVE, EraseApproveBody(record_id=world.record_id)
    )
    assert approved.ok, approved
    # what every custodian deletes when this result commits (Node -> custody.on_block)
    assert approved.data["status"] == "erased"
    assert approved.data["creator"] == world["alpha.clinician"].id
    assert approved.data["manifest_cid"] and approved.data["record_id"] == world.record_id
    with pytest.raises(Forbidden) as exc:  # even the patient's own, earlier allowed read
        release_checks(world, proof, "alpha.patient")
    assert exc.value.code == "ACCESS_DENIED"
