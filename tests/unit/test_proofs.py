"""ledger.proofs: audit proof bundles verified offline against signed headers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlhelpers import (
    PROPS,
    Chain,
    admin_key,
    key,
    make_commit,
    make_genesis,
    make_header,
    register_body,
)

from medledger.app.model import ENROLL, READ_RECORD, REGISTER_RECORD, EnrollBody, ReadRecordBody
from medledger.errors import IntegrityError, MedLedgerError
from medledger.ledger.block import Header, TxResult, Validator, result_leaf
from medledger.ledger.merkle import inclusion_proof, leaf_hash
from medledger.ledger.proofs import (
    MAGIC,
    AuditProofBundle,
    AuditProofEntry,
    SignedHeader,
    decode_bundle,
    encode_bundle,
    verify_bundle,
)
from medledger.ledger.tx import SignedTx

DOC = key("proof/doctor")
PAT = key("proof/patient")
NURSE = key("proof/researcher")


@dataclass
class Built:
    bundle: AuditProofBundle
    data: bytes
    validators: list[Validator]
    blocks: list[tuple[Header, list[SignedTx], list[TxResult]]]
    expected: list[tuple[int, int, str, str]]  # (height, index, action, actor)


def build(
    validator_names: Sequence[str] = ("val0",),
    signer_names: Sequence[str] | None = None,
    *,
    filler: int = 0,
) -> Built:
    """A few blocks produced as node.py produces them; the patient's proof bundle."""
    genesis = make_genesis(("alpha",), validator_names)
    validators = list(genesis.validators)
    signers = [key(f"validator/{n}") for n in (signer_names or validator_names)]
    chain = Chain(genesis)
    admin = admin_key("alpha")
    blocks: list[tuple[Header, list[SignedTx], list[TxResult]]] = []
    signed_headers: list[SignedHeader] = []
    prev = genesis.hash()

    def produce(txs: list[SignedTx]) -> None:
        nonlocal prev
        fin = chain.block(txs)
        header = make_header(
            genesis, chain.height, chain.time_ms, prev, txs, fin.results, fin.app_hash, validators
        )
        signed_headers.append(
            SignedHeader(header=header, commit=make_commit(header, signers), validators=validators)
        )
        blocks.append((header, txs, fin.results))
        prev = header.hash()

    produce(
        [
            chain.tx(admin, ENROLL, EnrollBody(id=DOC.id, role="clinician")),
            chain.tx(admin, ENROLL, EnrollBody(id=PAT.id, role="patient")),
            chain.tx(admin, ENROLL, EnrollBody(id=NURSE.id, role="researcher")),
        ]
    )
    # the key's one custodian: a validator institution of this genesis
    body = register_body(PAT.id, custodians=[validator_names[0]], threshold=1)
    reg = chain.tx(DOC, REGISTER_RECORD, body)
    fillers = [
        chain.tx(admin, ENROLL, EnrollBody(id=key(f"f{i}").id, role="patient"))
        for i in range(filler)
    ]
    produce([*fillers, reg])
    rid = blocks[-1][2][-1].data["record_id"]
    produce(
        [
            chain.tx(
                NURSE, READ_RECORD, ReadRecordBody(record_id=rid, purpose="research")
            ),  # denied
            chain.tx(PAT, READ_RECORD, ReadRecordBody(record_id=rid, purpose="patient-access")),
        ]
    )
    produce([chain.tx(DOC, READ_RECORD, ReadRecordBody(record_id=rid, purpose="treatment"))])
    produce(
        [chain.tx(admin, ENROLL, EnrollBody(id=key("other").id, role="patient"))]
    )  # not about PAT

    entries: list[AuditProofEntry] = []
    used: list[SignedHeader] = []
    expected: list[tuple[int, int, str, str]] = []
    for sh, (header, txs, results) in zip(signed_headers, blocks, strict=True):
        tx_leaves = [leaf_hash(t.raw) for t in txs]
        res_leaves = [leaf_hash(result_leaf(t.hash, r)) for t, r in zip(txs, results, strict=True)]
        hit = False
        for i, (t, r) in enumerate(zip(txs, results, strict=True)):
            evs = [e for e in r.events if e.subject == PAT.id]
            if not evs:
                continue
            hit = True
            entries.append(
                AuditProofEntry(
                    height=header.height,
                    tx_index=i,
                    tx=t.raw,
                    tx_path=inclusion_proof(tx_leaves, i),
                    result=r,
                    result_path=inclusion_proof(res_leaves, i),
                )
            )
            expected += [(header.height, i, e.action, e.actor) for e in evs]
        if hit:
            used.append(sh)
    bundle = AuditProofBundle(
        chain_id=genesis.chain_id,
        subject=PAT.id,
        headers=used,
        entries=entries,
    )
    return Built(bundle, encode_bundle(bundle), validators, blocks, expected)


SMALL = build()
LARGE = build(("v0", "v1", "v2", "v3"), ("v0", "v2", "v3"), filler=6)


def summary(events) -> list[tuple[int, int, str, str]]:  # type: ignore[no-untyped-def]
    return [(v.height, v.tx_index, v.event.action, v.event.actor) for v in events]


@pytest.mark.parametrize("built", [SMALL, LARGE], ids=["small", "large"])
def test_verify_returns_the_subjects_events(built: Built) -> None:
    events = verify_bundle(built.data)
    assert summary(events) == built.expected
    actions = [a for _, _, a, _ in built.expected]
    assert actions == ["enroll", "write", "read", "read", "read"]
    assert [v.event.outcome for v in events] == ["ok", "ok", "denied", "allowed", "allowed"]
    assert all(v.event.subject == PAT.id for v in events)
    heights = {h.height: h for h, _, _ in built.blocks}
    for v in events:
        header = heights[v.height]
        assert v.time_ms == header.time_ms
        _, txs, _ = built.blocks[v.height - 1]
        assert v.tx_hash == txs[v.tx_index].hash.hex()
    assert verify_bundle(built.data, trusted_validators=built.validators) == events
    assert decode_bundle(built.data) == built.bundle


def test_trusted_validators_mismatch() -> None:
    for trusted in (
        LARGE.validators,
        [],
        [
            Validator(name=v.name, id=v.id, public_key=v.public_key, power=v.power + 1)
            for v in SMALL.validators
        ],
    ):
        with pytest.raises(IntegrityError) as exc:
            verify_bundle(SMALL.data, trusted_validators=trusted)
        assert exc.value.code == "BAD_PROOF"


def test_self_signed_forgery_needs_trusted_validators() -> None:
    # A bundle signed by a made-up validator set is self-consistent; only pinning the
    # real validator set (trusted_validators) exposes it.
    forged = build(("mallory",))
    assert summary(verify_bundle(forged.data)) == forged.expected
    with pytest.raises(IntegrityError):
        verify_bundle(forged.data, trusted_validators=SMALL.validators)


def test_every_byte_flip_of_small_bundle_rejected() -> None:
    data = SMALL.data
    assert len(data) < 6000
    not_ours: list[tuple[int, int, str]] = []
    for pos in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[pos] ^= mask
            try:
                verify_bundle(bytes(bad))
            except MedLedgerError:
                continue
            except Exception as exc:  # any other exception type is a bug of its own
                not_ours.append((pos, mask, type(exc).__name__))
                continue
            pytest.fail(f"flipping byte {pos} with {mask:#x} still verifies")
    assert not_ours == []


@PROPS
@given(st.integers(0, len(LARGE.data) - 1), st.integers(1, 255))
def test_byte_flip_of_large_bundle_rejected(pos: int, mask: int) -> None:
    bad = bytearray(LARGE.data)
    bad[pos] ^= mask
    with pytest.raises(MedLedgerError):
        verify_bundle(bytes(bad))


def test_truncation_and_appended_bytes() -> None:
    data = SMALL.data
    for cut in range(len(data)):
        with pytest.raises(MedLedgerError):
            verify_bundle(data[:cut])
    for extra in (b"\x00", b"\xc0", data[-1:], data):
        with pytest.raises(IntegrityError) as exc:
            verify_bundle(data + extra)
        assert exc.value.code == "BAD_PROOF"
    with pytest.raises(IntegrityError):
        verify_bundle(b"MLPROOF2" + data[len(MAGIC) :])


def rebuilt(**changes) -> bytes:  # type: ignore[no-untyped-def]
    return encode_bundle(msgspec.structs.replace(SMALL.bundle, **changes))


def bad_proof(data: bytes) -> None:
    with pytest.raises(MedLedgerError):
        verify_bundle(data)


def test_semantic_checks() -> None:
    b = SMALL.bundle
    e = b.entries
    h = b.headers
    bad_proof(rebuilt(entries=[e[1], e[0], *e[2:]]))  # out of order
    bad_proof(rebuilt(entries=[e[0], e[0], *e[1:]]))  # repeated
    bad_proof(rebuilt(entries=e[1:]))  # a header no entry uses
    bad_proof(rebuilt(headers=h[1:]))  # an entry without its header
    bad_proof(rebuilt(headers=[h[0], *h]))  # a repeated header
    bad_proof(rebuilt(subject=NURSE.id))  # entries not about the subject
    bad_proof(rebuilt(subject=DOC.id))
    bad_proof(rebuilt(chain_id="other-chain"))
    # a header whose validator set is swapped for another
    h0 = msgspec.structs.replace(h[0], validators=LARGE.validators)
    bad_proof(rebuilt(headers=[h0, *h[1:]]))
    # an entry pointing at another transaction of the same block
    e0 = e[0]
    other_index = msgspec.structs.replace(e0, tx_index=0 if e0.tx_index else 1)
    bad_proof(rebuilt(entries=[other_index, *e[1:]]))
    # a result rewritten to look allowed
    denied = next(x for x in e if x.result.code == "ACCESS_DENIED")
    fake = TxResult(
        code="OK",
        message="",
        events=[msgspec.structs.replace(ev, outcome="allowed") for ev in denied.result.events],
        data={**denied.result.data, "outcome": "allowed"},
    )
    bad_proof(
        rebuilt(entries=[msgspec.structs.replace(x, result=fake) if x is denied else x for x in e])
    )
    # a commit without quorum
    weak = [
        msgspec.structs.replace(sh, commit=msgspec.structs.replace(sh.commit, signatures=[]))
        for sh in h
    ]
    bad_proof(rebuilt(headers=weak))
    # an empty bundle verifies to nothing (there is nothing to prove)
    assert verify_bundle(rebuilt(headers=[], entries=[])) == []


def test_event_actor_must_be_the_sender() -> None:
    # Build a block whose result claims an actor other than the tx sender: the result
    # tree commits to it, so only the actor check can catch it.
    built = SMALL
    entry = built.bundle.entries[1]
    forged_result = TxResult(
        code=entry.result.code,
        message=entry.result.message,
        events=[msgspec.structs.replace(ev, actor=NURSE.id) for ev in entry.result.events],
        data=entry.result.data,
    )
    header, txs, results = built.blocks[entry.height - 1]
    results = [forged_result if i == entry.tx_index else r for i, r in enumerate(results)]
    genesis = make_genesis(("alpha",))
    new_header = make_header(
        genesis,
        header.height,
        header.time_ms,
        header.prev_hash,
        txs,
        results,
        header.app_hash,
        built.validators,
    )
    res_leaves = [leaf_hash(result_leaf(t.hash, r)) for t, r in zip(txs, results, strict=True)]
    new_entry = msgspec.structs.replace(
        entry, result=forged_result, result_path=inclusion_proof(res_leaves, entry.tx_index)
    )
    sh = SignedHeader(
        header=new_header,
        commit=make_commit(new_header, [key("validator/val0")]),
        validators=built.validators,
    )
    headers = [sh if x.header.height == entry.height else x for x in built.bundle.headers]
    entries = [new_entry if x is entry else x for x in built.bundle.entries]
    with pytest.raises(IntegrityError) as exc:
        verify_bundle(rebuilt(headers=headers, entries=entries))
    assert exc.value.code == "BAD_PROOF"
