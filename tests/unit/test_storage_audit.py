"""Storage audit core: deterministic challenges, leaf mapping, answer checking."""

from __future__ import annotations

import os

import pytest

from medledger.crypto.cid import cid_for
from medledger.errors import IntegrityError
from medledger.storage.audit import (
    StoredRecord,
    auditor_for,
    challenges,
    epoch_due,
    verify_answer,
)
from medledger.storage.erasure import StripeCodec
from medledger.storage.manifest import (
    CIPHER,
    MANIFEST_VERSION,
    ChunkRef,
    ContentManifest,
    build_manifest,
)


def _manifest(nchunks: int, k: int, m: int):  # type: ignore[no-untyped-def]
    chunk_size = 1000
    size = chunk_size * (nchunks - 1) + 500 if nchunks else 0
    chunks = [os.urandom(chunk_size + 16) for _ in range(nchunks - 1)] + (
        [os.urandom(516)] if nchunks else []
    )
    codec = StripeCodec(k, m)
    parity: list[bytes] = []
    for s in range(-(-nchunks // k)):
        parity += codec.parity(chunks[s * k : s * k + k])
    content = ContentManifest(
        version=MANIFEST_VERSION,
        cipher=CIPHER,
        chunk_size=chunk_size,
        size=size,
        chunks=[ChunkRef(cid=cid_for(c), size=len(c)) for c in chunks],
    )
    man = build_manifest(
        content,
        k,
        m,
        [ChunkRef(cid=cid_for(p), size=len(p)) for p in parity],
        [f"inst-{i}" for i in range(k + m)],
    )
    shards = {}
    for s in range(man.stripes):
        for c in range(k + m):
            if c < k:
                i = s * k + c
                if i < nchunks:
                    shards[(s, c)] = chunks[i]
            else:
                shards[(s, c)] = parity[s * m + c - k]
    return man, shards


@pytest.mark.parametrize(("n", "k", "m"), [(5, 2, 2), (4, 2, 2), (7, 4, 2), (1, 1, 2), (3, 1, 0)])
def test_every_shard_proves_against_the_root(n: int, k: int, m: int) -> None:
    man, shards = _manifest(n, k, m)
    rec = StoredRecord("r" + "0" * 32, n, k, m)
    assert rec.shard_count == man.shard_count() == len(shards)
    for leaf in range(rec.shard_count):
        s, c = rec.locate(leaf)
        assert man.leaf_index(s, c) == leaf
        verify_answer(shards[(s, c)], leaf, rec.shard_count, man.proof(s, c), man.shard_root)


def test_corrupt_or_misplaced_shard_fails() -> None:
    man, shards = _manifest(5, 2, 2)
    n = man.shard_count()
    bad = bytearray(shards[(1, 3)])
    bad[7] ^= 1
    with pytest.raises(IntegrityError) as e:
        verify_answer(bytes(bad), man.leaf_index(1, 3), n, man.proof(1, 3), man.shard_root)
    assert e.value.code == "SHARD_CORRUPT"
    with pytest.raises(IntegrityError):  # a good shard offered for another position
        verify_answer(shards[(0, 0)], man.leaf_index(1, 3), n, man.proof(1, 3), man.shard_root)


def test_challenges_are_deterministic_distinct_and_cover_small_sets() -> None:
    recs = [StoredRecord(f"r{i:032x}", 10 + i, 2, 2) for i in range(5)]
    seed = os.urandom(32)
    a = challenges(seed, recs, 16)
    assert a == challenges(seed, list(reversed(recs)), 16)
    assert len(a) == 16 and len(set(a)) == 16
    assert a != challenges(os.urandom(32), recs, 16)
    small = [StoredRecord("r" + "1" * 32, 3, 2, 2)]
    everything = challenges(seed, small, 16)
    assert len(everything) == small[0].shard_count == 7
    assert challenges(seed, [], 16) == []


def test_auditor_and_epochs() -> None:
    members = ["hospital-d", "hospital-a", "regulator", "hospital-b"]
    picks = {auditor_for(os.urandom(32), members) for _ in range(200)}
    assert picks == set(members)
    seed = os.urandom(32)
    assert auditor_for(seed, members) == auditor_for(seed, sorted(members))
    assert epoch_due(20, 20) and epoch_due(40, 20)
    assert not epoch_due(21, 20) and not epoch_due(0, 20) and not epoch_due(5, 0)
