"""How a node's coordinator reaches institutions' shard services: its own directly,
other members' over HTTP (signed with this node's key; only member and observer
node keys are served)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import queue
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx
import msgspec

from medledger.api import signing
from medledger.crypto.keys import PrivateKey
from medledger.errors import IntegrityError, MedLedgerError, Unavailable, from_wire
from medledger.storage import framing
from medledger.storage.manifest import MAX_CHUNK_SIZE, Manifest
from medledger.storage.shards import ColumnShard, Item, ShardProof, ShardService

PREFIX = "/storage/v1"
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 60.0
PUT_QUEUE = 32  # frames queued for a column's sender thread
SENDERS = 8  # column uploads to one service at a time (more wait their turn)


class ShardEndpoint(Protocol):
    name: str

    async def put(self, items: AsyncIterator[Item], columns: list[int]) -> None: ...

    def column(
        self, manifest: Manifest, manifest_cid: str, column: int, start: int
    ) -> AsyncGenerator[ColumnShard, None]: ...

    async def manifest_bytes(self, manifest_cid: str) -> bytes: ...

    async def shard(self, cid: str) -> bytes: ...

    async def prove(self, manifest_cid: str, stripe: int, column: int) -> ShardProof: ...

    async def check(self, manifest_cid: str, column: int) -> list[ColumnShard]: ...

    async def status(self) -> dict[str, Any]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class LocalEndpoint:
    """This node's own shard service, called in-process."""

    def __init__(self, service: ShardService) -> None:
        self.service = service
        self.name = service.name

    async def put(self, items: AsyncIterator[Item], columns: list[int]) -> None:
        await self.service.receive(items, columns)

    def column(
        self, manifest: Manifest, manifest_cid: str, column: int, start: int
    ) -> AsyncGenerator[ColumnShard, None]:
        return self.service.column(manifest, column, start)

    async def manifest_bytes(self, manifest_cid: str) -> bytes:
        return await self.service.manifest_bytes(manifest_cid)

    async def shard(self, cid: str) -> bytes:
        return await self.service.shard(cid)

    async def prove(self, manifest_cid: str, stripe: int, column: int) -> ShardProof:
        return await self.service.prove(manifest_cid, stripe, column)

    async def check(self, manifest_cid: str, column: int) -> list[ColumnShard]:
        return await self.service.check(manifest_cid, column)

    async def status(self) -> dict[str, Any]:
        return await self.service.status()

    async def ping(self) -> None:
        await self.service.ping()

    async def close(self) -> None:
        return None


class RemoteEndpoint:
    """Another member's shard service over HTTP."""

    def __init__(self, name: str, base_url: str, key: PrivateKey, now_ms: Any) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._key = key
        self._now_ms = now_ms
        # one thread per column upload in flight (each blocks on its socket)
        self._senders = ThreadPoolExecutor(SENDERS, thread_name_prefix=f"shards-to-{name}")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
        )

    async def close(self) -> None:
        await self._http.aclose()
        self._senders.shutdown(wait=False, cancel_futures=True)

    def _headers(self, method: str, path_qs: str, body_hash: str) -> dict[str, str]:
        return signing.sign_request(self._key, method, path_qs, self._now_ms(), body_hash)

    def _unavailable(self, exc: Exception) -> Unavailable:
        return Unavailable(
            f"storage service of {self.name} is unreachable: {type(exc).__name__}",
            code="STORAGE_SERVICE_UNAVAILABLE",
        )

    async def _get(self, path_qs: str) -> httpx.Response:
        headers = self._headers("GET", path_qs, signing.body_hash(b""))
        try:
            resp = await self._http.get(path_qs, headers=headers)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc)
        if resp.status_code >= 400:
            raise _error_from(resp.status_code, resp.content)
        return resp

    async def put(self, items: AsyncIterator[Item], columns: list[int]) -> None:
        """Stream a column to the service. The bytes go out from a worker thread
        (``http.client``, whose blocking sends release the GIL): on loopback a send
        does the receiver's TCP work too, which would otherwise stall this node's
        event loop and the threads hashing and coding the next stripes."""
        path_qs = f"{PREFIX}/shards?columns={','.join(map(str, columns))}"
        headers = self._headers("POST", path_qs, signing.UNSIGNED)
        headers["content-type"] = "application/vnd.medledger.frames"
        frames: queue.Queue[bytes | None] = queue.Queue(PUT_QUEUE)
        loop = asyncio.get_running_loop()
        sender = loop.run_in_executor(
            self._senders, _post_frames, self.base_url, path_qs, headers, frames
        )
        try:
            async for kind, payload in items:
                frame = framing.frame(kind, payload)
                while True:
                    try:
                        frames.put_nowait(frame)
                        break
                    except queue.Full:
                        if sender.done():
                            break  # the request already ended: its outcome says why
                        await asyncio.sleep(0.001)
                if sender.done():
                    break
        except BaseException:
            _abort(frames)
            with contextlib.suppress(BaseException):
                await sender
            raise
        while not sender.done():
            try:
                frames.put_nowait(None)
                break
            except queue.Full:
                await asyncio.sleep(0.001)
        status, body = await sender
        if status >= 400:
            raise _error_from(status, body)
        if status == 0:
            raise Unavailable(
                f"storage service of {self.name} is unreachable: {body.decode()}",
                code="STORAGE_SERVICE_UNAVAILABLE",
            )

    async def column(
        self, manifest: Manifest, manifest_cid: str, column: int, start: int
    ) -> AsyncGenerator[ColumnShard, None]:
        path_qs = f"{PREFIX}/manifests/{quote(manifest_cid)}/columns/{column}?start={start}"
        headers = self._headers("GET", path_qs, signing.body_hash(b""))
        stripes = iter(
            [s for s in range(start, manifest.stripes) if manifest.shard(s, column) is not None]
        )
        parser = framing.FrameParser(MAX_CHUNK_SIZE + 64)
        try:
            async with self._http.stream("GET", path_qs, headers=headers) as resp:
                if resp.status_code >= 400:
                    raise _error_from(resp.status_code, await resp.aread())
                async for piece in resp.aiter_raw():
                    for kind, payload in parser.feed(piece):
                        s = next(stripes, None)
                        if s is None:
                            raise IntegrityError(
                                "column stream is longer than the manifest", code="BAD_FRAME"
                            )
                        if kind == framing.CHUNK:
                            yield ColumnShard(s, payload)
                        else:
                            code = "SHARD_NOT_FOUND"
                            if kind == framing.MISSING:
                                code = str(msgspec.json.decode(payload).get("code", code))
                            yield ColumnShard(s, None, code)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc)

    async def manifest_bytes(self, manifest_cid: str) -> bytes:
        return (await self._get(f"{PREFIX}/manifests/{quote(manifest_cid)}")).content

    async def shard(self, cid: str) -> bytes:
        return (await self._get(f"{PREFIX}/shards/{quote(cid)}")).content

    async def prove(self, manifest_cid: str, stripe: int, column: int) -> ShardProof:
        doc = (
            await self._get(
                f"{PREFIX}/manifests/{quote(manifest_cid)}/proof?stripe={stripe}&column={column}"
            )
        ).json()
        try:
            return ShardProof(
                shard=base64.b64decode(doc["shard"]),
                path=[bytes.fromhex(p) for p in doc["path"]],
                leaf=int(doc["leaf"]),
                shard_count=int(doc["shard_count"]),
            )
        except (KeyError, ValueError, TypeError):
            raise IntegrityError("malformed audit answer", code="BAD_AUDIT_ANSWER")

    async def check(self, manifest_cid: str, column: int) -> list[ColumnShard]:
        doc = (
            await self._get(f"{PREFIX}/manifests/{quote(manifest_cid)}/check?column={column}")
        ).json()
        return [ColumnShard(int(b["stripe"]), None, str(b["code"])) for b in doc["bad"]]

    async def status(self) -> dict[str, Any]:
        return dict((await self._get(f"{PREFIX}/status")).json())

    async def ping(self) -> None:
        await self._get(f"{PREFIX}/ping")


class _Aborted(Exception):
    """The coordinator gave up on the upload: end the request body mid-stream."""


def _abort(frames: queue.Queue[bytes | None]) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            frames.get_nowait()
    with contextlib.suppress(queue.Full):
        frames.put_nowait(b"")  # the marker of an abandoned upload


def _post_frames(
    base_url: str,
    path_qs: str,
    headers: dict[str, str],
    frames: queue.Queue[bytes | None],
) -> tuple[int, bytes]:
    """POST the frames as a chunked body; ``(status, body)``, or ``(0, reason)`` when
    the service cannot be reached. An empty frame aborts: the connection is dropped
    mid-body, so the service deletes what this stream wrote."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=READ_TIMEOUT)

    def body() -> Iterator[bytes]:
        while (frame := frames.get()) is not None:
            if not frame:
                raise _Aborted
            yield frame

    try:
        conn.request("POST", path_qs, body=body(), headers=headers, encode_chunked=True)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except _Aborted:
        return 0, b"upload abandoned"
    except (OSError, http.client.HTTPException) as exc:
        return 0, type(exc).__name__.encode()
    finally:
        conn.close()


def proof_json(p: ShardProof) -> dict[str, Any]:
    return {
        "shard": base64.b64encode(p.shard).decode("ascii"),
        "path": [x.hex() for x in p.path],
        "leaf": p.leaf,
        "shard_count": p.shard_count,
    }


def _error_from(status: int, body: bytes) -> MedLedgerError:
    try:
        err = msgspec.json.decode(body)["error"]
        return from_wire(status, str(err["code"]), str(err["message"]))
    except Exception:
        return from_wire(status, f"HTTP_{status}", "storage service error")
