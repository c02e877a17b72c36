"""Transactions: canonical body, fixed binary envelope, signature check.

Wire layout (the envelope)::

    signature (64) || public_key (32) || tx (canonical msgpack of Tx)

The signature covers ``TX_DOMAIN || tx``. The sender ID must equal
``identity_id_for(public_key)``, so the envelope proves its sender without a
lookup. The transaction hash is SHA-256 of the whole envelope (Ed25519 as
libsodium checks it is not malleable).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from medledger.codec import Record, decode_canonical, encode
from medledger.crypto.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, PrivateKey, PublicKey
from medledger.crypto.keys import identity_id_for as _id_for
from medledger.errors import AuthError, InvalidTransaction

TX_DOMAIN = b"medledger/tx/v1\x00"
MAX_TX_BYTES = 64 * 1024
_HEAD = SIGNATURE_SIZE + PUBLIC_KEY_SIZE


class Tx(Record, frozen=True):
    chain_id: str
    sender: str
    nonce: int
    kind: str
    body: bytes  # canonical encoding of the kind's body struct


@dataclass(slots=True, eq=False)
class SignedTx:
    """A decoded envelope whose structure (not yet its signature) is valid.

    ``decoded_body`` caches the kind's body struct once the application decoded it,
    so admission and execution decode it once.
    """

    raw: bytes
    hash: bytes
    tx: Tx
    public_key: bytes
    signature: bytes
    decoded_body: Any = None

    def verify_signature(self) -> None:
        PublicKey(self.public_key).verify(TX_DOMAIN + self.raw[_HEAD:], self.signature)


def sign_tx(key: PrivateKey, tx: Tx) -> bytes:
    data = encode(tx)
    return key.sign(TX_DOMAIN + data) + key.public_key.raw + data


def make_tx(key: PrivateKey, *, chain_id: str, nonce: int, kind: str, body: Any) -> bytes:
    tx = Tx(chain_id=chain_id, sender=key.id, nonce=nonce, kind=kind, body=encode(body))
    return sign_tx(key, tx)


def tx_hash(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def decode_envelope(raw: bytes, *, max_bytes: int = MAX_TX_BYTES) -> SignedTx:
    """Parse an envelope; check size, canonical form and sender derivation.

    Signature verification is separate (:meth:`SignedTx.verify_signature`) so a
    node verifies each transaction exactly once.
    """
    if len(raw) > max_bytes:
        raise InvalidTransaction(
            f"transaction is {len(raw)} bytes, the limit is {max_bytes}", code="TX_TOO_LARGE"
        )
    if len(raw) <= _HEAD:
        raise InvalidTransaction("transaction envelope is truncated", code="TX_MALFORMED")
    try:
        tx = decode_canonical(raw[_HEAD:], Tx)
    except InvalidTransaction:
        raise
    except Exception as exc:
        raise InvalidTransaction(f"transaction body is malformed ({exc})", code="TX_MALFORMED")
    public_key = raw[SIGNATURE_SIZE:_HEAD]
    if _id_for(public_key) != tx.sender:
        raise AuthError("sender does not match the signing key", code="SENDER_KEY_MISMATCH")
    if tx.nonce < 0 or tx.nonce >= 2**63:
        raise InvalidTransaction("nonce out of range", code="TX_MALFORMED")
    return SignedTx(
        raw=raw,
        hash=tx_hash(raw),
        tx=tx,
        public_key=public_key,
        signature=raw[:SIGNATURE_SIZE],
    )
