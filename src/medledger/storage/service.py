"""The node's storage service: streamed, pipelined uploads and downloads.

Hashing and file I/O release the GIL, so chunk work runs in a small thread pool
while the event loop keeps receiving (upload) or sending (download). A bounded
window of chunks in flight keeps memory constant whatever the record size.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec

from medledger.errors import InvalidInput, MedLedgerError
from medledger.storage import framing
from medledger.storage.chunkstore import LocalChunkStore
from medledger.storage.manifest import MAX_CHUNK_SIZE, Manifest, decode_manifest

WINDOW = 8  # chunks in flight per stream (8 x 256 KiB = 2 MiB)
RemoteFetch = Callable[[str], Awaitable[bytes]]


@dataclass
class UploadResult:
    manifest_cid: str
    manifest: Manifest
    new_chunks: list[str] = field(default_factory=list)


class StorageService:
    def __init__(self, chunks: LocalChunkStore, *, threads: int = 2) -> None:
        self.chunks = chunks
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="storage")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def receive(
        self, stream: AsyncIterator[bytes], on_bytes: Callable[[int], None] | None = None
    ) -> UploadResult:
        """Store the chunks of an upload stream; validate and store its manifest.

        On any failure (bad frame, truncated stream, client gone) the chunks this
        upload newly wrote are deleted again and nothing is acknowledged.
        """
        parser = framing.FrameParser(MAX_CHUNK_SIZE + 64)
        received: dict[str, int] = {}
        new: list[str] = []
        inflight: deque[asyncio.Future[tuple[str, bool, int]]] = deque()
        manifest_bytes: bytes | None = None
        loop = asyncio.get_running_loop()
        ok = False

        async def settle(limit: int) -> None:
            while len(inflight) > limit:
                cid, fresh, size = await inflight.popleft()
                if fresh:
                    new.append(cid)
                received[cid] = size
                if on_bytes is not None:
                    on_bytes(size)

        def add(payload: bytes) -> tuple[str, bool, int]:
            cid, fresh = self.chunks.add(payload)
            return cid, fresh, len(payload)

        try:
            async for piece in stream:
                for kind, payload in parser.feed(piece):
                    if manifest_bytes is not None:
                        raise InvalidInput("data after the manifest", code="BAD_FRAME")
                    if kind == framing.CHUNK:
                        inflight.append(loop.run_in_executor(self._pool, add, payload))
                        await settle(WINDOW)
                    elif kind == framing.MANIFEST:
                        manifest_bytes = payload
                    else:
                        raise InvalidInput("unexpected frame in upload", code="BAD_FRAME")
            await settle(0)
            if manifest_bytes is None or parser.pending:
                raise InvalidInput("upload ended before its manifest", code="UPLOAD_TRUNCATED")
            manifest = decode_manifest(manifest_bytes)
            for ref in manifest.chunks:
                size = received.get(ref.cid)
                if size is None and not self.chunks.has(ref.cid):
                    raise InvalidInput(
                        "manifest names a chunk that was not uploaded", code="UPLOAD_INCOMPLETE"
                    )
                if size is not None and size != ref.size:
                    raise InvalidInput("chunk size differs from the manifest", code="BAD_MANIFEST")
            manifest_cid, _ = await loop.run_in_executor(
                self._pool, self.chunks.add, manifest_bytes
            )
            await loop.run_in_executor(self._pool, self.chunks.sync, [*new, manifest_cid])
            ok = True
            return UploadResult(manifest_cid=manifest_cid, manifest=manifest, new_chunks=new)
        finally:
            if not ok:
                # let writes already running finish, then remove what this upload added
                for fut in inflight:
                    try:
                        cid, fresh, _ = await fut
                    except BaseException:
                        continue
                    if fresh:
                        new.append(cid)
                for cid in new:
                    self.chunks.delete(cid)

    async def fetch(self, cid: str, remote: RemoteFetch | None) -> bytes:
        """A chunk from this node, or else from ``remote`` (verified, then kept here)."""
        try:
            return await asyncio.to_thread(self.chunks.get, cid)
        except MedLedgerError as exc:
            if remote is None or exc.code not in ("CHUNK_NOT_FOUND", "CHUNK_CORRUPT"):
                raise
        data = await remote(cid)
        await asyncio.to_thread(self.chunks.put, cid, data)  # verifies the CID
        return data

    async def send(
        self,
        manifest_cid: str,
        on_bytes: Callable[[int], None] | None = None,
        remote: RemoteFetch | None = None,
    ) -> tuple[Manifest, AsyncIterator[bytes]]:
        """The manifest and a frame stream of it and its chunks, each verified on read.

        Chunks this node lacks come from ``remote`` (the member institution that
        holds the record) and are kept. A chunk that is missing or corrupt
        everywhere ends the stream with an ``E`` frame carrying the error code
        (the HTTP status is already sent by then).
        """
        manifest_bytes = await self.fetch(manifest_cid, remote)
        manifest = decode_manifest(manifest_bytes)
        pool = self._pool
        if remote is not None:
            return manifest, self._frames_via(manifest_bytes, manifest, remote, on_bytes)

        async def frames() -> AsyncIterator[bytes]:
            yield framing.frame(framing.MANIFEST, manifest_bytes)
            pending: deque[Future[bytes]] = deque()
            refs = iter(manifest.chunks)
            try:
                for ref in refs:
                    pending.append(pool.submit(self.chunks.get, ref.cid))
                    if len(pending) >= WINDOW:
                        break
                while pending:
                    fut = pending.popleft()
                    try:
                        data = await asyncio.wrap_future(fut)
                    except MedLedgerError as exc:
                        yield framing.frame(framing.ERROR, msgspec.json.encode(exc.to_dict()))
                        return
                    nxt = next(refs, None)
                    if nxt is not None:
                        pending.append(pool.submit(self.chunks.get, nxt.cid))
                    if on_bytes is not None:
                        on_bytes(len(data))
                    yield framing.frame_header(framing.CHUNK, len(data))
                    yield data
            finally:
                for fut in pending:
                    fut.cancel()

        return manifest, frames()

    async def _frames_via(
        self,
        manifest_bytes: bytes,
        manifest: Manifest,
        remote: RemoteFetch,
        on_bytes: Callable[[int], None] | None,
    ) -> AsyncIterator[bytes]:
        yield framing.frame(framing.MANIFEST, manifest_bytes)
        for ref in manifest.chunks:
            try:
                data = await self.fetch(ref.cid, remote)
            except MedLedgerError as exc:
                yield framing.frame(framing.ERROR, msgspec.json.encode(exc.to_dict()))
                return
            if on_bytes is not None:
                on_bytes(len(data))
            yield framing.frame_header(framing.CHUNK, len(data))
            yield data
