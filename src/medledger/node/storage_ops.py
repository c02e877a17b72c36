"""The node's storage duties: its shard service, uploads and reads it coordinates,
and the audits and repairs the chain asks of it.

Audits: every ``storage_audit_epoch`` blocks, the hash of that block names the
auditing member and the challenged shards (``storage.audit``). The auditor asks
each challenged shard's service for the shard and its Merkle path, checks it
against the shard root anchored on chain, reports failures as ``storage.alert``
transactions, and repairs what failed: damaged shards are rebuilt in place,
an unreachable service's column moves to a member that holds none of the
record (``storage.repair``).

Erased records (``erased_height``) are tombstones: they are never audited,
repaired or counted, and when the erasure commits each node deletes its shards
and its copy of the record's manifest (``drop_erased``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medledger.app.model import (
    STORAGE_ALERT,
    STORAGE_REPAIR,
    Institution,
    RecordMeta,
    StorageAlertBody,
    StorageRepairBody,
    k_institution,
)
from medledger.crypto.cid import cid_for
from medledger.errors import (
    Forbidden,
    IntegrityError,
    InvalidInput,
    MedLedgerError,
    NotFound,
)
from medledger.log import get_logger
from medledger.storage import framing
from medledger.storage.audit import (
    Challenge,
    StoredRecord,
    auditor_for,
    challenges,
    epoch_due,
    verify_answer,
)
from medledger.storage.backend import LocalShardBackend, ShardBackend
from medledger.storage.coordinator import Coordinator
from medledger.storage.endpoints import LocalEndpoint, RemoteEndpoint, ShardEndpoint
from medledger.storage.erasure import check_params, default_params
from medledger.storage.manifest import Manifest, decode_manifest
from medledger.storage.shards import Item, ShardService

if TYPE_CHECKING:
    from medledger.node.node import Node

log = get_logger("medledger.storage")

STATUS_TIMEOUT = 2.0
USAGE_TIMEOUT = 20.0
RECENT_BLOCK_MS = 60_000
REPAIR_CONCURRENCY = 2


@dataclass
class Failure:
    record_id: str
    column: int
    institution: str
    reason: str  # missing | corrupt | unreachable
    stripes: list[int] = field(default_factory=list)


def _reason(code: str) -> str:
    if code in ("SHARD_NOT_FOUND", "NOT_FOUND"):
        return "missing"
    if code in ("SHARD_CORRUPT", "CID_MISMATCH", "BAD_AUDIT_ANSWER", "BAD_PROOF"):
        return "corrupt"
    return "unreachable"


def make_backend(node: Node) -> ShardBackend:
    cfg = node.config
    if cfg.s3 is not None:
        from medledger.storage.s3backend import S3ShardBackend

        return S3ShardBackend(cfg.s3)
    return LocalShardBackend(node.home / cfg.shards_dir)


class StorageOps:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.name = node.config.name
        self.backend = make_backend(node)
        self.service = ShardService(self.name, self.backend)
        self.coordinator = Coordinator()
        self._local = LocalEndpoint(self.service)
        self._remote: dict[str, RemoteEndpoint] = {}
        self._audit_task: asyncio.Task[Any] | None = None
        self._repairing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_audit: dict[str, Any] | None = None

    async def close(self) -> None:
        if self._audit_task is not None:
            self._audit_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        for ep in self._remote.values():
            await ep.close()
        self.service.close()
        self.coordinator.close()

    # ---- services ---------------------------------------------------------------------

    def endpoints(self) -> dict[str, ShardEndpoint]:
        """Every member's shard service this node can reach, by institution name."""
        from medledger.node.node import now_ms

        out: dict[str, ShardEndpoint] = {self.name: self._local}
        for peer in self.node.config.peers:
            if not peer.api_url or peer.name == self.name:
                continue
            if not self._is_member(peer.name):
                continue
            ep = self._remote.get(peer.name)
            if ep is None or ep.base_url != peer.api_url.rstrip("/"):
                ep = RemoteEndpoint(peer.name, peer.api_url, self.node.node_key, now_ms)
                self._remote[peer.name] = ep
            out[peer.name] = ep
        return out

    def _is_member(self, name: str) -> bool:
        """A member institution that holds storage: on chain, with a validator that
        has voting power now (removed and jailed members get no new shards)."""
        if self.node.app.committed_view().get(k_institution(name), Institution) is None:
            return False
        return any(v.name == name and v.power > 0 for v in self.node.validators)

    async def _probe(self, ep: ShardEndpoint) -> dict[str, Any]:
        """Health (a ping, a short timeout) and usage (a walk of the whole store,
        which may take longer: unknown usage does not make a service unhealthy)."""
        try:
            await asyncio.wait_for(ep.ping(), STATUS_TIMEOUT)
        except (MedLedgerError, TimeoutError) as exc:
            code = exc.code if isinstance(exc, MedLedgerError) else "TIMEOUT"
            return {"institution": ep.name, "healthy": False, "error": code}
        try:
            doc = await asyncio.wait_for(ep.status(), USAGE_TIMEOUT)
        except (MedLedgerError, TimeoutError):
            return {"institution": ep.name, "healthy": True, "usage": "unknown"}
        return {**doc, "healthy": True}

    async def reachable(self) -> list[str]:
        """Members whose shard service answers a ping (and reaches its backend) now."""
        eps = self.endpoints()

        async def ping(ep: ShardEndpoint) -> bool:
            try:
                await asyncio.wait_for(ep.ping(), STATUS_TIMEOUT)
                return True
            except (MedLedgerError, TimeoutError):
                return False

        ok = await asyncio.gather(*(ping(ep) for ep in eps.values()))
        return [name for name, good in zip(eps, ok, strict=True) if good]

    # ---- upload and read -----------------------------------------------------------------

    async def upload(
        self,
        items: AsyncIterator[Item],
        k: int | None,
        m: int | None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> tuple[Manifest, bytes]:
        """Spread an upload over ``k+m`` distinct institutions (this one first)."""
        if not self._is_member(self.name):
            raise Forbidden(
                "this node is not a member institution's; upload through a member's node",
                code="NOT_A_MEMBER_NODE",
            )
        alive = await self.reachable()
        if k is None or m is None:
            dk, dm = default_params(len(alive))
            k = dk if k is None else k
            m = dm if m is None else m
        check_params(k, m, services=len(alive))
        others = [n for n in alive if n != self.name]
        random.shuffle(others)
        chosen = ([self.name] if self.name in alive else []) + others
        eps = self.endpoints()
        placement = [eps[n] for n in chosen[: k + m]]
        log.info("storage.upload", k=k, m=m, placement=[e.name for e in placement])
        return await self.coordinator.store(items, placement, k, m, on_bytes)

    async def manifest_for(self, meta: RecordMeta) -> tuple[Manifest, bytes]:
        """The record's manifest from this node or any service holding a column,
        checked against the CID anchored on chain."""
        eps = self.endpoints()
        sources = [self.name] + [n for n in meta.placement if n != self.name]
        last: MedLedgerError = NotFound("manifest not found", code="MANIFEST_NOT_FOUND")
        for name in sources:
            ep = eps.get(name)
            if ep is None:
                continue
            try:
                data = await ep.manifest_bytes(meta.content_hash)
            except MedLedgerError as exc:
                last = exc
                continue
            if cid_for(data) != meta.content_hash:
                last = IntegrityError("a service returned a wrong manifest", code="SHARD_CORRUPT")
                continue
            return decode_manifest(data), data
        raise NotFound(
            f"no storage service could provide the record's manifest ({last.code})",
            code="MANIFEST_NOT_FOUND",
        )

    async def read(self, meta: RecordMeta) -> tuple[bytes, AsyncIterator[bytes]]:
        manifest, data = await self.manifest_for(meta)
        problems: list[tuple[int, int, str]] = []

        def on_problem(stripe: int, column: int, code: str) -> None:
            problems.append((stripe, column, code))
            log.warning(
                "storage.read_problem",
                record_id=meta.record_id,
                stripe=stripe,
                column=column,
                institution=meta.placement[column],
                code=code,
            )

        chunks = self.coordinator.read(
            manifest, meta.content_hash, self.endpoints(), meta.placement, on_problem
        )

        async def then_repair() -> AsyncIterator[bytes]:
            """The chunks; a read that had to decode around bad shards then has the
            record repaired in the background (not waiting for the next audit)."""
            async for chunk in chunks:
                yield chunk
            if problems:
                self.repair_soon(meta.record_id)

        return data, then_repair()

    def repair_soon(self, record_id: str) -> None:
        if record_id in self._repairing or not self.node.config.storage_audits:
            return
        self._repairing.add(record_id)

        async def run() -> None:
            try:
                done = await self.repair([record_id])
                log.info("storage.read_repair", record_id=record_id, repairs=len(done))
            except Exception:
                log.exception("storage.read_repair_failed", record_id=record_id)
            finally:
                self._repairing.discard(record_id)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- audits ------------------------------------------------------------------------------

    def stored_records(self) -> list[RecordMeta]:
        """Live records (erased ones have no content left to audit, repair or count)."""
        return [r for r in self.node.records() if not r.erased_height]

    def drop_erased(self, manifest_cid: str) -> None:
        """Delete this service's shards and manifest of an erased record, in the
        background (unless a live record names the same manifest)."""
        if not manifest_cid or any(r.content_hash == manifest_cid for r in self.stored_records()):
            return
        task = asyncio.create_task(self._drop(manifest_cid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drop(self, manifest_cid: str) -> None:
        try:
            manifest = await self.service.manifest(manifest_cid)
        except NotFound:
            return  # no column of it here
        except MedLedgerError as exc:
            log.warning("storage.erase_failed", manifest=manifest_cid, code=exc.code)
            return
        cids = [r.cid for r in manifest.chunks] + [r.cid for r in manifest.parity]

        def delete_all() -> None:
            for cid in cids:  # the shards of other columns are simply absent here
                self.backend.delete(cid)
            self.backend.delete(manifest_cid)  # last: it names what a failure left

        try:
            await asyncio.to_thread(delete_all)
        except Exception:
            log.exception("storage.erase_failed", manifest=manifest_cid)
            return
        log.info("storage.erased", manifest=manifest_cid, shards=len(cids))

    def challenges_at(self, height: int, count: int) -> tuple[bytes, list[Challenge]]:
        seed = self.node.block(height).header.hash()
        recs = [_stored(r) for r in self.stored_records()]
        return seed, challenges(seed, recs, count)

    def on_block(self, height: int, block_hash: bytes, block_time_ms: int) -> None:
        """Start this epoch's audit if the block names this node as its auditor (and
        is recent: a node catching up does not audit the past)."""
        from medledger.node.node import now_ms

        params = self.node.params
        if not self.node.config.storage_audits or not epoch_due(height, params.storage_audit_epoch):
            return
        if now_ms() - block_time_ms > RECENT_BLOCK_MS:
            return
        members = sorted(v.name for v in self.node.validators)
        if not members or auditor_for(block_hash, members) != self.name:
            return
        if self._audit_task is not None and not self._audit_task.done():
            log.info("storage.audit_skipped", height=height, reason="previous audit running")
            return
        self._audit_task = asyncio.create_task(self._epoch_audit(height))

    async def _epoch_audit(self, height: int) -> None:
        try:
            report = await self.audit(height=height, repair=True)
            log.info(
                "storage.audit_done",
                height=height,
                checked=report["checked"],
                failures=len(report["failures"]),
            )
        except Exception:
            log.exception("storage.audit_error", height=height)

    async def audit(
        self, *, height: int | None = None, everything: bool = False, repair: bool = False
    ) -> dict[str, Any]:
        """Challenge shards (those seeded by block ``height``, the latest by default,
        or every shard), report failures on chain, and repair them if asked."""
        height = height or self.node.height
        if height < 1:
            raise InvalidInput("no block yet to seed an audit", code="NO_BLOCKS")
        if everything:
            recs = self.stored_records()
            chs = [
                Challenge(r.record_id, *_stored(r).locate(i), i)
                for r in recs
                for i in range(r.shard_count)
            ]
            seed = self.node.block(height).header.hash()
        else:
            seed, chs = self.challenges_at(height, self.node.params.storage_audit_challenges)
        failures = await self._run_challenges(chs)
        alerts = await self._report(failures, 0 if everything else height)
        report: dict[str, Any] = {
            "seed_height": height,
            "seed": seed.hex(),
            "auditor": self.name,
            "checked": len(chs),
            "failures": [f.__dict__ for f in failures],
            "alerts": [a["tx_hash"] for a in alerts if a["code"] == "OK"],
        }
        if repair and failures:
            report["repairs"] = await self.repair(
                record_ids=sorted({f.record_id for f in failures})
            )
        self.last_audit = report
        return report

    async def _run_challenges(self, chs: list[Challenge]) -> list[Failure]:
        eps = self.endpoints()
        sem = asyncio.Semaphore(8)
        metas = {r.record_id: r for r in self.stored_records()}

        async def one(ch: Challenge) -> tuple[Challenge, str] | None:
            meta = metas[ch.record_id]
            inst = meta.placement[ch.column]
            ep = eps.get(inst)
            if ep is None:
                return ch, "unreachable"
            async with sem:
                try:
                    proof = await ep.prove(meta.content_hash, ch.stripe, ch.column)
                    if proof.leaf != ch.leaf or proof.shard_count != meta.shard_count:
                        raise IntegrityError("answer for another shard", code="BAD_AUDIT_ANSWER")
                    verify_answer(
                        proof.shard, ch.leaf, meta.shard_count, proof.path, meta.shard_root
                    )
                except MedLedgerError as exc:
                    return ch, _reason(exc.code)
            return None

        results = await asyncio.gather(*(one(ch) for ch in chs))
        grouped: dict[tuple[str, int, str], Failure] = {}
        for res in results:
            if res is None:
                continue
            ch, reason = res
            meta = metas[ch.record_id]
            key = (ch.record_id, ch.column, reason)
            f = grouped.setdefault(
                key, Failure(ch.record_id, ch.column, meta.placement[ch.column], reason)
            )
            f.stripes.append(ch.stripe)
        out = sorted(grouped.values(), key=lambda f: (f.record_id, f.column, f.reason))
        for f in out:
            f.stripes = sorted(set(f.stripes))[:256]
        return out

    async def _report(self, failures: list[Failure], seed_height: int) -> list[dict[str, Any]]:
        bodies = [
            StorageAlertBody(
                record_id=f.record_id,
                column=f.column,
                institution=f.institution,
                reason=f.reason,
                stripes=f.stripes,
                seed_height=seed_height,
            )
            for f in failures
        ]
        return await self._submit(STORAGE_ALERT, bodies)

    async def _submit(self, kind: str, bodies: list[Any]) -> list[dict[str, Any]]:
        """Submit transactions signed by this node's key and wait for their commit;
        one ``{"tx_hash", "code", "height"}`` per body, in order."""
        node = self.node
        out: list[dict[str, Any]] = []
        pending: list[tuple[int, bytes]] = []
        for body in bodies:
            try:
                h = node.submit(node.node_tx(kind, body)).hash
            except MedLedgerError as exc:
                log.warning("storage.tx_rejected", kind=kind, code=exc.code)
                out.append({"tx_hash": "", "code": exc.code, "height": 0})
                continue
            pending.append((len(out), h))
            out.append({"tx_hash": h.hex(), "code": "PENDING", "height": 0})
        if pending:
            results = await node.wait_many([h for _, h in pending], timeout=30.0)
            for (i, _), res in zip(pending, results, strict=True):
                if isinstance(res, MedLedgerError):
                    out[i]["code"] = res.code
                else:
                    out[i]["code"], out[i]["height"] = res.result.code, res.height
        return out

    # ---- repair ---------------------------------------------------------------------------------

    async def repair(self, record_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Check every column of the records (all by default) at its service and
        rebuild what is missing or corrupt; record each repair on chain."""
        metas = self.stored_records()
        if record_ids is not None:
            wanted = set(record_ids)
            metas = [m for m in metas if m.record_id in wanted]
        sem = asyncio.Semaphore(REPAIR_CONCURRENCY)
        results: list[dict[str, Any]] = []

        async def one(meta: RecordMeta) -> None:
            async with sem:
                results.extend(await self._repair_record(meta))

        await asyncio.gather(*(one(m) for m in metas))
        results.sort(key=lambda r: (r["record_id"], r["column"]))
        return results

    async def _repair_record(self, meta: RecordMeta) -> list[dict[str, Any]]:
        eps = self.endpoints()
        out: list[dict[str, Any]] = []
        try:
            manifest, manifest_bytes = await self.manifest_for(meta)
        except MedLedgerError as exc:
            return [
                {"record_id": meta.record_id, "column": -1, "status": "failed", "error": exc.code}
            ]
        placement = list(meta.placement)
        repairs: list[StorageRepairBody] = []
        for column, inst in enumerate(placement):
            ep = eps.get(inst)
            bad, problem = await self._column_health(ep, meta, manifest, column)
            if not bad:
                continue
            target = ep if problem == "" else await self._spare(placement)
            entry: dict[str, Any] = {
                "record_id": meta.record_id,
                "column": column,
                "institution": inst,
            }
            if target is None:
                out.append({**entry, "status": "no_spare_service", "error": problem})
                continue
            try:
                shards = self.coordinator.rebuild_shards(manifest, eps, placement, column, bad)
                await target.put(_with_manifest(shards, manifest_bytes), [column])
            except MedLedgerError as exc:
                out.append({**entry, "status": "failed", "error": exc.code})
                continue
            repairs.append(
                StorageRepairBody(
                    record_id=meta.record_id,
                    column=column,
                    from_institution=inst,
                    to_institution=target.name,
                    shards=len(bad),
                )
            )
            placement[column] = target.name
            out.append({**entry, "to": target.name, "shards": len(bad), "status": "repaired"})
        done = [o for o in out if o["status"] == "repaired"]
        for entry, tx in zip(done, await self._submit(STORAGE_REPAIR, repairs), strict=True):
            entry["tx_hash"] = tx["tx_hash"]
            if tx["code"] != "OK":  # the shards are back, but the chain did not record it
                entry["status"] = "unrecorded"
                entry["error"] = tx["code"]
        return out

    async def _column_health(
        self, ep: ShardEndpoint | None, meta: RecordMeta, manifest: Manifest, column: int
    ) -> tuple[list[int], str]:
        """The stripes of ``column`` to rebuild, and why: "" when the service answers
        (rebuild in place), else the code of why it cannot be used (move the column)."""
        every = [s for s in range(manifest.stripes) if manifest.shard(s, column) is not None]
        if ep is None:
            return every, "STORAGE_SERVICE_UNKNOWN"
        try:
            bad = await ep.check(meta.content_hash, column)
        except NotFound:
            return every, ""  # the service lost the record's manifest: rebuild it all
        except MedLedgerError as exc:
            log.warning("storage.check_failed", record_id=meta.record_id, code=exc.code)
            return every, exc.code
        return sorted({b.stripe for b in bad}), ""

    async def _spare(self, placement: list[str]) -> ShardEndpoint | None:
        eps = self.endpoints()
        for name in sorted(await self.reachable()):
            if name not in placement:
                return eps[name]
        return None

    async def status(self) -> dict[str, Any]:
        """Per-service usage and health, and this node's view of record shards."""
        eps = self.endpoints()
        docs = await asyncio.gather(*(self._probe(ep) for ep in eps.values()))
        recs = self.stored_records()
        counts: dict[str, int] = {name: 0 for name in eps}
        for r in recs:
            for column, inst in enumerate(r.placement):
                per_col = r.stripes if column >= r.k else _data_shards(r, column)
                counts[inst] = counts.get(inst, 0) + per_col
        services = []
        for name, doc in zip(eps, docs, strict=True):
            services.append({**doc, "institution": name, "shards_placed": counts.get(name, 0)})
        return {
            "node": self.name,
            "records": len(recs),
            "services": services,
            "last_audit": None
            if self.last_audit is None
            else {
                "seed_height": self.last_audit["seed_height"],
                "checked": self.last_audit["checked"],
                "failures": len(self.last_audit["failures"]),
            },
        }


def _stored(r: RecordMeta) -> StoredRecord:
    return StoredRecord(r.record_id, r.chunk_count, r.k, r.m)


def _data_shards(r: RecordMeta, column: int) -> int:
    full, rest = divmod(r.chunk_count, r.k)
    return full + (1 if column < rest else 0)


async def _with_manifest(
    shards: AsyncIterator[bytes], manifest_bytes: bytes
) -> AsyncIterator[Item]:
    async for shard in shards:
        yield framing.CHUNK, shard
    yield framing.MANIFEST, manifest_bytes
