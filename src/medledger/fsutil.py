"""Small file-system recipes shared by key files, custody and chunk stores."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically.

    The temporary file is created with ``O_EXCL`` under a unique name in the same
    directory (so concurrent writers never share it and a stale file cannot lend it
    its mode or owner), gets ``mode`` before any data is written, and replaces
    ``path`` with one rename. With ``durable`` the data is fsynced first.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def fsync_path(path: Path) -> None:
    """fsync a file (its data) or a directory (its entries: a rename, a new file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
