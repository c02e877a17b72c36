"""Chunk stores: where encrypted, content-addressed chunks live."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from medledger.crypto.cid import cid_for, is_cid
from medledger.errors import IntegrityError, InvalidInput, NotFound
from medledger.fsutil import atomic_write, fsync_path


class ChunkStore(Protocol):
    """Interface for chunk (and later shard) backends."""

    def put(self, cid: str, data: bytes) -> bool:
        """Store ``data`` under ``cid`` (verified); return False if already present."""
        ...

    def get(self, cid: str) -> bytes:
        """Return the bytes of ``cid``, verified against it, or raise."""
        ...

    def has(self, cid: str) -> bool: ...

    def add(self, data: bytes) -> tuple[str, bool]:
        """Store ``data`` under its own CID; return ``(cid, newly_written)``."""
        ...

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
        return self._write(cid, data)

    def add(self, data: bytes) -> tuple[str, bool]:
        """Store ``data`` under its own CID; return ``(cid, newly_written)``."""
        cid = cid_for(data)
        return cid, self._write(cid, data)

    def _write(self, cid: str, data: bytes) -> bool:
        """Write a verified chunk. Returns False when a good copy was already stored;
        a stored copy that fails its hash is replaced (repaired), also returning False
        so that a failed upload never deletes a chunk an earlier record uses."""
        path = self._path(cid)
        if path.exists():
            try:
                if cid_for(path.read_bytes()) == cid:
                    return False
            except OSError:
                pass
            atomic_write(path, data, mode=0o644, durable=False)
            return False
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, data, mode=0o644, durable=False)
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
        """Make the named chunks durable: one ``syncfs`` of the store's file system on
        Linux (far cheaper than an fsync per chunk file and per directory), else fsync
        of every file and directory."""
        if not cids:
            return
        if _syncfs(self.root):
            return
        dirs: set[Path] = set()
        for cid in cids:
            path = self._path(cid)
            fsync_path(path)
            dirs.add(path.parent)
        for d in dirs:
            fsync_path(d)


def _load_syncfs() -> Callable[[int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_SYNCFS = _load_syncfs()


def _syncfs(root: Path) -> bool:
    if _SYNCFS is None:
        return False
    fd = os.open(root, os.O_RDONLY)
    try:
        return _SYNCFS(fd) == 0
    finally:
        os.close(fd)
