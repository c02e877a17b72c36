"""Chunk stores: where encrypted, content-addressed chunks live."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from medledger.crypto.cid import cid_for, is_cid
from medledger.errors import IntegrityError, InvalidInput, NotFound


class ChunkStore(Protocol):
    """Interface for chunk (and later shard) backends."""

    def put(self, cid: str, data: bytes) -> bool:
        """Store ``data`` under ``cid`` (verified); return False if already present."""
        ...

    def get(self, cid: str) -> bytes:
        """Return the bytes of ``cid``, verified against it, or raise."""
        ...

    def has(self, cid: str) -> bool: ...

    def delete(self, cid: str) -> None: ...

    def sync(self, cids: list[str]) -> None:
        """Make the named chunks durable."""
        ...


class LocalChunkStore:
    """Chunks as files under ``root/<last two chars of cid>/<cid>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, cid: str) -> Path:
        if not is_cid(cid):
            raise InvalidInput("not a chunk identifier", code="BAD_CID")
        return self.root / cid[-2:] / cid

    def has(self, cid: str) -> bool:
        return self._path(cid).exists()

    def put(self, cid: str, data: bytes) -> bool:
        if cid_for(data) != cid:
            raise IntegrityError("chunk does not match its identifier", code="CID_MISMATCH")
        path = self._path(cid)
        if path.exists():
            return False
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{cid}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return True

    def get(self, cid: str) -> bytes:
        path = self._path(cid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound("chunk is not stored on this node", code="CHUNK_NOT_FOUND")
        if cid_for(data) != cid:
            raise IntegrityError("stored chunk is corrupt (hash mismatch)", code="CHUNK_CORRUPT")
        return data

    def delete(self, cid: str) -> None:
        try:
            self._path(cid).unlink()
        except FileNotFoundError:
            pass

    def sync(self, cids: list[str]) -> None:
        dirs: set[Path] = set()
        for cid in cids:
            path = self._path(cid)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dirs.add(path.parent)
        for d in dirs:
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
