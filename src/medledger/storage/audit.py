"""Storage audits (pure): which shards a block hash challenges, who audits, and
how an answer is checked.

Every ``epoch`` blocks, the hash of the block at that height seeds the audit:
it names one member node as the auditor and a sample of stored shards (without
replacement; every shard when there are fewer than the sample size). Every node
derives the same challenges from the same block, so an auditor cannot pick
easy ones, and a storage service cannot know in advance what it will be asked.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

from medledger.errors import IntegrityError
from medledger.ledger.merkle import verify_inclusion
from medledger.storage.erasure import shard_count

_DOMAIN = b"medledger/storage-audit/v1\x00"


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """What the audit needs of a record's on-chain entry."""

    record_id: str
    chunk_count: int
    k: int
    m: int

    @property
    def shard_count(self) -> int:
        return shard_count(self.chunk_count, self.k, self.m)

    def locate(self, leaf: int) -> tuple[int, int]:
        """``(stripe, column)`` of the shard with Merkle leaf index ``leaf``."""
        width = self.k + self.m
        stripe, offset = divmod(leaf, width)
        ndata = min(self.k, self.chunk_count - stripe * self.k)
        column = offset if offset < ndata else self.k + offset - ndata
        return stripe, column


@dataclass(frozen=True, slots=True, order=True)
class Challenge:
    record_id: str
    stripe: int
    column: int
    leaf: int


def epoch_due(height: int, epoch: int) -> bool:
    return epoch > 0 and height > 0 and height % epoch == 0


def _draw(seed: bytes, label: bytes, i: int) -> int:
    digest = hashlib.sha256(_DOMAIN + label + seed + i.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:16], "big")


def auditor_for(seed: bytes, members: list[str]) -> str:
    """The member (by name) that runs this epoch's audit."""
    ordered = sorted(members)
    return ordered[_draw(seed, b"auditor", 0) % len(ordered)]


def challenges(seed: bytes, records: list[StoredRecord], count: int) -> list[Challenge]:
    """Up to ``count`` distinct shards over ``records``, drawn from ``seed``."""
    ordered = sorted(records, key=lambda r: r.record_id)
    starts: list[int] = []
    total = 0
    for r in ordered:
        starts.append(total)
        total += r.shard_count
    if total == 0 or count <= 0:
        return []
    if total <= count:
        picks = list(range(total))
    else:
        chosen: set[int] = set()
        i = 0
        while len(chosen) < count:
            chosen.add(_draw(seed, b"shard", i) % total)
            i += 1
        picks = sorted(chosen)
    out = []
    for g in picks:
        idx = bisect.bisect_right(starts, g) - 1
        rec = ordered[idx]
        leaf = g - starts[idx]
        stripe, column = rec.locate(leaf)
        out.append(Challenge(rec.record_id, stripe, column, leaf))
    return out


def verify_answer(
    shard: bytes, leaf: int, shard_count: int, path: list[bytes], shard_root: bytes
) -> None:
    """Check a service's answer: the shard's hash is leaf ``leaf`` under the anchored
    root. Raises ``IntegrityError`` (``SHARD_CORRUPT``) otherwise."""
    try:
        verify_inclusion(hashlib.sha256(shard).digest(), leaf, shard_count, path, shard_root)
    except IntegrityError:
        raise IntegrityError(
            "the shard does not match the record's anchored shard root", code="SHARD_CORRUPT"
        )
