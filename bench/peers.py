"""Reference points for the storage benchmark: what moving the same file costs without
MedLedger, so its numbers can be read against them in the same run, on the same disk.

* :func:`plain_copy` - a durable copy through user space (read, write, fsync);
* :func:`seaweed_put_get` - the file put into and read back from a real SeaweedFS
  S3 gateway with boto3's multipart transfer (what an institution pays with an
  object store and no ledger).

The SeaweedFS server itself is started with :func:`start_seaweed` from
``tests/integration/seaweed.py`` (re-exported here): that directory is put on
``sys.path`` at import, as bench scripts run from the repository root with the
development venv (which has pytest, boto3 and the ``weed`` binary).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

_SEAWEED_DIR = Path(__file__).resolve().parent.parent / "tests" / "integration"
if str(_SEAWEED_DIR) not in sys.path:
    sys.path.insert(0, str(_SEAWEED_DIR))

from seaweed import SeaweedS3, start_seaweed  # noqa: E402

from medledger.errors import IntegrityError  # noqa: E402
from medledger.fsutil import fsync_path  # noqa: E402

__all__ = ["S3Endpoint", "SeaweedS3", "plain_copy", "seaweed_put_get", "start_seaweed"]

MIB = 1 << 20
COPY_BUFFER = 8 * MIB
BENCH_BUCKET = "medledger-bench"


class S3Endpoint(Protocol):
    """What :func:`seaweed_put_get` needs of a server (``SeaweedS3`` has it)."""

    endpoint_url: str
    access_key: str
    secret_key: str

    def client(self, **config: Any) -> Any: ...


def plain_copy(src: Path, dst: Path) -> float:
    """Copy ``src`` to ``dst`` through user space and make it durable (fsync of the file
    and of its directory); return the seconds taken."""
    began = time.perf_counter()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(COPY_BUFFER):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    fsync_path(dst.parent)
    return time.perf_counter() - began


def seaweed_put_get(
    s3: S3Endpoint,
    src: Path,
    dst: Path,
    part_size: int = 8 * MIB,
    threads: int = 4,
) -> tuple[float, float]:
    """Upload ``src`` as one object (multipart, ``threads`` parts in flight) and download
    it to ``dst`` (fsynced); return ``(put_seconds, get_seconds)``.

    The bucket is created and the copy verified by sha256 outside the timed parts;
    the object is deleted afterwards so repeated runs do not fill the server.
    """
    from boto3.s3.transfer import TransferConfig

    client = s3.client(max_pool_connections=16, retries={"max_attempts": 3, "mode": "standard"})
    _ensure_bucket(client, BENCH_BUCKET)
    key = f"peer/{uuid.uuid4().hex}"
    transfer = TransferConfig(
        multipart_threshold=part_size,
        multipart_chunksize=part_size,
        max_concurrency=threads,
        use_threads=True,
    )
    try:
        began = time.perf_counter()
        client.upload_file(str(src), BENCH_BUCKET, key, Config=transfer)
        put_s = time.perf_counter() - began

        began = time.perf_counter()
        client.download_file(BENCH_BUCKET, key, str(dst), Config=transfer)
        _fsync_file(dst)
        get_s = time.perf_counter() - began
    finally:
        client.delete_object(Bucket=BENCH_BUCKET, Key=key)
    if _sha256(src) != _sha256(dst):
        raise IntegrityError(
            f"SeaweedFS returned different bytes for {src.name}", code="BENCH_MISMATCH"
        )
    return put_s, get_s


# ---- internals ----------------------------------------------------------------------------


def _ensure_bucket(client: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_BUFFER):
            digest.update(chunk)
    return digest.digest()


def _fsync_file(path: Path) -> None:
    fsync_path(path)
    fsync_path(path.parent)
