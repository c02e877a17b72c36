"""The consensus write-ahead log: append, torn tails, damage, repair, height rotation."""

from __future__ import annotations

from pathlib import Path

import pytest

from medledger.consensus.wal import HEIGHT, INPUT, SIGNED, WalRecord, WriteAheadLog, read_wal
from medledger.errors import NodeError


def rec(kind: int, height: int, tag: int, payload: bytes = b"x") -> WalRecord:
    return WalRecord(kind=kind, height=height, tag=tag, payload=payload)


def write(path: Path, records: list[WalRecord]) -> None:
    wal = WriteAheadLog(path)
    for r in records:
        wal.append(r, sync=r.kind == SIGNED)
    wal.close()


RECORDS = [rec(HEIGHT, 5, 1), rec(INPUT, 5, 2, b"p" * 100), rec(SIGNED, 5, 6), rec(INPUT, 5, 3)]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "consensus.wal"
    write(path, RECORDS)
    assert read_wal(path) == RECORDS


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_wal(tmp_path / "nope.wal") == []


def test_every_torn_tail_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "consensus.wal"
    write(path, RECORDS)
    full = path.read_bytes()
    ends = []
    pos = 0
    for r in RECORDS:  # record boundaries
        probe = tmp_path / "probe.wal"
        probe.unlink(missing_ok=True)
        write(probe, [r])
        pos += len(probe.read_bytes())
        ends.append(pos)
    for cut in range(len(full)):
        path.write_bytes(full[:cut])
        got = read_wal(path)
        complete = sum(1 for e in ends if e <= cut)
        assert got == RECORDS[:complete], cut
        # the torn tail was cut off, so appending continues cleanly
        assert path.stat().st_size == (ends[complete - 1] if complete else 0)


def test_damage_before_the_end_stops_the_node(tmp_path: Path) -> None:
    path = tmp_path / "consensus.wal"
    write(path, RECORDS)
    data = bytearray(path.read_bytes())
    data[12] ^= 0xFF  # inside the first record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(NodeError) as exc:
        read_wal(path)
    assert exc.value.code == "WAL_CORRUPT"
    assert path.read_bytes() == bytes(data)  # nothing is cut without repair


def test_repair_cuts_at_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "consensus.wal"
    write(path, RECORDS)
    first_len = len(read_first(tmp_path))
    data = bytearray(path.read_bytes())
    data[first_len + 10] ^= 0x01  # inside the second record
    path.write_bytes(bytes(data))
    assert read_wal(path, repair=True) == RECORDS[:1]
    assert read_wal(path) == RECORDS[:1]
    assert path.stat().st_size == first_len


def read_first(tmp_path: Path) -> bytes:
    probe = tmp_path / "first.wal"
    probe.unlink(missing_ok=True)
    write(probe, RECORDS[:1])
    return probe.read_bytes()


def test_start_height_replaces_the_log(tmp_path: Path) -> None:
    path = tmp_path / "consensus.wal"
    wal = WriteAheadLog(path)
    for r in RECORDS:
        wal.append(r)
    nxt = rec(HEIGHT, 6, 1, b"new height")
    wal.start_height(nxt)
    wal.append(rec(INPUT, 6, 3))
    wal.close()
    assert read_wal(path) == [nxt, rec(INPUT, 6, 3)]
