"""Merkle trees over lists (RFC 6962 shape): roots and inclusion proofs.

Leaves are hashed as ``H(0x00 || leaf)`` and inner nodes as
``H(0x01 || left || right)``, so a leaf can never pass for an inner node.
The tree over ``n`` leaves splits at the largest power of two below ``n``.
An empty tree has root ``H(b"")``.
"""

from __future__ import annotations

import hashlib

from medledger.errors import IntegrityError

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def root_of_hashes(hashes: list[bytes]) -> bytes:
    """Root over already leaf-hashed values, bottom up, O(n).

    Pairing neighbours level by level and carrying an unpaired last node up
    unchanged builds exactly RFC 6962's tree (split at the largest power of two).
    """
    if not hashes:
        return EMPTY_ROOT
    level = hashes
    sha = hashlib.sha256
    while len(level) > 1:
        nxt = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _root(hashes: list[bytes], lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 1:
        return hashes[lo]
    k = _split(n)
    return node_hash(_root(hashes, lo, lo + k), _root(hashes, lo + k, hi))


def merkle_root(leaves: list[bytes]) -> bytes:
    return root_of_hashes([leaf_hash(x) for x in leaves])


def inclusion_proof(leaves_hashed: list[bytes], index: int) -> list[bytes]:
    """Audit path for leaf ``index``, bottom-up."""
    n = len(leaves_hashed)
    if not 0 <= index < n:
        raise IndexError("leaf index out of range")
    path: list[bytes] = []
    lo, hi = 0, n
    stack: list[bytes] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            stack.append(_root(leaves_hashed, lo + k, hi))
            hi = lo + k
        else:
            stack.append(_root(leaves_hashed, lo, lo + k))
            lo = lo + k
    path = list(reversed(stack))
    return path


def root_from_proof(leaf_h: bytes, index: int, size: int, path: list[bytes]) -> bytes:
    """Recompute the root from a leaf hash and its audit path (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        raise IntegrityError("proof index out of range", code="BAD_PROOF")
    fn, sn = index, size - 1
    r = leaf_h
    for p in path:
        if sn == 0:
            raise IntegrityError("proof is too long", code="BAD_PROOF")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise IntegrityError("proof is too short", code="BAD_PROOF")
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> None:
    if root_from_proof(leaf_hash(leaf), index, size, path) != root:
        raise IntegrityError("inclusion proof does not match the root", code="BAD_PROOF")
