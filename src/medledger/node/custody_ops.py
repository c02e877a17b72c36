"""The node's key custody duties: threshold custody across the member institutions.

A record's data key is split by the client into Shamir shares, one per custodian
(the validator institutions reachable when it was stored), each sealed to that
custodian's node key. Any ``threshold`` of them rebuild the key; no single node,
and no group below the threshold, can read the record.

Deposits: the client sends its signed deposit request (every share, each sealed
to its custodian) to the node it stores through. That node keeps its own share
and forwards the request, *as the client signed it*, to every other named
custodian over the members' p2p links (``wire.DepositRequest``). Each custodian
verifies the client's signature and keeps only its own share, so no relaying
node can deposit, replace or misattribute a share on a client's behalf. The
p2p link (rather than node-to-node HTTP as the shard service uses) is what the
release path already uses: it is mutually authenticated by the node keys, needs
no API address of the peer, and carries small messages with request ids. A
deposit succeeds only if every named custodian accepted its share
(``CUSTODY_DEPOSIT_FAILED`` otherwise); the node remembers, in memory, which
custodians accepted each deposit made through it, and admits the record's
registration only with exactly those custodians and that threshold. (The client
trusts this node's report that all took their share; nothing on chain checks it.)

Releases: after the node's own gate check, every custodian of the record is
asked in parallel (this node's share locally, the others over p2p; each checks
the gate against its own committed ledger). The node returns as soon as
``threshold`` shares arrived, each sealed to the requester: it cannot open them.

Erasure: when a committed block holds an approved ``record.erase_approve``, the
node deletes its share of that record (crypto-shredding) and its shards.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from medledger.api import signing
from medledger.app.model import ACTIVE, ERASE_APPROVE, RecordMeta, Role
from medledger.app.storage import StorageRuleError, check_custody
from medledger.crypto.cid import is_cid
from medledger.crypto.keys import PublicKey
from medledger.custody.shamir import MAX_SHARES, KeyShare
from medledger.errors import (
    AuthError,
    Forbidden,
    InvalidInput,
    InvalidTransaction,
    MedLedgerError,
    NotFound,
    Unavailable,
)
from medledger.ledger.block import TxResult
from medledger.ledger.tx import decode_envelope
from medledger.log import get_logger
from medledger.node import wire

if TYPE_CHECKING:
    from medledger.node.node import Node

log = get_logger("medledger.custody")

DEPOSIT_PATH = "/api/v1/custody/deposits"
DEPOSITOR_ROLES = frozenset({Role.CLINICIAN.value, Role.SERVICE.value, Role.PATIENT.value})
REMEMBERED_DEPOSITS = 4096  # deposits made through this node awaiting their registration
MAX_SEALED_SHARE = 1024


@dataclass(frozen=True, slots=True)
class DepositDoc:
    """A parsed deposit request: shares in index order (share i has x = i + 1)."""

    manifest_cid: str
    threshold: int
    shares: list[tuple[str, bytes]]  # (institution, sealed share)

    @property
    def custodians(self) -> list[str]:
        return [name for name, _ in self.shares]


def parse_deposit(body: bytes) -> DepositDoc:
    """``{"manifest_cid", "threshold", "shares": [{"institution", "sealed_share"}]}``."""
    bad = InvalidInput(
        "a deposit is {manifest_cid, threshold, shares: [{institution, sealed_share (hex)}]}",
        code="BAD_DEPOSIT",
    )
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise bad
    if not isinstance(doc, dict):
        raise bad
    cid, threshold, items = doc.get("manifest_cid"), doc.get("threshold"), doc.get("shares")
    if not isinstance(cid, str) or not isinstance(threshold, int) or not isinstance(items, list):
        raise bad
    if isinstance(threshold, bool) or not is_cid(cid) or not 1 <= len(items) <= MAX_SHARES:
        raise bad
    shares: list[tuple[str, bytes]] = []
    for item in items:
        if not isinstance(item, dict):
            raise bad
        name, sealed = item.get("institution"), item.get("sealed_share")
        if not isinstance(name, str) or not isinstance(sealed, str):
            raise bad
        if len(sealed) > 2 * MAX_SEALED_SHARE:
            raise bad
        try:
            shares.append((name, bytes.fromhex(sealed)))
        except ValueError:
            raise bad
    if len({name for name, _ in shares}) != len(shares):
        raise InvalidInput("a deposit names a custodian twice", code="BAD_DEPOSIT")
    return DepositDoc(manifest_cid=cid, threshold=threshold, shares=shares)


@dataclass(frozen=True, slots=True)
class Deposited:
    custodians: list[str]
    threshold: int


class CustodyOps:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.name = node.config.name
        self._deposits: OrderedDict[tuple[str, str], Deposited] = OrderedDict()

    # ---- who the custodians are --------------------------------------------------------

    def custodians(self) -> list[dict[str, Any]]:
        """The institutions that may hold key shares now: validators with voting power;
        each with its node key (what shares are sealed to) and whether this node can
        reach it (itself, or a connected peer)."""
        connected = set(self.node.peers.connected()) if self.node.peers is not None else set()
        out = []
        for v in sorted(self.node.validators, key=lambda v: v.name):
            if v.power <= 0:
                continue
            out.append(
                {
                    "institution": v.name,
                    "public_key": v.public_key.hex(),
                    "reachable": v.name == self.name or v.id in connected,
                }
            )
        return out

    # ---- deposits ------------------------------------------------------------------------

    def accept(self, request: wire.SignedRequest) -> KeyShare:
        """A custodian's side of a deposit: verify the client's signed request and keep
        this institution's share of it (at its place: x = position + 1)."""
        from medledger.node.node import now_ms

        if request.path != DEPOSIT_PATH:
            raise AuthError("not a signed deposit request", code="BAD_DEPOSIT")
        try:
            headers = {
                signing.H_KEY: PublicKey(request.public_key).hex(),
                signing.H_TIME: str(request.time_ms),
                signing.H_SIG: request.signature.hex(),
                signing.H_BODY: signing.body_hash(request.body),
            }
        except InvalidInput:
            raise AuthError("the deposit's signature headers are malformed", code="AUTH_MALFORMED")
        pk = signing.verify_request(
            headers, "POST", request.path, now_ms(), self.node.config.request_max_skew_ms
        )
        ident = self.node.app.query_identity(pk.id)
        if ident is None or ident.status != ACTIVE:
            raise AuthError("the depositor is not an active identity", code="UNKNOWN_IDENTITY")
        if ident.role not in DEPOSITOR_ROLES:
            raise Forbidden(f"role {ident.role} may not deposit keys", code="ACCESS_DENIED")
        doc = parse_deposit(request.body)
        for i, (name, sealed) in enumerate(doc.shares):
            if name == self.name:
                share = self.node.custodian.deposit(
                    pk.id, doc.manifest_cid, sealed, index=i + 1, threshold=doc.threshold
                )
                log.info("custody.share_kept", manifest=doc.manifest_cid, depositor=pk.id)
                return share
        raise InvalidInput("the deposit holds no share for this custodian", code="BAD_DEPOSIT")

    async def deposit(self, request: wire.SignedRequest, depositor: str) -> dict[str, Any]:
        """Deposit every share of a client's request: this node's here, the others at
        their custodians over p2p. All must accept, or ``CUSTODY_DEPOSIT_FAILED``."""
        doc = parse_deposit(request.body)
        stored = await asyncio.to_thread(self.node.storage.backend.has, doc.manifest_cid)
        if not stored:
            raise NotFound(
                "content must be stored through this node before its key is deposited",
                code="CONTENT_NOT_STORED",
            )
        try:
            check_custody(
                self.node.app.committed_view(),
                doc.custodians,
                doc.threshold,
                (self.node.params.custody_threshold_num, self.node.params.custody_threshold_den),
            )
        except StorageRuleError as exc:
            raise InvalidInput(exc.message, code=exc.code)
        if self.name in doc.custodians:
            self.accept(request)  # the client's own mistakes show with their own code
        others = [n for n in doc.custodians if n != self.name]
        codes = await asyncio.gather(*(self._deposit_at(n, request) for n in others))
        failed = {name: code for name, code in zip(others, codes, strict=True) if code}
        if failed:
            listed = ", ".join(f"{n} ({c})" for n, c in sorted(failed.items()))
            log.warning("custody.deposit_failed", manifest=doc.manifest_cid, failed=failed)
            raise Unavailable(
                f"key custodians did not accept their shares: {listed}; store the record again",
                code="CUSTODY_DEPOSIT_FAILED",
                failed=failed,
            )
        self._deposits[(depositor, doc.manifest_cid)] = Deposited(doc.custodians, doc.threshold)
        self._deposits.move_to_end((depositor, doc.manifest_cid))
        while len(self._deposits) > REMEMBERED_DEPOSITS:
            self._deposits.popitem(last=False)
        log.info(
            "custody.deposited",
            manifest=doc.manifest_cid,
            custodians=doc.custodians,
            threshold=doc.threshold,
        )
        return {
            "manifest_cid": doc.manifest_cid,
            "threshold": doc.threshold,
            "custodians": doc.custodians,
        }

    async def _deposit_at(self, name: str, request: wire.SignedRequest) -> str:
        """The empty string if custodian ``name`` kept its share, else why not (a code)."""
        driver = self.node.driver
        peer = driver.peer_for_institution(name) if driver is not None else None
        if driver is None or peer is None:
            return "CUSTODIAN_UNKNOWN"
        try:
            await driver.deposit_share(peer, request, self.node.height)
        except MedLedgerError as exc:
            return exc.code
        return ""

    def check_registration(
        self, sender: str, custodians: list[str], threshold: int, cid: str
    ) -> None:
        """Admission of ``record.register`` at this node: its key shares were deposited
        through this node, with exactly these custodians and this threshold."""
        if self.name in custodians and not self.node.custodian.has(sender, cid):
            raise InvalidTransaction(
                "this node holds no key share for this content; deposit the shares first",
                code="KEY_NOT_DEPOSITED",
            )
        dep = self._deposits.get((sender, cid))
        if dep is None:
            raise InvalidTransaction(
                "no key shares were deposited through this node for this content; "
                "deposit them first",
                code="KEY_NOT_DEPOSITED",
            )
        if dep.custodians != custodians or dep.threshold != threshold:
            raise InvalidTransaction(
                "custodians or threshold differ from the key shares' deposit",
                code="CUSTODY_MISMATCH",
            )

    # ---- releases ---------------------------------------------------------------------------

    async def release(
        self, meta: RecordMeta, access_tx: bytes, requester: PublicKey
    ) -> list[tuple[str, bytes]]:
        """``threshold`` key shares of ``meta``'s key, each sealed to ``requester``, from
        its custodians asked in parallel (the caller has checked the gate here).

        Stops asking once ``threshold`` shares arrived; each custodian's answer is
        bounded (``driver.KEY_WAIT_S`` and a second). Never a partial result: if
        refusals alone leave too few, the custodians' refusal is raised
        (``ACCESS_DENIED`` etc.); if every custodian answered or failed and fewer than
        ``threshold`` released, ``CUSTODY_THRESHOLD_UNREACHED`` says how many did."""
        receipt = self.node.receipt(access_tx)
        if receipt is None:
            raise Forbidden("the access event is not committed", code="ACCESS_NOT_COMMITTED")
        n, t = len(meta.custodians), meta.threshold
        if n == 0 or t < 1:
            raise NotFound("no key shares are held for this record", code="KEY_NOT_FOUND")
        height = receipt.height
        tasks = {
            asyncio.create_task(self._share_from(name, meta, access_tx, requester, height)): name
            for name in meta.custodians
        }
        pending: set[asyncio.Task[bytes]] = set(tasks)
        got: list[tuple[str, bytes]] = []
        refused: list[MedLedgerError] = []
        failed: dict[str, str] = {}
        try:
            while pending and len(got) < t:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    name = tasks[task]
                    exc = task.exception()
                    if exc is None:
                        got.append((name, task.result()))
                    elif isinstance(exc, Forbidden):
                        refused.append(exc)
                        failed[name] = exc.code
                    elif isinstance(exc, MedLedgerError):
                        failed[name] = exc.code
                    else:
                        log.error("custody.release_error", custodian=name, error=type(exc).__name__)
                        failed[name] = "INTERNAL"
                if len(refused) > n - t:
                    raise refused[0]  # the custodians' refusal: the threshold cannot be met
        finally:
            for task in pending:
                task.cancel()
        if len(got) < t:
            listed = ", ".join(f"{name} ({code})" for name, code in sorted(failed.items()))
            log.warning(
                "custody.threshold_unreached", record_id=meta.record_id, got=len(got), failed=failed
            )
            raise Unavailable(
                f"only {len(got)} of {n} key custodians released a share, {t} are needed "
                f"(not released: {listed or 'none'})",
                code="CUSTODY_THRESHOLD_UNREACHED",
                released=len(got),
                threshold=t,
                failed=failed,
            )
        self.node.metrics.key_releases.labels(outcome="relayed").inc()
        return got[:t]

    async def _share_from(
        self, name: str, meta: RecordMeta, access_tx: bytes, requester: PublicKey, height: int
    ) -> bytes:
        if name == self.name:
            sealed = self.node.custodian.release(meta.key_depositor, meta.content_hash, requester)
            self.node.metrics.key_releases.labels(outcome="released").inc()
            return sealed
        driver = self.node.driver
        peer = driver.peer_for_institution(name) if driver is not None else None
        if driver is None or peer is None:
            raise Unavailable(f"custodian {name} is unknown to this node", code="CUSTODIAN_UNKNOWN")
        return await driver.fetch_key(peer, meta.record_id, access_tx, requester.raw, height)

    # ---- erasure --------------------------------------------------------------------------------

    def on_block(self, txs: list[bytes], results: list[TxResult]) -> None:
        """Crypto-shred after a committed erasure: delete this custodian's share of the
        record's key (every node does this for every approved erasure; a node that was
        down does it as block sync replays the block), and the record's shards here."""
        for raw, result in zip(txs, results, strict=True):
            if not result.ok or result.data.get("status") != "erased":
                continue
            creator = result.data.get("creator", "")
            cid = result.data.get("manifest_cid", "")
            if decode_envelope(raw).tx.kind != ERASE_APPROVE:
                continue
            record_id = result.data.get("record_id", "")
            try:
                held = self.node.custodian.delete(creator, cid)
            except MedLedgerError as exc:
                log.error("custody.erase_failed", record_id=record_id, code=exc.code)
                continue
            except OSError:
                log.exception("custody.erase_failed", record_id=record_id)
                continue
            self._deposits.pop((creator, cid), None)
            log.info("custody.share_erased", record_id=record_id, manifest=cid, held=held)
            try:
                self.node.storage.drop_erased(cid)
            except Exception:  # the shards are ciphertext whose key is gone: log, go on
                log.exception("storage.erase_failed", record_id=record_id, manifest=cid)
