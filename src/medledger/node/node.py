"""The node driver: mempool, block production, storage and custody wiring.

The protocol logic lives in pure cores (``consensus.solo.SoloCore``,
``app.Application``); this module does the clock, the disk and the tasks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from medledger.app.application import Application, BlockContext
from medledger.app.model import REGISTER_RECORD, RegisterRecordBody, k_nonce
from medledger.codec import decode
from medledger.consensus.solo import (
    Action,
    BlockCommitted,
    ProposeBlock,
    ScheduleTick,
    SoloCore,
    Tick,
    TxsAvailable,
)
from medledger.crypto.keys import PrivateKey, load_key_file
from medledger.custody.local import LocalCustodian
from medledger.errors import (
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
    result_leaf,
    sign_commit_vote,
    validators_hash,
)
from medledger.ledger.genesis import Genesis, load_genesis
from medledger.ledger.merkle import merkle_root
from medledger.ledger.store import LedgerStore, StoredBlock
from medledger.ledger.tx import SignedTx, decode_envelope
from medledger.log import get_logger
from medledger.node.config import NodeConfig, load_config
from medledger.node.mempool import Mempool
from medledger.node.metrics import NodeMetrics
from medledger.storage.chunkstore import LocalChunkStore
from medledger.storage.manifest import decode_manifest
from medledger.storage.service import StorageService

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
        self.validators_hash = validators_hash(self.validators)
        self.is_validator = any(v.id == self.node_key.id for v in self.validators)
        data = home / self.config.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.store = LedgerStore(data / "ledger.sqlite")
        self.reader = LedgerStore(data / "ledger.sqlite")
        self.chunks = LocalChunkStore(data / "chunks")
        self.custodian = LocalCustodian(data / "custody", self.node_key)
        self.storage = StorageService(self.chunks)
        self.metrics = NodeMetrics()
        self.state: dict[bytes, bytes] = {}
        self.app = Application(self.genesis, self.state.get)
        self.mempool = Mempool(
            max_txs=self.params.max_mempool_txs, max_bytes=self.params.max_mempool_bytes
        )
        self.last_header: Header | None = None
        self.app_hash = b""
        self._recover()
        self.core = SoloCore(
            height=self.height,
            last_block_time_ms=(
                self.last_header.time_ms if self.last_header else self.genesis.genesis_time_ms
            ),
            min_interval_ms=self.config.min_block_interval_ms,
            empty_block_interval_ms=self.config.empty_block_interval_ms,
            last_commit_at_ms=now_ms(),
        )
        self._waiters: dict[bytes, list[asyncio.Future[Receipt]]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.block_lock = asyncio.Lock()
        self._stopping = False
        self.fatal = False
        self.on_fatal: Callable[[], None] | None = None
        self._block_cache: dict[int, StoredBlock] = {}
        self._verify_pool = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="verify")

    # ---- start-up and recovery -------------------------------------------------------

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
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run_core(), name="block-producer")
        if self.config.empty_block_interval_ms is not None:
            self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        if not self.fatal:
            async with self.block_lock:  # let a block being written finish
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for futs in self._waiters.values():
            for f in futs:
                if not f.done():
                    f.set_exception(Unavailable("node is shutting down", code="NODE_STOPPING"))
        self._verify_pool.shutdown(wait=False, cancel_futures=True)
        self.storage.close()
        self.store.close()
        self.reader.close()

    # ---- transactions ----------------------------------------------------------------

    def committed_nonce(self, sender: str) -> int:
        raw = self.state.get(k_nonce(sender))
        return 0 if raw is None else int.from_bytes(raw, "big")

    def next_nonce(self, sender: str) -> int:
        pending = self.mempool.pending_nonce(sender)
        return self.committed_nonce(sender) if pending is None else pending

    def submit(self, raw: bytes) -> SignedTx:
        """Admit one transaction to the mempool or raise a typed error."""
        try:
            stx = decode_envelope(raw, max_bytes=self.params.max_tx_bytes)
            self.mempool.check_room(stx)
            stx.verify_signature()
        except MedLedgerError as exc:
            self._rejected(exc)
            raise
        return self._admit(stx)

    async def submit_many(self, raws: list[bytes]) -> list[SignedTx | MedLedgerError]:
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
                out.append(self._admit(d))
            except MedLedgerError as exc:
                out.append(exc)
        return out

    def _rejected(self, exc: MedLedgerError) -> None:
        self.metrics.tx_rejected.labels(code=exc.code).inc()
        log.info("tx.rejected", code=exc.code)

    def _admit(self, stx: SignedTx) -> SignedTx:
        """Admission of a transaction whose signature is verified."""
        try:
            self.mempool.check_room(stx)
            self._admission_checks(stx)
            self.app.check_tx(stx, self.next_nonce(stx.tx.sender), now_ms())
            self.mempool.add(stx)
        except MedLedgerError as exc:
            self._rejected(exc)
            raise
        if self._wake is not None:
            self._wake.set()
        return stx

    def _admission_checks(self, stx: SignedTx) -> None:
        """Node-local checks that need this node's disk (not part of consensus)."""
        if stx.tx.kind != REGISTER_RECORD:
            return
        try:
            body = decode(stx.tx.body, RegisterRecordBody)
        except MedLedgerError:
            return  # check_tx reports the malformed body
        try:
            present = self.chunks.has(body.content_hash)
        except MedLedgerError:
            return
        if not present:
            raise InvalidTransaction(
                "the record's content is not stored on this node; upload it first",
                code="CONTENT_NOT_STORED",
            )
        if not self.custodian.has(stx.tx.sender, body.content_hash):
            raise InvalidTransaction(
                "no data key was deposited for this content; deposit it first",
                code="KEY_NOT_DEPOSITED",
            )
        try:
            manifest = decode_manifest(self.chunks.get(body.content_hash))
        except MedLedgerError:
            raise InvalidTransaction(
                "the content hash does not name a stored manifest", code="CONTENT_NOT_STORED"
            )
        if manifest.size != body.size or len(manifest.chunks) != body.chunk_count:
            raise InvalidTransaction(
                "size or chunk count differ from the stored manifest", code="CONTENT_MISMATCH"
            )

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

    async def _run_core(self) -> None:
        """Drive the producer core. A failure to execute or persist a block is fatal:
        the in-memory state may be ahead of the disk, so the node stops (fail-stop)
        and a restart recovers from the last durable block."""
        try:
            await self._drive_core()
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.critical("node.halted", reason="block production failed; restart to recover")
            self.fatal = True
            if self.on_fatal is not None:
                self.on_fatal()
            raise

    async def _drive_core(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            now = now_ms()
            event = TxsAvailable(now) if len(self.mempool) else Tick(now)
            actions = self.core.handle(event)
            while actions:
                actions = await self._perform(actions, loop)

    async def _perform(
        self, actions: list[Action], loop: asyncio.AbstractEventLoop
    ) -> list[Action]:
        follow: list[Action] = []
        for action in actions:
            if isinstance(action, ScheduleTick):
                delay = max(0.0, (action.at_ms - now_ms()) / 1000)
                wake = self._wake
                assert wake is not None
                loop.call_later(delay, wake.set)
            elif isinstance(action, ProposeBlock):
                if not self.is_validator:
                    continue
                try:
                    await self._produce(action.height, action.time_ms)
                except Exception:
                    log.exception("block.failed", height=action.height)
                    raise
                follow.extend(
                    self.core.handle(
                        BlockCommitted(
                            height=action.height,
                            time_ms=action.time_ms,
                            now_ms=now_ms(),
                            txs_remaining=len(self.mempool) > 0,
                        )
                    )
                )
        return follow

    async def _produce(self, height: int, time_ms: int) -> None:
        started = time.perf_counter()
        async with self.block_lock:
            txs = self.mempool.reap(self.params.max_block_txs, self.params.max_block_bytes)
            ctx = BlockContext(height=height, time_ms=time_ms, proposer=self.node_key.id)
            fin = self.app.finalize_block(ctx, txs)
            raws = [t.raw for t in txs]
            hashes = [t.hash for t in txs]
            header = Header(
                chain_id=self.genesis.chain_id,
                height=height,
                time_ms=time_ms,
                prev_hash=self.last_header.hash() if self.last_header else self.genesis.hash(),
                tx_root=merkle_root(raws),
                results_root=merkle_root(
                    [result_leaf(h, r) for h, r in zip(hashes, fin.results, strict=True)]
                ),
                app_hash=fin.app_hash,
                validators_hash=self.validators_hash,
                proposer=self.node_key.id,
                tx_count=len(txs),
            )
            commit = Commit(
                height=height,
                round=0,
                block_hash=header.hash(),
                signatures=[
                    sign_commit_vote(self.node_key, self.genesis.chain_id, header, 0, time_ms)
                ],
            )
            writes = self.app.commit()
            for key, value in writes.items():
                if value is None:
                    self.state.pop(key, None)
                else:
                    self.state[key] = value
            await asyncio.to_thread(
                self.store.save_block, header, raws, hashes, fin.results, commit, writes
            )
            self.last_header = header
            self.app_hash = fin.app_hash
        evicted = self.mempool.remove_committed(txs, self._recheck, self.committed_nonce)
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
        self.metrics.txs_committed.inc(len(txs))
        self.metrics.block_txs.observe(len(txs))
        self.metrics.block_seconds.observe(time.perf_counter() - started)
        self.metrics.mempool_txs.set(len(self.mempool))
        log.debug("block.committed", height=height, txs=len(txs))

    def _recheck(self, stx: SignedTx, expected: int) -> bool:
        """Cheap re-check after a block: the sender is still active (nonce is checked
        by the mempool). Kind-specific rules run again when the block executes."""
        try:
            self.app.recheck_tx(stx)
            return True
        except MedLedgerError as exc:
            log.info("tx.evicted", code=exc.code)
            return False
