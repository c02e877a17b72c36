"""A single custodian holding whole data keys, sealed to the node's key at rest.

Threshold custody (issue 6) replaces the whole key with one Shamir share per
custodian; the deposit/release interface stays the same.
"""

from __future__ import annotations

from pathlib import Path

from medledger.crypto.cid import is_cid
from medledger.crypto.keys import PrivateKey, PublicKey, is_identity_id, seal_to, unseal
from medledger.errors import Conflict, InvalidInput, MedLedgerError, NotFound
from medledger.fsutil import atomic_write
from medledger.log import get_logger

KEY_BYTES = 32

log = get_logger("medledger.custody")


class LocalCustodian:
    def __init__(self, root: Path, node_key: PrivateKey) -> None:
        self.root = root
        self._key = node_key
        root.mkdir(parents=True, exist_ok=True)

    @property
    def public_key(self) -> PublicKey:
        return self._key.public_key

    def _path(self, depositor: str, manifest_cid: str) -> Path:
        if not is_identity_id(depositor) or not is_cid(manifest_cid):
            raise InvalidInput("bad depositor or manifest identifier", code="BAD_DEPOSIT")
        return self.root / depositor / manifest_cid

    def deposit(self, depositor: str, manifest_cid: str, sealed_key: bytes) -> None:
        """Keep a data key sealed to this custodian; checked by opening it once."""
        key = unseal(self._key, sealed_key)
        if len(key) != KEY_BYTES:
            raise InvalidInput("a data key must be 32 bytes", code="BAD_DEPOSIT")
        path = self._path(depositor, manifest_cid)
        if path.exists():
            try:
                held = unseal(self._key, path.read_bytes())
            except MedLedgerError:
                held = None  # a damaged deposit may be replaced
                log.warning("custody.damaged_deposit_replaced", depositor=depositor)
            if held == key:
                return  # an idempotent retry
            if held is not None:
                raise Conflict(
                    "a different key is already deposited for this content",
                    code="KEY_ALREADY_DEPOSITED",
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, sealed_key, mode=0o600)

    def has(self, depositor: str, manifest_cid: str) -> bool:
        return self._path(depositor, manifest_cid).exists()

    def release(self, depositor: str, manifest_cid: str, requester: PublicKey) -> bytes:
        """The data key sealed to ``requester``. The caller has checked the gate."""
        try:
            sealed = self._path(depositor, manifest_cid).read_bytes()
        except FileNotFoundError:
            raise NotFound("no key is held for this record", code="KEY_NOT_FOUND")
        return seal_to(requester, unseal(self._key, sealed))
