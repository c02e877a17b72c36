"""An institution's shard service: stores, serves, proves and checks its shards.

Every member node runs one over its backend (a local directory or S3). Other
members' nodes reach it over HTTP (``api.storage_service``), authenticated as
their node keys; the node's own coordinator calls it directly. Backend calls
(hashing, file or S3 I/O) run in a small thread pool while the event loop
keeps moving bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from medledger.errors import InvalidInput, MedLedgerError, NotFound
from medledger.log import get_logger
from medledger.storage import framing
from medledger.storage.backend import ShardBackend
from medledger.storage.manifest import Manifest, decode_manifest

WINDOW = 16  # shards in flight per stream
BATCH = 4  # shards stored per worker job (fewer thread hand-offs)
SYNC_EVERY = 64 * 1024 * 1024  # bytes written between early background syncs
_PING_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"  # CID of b""
Item = tuple[bytes, bytes]  # (frame kind, payload)

log = get_logger("medledger.storage")


@dataclass(frozen=True, slots=True)
class ShardProof:
    """A service's answer to an audit challenge."""

    shard: bytes
    path: list[bytes]
    leaf: int
    shard_count: int


@dataclass(frozen=True, slots=True)
class ColumnShard:
    """One shard of a column stream: its bytes, or the code of why it is missing."""

    stripe: int
    data: bytes | None
    code: str = ""


class ShardService:
    def __init__(self, name: str, backend: ShardBackend, *, threads: int = 2) -> None:
        self.name = name
        self.backend = backend
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=f"shards-{name}")
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix=f"shards-sync-{name}")
        # manifests are immutable (content-addressed): decode and validate each once
        self._manifests: OrderedDict[str, Manifest] = OrderedDict()
        self._leaves: OrderedDict[str, list[bytes]] = OrderedDict()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._syncer.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def receive(self, items: AsyncIterator[Item], columns: list[int]) -> Manifest:
        """Store the shards of a stream (``C`` items), then its manifest (``M``, last).

        The manifest is accepted only if every shard of ``columns`` is stored
        here and no shard outside the manifest was sent. On any failure the
        shards this stream newly wrote are deleted again.
        """
        fresh: list[str] = []
        got: set[str] = set()
        inflight: deque[asyncio.Future[list[tuple[str, bool]]]] = deque()
        batch: list[bytes] = []
        manifest_bytes: bytes | None = None
        loop = asyncio.get_running_loop()
        ok = False
        unsynced = 0
        syncing: asyncio.Future[None] | None = None

        def add_all(payloads: list[bytes]) -> list[tuple[str, bool]]:
            return [self.backend.add(p) for p in payloads]

        def submit() -> None:
            nonlocal unsynced, syncing
            if batch:
                unsynced += sum(len(b) for b in batch)
                inflight.append(loop.run_in_executor(self._pool, add_all, list(batch)))
                batch.clear()
            if unsynced >= SYNC_EVERY and (syncing is None or syncing.done()):
                # flush what is written so far while more arrives: the final sync
                # (the one that counts) then has little left to wait for
                syncing = loop.run_in_executor(self._syncer, self.backend.sync, list(fresh))
                unsynced = 0

        async def settle(limit: int) -> None:
            while len(inflight) > limit:
                for cid, new in await inflight.popleft():
                    got.add(cid)
                    if new:
                        fresh.append(cid)

        try:
            async for kind, payload in items:
                if manifest_bytes is not None:
                    raise InvalidInput("data after the manifest", code="BAD_FRAME")
                if kind == framing.CHUNK:
                    batch.append(payload)
                    if len(batch) == BATCH:
                        submit()
                        await settle(WINDOW // BATCH)
                elif kind == framing.MANIFEST:
                    manifest_bytes = payload
                else:
                    raise InvalidInput("unexpected frame in a shard upload", code="BAD_FRAME")
            submit()
            await settle(0)
            if manifest_bytes is None:
                raise InvalidInput(
                    "shard upload ended before its manifest", code="UPLOAD_TRUNCATED"
                )
            manifest: Manifest = await self._run(decode_manifest, manifest_bytes)
            if any(not 0 <= c < manifest.width for c in columns):
                raise InvalidInput("no such shard column", code="BAD_COLUMN")
            known = {r.cid for r in manifest.chunks} | {r.cid for r in manifest.parity}
            if got - known:
                raise InvalidInput(
                    "upload holds shards its manifest does not list", code="BAD_MANIFEST"
                )
            wanted = {r.cid for c in columns for r in manifest.column(c) if r is not None}
            for cid in wanted - got:
                if not await self._run(self.backend.has, cid):
                    raise InvalidInput(
                        "the manifest names a shard that was not uploaded", code="UPLOAD_INCOMPLETE"
                    )
            manifest_cid, new = await self._run(self.backend.add, manifest_bytes)
            if new:
                fresh.append(manifest_cid)
            _remember(self._manifests, manifest_cid, manifest)
            if syncing is not None:
                await syncing
            await self._run(self.backend.sync, fresh)
            ok = True
            log.info("shards.stored", manifest=manifest_cid, shards=len(got), columns=columns)
            return manifest
        finally:
            if not ok:
                for fut in inflight:
                    try:
                        added = await fut
                    except BaseException:
                        continue
                    fresh.extend(cid for cid, new in added if new)
                if syncing is not None:
                    with contextlib.suppress(BaseException):
                        await syncing
                for cid in fresh:
                    try:
                        await self._run(self.backend.delete, cid)
                    except MedLedgerError:
                        log.warning("shards.cleanup_failed", cid=cid)

    def stored_manifest(self, manifest_cid: str) -> Manifest:
        """A manifest stored here, decoded (from the cache when it can), synchronously."""
        cached = self._manifests.get(manifest_cid)
        if cached is not None:
            return cached
        manifest = decode_manifest(self.backend.get(manifest_cid))
        _remember(self._manifests, manifest_cid, manifest)
        return manifest

    async def manifest(self, manifest_cid: str) -> Manifest:
        cached = self._manifests.get(manifest_cid)
        if cached is not None:
            self._manifests.move_to_end(manifest_cid)
            return cached
        data = await self._run(self.backend.get, manifest_cid)
        manifest: Manifest = await self._run(decode_manifest, data)
        _remember(self._manifests, manifest_cid, manifest)
        return manifest

    async def _hashed_leaves(self, manifest_cid: str, manifest: Manifest) -> list[bytes]:
        leaves = self._leaves.get(manifest_cid)
        if leaves is None:
            leaves = await self._run(manifest.hashed_leaves)
            _remember(self._leaves, manifest_cid, leaves)
        return leaves

    async def manifest_bytes(self, manifest_cid: str) -> bytes:
        return await self._run(self.backend.get, manifest_cid)  # type: ignore[no-any-return]

    async def shard(self, cid: str) -> bytes:
        return await self._run(self.backend.get, cid)  # type: ignore[no-any-return]

    async def column(
        self, manifest: Manifest, column: int, start: int = 0, *, verify: bool = True
    ) -> AsyncGenerator[ColumnShard, None]:
        """The shards of ``column`` from stripe ``start`` on, each verified (unless the
        reader verifies them itself, as a remote coordinator does); a missing or corrupt
        one comes as a ``ColumnShard`` without data and the stream goes on. Implicit
        zero shards of a short last stripe are skipped."""
        if not 0 <= column < manifest.width:
            raise InvalidInput("no such shard column", code="BAD_COLUMN")
        refs = [
            (s, ref)
            for s in range(max(0, start), manifest.stripes)
            if (ref := manifest.shard(s, column)) is not None
        ]
        pending: deque[tuple[int, asyncio.Future[bytes]]] = deque()
        loop = asyncio.get_running_loop()
        it = iter(refs)
        get = self.backend.get if verify else functools.partial(self.backend.get, verify=False)
        try:
            for s, ref in it:
                pending.append((s, loop.run_in_executor(self._pool, get, ref.cid)))
                if len(pending) >= WINDOW:
                    break
            while pending:
                s, fut = pending.popleft()
                try:
                    item = ColumnShard(s, await fut)
                except MedLedgerError as exc:
                    item = ColumnShard(s, None, exc.code)
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt[0], loop.run_in_executor(self._pool, get, nxt[1].cid)))
                yield item
        finally:
            for _, fut in pending:
                fut.cancel()

    async def prove(self, manifest_cid: str, stripe: int, column: int) -> ShardProof:
        """Answer an audit challenge: the shard and its Merkle path to the shard root."""
        manifest = await self.manifest(manifest_cid)
        if not 0 <= stripe < manifest.stripes or not 0 <= column < manifest.width:
            raise InvalidInput("no such shard", code="BAD_COLUMN")
        ref = manifest.shard(stripe, column)
        if ref is None:
            raise NotFound("that shard is an implicit zero block", code="SHARD_NOT_FOUND")
        data = await self.shard(ref.cid)
        return ShardProof(
            shard=data,
            path=manifest.proof(stripe, column, await self._hashed_leaves(manifest_cid, manifest)),
            leaf=manifest.leaf_index(stripe, column),
            shard_count=manifest.shard_count(),
        )

    async def check(self, manifest_cid: str, column: int) -> list[ColumnShard]:
        """Every shard of ``column`` that is missing or corrupt here (data is None)."""
        manifest = await self.manifest(manifest_cid)
        return [
            ColumnShard(item.stripe, None, item.code)
            async for item in self.column(manifest, column)
            if item.data is None
        ]

    async def ping(self) -> None:
        """A cheap round trip to the backend (a stat, or an S3 HEAD); raises if it fails."""
        await self._run(self.backend.has, _PING_CID)

    async def status(self) -> dict[str, Any]:
        objects, used = await self._run(self.backend.usage)
        return {
            "institution": self.name,
            "backend": self.backend.describe(),
            "objects": objects,
            "bytes": used,
        }


MANIFEST_CACHE = 64


def _remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    while len(cache) > MANIFEST_CACHE:
        cache.popitem(last=False)


def column_frames(items: AsyncIterator[ColumnShard]) -> AsyncIterator[bytes]:
    """A column stream as frames: ``C`` per shard, ``X`` ``{stripe, code}`` per gap."""
    import msgspec

    async def gen() -> AsyncIterator[bytes]:
        async for item in items:
            if item.data is None:
                yield framing.frame(
                    framing.MISSING, msgspec.json.encode({"stripe": item.stripe, "code": item.code})
                )
            else:
                yield framing.frame_header(framing.CHUNK, len(item.data))
                yield item.data

    return gen()
