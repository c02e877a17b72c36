"""The validator set of a height: voting power, quorum arithmetic and proposer selection.

Proposer selection is CometBFT's weighted round-robin (the "smooth weighted
round-robin" also used by nginx): every validator carries a *proposer
priority*. One increment adds each validator's power to its priority, picks
the validator with the highest priority (ties: the smallest id) and subtracts
the total power from the one picked. The sum of the priorities stays 0, the
priorities stay bounded, and over any ``total_power`` consecutive increments
each validator is picked exactly ``power`` times.

The stored priorities are those *before* the increment that picks the proposer
of round 0: round ``r`` of the height is proposed by the validator picked by
the ``r + 1``-th increment of a copy, and :meth:`ValidatorSet.next` (one
increment) gives the priorities of the next height. Everything is integer
arithmetic on lists in id order: no floats, no dict or set order.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

from medledger.codec import Record
from medledger.ledger.block import Validator, validators_hash

__all__ = ["ValidatorSet"]


def _increment(priorities: list[int], powers: list[int], total: int) -> int:
    """Apply one weighted round-robin increment in place; return the index picked."""
    best = 0
    for i, power in enumerate(powers):
        priorities[i] += power
        if priorities[i] > priorities[best]:
            best = i  # strict: on a tie the smaller index (the smaller id) keeps it
    priorities[best] -= total
    return best


class ValidatorSet(Record, frozen=True):
    """Validators sorted by id with their proposer priorities (same order)."""

    validators: list[Validator]
    priorities: list[int]

    def __post_init__(self) -> None:
        # Runs on construction and on decoding: a set that breaks these is never built.
        if not self.validators:
            raise ValueError("a validator set cannot be empty")
        if len(self.priorities) != len(self.validators):
            raise ValueError("one proposer priority per validator")
        previous: str | None = None
        for val in self.validators:
            if val.power <= 0:
                raise ValueError(f"validator {val.id} has non-positive power {val.power}")
            if previous is not None and val.id <= previous:
                raise ValueError("validators must be sorted by id without duplicates")
            previous = val.id

    @classmethod
    def from_validators(cls, validators: list[Validator]) -> ValidatorSet:
        """A set with all priorities 0; raise ValueError if empty, duplicated or powerless."""
        ordered = sorted(validators, key=lambda v: v.id)
        for a, b in itertools.pairwise(ordered):
            if a.id == b.id:
                raise ValueError(f"duplicate validator id {a.id}")
        return cls(validators=ordered, priorities=[0] * len(ordered))

    @property
    def total_power(self) -> int:
        return sum(v.power for v in self.validators)

    @property
    def ids(self) -> list[str]:
        return [v.id for v in self.validators]

    def get(self, validator_id: str) -> Validator | None:
        i = bisect.bisect_left(self.validators, validator_id, key=lambda v: v.id)
        if i < len(self.validators) and self.validators[i].id == validator_id:
            return self.validators[i]
        return None

    def power(self, validator_id: str) -> int:
        """Voting power of ``validator_id``; 0 if it is not a member."""
        val = self.get(validator_id)
        return 0 if val is None else val.power

    def has_quorum(self, power: int) -> bool:
        """More than 2/3 of the total power (the paper's 2f+1)."""
        return power * 3 > self.total_power * 2

    def has_third(self, power: int) -> bool:
        """More than 1/3 of the total power (the paper's f+1): at least one correct sender."""
        return power * 3 > self.total_power

    def iter_proposers(self) -> Iterator[str]:
        """Proposers of rounds 0, 1, 2, ... of this height, without end."""
        priorities = list(self.priorities)
        powers = [v.power for v in self.validators]
        total = sum(powers)
        while True:
            yield self.validators[_increment(priorities, powers, total)].id

    def proposer(self, round_: int) -> str:
        """The proposer of round ``round_`` of this height (``round_ + 1`` increments)."""
        if round_ < 0:
            raise ValueError("round must be non-negative")
        proposers = self.iter_proposers()
        for _ in range(round_):
            next(proposers)
        return next(proposers)

    def next(self) -> ValidatorSet:
        """The set with priorities after one increment: the set of the next height."""
        priorities = list(self.priorities)
        powers = [v.power for v in self.validators]
        _increment(priorities, powers, sum(powers))
        return ValidatorSet(validators=list(self.validators), priorities=priorities)

    def hash(self) -> bytes:
        return validators_hash(self.validators)
