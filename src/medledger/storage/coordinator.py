"""Spreading records over institutions' shard services, reading and repairing them.

The node a client uploads to coordinates: it groups the client's encrypted
chunks into stripes of ``k``, computes ``m`` parity shards per stripe, and
streams column ``c`` of every stripe to the service of ``placement[c]``, all
columns at once, with bounded queues (constant memory). The manifest goes last
to every service, which accepts it only when it holds all shards of its column.

Reads take the data columns first and verify each shard; a missing, corrupt
or unreachable one brings in a parity column from that stripe on, and the
stripe is decoded. Repair rebuilds shards from any ``k`` others, without the
data key (shards are ciphertext).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from medledger.crypto.cid import cid_for
from medledger.errors import IntegrityError, InvalidInput, MedLedgerError, Unavailable
from medledger.log import get_logger
from medledger.storage import framing
from medledger.storage.endpoints import LocalEndpoint, ShardEndpoint
from medledger.storage.erasure import StripeCodec
from medledger.storage.manifest import (
    ChunkRef,
    Manifest,
    build_manifest,
    decode_content_manifest,
)
from medledger.storage.shards import ColumnShard, Item

log = get_logger("medledger.storage")

QUEUE = 32  # shards queued per column (8 MiB of 256 KiB shards)
ENCODE_AHEAD = 2  # stripes being hashed and parity-coded while more arrive
_END = object()


class _Pipe:
    """A bounded queue feeding one service's upload task."""

    def __init__(self, endpoint: ShardEndpoint, column: int) -> None:
        self.endpoint = endpoint
        self.queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE)
        self.task = asyncio.create_task(endpoint.put(self._items(), [column]))

    async def _items(self) -> AsyncIterator[Item]:
        while True:
            item = await self.queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def send(self, item: Any) -> None:
        while self.queue.full():
            if self.task.done():
                break
            waiter = asyncio.ensure_future(self.queue.put(item))
            await asyncio.wait({waiter, self.task}, return_when=asyncio.FIRST_COMPLETED)
            if waiter.done():
                return
            waiter.cancel()
        if self.task.done():
            exc = self.task.exception()
            raise (
                exc
                if exc is not None
                else Unavailable(
                    f"storage service of {self.endpoint.name} ended the upload early",
                    code="STORAGE_SERVICE_UNAVAILABLE",
                )
            )
        self.queue.put_nowait(item)

    def abort(self) -> None:
        if not self.task.done():
            try:
                self.queue.put_nowait(
                    InvalidInput("the upload was abandoned", code="UPLOAD_ABORTED")
                )
            except asyncio.QueueFull:
                self.task.cancel()


class Coordinator:
    def __init__(self, *, threads: int = 2) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="coordinator")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ---- write ------------------------------------------------------------------------

    async def store(
        self,
        items: AsyncIterator[Item],
        endpoints: list[ShardEndpoint],
        k: int,
        m: int,
        on_bytes: Callable[[int], None] | None = None,
    ) -> tuple[Manifest, bytes]:
        """Spread an upload (``C`` chunk items, then the client's ``M`` content
        manifest) over ``endpoints`` (column ``c`` to ``endpoints[c]``). Returns the
        manifest and its bytes once every service has stored its column durably."""
        if len(endpoints) != k + m:
            raise InvalidInput("placement must name k+m services", code="BAD_PLACEMENT")
        codec = StripeCodec(k, m)
        pipes = [_Pipe(ep, c) for c, ep in enumerate(endpoints)]
        chunk_cids: list[str] = []
        sizes: list[int] = []
        parity: list[ChunkRef] = []
        stripe: list[bytes] = []
        content_bytes: bytes | None = None
        ok = False

        def encode(data: list[bytes]) -> tuple[list[str], list[tuple[str, bytes]]]:
            """The stripe's chunk CIDs (checked against the client's manifest before
            any service gets it) and its parity shards with their CIDs."""
            return [cid_for(d) for d in data], [(cid_for(p), p) for p in codec.parity(data)]

        loop = asyncio.get_running_loop()
        encoding: deque[tuple[list[bytes], asyncio.Future[Any]]] = deque()

        async def send_oldest() -> None:
            data, fut = encoding.popleft()
            cids, par = await fut
            chunk_cids.extend(cids)
            for c, shard in enumerate(data):
                await pipes[c].send((framing.CHUNK, shard))
            for j, (cid, shard) in enumerate(par):
                parity.append(ChunkRef(cid=cid, size=len(shard)))
                await pipes[k + j].send((framing.CHUNK, shard))

        async def flush() -> None:
            """Encode the stripe in a thread while the next one is received."""
            data = list(stripe)
            stripe.clear()
            encoding.append((data, loop.run_in_executor(self._pool, encode, data)))
            while len(encoding) > ENCODE_AHEAD:
                await send_oldest()

        try:
            async for kind, payload in items:
                if content_bytes is not None:
                    raise InvalidInput("data after the manifest", code="BAD_FRAME")
                if kind == framing.CHUNK:
                    sizes.append(len(payload))
                    stripe.append(payload)
                    if on_bytes is not None:
                        on_bytes(len(payload))
                    if len(stripe) == k:
                        await flush()
                elif kind == framing.MANIFEST:
                    content_bytes = payload
                else:
                    raise InvalidInput("unexpected frame in upload", code="BAD_FRAME")
            if content_bytes is None:
                raise InvalidInput("upload ended before its manifest", code="UPLOAD_TRUNCATED")
            if stripe:
                await flush()
            while encoding:
                await send_oldest()
            content = decode_content_manifest(content_bytes)
            if [(r.cid, r.size) for r in content.chunks] != list(
                zip(chunk_cids, sizes, strict=True)
            ):
                raise InvalidInput(
                    "the manifest does not list the uploaded chunks", code="UPLOAD_INCOMPLETE"
                )
            manifest = await self._run(
                build_manifest, content, k, m, parity, [ep.name for ep in endpoints]
            )
            manifest_bytes = manifest.encode()
            for pipe in pipes:
                await pipe.send((framing.MANIFEST, manifest_bytes))
                await pipe.send(_END)
            results = await asyncio.gather(*(p.task for p in pipes), return_exceptions=True)
            for ep, res in zip(endpoints, results, strict=True):
                if isinstance(res, BaseException):
                    log.warning("storage.column_failed", service=ep.name, error=repr(res))
                    if isinstance(res, MedLedgerError):
                        raise res
                    raise Unavailable(
                        f"storage service of {ep.name} failed", code="STORAGE_SERVICE_UNAVAILABLE"
                    )
            ok = True
            return manifest, manifest_bytes
        finally:
            if not ok:
                for pipe in pipes:
                    pipe.abort()
                await asyncio.gather(*(p.task for p in pipes), return_exceptions=True)

    # ---- read ---------------------------------------------------------------------------

    async def read(
        self,
        manifest: Manifest,
        manifest_cid: str,
        endpoints: dict[str, ShardEndpoint],
        placement: list[str],
        on_problem: Callable[[int, int, str], None] | None = None,
    ) -> AsyncIterator[bytes]:
        """The record's encrypted chunks, in order, each verified against its CID.

        ``placement`` is the record's current (on-chain) column placement.
        ``on_problem(stripe, column, code)`` hears of every shard that could not
        be used. Raises ``IntegrityError`` ``NOT_ENOUGH_SHARDS`` when fewer than
        ``k`` shards of a stripe are good.
        """
        k = manifest.k
        codec = StripeCodec(k, manifest.m)
        sources: dict[int, _ColumnSource] = {}
        spare = list(range(k, manifest.width))

        def open_column(c: int, start: int) -> None:
            ep = endpoints.get(placement[c])
            sources[c] = _ColumnSource(self, ep, manifest, manifest_cid, c, start)

        for c in range(k):
            open_column(c, 0)
        try:
            for s in range(manifest.stripes):
                sizes = manifest.sizes(s)
                ndata = manifest.data_in(s)
                have: dict[int, bytes] = {}
                for c in sorted(sources):
                    if sizes[c] == 0:
                        continue
                    got = await sources[c].get(s)
                    if got.data is not None:
                        have[c] = got.data
                    elif on_problem is not None:
                        on_problem(s, c, got.code)
                while len(have) + (k - ndata) < k and spare:
                    c = spare.pop(0)
                    open_column(c, s)
                    got = await sources[c].get(s)
                    if got.data is not None:
                        have[c] = got.data
                    elif on_problem is not None:
                        on_problem(s, c, got.code)
                missing = [c for c in range(ndata) if c not in have]
                if missing:
                    rebuilt = await self._run(codec.rebuild, have, sizes, missing)
                    for c in missing:
                        if cid_for(rebuilt[c]) != manifest.chunks[s * k + c].cid:
                            raise IntegrityError(
                                "a rebuilt chunk does not match its CID", code="NOT_ENOUGH_SHARDS"
                            )
                    have.update(rebuilt)
                for c in range(ndata):
                    yield have[c]
        finally:
            for src in sources.values():
                src.close()

    # ---- repair ---------------------------------------------------------------------------

    async def rebuild_shards(
        self,
        manifest: Manifest,
        endpoints: dict[str, ShardEndpoint],
        placement: list[str],
        column: int,
        stripes: list[int],
    ) -> AsyncIterator[bytes]:
        """Shards ``(s, column)`` for ``s`` in ``stripes``, rebuilt from other columns
        (fetched per shard, data columns first), each verified against the manifest."""
        codec = StripeCodec(manifest.k, manifest.m)
        order = [c for c in range(manifest.width) if c != column]
        for s in stripes:
            ref = manifest.shard(s, column)
            if ref is None:
                continue
            sizes = manifest.sizes(s)
            have: dict[int, bytes] = {}
            implicit = manifest.k - manifest.data_in(s)
            for c in order:
                if len(have) + implicit >= manifest.k:
                    break
                other = manifest.shard(s, c)
                ep = endpoints.get(placement[c])
                if other is None or ep is None:
                    continue
                try:
                    data = await ep.shard(other.cid)
                except MedLedgerError:
                    continue
                if cid_for(data) == other.cid:
                    have[c] = data
            out = (await self._run(codec.rebuild, have, sizes, [column]))[column]
            if cid_for(out) != ref.cid:
                raise IntegrityError("a rebuilt shard does not match its CID", code="REPAIR_FAILED")
            yield out


class _ColumnSource:
    """A column's shards, pumped ahead into a small queue; a dead service yields gaps."""

    def __init__(
        self,
        owner: Coordinator,
        endpoint: ShardEndpoint | None,
        manifest: Manifest,
        manifest_cid: str,
        column: int,
        start: int,
    ) -> None:
        self._owner = owner
        self._manifest = manifest
        self._column = column
        self._queue: asyncio.Queue[ColumnShard] = asyncio.Queue(QUEUE)
        self._dead = "" if endpoint is not None else "STORAGE_SERVICE_UNKNOWN"
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        if endpoint is not None:
            verify = not isinstance(endpoint, LocalEndpoint)  # the backend verified its own
            self._task = asyncio.create_task(
                self._pump(endpoint.column(manifest, manifest_cid, column, start), verify)
            )

    async def _pump(self, items: AsyncGenerator[ColumnShard, None], verify: bool) -> None:
        try:
            async with contextlib.aclosing(items):  # a cancelled pump closes the stream too
                await self._pump_items(items, verify)
            end = "STREAM_ENDED"
        except MedLedgerError as exc:
            end = exc.code
            log.warning("storage.column_unavailable", column=self._column, code=exc.code)
        except Exception as exc:  # a broken stream from a peer: treat the column as gone
            end = "STORAGE_SERVICE_UNAVAILABLE"
            log.warning("storage.column_unavailable", column=self._column, error=repr(exc))
        if not self._closed:
            await self._queue.put(ColumnShard(-1, None, end))

    async def _pump_items(self, items: AsyncIterator[ColumnShard], verify: bool) -> None:
        async for item in items:
            if self._closed:
                continue  # read the stream to its end: the connection goes back to the pool
            if item.data is not None and verify:
                ref = self._manifest.shard(item.stripe, self._column)
                if ref is None or not await self._owner._run(_matches, item.data, ref.cid):
                    item = ColumnShard(item.stripe, None, "SHARD_CORRUPT")
            await self._queue.put(item)

    async def get(self, stripe: int) -> ColumnShard:
        if self._task is None:
            return ColumnShard(stripe, None, self._dead)
        while True:
            if self._dead and self._queue.empty():
                return ColumnShard(stripe, None, self._dead)
            item = await self._queue.get()
            if item.stripe == stripe:
                return item
            if item.stripe == -1:
                self._dead = item.code
                return ColumnShard(stripe, None, item.code)

    def close(self) -> None:
        """Stop queueing. The pump is not cancelled: an HTTP response cancelled mid-read
        can leave its connection checked out of httpx's pool for good (seen here: every
        read leaked one, and the 17th read waited the pool timeout). It reads the rest of
        the column stream, dropping it, bounded by the read timeout."""
        self._closed = True
        while not self._queue.empty():  # unblock a pump waiting for room
            self._queue.get_nowait()


def _matches(data: bytes, cid: str) -> bool:
    return cid_for(data) == cid
