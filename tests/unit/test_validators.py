"""consensus.validators and consensus.bfttime: quorum arithmetic, proposer selection, BFT time."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.codec import decode, encode
from medledger.consensus.bfttime import bft_time
from medledger.consensus.types import PRECOMMIT, SignedVote, Vote
from medledger.consensus.validators import ValidatorSet
from medledger.crypto.keys import PrivateKey
from medledger.ledger.block import Validator, validators_hash

PROPS = settings(deadline=None, derandomize=True, database=None, max_examples=100)


def vkey(name: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(b"test-validators/" + name.encode()).digest())


def val(name: str, power: int = 1) -> Validator:
    k = vkey(name)
    return Validator(name=name, id=k.id, public_key=k.public_key.raw, power=power)


def vset_of(*powers: int) -> ValidatorSet:
    return ValidatorSet.from_validators([val(f"v{i}", p) for i, p in enumerate(powers)])


# ---- construction -------------------------------------------------------------------


def test_from_validators_sorts_by_id_with_zero_priorities() -> None:
    vals = [val(f"v{i}", i + 1) for i in range(5)]
    vs = ValidatorSet.from_validators(list(reversed(vals)))
    assert [v.id for v in vs.validators] == sorted(v.id for v in vals)
    assert vs.priorities == [0] * 5
    assert vs.total_power == 15
    assert vs.hash() == validators_hash(vs.validators)


@pytest.mark.parametrize(
    "validators",
    [
        [],
        [val("a"), val("a", 2)],
        [val("a"), val("b", 0)],
        [val("a", -3)],
    ],
)
def test_from_validators_rejects_bad_sets(validators: list[Validator]) -> None:
    with pytest.raises(ValueError):
        ValidatorSet.from_validators(validators)


def test_direct_construction_is_checked_too() -> None:
    a, b = sorted([val("a"), val("b")], key=lambda v: v.id)
    with pytest.raises(ValueError):
        ValidatorSet(validators=[b, a], priorities=[0, 0])
    with pytest.raises(ValueError):
        ValidatorSet(validators=[a, b], priorities=[0])


def test_codec_round_trip_keeps_priorities() -> None:
    vs = vset_of(1, 2, 3).next().next()
    assert decode(encode(vs), ValidatorSet) == vs


def test_get_and_power() -> None:
    vs = vset_of(3, 1)
    for v in vs.validators:
        assert vs.get(v.id) == v
        assert vs.power(v.id) == v.power
    assert vs.get("mlnotamember") is None
    assert vs.power("mlnotamember") == 0
    assert vs.power("") == 0
    assert vs.power("zzzz") == 0


# ---- quorum arithmetic ------------------------------------------------------------


def test_quorum_equal_powers() -> None:
    vs = vset_of(1, 1, 1, 1)  # n = 4, f = 1
    assert not vs.has_quorum(2) and vs.has_quorum(3)
    assert not vs.has_third(1) and vs.has_third(2)
    vs7 = vset_of(*[1] * 7)  # n = 7, f = 2
    assert not vs7.has_quorum(4) and vs7.has_quorum(5)
    assert not vs7.has_third(2) and vs7.has_third(3)


def test_quorum_unequal_powers() -> None:
    vs = vset_of(4, 1, 1, 1, 1, 1)  # total 9
    assert vs.has_third(4)  # one big validator is f+1 on its own
    assert not vs.has_quorum(4 + 1 + 1)  # ... and with two small ones still not 2f+1
    assert vs.has_quorum(4 + 1 + 1 + 1)
    assert not vs.has_third(3)  # three small ones are not even f+1
    assert vset_of(10, 1, 1, 1).has_quorum(10)  # more than 2/3 alone: a quorum of one
    vs2 = vset_of(3, 3, 3)  # total 9: exactly 2/3 is not a quorum, exactly 1/3 not a third
    assert not vs2.has_quorum(6) and vs2.has_quorum(7)
    assert not vs2.has_third(3) and vs2.has_third(4)


@PROPS
@given(st.lists(st.integers(1, 50), min_size=1, max_size=10), st.data())
def test_quorum_intersection(powers: list[int], data: st.DataObject) -> None:
    """Two quorums always share more than 1/3 of the power (so at least one correct)."""
    vs = vset_of(*powers)
    n = len(powers)
    a = data.draw(st.sets(st.integers(0, n - 1)))
    b = data.draw(st.sets(st.integers(0, n - 1)))
    pa = sum(powers[i] for i in a)
    pb = sum(powers[i] for i in b)
    if vs.has_quorum(pa) and vs.has_quorum(pb):
        assert vs.has_third(sum(powers[i] for i in a & b))


# ---- proposer selection -----------------------------------------------------------


def test_proposer_is_deterministic_and_pure() -> None:
    vs = vset_of(5, 1, 3, 2)
    before = list(vs.priorities)
    first = [vs.proposer(r) for r in range(40)]
    assert [vs.proposer(r) for r in range(40)] == first
    assert vs.priorities == before  # proposer() does not change the set
    rebuilt = ValidatorSet.from_validators(list(reversed(vs.validators)))
    assert [rebuilt.proposer(r) for r in range(40)] == first


def test_proposer_matches_iterator_and_next() -> None:
    vs = vset_of(4, 2, 1)
    it = vs.iter_proposers()
    assert [next(it) for _ in range(30)] == [vs.proposer(r) for r in range(30)]
    # next() is one increment: round r+1 here is round r at the next height
    nxt = vs.next()
    assert [nxt.proposer(r) for r in range(20)] == [vs.proposer(r + 1) for r in range(20)]
    with pytest.raises(ValueError):
        vs.proposer(-1)


def test_equal_powers_rotate_in_id_order() -> None:
    vs = vset_of(1, 1, 1, 1)
    ids = [v.id for v in vs.validators]
    assert [vs.proposer(r) for r in range(8)] == ids + ids
    heights = []
    for _ in range(8):
        heights.append(vs.proposer(0))
        vs = vs.next()
    assert heights == ids + ids


def test_tie_broken_by_smallest_id() -> None:
    vs = vset_of(2, 2)
    assert vs.proposer(0) == min(v.id for v in vs.validators)


@pytest.mark.parametrize(
    "powers", [(1, 2, 3, 4), (10, 1, 1, 1), (7, 5, 3, 1, 1, 1, 1), (100, 1), (3, 3, 3)]
)
def test_proposer_fairness_over_heights(powers: tuple[int, ...]) -> None:
    """Over k * total heights each validator proposes exactly k * power times."""
    vs = vset_of(*powers)
    total = vs.total_power
    counts = {v.id: 0 for v in vs.validators}
    periods = 5
    for _ in range(periods * total):
        counts[vs.proposer(0)] += 1
        vs = vs.next()
    assert {v.id: periods * v.power for v in vs.validators} == counts
    # and within rounds of one height too
    counts = dict.fromkeys(counts, 0)
    for r in range(total):
        counts[vs.proposer(r)] += 1
    assert {v.id: v.power for v in vs.validators} == counts


@PROPS
@given(st.lists(st.integers(1, 20), min_size=1, max_size=8), st.integers(0, 200))
def test_fairness_and_bounded_priorities(powers: list[int], heights: int) -> None:
    """From any reachable state: any window of `total` rounds is exactly proportional,
    priorities sum to 0 and stay within (-total, total]."""
    vs = vset_of(*powers)
    for _ in range(heights):
        vs = vs.next()
    total = vs.total_power
    assert sum(vs.priorities) == 0
    assert all(-total < p <= total for p in vs.priorities)
    counts = {v.id: 0 for v in vs.validators}
    for proposer in [vs.proposer(r) for r in range(total)]:
        counts[proposer] += 1
    assert counts == {v.id: v.power for v in vs.validators}


# ---- BFT time --------------------------------------------------------------------


def precommit(name: str, time_ms: int) -> SignedVote:
    k = vkey(name)
    vote = Vote(
        chain_id="c",
        type=PRECOMMIT,
        height=1,
        round=0,
        block_hash=b"\x01" * 32,
        time_ms=time_ms,
        validator=k.id,
    )
    return SignedVote(vote=vote, signature=b"\x00" * 64)  # bft_time does not verify


def test_bft_time_equal_powers_is_lower_median() -> None:
    vs = vset_of(1, 1, 1, 1)
    pcs = [precommit(f"v{i}", t) for i, t in enumerate([400, 100, 300, 200])]
    assert bft_time(pcs, vs) == 200  # lower median of 100, 200, 300, 400
    assert bft_time(pcs[:3], vs) == 300  # median of 100, 300, 400


def test_bft_time_weighted() -> None:
    vs = vset_of(10, 1, 1, 1)
    pcs = [precommit(f"v{i}", t) for i, t in enumerate([500, 1, 2, 3])]
    assert bft_time(pcs, vs) == 500  # the heavy validator is more than half
    vs2 = vset_of(1, 1, 1, 3)
    pcs2 = [precommit(f"v{i}", t) for i, t in enumerate([1, 2, 3, 900])]
    assert bft_time(pcs2, vs2) == 3  # cumulative 1, 2, 3 of 6: lower median


def test_bft_time_ignores_non_members_and_duplicates() -> None:
    vs = vset_of(1, 1, 1)
    pcs = [
        precommit("v0", 10),
        precommit("v1", 20),
        precommit("v1", 10_000),  # second of v1: ignored
        precommit("outsider", 0),
        precommit("v2", 30),
    ]
    assert bft_time(pcs, vs) == 20
    with pytest.raises(ValueError):
        bft_time([precommit("outsider", 1)], vs)


def test_bft_time_order_independent() -> None:
    vs = vset_of(2, 1, 1, 3, 1)
    pcs = [precommit(f"v{i}", t) for i, t in enumerate([50, 50, 10, 70, 60])]
    expected = bft_time(pcs, vs)
    assert bft_time(list(reversed(pcs)), vs) == expected
    assert bft_time(pcs[2:] + pcs[:2], vs) == expected


@PROPS
@given(
    st.lists(st.tuples(st.integers(1, 10), st.integers(0, 10**6)), min_size=4, max_size=7),
    st.data(),
)
def test_bft_time_bounded_by_correct_clocks(
    entries: list[tuple[int, int]], data: st.DataObject
) -> None:
    """Faulty validators (< 1/3 of the power) in a commit (> 2/3) cannot move the time
    outside the range of the correct validators' times."""
    vs = vset_of(*[p for p, _ in entries])
    total = vs.total_power
    faulty = data.draw(st.sets(st.integers(0, len(entries) - 1)))
    if sum(entries[i][0] for i in faulty) * 3 >= total:
        return
    signers = data.draw(st.sets(st.integers(0, len(entries) - 1)))
    if sum(entries[i][0] for i in signers) * 3 <= total * 2:
        return
    pcs = []
    for i in sorted(signers):
        t = data.draw(st.integers(-(10**9), 10**9)) if i in faulty else entries[i][1]
        pcs.append(precommit(f"v{i}", t))
    correct = [entries[i][1] for i in signers if i not in faulty]
    assert min(correct) <= bft_time(pcs, vs) <= max(correct)
