"""Shamir secret sharing of a record's 32-byte data key (threshold ``t`` of ``n``).

pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir`` shares 16-byte secrets over
GF(2^128), so the key is shared as its two halves, each with its own random
polynomial of degree ``t - 1`` but evaluated at the same x: share ``i`` (x = i,
1-based) holds both halves' values. Any ``t`` shares rebuild the key; fewer reveal
nothing about it (every key is equally consistent with them).

A share as encoded here (:func:`medledger.codec.encode` of :class:`KeyShare`) is
what a client seals to one custodian. Shares and keys are plain ``bytes`` in
memory only; nothing here touches the disk.

What :func:`combine_key` can and cannot catch: malformed shares (a half that is
not 16 bytes, x out of range, duplicate x, shares of different splits' thresholds)
and, given more than ``t`` shares, a share that is not on the same polynomials as
the others. Exactly ``t`` shares, one of them altered, give a wrong key without
any error: the record's AES-GCM chunks then fail to decrypt.
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import Shamir

from medledger.codec import Record
from medledger.errors import IntegrityError, InvalidInput

KEY_BYTES = 32
HALF = 16
MAX_SHARES = 255  # x is one byte on the wire of most Shamir tools; plenty for a consortium


class KeyShare(Record, frozen=True):
    """One custodian's share of a data key: x = ``index`` (1-based), the values of the
    two halves' polynomials at x, and the threshold of the split."""

    index: int
    threshold: int
    hi: bytes
    lo: bytes


def split_key(key: bytes, threshold: int, n: int) -> list[KeyShare]:
    """Split a 32-byte key into ``n`` shares, any ``threshold`` of which rebuild it."""
    if len(key) != KEY_BYTES:
        raise InvalidInput("a data key is 32 bytes", code="BAD_KEY")
    if not 1 <= threshold <= n <= MAX_SHARES:
        raise InvalidInput(f"shares need 1 <= threshold <= n <= {MAX_SHARES}", code="BAD_THRESHOLD")
    highs = Shamir.split(threshold, n, key[:HALF])
    lows = Shamir.split(threshold, n, key[HALF:])
    shares = []
    for (x_hi, hi), (x_lo, lo) in zip(highs, lows, strict=True):
        assert x_hi == x_lo  # pycryptodome numbers the shares 1..n in order
        shares.append(KeyShare(index=x_hi, threshold=threshold, hi=hi, lo=lo))
    return shares


def check_share(share: KeyShare) -> None:
    """Raise :class:`InvalidInput` (``BAD_SHARE``) unless ``share`` is well formed."""
    if not 1 <= share.threshold <= MAX_SHARES or not 1 <= share.index <= MAX_SHARES:
        raise InvalidInput("key share index or threshold out of range", code="BAD_SHARE")
    if len(share.hi) != HALF or len(share.lo) != HALF:
        raise InvalidInput("a key share holds two 16-byte values", code="BAD_SHARE")


def _combine(shares: Sequence[KeyShare]) -> bytes:
    hi = Shamir.combine([(s.index, s.hi) for s in shares])
    lo = Shamir.combine([(s.index, s.lo) for s in shares])
    return hi + lo


def combine_key(shares: Sequence[KeyShare]) -> bytes:
    """Rebuild the 32-byte key from at least ``threshold`` distinct shares.

    Errors: ``InvalidInput`` ``BAD_SHARE`` (malformed, duplicate x, or shares that
    name different thresholds) or ``NOT_ENOUGH_SHARES``; ``IntegrityError``
    ``SHARES_INCONSISTENT`` when shares beyond the threshold disagree with the first
    ``threshold`` (one of them is corrupt).
    """
    if not shares:
        raise InvalidInput("no key shares", code="NOT_ENOUGH_SHARES")
    for s in shares:
        check_share(s)
    threshold = shares[0].threshold
    if any(s.threshold != threshold for s in shares):
        raise InvalidInput("key shares of different splits", code="BAD_SHARE")
    if len({s.index for s in shares}) != len(shares):
        raise InvalidInput("two key shares have the same index", code="BAD_SHARE")
    if len(shares) < threshold:
        raise InvalidInput(
            f"{len(shares)} key shares given, {threshold} needed", code="NOT_ENOUGH_SHARES"
        )
    base = list(shares[:threshold])
    key = _combine(base)
    for extra in shares[threshold:]:
        # a further share must lie on the same polynomials: swap it in for the last one
        if _combine([*base[:-1], extra]) != key:
            raise IntegrityError(
                "the key shares are inconsistent (one is corrupt)", code="SHARES_INCONSISTENT"
            )
    return key
