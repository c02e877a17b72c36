"""``S3ShardBackend`` against a real SeaweedFS S3 gateway (the ``seaweed`` fixture).

The backend must behave exactly as ``LocalShardBackend``: verified writes and reads,
the same error codes, ``put``/``add`` True only for a new shard, repair of a corrupt
stored copy, idempotent delete, usage under its own prefix. Each test works under
its own key prefix of one shared bucket, so usage counts do not see other tests.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest
from rich.pretty import pretty_repr

from medledger.crypto.cid import cid_for
from medledger.errors import IntegrityError, InvalidInput, NodeError, NotFound, Unavailable
from medledger.storage.s3backend import S3Config, S3ShardBackend

from .seaweed import SeaweedS3

BUCKET = "medledger-shards"


def shard(n: int = 1024) -> bytes:
    return os.urandom(n)


def config_for(seaweed: SeaweedS3, **overrides: Any) -> S3Config:
    fields: dict[str, Any] = {
        "endpoint_url": seaweed.endpoint_url,
        "bucket": BUCKET,
        "access_key": seaweed.access_key,
        "secret_key": seaweed.secret_key,
        "prefix": f"t-{uuid.uuid4().hex[:12]}/",
    }
    fields.update(overrides)
    return S3Config(**fields)


@pytest.fixture
def backend(seaweed: SeaweedS3) -> S3ShardBackend:
    """A backend on the shared bucket, under a prefix of its own."""
    return S3ShardBackend(config_for(seaweed))


@pytest.fixture
def raw(seaweed: SeaweedS3) -> Any:
    """A plain boto3 client, to look at and damage objects behind the backend's back."""
    return seaweed.client()


def keys_under(raw: Any, prefix: str) -> list[str]:
    listing = raw.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---- round trips ------------------------------------------------------------------------------


def test_put_get_has_add_round_trip(backend: S3ShardBackend, raw: Any) -> None:
    data = shard(5000)
    cid = cid_for(data)
    assert not backend.has(cid)
    assert backend.put(cid, data) is True
    assert backend.has(cid)
    assert backend.get(cid) == data
    assert keys_under(raw, backend.prefix) == [backend.prefix + cid]
    assert backend.put(cid, data) is False  # already stored
    assert backend.add(data) == (cid, False)
    other = shard(10)
    assert backend.add(other) == (cid_for(other), True)
    assert backend.get(cid_for(other)) == other
    backend.sync([cid, cid_for(other)])  # a no-op, but must accept the call
    assert backend.usage() == (2, 5010)


def test_delete_is_idempotent(backend: S3ShardBackend) -> None:
    data = shard()
    cid, _ = backend.add(data)
    backend.delete(cid)
    assert not backend.has(cid)
    with pytest.raises(NotFound) as exc:
        backend.get(cid)
    assert exc.value.code == "SHARD_NOT_FOUND"
    backend.delete(cid)  # absent: no error
    assert backend.put(cid, data) is True  # newly written again after delete


def test_missing_shard_is_not_found(backend: S3ShardBackend) -> None:
    cid = cid_for(b"never stored")
    assert not backend.has(cid)
    with pytest.raises(NotFound) as exc:
        backend.get(cid)
    assert exc.value.code == "SHARD_NOT_FOUND"


def test_bad_cid_is_rejected_before_any_request(backend: S3ShardBackend) -> None:
    for call in (backend.get, backend.has, backend.delete):
        with pytest.raises(InvalidInput) as exc:
            call("../../etc/passwd")
        assert exc.value.code == "BAD_CID"
    # as LocalShardBackend: put checks the data against the name first
    with pytest.raises(IntegrityError) as exc2:
        backend.put("not-a-cid", b"x")
    assert exc2.value.code == "CID_MISMATCH"


def test_cid_mismatch_is_rejected_and_nothing_stored(backend: S3ShardBackend, raw: Any) -> None:
    good, evil = shard(), shard()
    cid = cid_for(good)
    with pytest.raises(IntegrityError) as exc:
        backend.put(cid, evil)
    assert exc.value.code == "CID_MISMATCH"
    assert not backend.has(cid)
    assert keys_under(raw, backend.prefix) == []
    assert backend.usage() == (0, 0)


def test_corrupt_object_fails_get_and_is_repaired_by_put(backend: S3ShardBackend, raw: Any) -> None:
    data = shard(4096)
    cid, new = backend.add(data)
    assert new
    damaged = bytearray(data)
    damaged[100] ^= 0xFF
    raw.put_object(Bucket=BUCKET, Key=backend.prefix + cid, Body=bytes(damaged))
    with pytest.raises(IntegrityError) as exc:
        backend.get(cid)
    assert exc.value.code == "SHARD_CORRUPT"
    assert backend.put(cid, data) is False  # repaired, but not "newly written"
    assert backend.get(cid) == data
    # the same through add(), with a truncated copy
    raw.put_object(Bucket=BUCKET, Key=backend.prefix + cid, Body=data[:10])
    assert backend.add(data) == (cid, False)
    assert backend.get(cid) == data


def test_usage_counts_objects_and_bytes_across_pages(seaweed: SeaweedS3) -> None:
    backend = S3ShardBackend(config_for(seaweed))
    backend.list_page_size = 2  # five objects take three LIST pages
    sizes = [1, 10, 100, 1000, 5000]
    for n in sizes:
        backend.add(shard(n))
    assert backend.usage() == (5, sum(sizes))
    neighbour = S3ShardBackend(config_for(seaweed))  # another prefix, same bucket
    assert neighbour.usage() == (0, 0)
    neighbour.add(shard(7))
    assert neighbour.usage() == (1, 7)
    assert backend.usage() == (5, sum(sizes))


def test_concurrent_puts_from_eight_threads(backend: S3ShardBackend) -> None:
    per_thread = 12
    blobs = [[shard(2000 + 13 * t + i) for i in range(per_thread)] for t in range(8)]
    common = shard(3333)
    start = threading.Barrier(8)

    def work(mine: list[bytes]) -> list[bool]:
        start.wait()
        results = [backend.put(cid_for(b), b) for b in mine]
        backend.put(cid_for(common), common)  # every thread writes this one too
        return results

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, blobs))
    assert all(all(r) for r in results)
    for mine in blobs:
        for b in mine:
            assert backend.get(cid_for(b)) == b
    assert backend.get(cid_for(common)) == common
    total = sum(len(b) for mine in blobs for b in mine) + len(common)
    assert backend.usage() == (8 * per_thread + 1, total)


# ---- buckets, credentials, configuration --------------------------------------------------


def test_bucket_is_created_once_and_missing_bucket_is_reported(
    seaweed: SeaweedS3, raw: Any
) -> None:
    name = f"ml-{uuid.uuid4().hex[:10]}"
    first = S3ShardBackend(config_for(seaweed, bucket=name, prefix=""))
    raw.head_bucket(Bucket=name)  # raises if it was not created
    cid, new = first.add(b"in the new bucket")
    assert new
    second = S3ShardBackend(config_for(seaweed, bucket=name, prefix=""))  # already exists: fine
    assert second.get(cid) == b"in the new bucket"
    assert second.describe() == f"s3:{seaweed.endpoint_url}/{name}/"

    absent = S3ShardBackend(
        config_for(seaweed, bucket=f"ml-absent-{uuid.uuid4().hex[:8]}", create_bucket=False)
    )
    with pytest.raises(NodeError) as exc:
        absent.get(cid)
    assert exc.value.code == "BACKEND_BUCKET_MISSING"


def test_credentials_from_environment(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_TEST_S3_ACCESS", seaweed.access_key)
    monkeypatch.setenv("ML_TEST_S3_SECRET", seaweed.secret_key)
    config = config_for(
        seaweed,
        access_key="",
        secret_key="wrong-and-overridden",
        access_key_env="ML_TEST_S3_ACCESS",
        secret_key_env="ML_TEST_S3_SECRET",
    )
    assert config.credentials() == (seaweed.access_key, seaweed.secret_key)
    backend = S3ShardBackend(config)
    cid, _ = backend.add(b"env credentials work")
    assert backend.get(cid) == b"env credentials work"
    assert backend.describe() == f"s3:{seaweed.endpoint_url}/{BUCKET}/{config.prefix}"

    monkeypatch.delenv("ML_TEST_S3_SECRET")
    with pytest.raises(InvalidInput) as exc:
        config.credentials()
    assert exc.value.code == "CONFIG_INVALID"
    assert "ML_TEST_S3_SECRET" in exc.value.message
    with pytest.raises(InvalidInput):
        S3ShardBackend(config)


def test_wrong_credentials_are_a_node_error(seaweed: SeaweedS3) -> None:
    backend = S3ShardBackend(config_for(seaweed, secret_key="not-the-secret", create_bucket=False))
    with pytest.raises(NodeError) as exc:
        backend.put(cid_for(b"x"), b"x")
    assert exc.value.code == "BACKEND_AUTH_FAILED"
    assert "not-the-secret" not in str(exc.value)


def test_config_validation_and_decoding(seaweed: SeaweedS3) -> None:
    raw_json = (
        b'{"endpoint_url": "http://127.0.0.1:9", "bucket": "abc", "prefix": "/hospital-a/shards"}'
    )
    config = msgspec.json.decode(raw_json, type=S3Config)
    assert config.normalized_prefix() == "hospital-a/shards/"
    assert config.credentials() == ("", "")
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw_json[:-1] + b', "secret": "x"}', type=S3Config)
    for bad in (
        {"endpoint_url": "127.0.0.1:9000"},
        {"bucket": "ab"},
    ):
        with pytest.raises(InvalidInput) as exc:
            S3ShardBackend(config_for(seaweed, **bad))
        assert exc.value.code == "CONFIG_INVALID"
    with pytest.raises(InvalidInput) as exc:
        config_for(seaweed, secret_key="").credentials()
    assert exc.value.code == "CONFIG_INVALID"


def test_secrets_stay_out_of_descriptions(seaweed: SeaweedS3) -> None:
    config = config_for(
        seaweed,
        endpoint_url=seaweed.endpoint_url.replace("http://", "http://user:PASSWORD@"),
        secret_key=seaweed.secret_key,
    )
    backend = S3ShardBackend(config)  # userinfo in the URL is not used for S3 auth
    shown = [repr(config), pretty_repr(config), str(config), backend.describe()]
    for text in shown:
        assert seaweed.secret_key not in text
        assert "PASSWORD" not in text
    assert backend.describe() == f"s3:{seaweed.endpoint_url}/{BUCKET}/{config.prefix}"


# ---- an unreachable store -----------------------------------------------------------------


@pytest.fixture
def unreachable() -> Iterator[S3Config]:
    yield S3Config(
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        bucket=BUCKET,
        access_key="AK",
        secret_key="SK",
        create_bucket=False,
    )


def test_unreachable_endpoint_is_unavailable(unreachable: S3Config) -> None:
    backend = S3ShardBackend(unreachable)  # no request without create_bucket
    data = b"nowhere to go"
    calls = [
        lambda: backend.put(cid_for(data), data),
        lambda: backend.get(cid_for(data)),
        lambda: backend.has(cid_for(data)),
        backend.usage,
    ]
    for call in calls:
        with pytest.raises(Unavailable) as exc:
            call()
        assert exc.value.code == "BACKEND_UNAVAILABLE"
        assert "cannot be reached" in exc.value.message
    with pytest.raises(Unavailable) as exc2:
        S3ShardBackend(msgspec.structs.replace(unreachable, create_bucket=True))
    assert exc2.value.code == "BACKEND_UNAVAILABLE"
