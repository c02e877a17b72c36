"""The Tendermint consensus algorithm as a pure, deterministic state machine.

This is Algorithm 1 of Buchman, Kwon and Milosevic, "The latest gossip on BFT
consensus" (arXiv:1807.04938), for one validator. Events go in, actions come
out; the core does no I/O, reads no clock, draws no random numbers and uses no
floats, and no decision depends on the iteration order of a dict or set. The
same sequence of events therefore always yields the same sequence of actions:
the driver rebuilds a crashed core by replaying its write-ahead log of events
and gets back exactly the votes it had already signed.

The rules, with the paper's line numbers (``h``, ``r``, ``step`` are the
core's height, round and step; "2f+1" is more than 2/3 of the voting power and
"f+1" more than 1/3; a validator counts at most once in a tally: once for a
value of a (round, type), once for "any value" of it, once among the senders
of a round):

====  ==========================================================================
L11   StartRound(r): round := r, step := propose. The proposer of ``r``
      proposes validValue with validRound, or, if validValue is nil, asks the
      driver for a new block (``BuildBlock``; ``BlockBuilt`` answers and the
      proposal goes out with validRound -1). Everyone schedules
      timeoutPropose(r) (see "Deviations" below).
L22   PROPOSAL(h, r, v, -1) from proposer(h, r) while step = propose:
      prevote id(v) if valid(v) and (lockedRound = -1 or lockedValue = v),
      else nil; step := prevote.
L28   PROPOSAL(h, r, v, vr) from proposer(h, r) and 2f+1 PREVOTE(h, vr, id(v))
      while step = propose and 0 <= vr < r: prevote id(v) if valid(v) and
      (lockedRound <= vr or lockedValue = v), else nil; step := prevote.
L34   2f+1 PREVOTE(h, r, *) while step = prevote, for the first time:
      schedule timeoutPrevote(r).
L36   PROPOSAL(h, r, v, *) from proposer(h, r) and 2f+1 PREVOTE(h, r, id(v))
      while valid(v) and step >= prevote, for the first time: if step =
      prevote, lock v at r, precommit id(v), step := precommit; in any case
      validValue := v, validRound := r.
L44   2f+1 PREVOTE(h, r, nil) while step = prevote: precommit nil;
      step := precommit.
L47   2f+1 PRECOMMIT(h, r, *) for the first time: schedule timeoutPrecommit(r).
L49   PROPOSAL of v and 2f+1 PRECOMMIT(h, r', id(v)) for any round r' while
      not decided: if valid(v), decide v (``Decide`` carries those precommits).
L55   f+1 messages (distinct senders) of a round r' > r: StartRound(r').
L57   timeoutPropose(h, r) while step = propose: prevote nil; step := prevote.
L61   timeoutPrevote(h, r) while step = prevote: precommit nil;
      step := precommit.
L65   timeoutPrecommit(h, r): StartRound(r + 1).
====  ==========================================================================

After every event the rules are evaluated, in the order of the table with L49
and L55 first, until none fires: one event can enable several (a vote that
completes a round skip, then proposals and votes already held for the new
round).

Interpretations and deviations (see docs/consensus.md):

* valid(v) is a property of a block hash: it holds once the driver reported a
  proposal for that hash, from the rightful proposer of its round, with
  ``valid=True``. A hash never reported valid is invalid.
* L49 accepts the proposal of v from *any* round of the height, not only from
  the round of the precommits: the value is named by its hash, and a commit is
  safe whatever round taught us the block.
* Every validator, the proposer included, schedules timeoutPropose, so a
  proposer whose block building stalls still prevotes nil and the round moves on.
  A ``BlockBuilt`` for the current round is still proposed after that.
* A validator that votes for several values in one (round, type) is reported
  once (``ReportEquivocation``) and counted in the tally of each value it
  voted for (up to ``MAX_VALUES_PER_SLOT`` values), not only the first one
  seen: the paper counts messages, and this keeps a commit that convinced one
  correct node convincing for all, whatever order their votes came in.
* Messages of a round more than ``ROUND_WINDOW`` rounds ahead are ignored
  (bounded memory and proposer computation), and at most
  ``MAX_PROPOSALS_PER_ROUND`` distinct proposals are kept per round (only a
  faulty proposer sends more than one).
* Once decided, the core stays at its height until the driver sends
  ``NewHeight`` (after committing the block): it still records votes and
  reports equivocations, but sends nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from medledger.consensus.types import (
    NIL,
    PRECOMMIT,
    PREVOTE,
    SignedProposal,
    SignedVote,
    Step,
    TimeoutConfig,
)
from medledger.consensus.validators import ValidatorSet

__all__ = [
    "MAX_PROPOSALS_PER_ROUND",
    "MAX_VALUES_PER_SLOT",
    "ROUND_WINDOW",
    "Action",
    "BlockBuilt",
    "BuildBlock",
    "Decide",
    "Event",
    "NewHeight",
    "ProposalReceived",
    "ReportEquivocation",
    "ScheduleTimeout",
    "SendProposal",
    "SendVote",
    "TendermintCore",
    "TimeoutElapsed",
    "VoteReceived",
]

ROUND_WINDOW = 1000
MAX_PROPOSALS_PER_ROUND = 4
MAX_VALUES_PER_SLOT = 4

# ---- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewHeight:
    """Start ``height`` with ``validators``: StartRound(0)."""

    height: int
    validators: ValidatorSet
    now_ms: int


@dataclass(frozen=True, slots=True)
class ProposalReceived:
    """An authentic proposal (signature checked by the driver).

    ``valid``: the block body matches the hash and the application accepts it.
    """

    proposal: SignedProposal
    valid: bool


@dataclass(frozen=True, slots=True)
class VoteReceived:
    """An authentic vote (signature and membership checked by the driver)."""

    vote: SignedVote


@dataclass(frozen=True, slots=True)
class TimeoutElapsed:
    height: int
    round: int
    step: Step


@dataclass(frozen=True, slots=True)
class BlockBuilt:
    """The driver's answer to :class:`BuildBlock`."""

    height: int
    round: int
    block_hash: bytes


Event = NewHeight | ProposalReceived | VoteReceived | TimeoutElapsed | BlockBuilt

# ---- actions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BuildBlock:
    """I propose this round and validValue is nil: build a block, answer ``BlockBuilt``."""

    height: int
    round: int


@dataclass(frozen=True, slots=True)
class SendProposal:
    """Sign and broadcast; feed back ``ProposalReceived(own, valid=True)``."""

    height: int
    round: int
    block_hash: bytes
    pol_round: int


@dataclass(frozen=True, slots=True)
class SendVote:
    """Write to the WAL, sign, broadcast; feed back ``VoteReceived(own)``.

    ``type`` is PREVOTE or PRECOMMIT; ``block_hash`` is NIL for a nil vote.
    """

    type: int
    height: int
    round: int
    block_hash: bytes


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    """Deliver ``TimeoutElapsed(height, round, step)`` after ``delay_ms``."""

    height: int
    round: int
    step: Step
    delay_ms: int


@dataclass(frozen=True, slots=True)
class Decide:
    """A commit: 2/3+ of the power precommitted ``block_hash`` in ``round``.

    ``precommits`` are those precommits, ordered by validator id. Emitted once
    per height.
    """

    height: int
    round: int
    block_hash: bytes
    precommits: tuple[SignedVote, ...]


@dataclass(frozen=True, slots=True)
class ReportEquivocation:
    """Two votes of one validator for the same height, round and type, different hashes."""

    first: SignedVote
    second: SignedVote


Action = BuildBlock | SendProposal | SendVote | ScheduleTimeout | Decide | ReportEquivocation

# ---- bookkeeping ----------------------------------------------------------------------


class _VoteSet:
    """The votes of one (round, type).

    A validator is counted at most once in the tally of each value and at most
    once in the tally of "any value". A correct validator casts one vote per
    (round, type); a faulty one that votes for several values is counted for
    each (up to ``MAX_VALUES_PER_SLOT``), which is safe (two 2f+1 tallies of
    one round still share a correct validator, who votes once) and keeps
    commits transferable: the precommit that let one correct node decide
    counts at every other correct node, whatever it saw first.
    """

    __slots__ = ("by_validator", "power", "power_by_hash")

    def __init__(self) -> None:
        # validator -> value -> its vote for that value, first value first
        self.by_validator: dict[str, dict[bytes, SignedVote]] = {}
        self.power = 0  # distinct validators, any value
        self.power_by_hash: dict[bytes, int] = {}

    def votes_for(self, block_hash: bytes) -> list[SignedVote]:
        return [votes[block_hash] for votes in self.by_validator.values() if block_hash in votes]


_EMPTY_VOTES = _VoteSet()


class _ProposerSchedule:
    """Proposers of the rounds of one height, computed on demand and cached."""

    __slots__ = ("_cache", "_source")

    def __init__(self, vset: ValidatorSet) -> None:
        self._source: Iterator[str] = vset.iter_proposers()
        self._cache: list[str] = []

    def __call__(self, round_: int) -> str:
        while len(self._cache) <= round_:
            self._cache.append(next(self._source))
        return self._cache[round_]


# ---- the core -------------------------------------------------------------------------


class TendermintCore:
    """One validator's (or observer's) Tendermint state machine."""

    def __init__(self, chain_id: str, my_id: str | None, timeouts: TimeoutConfig) -> None:
        self.chain_id = chain_id
        self.my_id = my_id
        self.timeouts = timeouts
        self._vset: ValidatorSet | None = None
        self._powers: dict[str, int] = {}
        self._total = 0
        self._proposer: _ProposerSchedule | None = None
        self._height = 0
        self._suppressed = 0
        self._reset()

    def _reset(self) -> None:
        """The per-height state of the paper, plus what the rules have already done."""
        self._round = 0
        self._step = Step.PROPOSE
        self._locked_round = -1
        self._locked_value: bytes | None = None
        self._valid_round = -1
        self._valid_value: bytes | None = None
        self._decided: bytes | None = None
        # messages held for this height, by round
        self._proposals: dict[int, list[SignedProposal]] = {}
        self._votes: dict[tuple[int, int], _VoteSet] = {}
        self._valid_hashes: set[bytes] = set()
        self._senders: dict[int, set[str]] = {}
        self._sender_power: dict[int, int] = {}
        # derived triggers
        self._skip_rounds: set[int] = set()  # rounds with f+1 senders
        self._commit_candidates: set[tuple[int, bytes]] = set()  # 2f+1 precommits
        # "for the first time" guards, by round
        self._prevote_timeout_rounds: set[int] = set()
        self._precommit_timeout_rounds: set[int] = set()
        self._polka_rounds: set[int] = set()
        # what this validator has sent at this height
        self._sent_votes: dict[tuple[int, int], bytes] = {}
        self._awaiting_block: int | None = None
        self._reported: set[tuple[str, int, int]] = set()

    # ---- read-only state ----------------------------------------------------------

    @property
    def height(self) -> int:
        return self._height

    @property
    def round(self) -> int:
        return self._round

    @property
    def step(self) -> Step:
        return self._step

    @property
    def locked_round(self) -> int:
        return self._locked_round

    @property
    def locked_value(self) -> bytes | None:
        return self._locked_value

    @property
    def valid_round(self) -> int:
        return self._valid_round

    @property
    def valid_value(self) -> bytes | None:
        return self._valid_value

    @property
    def decided(self) -> bytes | None:
        return self._decided

    @property
    def validators(self) -> ValidatorSet | None:
        return self._vset

    @property
    def is_validator(self) -> bool:
        """Whether this core votes at the current height."""
        return self.my_id is not None and self.my_id in self._powers

    @property
    def suppressed_votes(self) -> int:
        """Conflicting votes the last-line guard refused to emit (always 0 unless a bug)."""
        return self._suppressed

    def proposer(self, round_: int) -> str:
        """The proposer of ``round_`` at the current height."""
        if self._proposer is None:
            raise RuntimeError("no height started")
        return self._proposer(round_)

    # ---- events -------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, VoteReceived):
            return self._on_vote(event.vote)
        if isinstance(event, ProposalReceived):
            return self._on_proposal(event.proposal, event.valid)
        if isinstance(event, TimeoutElapsed):
            return self._on_timeout(event)
        if isinstance(event, BlockBuilt):
            return self._on_block_built(event)
        if isinstance(event, NewHeight):
            return self._on_new_height(event)
        raise TypeError(f"unknown event {event!r}")

    def _on_new_height(self, ev: NewHeight) -> list[Action]:
        if self._vset is not None and ev.height <= self._height:
            return []  # heights only go up
        self._height = ev.height
        self._vset = ev.validators
        self._powers = {v.id: v.power for v in ev.validators.validators}
        self._total = ev.validators.total_power
        self._proposer = _ProposerSchedule(ev.validators)
        self._reset()
        actions: list[Action] = []
        self._start_round(0, actions)
        self._run_rules(actions)
        return actions

    def _on_proposal(self, sp: SignedProposal, valid: bool) -> list[Action]:
        p = sp.proposal
        if (
            self._proposer is None
            or p.chain_id != self.chain_id
            or p.height != self._height
            or not 0 <= p.round <= self._round + ROUND_WINDOW
            or not -1 <= p.pol_round < p.round
            or p.block_hash == NIL
            or p.proposer != self._proposer(p.round)
        ):
            return []
        held = self._proposals.setdefault(p.round, [])
        if len(held) < MAX_PROPOSALS_PER_ROUND and not any(
            q.proposal.block_hash == p.block_hash and q.proposal.pol_round == p.pol_round
            for q in held
        ):
            held.append(sp)
        if valid:
            self._valid_hashes.add(p.block_hash)
        self._note_sender(p.round, p.proposer)
        actions: list[Action] = []
        self._run_rules(actions)
        return actions

    def _on_vote(self, sv: SignedVote) -> list[Action]:
        v = sv.vote
        power = self._powers.get(v.validator, 0)
        if (
            power == 0
            or v.chain_id != self.chain_id
            or v.height != self._height
            or v.type not in (PREVOTE, PRECOMMIT)
            or not 0 <= v.round <= self._round + ROUND_WINDOW
        ):
            return []
        key = (v.round, v.type)
        votes = self._votes.get(key)
        if votes is None:
            votes = self._votes[key] = _VoteSet()
        actions: list[Action] = []
        mine = votes.by_validator.get(v.validator)
        if mine is None:
            mine = votes.by_validator[v.validator] = {}
            votes.power += power
            self._note_sender(v.round, v.validator)
        elif v.block_hash in mine:
            return []  # a duplicate
        else:
            report = (v.validator, v.round, v.type)
            if report not in self._reported:
                self._reported.add(report)
                first = next(iter(mine.values()))
                actions.append(ReportEquivocation(first=first, second=sv))
            if len(mine) >= MAX_VALUES_PER_SLOT:
                return actions
        mine[v.block_hash] = sv
        behind = votes.power_by_hash.get(v.block_hash, 0) + power
        votes.power_by_hash[v.block_hash] = behind
        if v.type == PRECOMMIT and v.block_hash != NIL and self._quorum(behind):
            self._commit_candidates.add((v.round, v.block_hash))
        self._run_rules(actions)
        return actions

    def _on_timeout(self, ev: TimeoutElapsed) -> list[Action]:
        # L57, L61, L65: each only for the current height and round, in its step.
        if self._decided is not None or ev.height != self._height or ev.round != self._round:
            return []
        actions: list[Action] = []
        if ev.step == Step.PROPOSE and self._step == Step.PROPOSE:
            self._vote(PREVOTE, NIL, actions)
            self._step = Step.PREVOTE
        elif ev.step == Step.PREVOTE and self._step == Step.PREVOTE:
            self._vote(PRECOMMIT, NIL, actions)
            self._step = Step.PRECOMMIT
        elif ev.step == Step.PRECOMMIT:
            self._start_round(self._round + 1, actions)
        else:
            return []
        self._run_rules(actions)
        return actions

    def _on_block_built(self, ev: BlockBuilt) -> list[Action]:
        if (
            self._decided is not None
            or ev.height != self._height
            or ev.round != self._round
            or self._awaiting_block != ev.round
            or ev.block_hash == NIL
        ):
            return []
        self._awaiting_block = None
        actions: list[Action] = [SendProposal(self._height, ev.round, ev.block_hash, -1)]
        self._run_rules(actions)
        return actions

    # ---- helpers ------------------------------------------------------------------

    def _quorum(self, power: int) -> bool:
        return power * 3 > self._total * 2

    def _third(self, power: int) -> bool:
        return power * 3 > self._total

    def _votes_of(self, round_: int, type_: int) -> _VoteSet:
        return self._votes.get((round_, type_), _EMPTY_VOTES)

    def _note_sender(self, round_: int, validator: str) -> None:
        senders = self._senders.setdefault(round_, set())
        if validator in senders:
            return
        senders.add(validator)
        power = self._sender_power.get(round_, 0) + self._powers[validator]
        self._sender_power[round_] = power
        if round_ > self._round and self._third(power):
            self._skip_rounds.add(round_)

    def _vote(self, type_: int, block_hash: bytes, actions: list[Action]) -> None:
        if not self.is_validator:
            return
        key = (self._round, type_)
        sent = self._sent_votes.get(key)
        if sent is not None:
            # Unreachable by the rules (one prevote and one precommit per round);
            # the last line of defence against signing two votes for one slot.
            if sent != block_hash:
                self._suppressed += 1
            return
        self._sent_votes[key] = block_hash
        actions.append(SendVote(type_, self._height, self._round, block_hash))

    def _start_round(self, round_: int, actions: list[Action]) -> None:
        """StartRound (L11)."""
        assert self._proposer is not None
        self._round = round_
        self._step = Step.PROPOSE
        self._awaiting_block = None
        self._skip_rounds = {r for r in self._skip_rounds if r > round_}
        if self.is_validator and self._proposer(round_) == self.my_id:
            if self._valid_value is not None:
                actions.append(
                    SendProposal(self._height, round_, self._valid_value, self._valid_round)
                )
            else:
                self._awaiting_block = round_
                actions.append(BuildBlock(self._height, round_))
        actions.append(
            ScheduleTimeout(self._height, round_, Step.PROPOSE, self.timeouts.propose(round_))
        )

    # ---- the upon rules -----------------------------------------------------------

    def _run_rules(self, actions: list[Action]) -> None:
        while self._decided is None:
            if self._try_decide(actions):  # L49
                return
            if self._try_round_skip(actions):  # L55
                continue
            if self._step == Step.PROPOSE and self._try_prevote(actions):  # L22, L28
                continue
            r = self._round
            prevotes = self._votes_of(r, PREVOTE)
            if (  # L34
                self._step == Step.PREVOTE
                and r not in self._prevote_timeout_rounds
                and self._quorum(prevotes.power)
            ):
                self._prevote_timeout_rounds.add(r)
                actions.append(
                    ScheduleTimeout(self._height, r, Step.PREVOTE, self.timeouts.prevote(r))
                )
                continue
            if (  # L36
                self._step >= Step.PREVOTE
                and r not in self._polka_rounds
                and self._try_polka(actions)
            ):
                continue
            if self._step == Step.PREVOTE and self._quorum(  # L44
                prevotes.power_by_hash.get(NIL, 0)
            ):
                self._vote(PRECOMMIT, NIL, actions)
                self._step = Step.PRECOMMIT
                continue
            if r not in self._precommit_timeout_rounds and self._quorum(  # L47
                self._votes_of(r, PRECOMMIT).power
            ):
                self._precommit_timeout_rounds.add(r)
                actions.append(
                    ScheduleTimeout(self._height, r, Step.PRECOMMIT, self.timeouts.precommit(r))
                )
                continue
            return

    def _try_decide(self, actions: list[Action]) -> bool:
        for round_, block_hash in sorted(self._commit_candidates):
            if block_hash not in self._valid_hashes:
                continue
            precommits = tuple(
                sorted(
                    self._votes_of(round_, PRECOMMIT).votes_for(block_hash),
                    key=lambda sv: sv.vote.validator,
                )
            )
            self._decided = block_hash
            actions.append(Decide(self._height, round_, block_hash, precommits))
            return True
        return False

    def _try_round_skip(self, actions: list[Action]) -> bool:
        target = max((r for r in self._skip_rounds if r > self._round), default=-1)
        if target < 0:
            return False
        self._start_round(target, actions)
        return True

    def _try_prevote(self, actions: list[Action]) -> bool:
        for sp in self._proposals.get(self._round, ()):
            v = sp.proposal.block_hash
            vr = sp.proposal.pol_round
            if vr == -1:  # L22
                accept = v in self._valid_hashes and (
                    self._locked_round == -1 or self._locked_value == v
                )
            elif self._quorum(self._votes_of(vr, PREVOTE).power_by_hash.get(v, 0)):  # L28
                accept = v in self._valid_hashes and (
                    self._locked_round <= vr or self._locked_value == v
                )
            else:
                continue  # a proof-of-lock round we cannot check yet
            self._vote(PREVOTE, v if accept else NIL, actions)
            self._step = Step.PREVOTE
            return True
        return False

    def _try_polka(self, actions: list[Action]) -> bool:
        r = self._round
        prevotes = self._votes_of(r, PREVOTE)
        for sp in self._proposals.get(r, ()):
            v = sp.proposal.block_hash
            if v not in self._valid_hashes or not self._quorum(prevotes.power_by_hash.get(v, 0)):
                continue
            if self._step == Step.PREVOTE:
                self._locked_value = v
                self._locked_round = r
                self._vote(PRECOMMIT, v, actions)
                self._step = Step.PRECOMMIT
            self._valid_value = v
            self._valid_round = r
            self._polka_rounds.add(r)
            return True
        return False
