"""Authenticated state commitment: a bucketed Merkle tree.

Every state key falls into one of ``2**DEPTH`` buckets chosen by the first bytes
of ``SHA-256(key)``. A bucket's hash commits to all of its ``(key, value)``
entries in key order; a complete binary Merkle tree over the bucket hashes
gives the app hash. After a block only the dirty buckets and their paths to the
root are recomputed (O(dirty x DEPTH) hashes, never a full rebuild).

A proof for a key is the bucket's full entry list plus the sibling path, so it
proves presence with a value *and* absence (the key is not in its bucket).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from medledger.codec import Record, encode
from medledger.errors import IntegrityError

DEPTH = 16
BUCKETS = 1 << DEPTH

_EMPTY_BUCKET = hashlib.sha256(b"\x01").digest()


def bucket_of(key: bytes) -> int:
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") >> (32 - DEPTH)


def value_hash(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def bucket_hash(entries: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Hash of a bucket from sorted ``(key, value_hash)`` pairs."""
    h = hashlib.sha256(b"\x01")
    for key, vh in entries:
        h.update(len(key).to_bytes(4, "big"))
        h.update(key)
        h.update(vh)
    return h.digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x02" + left + right).digest()


class StateProof(Record, frozen=True):
    """Proof of a key's value (or absence) against an app hash."""

    key: bytes
    bucket: int
    entries: list[tuple[bytes, bytes]]  # (key, value_hash), sorted by key
    path: list[bytes]  # siblings, leaf level first


def _empty_levels() -> list[bytes]:
    levels = [_EMPTY_BUCKET]
    for _ in range(DEPTH):
        levels.append(_node(levels[-1], levels[-1]))
    return levels


_EMPTY_AT = _empty_levels()


class StateTree:
    """In-memory bucketed Merkle tree over ``key -> value_hash``."""

    def __init__(self) -> None:
        self._buckets: dict[int, dict[bytes, bytes]] = {}
        # nodes[level] maps index -> hash, only for non-empty subtrees.
        # level 0 = buckets, level DEPTH = root.
        self._nodes: list[dict[int, bytes]] = [{} for _ in range(DEPTH + 1)]
        self._dirty: set[int] = set()

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def set(self, key: bytes, value: bytes | None) -> None:
        b = bucket_of(key)
        bucket = self._buckets.get(b)
        if value is None:
            if bucket is None or key not in bucket:
                return
            del bucket[key]
            if not bucket:
                del self._buckets[b]
        else:
            if bucket is None:
                bucket = self._buckets[b] = {}
            bucket[key] = value_hash(value)
        self._dirty.add(b)

    def apply(self, writes: dict[bytes, bytes | None]) -> list[tuple[bytes, bytes | None]]:
        """Apply ``writes``; return an undo log for :meth:`revert`."""
        undo: list[tuple[bytes, bytes | None]] = []
        for key, value in writes.items():
            bucket = self._buckets.get(bucket_of(key))
            undo.append((key, None if bucket is None else bucket.get(key)))
            self.set(key, value)
        return undo

    def revert(self, undo: list[tuple[bytes, bytes | None]]) -> None:
        """Undo an :meth:`apply` (the last one not yet reverted)."""
        for key, old_hash in reversed(undo):
            b = bucket_of(key)
            bucket = self._buckets.get(b)
            if old_hash is None:
                if bucket is not None:
                    bucket.pop(key, None)
                    if not bucket:
                        del self._buckets[b]
            else:
                if bucket is None:
                    bucket = self._buckets[b] = {}
                bucket[key] = old_hash
            self._dirty.add(b)

    def load(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        for key, value in items:
            self.set(key, value)

    def root(self) -> bytes:
        """Recompute dirty paths and return the app hash."""
        if self._dirty:
            self._rehash(sorted(self._dirty))
            self._dirty.clear()
        return self._nodes[DEPTH].get(0, _EMPTY_AT[DEPTH])

    def _get(self, level: int, index: int) -> bytes:
        return self._nodes[level].get(index, _EMPTY_AT[level])

    def _rehash(self, dirty: list[int]) -> None:
        level0 = self._nodes[0]
        for b in dirty:
            bucket = self._buckets.get(b)
            if bucket:
                level0[b] = bucket_hash(sorted(bucket.items()))
            else:
                level0.pop(b, None)
        indices = dirty
        for level in range(1, DEPTH + 1):
            parents = sorted({i >> 1 for i in indices})
            below = self._nodes[level - 1]
            here = self._nodes[level]
            empty_below = _EMPTY_AT[level - 1]
            for p in parents:
                left = below.get(2 * p, empty_below)
                right = below.get(2 * p + 1, empty_below)
                if left is empty_below and right is empty_below:
                    here.pop(p, None)
                else:
                    here[p] = _node(left, right)
            indices = parents

    def prove(self, key: bytes) -> StateProof:
        self.root()
        b = bucket_of(key)
        entries = sorted((self._buckets.get(b) or {}).items())
        path = []
        index = b
        for level in range(DEPTH):
            path.append(self._get(level, index ^ 1))
            index >>= 1
        return StateProof(key=key, bucket=b, entries=entries, path=path)


def verify_state_proof(proof: StateProof, app_hash: bytes, value: bytes | None) -> None:
    """Raise unless ``proof`` shows ``key -> value`` (``None``: absent) under ``app_hash``."""
    if proof.bucket != bucket_of(proof.key) or len(proof.path) != DEPTH:
        raise IntegrityError("state proof has the wrong shape", code="BAD_PROOF")
    keys = [k for k, _ in proof.entries]
    if keys != sorted(set(keys)):
        raise IntegrityError("state proof entries are not sorted", code="BAD_PROOF")
    found = dict(proof.entries).get(proof.key)
    if value is None:
        if found is not None:
            raise IntegrityError("state proof shows the key present", code="BAD_PROOF")
    elif found != value_hash(value):
        raise IntegrityError("state proof does not match the value", code="BAD_PROOF")
    h = bucket_hash(proof.entries) if proof.entries else _EMPTY_BUCKET
    index = proof.bucket
    for sibling in proof.path:
        h = _node(sibling, h) if index & 1 else _node(h, sibling)
        index >>= 1
    if h != app_hash:
        raise IntegrityError("state proof does not match the app hash", code="BAD_PROOF")


def state_entry_bytes(key: bytes, value: bytes) -> bytes:
    """Helper for callers that ship (key, value) pairs with proofs."""
    return encode((key, value))
