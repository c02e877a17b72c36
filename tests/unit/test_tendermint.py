"""consensus.tendermint: the rules of Algorithm 1, one at a time.

The deterministic network simulation (tests/sim) checks the rules together
under faults; these tests pin each rule and guard down on its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.consensus.tendermint import (
    MAX_PROPOSALS_PER_ROUND,
    MAX_VALUES_PER_SLOT,
    ROUND_WINDOW,
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
from medledger.crypto.keys import PrivateKey
from medledger.ledger.block import Validator

CHAIN = "tm-unit"
TO = TimeoutConfig()
H = 1
A = b"\xaa" * 32
B = b"\xbb" * 32
C = b"\xcc" * 32


@dataclass
class Net:
    """A validator set with keys, in id order (index i is the i-th validator)."""

    vset: ValidatorSet
    keys: list[PrivateKey]

    @classmethod
    def of(cls, *powers: int) -> Net:
        keys = [
            PrivateKey(hashlib.sha256(f"tm-unit/{i}".encode()).digest()) for i in range(len(powers))
        ]
        vals = [
            Validator(name=f"v{i}", id=k.id, public_key=k.public_key.raw, power=p)
            for i, (k, p) in enumerate(zip(keys, powers, strict=True))
        ]
        vset = ValidatorSet.from_validators(vals)
        by_id = {k.id: k for k in keys}
        return cls(vset=vset, keys=[by_id[v.id] for v in vset.validators])

    def id(self, i: int) -> str:
        return self.keys[i].id

    def index(self, validator_id: str) -> int:
        return [k.id for k in self.keys].index(validator_id)

    def proposer(self, round_: int) -> int:
        return self.index(self.vset.proposer(round_))

    def not_proposer(self, round_: int) -> int:
        return next(i for i in range(len(self.keys)) if i != self.proposer(round_))

    def vote(
        self, i: int, type_: int, round_: int, block_hash: bytes, height: int = H, t: int = 0
    ) -> VoteReceived:
        vote = Vote(CHAIN, type_, height, round_, block_hash, t, self.id(i))
        return VoteReceived(SignedVote.create(self.keys[i], vote))

    def proposal(
        self,
        round_: int,
        block_hash: bytes,
        pol_round: int = -1,
        valid: bool = True,
        proposer: int | None = None,
        height: int = H,
    ) -> ProposalReceived:
        i = self.proposer(round_) if proposer is None else proposer
        p = Proposal(CHAIN, height, round_, pol_round, block_hash, 0, self.id(i))
        return ProposalReceived(SignedProposal.create(self.keys[i], p), valid)

    def core(self, me: int | None, height: int = H) -> tuple[TendermintCore, list[Action]]:
        core = TendermintCore(CHAIN, None if me is None else self.id(me), TO)
        return core, core.handle(NewHeight(height, self.vset, 0))


def feed(core: TendermintCore, events: Sequence[Event]) -> list[Action]:
    out: list[Action] = []
    for ev in events:
        out.extend(core.handle(ev))
    return out


def votes_of(actions: Sequence[Action]) -> list[SendVote]:
    return [a for a in actions if isinstance(a, SendVote)]


def timeouts_of(actions: Sequence[Action]) -> list[ScheduleTimeout]:
    return [a for a in actions if isinstance(a, ScheduleTimeout)]


def prevotes(net: Net, who: Sequence[int], round_: int, h: bytes) -> list[VoteReceived]:
    return [net.vote(i, PREVOTE, round_, h) for i in who]


def precommits(net: Net, who: Sequence[int], round_: int, h: bytes) -> list[VoteReceived]:
    return [net.vote(i, PRECOMMIT, round_, h) for i in who]


def others(net: Net, me: int, count: int) -> list[int]:
    return [i for i in range(len(net.keys)) if i != me][:count]


# ---- StartRound and proposing -----------------------------------------------------


def test_non_proposer_starts_with_propose_timeout() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, actions = net.core(me)
    assert actions == [ScheduleTimeout(H, 0, Step.PROPOSE, TO.propose(0))]
    assert (core.height, core.round, core.step) == (H, 0, Step.PROPOSE)
    assert core.locked_round == -1 and core.locked_value is None
    assert core.valid_round == -1 and core.valid_value is None and core.decided is None


def test_proposer_builds_then_proposes_once() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.proposer(0)
    core, actions = net.core(me)
    assert actions == [BuildBlock(H, 0), ScheduleTimeout(H, 0, Step.PROPOSE, TO.propose(0))]
    assert core.handle(BlockBuilt(H, 1, A)) == []  # another round
    assert core.handle(BlockBuilt(H + 1, 0, A)) == []  # another height
    assert core.handle(BlockBuilt(H, 0, A)) == [SendProposal(H, 0, A, -1)]
    assert core.handle(BlockBuilt(H, 0, B)) == []  # answered already: never two proposals
    # its own proposal comes back: it prevotes like anyone else
    assert votes_of(core.handle(net.proposal(0, A))) == [SendVote(PREVOTE, H, 0, A)]


def test_proposal_from_wrong_proposer_is_ignored() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, _ = net.core(me)
    impostor = next(i for i in range(4) if i not in (me, net.proposer(0)))
    assert core.handle(net.proposal(0, A, proposer=impostor)) == []
    assert core.step == Step.PROPOSE
    # nor do malformed ones count: pol_round not below the round, nil block, other height/chain
    assert core.handle(net.proposal(0, A, pol_round=0)) == []
    assert core.handle(net.proposal(0, NIL)) == []
    assert core.handle(net.proposal(0, A, height=H + 1)) == []
    assert core.step == Step.PROPOSE


def test_valid_proposal_gets_prevote_invalid_gets_nil() -> None:
    net = Net.of(1, 1, 1, 1)
    core, _ = net.core(net.not_proposer(0))
    assert votes_of(core.handle(net.proposal(0, A))) == [SendVote(PREVOTE, H, 0, A)]
    assert core.step == Step.PREVOTE
    core2, _ = net.core(net.not_proposer(0))
    assert votes_of(core2.handle(net.proposal(0, A, valid=False))) == [SendVote(PREVOTE, H, 0, NIL)]
    # a second proposal of the round (faulty proposer) does not cause a second prevote
    assert votes_of(core2.handle(net.proposal(0, B))) == []


# ---- locking (L36) and its release (L28) --------------------------------------------


def lock_on_a_in_round_0(net: Net, me: int) -> TendermintCore:
    core, _ = net.core(me)
    feed(core, [net.proposal(0, A)])
    actions = feed(core, prevotes(net, [*others(net, me, 2), me], 0, A))
    assert votes_of(actions) == [SendVote(PRECOMMIT, H, 0, A)]
    assert (core.locked_round, core.locked_value) == (0, A)
    assert (core.valid_round, core.valid_value) == (0, A)
    assert core.step == Step.PRECOMMIT
    return core


def go_to_round(net: Net, core: TendermintCore, round_: int) -> list[Action]:
    """Precommit-timeout our way to ``round_`` (2f+1 nil precommits, then the timeout)."""
    out: list[Action] = []
    while core.round < round_:
        r = core.round
        out += feed(core, precommits(net, [0, 1, 2, 3], r, NIL))
        out += core.handle(TimeoutElapsed(H, r, Step.PRECOMMIT))
    return out


def test_locked_validator_prevotes_nil_for_other_value() -> None:
    net = Net.of(1, 1, 1, 1)
    me = 0 if net.proposer(1) != 0 else 1
    core = lock_on_a_in_round_0(net, me)
    go_to_round(net, core, 1)
    assert core.round == 1 and core.locked_value == A
    assert votes_of(core.handle(net.proposal(1, B))) == [SendVote(PREVOTE, H, 1, NIL)]


def test_locked_validator_prevotes_its_locked_value() -> None:
    net = Net.of(1, 1, 1, 1)
    me = 0 if net.proposer(1) != 0 else 1
    core = lock_on_a_in_round_0(net, me)
    go_to_round(net, core, 1)
    assert votes_of(core.handle(net.proposal(1, A))) == [SendVote(PREVOTE, H, 1, A)]


def test_unlock_with_a_newer_proof_of_lock() -> None:
    """Locked on A in round 0; B has 2f+1 prevotes in round 1 and is re-proposed in
    round 2 with validRound 1: lockedRound 0 <= 1, so the validator prevotes B."""
    net = Net.of(1, 1, 1, 1)
    me = next(i for i in range(4) if i not in (net.proposer(1), net.proposer(2)))
    core = lock_on_a_in_round_0(net, me)
    go_to_round(net, core, 2)
    assert core.round == 2
    # the proposal with validRound 1 alone is not enough: the POL is not there yet
    assert votes_of(core.handle(net.proposal(2, B, pol_round=1))) == []
    assert core.step == Step.PROPOSE
    actions = feed(core, prevotes(net, others(net, me, 3), 1, B))
    assert votes_of(actions) == [SendVote(PREVOTE, H, 2, B)]
    assert core.locked_value == A  # unlocking means prevoting; the lock moves at L36


def test_stale_proof_of_lock_does_not_unlock() -> None:
    """Locked on A in round 1; a proposal of B with a POL from round 0 must get nil."""
    net = Net.of(1, 1, 1, 1)
    me = next(i for i in range(4) if i not in (net.proposer(1), net.proposer(2)))
    core, _ = net.core(me)
    feed(core, prevotes(net, others(net, me, 3), 0, B))  # a POL for B in round 0
    go_to_round(net, core, 1)
    feed(core, [net.proposal(1, A)])
    feed(core, prevotes(net, [*others(net, me, 2), me], 1, A))
    assert (core.locked_round, core.locked_value) == (1, A)
    go_to_round(net, core, 2)
    assert votes_of(core.handle(net.proposal(2, B, pol_round=0))) == [SendVote(PREVOTE, H, 2, NIL)]


def test_proposer_reproposes_valid_value_with_valid_round() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.proposer(1)
    core, _ = net.core(me)
    feed(core, [net.proposal(0, A)])
    feed(core, prevotes(net, others(net, me, 3), 0, A))
    assert core.valid_value == A and core.valid_round == 0
    actions = go_to_round(net, core, 1)
    assert SendProposal(H, 1, A, 0) in actions
    assert not any(isinstance(a, BuildBlock) for a in actions)


def test_l36_in_precommit_step() -> None:
    net = Net.of(1, 1, 1, 1, 1, 1, 1)  # n = 7: a polka for A needs 5
    me = net.not_proposer(0)
    core, _ = net.core(me)
    core.handle(TimeoutElapsed(H, 0, Step.PROPOSE))  # prevote nil
    rest = others(net, me, 6)
    actions = feed(core, [net.vote(me, PREVOTE, 0, NIL), *prevotes(net, rest[:4], 0, A)])
    assert timeouts_of(actions) == [ScheduleTimeout(H, 0, Step.PREVOTE, TO.prevote(0))]
    actions = core.handle(TimeoutElapsed(H, 0, Step.PREVOTE))
    assert votes_of(actions) == [SendVote(PRECOMMIT, H, 0, NIL)]
    feed(core, [net.proposal(0, A)])
    assert core.valid_value is None  # four prevotes for A: no polka yet
    actions = core.handle(net.vote(rest[4], PREVOTE, 0, A))
    assert votes_of(actions) == []  # step is precommit: no precommit, no lock
    assert (core.valid_round, core.valid_value) == (0, A)
    assert (core.locked_round, core.locked_value) == (-1, None)


# ---- nil quorum, timeouts and their guards ----------------------------------------


def test_nil_polka_precommits_nil() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, _ = net.core(me)
    core.handle(TimeoutElapsed(H, 0, Step.PROPOSE))
    actions = feed(core, prevotes(net, others(net, me, 3), 0, NIL))
    assert votes_of(actions) == [SendVote(PRECOMMIT, H, 0, NIL)]
    assert core.step == Step.PRECOMMIT and core.locked_value is None


def test_propose_timeout_guards() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, _ = net.core(me)
    assert core.handle(TimeoutElapsed(H + 1, 0, Step.PROPOSE)) == []  # other height
    assert core.handle(TimeoutElapsed(H, 1, Step.PROPOSE)) == []  # other round
    assert core.handle(TimeoutElapsed(H, 0, Step.PREVOTE)) == []  # other step
    assert core.step == Step.PROPOSE
    assert votes_of(core.handle(TimeoutElapsed(H, 0, Step.PROPOSE))) == [
        SendVote(PREVOTE, H, 0, NIL)
    ]
    assert core.handle(TimeoutElapsed(H, 0, Step.PROPOSE)) == []  # once, then the step guard


def test_prevote_timeout_scheduled_once_on_any_prevote_quorum_in_prevote_step() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, _ = net.core(me)
    # 2f+1 mixed prevotes while still in propose: not scheduled (step guard)
    mixed = [
        net.vote(i, PREVOTE, 0, h) for i, h in zip(others(net, me, 3), [A, B, NIL], strict=True)
    ]
    assert timeouts_of(feed(core, mixed)) == []
    # entering prevote step: the rule fires now, once
    actions = core.handle(TimeoutElapsed(H, 0, Step.PROPOSE))
    assert timeouts_of(actions) == [ScheduleTimeout(H, 0, Step.PREVOTE, TO.prevote(0))]
    assert timeouts_of(core.handle(net.vote(me, PREVOTE, 0, NIL))) == []
    actions = core.handle(TimeoutElapsed(H, 0, Step.PREVOTE))
    assert votes_of(actions) == [SendVote(PRECOMMIT, H, 0, NIL)]
    assert core.handle(TimeoutElapsed(H, 0, Step.PREVOTE)) == []  # step guard


def test_prevote_timeout_ignored_outside_prevote_step() -> None:
    net = Net.of(1, 1, 1, 1)
    core, _ = net.core(net.not_proposer(0))
    assert core.handle(TimeoutElapsed(H, 0, Step.PREVOTE)) == []
    assert core.step == Step.PROPOSE


def test_precommit_timeout_any_step_but_only_its_round() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, _ = net.core(me)
    pcs = [
        net.vote(i, PRECOMMIT, 0, h) for i, h in zip(others(net, me, 3), [A, B, NIL], strict=True)
    ]
    actions = feed(core, pcs)
    # L47 does not need a step: scheduled while still proposing
    assert timeouts_of(actions) == [ScheduleTimeout(H, 0, Step.PRECOMMIT, TO.precommit(0))]
    assert core.step == Step.PROPOSE
    assert core.handle(TimeoutElapsed(H, 1, Step.PRECOMMIT)) == []
    assert core.handle(TimeoutElapsed(H - 1, 0, Step.PRECOMMIT)) == []
    actions = core.handle(TimeoutElapsed(H, 0, Step.PRECOMMIT))
    assert core.round == 1 and core.step == Step.PROPOSE
    assert ScheduleTimeout(H, 1, Step.PROPOSE, TO.propose(1)) in actions
    assert core.handle(TimeoutElapsed(H, 0, Step.PRECOMMIT)) == []  # stale round


def test_timeouts_grow_per_round() -> None:
    net = Net.of(1, 1, 1, 1)
    core, _ = net.core(None)
    delays = []
    for r in range(4):
        actions = go_to_round(net, core, r + 1)
        delays.append(
            [
                t.delay_ms
                for t in timeouts_of(actions)
                if t.step == Step.PROPOSE and t.round == r + 1
            ]
        )
    assert delays == [[TO.propose(r)] for r in range(1, 5)]
    assert TO.propose(1) < TO.propose(2) < TO.propose(3)


# ---- round skip (L55) ------------------------------------------------------------


def test_round_skip_on_f_plus_one_messages() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, _ = net.core(me)
    a, b = others(net, me, 2)
    assert core.handle(net.vote(a, PREVOTE, 5, NIL)) == []  # one of four: not f+1
    assert core.handle(net.vote(a, PRECOMMIT, 5, NIL)) == []  # the same sender again
    actions = core.handle(net.vote(b, PRECOMMIT, 5, B))
    assert core.round == 5 and core.step == Step.PROPOSE
    assert ScheduleTimeout(H, 5, Step.PROPOSE, TO.propose(5)) in actions


def test_round_skip_is_by_power_not_count() -> None:
    net = Net.of(5, 1, 1, 1, 1)  # total 9: the heavy one alone is f+1; three light are not
    heavy = next(i for i, v in enumerate(net.vset.validators) if v.power == 5)
    light = [i for i in range(5) if i != heavy]
    core, _ = net.core(light[0])
    feed(core, [net.vote(i, PREVOTE, 3, NIL) for i in light[1:]])
    assert core.round == 0
    core.handle(net.vote(heavy, PREVOTE, 2, NIL))
    assert core.round == 2


def test_round_skip_counts_proposal_sender() -> None:
    net = Net.of(1, 1, 1, 1)
    me = next(i for i in range(4) if i != net.proposer(0) and i != net.proposer(4))
    core, _ = net.core(me)
    other = next(i for i in range(4) if i not in (me, net.proposer(4)))
    core.handle(net.proposal(4, A))
    assert core.round == 0
    actions = core.handle(net.vote(other, PREVOTE, 4, A))
    assert core.round == 4
    # the held proposal of round 4 is acted on at once
    assert votes_of(actions) == [SendVote(PREVOTE, H, 4, A)]


def test_no_skip_to_lower_round() -> None:
    net = Net.of(1, 1, 1, 1)
    core, _ = net.core(None)
    go_to_round(net, core, 3)
    feed(core, [net.vote(i, PREVOTE, 1, NIL) for i in range(4)])
    assert core.round == 3


# ---- deciding (L49) -------------------------------------------------------------


def test_decide_in_current_round_carries_its_precommits() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, _ = net.core(me)
    feed(core, [net.proposal(0, A)])
    pcs = precommits(net, [3, 1, 0, 2], 0, A)
    actions = feed(core, pcs[:2])
    assert not any(isinstance(a, Decide) for a in actions)
    actions = core.handle(pcs[2])
    decides = [a for a in actions if isinstance(a, Decide)]
    assert len(decides) == 1
    d = decides[0]
    assert (d.height, d.round, d.block_hash) == (H, 0, A)
    assert [sv.vote.validator for sv in d.precommits] == sorted(
        ev.vote.vote.validator for ev in pcs[:3]
    )
    assert core.decided == A
    # once per height, and nothing more is sent at this height
    assert feed(core, [pcs[3]]) == []
    assert core.handle(TimeoutElapsed(H, 0, Step.PROPOSE)) == []


def test_decide_on_precommits_of_a_later_round() -> None:
    """The core is in round 0; 2f+1 precommits for A arrive from round 3."""
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, _ = net.core(me)
    feed(core, [net.proposal(0, A)])  # we know A from round 0
    actions = feed(core, precommits(net, others(net, me, 3), 3, A))
    d = next(a for a in actions if isinstance(a, Decide))
    assert (d.round, d.block_hash) == (3, A)
    assert {sv.vote.round for sv in d.precommits} == {3}
    assert core.decided == A


def test_decide_on_precommits_of_an_earlier_round() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(2)
    core, _ = net.core(me)
    feed(core, prevotes(net, others(net, me, 2), 2, NIL))  # f+1 in round 2: skip there
    assert core.round == 2
    feed(core, [net.proposal(2, A, pol_round=0)])
    feed(core, [net.proposal(0, A)])
    actions = feed(core, precommits(net, others(net, me, 3), 0, A))
    d = next(a for a in actions if isinstance(a, Decide))
    assert (d.height, d.round, d.block_hash) == (H, 0, A)


def test_decide_waits_for_the_proposal_and_validity() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, _ = net.core(me)
    assert not any(
        isinstance(a, Decide) for a in feed(core, precommits(net, others(net, me, 3), 0, A))
    )
    assert core.decided is None
    feed(core, [net.proposal(0, A, valid=False)])
    assert core.decided is None  # never decide an invalid block
    actions = core.handle(net.proposal(0, A, valid=True))  # a good copy of the same block
    assert any(isinstance(a, Decide) for a in actions)


def test_no_decide_without_quorum_of_one_round() -> None:
    """Precommits for A split over two rounds do not add up."""
    net = Net.of(1, 1, 1, 1)
    core, _ = net.core(None)
    feed(core, [net.proposal(0, A)])
    feed(core, precommits(net, [0, 1], 0, A) + precommits(net, [2], 1, A))
    assert core.decided is None


# ---- observers, membership, other heights -----------------------------------------


def test_observer_never_votes_or_proposes_but_decides() -> None:
    net = Net.of(1, 1, 1, 1)
    core, actions = net.core(None)
    out = list(actions)
    for r in range(3):
        out += feed(core, [net.proposal(r, A if r == 0 else B, pol_round=-1)])
        out += core.handle(TimeoutElapsed(H, r, Step.PROPOSE))
        out += feed(core, prevotes(net, [0, 1, 2, 3], r, NIL))
        out += core.handle(TimeoutElapsed(H, r, Step.PREVOTE))
        out += feed(core, precommits(net, [0, 1, 2, 3], r, NIL))
        out += core.handle(TimeoutElapsed(H, r, Step.PRECOMMIT))
    out += feed(core, [net.proposal(3, C), *prevotes(net, [0, 1, 2], 3, C)])
    out += feed(core, precommits(net, [0, 1, 2], 3, C))
    assert not any(isinstance(a, SendVote | SendProposal | BuildBlock) for a in out)
    assert core.decided == C
    assert not core.is_validator


def test_non_member_core_is_an_observer() -> None:
    net = Net.of(1, 1, 1, 1)
    outsider = PrivateKey(b"\x07" * 32)
    core = TendermintCore(CHAIN, outsider.id, TO)
    actions = core.handle(NewHeight(H, net.vset, 0))
    actions += feed(core, [net.proposal(0, A), *prevotes(net, [0, 1, 2], 0, A)])
    assert votes_of(actions) == []


def test_votes_from_non_members_other_heights_and_chains_are_ignored() -> None:
    net = Net.of(1, 1, 1, 1)
    core, _ = net.core(None)
    outsider = PrivateKey(b"\x09" * 32)
    for i in range(3):
        vote = Vote(CHAIN, PREVOTE, H, 7, NIL, 0, PrivateKey(bytes([i + 20]) * 32).id)
        core.handle(VoteReceived(SignedVote.create(outsider, vote)))
    assert core.round == 0
    feed(core, [net.vote(i, PREVOTE, 7, NIL, height=H + 1) for i in range(4)])
    assert core.round == 0
    wrong_chain = [
        VoteReceived(
            SignedVote.create(net.keys[i], Vote("other", PREVOTE, H, 7, NIL, 0, net.id(i)))
        )
        for i in range(4)
    ]
    feed(core, wrong_chain)
    assert core.round == 0
    bad_type = [
        VoteReceived(SignedVote.create(net.keys[i], Vote(CHAIN, 9, H, 7, NIL, 0, net.id(i))))
        for i in range(4)
    ]
    feed(core, bad_type)
    assert core.round == 0


def test_events_before_the_first_height_are_ignored() -> None:
    net = Net.of(1, 1, 1, 1)
    core = TendermintCore(CHAIN, net.id(0), TO)
    assert core.handle(net.vote(1, PREVOTE, 0, A)) == []
    assert core.handle(net.proposal(0, A)) == []
    assert core.handle(TimeoutElapsed(0, 0, Step.PROPOSE)) == []
    assert core.handle(BlockBuilt(0, 0, A)) == []


def test_new_height_resets_and_heights_only_go_up() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core = lock_on_a_in_round_0(net, me)
    nxt = net.vset.next()
    actions = core.handle(NewHeight(H + 1, nxt, 10))
    assert (core.height, core.round, core.step) == (H + 1, 0, Step.PROPOSE)
    assert core.locked_value is None and core.valid_value is None and core.decided is None
    assert any(isinstance(a, ScheduleTimeout) for a in actions)
    assert core.handle(NewHeight(H, net.vset, 20)) == []
    assert core.height == H + 1


# ---- equivocation ---------------------------------------------------------------


def test_equivocation_reported_once() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, _ = net.core(me)
    bad = others(net, me, 1)[0]
    first = net.vote(bad, PREVOTE, 0, A)
    assert core.handle(first) == []
    assert core.handle(first) == []  # duplicate: not equivocation
    second = net.vote(bad, PREVOTE, 0, B)
    assert core.handle(second) == [ReportEquivocation(first=first.vote, second=second.vote)]
    assert core.handle(second) == []
    assert core.handle(net.vote(bad, PREVOTE, 0, NIL)) == []  # third value: still once
    # the precommit slot is a different (round, type): reported separately, once
    core.handle(net.vote(bad, PRECOMMIT, 0, A))
    rep = core.handle(net.vote(bad, PRECOMMIT, 0, NIL))
    assert len(rep) == 1 and isinstance(rep[0], ReportEquivocation)
    assert rep[0].first.vote.block_hash == A and rep[0].second.vote.block_hash == NIL


def test_equivocator_counts_once_for_any_value() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, _ = net.core(me)
    bad, x, y = others(net, me, 3)
    core.handle(TimeoutElapsed(H, 0, Step.PROPOSE))  # step prevote (own vote not fed back)
    actions = feed(core, [net.vote(bad, PREVOTE, 0, A), net.vote(bad, PREVOTE, 0, B)])
    actions += core.handle(net.vote(x, PREVOTE, 0, NIL))
    assert timeouts_of(actions) == []  # two senders, not 2f+1
    assert timeouts_of(core.handle(net.vote(y, PREVOTE, 0, NIL))) == [
        ScheduleTimeout(H, 0, Step.PREVOTE, TO.prevote(0))
    ]


def test_equivocator_counts_for_each_value_it_voted() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(0)
    core, _ = net.core(me)
    bad, x, y = others(net, me, 3)
    assert votes_of(core.handle(net.proposal(0, B))) == [SendVote(PREVOTE, H, 0, B)]
    feed(core, [net.vote(bad, PREVOTE, 0, A), net.vote(bad, PREVOTE, 0, B)])
    feed(core, [net.vote(x, PREVOTE, 0, B)])
    assert core.locked_value is None  # B: bad + x
    actions = core.handle(net.vote(y, PREVOTE, 0, B))  # B: bad + x + y = 2f+1
    assert votes_of(actions) == [SendVote(PRECOMMIT, H, 0, B)]
    assert (core.locked_round, core.locked_value) == (0, B)


def test_commit_counts_the_deciders_view_of_an_equivocator() -> None:
    """One correct node counted the equivocator's precommit for A and decided; another
    saw its nil precommit first. Given the same messages, it decides A too."""
    net = Net.of(1, 1, 1, 1, 1, 1, 1)  # quorum 5
    core, _ = net.core(None)
    bad = 6
    feed(core, [net.proposal(0, A), net.vote(bad, PRECOMMIT, 0, NIL)])
    feed(core, precommits(net, [0, 1, 2, 3], 0, A))
    assert core.decided is None
    actions = core.handle(net.vote(bad, PRECOMMIT, 0, A))
    assert isinstance(actions[0], ReportEquivocation)
    d = next(a for a in actions if isinstance(a, Decide))
    assert d.block_hash == A and len(d.precommits) == 5
    assert all(sv.vote.block_hash == A for sv in d.precommits)


def test_equivocation_reported_after_decide() -> None:
    net = Net.of(1, 1, 1, 1)
    core, _ = net.core(None)
    feed(core, [net.proposal(0, A), *precommits(net, [0, 1, 2], 0, A)])
    assert core.decided == A
    rep = core.handle(net.vote(0, PRECOMMIT, 0, B))
    assert len(rep) == 1 and isinstance(rep[0], ReportEquivocation)


# ---- determinism and no double-sign under arbitrary input ---------------------------

NET4 = Net.of(1, 1, 1, 1)
NET_UNEQUAL = Net.of(3, 1, 2, 1, 1)
HASHES = [NIL, A, B, C]


def event_strategy(net: Net) -> st.SearchStrategy[Event]:
    n = len(net.keys)
    votes = st.builds(
        net.vote,
        st.integers(0, n - 1),
        st.sampled_from([PREVOTE, PRECOMMIT]),
        st.integers(0, 4),
        st.sampled_from(HASHES),
    )
    proposals = st.builds(
        lambda r, h, pol, valid: net.proposal(r, h, pol_round=min(pol, r - 1), valid=valid),
        st.integers(0, 4),
        st.sampled_from([A, B, C]),
        st.integers(-1, 3),
        st.booleans(),
    )
    timeouts = st.builds(TimeoutElapsed, st.just(H), st.integers(0, 4), st.sampled_from(list(Step)))
    built = st.builds(BlockBuilt, st.just(H), st.integers(0, 4), st.sampled_from([A, B, C]))
    return st.one_of(votes, votes, votes, proposals, timeouts, built)


@settings(deadline=None, derandomize=True, database=None, max_examples=150)
@given(st.data(), st.sampled_from([NET4, NET_UNEQUAL]), st.integers(0, 4))
def test_replay_is_identical_and_never_double_signs(data: st.DataObject, net: Net, me: int) -> None:
    events: list[Event] = [NewHeight(H, net.vset, 0)]
    events += data.draw(st.lists(event_strategy(net), max_size=80))
    first = TendermintCore(CHAIN, net.id(me % len(net.keys)), TO)
    second = TendermintCore(CHAIN, net.id(me % len(net.keys)), TO)
    signed: dict[tuple[int, int], bytes] = {}
    decides = 0
    for ev in events:
        out = first.handle(ev)
        assert second.handle(ev) == out  # same events, same actions
        for a in out:
            if isinstance(a, SendVote):
                key = (a.round, a.type)
                assert signed.setdefault(key, a.block_hash) == a.block_hash
            if isinstance(a, Decide):
                decides += 1
                assert net.vset.has_quorum(
                    sum(net.vset.power(sv.vote.validator) for sv in a.precommits)
                )
    assert decides <= 1
    assert first.suppressed_votes == 0
    assert (first.round, first.step, first.locked_value, first.valid_value) == (
        second.round,
        second.step,
        second.locked_value,
        second.valid_value,
    )


def test_honest_own_votes_flow() -> None:
    """A four-validator round driven by hand, every core fed every message: all decide."""
    net = Net.of(1, 1, 1, 1)
    cores = [net.core(i)[0] for i in range(4)]
    prop = net.proposer(0)
    sent = cores[prop].handle(BlockBuilt(H, 0, A))
    assert sent == [SendProposal(H, 0, A, -1)]
    pending: list[Event] = [net.proposal(0, A)]
    while pending:
        ev = pending.pop(0)
        for i, c in enumerate(cores):
            for a in c.handle(ev):
                if isinstance(a, SendVote):
                    pending.append(net.vote(i, a.type, a.round, a.block_hash))
    assert [c.decided for c in cores] == [A] * 4


@pytest.mark.parametrize("me", [0, 1, 2, 3])
def test_proposer_helper_matches_validator_set(me: int) -> None:
    net = Net.of(2, 1, 1, 3)
    core, _ = net.core(me)
    assert [core.proposer(r) for r in range(10)] == [net.vset.proposer(r) for r in range(10)]


# ---- bounds on what a faulty peer can make the core hold -----------------------------


def test_messages_beyond_the_round_window_are_ignored() -> None:
    net = Net.of(1, 1, 1, 1)
    core, _ = net.core(None)
    far = ROUND_WINDOW + 1
    feed(core, [net.vote(i, PREVOTE, far, NIL) for i in range(4)])
    assert core.round == 0
    assert core.handle(net.proposal(far, A)) == []
    feed(core, [net.vote(i, PREVOTE, ROUND_WINDOW, NIL) for i in range(2)])
    assert core.round == ROUND_WINDOW  # within the window: f+1 skip as usual


def test_proposals_kept_per_round_are_bounded() -> None:
    """A faulty proposer's extra proposals for one round are not held."""
    net = Net.of(1, 1, 1, 1)
    me = net.not_proposer(1)
    core, _ = net.core(me)
    hashes = [bytes([i]) * 32 for i in range(1, MAX_PROPOSALS_PER_ROUND + 3)]
    for h in hashes:
        core.handle(net.proposal(1, h))
    actions = go_to_round(net, core, 1)
    assert votes_of(actions)[-1] == SendVote(PREVOTE, H, 1, hashes[0])  # the first one held
    last = hashes[-1]
    feed(core, prevotes(net, others(net, me, 3), 1, last))
    assert core.valid_value is None  # a polka for a proposal not held is not acted on
    held = hashes[MAX_PROPOSALS_PER_ROUND - 1]
    core2, _ = net.core(me)
    for h in hashes:
        core2.handle(net.proposal(1, h))
    go_to_round(net, core2, 1)
    feed(core2, prevotes(net, others(net, me, 3), 1, held))
    assert core2.valid_value == held


def test_values_counted_per_validator_are_bounded() -> None:
    net = Net.of(1, 1, 1, 1)
    core, _ = net.core(None)
    values = [bytes([i]) * 32 for i in range(1, MAX_VALUES_PER_SLOT + 3)]
    reports = feed(core, [net.vote(0, PRECOMMIT, 0, v) for v in values])
    assert len([a for a in reports if isinstance(a, ReportEquivocation)]) == 1
    last = values[-1]  # beyond the bound: not counted
    feed(core, [net.proposal(0, last), *precommits(net, [1, 2], 0, last)])
    assert core.decided is None
    first = values[0]  # within the bound: counted
    feed(core, [net.proposal(0, first), *precommits(net, [1, 2], 0, first)])
    assert core.decided == first


# ---- proposer details --------------------------------------------------------------


def test_proposer_times_out_if_its_block_never_comes() -> None:
    net = Net.of(1, 1, 1, 1)
    me = net.proposer(0)
    core, actions = net.core(me)
    assert BuildBlock(H, 0) in actions
    assert ScheduleTimeout(H, 0, Step.PROPOSE, TO.propose(0)) in actions
    assert votes_of(core.handle(TimeoutElapsed(H, 0, Step.PROPOSE))) == [
        SendVote(PREVOTE, H, 0, NIL)
    ]
    # a block built late in the same round is still proposed (others may be waiting)
    assert core.handle(BlockBuilt(H, 0, A)) == [SendProposal(H, 0, A, -1)]
    # ... but not once the round is over
    core2, _ = net.core(me)
    go_to_round(net, core2, 1)
    assert core2.handle(BlockBuilt(H, 0, A)) == []


def test_unequal_powers_quorum_by_power() -> None:
    net = Net.of(5, 1, 1, 1, 1)  # total 9: the heavy validator plus one light is not 2f+1
    heavy = next(i for i, v in enumerate(net.vset.validators) if v.power == 5)
    light = [i for i in range(5) if i != heavy]
    core, _ = net.core(None)
    feed(core, [net.proposal(0, A), *precommits(net, [heavy, light[0]], 0, A)])
    assert core.decided is None  # 6 of 9
    feed(core, precommits(net, [light[1]], 0, A))
    assert core.decided == A  # 7 of 9
    core2, _ = net.core(None)
    feed(core2, [net.proposal(0, A), *precommits(net, light, 0, A)])
    assert core2.decided is None  # four light validators: 4 of 9
