"""Write-ahead log of the consensus driver.

Each record is ``length (4) || crc32 (4) || payload`` where payload is a canonical
``WalRecord``. The driver appends every input of the consensus core (its
``NewHeight``, received proposals and votes, timeouts, built blocks) *before* the
core handles it, and every vote or proposal it signs, fsynced *before* the
message leaves the node. After a crash the driver replays the records of the
current height into a fresh core (which is deterministic, so it reaches the same
state and re-emits the same votes) and answers any vote it signed before with
the stored signature rather than signing again.

A torn record at the end (a crash mid-append) is cut off; a damaged record before
the end stops the node with ``WAL_CORRUPT`` and ``medledger node repair-wal``
truncates the log at the first damaged record.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from medledger.codec import Record, decode_canonical, encode
from medledger.errors import DecodeError, NodeError
from medledger.fsutil import fsync_path

_HDR = struct.Struct(">II")
MAX_RECORD = 64 * 1024 * 1024

# record kinds
HEIGHT = 1  # a new height starts here (payload: the encoded NewHeight input)
INPUT = 2  # an input to the core (payload: encoded event)
SIGNED = 3  # a vote or proposal this node signed (payload: the signed message)


class WalRecord(Record, frozen=True):
    kind: int
    height: int
    tag: int  # the event / message type tag chosen by the driver
    payload: bytes


class WriteAheadLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "ab")  # noqa: SIM115 - kept open for the node's life

    def close(self) -> None:
        self._fh.close()

    def append(self, record: WalRecord, *, sync: bool = False) -> None:
        payload = encode(record)
        self._fh.write(_HDR.pack(len(payload), zlib.crc32(payload)) + payload)
        self._fh.flush()
        if sync:
            os.fsync(self._fh.fileno())

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def start_height(self, record: WalRecord) -> None:
        """Start a new log for a new height (the previous height is committed)."""
        tmp = self.path.with_name(self.path.name + ".new")
        payload = encode(record)
        with open(tmp, "wb") as fh:
            fh.write(_HDR.pack(len(payload), zlib.crc32(payload)) + payload)
            fh.flush()
            os.fsync(fh.fileno())
        self._fh.close()
        os.replace(tmp, self.path)
        fsync_path(self.path.parent)
        self._fh = open(self.path, "ab")  # noqa: SIM115


def read_wal(path: Path, *, repair: bool = False) -> list[WalRecord]:
    """All records; cut a torn tail. ``repair`` truncates at the first damaged record."""
    records: list[WalRecord] = []
    good_end = 0
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return records
    for end, rec in _scan(data):
        if rec is None:
            # damaged: a torn tail is normal after a crash, anything else is not
            if end >= len(data) or repair:
                _truncate(path, good_end)
                return records
            raise NodeError(
                f"write-ahead log {path} is damaged at byte {good_end}; "
                "run 'medledger node repair-wal --home HOME' to cut it there",
                code="WAL_CORRUPT",
            )
        records.append(rec)
        good_end = end
    return records


def _scan(data: bytes) -> Iterator[tuple[int, WalRecord | None]]:
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HDR.size:
            yield len(data), None
            return
        length, crc = _HDR.unpack_from(data, pos)
        start = pos + _HDR.size
        end = start + length
        if length > MAX_RECORD or end > len(data):
            yield len(data), None  # torn or garbage length: treat as tail
            return
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            yield end, None
            return
        try:
            rec = decode_canonical(payload, WalRecord)
        except DecodeError:
            yield end, None
            return
        yield end, rec
        pos = end


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())
