"""Content identifiers: CIDv1, raw codec, sha2-256, multibase base32 ("b...").

The same form IPFS uses, so a chunk's name verifies its bytes for any holder,
with or without the decryption key.
"""

from __future__ import annotations

import base64
import hashlib
import re

from medledger.errors import IntegrityError, InvalidInput

_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])  # cidv1, raw, sha2-256, 32 bytes
_CID_LEN = 59  # "b" + base32(36 bytes) without padding
_CID_RE = re.compile(r"b[a-z2-7]{58}")


def _encode(digest: bytes) -> str:
    return "b" + base64.b32encode(_PREFIX + digest).decode("ascii").lower().rstrip("=")


def cid_for(data: bytes) -> str:
    return _encode(hashlib.sha256(data).digest())


def cid_to_digest(cid: str) -> bytes:
    """The SHA-256 digest a CID names (manifests hold thousands: this is on hot paths).
    The 58 base32 digits are read as one base-32 integer (290 bits: the 4-byte
    prefix, the digest, and 2 zero padding bits)."""
    if not is_cid(cid):
        raise InvalidInput("not a CIDv1 raw sha2-256 identifier", code="BAD_CID")
    return (int(cid[1:].translate(_TO_INT_DIGITS), 32) >> 2).to_bytes(36, "big")[4:]


_PREFIX_TEXT = _encode(bytes(32))[:8]  # the multibase/CID prefix as text: "bafkrei" + 1 char
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_TO_INT_DIGITS = str.maketrans(_B32, "0123456789abcdefghijklmnopqrstuv")  # int(..., 32)


def is_cid(value: str) -> bool:
    """A canonical CIDv1 raw sha2-256 in base32: the fixed prefix, base32 digits,
    and zero padding bits in the last digit (58 digits carry 290 bits for 288)."""
    return (
        len(value) == _CID_LEN
        and value.startswith(_PREFIX_TEXT[:7])
        and _CID_RE.fullmatch(value) is not None
        and _B32.index(value[7]) >> 3 == _B32.index(_PREFIX_TEXT[7]) >> 3
        and _B32.index(value[-1]) & 0b11 == 0
    )


def verify_cid(cid: str, data: bytes) -> None:
    if cid_for(data) != cid:
        raise IntegrityError("data does not match its content identifier", code="CID_MISMATCH")
