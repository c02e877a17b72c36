"""A deterministic simulated network of Tendermint cores.

The harness plays the driver of every node: it signs and broadcasts what a
core asks for (real Ed25519 keys), feeds a node's own votes and proposals back
to it, answers ``BuildBlock``, runs timers on a simulated clock, commits on
``Decide`` and starts the next height with ``validators.next()``. Everything
random comes from one ``random.Random`` seeded by (scenario, seed), and time is
an integer that only the event queue advances, so a seed replays exactly.

Network model (the paper's partial synchrony with gossip):

* Every message travels with a random delay; before the network stabilises
  some take very long (reordering), some are duplicated, some are dropped, and
  partitions cut the nodes into groups for a while.
* Messages sent by correct nodes are *eventually* delivered: a dropped one is
  retransmitted later, one cut by a partition after the partition heals, and a
  node that restarts after a crash is sent again every message of its height
  and later ones (what the driver's gossip does). Messages of faulty nodes get
  no retransmission, but a correct node relays a faulty node's message when it
  first sees it (gossip relays everything; relaying only faulty senders'
  messages is the same thing, since correct senders already reach everyone).
* GST is the moment the last partition heals, drops stop and the last crashed
  node is back; from then on delays are bounded.

Crashes and restarts: a crash loses the core, the queue of pending inputs, the
timers and the buffer of future-height messages. It happens either between two
events or in the middle of one (the event is in the log, only some of its
actions were carried out: the write-ahead-log crash point). A restart builds a
new core and feeds it the node's whole logged history of the current height,
checks that it re-emits exactly the actions it emitted the first time, then
re-arms the timers of its round, answers an unanswered ``BuildBlock``,
finishes the actions of an interrupted event and resumes live.

Faulty validators (less than 1/3 of the power) follow one behaviour each:
equivocating votes, votes for invalid blocks, invalid proposals, different
proposals to different peers, silence, or random votes for random rounds.

Invariants, checked as the run goes and at the end (a violation raises
:class:`SimFailure` naming the scenario and seed): agreement, validity, no
double-sign by a correct node (across its restarts), deterministic replay,
well-formed commits, BFT time within the correct clocks, equivocations
reported exactly once by every correct node that saw both votes and never
against a correct validator, and liveness: everyone decides every height, and
heights started after GST decide within a bounded number of rounds.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from medledger.consensus.bfttime import bft_time
from medledger.consensus.tendermint import (
    Action,
    BlockBuilt,
    BuildBlock,
    Decide,
    Event,
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
    NIL,
    PRECOMMIT,
    PREVOTE,
    Proposal,
    SignedProposal,
    SignedVote,
    Step,
    TimeoutConfig,
    Vote,
)
from medledger.consensus.validators import ValidatorSet
from medledger.crypto.keys import PrivateKey, PublicKey
from medledger.ledger.block import Validator

CHAIN_ID = "medledger-sim"
T0 = 1_700_000_000_000  # wall time of simulated time 0, for vote and proposal times

HONEST = "honest"
EQUIVOCATE = "equivocate"
INVALID_VOTES = "invalid-votes"
INVALID_PROPOSALS = "invalid-proposals"
SPLIT_PROPOSALS = "split-proposals"
SILENT = "silent"
RANDOM_VOTES = "random-votes"
FORK = "fork"  # split proposals with fake POL rounds, and votes for every proposal it sees
BEHAVIOURS = (
    EQUIVOCATE,
    INVALID_VOTES,
    INVALID_PROPOSALS,
    SPLIT_PROPOSALS,
    SILENT,
    RANDOM_VOTES,
    FORK,
)
ANY = "any"  # a behaviour drawn per seed

FAST_TIMEOUTS = TimeoutConfig(
    propose_ms=300,
    propose_delta_ms=150,
    prevote_ms=150,
    prevote_delta_ms=100,
    precommit_ms=150,
    precommit_delta_ms=100,
)

Msg = SignedVote | SignedProposal

# queue entry kinds
_DELIVER = 0
_TIMER = 1
_BUILT = 2
_CRASH = 3
_RESTART = 4


class SimFailure(AssertionError):
    pass


@dataclass(frozen=True)
class Scenario:
    name: str
    powers: tuple[int, ...] = (1, 1, 1, 1)
    byzantine: tuple[str, ...] = ()  # one behaviour (or ANY) per faulty validator
    heights: int = 3
    observers: int = 0
    drop: float = 0.0  # chance a message is lost (before GST)
    dup: float = 0.0  # chance a message is delivered twice
    slow: float = 0.05  # chance of a long delay (before GST): reordering
    partitions: int = 0
    crashes: int = 0
    timeouts: TimeoutConfig = FAST_TIMEOUTS
    max_delay_ms: int = 100  # bound on delays after GST
    # liveness: a height started after GST decides by round
    # (first round with a correct proposer) + round_slack
    round_slack: int = 3


@dataclass
class RunStats:
    scenario: str
    seed: int
    events: int = 0
    sim_ms: int = 0
    gst_ms: int = 0
    max_round: int = 0
    decisions: int = 0
    equivocations: int = 0
    restarts: int = 0
    bounded_heights: int = 0  # heights started after GST (checked against the round bound)
    slack_used: int = 0  # max over those of decision round - first round with a correct proposer
    behaviours: tuple[str, ...] = ()


_KEYS: dict[int, PrivateKey] = {}


def sim_key(i: int) -> PrivateKey:
    if i not in _KEYS:
        _KEYS[i] = PrivateKey(hashlib.sha256(f"medledger-sim/{i}".encode()).digest())
    return _KEYS[i]


@dataclass
class Node:
    index: int
    key: PrivateKey
    behaviour: str
    validator: bool
    core: TendermintCore
    alive: bool = True
    incarnation: int = 0
    log: list[Event] = field(default_factory=list)  # the WAL of the current height
    outputs: list[list[Action]] = field(default_factory=list)  # what each logged event emitted
    inbox: deque[Event] = field(default_factory=deque)
    busy: bool = False
    crash_mid: bool = False
    future: dict[int, list[Msg]] = field(default_factory=dict)
    seen: set[bytes] = field(default_factory=set)
    next_fed: int = 0  # highest height whose NewHeight was fed
    # persistent across restarts (the node's disk, and the harness's bookkeeping)
    signed: dict[tuple[int, int, int], SignedVote] = field(default_factory=dict)
    decided: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    started: dict[int, int] = field(default_factory=dict)  # height -> sim time started
    decided_at: dict[int, int] = field(default_factory=dict)  # height -> sim time decided
    rounds_seen: list[tuple[int, int, int]] = field(default_factory=lambda: [(0, 0, -1)])
    first_votes: dict[tuple[int, str, int, int], bytes] = field(default_factory=dict)
    expected_reports: set[tuple[int, str, int, int]] = field(default_factory=set)
    reported: set[tuple[int, str, int, int]] = field(default_factory=set)
    random_votes: int = 0
    voted_for: set[tuple[int, int, bytes]] = field(default_factory=set)
    resume: tuple[int, int] | None = None  # (event index, actions done) of a mid-event crash

    @property
    def id(self) -> str:
        return self.key.id

    @property
    def honest(self) -> bool:
        return self.behaviour == HONEST


CoreFactory = Callable[[str, str | None, TimeoutConfig], TendermintCore]


class Sim:
    def __init__(
        self, scenario: Scenario, seed: int, core_factory: CoreFactory = TendermintCore
    ) -> None:
        self.make_core = core_factory
        self.sc = scenario
        self.seed = seed
        self.rng = random.Random(f"{scenario.name}/{seed}")
        self.now = 0
        self.queue: list[tuple[int, int, int, int, object]] = []
        self.seq = 0
        self.stats = RunStats(scenario.name, seed)

        n = len(scenario.powers)
        keys = [sim_key(i) for i in range(n + scenario.observers)]
        validators = [
            Validator(name=f"v{i}", id=keys[i].id, public_key=keys[i].public_key.raw, power=p)
            for i, p in enumerate(scenario.powers)
        ]
        vset = ValidatorSet.from_validators(validators)
        self.vsets: dict[int, ValidatorSet] = {1: vset}
        for h in range(2, scenario.heights + 2):
            self.vsets[h] = self.vsets[h - 1].next()
        self.public: dict[str, PublicKey] = {k.id: k.public_key for k in keys}

        behaviours = self._assign_byzantine(validators)
        self.nodes: list[Node] = []
        for i, k in enumerate(keys):
            b = behaviours.get(k.id, HONEST)
            self.nodes.append(
                Node(
                    i,
                    k,
                    b,
                    i < n,
                    self.make_core(CHAIN_ID, k.id if i < n else None, scenario.timeouts),
                )
            )
        self.byz_ids = {nd.id for nd in self.nodes if not nd.honest}
        self.stats.behaviours = tuple(sorted(behaviours.values()))

        self.valid_blocks: set[bytes] = set()
        self.invalid_blocks: set[bytes] = set()
        self.blocks_at: dict[int, list[bytes]] = {}
        self.proposed: set[bytes] = set()
        self.decisions: dict[int, bytes] = {}
        self.archive: dict[int, list[Msg]] = {}
        self.archived: set[bytes] = set()
        self.reliable: dict[bytes, set[int]] = {}  # message -> nodes it is guaranteed to reach
        self.verified: set[bytes] = set()

        self._plan_faults()

    # ---- set-up -----------------------------------------------------------------

    def _assign_byzantine(self, validators: list[Validator]) -> dict[str, str]:
        want = list(self.sc.byzantine)
        if not want:
            return {}
        total = sum(self.sc.powers)
        ids = sorted(v.id for v in validators)
        power = {v.id: v.power for v in validators}
        for _ in range(200):
            chosen = self.rng.sample(ids, len(want))
            if sum(power[c] for c in chosen) * 3 < total:
                break
        else:
            raise ValueError(f"scenario {self.sc.name}: no faulty set under 1/3 of the power")
        return {
            c: (self.rng.choice(BEHAVIOURS) if b == ANY else b)
            for c, b in zip(chosen, want, strict=True)
        }

    def _plan_faults(self) -> None:
        rng = self.rng
        t = 0
        self.partitions: list[tuple[int, int, list[int]]] = []
        for _ in range(self.sc.partitions):
            start = t + rng.randint(0, 3000)
            end = start + rng.randint(500, 6000)
            groups = [rng.randint(0, 1) for _ in self.nodes]
            if rng.random() < 0.3:  # sometimes a three-way split
                groups = [rng.randint(0, 2) for _ in self.nodes]
            self.partitions.append((start, end, groups))
            t = end
        unstable = self.sc.drop or self.sc.slow or self.sc.dup
        self.drop_until = rng.randint(2000, 8000) if unstable else 0
        self.stable_at = max([self.drop_until] + [e for _, e, _ in self.partitions])
        self.gst = self.stable_at
        honest_validators = [nd.index for nd in self.nodes if nd.honest and nd.validator]
        for _ in range(self.sc.crashes):
            at = rng.randint(0, max(self.stable_at, 4000))
            who = rng.choice(honest_validators)
            mid = rng.random() < 0.5
            self._push(at, _CRASH, who, mid)

    # ---- the event queue --------------------------------------------------------

    def _push(self, at: int, kind: int, node: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, node, payload))

    def _arrival(self, earliest: int | None = None) -> int:
        """When a message sent now (or sent again at ``earliest``) arrives.

        Before the network stabilises a delay can be long, but never past
        ``stable_at`` plus the normal bound: what was sent before GST has arrived
        by GST + delta (the partial synchrony model).
        """
        start = self.now if earliest is None else earliest
        bound = self.sc.max_delay_ms
        if start >= self.stable_at:
            return start + self.rng.randint(1, bound)
        if self.rng.random() < self.sc.slow:
            at = start + self.rng.randint(bound, 2500)
        else:
            at = start + self.rng.randint(1, bound)
        return min(at, self.stable_at + self.rng.randint(1, bound))

    def fail(self, what: str) -> SimFailure:
        return SimFailure(
            f"scenario={self.sc.name} seed={self.seed} t={self.now}ms: {what} "
            f"(reproduce: run_scenario(SCENARIOS[{self.sc.name!r}], {self.seed}))"
        )

    # ---- running ----------------------------------------------------------------

    def run(self, time_limit_ms: int = 600_000) -> RunStats:
        for nd in self.nodes:
            if nd.behaviour != SILENT:
                self._start_height(nd, 1)
        target = self.sc.heights
        waiting = [nd for nd in self.nodes if nd.honest]
        while self.queue:
            at, _, kind, idx, payload = heapq.heappop(self.queue)
            if at > time_limit_ms:
                break
            self.now = at
            self.stats.events += 1
            nd = self.nodes[idx]
            if kind == _DELIVER:
                self._deliver(nd, payload)  # type: ignore[arg-type]
            elif kind in (_TIMER, _BUILT):
                inc, ev = payload  # type: ignore[misc]
                if nd.alive and inc == nd.incarnation:
                    self._feed(nd, ev)
            elif kind == _CRASH:
                if nd.alive:
                    if payload:
                        nd.crash_mid = True
                    else:
                        self._crash(nd)
            elif kind == _RESTART:
                self._restart(nd)
            if all(len(w.decided) >= target for w in waiting) and all(w.alive for w in waiting):
                break
        self.stats.sim_ms = self.now
        self.stats.gst_ms = self.gst
        self._final_checks()
        return self.stats

    def _final_checks(self) -> None:
        target = self.sc.heights
        for nd in self.nodes:
            if not nd.honest:
                continue
            if len(nd.decided) < target:
                raise self.fail(
                    f"liveness: node {nd.index} decided heights {sorted(nd.decided)} of "
                    f"1..{target} by t={self.now}ms (GST {self.gst}ms)"
                )
            if nd.core.suppressed_votes:
                raise self.fail(f"node {nd.index}: the core's double-sign guard fired")
            if nd.reported != nd.expected_reports:
                raise self.fail(
                    f"node {nd.index}: equivocations reported {sorted(nd.reported)} but seen "
                    f"{sorted(nd.expected_reports)}"
                )
            self.stats.equivocations += len(nd.reported)
        # bounded rounds after GST (see _round_bound)
        honest = [nd for nd in self.nodes if nd.honest]
        for h in range(1, target + 1):
            if all(nd.decided_at[h] < self.gst for nd in honest):
                continue
            bound, why = self._round_bound(h, honest)
            decided_in = max(nd.decided[h][0] for nd in honest)
            self.stats.bounded_heights += 1
            self.stats.slack_used = max(self.stats.slack_used, decided_in - bound)
            if decided_in > bound + self.sc.round_slack:
                raise self.fail(
                    f"liveness: height {h} decided in round {decided_in} after GST {self.gst}ms; "
                    f"bound {bound} + {self.sc.round_slack} ({why})"
                )
        self.stats.decisions = len(self.decisions)

    def _round_bound(self, h: int, honest: list[Node]) -> tuple[int, str]:
        """The round by which height ``h`` must decide, before slack.

        A height started after GST decides in the first round with a correct
        proposer: no lock predates GST, and after GST every correct node sees a
        round's polka while still in that round (L36), so locks and validValues
        agree. A height in progress at GST may carry locks formed before GST
        that some correct nodes never learnt as validValue (L36 only acts on the
        current round); it decides once the correct validator with the highest
        validRound proposes, so by the end of a rotation through every correct
        validator, counted from the first round started after GST (the round in
        progress at GST may fail).
        """
        vset = self.vsets[h]
        correct = {nd.id for nd in honest if nd.validator}
        if all(nd.started[h] >= self.gst for nd in honest):
            r = next(r for r in range(10_000) if vset.proposer(r) in correct)
            return r, "first round with a correct proposer"
        reached = [r for nd in honest for (t, hh, r) in nd.rounds_seen if hh == h and t <= self.gst]
        start = max(reached, default=0) + 1  # the first round that starts after GST
        todo = set(correct)
        r = start
        while True:
            todo.discard(vset.proposer(r))
            if not todo:
                return r, f"every correct validator proposed in rounds {start}..{r}"
            r += 1

    # ---- network ----------------------------------------------------------------

    def _send(self, src: int, dst: int, msg: Msg, reliable: bool) -> None:
        self._push(self._arrival(), _DELIVER, dst, (msg, src, reliable))
        if self.now < self.stable_at and self.sc.dup and self.rng.random() < self.sc.dup:
            self._push(self._arrival(), _DELIVER, dst, (msg, src, reliable))

    def _broadcast(self, src: Node, msg: Msg) -> None:
        """A correct node's broadcast: it reaches everyone eventually (gossip)."""
        self._archive(msg)
        self.reliable[msg.signature] = set(range(len(self.nodes)))
        for nd in self.nodes:
            if nd.index != src.index:
                self._send(src.index, nd.index, msg, True)

    def _archive(self, msg: Msg) -> None:
        if msg.signature not in self.archived:
            self.archived.add(msg.signature)
            self.archive.setdefault(_height(msg), []).append(msg)

    def _relay(self, via: Node, msg: Msg) -> None:
        """A correct node passes a faulty node's message on to everyone not yet sure to get it."""
        reached = self.reliable.setdefault(msg.signature, set())
        self._archive(msg)
        for nd in self.nodes:
            if nd.index != via.index and nd.index not in reached and nd.id != _signer(msg):
                reached.add(nd.index)
                self._send(via.index, nd.index, msg, True)

    def _partitioned(self, a: int, b: int) -> int:
        """The end of the partition separating ``a`` and ``b`` now, or 0."""
        for start, end, groups in self.partitions:
            if start <= self.now < end and groups[a] != groups[b]:
                return end
        return 0

    def _deliver(self, nd: Node, payload: tuple[Msg, int, bool]) -> None:
        msg, src, reliable = payload
        if not nd.alive:
            return  # a restart is sent everything again
        heal = self._partitioned(src, nd.index)
        if heal:
            if reliable:
                self._push(self._arrival(heal), _DELIVER, nd.index, payload)
            return
        if self.now < self.drop_until and self.rng.random() < self.sc.drop:
            if reliable:
                retry = self.now + self.rng.randint(100, 600)  # the gossip layer resends
                self._push(self._arrival(retry), _DELIVER, nd.index, payload)
            return
        self._receive(nd, msg)

    def _receive(self, nd: Node, msg: Msg) -> None:
        """The driver's receive path: authenticate, relay, buffer or feed."""
        signer = _signer(msg)
        if msg.signature not in self.verified:
            msg.verify(self.public[signer].raw)  # raises if the harness signed wrongly
            self.verified.add(msg.signature)
        if nd.behaviour == SILENT:
            return
        if msg.signature not in nd.seen:
            nd.seen.add(msg.signature)
            if nd.honest and signer in self.byz_ids:
                self._relay(nd, msg)
        if nd.behaviour == FORK and isinstance(msg, SignedProposal):
            self._vote_everything(nd, msg.proposal)
        h = _height(msg)
        if h < nd.core.height:
            return
        if h > nd.core.height:
            nd.future.setdefault(h, []).append(msg)
            return
        self._feed(nd, self._event(msg))

    def _event(self, msg: Msg) -> Event:
        if isinstance(msg, SignedVote):
            return VoteReceived(msg)
        return ProposalReceived(msg, msg.proposal.block_hash in self.valid_blocks)

    # ---- one node ---------------------------------------------------------------

    def _start_height(self, nd: Node, h: int) -> None:
        if nd.next_fed >= h:
            return
        nd.next_fed = h
        self._feed(nd, NewHeight(h, self.vsets[h], T0 + self.now))

    def _feed(self, nd: Node, ev: Event) -> None:
        nd.inbox.append(ev)
        if nd.busy:
            return
        nd.busy = True
        try:
            while nd.inbox and nd.alive:
                self._process(nd, nd.inbox.popleft())
        finally:
            nd.busy = False

    def _process(self, nd: Node, ev: Event) -> None:
        if isinstance(ev, NewHeight):
            nd.log = []
            nd.outputs = []
            nd.started[ev.height] = self.now
        elif isinstance(ev, VoteReceived) and nd.honest:
            self._expect_report(nd, ev.vote)
        nd.log.append(ev)
        actions = nd.core.handle(ev)
        nd.outputs.append(actions)
        where = (nd.core.height, nd.core.round)
        if where != nd.rounds_seen[-1][1:]:
            nd.rounds_seen.append((self.now, *where))
        if nd.crash_mid:
            done = self.rng.randint(0, len(actions))
            for a in actions[:done]:
                self._execute(nd, a)
            nd.crash_mid = False
            self._crash(nd, resume=(len(nd.outputs) - 1, done))
            return
        for a in actions:
            self._execute(nd, a)
        if isinstance(ev, NewHeight):
            for msg in nd.future.pop(ev.height, []):
                nd.inbox.append(self._event(msg))
            for h in [h for h in nd.future if h < ev.height]:
                del nd.future[h]
        if nd.behaviour == RANDOM_VOTES:
            self._random_vote(nd)

    def _expect_report(self, nd: Node, sv: SignedVote) -> None:
        v = sv.vote
        if v.height != nd.core.height or nd.core.validators is None:
            return
        if nd.core.validators.power(v.validator) == 0 or v.type not in (PREVOTE, PRECOMMIT):
            return
        key = (v.height, v.validator, v.round, v.type)
        first = nd.first_votes.setdefault(key, v.block_hash)
        if first != v.block_hash:
            nd.expected_reports.add(key)

    def _execute(self, nd: Node, a: Action) -> None:
        if isinstance(a, ScheduleTimeout):
            ev = TimeoutElapsed(a.height, a.round, a.step)
            self._push(self.now + a.delay_ms, _TIMER, nd.index, (nd.incarnation, ev))
        elif isinstance(a, SendVote):
            self._send_vote(nd, a)
        elif isinstance(a, SendProposal):
            self._send_proposal(nd, a)
        elif isinstance(a, BuildBlock):
            valid = nd.behaviour != INVALID_PROPOSALS
            block = self._new_block(a.height, valid)
            built = BlockBuilt(a.height, a.round, block)
            self._push(
                self.now + self.rng.randint(0, 30), _BUILT, nd.index, (nd.incarnation, built)
            )
        elif isinstance(a, Decide):
            self._on_decide(nd, a)
        elif isinstance(a, ReportEquivocation):
            self._on_report(nd, a)
        else:  # pragma: no cover
            raise self.fail(f"unknown action {a!r}")

    def _new_block(self, height: int, valid: bool) -> bytes:
        block = self.rng.randbytes(32)
        (self.valid_blocks if valid else self.invalid_blocks).add(block)
        if valid:
            self.blocks_at.setdefault(height, []).append(block)
        return block

    def _sign_vote(
        self, nd: Node, type_: int, h: int, r: int, block: bytes, t: int = 0
    ) -> SignedVote:
        vote = Vote(CHAIN_ID, type_, h, r, block, t or T0 + self.now, nd.id)
        return SignedVote.create(nd.key, vote)

    def _send_vote(self, nd: Node, a: SendVote) -> None:
        key = (a.height, a.round, a.type)
        prev = nd.signed.get(key)
        if prev is not None and prev.vote.block_hash != a.block_hash:
            if nd.honest:
                raise self.fail(
                    f"node {nd.index} double-signs {key}: {prev.vote.block_hash.hex()[:8]} "
                    f"then {a.block_hash.hex()[:8]} (incarnation {nd.incarnation})"
                )
            prev = None
        sv = (
            prev
            if prev is not None
            else self._sign_vote(nd, a.type, a.height, a.round, a.block_hash)
        )
        nd.signed[key] = sv
        self._feed(nd, VoteReceived(sv))
        if nd.honest:
            self._broadcast(nd, sv)
            return
        peers = [p for p in self.nodes if p.index != nd.index]
        if nd.behaviour == EQUIVOCATE:
            alt = self._sign_vote(
                nd, a.type, a.height, a.round, self._other_hash(a.height, a.block_hash)
            )
            for p in peers:
                self._send(nd.index, p.index, sv if self.rng.random() < 0.5 else alt, False)
        elif nd.behaviour == INVALID_VOTES:
            bad = self._sign_vote(nd, a.type, a.height, a.round, self._new_block(a.height, False))
            for p in peers:
                self._send(nd.index, p.index, bad, False)
        else:
            for p in peers:
                self._send(nd.index, p.index, sv, False)

    def _other_hash(self, height: int, block: bytes) -> bytes:
        known = [b for b in self.blocks_at.get(height, []) if b != block]
        if block != NIL and self.rng.random() < 0.5:
            return NIL
        if known and self.rng.random() < 0.7:
            return self.rng.choice(known)
        return self._new_block(height, self.rng.random() < 0.5)

    def _send_proposal(self, nd: Node, a: SendProposal) -> None:
        p = Proposal(CHAIN_ID, a.height, a.round, a.pol_round, a.block_hash, T0 + self.now, nd.id)
        sp = SignedProposal.create(nd.key, p)
        self.proposed.add(a.block_hash)
        self._feed(nd, ProposalReceived(sp, True))
        if nd.honest:
            if a.block_hash not in self.valid_blocks:
                raise self.fail(f"node {nd.index} proposes a block it was not given")
            self._broadcast(nd, sp)
            return
        peers = [p for p in self.nodes if p.index != nd.index]
        if nd.behaviour in (SPLIT_PROPOSALS, FORK):
            other = self._new_block(a.height, True)
            # often claims a POL it does not have, the latest round (unlocks the most) or any
            fake_pol = a.round - 1 if self.rng.random() < 0.5 else self.rng.randint(-1, a.round - 1)
            p2 = Proposal(CHAIN_ID, a.height, a.round, fake_pol, other, T0 + self.now, nd.id)
            sp2 = SignedProposal.create(nd.key, p2)
            self.proposed.add(other)
            for peer in peers:
                self._send(nd.index, peer.index, sp if self.rng.random() < 0.5 else sp2, False)
        else:
            for peer in peers:
                self._send(nd.index, peer.index, sp, False)

    def _random_vote(self, nd: Node) -> None:
        """Now and then, a vote for a random value in a random nearby round."""
        core = nd.core
        if core.height == 0 or nd.random_votes >= 40 or self.rng.random() > 0.2:
            return
        nd.random_votes += 1
        r = self.rng.randint(max(0, core.round - 1), core.round + 3)
        type_ = self.rng.choice((PREVOTE, PRECOMMIT))
        choices = [NIL, *self.blocks_at.get(core.height, [])[-3:]]
        block = (
            self.rng.choice(choices)
            if self.rng.random() < 0.8
            else self._new_block(core.height, False)
        )
        t = T0 + self.now + self.rng.randint(-(10**9), 10**9)
        sv = self._sign_vote(nd, type_, core.height, r, block, t)
        for p in self.nodes:
            if p.index != nd.index and self.rng.random() < 0.7:
                self._send(nd.index, p.index, sv, False)

    def _vote_everything(self, nd: Node, p: Proposal) -> None:
        """Prevote and precommit every proposal seen, whatever else was voted."""
        key = (p.height, p.round, p.block_hash)
        if key in nd.voted_for:
            return
        nd.voted_for.add(key)
        for type_ in (PREVOTE, PRECOMMIT):
            sv = self._sign_vote(nd, type_, p.height, p.round, p.block_hash)
            for peer in self.nodes:  # to some peers only: split views are what forks need
                if peer.index != nd.index and self.rng.random() < 0.6:
                    self._send(nd.index, peer.index, sv, False)

    def _on_decide(self, nd: Node, d: Decide) -> None:
        h = d.height
        if nd.honest:
            self._check_commit(nd, d)
            prior = nd.decided.get(h)
            if prior is not None and prior != (d.round, d.block_hash):
                raise self.fail(f"node {nd.index} decided height {h} twice differently")
            if prior is None:
                nd.decided[h] = (d.round, d.block_hash)
                nd.decided_at[h] = self.now
            self.stats.max_round = max(self.stats.max_round, d.round)
        if h < self.sc.heights:
            self._start_height(nd, h + 1)

    def _check_commit(self, nd: Node, d: Decide) -> None:
        h = d.height
        agreed = self.decisions.setdefault(h, d.block_hash)
        if agreed != d.block_hash:
            raise self.fail(
                f"agreement: node {nd.index} decided {d.block_hash.hex()[:8]} at height {h}, "
                f"another correct node {agreed.hex()[:8]}"
            )
        if d.block_hash not in self.proposed or d.block_hash not in self.valid_blocks:
            raise self.fail(f"validity: height {h} decided a block never proposed valid")
        vset = self.vsets[h]
        signers = [sv.vote.validator for sv in d.precommits]
        if len(set(signers)) != len(signers) or signers != sorted(signers):
            raise self.fail("commit precommits repeated or out of order")
        for sv in d.precommits:
            v = sv.vote
            if (v.type, v.height, v.round, v.block_hash) != (PRECOMMIT, h, d.round, d.block_hash):
                raise self.fail(f"commit carries a foreign vote {v}")
            sv.verify(self.public[v.validator].raw)
        if not vset.has_quorum(sum(vset.power(s) for s in signers)):
            raise self.fail("commit without 2/3+ of the power")
        correct = [sv.vote.time_ms for sv in d.precommits if sv.vote.validator not in self.byz_ids]
        t = bft_time(list(d.precommits), vset)
        if not min(correct) <= t <= max(correct):
            raise self.fail(
                f"BFT time {t} outside the correct clocks {min(correct)}..{max(correct)}"
            )

    def _on_report(self, nd: Node, rep: ReportEquivocation) -> None:
        if not nd.honest:
            return
        a, b = rep.first.vote, rep.second.vote
        if (a.validator, a.height, a.round, a.type) != (b.validator, b.height, b.round, b.type):
            raise self.fail(f"bad equivocation evidence {a} / {b}")
        if a.block_hash == b.block_hash:
            raise self.fail("equivocation evidence for one hash")
        rep.first.verify(self.public[a.validator].raw)
        rep.second.verify(self.public[b.validator].raw)
        if a.validator not in self.byz_ids:
            raise self.fail(f"a correct validator reported for equivocation: {a} / {b}")
        key = (a.height, a.validator, a.round, a.type)
        if key in nd.reported:
            raise self.fail(f"node {nd.index} reports {key} twice")
        nd.reported.add(key)

    # ---- crash and restart ------------------------------------------------------

    def _crash(self, nd: Node, resume: tuple[int, int] | None = None) -> None:
        nd.alive = False
        nd.incarnation += 1
        nd.inbox.clear()
        nd.future.clear()
        nd.seen.clear()
        nd.resume = resume
        back = self.now + self.rng.randint(300, 5000)
        self.gst = max(self.gst, back)
        self._push(back, _RESTART, nd.index, None)

    def _restart(self, nd: Node) -> None:
        self.stats.restarts += 1
        core = self.make_core(CHAIN_ID, nd.id if nd.validator else None, self.sc.timeouts)
        replayed: list[list[Action]] = []
        for ev, original in zip(nd.log, nd.outputs, strict=True):
            out = core.handle(ev)
            if out != original:
                raise self.fail(
                    f"node {nd.index}: replay of {ev!r} emitted {out!r}, originally {original!r}"
                )
            replayed.append(out)
        nd.core = core
        nd.alive = True
        nd.next_fed = core.height
        resume, nd.resume = nd.resume, None
        executed: set[int] = set()
        # finish the interrupted event, if the crash came in the middle of one
        if resume is not None:
            at, done = resume
            for a in replayed[at][done:]:
                if isinstance(a, BuildBlock):
                    executed.add(id(a))
                self._execute(nd, a)
        # re-arm the timers of the current round
        flat = [a for out in replayed for a in out]
        armed: set[Step] = set()
        for a in reversed(flat):
            if (
                isinstance(a, ScheduleTimeout)
                and (a.height, a.round) == (core.height, core.round)
                and a.step not in armed
            ):
                armed.add(a.step)
                self._execute(nd, a)
        # answer a BuildBlock that never got its BlockBuilt
        builds = [a for a in flat if isinstance(a, BuildBlock)]
        if builds and id(builds[-1]) not in executed:
            b = builds[-1]
            answered = any(
                isinstance(e, BlockBuilt) and (e.height, e.round) == (b.height, b.round)
                for e in nd.log
            )
            if not answered and b.round == core.round and core.decided is None:
                self._execute(nd, b)
        # a decided height whose successor was never started
        if core.decided is not None:
            for a in flat:
                if isinstance(a, Decide):
                    self._on_decide(nd, a)
        # the gossip layer sends the restarted node what it missed
        for h in sorted(self.archive):
            if h >= core.height:
                for msg in self.archive[h]:
                    self._send(self.rng.choice(range(len(self.nodes))), nd.index, msg, True)


def _signer(msg: Msg) -> str:
    return msg.vote.validator if isinstance(msg, SignedVote) else msg.proposal.proposer


def _height(msg: Msg) -> int:
    return msg.vote.height if isinstance(msg, SignedVote) else msg.proposal.height


# ---- scenarios ----------------------------------------------------------------------

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("n4-reorder", dup=0.05, slow=0.15),
        Scenario("n4-lossy-partitions", drop=0.2, dup=0.1, slow=0.1, partitions=2),
        Scenario("n4-crashes", drop=0.1, slow=0.1, crashes=3),
        Scenario(
            "n4-byzantine", byzantine=(ANY,), drop=0.1, dup=0.05, slow=0.1, partitions=1, crashes=1
        ),
        Scenario(
            "n4-fork-attack",
            byzantine=(FORK,),
            slow=0.3,
            drop=0.1,
            heights=4,
        ),
        Scenario(
            "n7-fork-attack",
            powers=(1,) * 7,
            byzantine=(FORK, FORK),
            slow=0.3,
            drop=0.1,
            heights=3,
        ),
        Scenario(
            "n7-byzantine",
            powers=(1,) * 7,
            byzantine=(ANY, ANY),
            drop=0.1,
            dup=0.05,
            partitions=1,
            crashes=1,
            heights=2,
        ),
        Scenario(
            "n7-unequal",
            powers=(5, 3, 2, 2, 1, 1, 1),
            byzantine=(ANY,),
            drop=0.1,
            slow=0.1,
            partitions=1,
            crashes=1,
            heights=3,
        ),
        Scenario(
            "n4-unequal-observer",
            powers=(3, 1, 1, 1),
            byzantine=(ANY,),
            observers=1,
            drop=0.1,
            partitions=1,
            crashes=1,
        ),
        Scenario(
            "n5-heavy",
            powers=(10, 3, 3, 3, 2),
            byzantine=(ANY, ANY),
            drop=0.15,
            dup=0.1,
            partitions=2,
            crashes=2,
        ),
    ]
}


def run_scenario(
    scenario: Scenario, seed: int, core_factory: CoreFactory = TendermintCore
) -> RunStats:
    return Sim(scenario, seed, core_factory).run()
