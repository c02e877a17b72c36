"""Shards in any S3-compatible object store (AWS S3, SeaweedFS, MinIO, Ceph RGW, ...).

``S3ShardBackend`` keeps the same contract as ``LocalShardBackend``: every shard is
stored under ``<prefix><cid>``, verified against its CID on every write and read,
and errors carry the same codes. An S3 PUT is durable once acknowledged, so
``sync`` has nothing to do.

Credentials may sit in the configuration (``access_key``/``secret_key``) or, better,
be named there by environment variable (``access_key_env``/``secret_key_env``) so
that no secret is written into a config file. With no keys at all, boto3's default
credential chain (environment, ``~/.aws``, instance role) is used.

Error mapping (the storage service relies on the codes):

* connection refused, DNS failure, timeouts, 5xx, throttling -> ``Unavailable``
  ``BACKEND_UNAVAILABLE`` (after boto3's own retries);
* rejected credentials or access denied -> ``NodeError`` ``BACKEND_AUTH_FAILED``
  (a node misconfiguration, not the API caller's fault, hence not ``AuthError``);
* the bucket does not exist -> ``NodeError`` ``BACKEND_BUCKET_MISSING``;
* any other refusal by the store -> ``NodeError`` ``BACKEND_ERROR``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import boto3
import msgspec
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from medledger.crypto.cid import is_cid
from medledger.errors import (
    InvalidInput,
    MedLedgerError,
    NodeError,
    NotFound,
    Unavailable,
)
from medledger.storage.backend import ContentAddressedStore

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0

_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
_AUTH_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
    }
)
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}
)


class S3Config(msgspec.Struct, forbid_unknown_fields=True):
    """Where and how to reach the bucket holding this institution's shards.

    ``access_key_env``/``secret_key_env`` name environment variables that provide
    (and override) the keys, so that secrets need not be stored in config files.
    ``prefix`` is prepended to every object key (e.g. ``"hospital-a/shards/"``);
    a missing trailing ``/`` is added.
    """

    endpoint_url: str
    bucket: str
    access_key: str = ""
    secret_key: str = ""
    access_key_env: str = ""
    secret_key_env: str = ""
    region: str = "us-east-1"
    prefix: str = ""
    create_bucket: bool = True

    def _public_fields(self) -> list[tuple[str, Any]]:
        """The fields safe to show: no keys, no password in the endpoint URL."""
        return [
            ("endpoint_url", _public_endpoint(self.endpoint_url)),
            ("bucket", self.bucket),
            ("prefix", self.prefix),
            ("region", self.region),
            ("access_key_env", self.access_key_env),
            ("secret_key_env", self.secret_key_env),
            ("create_bucket", self.create_bucket),
        ]

    def __repr__(self) -> str:
        # msgspec's repr would show the secret key in logs and tracebacks
        inner = ", ".join(f"{name}={value!r}" for name, value in self._public_fields())
        return f"S3Config({inner})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        # what ``rich`` (the CLI's printer) shows instead of msgspec's all-fields version
        return self._public_fields()

    def credentials(self) -> tuple[str, str]:
        """``(access_key, secret_key)``, environment variables taking precedence.

        Both empty means "use boto3's default credential chain". Raises
        ``InvalidInput`` ``CONFIG_INVALID`` when a named variable is unset or when
        only one of the two keys is known.
        """
        access = _from_env(self.access_key_env, "access_key_env") or self.access_key
        secret = _from_env(self.secret_key_env, "secret_key_env") or self.secret_key
        if bool(access) != bool(secret):
            raise InvalidInput(
                "S3 storage configuration gives only one of the access key and the secret key",
                code="CONFIG_INVALID",
            )
        return access, secret

    def normalized_prefix(self) -> str:
        """The key prefix without a leading ``/`` and with a trailing one (or empty)."""
        prefix = self.prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return prefix


def _from_env(name: str, field: str) -> str:
    """The value of environment variable ``name`` ("" when no name is configured)."""
    if not name:
        return ""
    value = os.environ.get(name)
    if not value:
        raise InvalidInput(
            f"S3 storage configuration: {field} names environment variable {name}, "
            "which is not set",
            code="CONFIG_INVALID",
        )
    return value


def _validate(config: S3Config) -> None:
    """Reject a configuration boto3 would fail on later with an obscure error."""
    parts = urlsplit(config.endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            "S3 storage configuration: endpoint_url must be an http:// or https:// URL",
            code="CONFIG_INVALID",
        )
    if not 3 <= len(config.bucket) <= 63 or "/" in config.bucket:
        raise InvalidInput(
            "S3 storage configuration: bucket must be a bucket name of 3 to 63 characters",
            code="CONFIG_INVALID",
        )


def _public_endpoint(url: str) -> str:
    """``url`` without any user:password part and trailing slash, for display."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


class S3ShardBackend(ContentAddressedStore):
    """Shards as objects ``<prefix><cid>`` in one bucket of an S3-compatible store.

    Thread-safe: one boto3 client (which is thread-safe) with a connection pool of
    16 is shared by all calls; the instance holds no other mutable state.
    """

    list_page_size: int = 1000  # keys per LIST request in ``usage`` (S3's maximum)

    def __init__(self, config: S3Config) -> None:
        _validate(config)
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.normalized_prefix()
        self.endpoint = _public_endpoint(config.endpoint_url)
        access, secret = config.credentials()
        session = boto3.session.Session()
        try:
            self._client: Any = session.client(
                "s3",
                endpoint_url=config.endpoint_url,
                region_name=config.region,
                aws_access_key_id=access or None,
                aws_secret_access_key=secret or None,
                config=Config(
                    signature_version="s3v4",
                    retries={"max_attempts": 3, "mode": "standard"},
                    max_pool_connections=16,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    read_timeout=READ_TIMEOUT_S,
                    s3={"addressing_style": "path"},
                ),
            )
        except ValueError as exc:
            raise InvalidInput(f"S3 storage configuration is invalid: {exc}", code="CONFIG_INVALID")
        if config.create_bucket:
            self._ensure_bucket()

    # ---- the ShardBackend protocol ----------------------------------------------------------

    def has(self, cid: str) -> bool:
        key = self._key(cid)
        try:
            self._call(lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        except NotFound:
            return False
        return True

    def delete(self, cid: str) -> None:
        """Remove ``cid``; S3 DELETE of an absent key succeeds, so this is idempotent."""
        key = self._key(cid)
        self._call(lambda: self._client.delete_object(Bucket=self.bucket, Key=key))

    def sync(self, cids: list[str]) -> None:
        """Nothing to do: an S3 PUT is durable once the store has acknowledged it."""

    def usage(self) -> tuple[int, int]:
        """``(objects, bytes)`` of everything under the prefix, listed page by page."""
        return self._call(self._list_usage)

    def describe(self) -> str:
        return f"s3:{self.endpoint}/{self.bucket}/{self.prefix}"

    # ---- internals --------------------------------------------------------------------------

    def _key(self, cid: str) -> str:
        if not is_cid(cid):
            raise InvalidInput("not a shard identifier", code="BAD_CID")
        return self.prefix + cid

    def _load(self, cid: str) -> bytes:
        return self._read(self._key(cid))

    def _store(self, cid: str, data: bytes) -> None:
        key = self._key(cid)
        self._call(
            lambda: self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType="application/octet-stream",
            )
        )

    def _read(self, key: str) -> bytes:
        def fetch() -> bytes:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            return data

        return self._call(fetch)

    def _list_usage(self) -> tuple[int, int]:
        objects = total = 0
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self.prefix,
            PaginationConfig={"PageSize": self.list_page_size},
        )
        for page in pages:
            for item in page.get("Contents", []):
                objects += 1
                total += int(item.get("Size", 0))
        return objects, total

    def _ensure_bucket(self) -> None:
        """Create the bucket unless it exists. HEAD first, so that credentials allowed
        to use an existing bucket but not to create buckets still work."""
        try:
            self._call(lambda: self._client.head_bucket(Bucket=self.bucket))
            return
        except NotFound:
            pass  # HEAD has no body, so a missing bucket is a bare 404
        except NodeError as exc:
            if exc.code != "BACKEND_BUCKET_MISSING":
                raise
        try:
            self._client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) != "BucketAlreadyOwnedByYou":  # lost a race: fine
                raise self._translate(exc)
        except BotoCoreError as exc:
            raise self._translate(exc)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one S3 operation, translating botocore's errors into MedLedger's."""
        try:
            return fn()
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc)

    def _translate(self, exc: ClientError | BotoCoreError) -> MedLedgerError:
        """The MedLedger error for a botocore error (see the module docstring)."""
        where = f"S3 storage at {self.endpoint}, bucket {self.bucket}"
        if isinstance(exc, NoCredentialsError):
            return NodeError(
                f"{where}: no credentials configured or found", code="BACKEND_AUTH_FAILED"
            )
        if isinstance(exc, BotoCoreError):
            return Unavailable(
                f"{where} cannot be reached ({type(exc).__name__})", code="BACKEND_UNAVAILABLE"
            )
        code = _error_code(exc)
        status = _http_status(exc)
        what = code or str(status)
        if status >= 500 or code in _TRANSIENT_CODES:
            return Unavailable(
                f"{where}: the store failed the request ({what})", code="BACKEND_UNAVAILABLE"
            )
        if code in _NO_BUCKET_CODES:
            return NodeError(f"{where}: the bucket does not exist", code="BACKEND_BUCKET_MISSING")
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFound("shard is not stored here", code="SHARD_NOT_FOUND")
        if code in _AUTH_CODES or status in (401, 403):
            return NodeError(
                f"{where}: the store rejected the credentials or denied access ({what})",
                code="BACKEND_AUTH_FAILED",
            )
        if code == "BucketAlreadyExists":
            return NodeError(
                f"{where}: the bucket name is taken by another account", code="BACKEND_AUTH_FAILED"
            )
        return NodeError(f"{where}: the store refused the request ({what})", code="BACKEND_ERROR")


def _error_code(exc: ClientError) -> str:
    error: dict[str, Any] = exc.response.get("Error", {})
    return str(error.get("Code", ""))


def _http_status(exc: ClientError) -> int:
    meta: dict[str, Any] = exc.response.get("ResponseMetadata", {})
    return int(meta.get("HTTPStatusCode", 0) or 0)
