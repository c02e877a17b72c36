"""One custodian's key shares, sealed to the node's key at rest.

Threshold custody: a record's data key is split into Shamir shares
(:mod:`medledger.custody.shamir`), one per custodian institution. This store keeps
this node's share of each deposit, one file per (depositor, manifest CID), exactly
as the client sealed it to this node's key; no file here holds a key, and no
share alone (or below the threshold) reveals anything about one. ``release``
re-seals the share to a requester after the caller has checked the release gate;
``delete`` removes it when the record is erased (crypto-shredding).
"""

from __future__ import annotations

from pathlib import Path

from medledger.codec import decode
from medledger.crypto.cid import is_cid
from medledger.crypto.keys import PrivateKey, PublicKey, is_identity_id, seal_to, unseal
from medledger.custody.shamir import KeyShare, check_share
from medledger.errors import Conflict, InvalidInput, MedLedgerError, NotFound
from medledger.fsutil import atomic_write, fsync_path
from medledger.log import get_logger

log = get_logger("medledger.custody")


def open_share(key: PrivateKey, sealed: bytes) -> KeyShare:
    """A share sealed to ``key``, unsealed and decoded (``BAD_DEPOSIT`` if it is not one)."""
    plain = unseal(key, sealed)
    try:
        share = decode(plain, KeyShare)
        check_share(share)
    except MedLedgerError:
        raise InvalidInput("the deposit is not a key share", code="BAD_DEPOSIT")
    return share


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

    def deposit(
        self,
        depositor: str,
        manifest_cid: str,
        sealed_share: bytes,
        *,
        index: int | None = None,
        threshold: int | None = None,
    ) -> KeyShare:
        """Keep a key share sealed to this custodian; checked by opening it once (it must
        decode as a :class:`KeyShare`, with ``index`` and ``threshold`` if given).

        An identical share deposited again is accepted (a retry); a different one for
        the same content is refused (``KEY_ALREADY_DEPOSITED``)."""
        share = open_share(self._key, sealed_share)
        if (index is not None and share.index != index) or (
            threshold is not None and share.threshold != threshold
        ):
            raise InvalidInput(
                "the key share's index or threshold is not the deposit's", code="BAD_DEPOSIT"
            )
        path = self._path(depositor, manifest_cid)
        if path.exists():
            try:
                held: KeyShare | None = open_share(self._key, path.read_bytes())
            except MedLedgerError:
                held = None  # a damaged deposit may be replaced
                log.warning("custody.damaged_deposit_replaced", depositor=depositor)
            if held == share:
                return share  # an idempotent retry
            if held is not None:
                raise Conflict(
                    "a different key share is already deposited for this content",
                    code="KEY_ALREADY_DEPOSITED",
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, sealed_share, mode=0o600)
        return share

    def has(self, depositor: str, manifest_cid: str) -> bool:
        return self._path(depositor, manifest_cid).exists()

    def release(self, depositor: str, manifest_cid: str, requester: PublicKey) -> bytes:
        """This custodian's key share (encoded), sealed to ``requester``. The caller has
        checked the release gate."""
        try:
            sealed = self._path(depositor, manifest_cid).read_bytes()
        except FileNotFoundError:
            raise NotFound("no key share is held for this record", code="KEY_NOT_FOUND")
        return seal_to(requester, unseal(self._key, sealed))

    def delete(self, depositor: str, manifest_cid: str) -> bool:
        """Forget the share of an erased record (durably); True if one was held. Deleting
        what is not held is no error (every node runs this for every erasure)."""
        path = self._path(depositor, manifest_cid)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_path(path.parent)
        try:
            path.parent.rmdir()  # the depositor's last share
        except OSError:
            pass
        return True
