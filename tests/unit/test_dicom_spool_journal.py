"""The gateway spool's journal: one durable append per instance, replayed at start."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from medledger.dicom.spool import Spool, StudyMeta, journal_path, read_journal

STUDY = "1.2.826.0.1.3680043.8.498.1"
META = StudyMeta(identity="mlservice", calling_ae="CT_1", patient_id="MRN-1")


def test_every_put_is_in_the_journal_and_the_folder(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put(STUDY, "1.2.3", b"DICM-one", META, association=1)
    spool.put(STUDY, "1.2.4", b"DICM-two", META, association=1)
    spool.put(STUDY, "1.2.3", b"DICM-one-again", META, association=1)  # sent twice
    journal = journal_path(tmp_path / "spool" / STUDY)
    assert journal.name == f".{STUDY}.journal" and journal.parent == tmp_path / "spool"
    found, valid = read_journal(journal)
    assert found == {"1.2.3": b"DICM-one-again", "1.2.4": b"DICM-two"}
    assert valid == journal.stat().st_size
    assert (tmp_path / "spool" / STUDY / "1.2.3.dcm").read_bytes() == b"DICM-one-again"

    batch = spool.close(STUDY)
    assert batch is not None and batch.journal.exists() and not journal.exists()
    assert read_journal(batch.journal)[0] == found
    spool.discard(batch)
    assert not batch.journal.exists() and not batch.path.exists()


def test_a_crash_is_repaired_from_the_journal(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        spool.put(STUDY, f"1.2.{i}", f"DICM-{i}".encode() * 100, META, association=1)
    folder = tmp_path / "spool" / STUDY
    journal = journal_path(folder)
    # the crash: one file lost (never written back), one torn, one written but whose
    # journal entry was not synced (the put never answered), and a torn journal tail
    (folder / "1.2.0.dcm").unlink()
    (folder / "1.2.1.dcm").write_bytes(b"DI")
    (folder / "1.2.9.dcm").write_bytes(b"never acknowledged")
    size = journal.stat().st_size
    with open(journal, "ab") as fh:
        fh.write(b"MLJ1\x05\x00garbage")

    again = Spool(tmp_path)
    assert sorted(p.name for p in folder.glob("*.dcm")) == ["1.2.0.dcm", "1.2.1.dcm", "1.2.2.dcm"]
    for i in range(3):
        assert (folder / f"1.2.{i}.dcm").read_bytes() == f"DICM-{i}".encode() * 100
    assert journal.stat().st_size == size  # the torn tail is cut off
    # the study goes on after the restart, in the same journal
    again.put(STUDY, "1.2.3", b"DICM-3", META, association=2)
    assert set(read_journal(journal)[0]) == {"1.2.0", "1.2.1", "1.2.2", "1.2.3"}
    assert again.open_studies() == {STUDY: 1}


def test_a_journal_left_behind_by_a_close_goes_with_its_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put(STUDY, "1.2.3", b"DICM-one", META, association=1)
    batch = spool.close(STUDY)
    assert batch is not None
    # as if the crash came between the folder's rename and the journal's
    os.rename(batch.journal, journal_path(tmp_path / "spool" / STUDY))
    (batch.path / "1.2.3.dcm").unlink()
    again = Spool(tmp_path)
    (found,) = again.batches()
    assert found.path == batch.path and found.journal.exists()
    assert (batch.path / "1.2.3.dcm").read_bytes() == b"DICM-one"
    assert again.open_studies() == {}


def test_concurrent_puts_share_syncs_and_all_land(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    calls = 0
    real = os.fdatasync

    def counting(fd: int) -> None:
        nonlocal calls
        calls += 1
        real(fd)

    os.fdatasync = counting  # type: ignore[assignment]
    try:
        errors: list[BaseException] = []

        def sender(t: int) -> None:
            try:
                for i in range(50):
                    spool.put(STUDY, f"1.{t}.{i}", os.urandom(2000), META, association=t)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(1, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.fdatasync = real  # type: ignore[assignment]
    assert errors == []
    assert spool.open_studies() == {STUDY: 200}
    found, _ = read_journal(journal_path(tmp_path / "spool" / STUDY))
    assert len(found) == 200
    folder = tmp_path / "spool" / STUDY
    assert all((folder / f"{uid}.dcm").read_bytes() == data for uid, data in found.items())
    assert 1 <= calls <= 200
