"""Shard backends: where an institution's encrypted, content-addressed shards live.

A shard is a data shard (an encrypted chunk), a parity shard, or a manifest;
each is stored under its CID and verified against it on every read. Backends:
``LocalShardBackend`` (a directory, the default) and ``S3ShardBackend``
(``storage.s3backend``, any S3-compatible store).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from medledger.crypto.cid import cid_for, is_cid
from medledger.errors import IntegrityError, InvalidInput, NotFound
from medledger.fsutil import fsync_path


class ShardBackend(Protocol):
    """What the storage service needs of a backend. Implementations are thread-safe:
    the service calls them from a small thread pool.

    Errors: ``NotFound`` with code ``SHARD_NOT_FOUND``; ``IntegrityError`` with
    ``SHARD_CORRUPT`` (stored bytes fail their CID) or ``CID_MISMATCH`` (``put``);
    ``Unavailable`` with ``BACKEND_UNAVAILABLE`` when the store cannot be reached.
    """

    def put(self, cid: str, data: bytes) -> bool:
        """Store ``data`` under ``cid`` (verified); return False if already present.
        A stored copy that fails its hash is replaced (repaired), also returning False."""
        ...

    def get(self, cid: str, *, verify: bool = True) -> bytes:
        """Return the bytes of ``cid``, verified against it (unless the caller verifies
        them itself: ``verify=False``), or raise."""
        ...

    def has(self, cid: str) -> bool: ...

    def add(self, data: bytes) -> tuple[str, bool]:
        """Store ``data`` under its own CID; return ``(cid, newly_written)``."""
        ...

    def delete(self, cid: str) -> None:
        """Remove ``cid``; no error if absent."""
        ...

    def sync(self, cids: list[str]) -> None:
        """Make the named shards durable (a no-op where a write is durable on return)."""
        ...

    def usage(self) -> tuple[int, int]:
        """``(objects, bytes)`` stored."""
        ...

    def describe(self) -> str:
        """Where the shards live, for status output (no secrets)."""
        ...


class ContentAddressedStore:
    """What every backend does the same way: objects are stored whole under their
    CID, checked on the way in (``put``), named by their hash (``add``), and checked
    on the way out (``get``). Subclasses move bytes: ``_load`` (raising ``NotFound``
    with ``SHARD_NOT_FOUND``) and ``_store`` (replacing any stored copy)."""

    def _load(self, cid: str) -> bytes:
        raise NotImplementedError

    def _store(self, cid: str, data: bytes) -> None:
        raise NotImplementedError

    def put(self, cid: str, data: bytes) -> bool:
        if cid_for(data) != cid:
            raise IntegrityError("shard does not match its identifier", code="CID_MISMATCH")
        return self._write(cid, data)

    def add(self, data: bytes) -> tuple[str, bool]:
        """Store ``data`` under its own CID; return ``(cid, newly_written)``."""
        cid = cid_for(data)
        return cid, self._write(cid, data)

    def get(self, cid: str, *, verify: bool = True) -> bytes:
        data = self._load(cid)
        if verify and cid_for(data) != cid:
            raise IntegrityError("stored shard is corrupt (hash mismatch)", code="SHARD_CORRUPT")
        return data

    def _write(self, cid: str, data: bytes) -> bool:
        """Write a verified shard. Returns False when a good copy was already stored;
        a stored copy that fails its hash (or cannot be read) is replaced (repaired),
        also returning False, so that a failed upload never deletes a shard an earlier
        record uses."""
        held: bytes | None
        try:
            held = self._load(cid)
        except NotFound:
            self._store(cid, data)
            return True
        except OSError:
            held = None  # there but unreadable: replace it
        if held is not None and cid_for(held) == cid:
            return False
        self._store(cid, data)
        return False


class LocalShardBackend(ContentAddressedStore):
    """Shards as files under ``root/<last two chars of cid>/<cid>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._dirs: set[str] = set()
        self._tmp = itertools.count()
        self._tag = f"{os.getpid()}.{secrets.token_hex(4)}"

    def _path(self, cid: str) -> Path:
        if not is_cid(cid):
            raise InvalidInput("not a shard identifier", code="BAD_CID")
        return self.root / cid[-2:] / cid

    def has(self, cid: str) -> bool:
        return self._path(cid).exists()

    def _store(self, cid: str, data: bytes) -> None:
        self._replace(self._path(cid), data)

    def _replace(self, path: Path, data: bytes) -> None:
        """Write ``data`` to a fresh temp file beside ``path`` and rename it into place
        (a handful of syscalls: shards are many, and each one releases the GIL).
        Durability comes from ``sync`` once per upload."""
        sub = path.parent.name
        if sub not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(sub)
        tmp = path.parent / f".{path.name}.{self._tag}.{next(self._tmp)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:  # the directory was removed under us (an operator, a disk swap)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.close(fd)
            fd = -1
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise

    def _load(self, cid: str) -> bytes:
        try:
            return self._path(cid).read_bytes()
        except FileNotFoundError:
            raise NotFound("shard is not stored here", code="SHARD_NOT_FOUND")

    def delete(self, cid: str) -> None:
        try:
            self._path(cid).unlink()
        except FileNotFoundError:
            pass

    def sync(self, cids: list[str]) -> None:
        """Make the named shards durable: one ``syncfs`` of the store's file system on
        Linux (far cheaper than an fsync per file and per directory), else fsync
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

    def usage(self) -> tuple[int, int]:
        objects = total = 0
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                try:
                    total += f.stat().st_size
                except FileNotFoundError:
                    continue
                if not f.name.startswith("."):
                    objects += 1
        return objects, total

    def describe(self) -> str:
        return f"local:{self.root}"


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
