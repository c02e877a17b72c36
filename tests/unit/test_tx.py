"""ledger.tx: envelopes, decoding, sender derivation, signatures."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlhelpers import CHAIN_ID, PROPS, key

from medledger.app.model import EnrollBody
from medledger.codec import decode, encode
from medledger.errors import AuthError, InvalidTransaction, MedLedgerError
from medledger.ledger.tx import (
    MAX_TX_BYTES,
    TX_DOMAIN,
    Tx,
    decode_envelope,
    make_tx,
    sign_tx,
    tx_hash,
)

ALICE = key("alice")
BOB = key("bob")


def sample(nonce: int = 0, body: object = None) -> bytes:
    return make_tx(
        ALICE,
        chain_id=CHAIN_ID,
        nonce=nonce,
        kind="identity.enroll",
        body=body if body is not None else EnrollBody(id=BOB.id, role="clinician"),
    )


def test_round_trip() -> None:
    raw = sample(nonce=7)
    stx = decode_envelope(raw)
    stx.verify_signature()
    assert stx.raw == raw
    assert stx.hash == tx_hash(raw) == hashlib.sha256(raw).digest()
    assert stx.tx == Tx(
        chain_id=CHAIN_ID,
        sender=ALICE.id,
        nonce=7,
        kind="identity.enroll",
        body=encode(EnrollBody(id=BOB.id, role="clinician")),
    )
    assert stx.public_key == ALICE.public_key.raw
    assert stx.signature == raw[:64]
    assert decode(stx.tx.body, EnrollBody).role == "clinician"
    ALICE.public_key.verify(TX_DOMAIN + raw[96:], stx.signature)


@PROPS
@given(st.integers(0, 2**63 - 1), st.text(max_size=20), st.binary(max_size=200))
def test_round_trip_property(nonce: int, kind: str, body: bytes) -> None:
    raw = make_tx(ALICE, chain_id=CHAIN_ID, nonce=nonce, kind=kind, body=body)
    stx = decode_envelope(raw)
    stx.verify_signature()
    assert (stx.tx.nonce, stx.tx.kind, decode(stx.tx.body, bytes)) == (nonce, kind, body)


def test_truncated() -> None:
    raw = sample()
    for cut in (0, 1, 63, 64, 95, 96):
        with pytest.raises(InvalidTransaction) as exc:
            decode_envelope(raw[:cut])
        assert exc.value.code == "TX_MALFORMED"
    for cut in range(97, len(raw)):
        with pytest.raises(InvalidTransaction) as exc:
            decode_envelope(raw[:cut])
        assert exc.value.code == "TX_MALFORMED"


def test_trailing_bytes() -> None:
    with pytest.raises(InvalidTransaction) as exc:
        decode_envelope(sample() + b"\x00")
    assert exc.value.code == "TX_MALFORMED"


def test_too_large() -> None:
    raw = make_tx(ALICE, chain_id=CHAIN_ID, nonce=0, kind="k", body=b"x" * MAX_TX_BYTES)
    assert len(raw) > MAX_TX_BYTES
    with pytest.raises(InvalidTransaction) as exc:
        decode_envelope(raw)
    assert exc.value.code == "TX_TOO_LARGE"
    small = sample()
    with pytest.raises(InvalidTransaction) as exc:
        decode_envelope(small, max_bytes=len(small) - 1)
    assert exc.value.code == "TX_TOO_LARGE"
    assert decode_envelope(small, max_bytes=len(small)).raw == small


def test_sender_key_mismatch() -> None:
    tx = Tx(chain_id=CHAIN_ID, sender=BOB.id, nonce=0, kind="k", body=b"")
    raw = sign_tx(ALICE, tx)  # ALICE signs a tx that claims BOB as sender
    with pytest.raises(AuthError) as exc:
        decode_envelope(raw)
    assert exc.value.code == "SENDER_KEY_MISMATCH"
    # swapping in BOB's public key keeps the sender check happy but the signature fails
    swapped = raw[:64] + BOB.public_key.raw + raw[96:]
    stx = decode_envelope(swapped)
    with pytest.raises(AuthError) as exc:
        stx.verify_signature()
    assert exc.value.code == "BAD_SIGNATURE"


def test_nonce_range() -> None:
    tx = Tx(chain_id=CHAIN_ID, sender=ALICE.id, nonce=-1, kind="k", body=b"")
    with pytest.raises(InvalidTransaction) as exc:
        decode_envelope(sign_tx(ALICE, tx))
    assert exc.value.code == "TX_MALFORMED"
    tx = Tx(chain_id=CHAIN_ID, sender=ALICE.id, nonce=2**63, kind="k", body=b"")
    with pytest.raises(InvalidTransaction) as exc:
        decode_envelope(sign_tx(ALICE, tx))
    assert exc.value.code == "TX_MALFORMED"


def test_non_canonical_body_rejected() -> None:
    raw = sample(nonce=5)
    # nonce 5 is a fixint (0x05) after chain_id and sender; widen it to uint8 and re-sign
    data = raw[96:]
    idx = data.index(b"\x05" + bytes([0xA0 | len("identity.enroll")]))
    wide = data[:idx] + b"\xcc\x05" + data[idx + 1 :]
    resigned = ALICE.sign(TX_DOMAIN + wide) + ALICE.public_key.raw + wide
    with pytest.raises(InvalidTransaction) as exc:
        decode_envelope(resigned)
    assert exc.value.code == "TX_MALFORMED"


def test_signature_domain_separation() -> None:
    tx = Tx(chain_id=CHAIN_ID, sender=ALICE.id, nonce=0, kind="k", body=b"")
    data = encode(tx)
    raw = ALICE.sign(data) + ALICE.public_key.raw + data  # signed without the domain
    stx = decode_envelope(raw)
    with pytest.raises(AuthError) as exc:
        stx.verify_signature()
    assert exc.value.code == "BAD_SIGNATURE"


RAW = sample(nonce=3)


@PROPS
@given(st.integers(0, len(RAW) - 1), st.integers(1, 255))
def test_any_flipped_byte_rejected(pos: int, mask: int) -> None:
    bad = bytearray(RAW)
    bad[pos] ^= mask
    with pytest.raises(MedLedgerError) as exc:
        decode_envelope(bytes(bad)).verify_signature()
    assert exc.value.code in {"TX_MALFORMED", "BAD_SIGNATURE", "SENDER_KEY_MISMATCH"}
    if pos < 64:
        assert exc.value.code == "BAD_SIGNATURE"
    elif pos < 96:
        assert exc.value.code == "SENDER_KEY_MISMATCH"


def test_every_single_bit_flip_rejected() -> None:
    for pos in range(len(RAW)):
        for bit in range(8):
            bad = bytearray(RAW)
            bad[pos] ^= 1 << bit
            with pytest.raises(MedLedgerError):
                decode_envelope(bytes(bad)).verify_signature()
