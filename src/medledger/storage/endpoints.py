"""How a node's coordinator reaches institutions' shard services: its own directly,
other members' over HTTP (signed with this node's key; only member and observer
node keys are served)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import quote

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


class ShardEndpoint(Protocol):
    name: str

    async def put(self, items: AsyncIterator[Item], columns: list[int]) -> None: ...

    def column(
        self, manifest: Manifest, manifest_cid: str, column: int, start: int
    ) -> AsyncIterator[ColumnShard]: ...

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
    ) -> AsyncIterator[ColumnShard]:
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
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
        )

    async def close(self) -> None:
        await self._http.aclose()

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
        path_qs = f"{PREFIX}/shards?columns={','.join(map(str, columns))}"

        async def body() -> AsyncIterator[bytes]:
            async for kind, payload in items:
                yield framing.frame_header(kind, len(payload))
                yield payload

        headers = self._headers("POST", path_qs, signing.UNSIGNED)
        headers["content-type"] = "application/vnd.medledger.frames"
        try:
            resp = await self._http.post(path_qs, content=body(), headers=headers)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc)
        if resp.status_code >= 400:
            raise _error_from(resp.status_code, resp.content)

    async def column(
        self, manifest: Manifest, manifest_cid: str, column: int, start: int
    ) -> AsyncIterator[ColumnShard]:
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
