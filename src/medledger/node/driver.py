"""The consensus driver: runs the pure Tendermint core against the world.

It does what the core cannot: the clock (timeouts), the disk (write-ahead log,
block store), the network (``p2p``), signing, block building and validation
(through the application), block sync for nodes that fell behind, mempool gossip,
evidence submission, and custody messages: relaying key-share deposits and
release requests to the member institutions that hold a record's key shares.

Order of effects, as CometBFT's ``consensus/state.go`` does it: every input is
written to the WAL before the core handles it; every vote or proposal this node
signs is fsynced to the WAL before it is sent; a block is durably committed
before the next height starts.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medledger.codec import Record, decode_canonical, encode
from medledger.consensus import wal as walmod
from medledger.consensus.bfttime import bft_time
from medledger.consensus.tendermint import (
    BlockBuilt,
    BuildBlock,
    Decide,
    NewHeight,
    ProposalReceived,
    ReportEquivocation,
    ScheduleTimeout,
    SendProposal,
    SendVote,
    TendermintCore,
    TimeoutElapsed,
    VoteReceived,
)
from medledger.consensus.types import (
    Proposal,
    SignedProposal,
    SignedVote,
    Step,
    TimeoutConfig,
)
from medledger.consensus.validators import ValidatorSet
from medledger.errors import MedLedgerError, NodeError, Unavailable, from_wire
from medledger.ledger.block import Commit, CommitSig, Validator, Vote, commit_vote, verify_commit
from medledger.log import get_logger
from medledger.node import wire
from medledger.node.wire import Block

log = get_logger("medledger.consensus")

STATUS_INTERVAL_S = 1.0
SYNC_TIMEOUT_S = 3.0
FUTURE_BUFFER = 10_000
KEY_WAIT_S = 5.0
MAX_CLOCK_DRIFT_MS = 5_000  # a proposal's time may lead this node's clock by this much
MAX_CANDIDATES_PER_ROUND = 2  # distinct blocks executed per (height, round)
MAX_ROUND = 10_000
GOSSIP_DELAY_S = 0.002

# WAL tags for inputs
_T_NEW_HEIGHT = 1
_T_PROPOSAL = 2
_T_VOTE = 3
_T_TIMEOUT = 4
_T_BUILT = 5
_T_SIGNED_VOTE = 6
_T_SIGNED_PROPOSAL = 7


class _NewHeightRec(Record, frozen=True):
    height: int
    validators: ValidatorSet
    now_ms: int


class _ProposalRec(Record, frozen=True):
    proposal: SignedProposal
    valid: bool
    block: Block | None  # the body, so a restarted node can still commit it


class _TimeoutRec(Record, frozen=True):
    height: int
    round: int
    step: int


class _BuiltRec(Record, frozen=True):
    height: int
    round: int
    block_hash: bytes


@dataclass
class _Candidate:
    block: Block
    valid: bool
    fin: Any  # app FinalizedBlock when valid


def vset_meta_key(height: int) -> str:
    return f"valset:{height}"


def update_meta_key(height: int) -> str:
    return f"valset_update:{height}"


def last_commit_meta_key(height: int) -> str:
    """The commit of ``height - 1`` that block ``height`` carried (its BFT time's input)."""
    return f"last_commit:{height}"


class ConsensusDriver:
    def __init__(self, node: Any, peers: Any | None, timeouts: TimeoutConfig) -> None:
        from medledger.node.node import Node  # typing only; avoids an import cycle

        self.node: Node = node
        self.peers = peers
        self.key = node.node_key
        self.chain_id = node.genesis.chain_id
        self.timeouts = timeouts
        self.wal = walmod.WriteAheadLog(node.home / node.config.data_dir / "consensus.wal")
        self.core: TendermintCore | None = None
        self.height = node.height + 1
        self.vset = self.load_vset(self.height)
        self.candidates: dict[bytes, _Candidate] = {}
        self.signed_votes: dict[tuple[int, int, int], SignedVote] = {}
        self.signed_proposals: dict[tuple[int, int], SignedProposal] = {}
        self.future: list[wire.ProposalMsg | wire.VoteMsg] = []
        self.last_commit: Commit | None = None
        self.started = False  # the current height's core is running
        self.replaying = False
        self._timers: dict[tuple[int, int, int], asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()
        self._peer_heights: dict[str, int] = {}
        self._syncing = False
        self._start_pending = False
        self._votes_seen: set[SignedVote] = set()  # peers' votes of this height (re-sends)
        self._status_height = 0  # the height at the last status tick
        self._executed_in_round: dict[int, int] = {}
        self._proposals_seen: set[tuple[int, bytes]] = set()
        self._gossip: list[bytes] = []
        self._gossip_scheduled = False
        self._req_ids = itertools.count(1)
        self._requests: dict[int, asyncio.Future[Any]] = {}
        self.reported: set[tuple[str, int, int, int]] = set()
        self.on_evidence: Callable[[SignedVote, SignedVote], None] | None = None
        if node.height:
            try:
                self.last_commit = node.reader.get_block(node.height).commit
            except MedLedgerError:
                self.last_commit = None

    # ---- validator sets per height ---------------------------------------------------

    def load_vset(self, height: int) -> ValidatorSet:
        if height <= 1:
            return ValidatorSet.from_validators(list(self.node.genesis.validators))
        raw = self.node.store.get_meta(vset_meta_key(height))
        if raw is None:
            raise NodeError(f"no validator set stored for height {height}", code="STORE_CORRUPT")
        return decode_canonical(raw, ValidatorSet)

    def is_member(self, vset: ValidatorSet) -> bool:
        return vset.power(self.key.id) > 0

    # ---- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:  # peers' messages wait until the replay is done
            await self._replay_wal()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._status_loop(), name="consensus-status"))
        if not self.started and self._should_start():
            await self.start_height()

    async def stop(self) -> None:
        for t in [*self._tasks, *self._bg]:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        for h in self._timers.values():
            h.cancel()
        self.wal.close()

    def _should_start(self) -> bool:
        """A height starts when transactions wait (or a peer's message for it arrives,
        or the empty-block timer fires): an idle consortium makes no blocks."""
        return len(self.node.mempool) > 0

    async def _replay_wal(self) -> None:
        """Rebuild the core of the current height from the WAL after a restart.

        Inputs are fed again in order (the core is deterministic); votes and the
        proposal this node signed before are re-sent as stored, never re-signed.
        """
        records = walmod.read_wal(self.wal.path)
        start = None
        for i, rec in enumerate(records):
            if rec.kind == walmod.HEIGHT and rec.height == self.height:
                start = i
        if start is None:
            return
        mine = [r for r in records[start:] if r.height == self.height]
        for rec in mine:
            if rec.kind == walmod.SIGNED:
                self._remember_signed(rec)
            elif rec.tag == _T_PROPOSAL:
                pr = decode_canonical(rec.payload, _ProposalRec)
                if pr.block is not None and pr.proposal.proposal.block_hash not in self.candidates:
                    self.candidates[pr.proposal.proposal.block_hash] = self._validate(
                        pr.block, live=False
                    )
        self.replaying = True
        try:
            for rec in mine:
                if rec.kind == walmod.SIGNED:
                    continue
                event = self._decode_input(rec)
                if isinstance(event, NewHeight):
                    self._new_core(event.validators)
                    self.started = True
                    await self._perform(self._handle_now(event))
                elif self.core is not None:
                    await self._perform(self._handle_now(event))
                if self.core is None:  # decided during replay
                    break
        finally:
            self.replaying = False
        log.info("consensus.wal_replayed", height=self.height, records=len(mine))

    def _remember_signed(self, rec: walmod.WalRecord) -> None:
        if rec.tag == _T_SIGNED_VOTE:
            sv = decode_canonical(rec.payload, SignedVote)
            self.signed_votes[(sv.vote.height, sv.vote.round, sv.vote.type)] = sv
        elif rec.tag == _T_SIGNED_PROPOSAL:
            sp = decode_canonical(rec.payload, SignedProposal)
            self.signed_proposals[(sp.proposal.height, sp.proposal.round)] = sp

    def _new_core(self, vset: ValidatorSet) -> None:
        my_id = self.key.id if self.is_member(vset) else None
        self.core = TendermintCore(self.chain_id, my_id, self.timeouts)

    async def start_height(self) -> None:
        if self.started:
            return
        self.started = True
        vset = self.vset
        self._new_core(vset)
        event = NewHeight(height=self.height, validators=vset, now_ms=_now_ms())
        rec = _NewHeightRec(height=self.height, validators=vset, now_ms=event.now_ms)
        self.wal.start_height(
            walmod.WalRecord(
                kind=walmod.HEIGHT, height=self.height, tag=_T_NEW_HEIGHT, payload=encode(rec)
            )
        )
        await self.feed(event, logged=True)
        height = self.height
        for msg in list(self.future):
            if self.height != height:
                # decided from buffered messages: the start of the next height (spawned by
                # commit_block) takes its own messages from here, without nesting calls
                break
            if isinstance(msg, wire.ProposalMsg) and msg.proposal.proposal.height == height:
                await self._on_proposal(msg)
            elif isinstance(msg, wire.VoteMsg) and msg.vote.vote.height == height:
                await self._on_vote(msg)
        self.future = [
            m
            for m in self.future
            if (
                m.proposal.proposal.height
                if isinstance(m, wire.ProposalMsg)
                else m.vote.vote.height
            )
            > height
        ]

    def wake(self, *, force: bool = False) -> None:
        """Transactions arrived (or, with ``force``, the empty-block timer fired): start
        the height if it waits."""
        if not self.started and (force or not self._start_pending):
            self._start_pending = True
            self.spawn(self._locked_start(force=force))

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task the driver keeps (and cancels on stop)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # ---- inputs --------------------------------------------------------------------------

    async def feed(self, event: Any, *, logged: bool = False) -> None:
        """Write ``event`` to the WAL, let the core handle it, perform its actions."""
        if not logged:
            self._log_input(event)
        await self._perform(self._handle_now(event))

    def _handle_now(self, event: Any) -> list[Any]:
        if self.core is None:  # between heights, or waiting for block sync
            return []
        return self.core.handle(event)

    def _log_input(self, event: Any) -> None:
        if self.replaying:
            return
        if isinstance(event, ProposalReceived):
            cand = self.candidates.get(event.proposal.proposal.block_hash)
            rec = _ProposalRec(
                proposal=event.proposal,
                valid=event.valid,
                block=cand.block if cand is not None else None,
            )
            tag, payload = _T_PROPOSAL, encode(rec)
        elif isinstance(event, VoteReceived):
            tag, payload = _T_VOTE, encode(event.vote)
        elif isinstance(event, TimeoutElapsed):
            tag = _T_TIMEOUT
            payload = encode(
                _TimeoutRec(height=event.height, round=event.round, step=int(event.step))
            )
        elif isinstance(event, BlockBuilt):
            tag = _T_BUILT
            payload = encode(
                _BuiltRec(height=event.height, round=event.round, block_hash=event.block_hash)
            )
        else:
            return
        self.wal.append(
            walmod.WalRecord(kind=walmod.INPUT, height=self.height, tag=tag, payload=payload)
        )

    def _decode_input(self, rec: walmod.WalRecord) -> Any:
        if rec.tag == _T_NEW_HEIGHT:
            nh = decode_canonical(rec.payload, _NewHeightRec)
            return NewHeight(height=nh.height, validators=nh.validators, now_ms=nh.now_ms)
        if rec.tag == _T_PROPOSAL:
            pr = decode_canonical(rec.payload, _ProposalRec)
            return ProposalReceived(proposal=pr.proposal, valid=pr.valid)
        if rec.tag == _T_VOTE:
            return VoteReceived(vote=decode_canonical(rec.payload, SignedVote))
        if rec.tag == _T_TIMEOUT:
            t = decode_canonical(rec.payload, _TimeoutRec)
            return TimeoutElapsed(height=t.height, round=t.round, step=Step(t.step))
        if rec.tag == _T_BUILT:
            b = decode_canonical(rec.payload, _BuiltRec)
            return BlockBuilt(height=b.height, round=b.round, block_hash=b.block_hash)
        raise NodeError("unknown WAL record", code="WAL_CORRUPT")

    # ---- actions ----------------------------------------------------------------------------

    async def _perform(self, actions: list[Any]) -> None:
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if isinstance(action, ScheduleTimeout):
                self._schedule(action)
            elif isinstance(action, SendVote):
                sv = await self._sign_vote(action)
                if sv is None:
                    continue
                if self.peers is not None:
                    await self.peers.broadcast(wire.pack(wire.VoteMsg(vote=sv)))
                self._log_input(VoteReceived(vote=sv))
                queue.extend(self._handle_now(VoteReceived(vote=sv)))
            elif isinstance(action, BuildBlock):
                prior = self.signed_proposals.get((action.height, action.round))
                if prior is not None and prior.proposal.block_hash in self.candidates:
                    block_hash = prior.proposal.block_hash  # after a restart: same block
                else:
                    block_hash = self._build(action.height, action.round)
                built = BlockBuilt(height=action.height, round=action.round, block_hash=block_hash)
                self._log_input(built)
                queue.extend(self._handle_now(built))
            elif isinstance(action, SendProposal):
                sp = await self._sign_proposal(action)
                if sp is None:
                    continue
                cand = self.candidates.get(action.block_hash)
                if cand is not None and self.peers is not None:
                    msg = wire.ProposalMsg(proposal=sp, block=cand.block)
                    await self.peers.broadcast(wire.pack(msg))
                own = ProposalReceived(proposal=sp, valid=cand is not None and cand.valid)
                queue.extend(self._handle_now(own))  # in the WAL already (_sign_proposal)
            elif isinstance(action, Decide):
                await self._decide(action)
                return  # the height is over; pending actions of the old core are moot
            elif isinstance(action, ReportEquivocation):
                self._report(action.first, action.second)

    async def _durable(self) -> None:
        """fsync the WAL in a worker thread: the event loop keeps serving meanwhile."""
        await asyncio.to_thread(self.wal.sync)

    def _schedule(self, action: ScheduleTimeout) -> None:
        key = (action.height, action.round, int(action.step))
        if key in self._timers:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(key, None)
            if action.height == self.height and self.started:
                ev = TimeoutElapsed(height=action.height, round=action.round, step=action.step)
                self.spawn(self._locked_feed(ev))

        self._timers[key] = loop.call_later(action.delay_ms / 1000, fire)

    async def _locked_feed(self, event: Any) -> None:
        async with self._lock:
            if self.core is not None and self.started:
                await self.feed(event)

    async def _sign_vote(self, action: SendVote) -> SignedVote | None:
        key = (action.height, action.round, action.type)
        prior = self.signed_votes.get(key)
        if prior is not None:
            if prior.vote.block_hash != action.block_hash:
                log.critical(
                    "consensus.double_sign_refused", height=action.height, round=action.round
                )
                return None
            return prior  # re-send exactly what we signed before (after a restart)
        last_time = self.node.last_header.time_ms if self.node.last_header else 0
        vote = Vote(
            chain_id=self.chain_id,
            type=action.type,
            height=action.height,
            round=action.round,
            block_hash=action.block_hash,
            time_ms=max(_now_ms(), last_time + 1),
            validator=self.key.id,
        )
        sv = SignedVote.create(self.key, vote)
        self.wal.append(
            walmod.WalRecord(
                kind=walmod.SIGNED, height=action.height, tag=_T_SIGNED_VOTE, payload=encode(sv)
            ),
        )
        await self._durable()  # on disk before it can leave the node
        self.signed_votes[key] = sv
        return sv

    async def _sign_proposal(self, action: SendProposal) -> SignedProposal | None:
        key = (action.height, action.round)
        prior = self.signed_proposals.get(key)
        if prior is not None:
            if prior.proposal.block_hash != action.block_hash:
                log.critical("consensus.double_propose_refused", height=action.height)
                return None
            return prior
        cand = self.candidates.get(action.block_hash)
        time_ms = cand.block.header.time_ms if cand is not None else _now_ms()
        sp = SignedProposal.create(
            self.key,
            Proposal(
                chain_id=self.chain_id,
                height=action.height,
                round=action.round,
                pol_round=action.pol_round,
                block_hash=action.block_hash,
                time_ms=time_ms,
                proposer=self.key.id,
            ),
        )
        self.wal.append(
            walmod.WalRecord(
                kind=walmod.SIGNED, height=action.height, tag=_T_SIGNED_PROPOSAL, payload=encode(sp)
            ),
        )
        # the proposal as this node's own input, with its block, durable with the signature:
        # a node killed right after signing re-sends that block after a restart (it could
        # not build the same one again, and must not sign another)
        own = _ProposalRec(
            proposal=sp,
            valid=cand is not None and cand.valid,
            block=cand.block if cand is not None else None,
        )
        self.wal.append(
            walmod.WalRecord(
                kind=walmod.INPUT, height=action.height, tag=_T_PROPOSAL, payload=encode(own)
            )
        )
        await self._durable()
        self.signed_proposals[key] = sp
        return sp

    # ---- blocks -------------------------------------------------------------------------------

    def min_block_time(self, height: int, last_commit: Commit | None) -> int:
        """The earliest time block ``height`` may carry: the power-weighted median of the
        precommit times in the commit of ``height - 1`` that the block carries (BFT time:
        no time that 2/3+ of the power had not reached), and after the previous block."""
        genesis_time = self.node.genesis.genesis_time_ms
        if height <= 1 or last_commit is None:
            return genesis_time
        prev = self.node.last_header.time_ms if self.node.last_header else genesis_time
        votes = [_commit_sig_vote(self.chain_id, last_commit, s) for s in last_commit.signatures]
        return max(bft_time(votes, self.load_vset(height - 1)), prev + 1)

    def proposal_time(self, height: int) -> int:
        """The proposer's block time: its clock, never below the BFT lower bound. (A
        median of the previous commit alone goes stale after an idle period, and a
        record's creation time or an access grant's age would be off by the pause.)"""
        return max(_now_ms(), self.min_block_time(height, self.last_commit))

    def _build(self, height: int, round_: int) -> bytes:
        block, fin = self.node.build_block(
            height, self.proposal_time(height), self.last_commit, self.vset.hash()
        )
        h = block.header.hash()
        self.candidates[h] = _Candidate(block=block, valid=True, fin=fin)
        return h

    def _validate(self, block: Block, *, live: bool = True) -> _Candidate:
        """Check a block and execute it. ``live``: a fresh proposal, whose time is also
        checked against this node's clock (not done for committed blocks from sync)."""
        try:
            if block.header.height != self.height:
                raise NodeError("block for another height", code="BAD_BLOCK")
            if block.header.validators_hash != self.vset.hash():
                raise NodeError("block names another validator set", code="BAD_BLOCK")
            if self.height > 1:
                if block.last_commit is None or self.node.last_header is None:
                    raise NodeError("block lacks the previous commit", code="BAD_BLOCK")
                if block.last_commit.block_hash != self.node.last_header.hash():
                    raise NodeError("previous commit is for another block", code="BAD_BLOCK")
                verify_commit(
                    self.node.last_header,
                    block.last_commit,
                    self.load_vset(self.height - 1).validators,
                )
            if block.header.time_ms < self.min_block_time(self.height, block.last_commit):
                raise NodeError("block time is before the BFT time", code="BAD_BLOCK_TIME")
            if live and block.header.time_ms > _now_ms() + MAX_CLOCK_DRIFT_MS:
                raise NodeError("block time is in the future", code="BAD_BLOCK_TIME")
            fin = self.node.execute_block(block)
            return _Candidate(block=block, valid=True, fin=fin)
        except MedLedgerError as exc:
            log.warning("consensus.invalid_block", height=self.height, code=exc.code)
            return _Candidate(block=block, valid=False, fin=None)

    async def _decide(self, d: Decide) -> None:
        cand = self.candidates.get(d.block_hash)
        if cand is None or not cand.valid:
            # 2/3+ committed a block we never received whole: block sync will fetch it
            log.warning("consensus.decided_unknown_block", height=d.height)
            self.core = None
            return
        commit = Commit(
            height=d.height,
            round=d.round,
            block_hash=d.block_hash,
            signatures=[
                CommitSig(
                    validator=sv.vote.validator,
                    public_key=self._pk(sv.vote.validator),
                    time_ms=sv.vote.time_ms,
                    signature=sv.signature,
                )
                for sv in sorted(d.precommits, key=lambda s: s.vote.validator)
            ],
        )
        await self.commit_block(cand.block, cand.fin, commit)

    def _pk(self, validator_id: str) -> bytes:
        v = self.vset.get(validator_id)
        assert v is not None
        return v.public_key

    async def commit_block(self, block: Block, fin: Any, commit: Commit) -> None:
        """Persist a decided (or synced) block and move to the next height."""
        h = block.header.height
        meta: dict[str, bytes] = {}
        pending_raw = self.node.store.get_meta(update_meta_key(h + 1))
        if pending_raw is not None:
            next_vset = ValidatorSet.from_validators(decode_canonical(pending_raw, list[Validator]))
        else:
            next_vset = self.vset.next()
        meta[vset_meta_key(h + 1)] = encode(next_vset)
        if fin.validator_updates is not None:
            meta[update_meta_key(h + 2)] = encode(list(fin.validator_updates))
        if block.last_commit is not None:
            # this node's own commit of h - 1 may hold other precommits than the
            # proposer's: block sync must serve the block as it was proposed
            meta[last_commit_meta_key(h)] = encode(block.last_commit)
        await self.node.commit_block(block, fin, commit, meta)
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        self.height = h + 1
        self.vset = next_vset
        self.last_commit = commit
        self.candidates.clear()
        self._votes_seen.clear()
        self._executed_in_round.clear()
        self._proposals_seen.clear()
        self._prune_signed(h + 1)
        self.core = None
        self.started = False
        if self._should_start() or any(
            (m.proposal.proposal.height if isinstance(m, wire.ProposalMsg) else m.vote.vote.height)
            == self.height
            for m in self.future
        ):
            self.spawn(self._locked_start())

    def _prune_signed(self, height: int) -> None:
        """Forget what was signed for heights before ``height`` (they are committed)."""
        self.signed_votes = {k: v for k, v in self.signed_votes.items() if k[0] >= height}
        self.signed_proposals = {k: v for k, v in self.signed_proposals.items() if k[0] >= height}
        self.reported = {k for k in self.reported if k[1] >= height - 100}

    async def _locked_start(self, *, force: bool = False) -> None:
        async with self._lock:
            self._start_pending = False
            if force or self._should_start() or self._has_future(self.height):
                await self.start_height()

    def _has_future(self, height: int) -> bool:
        return any(
            (m.proposal.proposal.height if isinstance(m, wire.ProposalMsg) else m.vote.vote.height)
            == height
            for m in self.future
        )

    # ---- network ------------------------------------------------------------------------------

    async def on_message(self, peer_id: str, data: bytes) -> None:
        try:
            msg = wire.unpack(data)
        except MedLedgerError as exc:
            log.warning("p2p.bad_message", peer=peer_id, code=exc.code)
            return
        try:
            if isinstance(msg, wire.VoteMsg):
                async with self._lock:
                    await self._on_vote(msg)
            elif isinstance(msg, wire.ProposalMsg):
                async with self._lock:
                    await self._on_proposal(msg)
            elif isinstance(msg, wire.TxsMsg):
                await self.node.submit_many(msg.txs, gossip=False)
            elif isinstance(msg, wire.StatusMsg):
                self._peer_heights[peer_id] = msg.height
                if msg.height >= self.height and not self._syncing:
                    self.spawn(self._sync(peer_id))
            elif isinstance(msg, wire.BlockRequest):
                await self._serve_block(peer_id, msg)
            elif isinstance(msg, (wire.BlockResponse, wire.KeyResponse, wire.DepositResponse)):
                self._answer(msg)
            elif isinstance(msg, wire.KeyRequest):
                # in a task: a custodian waiting for a block must not hold up this
                # peer's reader (the votes that commit that block may come through it)
                self.spawn(self._serve_key(peer_id, msg))
            elif isinstance(msg, wire.DepositRequest):
                self.spawn(self._serve_deposit(peer_id, msg))
        except MedLedgerError as exc:
            log.warning("p2p.message_failed", peer=peer_id, code=exc.code)

    async def _on_vote(self, msg: wire.VoteMsg) -> None:
        v = msg.vote.vote
        if v.chain_id != self.chain_id:
            return
        if v.height > self.height:
            if len(self.future) < FUTURE_BUFFER:
                self.future.append(msg)  # handled when this node reaches that height
            return
        if v.height < self.height:
            return
        val = self.vset.get(v.validator)
        if val is None:
            return
        if msg.vote in self._votes_seen:
            return  # a copy re-sent while the height stalls (see _resend_votes)
        try:
            msg.vote.verify(val.public_key)
        except MedLedgerError:
            log.warning("consensus.bad_vote_signature", validator=v.validator)
            return
        if len(self._votes_seen) < FUTURE_BUFFER:
            self._votes_seen.add(msg.vote)
        if not self.started:
            await self.start_height()
            if v.height != self.height:
                return  # the height was decided from buffered messages meanwhile
        await self.feed(VoteReceived(vote=msg.vote))

    async def _on_proposal(self, msg: wire.ProposalMsg) -> None:
        p = msg.proposal.proposal
        if p.chain_id != self.chain_id:
            return
        if p.height > self.height:
            if len(self.future) < FUTURE_BUFFER:
                self.future.append(msg)
            return
        if p.height < self.height:
            return
        val = self.vset.get(p.proposer)
        if val is None or p.round < 0 or p.round > MAX_ROUND:
            return
        if self.vset.proposer(p.round) != p.proposer:
            return  # not this round's proposer: never execute its block
        if msg.block.header.hash() != p.block_hash:
            return
        try:
            msg.proposal.verify(val.public_key)
        except MedLedgerError:
            log.warning("consensus.bad_proposal_signature", proposer=p.proposer)
            return
        if not self.started:
            await self.start_height()
            if p.height != self.height:
                return  # the height was decided from buffered messages meanwhile
        seen = (p.round, p.block_hash)
        if seen in self._proposals_seen:
            return  # a copy re-sent while the height stalls
        self._proposals_seen.add(seen)
        cand = self.candidates.get(p.block_hash)
        if cand is None:
            executed = self._executed_in_round.get(p.round, 0)
            if executed >= MAX_CANDIDATES_PER_ROUND:
                return  # a proposer flooding blocks for its round: execute no more
            self._executed_in_round[p.round] = executed + 1
            cand = self._validate(msg.block)
            self.candidates[p.block_hash] = cand
        await self.feed(ProposalReceived(proposal=msg.proposal, valid=cand.valid))

    def gossip_tx(self, raw: bytes) -> None:
        if self.peers is None:
            return
        self._gossip.append(raw)
        if not self._gossip_scheduled:
            self._gossip_scheduled = True
            asyncio.get_running_loop().call_later(GOSSIP_DELAY_S, self._flush_gossip)

    def _flush_gossip(self) -> None:
        self._gossip_scheduled = False
        batch, self._gossip = self._gossip, []
        if batch and self.peers is not None:
            self.spawn(self.peers.broadcast(wire.pack(wire.TxsMsg(txs=batch))))

    def _report(self, first: SignedVote, second: SignedVote) -> None:
        key = (first.vote.validator, first.vote.height, first.vote.round, first.vote.type)
        if key in self.reported:
            return
        self.reported.add(key)
        log.warning(
            "consensus.equivocation", validator=first.vote.validator, height=first.vote.height
        )
        if self.on_evidence is not None and not self.replaying:
            self.on_evidence(first, second)

    # ---- status and block sync -------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            if self.peers is None:
                continue
            last = self.node.last_header.hash() if self.node.last_header else b""
            await self.peers.broadcast(
                wire.pack(wire.StatusMsg(height=self.node.height, block_hash=last))
            )
            await self._resend_votes()

    async def _resend_votes(self) -> None:
        """Re-send this node's votes of its latest round when the height makes no progress.

        A vote is broadcast once, to the peers connected at that moment: one sent during a
        partition, or while a peer restarted, is lost, and a height whose quorum needs it
        would wait forever (CometBFT's reactor gossips the votes a peer lacks; this is the
        simple form). Peers drop the copies they already have.
        """
        if self._status_height != self.height or not self.started or self.peers is None:
            self._status_height = self.height
            return
        mine = [sv for (h, _, _), sv in self.signed_votes.items() if h == self.height]
        if not mine:
            return
        latest = max(sv.vote.round for sv in mine)
        for sv in mine:
            if sv.vote.round == latest:
                await self.peers.broadcast(wire.pack(wire.VoteMsg(vote=sv)))
        # and this node's proposal of that round, if it made one: a proposal lost to a
        # partition otherwise costs the round
        sp = self.signed_proposals.get((self.height, latest))
        cand = self.candidates.get(sp.proposal.block_hash) if sp is not None else None
        if sp is not None and cand is not None:
            await self.peers.broadcast(wire.pack(wire.ProposalMsg(proposal=sp, block=cand.block)))

    async def _sync(self, peer_id: str) -> None:
        """Fetch and apply committed blocks from a peer that is ahead of us."""
        self._syncing = True
        try:
            while self._peer_heights.get(peer_id, 0) >= self.height:
                resp = await self._request(peer_id, wire.BlockRequest(height=self.height))
                if (
                    not isinstance(resp, wire.BlockResponse)
                    or resp.block is None
                    or resp.commit is None
                ):
                    return
                async with self._lock:
                    if resp.height != self.height:
                        continue
                    block = resp.block
                    try:
                        verify_commit(block.header, resp.commit, self.vset.validators)
                    except MedLedgerError as exc:
                        log.warning("sync.bad_commit", peer=peer_id, code=exc.code)
                        return
                    cand = self.candidates.get(resp.commit.block_hash)
                    if cand is None or not cand.valid:
                        cand = self._validate(block, live=False)
                    if not cand.valid:
                        log.error("sync.invalid_block", peer=peer_id, height=self.height)
                        return
                    log.info("sync.block", height=self.height, peer=peer_id)
                    await self.commit_block(block, cand.fin, resp.commit)
        except (TimeoutError, Unavailable):
            log.info("sync.timeout", peer=peer_id)
        finally:
            self._syncing = False

    async def _serve_block(self, peer_id: str, req: wire.BlockRequest) -> None:
        if self.peers is None:
            return
        if 1 <= req.height <= self.node.height:
            stored = self.node.block(req.height)
            raw = self.node.reader.get_meta(last_commit_meta_key(req.height))
            if raw is not None:
                last_commit: Commit | None = decode_canonical(raw, Commit)
            else:  # committed before the block's last commit was kept
                last_commit = self.node.block(req.height - 1).commit if req.height > 1 else None
            resp = wire.BlockResponse(
                height=req.height,
                block=Block(header=stored.header, txs=stored.txs, last_commit=last_commit),
                commit=stored.commit,
            )
        else:
            resp = wire.BlockResponse(height=req.height, block=None, commit=None)
        await self.peers.send(peer_id, wire.pack(resp))

    # ---- request / response (block sync, key-share deposits and releases) --------------------

    async def _request(self, peer_id: str, msg: Any, timeout: float = SYNC_TIMEOUT_S) -> Any:
        if self.peers is None:
            raise Unavailable("no peers", code="NO_PEERS")
        loop = asyncio.get_running_loop()
        # block requests are keyed by (negated) height, others by request id
        rid = -msg.height if isinstance(msg, wire.BlockRequest) else msg.request_id
        fut: asyncio.Future[Any] = loop.create_future()
        self._requests[rid] = fut
        try:
            if not await self.peers.send(peer_id, wire.pack(msg)):
                raise Unavailable("peer is not connected", code="PEER_UNREACHABLE")
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise Unavailable("peer did not answer in time", code="PEER_TIMEOUT")
        finally:
            self._requests.pop(rid, None)

    def _answer(self, msg: Any) -> None:
        rid = -msg.height if isinstance(msg, wire.BlockResponse) else msg.request_id
        fut = self._requests.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def next_request_id(self) -> int:
        return next(self._req_ids)

    async def fetch_key(
        self,
        peer_id: str,
        record_id: str,
        access_tx: bytes,
        requester_pk: bytes,
        min_height: int,
        timeout: float = KEY_WAIT_S + 1.0,
    ) -> bytes:
        """A member custodian's key share of a record, sealed to the requester: the
        custodian checks the release gate against its own ledger first."""
        req = wire.KeyRequest(
            request_id=self.next_request_id(),
            record_id=record_id,
            access_tx=access_tx,
            requester_public_key=requester_pk,
            min_height=min_height,
        )
        resp = await self._request(peer_id, req, timeout)
        if resp.error:
            raise from_wire(resp.status or 503, resp.error, resp.message)
        sealed: bytes = resp.sealed_key
        return sealed

    async def _serve_key(self, peer_id: str, req: wire.KeyRequest) -> None:
        assert self.peers is not None
        await self._wait_height(req.min_height)  # the access event is committed, maybe not here
        try:
            sealed = self.node.release_key(req.record_id, req.access_tx, req.requester_public_key)
            resp = wire.KeyResponse(
                request_id=req.request_id, sealed_key=sealed, error="", message="", status=0
            )
            self.node.metrics.key_releases.labels(outcome="released").inc()
            log.info("custody.share_released", record_id=req.record_id, peer=peer_id)
        except MedLedgerError as exc:
            resp = wire.KeyResponse(
                request_id=req.request_id,
                sealed_key=b"",
                error=exc.code,
                message=exc.message,
                status=exc.http_status,
            )
            self.node.metrics.key_releases.labels(outcome="refused").inc()
            log.info("custody.share_refused", record_id=req.record_id, code=exc.code)
        await self.peers.send(peer_id, wire.pack(resp))

    async def deposit_share(
        self,
        peer_id: str,
        request: wire.SignedRequest,
        min_height: int,
        timeout: float = KEY_WAIT_S + 1.0,
    ) -> None:
        """Have a member custodian keep its share of a client's deposit (it verifies the
        client's signature on the deposit itself); raise its refusal."""
        req = wire.DepositRequest(
            request_id=self.next_request_id(), request=request, min_height=min_height
        )
        resp = await self._request(peer_id, req, timeout)
        if resp.error:
            raise from_wire(resp.status or 503, resp.error, resp.message)

    async def _serve_deposit(self, peer_id: str, req: wire.DepositRequest) -> None:
        assert self.peers is not None
        await self._wait_height(req.min_height)  # the depositor's enrolment, say
        try:
            self.node.custody.accept(req.request)
            resp = wire.DepositResponse(request_id=req.request_id, error="", message="", status=0)
        except MedLedgerError as exc:
            log.info("custody.deposit_refused", peer=peer_id, code=exc.code)
            resp = wire.DepositResponse(
                request_id=req.request_id,
                error=exc.code,
                message=exc.message,
                status=exc.http_status,
            )
        await self.peers.send(peer_id, wire.pack(resp))

    async def _wait_height(self, height: int) -> None:
        deadline = time.monotonic() + KEY_WAIT_S
        while self.node.height < height and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def peer_for_institution(self, institution: str) -> str | None:
        for v in self.vset.validators:
            if v.name == institution:
                return v.id
        for v in self.node.genesis.validators:
            if v.name == institution:
                return v.id
        for p in self.node.config.peers:
            if p.name == institution:
                return p.id
        return None


def _commit_sig_vote(chain_id: str, commit: Commit, sig: CommitSig) -> SignedVote:
    return SignedVote(vote=commit_vote(chain_id, commit, sig), signature=sig.signature)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
