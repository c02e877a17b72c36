"""The node: application, stores, mempool, storage, key custody, and the consensus driver.

The protocol logic lives in pure cores (``consensus.tendermint``,
``app.Application``); ``node.driver`` runs consensus; this module holds the
node's state and does block building, validation and durable commits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medledger.app.application import Application, BlockContext, FinalizedBlock
from medledger.app.membership import evidence_vote
from medledger.app.model import (
    REGISTER_RECORD,
    SUBMIT_EVIDENCE,
    EvidenceBody,
    ReadRecordBody,
    RecordMeta,
    RegisterRecordBody,
    k_nonce,
)
from medledger.codec import decode
from medledger.consensus.types import SignedVote, TimeoutConfig
from medledger.crypto.keys import PrivateKey, PublicKey, identity_id_for, load_key_file
from medledger.custody.gate import AccessProof, check_decision, check_release
from medledger.custody.local import LocalCustodian
from medledger.dicom.gateway import DicomGateway
from medledger.errors import (
    Forbidden,
    InvalidTransaction,
    MedLedgerError,
    NodeError,
    NotFound,
    Unavailable,
)
from medledger.ledger.block import (
    Commit,
    Header,
    TxResult,
    Validator,
    result_leaf,
)
from medledger.ledger.genesis import Genesis, load_genesis
from medledger.ledger.merkle import merkle_root
from medledger.ledger.store import LedgerStore, StoredBlock
from medledger.ledger.tx import SignedTx, decode_envelope, make_tx, tx_hash
from medledger.log import get_logger
from medledger.node.config import DicomConfig, NodeConfig, load_config
from medledger.node.custody_ops import CustodyOps
from medledger.node.driver import ConsensusDriver
from medledger.node.mempool import Mempool
from medledger.node.metrics import NodeMetrics
from medledger.node.storage_ops import StorageOps
from medledger.node.wire import Block
from medledger.p2p.peers import PeerAddress, PeerManager

log = get_logger("medledger.node")


VERIFY_THREADS = 2
BLOCK_CACHE = 8


def _verify_all(txs: list[SignedTx]) -> dict[bytes, MedLedgerError]:
    failed: dict[bytes, MedLedgerError] = {}
    for stx in txs:
        try:
            stx.verify_signature()
        except MedLedgerError as exc:
            failed[stx.hash] = exc
    return failed


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class InvalidBlock(MedLedgerError):
    default_code = "BAD_BLOCK"


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: bytes
    height: int
    index: int
    result: TxResult


class Node:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.config: NodeConfig = load_config(home)
        self.genesis: Genesis = load_genesis(home / self.config.genesis_file)
        if self.genesis.chain_id != self.config.chain_id:
            raise NodeError("config and genesis name different chains", code="GENESIS_MISMATCH")
        self.params = self.genesis.params
        self.node_key: PrivateKey = load_key_file(home / self.config.node_key_file)
        self.validators = list(self.genesis.validators)
        data = home / self.config.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.store = LedgerStore(data / "ledger.sqlite")
        self.reader = LedgerStore(data / "ledger.sqlite")
        self.custodian = LocalCustodian(data / "custody", self.node_key)
        self.metrics = NodeMetrics()
        self.state: dict[bytes, bytes] = {}
        self.app = Application(self.genesis, self.state.get)
        self.mempool = Mempool(
            max_txs=self.params.max_mempool_txs, max_bytes=self.params.max_mempool_bytes
        )
        self.last_header: Header | None = None
        self.app_hash = b""
        self.driver: ConsensusDriver | None = None
        self._recover()
        self._waiters: dict[bytes, list[asyncio.Future[Receipt]]] = {}
        self.peers: PeerManager | None = None
        self._empty_task: asyncio.Task[None] | None = None
        self.block_lock = asyncio.Lock()
        self._stopping = False
        self.fatal = False
        self.on_fatal: Callable[[], None] | None = None
        self._block_cache: dict[int, StoredBlock] = {}
        self._verify_pool = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="verify")
        self.storage = StorageOps(self)
        self.custody = CustodyOps(self)
        dicom_cfg = self.config.dicom or DicomConfig()
        self.dicom = DicomGateway(
            home,
            institution=self.config.name,
            host=self.config.dicom.host if self.config.dicom else "",
            port=self.config.dicom_port(),
            ae_title=self.config.dicom_ae_title(),
            lookup_identity=self.app.query_identity,
            api_url=self._own_api_url(),
            quiet_s=dicom_cfg.quiet_s,
            retry_s=dicom_cfg.retry_s,
            max_instance_bytes=dicom_cfg.max_instance_bytes,
        )

    def _own_api_url(self) -> str:
        """This node's API as the node itself reaches it (the DICOM gateway's client)."""
        host = self.config.api_host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.config.api_port}"

    # ---- start-up and recovery -------------------------------------------------------

    def validators_at(self, height: int) -> list[Validator]:
        """The validator set that signed ``height``."""
        if self.driver is not None:
            return list(self.driver.load_vset(height).validators)
        return list(self.genesis.validators)

    @property
    def is_validator(self) -> bool:
        """Whether this node votes at the current height (false for observers)."""
        if self.driver is not None:
            return self.driver.vset.power(self.node_key.id) > 0
        return any(v.id == self.node_key.id for v in self.validators)

    @property
    def height(self) -> int:
        return self.last_header.height if self.last_header else 0

    def _recover(self) -> None:
        genesis_hash = self.genesis.hash()
        stored = self.store.get_meta("genesis_hash")
        if stored is None:
            self.store.apply_genesis(self.app.genesis_writes(), genesis_hash)
        elif stored != genesis_hash:
            raise NodeError(
                "the data directory belongs to another genesis", code="GENESIS_MISMATCH"
            )
        for key, value in self.store.iter_state():
            self.state[key] = value
        self.app_hash = self.app.load_tree(list(self.state.items()))
        height = self.store.height()
        if height:
            self.last_header = self.store.get_header(height)
            if self.last_header.app_hash != self.app_hash:
                raise NodeError(
                    f"state does not match the app hash of block {height}; "
                    "the data directory is damaged",
                    code="STATE_CORRUPT",
                )
        log.info(
            "node.recovered",
            name=self.config.name,
            height=height,
            app_hash=self.app_hash.hex(),
            validator=self.is_validator,
        )
        self.metrics.height.set(height)

    async def start(self) -> None:
        cfg = self.config
        await self.dicom.start()  # first: a port in use stops the start before anything runs
        if cfg.peers:
            self.peers = PeerManager(
                self.node_key,
                chain_id=self.genesis.chain_id,
                listen_host=cfg.p2p_host,
                listen_port=cfg.p2p_port,
                peers=[
                    PeerAddress(
                        id=p.id, public_key=bytes.fromhex(p.public_key), host=p.host, port=p.port
                    )
                    for p in cfg.peers
                ],
                on_message=self._on_peer_message,
                allowed=self._peer_allowed,
            )
            await self.peers.start()
        self.driver = ConsensusDriver(
            self,
            self.peers,
            TimeoutConfig(
                propose_ms=cfg.timeout_propose_ms,
                propose_delta_ms=cfg.timeout_delta_ms,
                prevote_ms=cfg.timeout_vote_ms,
                prevote_delta_ms=cfg.timeout_delta_ms,
                precommit_ms=cfg.timeout_vote_ms,
                precommit_delta_ms=cfg.timeout_delta_ms,
            ),
        )
        self.driver.on_evidence = self._submit_evidence
        await self.driver.start()
        if cfg.empty_block_interval_ms is not None:
            self._empty_task = asyncio.create_task(self._empty_blocks(cfg.empty_block_interval_ms))

    async def _on_peer_message(self, peer_id: str, data: bytes) -> None:
        if self.driver is not None:
            await self.driver.on_message(peer_id, data)

    def _peer_allowed(self, public_key: bytes) -> bool:
        """Members' and observers' node keys: enrolled, active ``node`` identities (not a
        PACS or other service: they have no business on the consensus network)."""
        ident = self.app.query_identity(identity_id_for(public_key))
        if ident is not None and ident.status == "active" and ident.role == "node":
            return True
        return any(p.public_key == public_key.hex() for p in self.config.peers)

    async def _empty_blocks(self, interval_ms: int) -> None:
        while True:
            await asyncio.sleep(interval_ms / 1000)
            if self.driver is not None:
                self.driver.wake(force=True)

    async def stop(self) -> None:
        self._stopping = True
        await self.dicom.stop()
        if not self.fatal:
            async with self.block_lock:  # let a block being written finish
                pass
        if self._empty_task is not None:
            self._empty_task.cancel()
        if self.driver is not None:
            await self.driver.stop()
        if self.peers is not None:
            await self.peers.stop()
        for futs in self._waiters.values():
            for f in futs:
                if not f.done():
                    f.set_exception(Unavailable("node is shutting down", code="NODE_STOPPING"))
        self._verify_pool.shutdown(wait=False, cancel_futures=True)
        await self.storage.close()
        self.store.close()
        self.reader.close()

    # ---- transactions ----------------------------------------------------------------

    def committed_nonce(self, sender: str) -> int:
        raw = self.state.get(k_nonce(sender))
        return 0 if raw is None else int.from_bytes(raw, "big")

    def next_nonce(self, sender: str) -> int:
        pending = self.mempool.pending_nonce(sender)
        return self.committed_nonce(sender) if pending is None else pending

    def submit(self, raw: bytes, *, gossip: bool = True) -> SignedTx:
        """Admit one transaction to the mempool or raise a typed error."""
        try:
            stx = decode_envelope(raw, max_bytes=self.params.max_tx_bytes)
            self.mempool.check_room(stx)
            stx.verify_signature()
        except MedLedgerError as exc:
            self._rejected(exc)
            raise
        return self._admit(stx, gossip=gossip)

    async def submit_many(
        self, raws: list[bytes], *, gossip: bool = True
    ) -> list[SignedTx | MedLedgerError]:
        """Admit a batch: signatures verified in parallel (libsodium releases the GIL),
        then admitted in order. Each transaction is verified exactly once."""
        decoded: list[SignedTx | MedLedgerError] = []
        for raw in raws:
            try:
                decoded.append(decode_envelope(raw, max_bytes=self.params.max_tx_bytes))
            except MedLedgerError as exc:
                decoded.append(exc)
        good = [d for d in decoded if isinstance(d, SignedTx)]
        loop = asyncio.get_running_loop()
        step = max(1, -(-len(good) // VERIFY_THREADS))
        parts = [good[i : i + step] for i in range(0, len(good), step)]
        failed: dict[bytes, MedLedgerError] = {}
        for part_failed in await asyncio.gather(
            *(loop.run_in_executor(self._verify_pool, _verify_all, p) for p in parts)
        ):
            failed.update(part_failed)
        out: list[SignedTx | MedLedgerError] = []
        for d in decoded:
            if isinstance(d, MedLedgerError):
                self._rejected(d)
                out.append(d)
                continue
            bad = failed.get(d.hash)
            if bad is not None:
                self._rejected(bad)
                out.append(bad)
                continue
            try:
                out.append(self._admit(d, gossip=gossip))
            except MedLedgerError as exc:
                out.append(exc)
        return out

    def _rejected(self, exc: MedLedgerError) -> None:
        self.metrics.tx_rejected.labels(code=exc.code).inc()
        log.info("tx.rejected", code=exc.code)

    def _admit(self, stx: SignedTx, *, gossip: bool = True) -> SignedTx:
        """Admission of a transaction whose signature is verified."""
        try:
            self.mempool.check_room(stx)
            if gossip:  # admitted here, by a client: the full check
                self._admission_checks(stx)
            self.app.check_tx(stx, self.next_nonce(stx.tx.sender), now_ms(), relayed=not gossip)
            self.mempool.add(stx)
        except MedLedgerError as exc:
            self._rejected(exc)
            raise
        self.metrics.mempool_txs.set(len(self.mempool))
        if gossip and self.driver is not None:
            self.driver.gossip_tx(stx.raw)
            self.driver.wake()
        elif self.driver is not None:
            self.driver.wake()
        return stx

    def _admission_checks(self, stx: SignedTx) -> None:
        """Node-local checks that need this node's storage (not part of consensus): a
        record is registered only for content stored through this node, whose layout
        matches the transaction, and whose key shares were deposited through this node
        with exactly the transaction's custodians and threshold (this node's own share,
        if it is one of them, held here)."""
        if stx.tx.kind != REGISTER_RECORD:
            return
        try:
            body = decode(stx.tx.body, RegisterRecordBody)
            manifest = self.storage.service.stored_manifest(body.content_hash)
        except MedLedgerError:
            raise InvalidTransaction(
                "the record's content is not stored through this node; upload it first",
                code="CONTENT_NOT_STORED",
            )
        if (
            manifest.size != body.size
            or len(manifest.chunks) != body.chunk_count
            or manifest.shard_root != body.shard_root
            or (manifest.k, manifest.m) != (body.k, body.m)
            or manifest.placement != body.placement
        ):
            raise InvalidTransaction(
                "size, chunks or layout differ from the stored manifest",
                code="CONTENT_MISMATCH",
            )
        self.custody.check_registration(
            stx.tx.sender, body.custodians, body.threshold, body.content_hash
        )

    def records(self) -> list[RecordMeta]:
        """Every record's committed entry, by record ID (a full scan)."""
        prefix = b"v1/rec/"
        found = sorted((k, v) for k, v in self.state.items() if k.startswith(prefix))
        return [decode(v, RecordMeta) for _, v in found]

    async def wait_for(self, tx_hash: bytes, timeout: float) -> Receipt:
        result = (await self.wait_many([tx_hash], timeout))[0]
        if isinstance(result, MedLedgerError):
            raise result
        return result

    async def wait_many(
        self, hashes: list[bytes], timeout: float
    ) -> list[Receipt | MedLedgerError]:
        """Wait until each transaction is committed (or fails, or the timeout passes).

        Pending transactions get a bare future each (no task); committed ones are
        looked up once per block.
        """
        out: list[Receipt | MedLedgerError | None] = [None] * len(hashes)
        loop = asyncio.get_running_loop()
        futs: dict[int, asyncio.Future[Receipt]] = {}
        for i, h in enumerate(hashes):
            if h in self.mempool:
                fut: asyncio.Future[Receipt] = loop.create_future()
                self._waiters.setdefault(h, []).append(fut)
                futs[i] = fut
                continue
            pos = self.reader.find_tx(h)
            if pos is None:
                out[i] = NotFound("transaction is unknown to this node", code="TX_NOT_FOUND")
                continue
            block = self.block(pos[0])
            out[i] = Receipt(tx_hash=h, height=pos[0], index=pos[1], result=block.results[pos[1]])
        if futs:
            await asyncio.wait(futs.values(), timeout=timeout)
        for i, fut in futs.items():
            if fut.done() and not fut.cancelled():
                exc = fut.exception()
                if exc is None:
                    out[i] = fut.result()
                elif isinstance(exc, MedLedgerError):
                    out[i] = exc
                else:
                    out[i] = Unavailable(
                        "waiting for the transaction failed", code="TX_WAIT_FAILED"
                    )
            else:
                fut.cancel()
                lst = self._waiters.get(hashes[i])
                if lst is not None and fut in lst:
                    lst.remove(fut)
                    if not lst:
                        del self._waiters[hashes[i]]
                out[i] = Unavailable(
                    "transaction not committed within the timeout", code="TX_TIMEOUT"
                )
        return [r for r in out if r is not None]

    def block(self, height: int) -> StoredBlock:
        """A committed block, from a small cache of recently read blocks."""
        block = self._block_cache.get(height)
        if block is None:
            block = self.reader.get_block(height)
            if len(self._block_cache) >= BLOCK_CACHE:
                self._block_cache.pop(next(iter(self._block_cache)))
            self._block_cache[height] = block
        return block

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        pos = self.reader.find_tx(tx_hash)
        if pos is None:
            return None
        block = self.block(pos[0])
        return Receipt(tx_hash=tx_hash, height=pos[0], index=pos[1], result=block.results[pos[1]])

    # ---- block production --------------------------------------------------------------

    # ---- blocks -------------------------------------------------------------------------

    def build_block(
        self, height: int, time_ms: int, last_commit: Commit | None, vset_hash: bytes
    ) -> tuple[Block, FinalizedBlock]:
        """Reap the mempool into a block and execute it (speculatively)."""
        txs = self.mempool.reap(self.params.max_block_txs, self.params.max_block_bytes)
        ctx = BlockContext(height=height, time_ms=time_ms, proposer=self.node_key.id)
        fin = self.app.finalize_block(ctx, txs)
        raws = [t.raw for t in txs]
        header = Header(
            chain_id=self.genesis.chain_id,
            height=height,
            time_ms=time_ms,
            prev_hash=self.last_header.hash() if self.last_header else self.genesis.hash(),
            tx_root=merkle_root(raws),
            results_root=merkle_root(
                [result_leaf(t.hash, r) for t, r in zip(txs, fin.results, strict=True)]
            ),
            app_hash=fin.app_hash,
            validators_hash=vset_hash,
            proposer=self.node_key.id,
            tx_count=len(txs),
        )
        return Block(header=header, txs=raws, last_commit=last_commit), fin

    def execute_block(self, block: Block) -> FinalizedBlock:
        """Validate a peer's block by executing it; raise unless it reproduces its header."""
        h = block.header
        if h.chain_id != self.genesis.chain_id:
            raise InvalidBlock("block for another chain", code="BAD_BLOCK")
        expected_prev = self.last_header.hash() if self.last_header else self.genesis.hash()
        if h.prev_hash != expected_prev or h.height != self.height + 1:
            raise InvalidBlock("block does not extend this chain", code="BAD_BLOCK")
        if len(block.txs) != h.tx_count or len(block.txs) > self.params.max_block_txs:
            raise InvalidBlock("block has the wrong number of transactions", code="BAD_BLOCK")
        if sum(len(t) for t in block.txs) > self.params.max_block_bytes:
            raise InvalidBlock("block is larger than max_block_bytes", code="BAD_BLOCK")
        if merkle_root(block.txs) != h.tx_root:
            raise InvalidBlock("transactions do not match the header", code="BAD_BLOCK")
        txs = [self._known_or_verified(raw) for raw in block.txs]
        ctx = BlockContext(height=h.height, time_ms=h.time_ms, proposer=h.proposer)
        fin = self.app.finalize_block(ctx, txs)
        results_root = merkle_root(
            [result_leaf(t.hash, r) for t, r in zip(txs, fin.results, strict=True)]
        )
        if fin.app_hash != h.app_hash or results_root != h.results_root:
            self.app.abandon()
            raise InvalidBlock("executing the block gives another state", code="BAD_APP_HASH")
        return fin

    def _known_or_verified(self, raw: bytes) -> SignedTx:
        known = self.mempool.get(tx_hash(raw))
        if known is not None:
            return known  # decoded and verified once, at admission
        stx = decode_envelope(raw, max_bytes=self.params.max_tx_bytes)
        stx.verify_signature()
        return stx

    async def commit_block(
        self, block: Block, fin: FinalizedBlock, commit: Commit, meta: dict[str, bytes]
    ) -> None:
        """Durably commit a decided block: state, block, indexes and consensus meta."""
        started = time.perf_counter()
        header = block.header
        height = header.height
        hashes = (
            fin.tx_hashes
            if len(fin.tx_hashes) == len(block.txs)
            else [tx_hash(raw) for raw in block.txs]
        )
        async with self.block_lock:
            writes = self.app.commit(fin)
            for key, value in writes.items():
                if value is None:
                    self.state.pop(key, None)
                else:
                    self.state[key] = value
            try:
                await asyncio.to_thread(
                    self.store.save_block,
                    header,
                    block.txs,
                    hashes,
                    fin.results,
                    commit,
                    writes,
                    meta,
                )
            except BaseException:
                # memory is ahead of the disk now: stop, and recover from the disk on restart
                log.critical("node.halted", height=height, reason="block could not be saved")
                self.fatal = True
                if self.on_fatal is not None:
                    self.on_fatal()
                raise
            self.last_header = header
            self.app_hash = fin.app_hash
            self.validators = self.app.query_validators()
        committed = [t for t in (self.mempool.get(h) for h in hashes) if t is not None]
        evicted = self.mempool.remove_committed(committed, self._recheck, self.committed_nonce)
        for stx in evicted:
            for f in self._waiters.pop(stx.hash, []):
                if not f.done():
                    f.set_exception(
                        InvalidTransaction(
                            "transaction became invalid after a block and was dropped",
                            code="TX_EVICTED",
                        )
                    )
        for i, (h, result) in enumerate(zip(hashes, fin.results, strict=True)):
            futs = self._waiters.pop(h, None)
            if futs:
                receipt = Receipt(tx_hash=h, height=height, index=i, result=result)
                for f in futs:
                    if not f.done():
                        f.set_result(receipt)
        self.metrics.height.set(height)
        try:
            self.storage.on_block(height, header.hash(), header.time_ms)
        except Exception:  # storage duties must never fail a durable commit
            log.exception("storage.on_block_failed", height=height)
        try:
            self.custody.on_block(block.txs, fin.results)
        except Exception:  # nor erasing key shares (logged: the share stays, sealed)
            log.exception("custody.on_block_failed", height=height)
        self.metrics.txs_committed.inc(len(block.txs))
        self.metrics.block_txs.observe(len(block.txs))
        self.metrics.block_seconds.observe(time.perf_counter() - started)
        self.metrics.mempool_txs.set(len(self.mempool))
        log.debug("block.committed", height=height, txs=len(block.txs))

    # ---- custody (shares across members: node.custody_ops) ----------------------------------

    def check_gate(self, record_id: str, access_tx: bytes, requester_pk: bytes) -> RecordMeta:
        """The release gate, against this node's committed ledger: the access event for
        ``record_id`` is committed, allowed, recent, and signed by ``requester_pk``; and
        the access policy, evaluated on the committed state now, still allows that read
        (a consent revoked or the record erased since then refuses it)."""
        meta = self.app.query_record(record_id)
        if meta is None:
            raise NotFound("record not found", code="RECORD_NOT_FOUND")
        receipt = self.receipt(access_tx)
        if receipt is None:
            raise Forbidden("the access event is not committed", code="ACCESS_NOT_COMMITTED")
        block = self.block(receipt.height)
        stx = decode_envelope(block.txs[receipt.index])
        if stx.public_key != requester_pk:
            raise Forbidden(
                "the access event is not this requester's", code="ACCESS_EVENT_MISMATCH"
            )
        latest = self.last_header.time_ms if self.last_header else block.header.time_ms
        check_release(
            AccessProof(
                tx=stx.tx,
                result=receipt.result,
                block_time_ms=block.header.time_ms,
                latest_time_ms=max(latest, now_ms()),
            ),
            record_id=record_id,
            requester=stx.tx.sender,
            ttl_ms=self.params.access_grant_ttl_ms,
        )
        requester = self.app.query_identity(stx.tx.sender)
        if requester is None:
            raise Forbidden("the requester is not enrolled", code="ACCESS_DENIED")
        body = decode(stx.tx.body, ReadRecordBody)
        try:  # a delegated read (a bearer token): the policy decides for its grantor
            reader = self.app.effective_reader(requester, body, block.header.time_ms)
        except MedLedgerError as exc:
            raise Forbidden(
                f"the access event's delegation no longer holds: {exc.message}",
                code="ACCESS_DENIED",
            )
        check_decision(self.app.evaluate_read(reader, body, max(latest, now_ms())))
        return meta

    def release_key(self, record_id: str, access_tx: bytes, requester_pk: bytes) -> bytes:
        """Release this custodian's share of a record's key, sealed to the requester,
        after the gate (asked by a member node relaying a read)."""
        meta = self.check_gate(record_id, access_tx, requester_pk)
        return self.custodian.release(
            meta.key_depositor, meta.content_hash, PublicKey(requester_pk)
        )

    def node_tx(self, kind: str, body: Any) -> bytes:
        """A transaction signed with this node's key, at its next nonce (evidence,
        storage alerts and repairs)."""
        return make_tx(
            self.node_key,
            chain_id=self.genesis.chain_id,
            nonce=self.next_nonce(self.node_key.id),
            kind=kind,
            body=body,
        )

    def _submit_evidence(self, first: SignedVote, second: SignedVote) -> None:
        """Turn an equivocation the core saw into an on-chain evidence transaction."""
        body = EvidenceBody(
            first=evidence_vote(first.vote, first.signature),
            second=evidence_vote(second.vote, second.signature),
        )
        try:
            self.submit(self.node_tx(SUBMIT_EVIDENCE, body))
        except MedLedgerError as exc:
            log.warning("evidence.not_submitted", code=exc.code)

    def _recheck(self, stx: SignedTx, expected: int) -> bool:
        """Cheap re-check after a block: the sender is still active (nonce is checked
        by the mempool). Kind-specific rules run again when the block executes."""
        try:
            self.app.recheck_tx(stx)
            return True
        except MedLedgerError as exc:
            log.info("tx.evicted", code=exc.code)
            return False
