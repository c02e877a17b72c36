"""Coordinator and shard services in one process, over real directory backends.

Every loss pattern of up to m columns reads back identical; more fails with a
clear code; a failed upload leaves nothing at any service; repair rebuilds
exactly the lost shards.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from medledger.codec import encode
from medledger.crypto.aead import new_data_key
from medledger.crypto.cid import cid_for
from medledger.errors import IntegrityError, InvalidInput, MedLedgerError
from medledger.storage import framing
from medledger.storage.backend import LocalShardBackend
from medledger.storage.coordinator import Coordinator
from medledger.storage.crypt import ChunkDecryptor, build_content_manifest, encrypt_stream
from medledger.storage.endpoints import LocalEndpoint, ShardEndpoint
from medledger.storage.manifest import ChunkRef, Manifest
from medledger.storage.shards import Item, ShardService

CS = 1024


class World:
    def __init__(self, root: Path, n: int) -> None:
        self.names = [f"inst-{i}" for i in range(n)]
        self.backends = {name: LocalShardBackend(root / name) for name in self.names}
        self.services = {name: ShardService(name, b) for name, b in self.backends.items()}
        self.endpoints: dict[str, ShardEndpoint] = {
            name: LocalEndpoint(s) for name, s in self.services.items()
        }
        self.coordinator = Coordinator()

    def files(self) -> dict[str, set[str]]:
        return {
            name: {p.name for p in b.root.rglob("*") if p.is_file()}
            for name, b in self.backends.items()
        }

    def close(self) -> None:
        for s in self.services.values():
            s.close()
        self.coordinator.close()


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path, 6)
    yield w  # type: ignore[misc]
    w.close()


def sealed(size: int) -> tuple[bytes, bytes, list[bytes], bytes]:
    plain = os.urandom(size)
    key = new_data_key()
    out = list(encrypt_stream(io.BytesIO(plain), size, key, CS))
    content = build_content_manifest(size, CS, [ChunkRef(cid=c, size=len(ct)) for c, ct in out])
    return plain, key, [ct for _, ct in out], encode(content)


async def items_of(chunks: list[bytes], content: bytes | None) -> AsyncIterator[Item]:
    for ct in chunks:
        yield framing.CHUNK, ct
    if content is not None:
        yield framing.MANIFEST, content


def store(w: World, size: int, k: int, m: int) -> tuple[bytes, bytes, Manifest, str]:
    plain, key, chunks, content = sealed(size)
    eps = [w.endpoints[n] for n in w.names[: k + m]]
    man, raw = asyncio.run(w.coordinator.store(items_of(chunks, content), eps, k, m))
    return plain, key, man, cid_for(raw)


def read(w: World, man: Manifest, cid: str, key: bytes) -> bytes:
    async def go() -> bytes:
        dec = ChunkDecryptor(man, key)
        parts = [
            dec.feed(c) async for c in w.coordinator.read(man, cid, w.endpoints, man.placement)
        ]
        assert dec.done
        return b"".join(parts)

    return asyncio.run(go())


def lose(w: World, man: Manifest, columns: tuple[int, ...], how: str) -> None:
    for c in columns:
        backend = w.backends[man.placement[c]]
        for ref in man.column(c):
            if ref is None:
                continue
            path = backend.root / ref.cid[-2:] / ref.cid
            if how == "delete":
                path.unlink(missing_ok=True)
            else:
                raw = bytearray(path.read_bytes())
                raw[len(raw) // 2] ^= 0xFF
                path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("k", "m", "size"), [(2, 2, 7 * CS + 5), (4, 2, 9 * CS), (1, 2, 3 * CS + 1)]
)
@pytest.mark.parametrize("how", ["delete", "corrupt"])
def test_any_m_columns_lost_reads_back(world: World, k: int, m: int, size: int, how: str) -> None:
    for lost in itertools.chain.from_iterable(
        itertools.combinations(range(k + m), r) for r in range(m + 1)
    ):
        plain, key, man, cid = store(world, size, k, m)
        lose(world, man, lost, how)
        assert read(world, man, cid, key) == plain, lost


def test_more_than_m_lost_fails_clearly(world: World) -> None:
    _, key, man, cid = store(world, 5 * CS, 2, 2)
    lose(world, man, (0, 1, 3), "delete")
    with pytest.raises(IntegrityError) as e:
        read(world, man, cid, key)
    assert e.value.code == "NOT_ENOUGH_SHARDS"


def test_unknown_service_counts_as_lost(world: World) -> None:
    plain, key, man, cid = store(world, 6 * CS, 2, 2)
    gone = {n: e for n, e in world.endpoints.items() if n != man.placement[1]}

    async def go() -> list[bytes]:
        return [c async for c in world.coordinator.read(man, cid, gone, man.placement)]

    dec = ChunkDecryptor(man, key)
    assert b"".join(dec.feed(c) for c in asyncio.run(go())) == plain


def test_layout_columns_at_their_services(world: World) -> None:
    _, _, man, cid = store(world, 8 * CS, 2, 2)
    files = world.files()
    for c, name in enumerate(man.placement):
        want = {r.cid for r in man.column(c) if r is not None} | {cid}
        assert files[name] == want
    assert man.stored_bytes() == pytest.approx(2 * 8 * CS, rel=0.02)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("no manifest", "UPLOAD_TRUNCATED"),
        ("chunk missing", "UPLOAD_INCOMPLETE"),
        ("bad manifest", "BAD_MANIFEST"),
        ("wrong chunk bytes", "UPLOAD_INCOMPLETE"),
    ],
)
def test_failed_upload_leaves_nothing(world: World, case: str, code: str) -> None:
    store(world, 3 * CS, 2, 2)  # something stored before must stay
    before = world.files()
    _, _, chunks, content = sealed(6 * CS)
    if case == "no manifest":
        items = items_of(chunks, None)
    elif case == "chunk missing":
        items = items_of([*chunks[:-1], chunks[-1][:-1]], content)
    elif case == "bad manifest":
        items = items_of(chunks, b"\x93\x01\x02\x03")
    else:
        forged = bytearray(chunks[2])
        forged[0] ^= 1
        items = items_of([*chunks[:2], bytes(forged), *chunks[3:]], content)
    eps = [world.endpoints[n] for n in world.names[:4]]
    with pytest.raises(MedLedgerError) as e:
        asyncio.run(world.coordinator.store(items, eps, 2, 2))
    assert e.value.code == code
    assert world.files() == before


def test_placement_must_match_params(world: World) -> None:
    _, _, chunks, content = sealed(CS)
    with pytest.raises(InvalidInput) as e:
        asyncio.run(
            world.coordinator.store(items_of(chunks, content), [world.endpoints["inst-0"]], 2, 2)
        )
    assert e.value.code == "BAD_PLACEMENT"


def test_rebuild_restores_exactly_the_lost_shards(world: World) -> None:
    plain, key, man, cid = store(world, 7 * CS + 3, 2, 2)
    before = world.files()
    lose(world, man, (0, 3), "delete")

    async def repair(column: int) -> None:
        stripes = list(range(man.stripes))
        shards = world.coordinator.rebuild_shards(
            man, world.endpoints, man.placement, column, stripes
        )
        target = world.services[man.placement[column]]

        async def items() -> AsyncIterator[Item]:
            async for s in shards:
                yield framing.CHUNK, s
            yield framing.MANIFEST, man.encode()

        await target.receive(items(), [column])

    for column in (0, 3):
        asyncio.run(repair(column))
    assert world.files() == before
    for c in range(4):
        assert asyncio.run(world.services[man.placement[c]].check(cid, c)) == []
    assert read(world, man, cid, key) == plain


def test_audit_answer_from_a_service(world: World) -> None:
    from medledger.storage.audit import verify_answer

    _, _, man, cid = store(world, 5 * CS, 2, 2)
    for s in range(man.stripes):
        for c in range(4):
            if man.shard(s, c) is None:
                continue
            proof = asyncio.run(world.services[man.placement[c]].prove(cid, s, c))
            verify_answer(proof.shard, proof.leaf, proof.shard_count, proof.path, man.shard_root)
