"""ledger.block: headers, commit votes, commit verification."""

from __future__ import annotations

import msgspec
import pytest
from mlhelpers import CHAIN_ID, key, validator

from medledger.codec import decode_canonical, encode
from medledger.crypto.hashing import sha256
from medledger.errors import IntegrityError
from medledger.ledger.block import (
    Commit,
    CommitSig,
    Header,
    TxResult,
    result_leaf,
    sign_commit_vote,
    validators_hash,
)
from medledger.ledger.block import verify_commit as _verify_commit

NAMES = ["v0", "v1", "v2", "v3"]
VALS = [validator(n) for n in NAMES]
KEYS = [key(f"validator/{n}") for n in NAMES]


def header(height: int = 5, vals=VALS, **kw) -> Header:  # type: ignore[no-untyped-def]
    fields = dict(
        chain_id=CHAIN_ID,
        height=height,
        time_ms=1_700_000_000_000 + height,
        prev_hash=sha256(b"prev"),
        tx_root=sha256(b"txs"),
        results_root=sha256(b"results"),
        app_hash=sha256(b"app"),
        validators_hash=validators_hash(vals),
        proposer=KEYS[0].id,
        tx_count=3,
    )
    fields.update(kw)
    return Header(**fields)


def commit(h: Header, signers, round_: int = 0) -> Commit:  # type: ignore[no-untyped-def]
    return Commit(
        height=h.height,
        round=round_,
        block_hash=h.hash(),
        signatures=[sign_commit_vote(k, CHAIN_ID, h, round_, h.time_ms + 1) for k in signers],
    )


def verify_commit(h: Header, c: Commit, vals=VALS) -> None:  # type: ignore[no-untyped-def]
    _verify_commit(h, c, vals)


def bad_commit(h: Header, c: Commit, vals=VALS) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IntegrityError) as exc:
        _verify_commit(h, c, vals)
    assert exc.value.code == "BAD_COMMIT"


def test_header_hash_covers_every_field() -> None:
    h = header()
    assert decode_canonical(encode(h), Header) == h
    changes = dict(
        chain_id="other",
        height=6,
        time_ms=1,
        prev_hash=sha256(b"x"),
        tx_root=sha256(b"x"),
        results_root=sha256(b"x"),
        app_hash=sha256(b"x"),
        validators_hash=sha256(b"x"),
        proposer="someone",
        tx_count=4,
    )
    assert set(changes) == set(Header.__struct_fields__)
    for field, value in changes.items():
        assert msgspec.structs.replace(h, **{field: value}).hash() != h.hash(), field


@pytest.mark.parametrize("signers", [KEYS, KEYS[:3], KEYS[1:], [KEYS[3], KEYS[0], KEYS[2]]])
def test_commit_with_quorum_verifies(signers) -> None:  # type: ignore[no-untyped-def]
    h = header()
    verify_commit(h, commit(h, signers))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_commit_missing_power(n: int) -> None:
    h = header()
    bad_commit(h, commit(h, KEYS[:n]))


def test_weighted_power() -> None:
    vals = [validator("v0", 5), validator("v1", 1), validator("v2", 1), validator("v3", 1)]
    h = header(vals=vals)
    bad_commit(h, commit(h, KEYS[:1]), vals)  # 5 of 8: 15 <= 16
    verify_commit(h, commit(h, KEYS[:2]), vals)  # 6 of 8: 18 > 16


def test_weighted_power_thresholds() -> None:
    vals = [validator("v0", 6), validator("v1", 1), validator("v2", 1), validator("v3", 1)]
    h = header(vals=vals)
    # total 9: 6 is exactly 2/3 (not more) -> fails; 7 passes
    bad_commit(h, commit(h, KEYS[:1]), vals)
    verify_commit(h, commit(h, KEYS[:2]), vals)
    bad_commit(h, commit(h, KEYS[1:]), vals)  # 3 of 9


def test_commit_for_another_header() -> None:
    h = header()
    other = header(app_hash=sha256(b"other app"))
    c = commit(other, KEYS)
    bad_commit(h, c)
    # block_hash right but height wrong
    c2 = Commit(
        height=h.height + 1, round=0, block_hash=h.hash(), signatures=commit(h, KEYS).signatures
    )
    bad_commit(h, c2)
    # signatures over another header, relabelled with this header's hash
    c3 = Commit(height=h.height, round=0, block_hash=h.hash(), signatures=c.signatures)
    bad_commit(h, c3)


def test_commit_other_round_or_chain() -> None:
    h = header()
    c = commit(h, KEYS, round_=1)
    verify_commit(h, c)
    relabelled = Commit(height=c.height, round=0, block_hash=c.block_hash, signatures=c.signatures)
    bad_commit(h, relabelled)
    foreign = [sign_commit_vote(k, "other-chain", h, 0, 1) for k in KEYS]
    bad_commit(h, Commit(height=h.height, round=0, block_hash=h.hash(), signatures=foreign))


def test_duplicated_signer() -> None:
    h = header()
    c = commit(h, KEYS[:2])
    dup = Commit(
        height=c.height,
        round=0,
        block_hash=c.block_hash,
        signatures=[*c.signatures, c.signatures[0]],
    )
    bad_commit(h, dup)
    # even with a genuine second vote at another time
    again = sign_commit_vote(KEYS[0], CHAIN_ID, h, 0, h.time_ms + 99)
    bad_commit(
        h,
        Commit(
            height=c.height,
            round=0,
            block_hash=c.block_hash,
            signatures=[*commit(h, KEYS[:2]).signatures, again],
        ),
    )


def test_unknown_signer_and_key_mismatch() -> None:
    h = header()
    outsider = key("outsider")
    c = commit(h, [*KEYS[:3], outsider])
    bad_commit(h, c)
    sigs = commit(h, KEYS).signatures
    wrong_pk = CommitSig(
        validator=sigs[0].validator,
        public_key=KEYS[1].public_key.raw,
        time_ms=sigs[0].time_ms,
        signature=sigs[0].signature,
    )
    bad_commit(
        h, Commit(height=h.height, round=0, block_hash=h.hash(), signatures=[wrong_pk, *sigs[1:]])
    )


def test_tampered_signature_or_time() -> None:
    h = header()
    sigs = commit(h, KEYS).signatures
    s = sigs[0]
    flipped = bytearray(s.signature)
    flipped[10] ^= 1
    for forged in (
        CommitSig(
            validator=s.validator,
            public_key=s.public_key,
            time_ms=s.time_ms,
            signature=bytes(flipped),
        ),
        CommitSig(
            validator=s.validator,
            public_key=s.public_key,
            time_ms=s.time_ms + 1,
            signature=s.signature,
        ),
        CommitSig(validator=s.validator, public_key=s.public_key, time_ms=s.time_ms, signature=b""),
    ):
        bad_commit(
            h, Commit(height=h.height, round=0, block_hash=h.hash(), signatures=[forged, *sigs[1:]])
        )


def test_wrong_validator_set() -> None:
    h = header()
    c = commit(h, KEYS)
    bad_commit(h, c, VALS[:3])
    bad_commit(h, c, [*VALS[:3], validator("v3", 2)])
    bad_commit(h, c, list(reversed(VALS)))
    bad_commit(h, c, [*VALS, validator("v4")])


def test_result_leaf_binds_hash_and_result() -> None:
    r = TxResult(code="OK", message="", events=[], data={"a": "b"})
    h1, h2 = sha256(b"1"), sha256(b"2")
    assert result_leaf(h1, r) != result_leaf(h2, r)
    r2 = TxResult(code="OK", message="", events=[], data={"a": "c"})
    assert result_leaf(h1, r) != result_leaf(h1, r2)
    assert r.ok and not TxResult(code="X", message="", events=[], data={}).ok
