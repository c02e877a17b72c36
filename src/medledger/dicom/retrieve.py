"""Reading an imaging-study record back as its DICOM instances (C-MOVE, C-GET, WADO-RS).

:func:`read_study` reads the record through the node's own API with
:class:`medledger.client.Client` and the gateway key, as ``medledger record get``
would: a committed ``record.read`` access event (on the patient's audit trail, with
``on_behalf_of`` the DICOM device or ``delegation`` a bearer token's grantor), the
key rebuilt from its custodians' shares, the shards fetched, verified and decrypted.
The study archive (:mod:`medledger.study`) is then read member by member into
memory: SOP Instance UID -> the Part 10 file's bytes exactly as stored.

The decrypted archive passes through one private temporary file (a 0700 folder,
deleted on return, whatever happens), because the client decrypts chunks in parallel
into positional writes. The archive is read with :mod:`tarfile` straight into
memory, accepting regular files only (``BAD_ARCHIVE`` otherwise), and nothing is
extracted to disk.

Synchronous: from async code, run it with :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

from medledger.crypto.keys import PrivateKey
from medledger.errors import InvalidInput
from medledger.study import MAX_FILES

__all__ = ["archive_members", "instances_from_archive", "read_archive", "read_study"]


def read_study(
    api_url: str,
    key: PrivateKey,
    record_id: str,
    *,
    purpose: str,
    on_behalf_of: str = "",
    delegation: bytes = b"",
    break_glass: bool = False,
    reason: str = "",
) -> dict[str, bytes]:
    """SOP Instance UID -> Part 10 bytes of every instance of the study record.

    Raises the :class:`~medledger.errors.MedLedgerError` of the read (``ACCESS_DENIED``
    when the chain denies it: the denial is on chain too), or ``BAD_ARCHIVE`` if the
    record is not a study archive.
    """
    archive = read_archive(
        api_url,
        key,
        record_id,
        purpose=purpose,
        on_behalf_of=on_behalf_of,
        delegation=delegation,
        break_glass=break_glass,
        reason=reason,
    )
    return instances_from_archive(archive)


def read_archive(api_url: str, key: PrivateKey, record_id: str, **read: Any) -> bytes:
    """The decrypted study archive of a record, read with ``key`` through the node's
    API (``read``: :meth:`medledger.client.Client.get_record`'s keyword arguments)."""
    from medledger.client import Client  # httpx: only when reading

    folder = Path(tempfile.mkdtemp(prefix="medledger-read-"))  # mode 0700
    try:
        out = folder / "study.tar"
        with Client(api_url, key) as client:
            client.get_record(record_id, out, **read)
        return out.read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def archive_members(archive: bytes) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    """Each member of a study archive with its bytes; ``BAD_ARCHIVE`` for anything but
    at most ``MAX_FILES`` regular files (a malformed archive raises as it is met)."""
    try:
        with tarfile.open(fileobj=BytesIO(archive), mode="r:") as tar:
            for n, member in enumerate(tar):
                if n >= MAX_FILES or not member.isreg():
                    raise InvalidInput("not a study archive", code="BAD_ARCHIVE")
                fh = tar.extractfile(member)
                if fh is None:
                    raise InvalidInput("not a study archive", code="BAD_ARCHIVE")
                yield member, fh.read()
    except InvalidInput:
        raise
    except Exception:  # tarfile signals a malformed archive many ways
        raise InvalidInput("the record is not a readable study archive", code="BAD_ARCHIVE")


def instances_from_archive(archive: bytes) -> dict[str, bytes]:
    """The Part 10 files of a study archive, keyed by SOP Instance UID (files without
    one, such as a DICOMDIR, are left out)."""
    import pydicom

    found: dict[str, bytes] = {}
    for _, data in archive_members(archive):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # may quote element values
                ds = pydicom.dcmread(
                    BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
                )
            sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip("\x00 ")
        except Exception:  # pydicom signals a malformed file many ways
            raise InvalidInput("the record is not a readable study archive", code="BAD_ARCHIVE")
        if sop_uid:
            found[sop_uid] = data
    return found
